//! Runs: every promote, rollback, rehearsal and test-env bring-up has an id and one record here,
//! written when it starts and rewritten as it goes and when it ends, so `latest` and
//! `rollout report RUN` work from any process while the run is still going.
//!
//! A record is replaced whole in one transaction (an upsert that keeps the row's identity), so a
//! reader in another process sees either the previous version or the new one, never a mix.

use jiff::Timestamp;
use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, ts_from_sql, ts_to_sql};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub run: String,
    pub environment: String,
    /// `promote`, `rollback`, `rehearse`, `testEnv`…
    pub kind: String,
    pub started: Timestamp,
    pub finished: Option<Timestamp>,
    pub user: String,
    pub outcome: String,
    /// The run's report as JSON, secrets already redacted by the caller.
    pub report: serde_json::Value,
}

const COLUMNS: &str = "run, environment, kind, started, finished, user, outcome, report";

struct RawRun {
    run: String,
    environment: String,
    kind: String,
    started: String,
    finished: Option<String>,
    user: String,
    outcome: String,
    report: String,
}

impl RawRun {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRun> {
        Ok(RawRun {
            run: row.get(0)?,
            environment: row.get(1)?,
            kind: row.get(2)?,
            started: row.get(3)?,
            finished: row.get(4)?,
            user: row.get(5)?,
            outcome: row.get(6)?,
            report: row.get(7)?,
        })
    }

    fn decode(self, store: &Store) -> Result<RunRecord, StoreError> {
        let report = serde_json::from_str(&self.report)
            .map_err(|e| store.decode(&format!("report of run {}", self.run), e))?;
        Ok(RunRecord {
            started: ts_from_sql(store, &self.started)?,
            finished: self
                .finished
                .as_deref()
                .map(|t| ts_from_sql(store, t))
                .transpose()?,
            run: self.run,
            environment: self.environment,
            kind: self.kind,
            user: self.user,
            outcome: self.outcome,
            report,
        })
    }
}

impl Store {
    /// Inserts the run, or replaces every field of the record with the same id.
    pub fn record_run(&self, r: &RunRecord) -> Result<(), StoreError> {
        self.execute(
            &format!(
                "INSERT INTO runs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (run) DO UPDATE SET
                     environment = excluded.environment, kind = excluded.kind,
                     started = excluded.started, finished = excluded.finished,
                     user = excluded.user, outcome = excluded.outcome,
                     report = excluded.report"
            ),
            params![
                r.run,
                r.environment,
                r.kind,
                ts_to_sql(r.started),
                r.finished.map(ts_to_sql),
                r.user,
                r.outcome,
                r.report.to_string(),
            ],
        )?;
        Ok(())
    }

    /// How many runs ended (or are going) per environment, kind and outcome: the daemon's
    /// `rollout_runs_total`.
    pub fn run_counts(&self) -> Result<Vec<(String, String, String, u64)>, StoreError> {
        self.read(|conn| {
            self.rows(
                conn,
                "SELECT environment, kind, outcome, COUNT(*) FROM runs \
             GROUP BY environment, kind, outcome ORDER BY environment, kind, outcome",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, i64>(3)?.max(0) as u64,
                    ))
                },
            )
        })
    }

    /// The run with this id, whatever its environment.
    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let raw = self.read(|conn| {
            self.row(
                conn,
                &format!("SELECT {COLUMNS} FROM runs WHERE run = ?1"),
                [id],
                RawRun::from_row,
            )
        })?;
        raw.map(|r| r.decode(self)).transpose()
    }

    /// The newest run of `env` (by start time), which `latest` stands for.
    pub fn latest_run(&self, env: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.runs(env, 1)?.pop())
    }

    /// The newest `limit` runs of `env`, newest first.
    pub fn runs(&self, env: &str, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        // Same start time (to the nanosecond): the one inserted last is the newer.
        let raw = self.read(|conn| {
            self.rows(
                conn,
                &format!(
                    "SELECT {COLUMNS} FROM runs WHERE environment = ?1
                 ORDER BY started DESC, rowid DESC LIMIT ?2"
                ),
                params![env, i64::try_from(limit).unwrap_or(i64::MAX)],
                RawRun::from_row,
            )
        })?;
        raw.into_iter().map(|r| r.decode(self)).collect()
    }

    /// The newest `limit` runs of every environment, newest first.
    pub fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let raw = self.read(|conn| {
            self.rows(
                conn,
                &format!("SELECT {COLUMNS} FROM runs ORDER BY started DESC, rowid DESC LIMIT ?1"),
                params![i64::try_from(limit).unwrap_or(i64::MAX)],
                RawRun::from_row,
            )
        })?;
        raw.into_iter().map(|r| r.decode(self)).collect()
    }

    /// Promotions and rollbacks of `env` recorded as started and never finished, oldest first.
    /// Those runs hold the environment's lock from before their record is written until after
    /// it is finished, so under the lock every one of them was left by a process that is gone.
    pub fn open_runs(&self, env: &str) -> Result<Vec<RunRecord>, StoreError> {
        let raw = self.read(|conn| {
            self.rows(
                conn,
                &format!(
                    "SELECT {COLUMNS} FROM runs WHERE environment = ?1 AND finished IS NULL
                 AND kind IN ('promotion', 'rollback') ORDER BY started, rowid"
                ),
                [env],
                RawRun::from_row,
            )
        })?;
        raw.into_iter().map(|r| r.decode(self)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{at, store};
    use serde_json::json;

    fn record(run: &str, env: &str, started: Timestamp) -> RunRecord {
        RunRecord {
            run: run.to_string(),
            environment: env.to_string(),
            kind: "promotion".to_string(),
            started,
            finished: None,
            user: "ops".to_string(),
            outcome: "running".to_string(),
            report: json!({ "steps": [] }),
        }
    }

    #[test]
    fn a_run_reads_back_and_is_replaced_whole() {
        let (_dir, store) = store();
        let mut r = record("t1abc", "shop", at(0));
        store.record_run(&r).unwrap();
        assert_eq!(store.run("t1abc").unwrap().as_ref(), Some(&r));

        r.finished = Some(at(30));
        r.outcome = "promoted".into();
        r.report = json!({ "steps": [ { "step": "promote", "status": "ok" } ] });
        store.record_run(&r).unwrap();
        assert_eq!(store.run("t1abc").unwrap().as_ref(), Some(&r));
        assert_eq!(store.runs("shop", 10).unwrap().len(), 1);
        assert_eq!(store.run("nope").unwrap(), None);
    }

    #[test]
    fn open_runs_are_unfinished_promotions_and_rollbacks_of_that_environment() {
        let (_dir, store) = store();
        let open = record("a", "shop", at(10));
        let mut rollback = record("b", "shop", at(20));
        rollback.kind = "rollback".into();
        let mut done = record("c", "shop", at(30));
        done.finished = Some(at(40));
        let mut rehearsal = record("d", "shop", at(50));
        rehearsal.kind = "rehearsal".into();
        let other = record("e", "other", at(60));
        for r in [&open, &rollback, &done, &rehearsal, &other] {
            store.record_run(r).unwrap();
        }
        let runs: Vec<String> = store
            .open_runs("shop")
            .unwrap()
            .into_iter()
            .map(|r| r.run)
            .collect();
        assert_eq!(runs, ["a", "b"]);
    }

    #[test]
    fn latest_is_the_newest_start_of_that_environment() {
        let (_dir, store) = store();
        assert_eq!(store.latest_run("shop").unwrap(), None);
        store.record_run(&record("a", "shop", at(10))).unwrap();
        store.record_run(&record("b", "shop", at(30))).unwrap();
        // Recorded later but started earlier (a slow writer): not the latest.
        store.record_run(&record("c", "shop", at(20))).unwrap();
        store.record_run(&record("d", "blog", at(40))).unwrap();
        assert_eq!(store.latest_run("shop").unwrap().unwrap().run, "b");
        assert_eq!(store.latest_run("blog").unwrap().unwrap().run, "d");

        let ids: Vec<_> = store
            .runs("shop", 10)
            .unwrap()
            .into_iter()
            .map(|r| r.run)
            .collect();
        assert_eq!(ids, ["b", "c", "a"]);
        assert_eq!(store.runs("shop", 2).unwrap().len(), 2);
        assert!(store.runs("shop", 0).unwrap().is_empty());
    }

    #[test]
    fn same_start_time_the_later_record_wins() {
        let (_dir, store) = store();
        store.record_run(&record("a", "shop", at(10))).unwrap();
        store.record_run(&record("b", "shop", at(10))).unwrap();
        // Updating the first keeps its place.
        store.record_run(&record("a", "shop", at(10))).unwrap();
        assert_eq!(store.latest_run("shop").unwrap().unwrap().run, "b");
    }

    #[test]
    fn serializes_in_camel_case() {
        let mut r = record("a", "shop", at(0));
        r.kind = "testEnv".into();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["run"], "a");
        assert_eq!(json["kind"], "testEnv");
        assert!(json["finished"].is_null());
    }
}
