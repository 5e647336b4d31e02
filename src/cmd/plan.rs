//! `rollout plan`: compare the manifest with what runs; print the changes and the steps.

use std::path::Path;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, PlanArgs};
use crate::plan;
use crate::project::Project;

pub async fn run(dir: &Path, args: PlanArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let PlanArgs {
        env,
        playbook,
        output,
    } = args;
    // Everything the user wrote is read and checked before the engine is asked anything.
    let project = Project::open(dir)?;
    let loaded = super::load_environment(&project, &env, printer)?;
    let playbook = project.playbook(playbook.as_deref(), &loaded.environment)?;
    let engine = super::connect(&project).await?;
    let observed = engine.observe(&loaded.environment.name).await?;
    let plan = plan::compute(&loaded.environment, &observed, &playbook);
    match output {
        Format::Json => printer.json(&plan)?,
        Format::Text => printer.out(&plan::render::text(&plan, printer.paint())),
    }
    Ok(if plan.has_changes() {
        ExitStatus::Changes
    } else {
        ExitStatus::Success
    })
}
