//! The one step loop. Rehearsals, promotions and rollbacks walk a playbook's steps here; the
//! [`Mode`] says which steps act on production (a rehearsal skips them, a rollback has only the
//! switch). Each step is journaled and reported the same way whatever the mode; the steps
//! themselves live in `steps`, one file each.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Stop;
use super::journal::Journal;
use super::promote::{Deployment, Options};
use super::{first_line, steps};
use crate::engine::Engine;
use crate::manifest::env::Environment;
use crate::manifest::playbook::{self, Playbook, Step, Target};
use crate::plan::Plan;
use crate::progress::{Progress, Status};
use crate::report::run::{RunKind, RunReport, StepReport, StepStatus};
use crate::testenv::TestEnv;

/// Which steps of the playbook act, and on what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every step against a test version only; production steps and gates are skipped.
    Rehearse,
    /// The playbook against production, after its test version passed.
    Promote,
    /// Straight to the switch: no test version, no canary, no gate (it undoes a change).
    Rollback,
}

impl Mode {
    pub fn kind(self) -> RunKind {
        match self {
            Mode::Rehearse => RunKind::Rehearsal,
            Mode::Promote => RunKind::Promotion,
            Mode::Rollback => RunKind::Rollback,
        }
    }

    /// The steps this mode walks.
    pub fn steps(self, playbook: &Playbook) -> Vec<Step> {
        match self {
            Mode::Rollback => vec![Step::Promote {
                drain: playbook::DEFAULT_DRAIN,
            }],
            Mode::Rehearse | Mode::Promote => playbook.steps.clone(),
        }
    }

    /// Why this mode passes over `step`, if it does.
    pub fn skips(self, step: &Step) -> Option<&'static str> {
        if self != Mode::Rehearse {
            return None;
        }
        match step {
            Step::Smoke {
                target: Target::Production,
                ..
            } => Some("skipped in rehearsal (targets production)"),
            Step::Approve { .. } => {
                Some("skipped in rehearsal (a gate before production is touched)")
            }
            Step::Canary { .. } | Step::Promote { .. } => {
                Some("skipped in rehearsal (changes production)")
            }
            Step::TestEnv { .. } | Step::Smoke { .. } => None,
        }
    }
}

/// Whether a step changes production: the run's revision begins before the first such step.
pub fn changes_production(step: &Step) -> bool {
    matches!(step, Step::Canary { .. } | Step::Promote { .. })
}

/// What a promotion or rollback holds besides the walk: its journal, plan and options, and what
/// it changed in production so far.
pub(super) struct Production<'a> {
    pub journal: &'a Journal,
    pub plan: &'a Plan,
    pub opts: &'a Options,
    pub deployment: Deployment<'a>,
    /// The revision, once a step changed production.
    pub revision: Option<u64>,
}

/// One run walking its steps.
pub(super) struct Walk<'a> {
    pub engine: &'a dyn Engine,
    pub env: &'a Environment,
    pub playbook: &'a Playbook,
    pub run: &'a str,
    pub now: jiff::Timestamp,
    pub mode: Mode,
    pub progress: &'a dyn Progress,
    pub cancel: &'a CancellationToken,
    pub report: RunReport,
    /// The test version that came up, for the test smoke steps.
    pub test_env: Option<TestEnv>,
    /// The run began a test version (in this process, or before its gate when resumed): it is
    /// torn down at the end, whether it came up or not.
    pub made_test_env: bool,
    /// Stopped at a gate waiting for people.
    pub parked: bool,
    /// `None` in a rehearsal, which never touches production.
    pub production: Option<Production<'a>>,
}

impl Walk<'_> {
    /// Walks the steps from `first` on (a resumed run starts at its gate). Why the steps
    /// stopped early, if they did.
    pub async fn steps(&mut self, first: usize) -> Option<String> {
        let mut failed: Option<String> = None;
        for (index, step) in self.mode.steps(self.playbook).iter().enumerate() {
            if index < first {
                continue;
            }
            let description = playbook::describe(step);
            if let Some(why) = &failed {
                self.passed_over(
                    index,
                    &description,
                    format!("not run: an earlier step failed ({})", first_line(why)),
                );
                continue;
            }
            if self.cancel.is_cancelled() {
                failed = Some("stopped by a signal".into());
                self.passed_over(index, &description, "not run: stopped by a signal".into());
                continue;
            }
            if let Some(why) = self.mode.skips(step) {
                self.progress
                    .end(&description, Status::Skipped, why, Duration::ZERO);
                self.report.steps.push(StepReport::new(
                    index,
                    &description,
                    StepStatus::Skipped,
                    why.into(),
                ));
                continue;
            }
            self.progress.note(&format!("{}. {description}", index + 1));
            let t0 = Instant::now();
            let mut sr = StepReport::new(index, &description, StepStatus::Ok, String::new());
            let result = match self.begin_revision(step).await {
                Ok(()) => steps::run(self, index, step, &mut sr).await,
                Err(e) => Err(e),
            };
            sr.elapsed_ms = t0.elapsed().as_millis() as u64;
            if let Some(p) = &mut self.production {
                sr.canary = std::mem::take(&mut p.deployment.canary_figures);
            }
            match result {
                Ok(detail) => {
                    sr.detail = detail;
                    let status = if sr.status == StepStatus::Skipped {
                        Status::Skipped
                    } else {
                        Status::Ok
                    };
                    self.progress
                        .end(&description, status, &sr.detail, t0.elapsed());
                }
                Err(stop) => {
                    let reason = stop.to_string();
                    let (status, shown) = if self.parked {
                        (StepStatus::NotRun, Status::Skipped)
                    } else {
                        (StepStatus::Failed, Status::Failed)
                    };
                    sr.status = status;
                    if sr.detail.is_empty() {
                        sr.detail = reason.clone();
                    }
                    self.progress
                        .end(&description, shown, &first_line(&sr.detail), t0.elapsed());
                    failed = Some(reason);
                }
            }
            self.report.steps.push(sr);
        }
        if self.cancel.is_cancelled() && failed.is_none() {
            failed = Some("stopped by a signal".into());
        }
        failed
    }

    /// A step that does not run because the run already stopped.
    fn passed_over(&mut self, index: usize, description: &str, detail: String) {
        self.report.steps.push(StepReport::new(
            index,
            description,
            StepStatus::NotRun,
            detail,
        ));
    }

    /// The revision begins with the first step that changes production: a run stopped before
    /// (a failed test version, a gate waiting for people) never touched it.
    async fn begin_revision(&mut self, step: &Step) -> Result<(), Stop> {
        let Some(p) = &mut self.production else {
            return Ok(());
        };
        if !changes_production(step) || p.revision.is_some() {
            return Ok(());
        }
        let n = super::promote::begin_revision(
            p.journal,
            self.env,
            self.playbook,
            p.plan,
            self.run,
            self.now,
            p.opts,
            &self.report,
            &p.deployment,
        )
        .await?;
        self.progress
            .note(&format!("revision {n} of {}", self.env.name));
        self.report.revision = Some(n);
        p.revision = Some(n);
        Ok(())
    }

    /// Removes the test version the run began, if it began one, and says so in the report.
    pub async fn teardown(&mut self) {
        if self.made_test_env || self.test_env.is_some() {
            self.report.teardown = Some(
                steps::test_env::teardown(self.engine, self.env, self.run, self.progress).await,
            );
        }
    }
}
