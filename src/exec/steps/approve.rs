//! `approve`: a gate that waits for people. Without a recorded approval the run parks here
//! (before anything of production changed) until `rollout approve` records one and the next
//! `rollout promote -e ENV -p PLAYBOOK` (the playbook it was parked with) resumes it from this
//! step.

use super::super::walk::Walk;
use crate::exec::Stop;
use crate::report::run::{self as report, StepReport, StepStatus};
use crate::store::{Awaited, GrantKind};

pub(super) fn run(
    w: &mut Walk<'_>,
    index: usize,
    by: &str,
    sr: &mut StepReport,
) -> Result<String, Stop> {
    let starter = w.report.user.clone();
    let two_person = w.playbook.two_person_rule;
    let grants = &super::production(w)?.opts.grants;
    if let Some(x) = crate::gate::approval(by, grants, two_person, &starter) {
        w.report.approvals.push(report::Approval {
            by: x.who.clone(),
            role: by.to_string(),
            at: x.at,
            note: x.note.clone(),
        });
        return Ok(format!(
            "approved by {} as `{by}`{}",
            x.who,
            x.note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ));
    }
    w.parked = true;
    w.report.awaiting = vec![Awaited {
        kind: GrantKind::Approval,
        gate: by.to_string(),
        services: Vec::new(),
    }];
    w.report.gate_step = Some(index);
    sr.status = StepStatus::NotRun;
    Err(Stop::Reason(format!(
        "waiting for an approval by `{by}`: `rollout approve {} --by {by} [--note TEXT]`{}, then `{}` resumes the run from this step",
        w.run,
        if two_person {
            format!(" by someone other than {starter} (two-person rule)")
        } else {
            String::new()
        },
        crate::gate::resume_command(&w.env.name, &w.playbook.name)
    )))
}
