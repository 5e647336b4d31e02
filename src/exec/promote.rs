//! A promotion or rollback: the gates that hold before anything starts, then the playbook's
//! steps against production through the one step loop ([`super::walk`]), then the run settled
//! ([`super::settle`]): finished, put back, or parked at a gate, and its revision closed.
//! What the run changes in production is the `Deployment`'s business (`deploy.rs`).

use std::collections::BTreeMap;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::settle;
use super::walk::{Mode, Production, Walk};
use crate::engine::Engine;
use crate::gate;
use crate::manifest::env::Environment;
use crate::manifest::playbook::{Playbook, Step};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::report::run::{
    self as report, Emergency, Outcome, RunKind, RunReport, StepReport, StepStatus,
};
use crate::store::{Grant, NewRevision};

pub(super) use super::deploy::Deployment;
use super::journal::{Journal, JournalError};

#[derive(Debug, Clone)]
pub struct Options {
    /// Where the edge proxy binds public ports.
    pub bind: std::net::IpAddr,
    /// `--emergency --reason`: go ahead outside the change window, recorded loudly.
    pub emergency: Option<String>,
    /// Why this change (a commit, a note), recorded in the revision.
    pub reason: Option<String>,
    /// A rollback: no test version, no canary; straight to the switch.
    pub kind: RunKind,
    /// Approvals and authorizations recorded for this run (`rollout approve`).
    pub grants: Vec<Grant>,
    /// A run parked at a gate, resumed: where, and what it did before.
    pub resume: Option<Resume>,
}

/// Where a parked run resumes.
#[derive(Debug, Clone)]
pub struct Resume {
    pub gate_step: usize,
    /// The steps done before the gate, as reported then.
    pub steps: Vec<StepReport>,
    /// Who started it and when (the report's own fields).
    pub user: String,
    pub started: String,
}

/// Runs `playbook` against production for the changes in `plan` (a promotion, or a rollback
/// when `opts.kind` says so).
#[allow(clippy::too_many_arguments)]
pub async fn promote(
    engine: &dyn Engine,
    journal: &Journal,
    env: &Environment,
    playbook: &Playbook,
    plan: &Plan,
    run: &str,
    now: jiff::Timestamp,
    opts: &Options,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> RunReport {
    let started = Instant::now();
    // A rollback goes straight to the switch; anything else through the playbook.
    let mode = if opts.kind == RunKind::Rollback {
        Mode::Rollback
    } else {
        Mode::Promote
    };
    let mut report = RunReport::new(opts.kind, run, env, playbook, now);
    report.reason = opts.reason.clone();
    report.emergency = opts.emergency.clone().map(|reason| Emergency { reason });
    report.changes = report::changes(&plan.services, &report::snapshots(env));
    let request = gate::Request {
        kind: opts.kind,
        run,
        emergency: opts.emergency.as_deref(),
    };
    let authorized = match gate::evaluate(&plan.gates, playbook, &opts.grants, now, request) {
        gate::Decision::Refused { reason } => {
            report.outcome = Outcome::Refused { reason };
            return report;
        }
        // Third parties first: without their authorization nothing starts.
        gate::Decision::Await { awaiting, reason } => {
            emergency_step(opts, &mut report, progress);
            report.awaiting = awaiting;
            report.gate_step = Some(opts.resume.as_ref().map_or(0, |r| r.gate_step));
            report.outcome = Outcome::Refused { reason };
            return report;
        }
        gate::Decision::Proceed { authorized } => {
            emergency_step(opts, &mut report, progress);
            authorized
        }
    };
    for (party, x) in authorized {
        report.authorizations.push(report::Authorization {
            party,
            reference: x.reference.clone().unwrap_or_default(),
            by: x.who.clone(),
            note: x.note.clone(),
            expires: x.expires,
        });
    }
    let first_step = match &opts.resume {
        Some(r) => {
            report.steps = r.steps.clone();
            report.user = r.user.clone();
            report.started = r.started.clone();
            progress.note(&format!(
                "resuming run {run} (started by {}) at step {}",
                r.user,
                r.gate_step + 1
            ));
            r.gate_step
        }
        None => 0,
    };
    let deployment = match Deployment::new(engine, env, plan, run, opts.bind, journal, cancel).await
    {
        Ok(d) => d,
        Err(stop) => {
            let reason = stop.to_string();
            report.outcome = Outcome::Failed { reason };
            return report;
        }
    };
    let steps = mode.steps(playbook);
    let mut w = Walk {
        engine,
        env,
        playbook,
        run,
        now,
        mode,
        progress,
        cancel,
        report,
        test_env: None,
        // A resumed run began its test version before its gate.
        made_test_env: steps
            .iter()
            .take(first_step)
            .any(|s| matches!(s, Step::TestEnv { .. })),
        parked: false,
        production: Some(Production {
            journal,
            plan,
            opts,
            deployment,
            revision: None,
        }),
    };
    let mut failed = w.steps(first_step).await;
    let signalled = cancel.is_cancelled();
    let p = w
        .production
        .as_mut()
        .expect("a promotion has a production side");
    let d = &mut p.deployment;
    // A run must reach `promote`: a playbook that only canaries never switches production.
    if failed.is_none() && !d.switched() {
        failed = Some("the playbook has no promote step: production was not switched".into());
    }
    let facts = settle::Facts {
        failed,
        parked: w.parked,
        signalled,
        switched: d.switched(),
        touched: d.touched(),
        restores: mode == Mode::Rollback,
    };
    let done = match settle::action(&facts) {
        settle::Action::Park => Ok(()),
        settle::Action::Finish => d.finish(progress).await,
        settle::Action::Undo => d.undo(progress).await,
    };
    let failure = done.err().map(|e| e.to_string());
    let settled = settle::outcome(&facts, failure.as_deref().map_or(Ok(()), Err), &env.name);
    let (switch_ms, rollback_ms, revision) = (d.switch_ms, d.rollback_ms, p.revision);
    w.teardown().await;
    let mut report = w.report;
    if let (true, Some(number)) = (settled.settled, revision) {
        let revision_outcome = settle::revision_outcome(&facts, &settled.outcome);
        let (name, r) = (env.name.clone(), run.to_string());
        let data = serde_json::to_value(&settled.outcome).unwrap_or_default();
        let ended = match journal
            .store()
            .call(move |s| s.end_run(&name, &r, number, revision_outcome, &data))
            .await
        {
            Ok(()) => journal.sync().await,
            Err(e) => Err(JournalError::Store(e)),
        };
        if let Err(e) = ended {
            progress.note(&format!(
                "  the run could not be closed in the journal ({e}); the next command settles it"
            ));
        } else {
            crate::exec::journal::crash_point("end.done");
        }
    }
    report.switch_ms = switch_ms;
    report.rollback_ms = rollback_ms;
    report.outcome = settled.outcome;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// `--emergency --reason`: the change window was overridden, said loudly and kept as the first
/// step of the run's report.
fn emergency_step(opts: &Options, report: &mut RunReport, progress: &dyn Progress) {
    if let Some(r) = &opts.emergency {
        progress.note(&format!(
            "EMERGENCY: the change window is overridden ({r}); this is recorded in the run's report"
        ));
        report.steps.push(StepReport::new(
            0,
            "emergency override of the change window",
            StepStatus::Ok,
            r.clone(),
        ));
    }
}

/// Records the run's revision and its journal's `begin`, just before production is changed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn begin_revision(
    journal: &Journal,
    env: &Environment,
    playbook: &Playbook,
    plan: &Plan,
    run: &str,
    now: jiff::Timestamp,
    opts: &Options,
    report: &RunReport,
    d: &Deployment<'_>,
) -> Result<u64, JournalError> {
    let new = NewRevision {
        environment: env.name.clone(),
        run: run.to_string(),
        started: now,
        user: report.user.clone(),
        playbook: playbook.name.clone(),
        reason: opts
            .reason
            .clone()
            .or_else(|| opts.emergency.as_ref().map(|r| format!("emergency: {r}"))),
        changes: serde_json::to_value(&plan.services).unwrap_or_default(),
        services: serde_json::to_value(report::snapshots(env)).unwrap_or_default(),
        images: env.services.iter().map(|s| s.image.clone()).collect(),
    };
    let (old, changed, removed) = d.before();
    let begin = serde_json::to_value(Begin {
        kind: opts.kind,
        revision: 0,
        user: report.user.clone(),
        owner: crate::owner::current(),
        old: old.clone(),
        changed,
        removed: removed.to_vec(),
    })
    .unwrap_or_default();
    let revision = journal
        .store()
        .call(move |s| s.begin_run(new, begin))
        .await
        .map_err(JournalError::Store)?;
    journal.sync().await?;
    crate::exec::journal::crash_point("begin.done");
    Ok(revision.number)
}

/// What a run's `begin` entry records: enough to finish or undo it from the journal alone.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Begin {
    pub kind: RunKind,
    /// Filled in by the store with the revision number.
    #[serde(default)]
    pub revision: u64,
    pub user: String,
    /// `host:pid:start` of the process that ran it.
    pub owner: String,
    /// Running containers per service before the run, newest first.
    pub old: BTreeMap<String, Vec<String>>,
    /// Services that get a new container.
    pub changed: Vec<String>,
    /// Services that are removed.
    pub removed: Vec<String>,
}
