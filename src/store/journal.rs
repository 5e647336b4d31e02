//! The run journal: what a promotion or rollback is about to do (`intent`) and what it has done
//! (`done`), appended before and after every effect on production. Entries are only ever
//! inserted, each in its own fsynced transaction, so after a crash the journal says exactly how
//! far a run got: the next command reads it to finish or undo the run (see `exec::recover`).
//!
//! A run's first entry is `begin` (written in the same transaction as its revision) and its last
//! is `end` (written in the same transaction as the revision's outcome): a run with a `begin` and
//! no `end` was interrupted, unless its process still holds the environment's lock.

use jiff::Timestamp;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::history::{NewRevision, Revision, RevisionOutcome};
use super::{Store, StoreError, ts_from_sql, ts_to_sql};

/// The journal step that opens a run.
pub const BEGIN: &str = "begin";
/// The journal step that closes a run.
pub const END: &str = "end";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// About to do it.
    Intent,
    /// Done.
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Intent => "intent",
            Phase::Done => "done",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    pub seq: u64,
    pub environment: String,
    pub run: String,
    pub step: String,
    pub phase: Phase,
    pub data: serde_json::Value,
    pub at: Timestamp,
}

impl JournalEntry {
    /// `step.phase`, the name the fault-injection hook and the docs use.
    pub fn label(&self) -> String {
        format!("{}.{}", self.step, self.phase.as_str())
    }
}

type RawEntry = (i64, String, String, String, String, String, String);

impl Store {
    /// Records a new revision and the run's `begin` entry (with `data`) in one transaction.
    pub fn begin_run(
        &self,
        revision: NewRevision,
        data: serde_json::Value,
    ) -> Result<Revision, StoreError> {
        let run = revision.run.clone();
        let env = revision.environment.clone();
        let started = revision.started;
        self.write(|tx| {
            let r = self.insert_revision(tx, revision)?;
            let mut data = data;
            if let Some(obj) = data.as_object_mut() {
                obj.insert("revision".into(), r.number.into());
            }
            self.insert_entry(tx, &env, &run, BEGIN, Phase::Done, &data, started)?;
            Ok(r)
        })
    }

    /// Appends one entry to `run`'s journal; returns its sequence number.
    pub fn journal_append(
        &self,
        env: &str,
        run: &str,
        step: &str,
        phase: Phase,
        data: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        self.write(|tx| self.insert_entry(tx, env, run, step, phase, data, Timestamp::now()))
    }

    /// Closes `run`: its revision gets `outcome` and the journal its `end` entry, together.
    pub fn end_run(
        &self,
        env: &str,
        run: &str,
        revision: u64,
        outcome: RevisionOutcome,
        data: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let now = Timestamp::now();
        self.write(|tx| {
            self.update_revision(tx, env, revision, &outcome, now)?;
            self.insert_entry(tx, env, run, END, Phase::Done, data, now)?;
            Ok(())
        })
    }

    /// Every entry of `run`, in order.
    pub fn journal(&self, run: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.entries(
            "SELECT seq, environment, run, step, phase, data, at FROM journal
             WHERE run = ?1 ORDER BY seq",
            run,
        )
    }

    /// Runs of `env` that began and never ended, oldest first, each with its `begin` entry.
    /// Includes a run still going in another process: callers check the lock.
    pub fn unfinished_runs(&self, env: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.entries(
            "SELECT seq, environment, run, step, phase, data, at FROM journal AS b
             WHERE environment = ?1 AND step = 'begin'
               AND NOT EXISTS (SELECT 1 FROM journal AS e
                               WHERE e.run = b.run AND e.step = 'end')
             ORDER BY seq",
            env,
        )
    }

    /// The entries `sql` selects (the journal's columns in table order, one parameter).
    fn entries(&self, sql: &str, param: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.read(|conn| self.rows(conn, sql, [param], |r| RawEntry::try_from(r)))?
            .into_iter()
            .map(|r| self.decode_entry(r))
            .collect()
    }

    /// The environment a run belongs to, from its journal.
    pub fn run_environment(&self, run: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            self.row(
                conn,
                "SELECT environment FROM journal WHERE run = ?1 LIMIT 1",
                [run],
                |r| r.get(0),
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_entry(
        &self,
        tx: &rusqlite::Transaction<'_>,
        env: &str,
        run: &str,
        step: &str,
        phase: Phase,
        data: &serde_json::Value,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        tx.execute(
            "INSERT INTO journal (environment, run, step, phase, data, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                env,
                run,
                step,
                phase.as_str(),
                data.to_string(),
                ts_to_sql(at)
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(tx.last_insert_rowid() as u64)
    }

    fn decode_entry(&self, r: RawEntry) -> Result<JournalEntry, StoreError> {
        let (seq, environment, run, step, phase, data, at) = r;
        let phase = match phase.as_str() {
            "intent" => Phase::Intent,
            "done" => Phase::Done,
            other => return Err(self.decode("journal phase", other)),
        };
        Ok(JournalEntry {
            seq: seq as u64,
            data: serde_json::from_str(&data)
                .map_err(|e| self.decode(&format!("journal entry {seq}"), e))?,
            at: ts_from_sql(self, &at)?,
            environment,
            run,
            step,
            phase,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::store;
    use serde_json::json;

    fn revision(run: &str) -> NewRevision {
        NewRevision {
            environment: "shop".into(),
            run: run.into(),
            started: Timestamp::now(),
            user: "ana".into(),
            playbook: "default".into(),
            reason: None,
            changes: json!([]),
            services: json!({}),
            images: vec![],
        }
    }

    #[test]
    fn a_run_is_unfinished_from_begin_to_end() {
        let (_dir, store) = store();
        let r = store
            .begin_run(revision("r1"), json!({"kind": "promotion"}))
            .unwrap();
        assert_eq!(r.number, 1);
        store
            .journal_append(
                "shop",
                "r1",
                "candidate",
                Phase::Intent,
                &json!({"service": "web"}),
            )
            .unwrap();
        let open = store.unfinished_runs("shop").unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].run, "r1");
        assert_eq!(open[0].data["revision"], 1);
        assert!(store.unfinished_runs("other").unwrap().is_empty());

        store
            .end_run("shop", "r1", 1, RevisionOutcome::Promoted, &json!({}))
            .unwrap();
        assert!(store.unfinished_runs("shop").unwrap().is_empty());
        let labels: Vec<String> = store
            .journal("r1")
            .unwrap()
            .iter()
            .map(|e| e.label())
            .collect();
        assert_eq!(labels, ["begin.done", "candidate.intent", "end.done"]);
        assert_eq!(
            store.revision("shop", 1).unwrap().unwrap().outcome,
            RevisionOutcome::Promoted
        );
        assert_eq!(
            store.run_environment("r1").unwrap().as_deref(),
            Some("shop")
        );
    }

    #[test]
    fn ending_an_unknown_revision_writes_nothing() {
        let (_dir, store) = store();
        store.begin_run(revision("r1"), json!({})).unwrap();
        let err = store
            .end_run("shop", "r1", 9, RevisionOutcome::Promoted, &json!({}))
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownRevision { .. }), "{err:?}");
        // The end entry was not committed without its revision update.
        assert_eq!(store.unfinished_runs("shop").unwrap().len(), 1);
    }
}
