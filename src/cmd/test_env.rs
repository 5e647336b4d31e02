//! `rollout test-env up|down|list`: test versions by hand.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, TestEnvAction, TestEnvArgs};
use crate::manifest::duration;
use crate::manifest::playbook::{DEFAULT_TTL, Step};
use crate::progress::Console;
use crate::project::Project;
use crate::testenv;

pub async fn run(dir: &Path, args: TestEnvArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let project = Project::open(dir)?;
    match args.action {
        TestEnvAction::Up(a) => {
            let loaded = super::load_environment(&project, &a.env, printer)?;
            let env = loaded.environment;
            let (mut ttl, mut copy_data) = (DEFAULT_TTL, Vec::new());
            if a.playbook.is_some() {
                let playbook = project.playbook(a.playbook.as_deref(), &env)?;
                if let Some(Step::TestEnv {
                    ttl: t,
                    copy_data: c,
                }) = playbook
                    .steps
                    .iter()
                    .find(|s| matches!(s, Step::TestEnv { .. }))
                {
                    (ttl, copy_data) = (*t, c.clone());
                }
            }
            if let Some(t) = &a.ttl {
                ttl = duration::parse(t).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            }
            let engine =
                super::connect_and_collect(&project, "test-env up", Some(&env.name), printer)
                    .await?;
            let now = jiff::Timestamp::now();
            let run = crate::run_id::new(now);
            let json = a.output == Format::Json;
            if !json {
                printer.out(&format!("run {run}"));
            }
            let progress = Console::new(printer.paint(), json);
            let cancel = super::cancel_on_signal(printer);
            let opts = testenv::Options {
                ttl,
                copy_data,
                owner: None,
            };
            match testenv::up(engine.as_ref(), &env, &run, &opts, now, &progress, &cancel).await {
                Ok(t) => {
                    if json {
                        let services: serde_json::Map<String, serde_json::Value> = t
                            .services
                            .iter()
                            .map(|(name, e)| (name.clone(), serde_json::json!({ "container": e.container, "ports": e.ports })))
                            .collect();
                        printer.json(&serde_json::json!({
                            "run": run, "environment": env.name, "network": t.network,
                            "expires": t.expires.to_string(), "services": services,
                        }))?;
                    } else {
                        printer.out(&format!(
                            "Test version {} is up until {} (rollout test-env down {run})",
                            t.network, t.expires
                        ));
                        for (name, e) in &t.services {
                            let ports: Vec<String> = e
                                .ports
                                .iter()
                                .map(|(c, h)| format!("{c} -> 127.0.0.1:{h}"))
                                .collect();
                            printer.out(&format!(
                                "  {name:<12} {}  {}",
                                e.container,
                                ports.join(", ")
                            ));
                        }
                    }
                    Ok(ExitStatus::Success)
                }
                Err(e) => {
                    let removed = testenv::down(engine.as_ref(), &env.name, &run).await;
                    let cleanup = match removed {
                        Ok(r) => format!(
                            "removed what it had created ({} containers, {} networks, {} volumes)",
                            r.containers, r.networks, r.volumes
                        ),
                        Err(err) => {
                            format!("cleanup failed too ({err}); the next command retries it")
                        }
                    };
                    Err(anyhow::Error::new(e).context(format!(
                        "test version {run} of {} failed; {cleanup}",
                        env.name
                    )))
                }
            }
        }
        TestEnvAction::Down(a) => {
            let env = super::load_environment(&project, &a.env, printer)?.environment;
            let engine = crate::session::connect(&project, "test-env down").await?;
            let found = testenv::list(engine.as_ref(), Some(&env.name)).await?;
            let runs: Vec<&testenv::Found> = found
                .iter()
                .filter(|f| a.run.as_deref().is_none_or(|r| r == f.run))
                .collect();
            if let (Some(r), true) = (&a.run, runs.is_empty()) {
                anyhow::bail!("no test version {r} of {}", env.name);
            }
            for f in &runs {
                let removed = testenv::down(engine.as_ref(), &env.name, &f.run)
                    .await
                    .with_context(|| format!("removing test version {}", f.run))?;
                printer.out(&format!(
                    "removed test version {} of {}: {} containers, {} networks, {} volumes",
                    f.run, env.name, removed.containers, removed.networks, removed.volumes
                ));
            }
            if runs.is_empty() {
                printer.out(&format!("{} has no test version", env.name));
            }
            Ok(ExitStatus::Success)
        }
        TestEnvAction::List(a) => {
            let env = if a.env.env.is_some() || a.env.manifest.is_some() {
                Some(
                    super::load_environment(&project, &a.env, printer)?
                        .environment
                        .name,
                )
            } else {
                None
            };
            let engine =
                super::connect_and_collect(&project, "test-env list", env.as_deref(), printer)
                    .await?;
            let found = testenv::list(engine.as_ref(), env.as_deref()).await?;
            if a.output == Format::Json {
                printer.json(&found)?;
                return Ok(ExitStatus::Success);
            }
            if found.is_empty() {
                printer.out("no test versions");
            }
            let now = jiff::Timestamp::now().as_second();
            for f in &found {
                let left = f.expires.map_or("no expiry".into(), |x| {
                    format!(
                        "expires in {}",
                        duration::format(Duration::from_secs((x - now).max(0) as u64))
                    )
                });
                let owner = f
                    .owner
                    .as_deref()
                    .map_or("by hand".to_string(), |o| format!("owned by {o}"));
                printer.out(&format!(
                    "{}  {}  {} containers  {left}  {owner}",
                    f.environment, f.run, f.containers
                ));
            }
            Ok(ExitStatus::Success)
        }
    }
}
