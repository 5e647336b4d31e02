//! Settling a run that was interrupted (killed, crashed, the engine lost) from its journal,
//! before the next run of its environment starts. Before the traffic switch the run is undone:
//! traffic back on the previous version, candidates removed, stopped stateful containers started
//! again. From the switch on it is finished: the new version serves, the old one is removed. The
//! test version, if any, is torn down either way. Every step is idempotent, so a recovery that
//! is itself interrupted is simply done again by the next command.

use std::sync::Arc;

use super::Stop;
use super::journal::{Journal, JournalError};
use super::promote::{Begin, Deployment};
use crate::engine::Engine;
use crate::manifest::env::Environment;
use crate::owner::{self, Liveness};
use crate::progress::Progress;
use crate::report::run::{Outcome, RunKind};
use crate::store::{JournalEntry, Store, StoreError};

/// Why an interrupted run could not be settled; the next command tries again.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{0}")]
    Store(StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("run {run} has no begin entry in the journal")]
    NoBegin { run: String },
    #[error("run {run}: unreadable begin entry: {error}")]
    Begin {
        run: String,
        error: serde_json::Error,
    },
    #[error("settling interrupted run {run}: {stop}")]
    Settle { run: String, stop: Stop },
}

/// What recovery did with one interrupted run.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovered {
    pub run: String,
    pub kind: RunKind,
    pub revision: u64,
    /// `finished` (the switch had happened) or `undone`.
    pub action: &'static str,
    /// Who and what left it: user, host, pid.
    pub left_by: String,
    /// The journal entry it stopped after.
    pub last_step: String,
    pub outcome: Outcome,
}

/// Who left an interrupted run, from its `begin` entry: `user on host (pid N, gone)`.
pub fn left_by(begin: &JournalEntry) -> String {
    let user = begin.data["user"].as_str().unwrap_or("someone");
    let owner_s = begin.data["owner"].as_str().unwrap_or_default();
    let (host, pid) = owner::host_pid(owner_s);
    let state = match owner::liveness(owner_s) {
        Liveness::Alive => "still running",
        Liveness::Dead => "no longer running",
        Liveness::Unknown => "another host",
    };
    format!("{user} on {host} (pid {pid}, {state})")
}

/// Settles the interrupted `run` of `env` (the environment as that run deployed it). `by` is the
/// run doing the recovery, recorded in the journal.
pub async fn recover(
    engine: &dyn Engine,
    store: &Arc<Store>,
    env: &Environment,
    run: &str,
    by: &str,
    bind: std::net::IpAddr,
    progress: &dyn Progress,
) -> Result<Recovered, RecoverError> {
    let entries = {
        let r = run.to_string();
        store
            .call(move |s| s.journal(&r))
            .await
            .map_err(RecoverError::Store)?
    };
    let Some(begin_entry) = entries.iter().find(|e| e.step == crate::store::BEGIN) else {
        return Err(RecoverError::NoBegin {
            run: run.to_string(),
        });
    };
    let begin: Begin =
        serde_json::from_value(begin_entry.data.clone()).map_err(|error| RecoverError::Begin {
            run: run.to_string(),
            error,
        })?;
    let left_by = left_by(begin_entry);
    let last_step = entries.last().map(|e| e.label()).unwrap_or_default();
    let journal = Journal::new(store.clone(), &env.name, run).with_ledger(engine.ledger());
    journal
        .intent("recover", serde_json::json!({ "by": by }))
        .await?;
    let switched = entries.iter().any(|e| {
        (e.step == "switch" && e.phase == crate::store::Phase::Done) || e.step == "finish"
    });
    let mut d = Deployment::from_journal(engine, env, run, bind, &journal, &begin, &entries);
    let touched = d.touched();
    let action = if switched { "finished" } else { "undone" };
    progress.note(&format!(
        "run {run} (revision {}) was interrupted after `{last_step}`, left by {left_by}: {}",
        begin.revision,
        if switched {
            "the switch had happened, finishing it"
        } else {
            "the switch had not happened, putting the previous version back"
        }
    ));
    let result = if switched {
        match d.drain_old(crate::manifest::playbook::DEFAULT_DRAIN).await {
            Ok(_) => d.finish(progress).await,
            Err(e) => Err(e),
        }
    } else {
        d.undo(progress).await
    };
    result.map_err(|stop| RecoverError::Settle {
        run: run.to_string(),
        stop,
    })?;
    super::steps::test_env::teardown(engine, env, run, progress).await;
    let reason =
        format!("interrupted after `{last_step}` (left by {left_by}); {action} by run {by}");
    let (outcome, revision_outcome) =
        super::settle::recovered(switched, touched, begin.kind == RunKind::Rollback, reason);
    let (name, r, number) = (env.name.clone(), run.to_string(), begin.revision);
    let data = serde_json::to_value(&outcome).unwrap_or_default();
    store
        .call(move |s| s.end_run(&name, &r, number, revision_outcome, &data))
        .await
        .map_err(RecoverError::Store)?;
    journal.sync().await?;
    Ok(Recovered {
        run: run.to_string(),
        kind: begin.kind,
        revision: begin.revision,
        action,
        left_by,
        last_step,
        outcome,
    })
}
