//! `rollout approve RUN --by ROLE|PARTY`: records an approval of a run parked at an `approve`
//! gate, or a third party's authorization for the services it manages, then says how to
//! resume. Exit 0 recorded, 1 bad input (no such parked run, nothing awaited from that role),
//! 3 refused (the two-person rule).

use std::path::Path;
use std::sync::Arc;

use crate::cli::output::Printer;
use crate::cli::{ApproveArgs, ExitStatus, Format};
use crate::project::Project;
use crate::report::run::current_user;
use crate::session::approve::{Outcome, Request, record};
use crate::store::Store;

pub async fn run(dir: &Path, args: ApproveArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let output = args.output;
    let project = Project::open(dir)?;
    let store = Arc::new(Store::open(&project.state_dir())?);
    let request = Request {
        run: args.run,
        by: args.by,
        note: args.note,
        reference: args.reference,
        expires: args.expires,
        env: args.env.env,
    };
    // Where the platform keeps the gates (kubernetes), the run may have been parked on another
    // machine, and the approval is for every machine: read them first, write them after.
    let platform = match project.config.backend {
        crate::manifest::config::Backend::Docker => None,
        crate::manifest::config::Backend::Kubernetes => {
            let engine = crate::session::connect(&project, "approve").await?;
            let envs = gate_environments(&project, &request)?;
            for env in &envs {
                crate::exec::journal::pull_gates(engine.as_ref(), &store, env)
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
            Some(engine)
        }
    };
    let recorded = record(
        &project,
        &store,
        &request,
        &current_user(),
        jiff::Timestamp::now(),
    )?;
    if let (Some(engine), Outcome::Recorded { grant, what }) = (&platform, &recorded.outcome) {
        crate::exec::journal::push_grant(engine.as_ref(), &store, grant)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}: the {what} is recorded on this machine only; run `rollout approve` again to record it for every machine"
                )
            })?;
    }
    for w in &recorded.warnings {
        printer.warn(w);
    }
    match recorded.outcome {
        Outcome::Refused { run, reason } => {
            if output == Format::Json {
                printer.json(&serde_json::json!({ "run": run, "outcome": { "outcome": "refused", "reason": reason } }))?;
            } else {
                printer.refusal(&reason);
            }
            Ok(ExitStatus::Refused)
        }
        Outcome::Recorded { grant, what } => {
            if output == Format::Json {
                printer.json(&serde_json::json!({ "run": grant.run, "environment": grant.environment, "recorded": grant }))?;
            } else {
                let r = grant.run.clone();
                let parked = store.call(move |s| s.parked_run(&r)).await?;
                printer.out(&format!(
                    "Recorded the {what} for run {} of {}. `{}` resumes it.",
                    grant.run,
                    grant.environment,
                    crate::gate::resume_command(
                        &grant.environment,
                        parked.as_ref().map_or("", |p| p.playbook())
                    )
                ));
            }
            Ok(ExitStatus::Success)
        }
    }
}

/// The environments whose gates an approval may concern: the one `-e` names (or the project's
/// only one), else, for a run id, every environment of the project.
pub fn gate_environments(project: &Project, request: &Request) -> anyhow::Result<Vec<String>> {
    if request.env.is_some() || request.run == "latest" {
        return Ok(vec![project.environment_name(request.env.as_deref())?]);
    }
    Ok(project
        .catalog()?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}
