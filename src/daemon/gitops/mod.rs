//! The GitOps controller: follows `daemon.gitops` (a repository, a branch, a folder in it) and
//! promotes every environment whose manifest changed, then checks each for drift.
//!
//! Each [`Controller::tick`]:
//! 1. fetches: `<state>/gitops/checkout` is created once (`git init` + `remote add`), then every
//!    tick runs `git fetch` with a forced refspec and checks out `origin/<branch>` exactly
//!    (a force push simply moves it). An unreachable remote or a deleted branch sets
//!    [`FetchState::Error`] and leaves the checkout and everything running as they were.
//! 2. for each manifest under `<path>/manifests/` whose promotion inputs differ from the ones
//!    last promoted (the manifest, the playbook files it is promoted with, and the settings the
//!    children read, `daemon:` aside: see [`promotion_hash`]), runs `rollout -C <checkout>/<path> promote -m FILE [-p PLAYBOOK] --yes --reason
//!    "gitops: <commit> <subject>"` as a child process: the lock, journal, recovery, audit trail,
//!    notifications and report work exactly as by hand, and the commit lands in the history and
//!    the report through `--reason`. The children use the daemon's state directory
//!    (`ROLLOUT_STATE`), so history and reports are the project's, not the checkout's.
//!    A run that failed (or a manifest that does not load) is not tried again on the same commit:
//!    only a new commit or [`Controller::retry`] does. A refused run (window, approval, lock) is
//!    tried again on the next tick.
//! 3. for each environment, runs `rollout plan -m FILE -o json` (exit 0: in sync, 2: drift) and,
//!    where the manifest sets `selfHeal: true`, promotes to put it back.
//! 4. an environment whose manifest is gone from the repository is dropped from the status and
//!    listed in [`Status::removed`]: what runs in production is left as it is (removing a file
//!    is not a request to tear an environment down).
//!
//! What the controller remembers per environment lives in `<state>/gitops/state.json` (written
//! whole, then renamed into place), so a restarted daemon neither promotes again what it already
//! promoted nor forgets a failure.

//!
//! The files: `git` (the git seam and the fetch), `checkout` (the manifests at the checkout and
//! where things are kept), `child` (promotions and drift checks as child processes), `decide`
//! (the pure decisions: what to promote, what to heal, what a promotion depends on), `status`
//! (what the controller knows and reports); this file runs the ticks.

mod checkout;
mod child;
mod decide;
mod git;
mod status;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::manifest::config::Gitops;

use checkout::{ManifestFile, state_file};
pub use checkout::{checkout_dir, manifest_of, settings_file};
pub use child::{ChildOutput, run_child};
pub use decide::{
    RepoFile, playbooks_used, promotion_hash, redact, short, should_heal, should_promote, tail,
    without_daemon_section,
};
pub use git::{GIT_TIMEOUT, Git, GitCli};
pub use status::{
    Attempt, Drift, EnvStatus, FetchState, Outcome, REMOVED_KEPT, Removed, Status, TickReport,
    Trigger,
};

/// The variable that points a child `rollout` at the daemon's state directory.
pub const STATE_ENV: &str = "ROLLOUT_STATE";
/// The variable that points a child `rollout` at the daemon project's settings file.
pub const SETTINGS_ENV: &str = "ROLLOUT_SETTINGS";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub repo: String,
    pub branch: String,
    /// The folder inside the repository holding `manifests/` (and `playbooks/`).
    pub path: String,
    pub interval: Duration,
    pub playbook: Option<String>,
    /// The daemon project's state directory: the checkout, the controller's state, and (through
    /// `ROLLOUT_STATE`) the children's store.
    pub state_dir: PathBuf,
    /// The rollout binary to run (normally `std::env::current_exe()`).
    pub rollout_bin: PathBuf,
    /// Extra environment variables for the children.
    pub child_env: Vec<(String, String)>,
    /// Variables the children must not inherit: the daemon's token variables.
    pub hide_env: Vec<String>,
    /// The daemon project's rollout.yaml, used by the children instead of one in the
    /// repository (`ROLLOUT_SETTINGS`): backend, engine, proxy and webhooks are the provider's.
    pub settings_file: Option<PathBuf>,
    /// The daemon project's webhooks: told `drifted` when an environment starts to drift (the
    /// promotions the controller runs notify through their own project's `notify:`).
    pub notify: Vec<crate::manifest::config::Notify>,
}

impl Settings {
    /// Settings from `daemon.gitops`, running this very binary. A relative local repository
    /// path is taken relative to the project folder.
    pub fn from_project(
        project: &crate::project::Project,
        g: &Gitops,
    ) -> std::io::Result<Settings> {
        let local = project.dir.join(&g.repo);
        let repo = if !g.repo.contains("://") && !g.repo.contains('@') && local.exists() {
            local.display().to_string()
        } else {
            g.repo.clone()
        };
        Ok(Settings {
            repo,
            branch: g.branch.clone(),
            path: g.path.clone(),
            interval: g.interval,
            playbook: g.playbook.clone(),
            state_dir: project.state_dir(),
            rollout_bin: std::env::current_exe()?,
            child_env: Vec::new(),
            hide_env: super::token_vars(project),
            settings_file: settings_file(project),
            notify: project.config.notify.clone(),
        })
    }
}

/// A shared view of the controller: its status, and manual retries.
#[derive(Clone)]
pub struct GitopsHandle {
    status: Arc<Mutex<Status>>,
    retries: Arc<Mutex<BTreeSet<String>>>,
    wake: Arc<tokio::sync::Notify>,
}

impl GitopsHandle {
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Asks for another attempt at `env`'s manifest on the next tick, even on the commit
    /// whose run failed, and wakes the loop so that the tick comes now, not an interval later.
    pub fn retry(&self, env: &str) {
        if let Ok(mut r) = self.retries.lock() {
            r.insert(env.to_string());
        }
        self.wake.notify_one();
    }

    /// The environments a retry was asked for that the next tick has not taken yet.
    pub fn pending_retries(&self) -> BTreeSet<String> {
        self.retries.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

pub struct Controller {
    settings: Settings,
    git: Box<dyn Git>,
    handle: GitopsHandle,
    cancel: CancellationToken,
    notifier: crate::notify::Notifier,
}

impl Controller {
    /// A controller using the git CLI, with the state `<state>/gitops/state.json` recorded.
    pub fn new(settings: Settings) -> Controller {
        Controller::with_git(settings, Box::new(GitCli))
    }

    pub fn with_git(settings: Settings, git: Box<dyn Git>) -> Controller {
        let mut status: Status = std::fs::read(state_file(&settings.state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        status.repo = redact(&settings.repo);
        status.branch = settings.branch.clone();
        status.path = settings.path.clone();
        Controller {
            notifier: crate::notify::Notifier::new(&settings.notify),
            settings,
            git,
            handle: GitopsHandle {
                status: Arc::new(Mutex::new(status)),
                retries: Arc::new(Mutex::new(BTreeSet::new())),
                wake: Arc::new(tokio::sync::Notify::new()),
            },
            cancel: CancellationToken::new(),
        }
    }

    pub fn handle(&self) -> GitopsHandle {
        self.handle.clone()
    }

    pub fn status(&self) -> Status {
        self.handle.status()
    }

    /// See [`GitopsHandle::retry`].
    pub fn retry(&self, env: &str) {
        self.handle.retry(env)
    }

    fn checkout(&self) -> PathBuf {
        checkout_dir(&self.settings.state_dir)
    }

    fn project_dir(&self) -> PathBuf {
        self.checkout().join(&self.settings.path)
    }

    fn record(&self, status: Status) {
        let path = state_file(&self.settings.state_dir);
        let tmp = path.with_extension("json.tmp");
        let write = serde_json::to_vec_pretty(&status)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = write {
            tracing::error!("cannot record the GitOps state in {}: {e}", path.display());
        }
        if let Ok(mut s) = self.handle.status.lock() {
            *s = status;
        }
    }

    /// One round: fetch, promote what changed, check drift (and self-heal).
    pub async fn tick(&mut self, now: Timestamp) -> TickReport {
        let mut status = self.status();
        status.last_tick = Some(now);
        let mut report = TickReport {
            at: now,
            fetch: FetchState::Ok,
            commit: None,
            attempts: Vec::new(),
            drift: Vec::new(),
            errors: Vec::new(),
            removed: Vec::new(),
        };
        let (commit, subject) = match self.fetch().await {
            Ok(c) => c,
            Err(state) => {
                tracing::warn!(?state, "gitops fetch");
                status.fetch = state.clone();
                status.fetch_failures += 1;
                report.fetch = state;
                report.commit = status.commit.clone();
                self.record(status);
                return report;
            }
        };
        status.fetch = FetchState::Ok;
        status.last_fetch_ok = Some(now);
        status.commit = Some(commit.clone());
        status.subject = Some(subject.clone());
        report.commit = Some(commit.clone());
        let retries: BTreeSet<String> = self
            .handle
            .retries
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        let (manifests, errors) = self.manifests(&status);
        report.errors = errors;
        let present: BTreeSet<String> = manifests.iter().map(|m| m.name.clone()).collect();
        let mut complete = true;
        for ManifestFile {
            rel: manifest,
            hash,
            name,
            client,
            self_heal,
        } in manifests
        {
            if self.cancel.is_cancelled() {
                complete = false;
                break;
            }
            let Some(hash) = hash else {
                continue;
            };
            let mut env = status.environments.remove(&name).unwrap_or_default();
            env.manifest = manifest.clone();
            env.client = client;
            env.self_heal = self_heal;
            let retry = retries.contains(&name);
            let mut promoted_now = false;
            if should_promote(&env, &commit, &hash, retry) {
                let trigger = if retry {
                    Trigger::Retry
                } else {
                    Trigger::Commit
                };
                let attempt = self
                    .promote(&manifest, &hash, &commit, &subject, trigger)
                    .await;
                tracing::info!(environment = %name, outcome = ?attempt.outcome, "gitops promotion");
                report.attempts.push((name.clone(), attempt.clone()));
                promoted_now = env.record_attempt(attempt);
            }
            let invalid_here = env
                .last
                .as_ref()
                .is_some_and(|a| a.commit == commit && a.outcome == Outcome::Invalid);
            if !invalid_here {
                let before = std::mem::take(&mut env.drift);
                env.drift = self.drift(&manifest).await;
                env.drift_checked = Some(now);
                if env.drift == Drift::Drifted && before != Drift::Drifted {
                    self.notify_drift(&name, &commit, self_heal, now);
                }
                if !promoted_now && should_heal(&env, &commit) {
                    let attempt = self
                        .promote(&manifest, &hash, &commit, &subject, Trigger::SelfHeal)
                        .await;
                    tracing::info!(environment = %name, outcome = ?attempt.outcome, "gitops self-heal");
                    report.attempts.push((name.clone(), attempt.clone()));
                    report.drift.push((name.clone(), env.drift.clone()));
                    env.record_attempt(attempt);
                    env.drift = self.drift(&manifest).await;
                } else {
                    report.drift.push((name.clone(), env.drift.clone()));
                }
            }
            status.environments.insert(name, env);
        }
        // Only a tick that saw every manifest may conclude that one is gone.
        if complete {
            let gone: Vec<String> = status
                .environments
                .keys()
                .filter(|n| !present.contains(*n))
                .cloned()
                .collect();
            let short = short(&commit);
            for name in gone {
                let Some(env) = status.environments.remove(&name) else {
                    continue;
                };
                let message = format!(
                    "{} was removed from the repository at {short}; production left as it is (not followed any more)",
                    env.manifest
                );
                tracing::warn!(environment = %name, "gitops: {message}");
                status.removed.retain(|r| r.environment != name);
                status.removed.push(Removed {
                    environment: name.clone(),
                    client: env.client,
                    manifest: env.manifest,
                    commit: commit.clone(),
                    at: now,
                    message,
                });
                report.removed.push(name);
            }
            let excess = status.removed.len().saturating_sub(REMOVED_KEPT);
            status.removed.drain(..excess);
        }
        // A manifest that is back is followed again.
        status
            .removed
            .retain(|r| !status.environments.contains_key(&r.environment));
        self.record(status);
        report
    }

    /// Ticks every `interval` until `cancel`. A tick in flight finishes: its child gets SIGTERM
    /// and settles at a safe point.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.cancel = cancel.clone();
        loop {
            let report = self.tick(Timestamp::now()).await;
            tracing::debug!(?report, "gitops tick");
            let wake = self.handle.wake.clone();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = wake.notified() => {}
            }
        }
    }
}
