//! `rollout plan`: compare the manifest with what runs; print the changes and the steps.

use std::path::Path;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, PlanArgs};
use crate::plan;
use crate::project::Project;

pub async fn run(dir: &Path, args: PlanArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    // Everything the user wrote is read and checked before the engine is asked anything.
    let project = Project::open(dir)?;
    let (loaded, playbook) =
        super::load_with_playbook(&project, &args.env, args.playbook.as_deref(), printer)?;
    let engine = crate::session::connect(&project, "plan").await?;
    let observed = engine.observe(&loaded.environment.name).await?;
    let plan = plan::compute(&loaded.environment, &observed, &playbook);
    warn_interrupted(&project, &loaded.environment.name, printer);
    if plan.has_changes()
        && let Some(why) = super::kubernetes_unsupported(&project, &playbook, false)
    {
        printer.warn(&format!("`rollout promote` would be refused: {why}"));
    }
    match args.output {
        Format::Json => printer.json(&plan)?,
        Format::Text => printer.out(&plan::render::text(&plan, printer.paint())),
    }
    Ok(if plan.has_changes() {
        ExitStatus::Changes
    } else {
        ExitStatus::Success
    })
}

/// A run of `env` that was interrupted is settled by the next promote before it plans again:
/// say so, since what this plan compares against may still change. Reads an existing store
/// only (a project without one has no run to settle).
fn warn_interrupted(project: &Project, env: &str, printer: Printer) {
    if !project.state_dir().join(crate::store::FILE_NAME).is_file() {
        return;
    }
    let Ok(store) = crate::store::Store::open(&project.state_dir()) else {
        return;
    };
    let holder = store.lock_holder(env).ok().flatten();
    for begin in store.unfinished_runs(env).unwrap_or_default() {
        let running = holder.as_ref().is_some_and(|h| {
            h.run == begin.run && crate::exec::lock::holds(h, jiff::Timestamp::now())
        });
        let what = if running {
            "is still running"
        } else {
            "was interrupted; the next `rollout promote` or `rollback` settles it first"
        };
        printer.warn(&format!(
            "run {} of {env} {what} ({}); this plan compares with what runs now",
            begin.run,
            crate::exec::recover::left_by(&begin)
        ));
    }
}
