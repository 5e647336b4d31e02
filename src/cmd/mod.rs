//! One file per command; [`run`] dispatches. Commands return an [`ExitStatus`] or an error that
//! `lib::run` prints once.

pub mod demo;
pub mod plan;

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
        Command::Promote(_) => not_built("promote", "zero-downtime promotion (issue #4)"),
        Command::Rollback(_) => not_built("rollback", "zero-downtime promotion (issue #4)"),
        Command::Status(_) => not_built("status", "zero-downtime promotion (issue #4)"),
        Command::History(_) => not_built("history", "zero-downtime promotion (issue #4)"),
        Command::TestEnv(_) => not_built("test-env", "the test version (issue #3)"),
        Command::Rehearse(_) => not_built("rehearse", "the test version (issue #3)"),
        Command::Approve(_) => not_built("approve", "change accountability (issue #6)"),
        Command::Report(_) => not_built("report", "change accountability (issue #6)"),
        Command::Proxy(_) => not_built("proxy", "the edge proxy (issue #4)"),
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
