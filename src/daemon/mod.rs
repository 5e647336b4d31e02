//! `rollout daemon`: one long-running process per project that serves the HTTP API
//! ([`api`], under `/api/v1`), Prometheus metrics ([`metrics`], `/metrics`) and the dashboard
//! ([`dashboard`], `/`), starts runs as child `rollout` processes ([`runs`]), and shuts down
//! gracefully on SIGTERM or SIGINT.
//!
//! Startup ([`serve`]): read rollout.yaml's `daemon:` section, resolve the tokens from their
//! variables, connect to the engine, bind, then serve until a signal. Shutdown: stop accepting,
//! cancel the background loops' [`CancellationToken`], forward SIGTERM to every child run (each
//! stops at its own next safe point), wait for them, exit 0.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod gitops;
pub mod metrics;
pub mod runs;
pub mod schedule;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::project::Project;
use crate::store::Store;

/// What every request handler shares.
pub struct Daemon {
    pub project: Project,
    pub store: Arc<Store>,
    pub engine: Arc<dyn Engine>,
    pub tokens: auth::Tokens,
    /// The variables holding token values, which child runs do not inherit.
    pub token_vars: Vec<String>,
    /// The rollout binary that runs are started with (this very binary, normally).
    pub rollout_bin: PathBuf,
    pub runs: runs::Runs,
    /// Cancelled when the daemon shuts down: background loops stop, no run is started.
    pub shutdown: CancellationToken,
    /// The GitOps controller's status and retries, once [`serve`] started it (`daemon.gitops`).
    pub gitops: OnceLock<gitops::GitopsHandle>,
    /// The scheduled rehearsals' status, once [`serve`] started them (`daemon.rehearsals`).
    pub schedule: OnceLock<schedule::ScheduleHandle>,
}

pub type Shared = Arc<Daemon>;

impl Daemon {
    /// Opens the project in `dir` for serving: its `daemon:` settings, tokens (their values from
    /// `lookup`: the process environment, normally), store and engine.
    pub async fn open(
        dir: &Path,
        rollout_bin: PathBuf,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Daemon> {
        let project = Project::open(dir)?;
        let settings = project.config.daemon.clone().with_context(|| {
            format!(
                "`rollout daemon` needs a `daemon:` section with at least one token in {}",
                dir.join("rollout.yaml").display()
            )
        })?;
        let (tokens, unset) = auth::Tokens::resolve(&settings.tokens, lookup);
        for (name, var) in unset {
            tracing::warn!(token = %name, variable = %var, "token disabled: its variable is unset or empty");
        }
        if tokens.is_empty() {
            anyhow::bail!(
                "no daemon token is usable: set the variables named by `fromEnv` in rollout.yaml's `daemon.tokens` (every API call needs one)"
            );
        }
        let token_vars = token_vars(&project);
        let store = Arc::new(Store::open(&project.state_dir())?);
        let engine: Arc<dyn Engine> = Arc::from(crate::session::connect(&project, "daemon").await?);
        Ok(Daemon {
            project,
            store,
            engine,
            tokens,
            token_vars,
            rollout_bin,
            runs: runs::Runs::default(),
            shutdown: CancellationToken::new(),
            gitops: OnceLock::new(),
            schedule: OnceLock::new(),
        })
    }

    /// The listen address: `--listen`, else rollout.yaml's `daemon.listen`.
    pub fn listen(&self, flag: Option<&str>) -> anyhow::Result<SocketAddr> {
        match flag {
            Some(text) => text.parse().with_context(|| {
                format!("--listen `{text}`: expected an address like 127.0.0.1:7480")
            }),
            None => Ok(self
                .project
                .config
                .daemon
                .as_ref()
                .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7480)), |d| d.listen)),
        }
    }

    /// The environments of the project with their client, and those the GitOps controller
    /// follows that the project folder has no manifest for (with the client their manifest in
    /// the repository names).
    pub fn catalog(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut all = self.project.catalog()?;
        if let Some(h) = self.gitops.get() {
            for (name, e) in h.status().environments {
                if let Some(client) = e.client
                    && !all.iter().any(|(n, _)| *n == name)
                {
                    all.push((name, client));
                }
            }
        }
        Ok(all)
    }

    /// Where `name`'s manifest and playbook are read from: the project folder, or for an
    /// environment only the GitOps controller follows, its checkout of the repository at the
    /// commit it follows, with that environment's manifest file (one broken manifest of another
    /// environment there must not hide this one) and the controller's playbook.
    pub fn source_of(&self, name: &str) -> Source<'_> {
        let followed = self.gitops.get().and_then(|h| {
            h.status()
                .environments
                .get(name)
                .map(|e| e.manifest.clone())
        });
        let in_project = self
            .project
            .catalog()
            .is_ok_and(|c| c.iter().any(|(n, _)| n == name));
        let gitops = self
            .project
            .config
            .daemon
            .as_ref()
            .and_then(|d| d.gitops.as_ref());
        match (followed, gitops) {
            (Some(manifest), Some(g)) if !in_project => Source {
                project: std::borrow::Cow::Owned(Project {
                    dir: gitops::checkout_dir(&self.project.state_dir()).join(&g.path),
                    config: self.project.config.clone(),
                }),
                manifest: Some(PathBuf::from(manifest)),
                playbook: g.playbook.clone(),
            },
            _ => Source {
                project: std::borrow::Cow::Borrowed(&self.project),
                manifest: None,
                playbook: None,
            },
        }
    }
}

/// Where an environment is read from: see [`Daemon::source_of`].
pub struct Source<'a> {
    pub project: std::borrow::Cow<'a, Project>,
    /// The manifest file (`-m`), relative to the project; `None`: found by name.
    pub manifest: Option<PathBuf>,
    /// The playbook (`-p`); `None`: the project's choice.
    pub playbook: Option<String>,
}

/// The variables holding the daemon's token values (`daemon.tokens[].fromEnv`), which no run
/// the daemon starts inherits.
pub fn token_vars(project: &Project) -> Vec<String> {
    project
        .config
        .daemon
        .iter()
        .flat_map(|d| d.tokens.iter().map(|t| t.from_env.clone()))
        .collect()
}

/// The whole HTTP surface: API, metrics, dashboard.
pub fn router(daemon: Shared) -> axum::Router {
    api::router()
        .merge(metrics::router())
        .merge(dashboard::router())
        .with_state(daemon)
}

/// Serves on `listener` until `stop` resolves (a signal, normally), then shuts down: stop
/// accepting, cancel background loops, forward SIGTERM to child runs and wait for them.
pub async fn serve(
    daemon: Shared,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "rollout daemon listening");
    // Background loops: the GitOps controller (with `daemon.gitops`) and the scheduled
    // rehearsals (with `daemon.rehearsals`); each returns once `shutdown` is cancelled, after
    // its child run in flight (if any) stopped at a safe point.
    let mut loops: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let settings = daemon.project.config.daemon.as_ref();
    if let Some(g) = settings.and_then(|d| d.gitops.as_ref()) {
        let s = gitops::Settings::from_project(&daemon.project, g)
            .context("setting up the GitOps controller")?;
        tracing::info!(repo = %gitops::redact(&g.repo), "GitOps controller started");
        let controller = gitops::Controller::new(s);
        // Set before the router serves its first request: the API and dashboard read it.
        let _ = daemon.gitops.set(controller.handle());
        loops.push(tokio::spawn(controller.run(daemon.shutdown.clone())));
    }
    if settings.is_some_and(|d| !d.rehearsals.is_empty()) {
        let s = schedule::Settings::from_project(&daemon.project)
            .context("setting up the scheduled rehearsals")?;
        let scheduler = schedule::Scheduler::new(s);
        let _ = daemon.schedule.set(scheduler.handle());
        loops.push(tokio::spawn(scheduler.run(daemon.shutdown.clone())));
    }

    let shutdown = daemon.shutdown.clone();
    let on_stop = async move {
        stop.await;
        tracing::info!("shutting down: no new runs; waiting for runs in flight");
        shutdown.cancel();
    };
    axum::serve(listener, router(daemon.clone()))
        .with_graceful_shutdown(on_stop)
        .await
        .context("the daemon's HTTP server failed")?;
    daemon.shutdown.cancel();
    for handle in loops {
        if let Err(e) = handle.await {
            tracing::warn!(error = %e, "a background loop ended abnormally");
        }
    }
    daemon.runs.stop_all().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
