//! The executor's side of the run journal: every effect on production is written as an intent
//! before and as done after, and the fault-injection hook can end the process right after any
//! entry so tests can crash a run at every step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::engine::{EngineError, RunLedger};
use crate::store::{Imported, Phase, Store, StoreError};

/// What went wrong keeping a run's journal, or the platform's copy of the records and gates.
/// The inner errors are quoted in the message, not chained: each prints once.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An entry could not be written or read: the step it announces must not happen.
    #[error("the journal: {0}")]
    Journal(StoreError),
    #[error("the store: {0}")]
    Store(StoreError),
    #[error("the run's record in the cluster: {0}")]
    Record(EngineError),
    #[error("reading the run records ({place}): {error}")]
    PullRecords { place: String, error: EngineError },
    #[error("writing run {run}'s record ({place}): {error}")]
    PushRecord {
        run: String,
        place: String,
        error: EngineError,
    },
    #[error("reading the gates of {env}: {error}")]
    PullGates { env: String, error: EngineError },
    #[error("writing the gates of {env}: {error}")]
    PushGates { env: String, error: EngineError },
    #[error(
        "run {run} is no longer waiting at its gate in {place} (it was resumed or superseded on another machine)"
    )]
    NotParked { run: String, place: String },
}

/// The environment variable naming a journal entry after which rollout exits at once, as if
/// killed: `STEP.PHASE` (e.g. `switch.done`), optionally `@N` for its N-th occurrence in the run
/// (e.g. `candidate.intent@2`). For tests; see `tests/crash.rs`.
pub const CRASH_AFTER: &str = "ROLLOUT_CRASH_AFTER";

/// The exit code of a process ended by the fault-injection hook.
pub const CRASH_EXIT: i32 = 86;

/// One run's journal writer. With a platform ledger ([`Journal::with_ledger`]), the run's whole
/// record is written there too after every entry, before the step it announces happens.
#[derive(Clone)]
pub struct Journal {
    store: Arc<Store>,
    environment: String,
    run: String,
    ledger: Option<Arc<dyn RunLedger>>,
}

impl Journal {
    pub fn new(store: Arc<Store>, environment: &str, run: &str) -> Self {
        Journal {
            store,
            environment: environment.to_string(),
            run: run.to_string(),
            ledger: None,
        }
    }

    /// The journal that also keeps the run's record in `ledger` (the platform's).
    pub fn with_ledger(mut self, ledger: Option<Arc<dyn RunLedger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Writes the run's whole record (revision and journal, as the store has them) to the
    /// platform's ledger, if there is one. Called after every entry, and after the store's
    /// `begin_run` and `end_run`.
    pub async fn sync(&self) -> Result<(), JournalError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let run = self.run.clone();
        let doc = self
            .store
            .call(move |s| s.export_run(&run))
            .await
            .map_err(JournalError::Journal)?;
        let Some(doc) = doc else { return Ok(()) };
        ledger.push(&doc).await.map_err(JournalError::Record)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn run(&self) -> &str {
        &self.run
    }

    /// Records that `step` is about to happen. An error means it must not happen: the journal
    /// could not say so, and a crash after it would leave it unknown.
    pub async fn intent(&self, step: &str, data: serde_json::Value) -> Result<(), JournalError> {
        self.append(step, Phase::Intent, data).await
    }

    /// Records that `step` happened.
    pub async fn done(&self, step: &str, data: serde_json::Value) -> Result<(), JournalError> {
        self.append(step, Phase::Done, data).await
    }

    async fn append(
        &self,
        step: &str,
        phase: Phase,
        data: serde_json::Value,
    ) -> Result<(), JournalError> {
        let (env, run, s) = (self.environment.clone(), self.run.clone(), step.to_string());
        self.store
            .call(move |store| store.journal_append(&env, &run, &s, phase, &data))
            .await
            .map_err(JournalError::Journal)?;
        self.sync().await?;
        crash_point(&format!("{step}.{}", phase.as_str()));
        Ok(())
    }
}

/// [`pull`] from `engine`'s ledger, and its gates ([`pull_gates`]), when the platform keeps the
/// run records itself; nothing to do otherwise. The lines are the records it could not take.
pub async fn pull_from(
    engine: &dyn crate::engine::Engine,
    store: &Arc<Store>,
    env: &str,
) -> Result<Vec<String>, JournalError> {
    let Some(ledger) = engine.ledger() else {
        return Ok(Vec::new());
    };
    let conflicts = pull(ledger.as_ref(), store, env).await?;
    pull_gates(engine, store, env).await?;
    Ok(conflicts)
}

/// Imports `ledger`'s run records of `env` into `store` (a cache of them), so history, reports
/// and recovery see the runs of every machine. A record this store is ahead of (an entry whose
/// write to the platform failed) is written again from here. Returns a line for each record it
/// could not import (it disagrees with this store, which keeps what it has).
pub async fn pull(
    ledger: &dyn RunLedger,
    store: &Arc<Store>,
    env: &str,
) -> Result<Vec<String>, JournalError> {
    let docs = ledger
        .pull(env)
        .await
        .map_err(|error| JournalError::PullRecords {
            place: ledger.describe(env),
            error,
        })?;
    let mut conflicts = Vec::new();
    for doc in docs {
        let run = doc.revision.run.clone();
        let r = run.clone();
        match store
            .call(move |s| s.import_run(&doc))
            .await
            .map_err(JournalError::Store)?
        {
            Imported::Behind => {
                let ours = store
                    .call(move |s| s.export_run(&r))
                    .await
                    .map_err(JournalError::Store)?;
                if let Some(ours) = ours {
                    ledger
                        .push(&ours)
                        .await
                        .map_err(|error| JournalError::PushRecord {
                            run: run.clone(),
                            place: ledger.describe(env),
                            error,
                        })?;
                }
            }
            Imported::Conflict(why) => conflicts.push(format!(
                "run {run}'s record in {} was not taken: {why}",
                ledger.describe(env)
            )),
            Imported::Same | Imported::Updated { .. } => {}
        }
    }
    Ok(conflicts)
}

/// Where the platform keeps the environment's gates (kubernetes), brings them into `store`:
/// the run parked there and its grants, from whichever machine parked or approved it. Where it
/// has none yet, this store keeps what it has.
pub async fn pull_gates(
    engine: &dyn crate::engine::Engine,
    store: &Arc<Store>,
    env: &str,
) -> Result<(), JournalError> {
    let Some(ledger) = engine.ledger() else {
        return Ok(());
    };
    let doc = ledger
        .pull_gates(env)
        .await
        .map_err(|error| JournalError::PullGates {
            env: env.to_string(),
            error,
        })?;
    if let Some(doc) = doc {
        store
            .call(move |s| s.import_gates(&doc))
            .await
            .map_err(JournalError::Store)?;
    }
    Ok(())
}

/// Where the platform keeps the environment's gates (kubernetes), writes this store's there:
/// its parked run (or none), with the grants for it of both sides. For `promote` under the
/// environment's lock, after a run parks or leaves its gate.
pub async fn push_gates(
    engine: &dyn crate::engine::Engine,
    store: &Arc<Store>,
    env: &str,
) -> Result<(), JournalError> {
    let Some(ledger) = engine.ledger() else {
        return Ok(());
    };
    let ours = gates_here(store, env).await?;
    ledger
        .update_gates(env, &|there: Option<&crate::store::GatesDoc>| {
            if there.is_none() && ours.parked.is_none() {
                return None;
            }
            let mut doc = ours.clone();
            doc.merge_grants(there.map(|t| t.grants.as_slice()).unwrap_or_default());
            Some(doc)
        })
        .await
        .map(|_| ())
        .map_err(|error| JournalError::PushGates {
            env: env.to_string(),
            error,
        })
}

/// Where the platform keeps the gates (kubernetes), adds `grant` to them, for every machine:
/// only while its run is the one parked there (a run resumed or superseded on another machine
/// meanwhile is not put back on its gate; that is an error). Where the platform has no gates
/// yet, this store's are written, the grant with them.
pub async fn push_grant(
    engine: &dyn crate::engine::Engine,
    store: &Arc<Store>,
    grant: &crate::store::Grant,
) -> Result<(), JournalError> {
    let Some(ledger) = engine.ledger() else {
        return Ok(());
    };
    let env = grant.environment.clone();
    let ours = gates_here(store, &env).await?;
    let written = ledger
        .update_gates(
            &env,
            &|there: Option<&crate::store::GatesDoc>| match there {
                None => Some(ours.clone()),
                Some(t) if t.parked.as_ref().is_some_and(|p| p.run == grant.run) => {
                    let mut doc = t.clone();
                    doc.merge_grants(std::slice::from_ref(grant));
                    Some(doc)
                }
                Some(_) => None,
            },
        )
        .await
        .map_err(|error| JournalError::PushGates {
            env: env.to_string(),
            error,
        })?;
    match written {
        Some(_) => Ok(()),
        None => Err(JournalError::NotParked {
            run: grant.run.clone(),
            place: ledger.describe_gates(&env),
        }),
    }
}

/// `env`'s gates as this store has them ([`Store::export_gates`]).
async fn gates_here(store: &Arc<Store>, env: &str) -> Result<crate::store::GatesDoc, JournalError> {
    let name = env.to_string();
    store
        .call(move |s| s.export_gates(&name))
        .await
        .map_err(JournalError::Store)
}

/// Ends the process if [`CRASH_AFTER`] names this entry (counting occurrences per process).
pub fn crash_point(label: &str) {
    static TARGET: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static SEEN: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let value = std::env::var(CRASH_AFTER).ok()?;
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        Some(match value.split_once('@') {
            Some((label, n)) => (label.to_string(), n.parse().unwrap_or(1)),
            None => (value.to_string(), 1),
        })
    });
    let Some((wanted, nth)) = target else { return };
    if wanted != label {
        return;
    }
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = seen.entry(label.to_string()).or_default();
    *count += 1;
    if *count == *nth {
        eprintln!(
            "rollout: {CRASH_AFTER}={wanted}@{nth}: exiting at once after this journal entry"
        );
        std::process::exit(CRASH_EXIT);
    }
}
