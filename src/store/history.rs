//! Revision history: each promotion attempt of an environment is a numbered revision (1, 2, 3…
//! per environment) with who, when, what changed, what it runs, and how it ended.
//!
//! Numbers are assigned inside the write transaction that inserts the revision, under the
//! store's write lock, so concurrent runs (in threads or in separate processes) never get the
//! same number; `(environment, number)` is also the table's primary key. A revision is written
//! as `InProgress` before the run touches production and finished afterwards, so a process
//! killed in between leaves a visible `InProgress` revision for recovery to settle.
//!
//! "Current" is the newest `Promoted` revision; "previous" the `Promoted` one before it (the
//! rollback target). Callers that roll a promoted revision back mark it `RolledBack` with
//! [`Store::finish_revision`], which may overwrite an earlier outcome for that reason.

use std::fmt;

use jiff::Timestamp;
use rusqlite::{Row, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, ts_from_sql, ts_to_sql};

/// How a revision ended (or that it has not yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum RevisionOutcome {
    /// Begun and not finished: a run in flight, or one that was killed (recovery settles it).
    InProgress,
    /// It went live.
    Promoted,
    /// It never went live.
    Failed { reason: String },
    /// It went (partly) live and was put back to the revision before it.
    RolledBack { reason: String },
    /// Abandoned for a newer revision before it finished.
    Superseded,
}

impl RevisionOutcome {
    pub(super) fn to_sql(&self) -> (&'static str, Option<&str>) {
        match self {
            RevisionOutcome::InProgress => ("inProgress", None),
            RevisionOutcome::Promoted => ("promoted", None),
            RevisionOutcome::Failed { reason } => ("failed", Some(reason)),
            RevisionOutcome::RolledBack { reason } => ("rolledBack", Some(reason)),
            RevisionOutcome::Superseded => ("superseded", None),
        }
    }

    fn from_sql(status: &str, reason: Option<String>) -> Option<RevisionOutcome> {
        let reason = || reason.clone().unwrap_or_default();
        Some(match status {
            "inProgress" => RevisionOutcome::InProgress,
            "promoted" => RevisionOutcome::Promoted,
            "failed" => RevisionOutcome::Failed { reason: reason() },
            "rolledBack" => RevisionOutcome::RolledBack { reason: reason() },
            "superseded" => RevisionOutcome::Superseded,
            _ => return None,
        })
    }
}

impl fmt::Display for RevisionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevisionOutcome::InProgress => f.write_str("in progress"),
            RevisionOutcome::Promoted => f.write_str("promoted"),
            RevisionOutcome::Failed { reason } => write!(f, "failed: {reason}"),
            RevisionOutcome::RolledBack { reason } => write!(f, "rolled back: {reason}"),
            RevisionOutcome::Superseded => f.write_str("superseded"),
        }
    }
}

/// A revision as the caller describes it before the run touches production; the store adds
/// the number and the `InProgress` outcome.
#[derive(Debug, Clone)]
pub struct NewRevision {
    pub environment: String,
    pub run: String,
    pub started: Timestamp,
    pub user: String,
    pub playbook: String,
    /// A commit or a note.
    pub reason: Option<String>,
    /// The plan's per-service changes, secrets already redacted by the caller.
    pub changes: serde_json::Value,
    /// What the revision runs (per service: image and non-secret settings), enough to put it
    /// back.
    pub services: serde_json::Value,
    /// The images it runs, kept locally so a rollback never needs a registry.
    pub images: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub environment: String,
    /// 1, 2, 3… per environment.
    pub number: u64,
    pub run: String,
    pub started: Timestamp,
    pub finished: Option<Timestamp>,
    pub user: String,
    pub playbook: String,
    pub reason: Option<String>,
    pub changes: serde_json::Value,
    pub services: serde_json::Value,
    pub images: Vec<String>,
    pub outcome: RevisionOutcome,
}

impl Revision {
    /// How long the run took, once finished.
    pub fn duration(&self) -> Option<jiff::SignedDuration> {
        self.finished.map(|f| f.duration_since(self.started))
    }
}

const COLUMNS: &str = "environment, number, run, started, finished, user, playbook, reason, \
                       changes, services, images, outcome, outcome_reason";

/// A row as stored; decoded outside SQLite's row callback so errors can name what was bad.
struct RawRevision {
    environment: String,
    number: i64,
    run: String,
    started: String,
    finished: Option<String>,
    user: String,
    playbook: String,
    reason: Option<String>,
    changes: String,
    services: String,
    images: String,
    outcome: String,
    outcome_reason: Option<String>,
}

impl RawRevision {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRevision> {
        Ok(RawRevision {
            environment: row.get(0)?,
            number: row.get(1)?,
            run: row.get(2)?,
            started: row.get(3)?,
            finished: row.get(4)?,
            user: row.get(5)?,
            playbook: row.get(6)?,
            reason: row.get(7)?,
            changes: row.get(8)?,
            services: row.get(9)?,
            images: row.get(10)?,
            outcome: row.get(11)?,
            outcome_reason: row.get(12)?,
        })
    }

    fn decode(self, store: &Store) -> Result<Revision, StoreError> {
        let what = |field: &str| {
            format!(
                "{field} of revision {} of `{}`",
                self.number, self.environment
            )
        };
        let json = |field: &str, text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| store.decode(&what(field), e))
        };
        let changes = json("changes", &self.changes)?;
        let services = json("services", &self.services)?;
        let images: Vec<String> =
            serde_json::from_str(&self.images).map_err(|e| store.decode(&what("images"), e))?;
        let outcome = RevisionOutcome::from_sql(&self.outcome, self.outcome_reason.clone())
            .ok_or_else(|| store.decode(&what("outcome"), format!("`{}`", self.outcome)))?;
        let started = ts_from_sql(store, &self.started)?;
        let finished = self
            .finished
            .as_deref()
            .map(|t| ts_from_sql(store, t))
            .transpose()?;
        Ok(Revision {
            number: u64::try_from(self.number)
                .map_err(|_| store.decode(&what("number"), self.number))?,
            environment: self.environment,
            run: self.run,
            started,
            finished,
            user: self.user,
            playbook: self.playbook,
            reason: self.reason,
            changes,
            services,
            images,
            outcome,
        })
    }
}

impl Store {
    /// Records a new `InProgress` revision of `r.environment` with the next number.
    pub fn begin_revision(&self, r: NewRevision) -> Result<Revision, StoreError> {
        self.write(|tx| self.insert_revision(tx, r))
    }

    /// [`Store::begin_revision`] inside a caller's transaction.
    pub(super) fn insert_revision(
        &self,
        tx: &Transaction<'_>,
        r: NewRevision,
    ) -> Result<Revision, StoreError> {
        let images = serde_json::to_string(&r.images).expect("strings serialize");
        // Under the write lock the transaction holds, so no other writer sits between this read
        // and the insert.
        let next: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE environment = ?1",
                [&r.environment],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))?;
        tx.execute(
            &format!(
                "INSERT INTO revisions ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8, ?9, ?10, 'inProgress', NULL)"
            ),
            params![
                r.environment,
                next,
                r.run,
                ts_to_sql(r.started),
                r.user,
                r.playbook,
                r.reason,
                r.changes.to_string(),
                r.services.to_string(),
                images,
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(Revision {
            environment: r.environment,
            number: next as u64,
            run: r.run,
            started: r.started,
            finished: None,
            user: r.user,
            playbook: r.playbook,
            reason: r.reason,
            changes: r.changes,
            services: r.services,
            images: r.images,
            outcome: RevisionOutcome::InProgress,
        })
    }

    /// Sets how revision `number` of `env` ended and when.
    pub fn finish_revision(
        &self,
        env: &str,
        number: u64,
        outcome: RevisionOutcome,
        finished: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(|tx| self.update_revision(tx, env, number, &outcome, finished))
    }

    /// [`Store::finish_revision`] inside a caller's transaction.
    pub(super) fn update_revision(
        &self,
        tx: &Transaction<'_>,
        env: &str,
        number: u64,
        outcome: &RevisionOutcome,
        finished: Timestamp,
    ) -> Result<(), StoreError> {
        let (status, reason) = outcome.to_sql();
        let updated = tx
            .execute(
                "UPDATE revisions SET outcome = ?3, outcome_reason = ?4, finished = ?5
                 WHERE environment = ?1 AND number = ?2",
                params![env, number as i64, status, reason, ts_to_sql(finished)],
            )
            .map_err(|e| self.err(e))?;
        if updated == 0 {
            return Err(StoreError::UnknownRevision {
                path: self.path.clone(),
                environment: env.to_string(),
                number,
            });
        }
        Ok(())
    }

    /// Every revision of `env`, newest first.
    pub fn history(&self, env: &str) -> Result<Vec<Revision>, StoreError> {
        self.revisions(
            &format!("SELECT {COLUMNS} FROM revisions WHERE environment = ?1 ORDER BY number DESC"),
            params![env],
        )
    }

    /// Revision `number` of `env`, if there is one.
    pub fn revision(&self, env: &str, number: u64) -> Result<Option<Revision>, StoreError> {
        let Ok(number) = i64::try_from(number) else {
            return Ok(None);
        };
        self.one(
            &format!("SELECT {COLUMNS} FROM revisions WHERE environment = ?1 AND number = ?2"),
            params![env, number],
        )
    }

    /// The revision running now: the newest `Promoted` one.
    pub fn current(&self, env: &str) -> Result<Option<Revision>, StoreError> {
        self.nth_promoted(env, 0)
    }

    /// The rollback target: the `Promoted` revision before [`Store::current`].
    pub fn previous(&self, env: &str) -> Result<Option<Revision>, StoreError> {
        self.nth_promoted(env, 1)
    }

    /// The images of the last `keep` promoted revisions of `env`, newest first, each once: the
    /// ones an image cleanup must leave so a rollback never needs a registry.
    pub fn images_to_keep(&self, env: &str, keep: usize) -> Result<Vec<String>, StoreError> {
        let promoted = self.revisions(
            &format!(
                "SELECT {COLUMNS} FROM revisions WHERE environment = ?1 AND outcome = 'promoted'
                 ORDER BY number DESC LIMIT ?2"
            ),
            params![env, i64::try_from(keep).unwrap_or(i64::MAX)],
        )?;
        let mut images: Vec<String> = Vec::new();
        for image in promoted.into_iter().flat_map(|r| r.images) {
            if !images.contains(&image) {
                images.push(image);
            }
        }
        Ok(images)
    }

    fn nth_promoted(&self, env: &str, skip: i64) -> Result<Option<Revision>, StoreError> {
        self.one(
            &format!(
                "SELECT {COLUMNS} FROM revisions WHERE environment = ?1 AND outcome = 'promoted'
                 ORDER BY number DESC LIMIT 1 OFFSET ?2"
            ),
            params![env, skip],
        )
    }

    fn one(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<Revision>, StoreError> {
        let raw = self.read(|conn| self.row(conn, sql, params, RawRevision::from_row))?;
        raw.map(|r| r.decode(self)).transpose()
    }

    fn revisions(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Revision>, StoreError> {
        let raw = self.read(|conn| self.rows(conn, sql, params, RawRevision::from_row))?;
        raw.into_iter().map(|r| r.decode(self)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{at, store};
    use serde_json::json;

    fn new_revision(env: &str, run: &str, images: &[&str]) -> NewRevision {
        NewRevision {
            environment: env.to_string(),
            run: run.to_string(),
            started: at(0),
            user: "ops".to_string(),
            playbook: "standard".to_string(),
            reason: Some("abc1234".to_string()),
            changes: json!({ "web": { "image": ["shop-web:1", "shop-web:2"] } }),
            services: json!({ "web": { "image": images.first().copied().unwrap_or("none") } }),
            images: images.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn promote(store: &Store, env: &str, run: &str, images: &[&str]) -> u64 {
        let r = store
            .begin_revision(new_revision(env, run, images))
            .unwrap();
        store
            .finish_revision(env, r.number, RevisionOutcome::Promoted, at(10))
            .unwrap();
        r.number
    }

    fn fail(store: &Store, env: &str, run: &str, outcome: RevisionOutcome) -> u64 {
        let r = store
            .begin_revision(new_revision(env, run, &["broken:1"]))
            .unwrap();
        store
            .finish_revision(env, r.number, outcome, at(10))
            .unwrap();
        r.number
    }

    #[test]
    fn numbers_count_from_one_per_environment() {
        let (_dir, store) = store();
        let a1 = store
            .begin_revision(new_revision("shop", "r1", &[]))
            .unwrap();
        let b1 = store
            .begin_revision(new_revision("blog", "r2", &[]))
            .unwrap();
        let a2 = store
            .begin_revision(new_revision("shop", "r3", &[]))
            .unwrap();
        assert_eq!((a1.number, b1.number, a2.number), (1, 1, 2));
        assert_eq!(a1.outcome, RevisionOutcome::InProgress);
        assert_eq!(a1.finished, None);
    }

    #[test]
    fn a_revision_reads_back_as_written() {
        let (_dir, store) = store();
        let begun = store
            .begin_revision(new_revision("shop", "r1", &["shop-web:2", "shop-api:1"]))
            .unwrap();
        assert_eq!(store.revision("shop", 1).unwrap().as_ref(), Some(&begun));
        store
            .finish_revision(
                "shop",
                1,
                RevisionOutcome::Failed {
                    reason: "smoke check web / returned 500".into(),
                },
                at(42),
            )
            .unwrap();
        let done = store.revision("shop", 1).unwrap().unwrap();
        assert_eq!(done.finished, Some(at(42)));
        assert_eq!(done.duration(), Some(jiff::SignedDuration::from_secs(42)));
        assert_eq!(
            done.outcome,
            RevisionOutcome::Failed {
                reason: "smoke check web / returned 500".into()
            }
        );
        assert_eq!(done.images, ["shop-web:2", "shop-api:1"]);
        assert_eq!(done.changes, begun.changes);
        assert_eq!(store.revision("shop", 2).unwrap(), None);
        assert_eq!(store.revision("blog", 1).unwrap(), None);
    }

    #[test]
    fn finishing_an_unknown_revision_is_an_error() {
        let (_dir, store) = store();
        let err = store
            .finish_revision("shop", 7, RevisionOutcome::Promoted, at(0))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownRevision { number: 7, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("state.db"), "{err}");
    }

    #[test]
    fn history_is_newest_first_and_per_environment() {
        let (_dir, store) = store();
        promote(&store, "shop", "r1", &["a:1"]);
        promote(&store, "blog", "r2", &["b:1"]);
        fail(&store, "shop", "r3", RevisionOutcome::Superseded);
        store
            .begin_revision(new_revision("shop", "r4", &[]))
            .unwrap();
        let numbers: Vec<_> = store
            .history("shop")
            .unwrap()
            .iter()
            .map(|r| (r.number, r.run.clone()))
            .collect();
        assert_eq!(
            numbers,
            [(3, "r4".into()), (2, "r3".into()), (1, "r1".to_string())]
        );
        assert_eq!(store.history("blog").unwrap().len(), 1);
        assert!(store.history("nowhere").unwrap().is_empty());
    }

    #[test]
    fn current_and_previous_skip_what_never_went_live() {
        let (_dir, store) = store();
        assert_eq!(store.current("shop").unwrap(), None);
        assert_eq!(store.previous("shop").unwrap(), None);

        promote(&store, "shop", "r1", &["web:1"]);
        assert_eq!(store.current("shop").unwrap().unwrap().number, 1);
        assert_eq!(store.previous("shop").unwrap(), None);

        fail(
            &store,
            "shop",
            "r2",
            RevisionOutcome::Failed {
                reason: "health".into(),
            },
        );
        promote(&store, "shop", "r3", &["web:3"]);
        fail(
            &store,
            "shop",
            "r4",
            RevisionOutcome::RolledBack {
                reason: "canary error rate 12%".into(),
            },
        );
        // Still running while another begins: in progress is not current.
        store
            .begin_revision(new_revision("shop", "r5", &[]))
            .unwrap();
        assert_eq!(store.current("shop").unwrap().unwrap().number, 3);
        assert_eq!(store.previous("shop").unwrap().unwrap().number, 1);

        // `rollout rollback` marks the live revision rolled back: the one before is current.
        store
            .finish_revision(
                "shop",
                3,
                RevisionOutcome::RolledBack {
                    reason: "by hand".into(),
                },
                at(99),
            )
            .unwrap();
        assert_eq!(store.current("shop").unwrap().unwrap().number, 1);
        assert_eq!(store.previous("shop").unwrap(), None);
    }

    #[test]
    fn images_to_keep_cover_the_last_promoted_revisions() {
        let (_dir, store) = store();
        promote(&store, "shop", "r1", &["web:1", "db:15"]);
        promote(&store, "shop", "r2", &["web:2", "db:15"]);
        fail(
            &store,
            "shop",
            "r3",
            RevisionOutcome::Failed { reason: "x".into() },
        );
        promote(&store, "shop", "r4", &["web:4", "db:16"]);
        promote(&store, "blog", "r5", &["blog:1"]);

        assert_eq!(
            store.images_to_keep("shop", 2).unwrap(),
            ["web:4", "db:16", "web:2", "db:15"]
        );
        assert_eq!(
            store.images_to_keep("shop", 10).unwrap(),
            ["web:4", "db:16", "web:2", "db:15", "web:1"]
        );
        assert!(store.images_to_keep("shop", 0).unwrap().is_empty());
        assert!(
            !store
                .images_to_keep("shop", 10)
                .unwrap()
                .contains(&"broken:1".to_string())
        );
    }

    /// Thread `t`'s 25 new revisions of `shop`: their numbers, in order.
    fn begin_25_revisions(store: &Store, t: usize) -> Vec<u64> {
        (0..25)
            .map(|i| {
                store
                    .begin_revision(new_revision("shop", &format!("t{t}-{i}"), &[]))
                    .unwrap()
                    .number
            })
            .collect()
    }

    /// The numbers four threads of [`begin_25_revisions`] got are 1 to 100, each once.
    fn assert_each_number_once(threads: Vec<std::thread::JoinHandle<Vec<u64>>>) {
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn threads_with_their_own_connections_never_share_a_number() {
        let (dir, _store) = store();
        let threads = (0..4)
            .map(|t| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || begin_25_revisions(&Store::open(&path).unwrap(), t))
            })
            .collect();
        assert_each_number_once(threads);
    }

    #[test]
    fn threads_sharing_one_store_never_share_a_number() {
        let (_dir, store) = store();
        let store = std::sync::Arc::new(store);
        let threads = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || begin_25_revisions(&store, t))
            })
            .collect();
        assert_each_number_once(threads);
    }

    #[test]
    fn serializes_in_camel_case_with_a_tagged_outcome() {
        let (_dir, store) = store();
        let r = store
            .begin_revision(new_revision("shop", "r1", &["web:1"]))
            .unwrap();
        store
            .finish_revision(
                "shop",
                r.number,
                RevisionOutcome::RolledBack {
                    reason: "canary".into(),
                },
                at(5),
            )
            .unwrap();
        let json = serde_json::to_value(store.revision("shop", 1).unwrap().unwrap()).unwrap();
        assert_eq!(
            json["outcome"],
            json!({ "status": "rolledBack", "reason": "canary" })
        );
        assert_eq!(json["number"], 1);
        assert!(json["started"].as_str().unwrap().ends_with('Z'));
        assert!(json.get("finished").is_some());
        let back: Revision = serde_json::from_value(json).unwrap();
        assert_eq!(back.number, 1);
    }
}
