//! The executor: walks a playbook's steps for a run, reporting each, and always tears down the
//! test version it created.
//!
//! Rehearsals run every step against a test version only: steps aimed at production (and gates,
//! which only matter before production is touched) are reported "skipped in rehearsal".

pub mod health;
pub mod journal;
pub mod lock;
pub mod promote;
pub mod recover;
pub mod report;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::check::{self, CheckResult, Target};
use crate::engine::{Engine, Removed};
use crate::manifest::env::Environment;
use crate::manifest::playbook::{self, Playbook, Step};
use crate::progress::{Progress, Status};
use crate::testenv::{self, TestEnv};

use report::{Outcome, RunKind, RunReport, StepReport, StepStatus};

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
    let mut report = RunReport::new(RunKind::Rehearsal, run, env, playbook, now);
    let mut test_env: Option<TestEnv> = None;
    let mut failed: Option<String> = None;
    for (index, step) in playbook.steps.iter().enumerate() {
        let description = playbook::describe(step);
        let t0 = Instant::now();
        if let Some(why) = &failed {
            report.steps.push(StepReport::new(
                index,
                &description,
                StepStatus::NotRun,
                format!("not run: an earlier step failed ({why})"),
            ));
            continue;
        }
        if cancel.is_cancelled() {
            failed = Some("stopped by a signal".into());
            report.steps.push(StepReport::new(
                index,
                &description,
                StepStatus::NotRun,
                "not run: stopped by a signal".into(),
            ));
            continue;
        }
        let skip_reason = match step {
            Step::Smoke {
                target: playbook::Target::Production,
                ..
            } => Some("skipped in rehearsal (targets production)"),
            Step::Approve { .. } => {
                Some("skipped in rehearsal (a gate before production is touched)")
            }
            Step::Canary { .. } | Step::Promote { .. } => {
                Some("skipped in rehearsal (changes production)")
            }
            _ => None,
        };
        if let Some(why) = skip_reason {
            progress.end(&description, Status::Skipped, why, Duration::ZERO);
            report.steps.push(StepReport::new(
                index,
                &description,
                StepStatus::Skipped,
                why.into(),
            ));
            continue;
        }
        progress.note(&format!("{}. {description}", index + 1));
        let mut step_report = StepReport::new(index, &description, StepStatus::Ok, String::new());
        match step {
            Step::TestEnv { ttl, copy_data } => {
                let opts = testenv::Options {
                    ttl: *ttl,
                    copy_data: copy_data.clone(),
                    owner: Some(testenv::owner::current()),
                };
                match testenv::up(engine, env, run, &opts, now, progress, cancel).await {
                    Ok(t) => {
                        step_report.detail = format!(
                            "test version {} is up: {} services healthy",
                            t.network,
                            t.services.len()
                        );
                        test_env = Some(t);
                    }
                    Err(e) => {
                        step_report.status = StepStatus::Failed;
                        step_report.detail = e.to_string();
                        failed = Some(first_line(&e.to_string()));
                    }
                }
            }
            Step::Smoke { checks, .. } => {
                let Some(t) = &test_env else {
                    // Resolution puts a testEnv step before any test smoke step; keep it a failure anyway.
                    step_report.status = StepStatus::Failed;
                    step_report.detail = "no test version is up".into();
                    failed = Some(step_report.detail.clone());
                    report.steps.push(step_report);
                    continue;
                };
                let target = Target {
                    engine,
                    services: t.services.clone(),
                    environment: env,
                };
                let results = run_checks(&target, env, checks, progress, cancel).await;
                let failures = results.iter().filter(|r| !r.verdict.passed()).count();
                step_report.detail = format!(
                    "{} of {} checks passed",
                    results.len() - failures,
                    results.len()
                );
                if failures > 0 || cancel.is_cancelled() {
                    step_report.status = StepStatus::Failed;
                    failed = Some(format!(
                        "{failures} smoke check{} failed",
                        if failures == 1 { "" } else { "s" }
                    ));
                }
                step_report.checks = results;
            }
            _ => unreachable!("other steps are skipped above"),
        }
        step_report.elapsed_ms = t0.elapsed().as_millis() as u64;
        let status = if step_report.status == StepStatus::Ok {
            Status::Ok
        } else {
            Status::Failed
        };
        progress.end(
            &description,
            status,
            &first_line(&step_report.detail),
            t0.elapsed(),
        );
        report.steps.push(step_report);
    }
    if cancel.is_cancelled() && failed.is_none() {
        failed = Some("stopped by a signal".into());
    }
    report.teardown = Some(teardown(engine, env, run, progress).await);
    report.outcome = match failed {
        None => Outcome::Passed,
        Some(reason) if cancel.is_cancelled() => Outcome::Cancelled { reason },
        Some(reason) => Outcome::Failed { reason },
    };
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

async fn run_checks(
    target: &Target<'_>,
    env: &Environment,
    checks: &[playbook::Check],
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Vec<CheckResult> {
    let mut results = Vec::new();
    if checks.is_empty() {
        // The built-in smoke step: every service's own health check.
        for svc in env.services.iter().filter(|s| s.health.is_some()) {
            if cancel.is_cancelled() {
                break;
            }
            let r = check::redact(check::health(target, svc).await, env);
            report_check(progress, &r);
            results.push(r);
        }
        return results;
    }
    for c in checks {
        if cancel.is_cancelled() {
            break;
        }
        let r = check::redact(check::run(target, c).await, env);
        report_check(progress, &r);
        results.push(r);
    }
    results
}

fn report_check(progress: &dyn Progress, r: &CheckResult) {
    let (status, detail) = match &r.verdict {
        check::Verdict::Pass { detail } => (Status::Ok, detail.clone()),
        check::Verdict::Fail { reason } => (Status::Failed, reason.clone()),
        check::Verdict::Inconclusive { reason } => {
            (Status::Failed, format!("inconclusive: {reason}"))
        }
    };
    let attempts = if r.attempts > 1 {
        format!(" after {} attempts", r.attempts)
    } else {
        String::new()
    };
    progress.end(
        &format!("  {}", r.description),
        status,
        &format!("{detail}{attempts}"),
        r.elapsed,
    );
}

/// Removes the run's test version, reporting what went.
async fn teardown(
    engine: &dyn Engine,
    env: &Environment,
    run: &str,
    progress: &dyn Progress,
) -> report::Teardown {
    let t0 = Instant::now();
    match testenv::down(engine, &env.name, run).await {
        Ok(Removed {
            containers,
            networks,
            volumes,
        }) => {
            let detail =
                format!("removed {containers} containers, {networks} networks, {volumes} volumes");
            progress.end(
                "teardown of the test version",
                Status::Ok,
                &detail,
                t0.elapsed(),
            );
            report::Teardown {
                containers,
                networks,
                volumes,
                error: None,
            }
        }
        Err(e) => {
            progress.end(
                "teardown of the test version",
                Status::Failed,
                &e.to_string(),
                t0.elapsed(),
            );
            report::Teardown {
                containers: 0,
                networks: 0,
                volumes: 0,
                error: Some(e.to_string()),
            }
        }
    }
}
