//! One file per command; [`run`] dispatches. Commands return an [`ExitStatus`] or an error that
//! `lib::run` prints once.

pub mod demo;
pub mod history;
pub mod plan;
pub mod promote;
pub mod proxy;
pub mod rehearse;
pub mod report;
pub mod rollback;
pub mod status;
pub mod test_env;

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{Cli, Command, ExitStatus};
use crate::engine::Engine;
use crate::engine::docker::DockerEngine;
use crate::manifest::config::Backend;
use crate::project::{Loaded, Project};

pub async fn run(cli: Cli, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Cli {
        dir,
        verbose: _,
        command,
    } = cli;
    match command {
        Command::Plan(args) => plan::run(&dir, args, printer).await,
        Command::Demo(args) => demo::run(&dir, args, printer).await,
        Command::Promote(args) => promote::run(&dir, args, printer).await,
        Command::Rollback(args) => rollback::run(&dir, args, printer).await,
        Command::Status(args) => status::run(&dir, args, printer).await,
        Command::History(args) => history::run(&dir, args, printer).await,
        Command::TestEnv(args) => test_env::run(&dir, args, printer).await,
        Command::Rehearse(args) => rehearse::run(&dir, args, printer).await,
        Command::Approve(_) => not_built("approve", "change accountability (issue #6)"),
        Command::Report(args) => report::run(&dir, args, printer).await,
        Command::Proxy(args) => proxy::run(args, printer).await,
        Command::Daemon(_) => not_built("daemon", "the daemon (issue #7)"),
    }
}

/// A command that exists in the interface but is not built yet: say so, and fail.
fn not_built(name: &str, planned: &str) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`rollout {name}` is not built yet (planned with {planned}); nothing was done")
}

/// Loads the environment a command is about, printing what loading warned about.
pub(crate) fn load_environment(
    project: &Project,
    env: &crate::cli::EnvArgs,
    printer: Printer,
) -> anyhow::Result<Loaded> {
    let lookup = |var: &str| std::env::var(var).ok();
    let loaded = project.environment(env.env.as_deref(), env.manifest.as_deref(), &lookup)?;
    for w in &loaded.warnings {
        printer.warn(&w.to_string());
    }
    Ok(loaded)
}

/// Connects to the backend named in rollout.yaml.
pub(crate) async fn connect(project: &Project) -> anyhow::Result<Box<dyn Engine>> {
    match project.config.backend {
        Backend::Docker => {
            let engine = DockerEngine::connect(project.config.docker_host.as_deref())
                .await
                .context("the docker backend needs a running Docker engine")?;
            Ok(Box::new(engine))
        }
        Backend::Kubernetes => {
            anyhow::bail!(
                "the kubernetes backend is not built yet (planned with issue #8); use `backend: docker`"
            )
        }
    }
}

/// Stops runs at their next safe point on the first SIGINT or SIGTERM; a second one exits at
/// once (what was created carries its owner and TTL, so the next command cleans it up).
pub(crate) fn cancel_on_signal(printer: Printer) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                printer.warn("stopping at the next safe point and cleaning up (press Ctrl-C again to abort at once)");
                t.cancel();
            } else {
                printer.warn("aborted; the next rollout command cleans up what is left");
                std::process::exit(130);
            }
        }
    });
    token
}

/// Removes test versions left by dead runs or past their TTL, saying what it removed.
pub(crate) async fn collect_garbage(
    engine: &dyn Engine,
    env: Option<&str>,
    printer: Printer,
) -> anyhow::Result<()> {
    for line in crate::testenv::collect_garbage(engine, env, jiff::Timestamp::now()).await? {
        printer.warn(&line);
    }
    Ok(())
}

/// Writes a run's report files and records the run in the store, so `rollout report RUN` and
/// `latest` find it; failures are warnings (the run itself is over).
pub(crate) fn save_run(
    project: &Project,
    store: &crate::store::Store,
    report: &crate::exec::report::RunReport,
    printer: Printer,
) -> Option<std::path::PathBuf> {
    let saved = report
        .save(&project.state_dir())
        .map_err(|e| printer.warn(&format!("the report could not be written: {e}")))
        .ok();
    let record = crate::store::RunRecord {
        run: report.run.clone(),
        environment: report.environment.clone(),
        kind: format!("{:?}", report.kind).to_lowercase(),
        started: report
            .started
            .parse()
            .unwrap_or_else(|_| jiff::Timestamp::now()),
        finished: Some(jiff::Timestamp::now()),
        user: report.user.clone(),
        outcome: serde_json::to_value(&report.outcome)
            .ok()
            .and_then(|v| v["outcome"].as_str().map(String::from))
            .unwrap_or_default(),
        report: serde_json::to_value(report).unwrap_or_default(),
    };
    if let Err(e) = store.record_run(&record) {
        printer.warn(&format!("the run could not be recorded: {e}"));
    }
    saved
}
