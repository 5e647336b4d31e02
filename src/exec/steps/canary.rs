//! `canary`: a share of the traffic to the candidates for a hold, judged by the analysis.
//! Skipped when no changed public service has a running version to share traffic with.

use std::time::Duration;

use super::super::walk::Walk;
use crate::exec::Stop;
use crate::manifest::playbook::{Analysis, Weight};
use crate::report::run::{StepReport, StepStatus};

pub(super) async fn run(
    w: &mut Walk<'_>,
    weight: Weight,
    hold: Duration,
    analysis: Option<&Analysis>,
    sr: &mut StepReport,
) -> Result<String, Stop> {
    let (progress, cancel) = (w.progress, w.cancel);
    let d = &mut super::production(w)?.deployment;
    if d.old_public().is_empty() {
        sr.status = StepStatus::Skipped;
        return Ok("skipped: no running version of a public service to share traffic with".into());
    }
    d.canary(weight, hold, analysis, progress, cancel).await
}
