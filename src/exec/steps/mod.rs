//! The playbook's steps, one file each. [`run`] dispatches a step for the loop in
//! [`super::walk`]; each step returns the detail it reports, or why the run stops.

pub mod approve;
pub mod canary;
pub mod smoke;
pub mod switch;
pub mod test_env;

use super::Stop;
use super::walk::Walk;
use crate::manifest::playbook::Step;
use crate::report::run::StepReport;

/// Runs one step of the walk. `sr` is the step's report, for what a step adds to it (check
/// results, a status other than ok).
pub(super) async fn run(
    w: &mut Walk<'_>,
    index: usize,
    step: &Step,
    sr: &mut StepReport,
) -> Result<String, Stop> {
    match step {
        Step::TestEnv { ttl, copy_data } => test_env::run(w, *ttl, copy_data).await,
        Step::Smoke { target, checks } => smoke::run(w, *target, checks, sr).await,
        Step::Approve { by } => approve::run(w, index, by, sr),
        Step::Canary {
            weight,
            hold,
            analysis,
        } => canary::run(w, *weight, *hold, analysis.as_ref(), sr).await,
        Step::Promote { drain } => switch::run(w, *drain).await,
    }
}

/// The production side of the walk, which only production steps reach (a rehearsal skips
/// them before they run).
fn production<'w, 'a>(w: &'w mut Walk<'a>) -> Result<&'w mut super::walk::Production<'a>, Stop> {
    w.production.as_mut().ok_or_else(|| {
        Stop::Reason("this step changes production, which a rehearsal never does".into())
    })
}
