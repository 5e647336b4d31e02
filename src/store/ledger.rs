//! A run's record as one document ([`RunDoc`]: its revision and its journal), for a platform
//! that keeps the environment's history itself (kubernetes: a ConfigMap per run), so every
//! machine that manages the environment sees every run and can settle one another machine left.
//!
//! The platform's copy is the truth; this store is a cache of it. Each command pulls the
//! documents and imports them ([`Store::import_run`]): a revision this store lacks is added
//! under its own number, an outcome that moved on is taken, journal entries past the ones this
//! store has are appended. A document that disagrees with what is here (the same revision
//! number for another run, a journal that is not a continuation of this store's) is not
//! imported and is reported as a conflict, so nothing recorded here is ever overwritten by it.

use jiff::Timestamp;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::history::Revision;
use super::journal::{BEGIN, Phase};
use super::{Store, StoreError, ts_to_sql};

/// One run's record: its revision and every journal entry, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDoc {
    pub revision: Revision,
    pub entries: Vec<LedgerEntry>,
}

/// A journal entry without this store's sequence number (each store numbers its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub step: String,
    pub phase: Phase,
    pub data: serde_json::Value,
    pub at: Timestamp,
}

/// What importing one document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// Nothing new.
    Same,
    /// This store has more of the run than the record (an entry whose write to the platform
    /// failed, or was never tried): nothing imported; the record should be written again.
    Behind,
    /// The revision was new here, or its outcome moved on, or entries were appended.
    Updated { new_revision: bool, entries: usize },
    /// Not imported: it disagrees with this store, which keeps what it has.
    Conflict(String),
}

impl Store {
    /// Run `run`'s record as a document; `None` when it has no `begin` entry here.
    pub fn export_run(&self, run: &str) -> Result<Option<RunDoc>, StoreError> {
        let entries = self.journal(run)?;
        let Some(begin) = entries.iter().find(|e| e.step == BEGIN) else {
            return Ok(None);
        };
        let Some(number) = begin.data["revision"].as_u64() else {
            return Ok(None);
        };
        let Some(revision) = self.revision(&begin.environment, number)? else {
            return Ok(None);
        };
        Ok(Some(RunDoc {
            revision,
            entries: entries
                .into_iter()
                .map(|e| LedgerEntry {
                    step: e.step,
                    phase: e.phase,
                    data: e.data,
                    at: e.at,
                })
                .collect(),
        }))
    }

    /// Imports a document another machine (or this one) wrote, as the module says.
    pub fn import_run(&self, doc: &RunDoc) -> Result<Imported, StoreError> {
        let r = &doc.revision;
        self.write(|tx| {
            let here: Option<String> = self.row(
                tx,
                "SELECT run FROM revisions WHERE environment = ?1 AND number = ?2",
                params![r.environment, r.number as i64],
                |row| row.get(0),
            )?;
            // The journal first: a document whose journal disagrees changes nothing at all.
            let local: Vec<(String, String)> = self.rows(
                tx,
                "SELECT step, phase FROM journal WHERE run = ?1 ORDER BY seq",
                [&r.run],
                |row| row.try_into(),
            )?;
            let prefix = doc
                .entries
                .iter()
                .zip(&local)
                .all(|(e, (step, phase))| e.step == *step && e.phase.as_str() == phase);
            if let Some(run) = here.as_ref().filter(|run| **run != r.run) {
                return Ok(Imported::Conflict(format!(
                    "revision {} of {} is run {run} here and run {} in the record",
                    r.number, r.environment, r.run
                )));
            }
            if prefix && local.len() > doc.entries.len() {
                return Ok(Imported::Behind);
            }
            if !prefix {
                return Ok(Imported::Conflict(format!(
                    "run {}'s journal here ({} entries) is not a beginning of the recorded one ({} entries)",
                    r.run,
                    local.len(),
                    doc.entries.len()
                )));
            }
            let mut new_revision = false;
            let mut changed = false;
            if here.is_some() {
                let (status, reason) = r.outcome.to_sql();
                changed = tx
                    .execute(
                        "UPDATE revisions SET outcome = ?3, outcome_reason = ?4, finished = ?5
                         WHERE environment = ?1 AND number = ?2
                           AND (outcome IS NOT ?3 OR outcome_reason IS NOT ?4 OR finished IS NOT ?5)",
                        params![
                            r.environment,
                            r.number as i64,
                            status,
                            reason,
                            r.finished.map(ts_to_sql)
                        ],
                    )
                    .map_err(|e| self.err(e))?
                    > 0;
            } else {
                self.insert_whole_revision(tx, r)?;
                new_revision = true;
            }
            let added = doc.entries.len() - local.len();
            for e in &doc.entries[local.len()..] {
                tx.execute(
                    "INSERT INTO journal (environment, run, step, phase, data, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        r.environment,
                        r.run,
                        e.step,
                        e.phase.as_str(),
                        e.data.to_string(),
                        ts_to_sql(e.at)
                    ],
                )
                .map_err(|e| self.err(e))?;
            }
            Ok(if new_revision || changed || added > 0 {
                Imported::Updated {
                    new_revision,
                    entries: added,
                }
            } else {
                Imported::Same
            })
        })
    }

    fn insert_whole_revision(
        &self,
        tx: &rusqlite::Transaction<'_>,
        r: &Revision,
    ) -> Result<(), StoreError> {
        let (status, reason) = r.outcome.to_sql();
        tx.execute(
            "INSERT INTO revisions (environment, number, run, started, finished, user, playbook, \
             reason, changes, services, images, outcome, outcome_reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                r.environment,
                r.number as i64,
                r.run,
                ts_to_sql(r.started),
                r.finished.map(ts_to_sql),
                r.user,
                r.playbook,
                r.reason,
                r.changes.to_string(),
                r.services.to_string(),
                serde_json::to_string(&r.images).expect("strings serialize"),
                status,
                reason,
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::store;
    use crate::store::{NewRevision, RevisionOutcome};
    use serde_json::json;

    fn begin(store: &Store, run: &str) -> Revision {
        store
            .begin_run(
                NewRevision {
                    environment: "shop".into(),
                    run: run.into(),
                    started: Timestamp::from_second(1_780_000_000).unwrap(),
                    user: "alice".into(),
                    playbook: "standard".into(),
                    reason: Some("abc1234".into()),
                    changes: json!([]),
                    services: json!({ "web": { "image": "web:2" } }),
                    images: vec!["web:2".into()],
                },
                json!({ "kind": "promotion", "old": {}, "changed": ["web"], "removed": [] }),
            )
            .unwrap()
    }

    /// A run written on machine A is read on machine B: its revision under its own number, its
    /// journal whole; later entries and the outcome follow; importing again changes nothing.
    #[test]
    fn a_run_exported_on_one_store_is_imported_whole_on_another_and_kept_up_to_date() {
        let (_a_dir, a) = store();
        let (_b_dir, b) = store();
        begin(&a, "r1");
        a.end_run("shop", "r1", 1, RevisionOutcome::Promoted, &json!({}))
            .unwrap();
        begin(&a, "r2");
        a.journal_append(
            "shop",
            "r2",
            "candidate",
            Phase::Intent,
            &json!({ "service": "web" }),
        )
        .unwrap();
        for run in ["r1", "r2"] {
            let doc = a.export_run(run).unwrap().unwrap();
            assert!(matches!(
                b.import_run(&doc).unwrap(),
                Imported::Updated {
                    new_revision: true,
                    ..
                }
            ));
        }
        assert_eq!(b.history("shop").unwrap(), a.history("shop").unwrap());
        let steps = |s: &Store| {
            s.journal("r2")
                .unwrap()
                .into_iter()
                .map(|e| (e.step, e.phase, e.data))
                .collect::<Vec<_>>()
        };
        assert_eq!(steps(&b), steps(&a));
        assert_eq!(
            b.unfinished_runs("shop").unwrap().len(),
            1,
            "r2 is open on B too"
        );

        a.journal_append(
            "shop",
            "r2",
            "candidate",
            Phase::Done,
            &json!({ "service": "web" }),
        )
        .unwrap();
        a.end_run(
            "shop",
            "r2",
            2,
            RevisionOutcome::Failed {
                reason: "boom".into(),
            },
            &json!({}),
        )
        .unwrap();
        let doc = a.export_run("r2").unwrap().unwrap();
        assert_eq!(
            b.import_run(&doc).unwrap(),
            Imported::Updated {
                new_revision: false,
                entries: 2
            }
        );
        assert_eq!(b.history("shop").unwrap(), a.history("shop").unwrap());
        assert_eq!(steps(&b), steps(&a));
        assert!(b.unfinished_runs("shop").unwrap().is_empty());
        assert_eq!(b.import_run(&doc).unwrap(), Imported::Same);
        // B's next revision follows the imported ones.
        assert_eq!(begin(&b, "r3").number, 3);
    }

    /// A record that disagrees with this store is not imported: the same number for another run,
    /// or a journal this store's is not a beginning of. Nothing here changes.
    #[test]
    fn a_disagreeing_record_is_a_conflict_and_changes_nothing() {
        let (_a_dir, a) = store();
        let (_b_dir, b) = store();
        begin(&a, "r1");
        begin(&b, "other");
        let doc = a.export_run("r1").unwrap().unwrap();
        let before = b.history("shop").unwrap();
        assert_eq!(
            b.import_run(&doc).unwrap(),
            Imported::Conflict(
                "revision 1 of shop is run other here and run r1 in the record".into()
            )
        );
        assert_eq!(b.history("shop").unwrap(), before);
        assert!(b.journal("r1").unwrap().is_empty());

        let (_c_dir, c) = store();
        c.import_run(&doc).unwrap();
        c.journal_append("shop", "r1", "stop", Phase::Intent, &json!({}))
            .unwrap();
        // C is ahead of the record (its last entry never reached the platform).
        assert_eq!(c.import_run(&doc).unwrap(), Imported::Behind);
        let mut other = doc.clone();
        other.entries.push(LedgerEntry {
            step: "candidate".into(),
            phase: Phase::Intent,
            data: json!({}),
            at: Timestamp::from_second(1_780_000_100).unwrap(),
        });
        assert!(matches!(
            c.import_run(&other).unwrap(),
            Imported::Conflict(_)
        ));
        assert_eq!(c.journal("r1").unwrap().len(), 2, "its own entries kept");
    }
}
