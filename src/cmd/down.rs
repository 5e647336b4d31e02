//! `rollout down`: removes an environment's production (its containers, its networks, its edge
//! proxy and so its routes, and its test versions), keeping its data volumes unless `--volumes`.
//! Audited and reported like a promotion. Exit 0 removed or nothing to remove, 1 failed,
//! 3 refused (lock held, or a service managed by a third party).

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::output::Printer;
use crate::cli::{DownArgs, ExitStatus, Format};
use crate::engine::{Engine, LabelledObject, ObjectKind, Role, labels};
use crate::manifest::env::Environment;
use crate::project::Project;
use crate::report::run::{Outcome, RunKind, RunReport, StepReport, StepStatus};
use crate::session::Session;
use crate::store::Store;

/// How long each container gets to stop before it is killed.
const GRACE: Duration = Duration::from_secs(10);

pub async fn run(dir: &Path, args: DownArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let DownArgs {
        env,
        yes,
        volumes,
        output,
    } = args;
    let json = output == Format::Json;
    let project = Project::open(dir)?;
    let environment = super::load_environment(&project, &env, printer)?.environment;
    if let Some(why) = managed_elsewhere(&environment) {
        if json {
            printer.json(&serde_json::json!({
                "environment": environment.name,
                "outcome": { "outcome": "refused", "reason": why },
            }))?;
        } else {
            printer.refusal(&format!("refused: {why}"));
        }
        return Ok(ExitStatus::Refused);
    }
    if project.config.backend == crate::manifest::config::Backend::Kubernetes {
        anyhow::bail!(
            "`rollout down` is not supported on the kubernetes backend yet (an environment's namespace holds its volumes); nothing was done"
        );
    }
    let engine =
        super::connect_and_collect(&project, "down", Some(&environment.name), printer).await?;
    let store = Arc::new(Store::open(&project.state_dir())?);
    let run = crate::run_id::new(jiff::Timestamp::now());
    let cancel = super::cancel_on_signal(printer);
    let session = Session::new(&project, engine.as_ref(), &store, &cancel, json, printer);
    let guard = match session
        .lock_and_recover(&environment, &run, "down", None)
        .await?
    {
        Ok(g) => g,
        Err(status) => return Ok(status),
    };
    let selector = BTreeMap::from([(labels::ENVIRONMENT.to_string(), environment.name.clone())]);
    let found = engine.list_labelled(&selector).await?;
    if found.is_empty() {
        guard.release().await?;
        if json {
            printer.json(&serde_json::json!({ "environment": environment.name, "outcome": { "outcome": "nothingToDo" } }))?;
        } else {
            printer.out(&format!(
                "Nothing to remove: {} has nothing on {}.",
                environment.name,
                engine.describe()
            ));
        }
        return Ok(ExitStatus::Success);
    }
    if !yes && let Err(e) = confirm(&environment.name, &found, volumes, printer) {
        guard.release().await?;
        return Err(e);
    }
    let report = remove(&session, &run, &environment, &found, volumes).await;
    guard.release().await?;
    let status = match report.outcome {
        Outcome::Passed => ExitStatus::Success,
        Outcome::Refused { .. } => ExitStatus::Refused,
        _ => ExitStatus::Failure,
    };
    Ok(status)
}

/// Why `down` is refused for `env`: a service another party manages needs that party's
/// recorded authorization, which `down` does not ask for yet.
fn managed_elsewhere(env: &Environment) -> Option<String> {
    let managed: Vec<String> = env
        .services
        .iter()
        .filter_map(|s| {
            s.managed_by
                .as_ref()
                .map(|party| format!("{} (managed by {party})", s.name))
        })
        .collect();
    if managed.is_empty() {
        return None;
    }
    Some(format!(
        "{} has services managed by a third party: {}; removing them needs that party's authorization, which `rollout down` cannot take yet: nothing was removed",
        env.name,
        managed.join(", ")
    ))
}

/// Asks on a terminal; refuses without one, since nobody could have read what goes.
fn confirm(
    env: &str,
    found: &[LabelledObject],
    volumes: bool,
    printer: Printer,
) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to remove {env}'s production without a confirmation: pass --yes; nothing was removed"
        );
    }
    let names = |kind: ObjectKind| -> String {
        let n: Vec<&str> = found
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| o.name.as_str())
            .collect();
        if n.is_empty() {
            "none".into()
        } else {
            n.join(", ")
        }
    };
    printer.out(&format!(
        "Containers: {}\nNetworks: {}\nVolumes ({}): {}",
        names(ObjectKind::Container),
        names(ObjectKind::Network),
        if volumes { "removed" } else { "kept" },
        names(ObjectKind::Volume)
    ));
    print!("Remove the production of {env}? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        anyhow::bail!("not confirmed; nothing was removed");
    }
    Ok(())
}

/// The objects `found` of one kind (and role, if given), by name.
fn of(found: &[LabelledObject], kind: ObjectKind, role: Option<Role>) -> Vec<String> {
    found
        .iter()
        .filter(|o| o.kind == kind)
        .filter(|o| {
            role.is_none_or(|r| o.labels.get(labels::ROLE).map(String::as_str) == Some(r.as_str()))
        })
        .map(|o| o.name.clone())
        .collect()
}

/// Carries out the removal under the lock, recording, auditing and printing it as a run.
async fn remove(
    session: &Session<'_>,
    run: &str,
    environment: &Environment,
    found: &[LabelledObject],
    volumes: bool,
) -> RunReport {
    let (engine, printer) = (session.engine, session.printer);
    let t0 = Instant::now();
    let mut report = RunReport::begun(RunKind::Down, run, environment, "-", jiff::Timestamp::now());
    super::record_run(session.store, &report, None, printer);
    let state = session.project.state_dir();
    let audit = |event: crate::audit::Event| {
        if let Err(e) = crate::audit::append(&state, event) {
            printer.warn(&format!("the audit trail could not record run {run}: {e}"));
        }
    };
    // No playbook runs: the entry names none.
    audit(crate::audit::Event::RunStarted {
        run: run.to_string(),
        environment: environment.name.clone(),
        command: crate::audit::RunCommand::Down,
        user: report.user.clone(),
        playbook: None,
        reason: None,
    });
    if !session.json {
        printer.out(&format!("run {run}"));
        printer.out(&format!(
            "Removing the production of {} on {}{}",
            environment.name,
            engine.describe(),
            if volumes {
                ", its volumes included"
            } else {
                " (its volumes are kept)"
            }
        ));
    }
    let production = of(found, ObjectKind::Container, Some(Role::Production));
    let proxies = of(found, ObjectKind::Container, Some(Role::Proxy));
    let networks: Vec<String> = of(found, ObjectKind::Network, None)
        .into_iter()
        .filter(|n| {
            found.iter().any(|o| {
                &o.name == n
                    && o.labels.get(labels::ROLE).map(String::as_str) != Some(Role::Test.as_str())
            })
        })
        .collect();
    let kept: Vec<String> = of(found, ObjectKind::Volume, None)
        .into_iter()
        .filter(|v| {
            found.iter().any(|o| {
                &o.name == v
                    && o.labels.get(labels::ROLE).map(String::as_str) != Some(Role::Test.as_str())
            })
        })
        .collect();
    let mut failure: Option<String> = None;
    let steps: [&str; 5] = [
        "remove test versions",
        "remove production containers",
        "remove the edge proxy (its routes)",
        "remove networks",
        if volumes {
            "remove volumes"
        } else {
            "keep volumes"
        },
    ];
    for (index, description) in steps.into_iter().enumerate() {
        if failure.is_none() && session.cancel.is_cancelled() {
            failure = Some("stopped by a signal".into());
            report.outcome = Outcome::Cancelled {
                reason: "stopped by a signal".into(),
            };
        }
        if failure.is_some() {
            report.steps.push(StepReport::new(
                index,
                description,
                StepStatus::NotRun,
                String::new(),
            ));
            continue;
        }
        let mut step = StepReport::new(index, description, StepStatus::Ok, String::new());
        let started = Instant::now();
        let done: Result<String, String> = match index {
            0 => remove_test_versions(engine, &environment.name).await,
            1 => remove_containers(engine, &production).await,
            2 => remove_containers(engine, &proxies).await,
            3 => remove_networks(engine, &networks).await,
            _ if volumes => remove_volumes(engine, &environment.name, &kept).await,
            _ => Ok(if kept.is_empty() {
                "no volumes".into()
            } else {
                format!(
                    "kept {} (`rollout down --volumes` removes them)",
                    kept.join(", ")
                )
            }),
        };
        step.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match done {
            Ok(detail) => step.detail = detail,
            Err(e) => {
                step.status = StepStatus::Failed;
                step.detail = e.clone();
                failure = Some(format!("{description}: {e}"));
            }
        }
        if !session.json {
            let mark = if step.status == StepStatus::Ok {
                printer.paint().green("ok")
            } else {
                printer.paint().red("failed")
            };
            printer.out(&format!("  {description}: {mark} {}", step.detail));
        }
        report.steps.push(step);
    }
    // What was removed is in the steps (the report's `teardown` is a test version's).
    if let Some(reason) = failure {
        if report.outcome == Outcome::Running {
            report.outcome = Outcome::Failed { reason };
        }
    } else {
        report.outcome = Outcome::Passed;
    }
    report.elapsed_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    super::save_run(session.project, session.store, &report, printer);
    audit(crate::audit::Event::run_finished(&report));
    if session.json {
        if let Err(e) = printer.json(&report) {
            printer.warn(&e.to_string());
        }
    } else {
        let outcome = match &report.outcome {
            Outcome::Passed => printer.paint().green("removed"),
            other => other.summary(printer.paint()),
        };
        printer.out(&format!(
            "Down {run} of {}: {outcome} in {:.1}s",
            environment.name,
            report.elapsed_ms as f64 / 1000.0
        ));
    }
    report
}

async fn remove_test_versions(engine: &dyn Engine, env: &str) -> Result<String, String> {
    let versions = crate::testenv::list(engine, Some(env))
        .await
        .map_err(|e| e.to_string())?;
    if versions.is_empty() {
        return Ok("none".into());
    }
    let mut runs = Vec::new();
    for v in versions {
        crate::testenv::down(engine, env, &v.run)
            .await
            .map_err(|e| format!("test version {}: {e}", v.run))?;
        runs.push(v.run);
    }
    Ok(format!("removed {}", runs.join(", ")))
}

async fn remove_containers(engine: &dyn Engine, names: &[String]) -> Result<String, String> {
    if names.is_empty() {
        return Ok("none".into());
    }
    for name in names {
        engine
            .stop_container(name, GRACE)
            .await
            .map_err(|e| e.to_string())?;
        engine
            .remove_container(name)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(format!("removed {}", names.join(", ")))
}

async fn remove_networks(engine: &dyn Engine, names: &[String]) -> Result<String, String> {
    if names.is_empty() {
        return Ok("none".into());
    }
    for name in names {
        engine
            .remove_network(name)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(format!("removed {}", names.join(", ")))
}

/// Everything left with the environment's label (its volumes, once containers and networks are
/// gone).
async fn remove_volumes(
    engine: &dyn Engine,
    env: &str,
    names: &[String],
) -> Result<String, String> {
    let selector = BTreeMap::from([(labels::ENVIRONMENT.to_string(), env.to_string())]);
    engine
        .remove_labelled(&selector)
        .await
        .map_err(|e| e.to_string())?;
    Ok(if names.is_empty() {
        "no volumes".into()
    } else {
        format!("removed {}", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::FakeEngine;

    fn object(kind: ObjectKind, name: &str, role: Role) -> LabelledObject {
        LabelledObject {
            kind,
            name: name.into(),
            labels: BTreeMap::from([
                (labels::ENVIRONMENT.to_string(), "shop".to_string()),
                (labels::ROLE.to_string(), role.as_str().to_string()),
            ]),
        }
    }

    #[test]
    fn objects_are_picked_by_kind_and_role() {
        let found = [
            object(ObjectKind::Container, "shop-web", Role::Production),
            object(ObjectKind::Container, "rollout-proxy-shop", Role::Proxy),
            object(ObjectKind::Volume, "shop-db-data", Role::Production),
        ];
        assert_eq!(
            of(&found, ObjectKind::Container, Some(Role::Proxy)),
            ["rollout-proxy-shop"]
        );
        assert_eq!(of(&found, ObjectKind::Volume, None), ["shop-db-data"]);
    }

    #[tokio::test]
    async fn a_network_is_removed_by_name() {
        let engine = FakeEngine::new();
        let labels = BTreeMap::from([(labels::ENVIRONMENT.to_string(), "shop".to_string())]);
        engine
            .ensure_network("rollout-shop", &labels)
            .await
            .unwrap();
        let done = remove_networks(&engine, &["rollout-shop".into()]).await;
        assert_eq!(done, Ok("removed rollout-shop".to_string()));
        assert!(engine.networks().is_empty());
    }
}
