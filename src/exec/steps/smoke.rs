//! `smoke`: checks against the test version or production; with no checks listed, every
//! service's own health check.

use tokio_util::sync::CancellationToken;

use super::super::walk::Walk;
use crate::check::{self, CheckResult, Target};
use crate::exec::Stop;
use crate::manifest::env::Environment;
use crate::manifest::playbook::{self, Target as StepTarget};
use crate::progress::{Progress, Status};
use crate::report::run::StepReport;

pub(super) async fn run(
    w: &mut Walk<'_>,
    target: StepTarget,
    checks: &[playbook::Check],
    sr: &mut StepReport,
) -> Result<String, Stop> {
    let services = match (target, &w.test_env, &w.production) {
        (StepTarget::Test, Some(t), _) => t.services.clone(),
        // Resolution puts a testEnv step before any test smoke step; keep it a failure anyway.
        (StepTarget::Test, None, _) => return Err(Stop::Reason("no test version is up".into())),
        (StepTarget::Production, _, Some(p)) => p.deployment.production_endpoints().await,
        (StepTarget::Production, _, None) => {
            return Err(Stop::Reason("a rehearsal never checks production".into()));
        }
    };
    let t = Target {
        engine: w.engine,
        services,
        environment: w.env,
    };
    let results = run_checks(&t, w.env, checks, w.progress, w.cancel).await;
    let failures = results.iter().filter(|r| !r.verdict.passed()).count();
    let total = results.len();
    sr.checks = results;
    sr.detail = format!("{} of {total} checks passed", total - failures);
    if failures == 0 && w.cancel.is_cancelled() {
        return Err(Stop::Reason("stopped by a signal".into()));
    }
    if failures > 0 {
        return Err(Stop::Reason(format!(
            "{failures} of {total} smoke check{} failed",
            if total == 1 { "" } else { "s" }
        )));
    }
    Ok(sr.detail.clone())
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
