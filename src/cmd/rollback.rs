//! `rollout rollback [--to REVISION]`: puts the previous (or a named) revision back, with the
//! same blue-green switch as a promotion and no test version (what it puts back already ran).
//! Change windows and approvals do not hold a rollback back: it undoes a change.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, RollbackArgs};
use crate::exec::promote::Options;
use crate::manifest::playbook::Playbook;
use crate::plan;
use crate::project::Project;
use crate::report::run::RunKind;
use crate::session::Session;
use crate::store::Store;

pub async fn run(dir: &Path, args: RollbackArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let RollbackArgs {
        env,
        to,
        wait,
        output,
    } = args;
    let project = Project::open(dir)?;
    let current = super::load_environment(&project, &env, printer)?.environment;
    let store = Arc::new(Store::open(&project.state_dir())?);
    let engine =
        super::connect_and_collect(&project, "rollback", Some(&current.name), printer).await?;
    let json = output == Format::Json;
    let run = crate::run_id::new(jiff::Timestamp::now());
    let cancel = super::cancel_on_signal(printer);
    // The lock first: the previous revision is only known once interrupted runs are settled.
    let session = Session::new(&project, engine.as_ref(), &store, &cancel, json, printer);
    let guard = match session
        .lock_and_recover(&current, &run, "rollback", wait)
        .await?
    {
        Ok(g) => g,
        Err(status) => return Ok(status),
    };
    let target = match to {
        Some(n) => store.revision(&current.name, n)?.with_context(|| {
            format!(
                "{} has no revision {n} (see `rollout history`)",
                current.name
            )
        })?,
        None => store.previous(&current.name)?.with_context(|| {
            format!(
                "{} has no previous promoted revision to go back to",
                current.name
            )
        })?,
    };
    let desired = crate::session::lock::environment_of(&target, &current)?;
    let observed = engine.observe(&current.name).await?;
    let playbook = Playbook::switch_only(format!("rollback to revision {}", target.number));
    let plan = plan::compute(&desired, &observed, &playbook);
    if !plan.has_changes() {
        guard.release().await?;
        printer.out(&format!(
            "Nothing to do: {} already runs revision {}.",
            current.name, target.number
        ));
        return Ok(ExitStatus::Success);
    }
    let opts = Options {
        bind: project.config.proxy.bind,
        emergency: None,
        reason: Some(format!("rollback to revision {}", target.number)),
        kind: RunKind::Rollback,
        grants: Vec::new(),
        resume: None,
    };
    let status = super::promote::execute(&session, &run, &desired, &playbook, &plan, &opts).await;
    guard.release().await?;
    status.map(|e| e.status)
}
