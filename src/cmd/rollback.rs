//! `rollout rollback [--to REVISION]`: puts the previous (or a named) revision back, with the
//! same blue-green switch as a promotion and no test version (what it puts back already ran).
//! Change windows and approvals do not hold a rollback back: it undoes a change.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, RollbackArgs};
use crate::engine::ServiceSnapshot;
use crate::exec::promote::Options;
use crate::exec::report::RunKind;
use crate::manifest::env::{Environment, Service};
use crate::manifest::playbook::Playbook;
use crate::plan;
use crate::project::Project;
use crate::store::{Revision, Store};

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
    let engine = super::connect(&project, "rollback").await?;
    super::collect_garbage(engine.as_ref(), Some(&current.name), printer).await?;
    let json = output == Format::Json;
    let run = crate::run_id::new(jiff::Timestamp::now());
    let cancel = super::cancel_on_signal(printer);
    // The lock first: the previous revision is only known once interrupted runs are settled.
    let guard = match super::lock_and_recover(
        &project,
        engine.as_ref(),
        &store,
        &current,
        &run,
        "rollback",
        wait,
        &cancel,
        json,
        printer,
    )
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
    let desired = environment_of(&target, &current)?;
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
    let status = super::promote::execute(
        &project,
        engine.as_ref(),
        &store,
        &run,
        &desired,
        &playbook,
        &plan,
        &opts,
        &cancel,
        json,
        printer,
    )
    .await;
    guard.release().await?;
    status.map(|e| e.status)
}

/// The environment as revision `r` ran it: its recorded settings, with secret values read now
/// from the sources the current manifest names (values are never stored).
pub fn environment_of(r: &Revision, current: &Environment) -> anyhow::Result<Environment> {
    let snapshots: BTreeMap<String, ServiceSnapshot> =
        serde_json::from_value(r.services.clone())
            .with_context(|| format!("revision {} records no usable settings", r.number))?;
    let mut services = Vec::new();
    let mut remaining: Vec<(String, ServiceSnapshot)> = snapshots.into_iter().collect();
    // Dependency order, as a resolved environment has it.
    while !remaining.is_empty() {
        let ready = remaining
            .iter()
            .position(|(_, s)| {
                s.depends_on
                    .iter()
                    .all(|d| services.iter().any(|x: &Service| &x.name == d))
            })
            .context("the revision's services depend on each other in a cycle")?;
        let (name, s) = remaining.remove(ready);
        let mut secrets = BTreeMap::new();
        for key in &s.secret_keys {
            let secret = current
                .service(&name)
                .and_then(|c| c.secrets.get(key))
                .with_context(|| format!("revision {} of {name} uses secret {key}, which the current manifest no longer declares", r.number))?;
            secrets.insert(key.clone(), secret.clone());
        }
        services.push(s.into_service(name, secrets));
    }
    Ok(Environment {
        services,
        ..current.clone()
    })
}
