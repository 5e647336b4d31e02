//! The executor: one step loop ([`walk`]) serves rehearsals, promotions and rollbacks; a
//! [`Mode`] says which steps act on production. The steps live in `steps`, one file each;
//! how a run ends is decided in [`settle`] (pure), and every run tears down the test version it
//! created.
//!
//! Rehearsals run every step against a test version only: steps aimed at production (and gates,
//! which only matter before production is touched) are reported "skipped in rehearsal".

mod deploy;
pub mod journal;
pub mod lock;
pub mod promote;
pub mod recover;
pub mod settle;
mod steps;
mod traffic;
pub mod walk;

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::manifest::env::Environment;
use crate::manifest::playbook::Playbook;
use crate::progress::Progress;

pub use walk::Mode;

/// Why a run stops: a step's own verdict, or what failed beneath it. Its message is the reason
/// the run's report and outcome give.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// The step's verdict: checks failed, a gate waits, a candidate exited, a signal came.
    #[error("{0}")]
    Reason(String),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    TestEnv(#[from] crate::testenv::TestEnvError),
    #[error(transparent)]
    Edge(#[from] crate::edge::EdgeError),
    #[error(transparent)]
    Admin(#[from] crate::proxy::client::AdminError),
    #[error("the edge proxy refused the routes: {0}")]
    Routes(crate::proxy::client::AdminError),
}

use crate::report::run::RunReport;

/// Runs `playbook` as a rehearsal of `env`: test version, checks, teardown.
pub async fn rehearse(
    engine: &dyn Engine,
    env: &Environment,
    playbook: &Playbook,
    run: &str,
    now: jiff::Timestamp,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> RunReport {
    let started = Instant::now();
    let mode = Mode::Rehearse;
    let mut w = walk::Walk {
        engine,
        env,
        playbook,
        run,
        now,
        mode,
        progress,
        cancel,
        report: RunReport::new(mode.kind(), run, env, playbook, now),
        test_env: None,
        made_test_env: false,
        parked: false,
        production: None,
    };
    let failed = w.steps(0).await;
    w.teardown().await;
    w.report.outcome = settle::rehearsal(failed, cancel.is_cancelled());
    w.report.elapsed_ms = started.elapsed().as_millis() as u64;
    w.report
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests;
