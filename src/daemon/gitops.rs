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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::manifest::config::Gitops;
use crate::manifest::raw::RawEnvironment;
use crate::manifest::source::Source;

/// The variable that points a child `rollout` at the daemon's state directory.
pub const STATE_ENV: &str = "ROLLOUT_STATE";
/// The variable that points a child `rollout` at the daemon project's settings file.
pub const SETTINGS_ENV: &str = "ROLLOUT_SETTINGS";

// ---------------------------------------------------------------- git seam

/// The git operations the controller needs; the CLI implementation is [`GitCli`].
#[async_trait::async_trait]
pub trait Git: Send + Sync {
    /// Runs `git ARGS` in `dir`; stdout on success, the trimmed stderr on failure.
    async fn run(&self, dir: &Path, args: &[&str]) -> Result<String, String>;
}

/// git through the `git` command line. A command that takes longer than [`GIT_TIMEOUT`] (a
/// remote that accepts the connection and never answers) is killed and reported.
pub struct GitCli;

pub const GIT_TIMEOUT: Duration = Duration::from_secs(120);

#[async_trait::async_trait]
impl Git for GitCli {
    async fn run(&self, dir: &Path, args: &[&str]) -> Result<String, String> {
        let run = tokio::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            // Never wait for a password on a terminal nobody watches.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(GIT_TIMEOUT, run)
            .await
            .map_err(|_| format!("git {} took longer than {GIT_TIMEOUT:?}", args[0]))?
            .map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

// ---------------------------------------------------------------- status types

/// How the last fetch went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum FetchState {
    #[default]
    NotYet,
    Ok,
    /// The remote could not be reached (or refused us); nothing changed.
    Unreachable {
        message: String,
    },
    /// The remote has no such branch (any more); nothing changed.
    BranchMissing {
        message: String,
    },
    /// The checkout could not be brought to the fetched commit.
    Error {
        message: String,
    },
}

/// How a promotion attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Exit 0: promoted, or nothing to do.
    Promoted,
    /// Exit 1 after a run started: failed (and rolled back).
    Failed,
    /// Exit 1 before any run: the manifest or playbook does not load. Nothing changed.
    Invalid,
    /// Exit 3: refused (window, approval, lock); tried again on the next tick.
    Refused,
}

impl Outcome {
    fn from_exit(code: Option<i32>, started_a_run: bool) -> Outcome {
        match code {
            Some(0) => Outcome::Promoted,
            Some(3) => Outcome::Refused,
            // Killed by a signal, or failed after its run began.
            None => Outcome::Failed,
            _ if started_a_run => Outcome::Failed,
            _ => Outcome::Invalid,
        }
    }
}

/// Why a promotion was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// The manifest changed at the commit.
    Commit,
    /// A manual retry ([`Controller::retry`]).
    Retry,
    /// Drift, with `selfHeal: true`.
    SelfHeal,
}

/// One promotion the controller ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub commit: String,
    /// The [`promotion_hash`] of what was promoted: the manifest, its playbook, the settings.
    pub manifest_hash: String,
    pub trigger: Trigger,
    pub outcome: Outcome,
    /// The run id the child printed (`run <id>`), when a run started.
    pub run: Option<String>,
    pub exit: Option<i32>,
    pub at: Timestamp,
    /// The end of the child's stderr when it did not succeed: for an invalid manifest, the
    /// compiler-style error with file:line:column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What runs compared with the manifest at the current commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Drift {
    #[default]
    Unknown,
    InSync,
    /// What runs differs from the manifest (`rollout plan` exits 2).
    Drifted,
    /// The comparison itself failed.
    Error {
        message: String,
    },
}

/// The controller's knowledge of one environment (kept in `<state>/gitops/state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvStatus {
    /// The manifest file, relative to `<path>`.
    pub manifest: String,
    /// The client the manifest names (the tenant the API and dashboard filter on).
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub self_heal: bool,
    /// The last commit this environment was promoted at.
    pub commit: Option<String>,
    /// The [`promotion_hash`] promoted at `commit`.
    pub promoted_hash: Option<String>,
    /// The last promotion attempt, whatever its outcome.
    pub last: Option<Attempt>,
    #[serde(default)]
    pub drift: Drift,
    pub drift_checked: Option<Timestamp>,
}

/// The controller's status, for the API and dashboard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub repo: String,
    pub branch: String,
    pub path: String,
    pub fetch: FetchState,
    pub commit: Option<String>,
    pub subject: Option<String>,
    pub last_tick: Option<Timestamp>,
    /// When a fetch last succeeded.
    #[serde(default)]
    pub last_fetch_ok: Option<Timestamp>,
    /// Fetches that failed (unreachable remote, missing branch, checkout error), in all.
    #[serde(default)]
    pub fetch_failures: u64,
    pub environments: BTreeMap<String, EnvStatus>,
    /// Environments whose manifest was removed from the repository, newest last (at most
    /// [`REMOVED_KEPT`]); production was left as it is.
    #[serde(default)]
    pub removed: Vec<Removed>,
}

/// How many removals [`Status::removed`] remembers.
pub const REMOVED_KEPT: usize = 20;

/// An environment the controller stopped following because its manifest left the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub environment: String,
    pub client: Option<String>,
    /// The manifest file it had, relative to `<path>`.
    pub manifest: String,
    /// The first commit without it.
    pub commit: String,
    pub at: Timestamp,
    pub message: String,
}

impl EnvStatus {
    /// The attempt that failed at `commit` and waits for a new commit or a manual retry.
    pub fn failed_at(&self, commit: Option<&str>) -> Option<&Attempt> {
        self.last.as_ref().filter(|a| {
            Some(a.commit.as_str()) == commit
                && matches!(a.outcome, Outcome::Failed | Outcome::Invalid)
                && self.promoted_hash.as_deref() != Some(a.manifest_hash.as_str())
        })
    }
}

/// What one tick did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickReport {
    pub at: Timestamp,
    pub fetch: FetchState,
    pub commit: Option<String>,
    /// Promotions started during the tick, by environment.
    pub attempts: Vec<(String, Attempt)>,
    /// Drift found during the tick, by environment.
    pub drift: Vec<(String, Drift)>,
    /// Manifests that could not even be read for their environment name.
    pub errors: Vec<String>,
    /// Environments dropped because their manifest left the repository.
    pub removed: Vec<String>,
}

// ---------------------------------------------------------------- decisions (pure)

/// Whether an environment's manifest (with content hash `hash` at `commit`) is to be promoted.
pub fn should_promote(env: &EnvStatus, commit: &str, hash: &str, retry: bool) -> bool {
    if env.promoted_hash.as_deref() == Some(hash) {
        return false;
    }
    retry
        || !env.last.as_ref().is_some_and(|a| {
            a.commit == commit && matches!(a.outcome, Outcome::Failed | Outcome::Invalid)
        })
}

/// Whether drift is to be healed: `selfHeal` is on and the manifest at this commit did not
/// already fail (a failed run is not retried on the same commit).
pub fn should_heal(env: &EnvStatus, commit: &str) -> bool {
    env.self_heal
        && env.drift == Drift::Drifted
        && !env.last.as_ref().is_some_and(|a| {
            a.commit == commit && matches!(a.outcome, Outcome::Failed | Outcome::Invalid)
        })
}

/// A file of the checkout: its path relative to the project folder, and its content.
pub type RepoFile = (String, Vec<u8>);

/// The playbook files (relative path, content) a promotion with `chosen` (`-p`, or none) may
/// read, following `rollout promote`'s choice: the files declaring `chosen`; without it the only
/// file, else those declaring `default`. A file whose name cannot be read counts too (it may be
/// the one), and when nothing matches every file counts: when in doubt, a change counts.
pub fn playbooks_used<'a>(files: &'a [RepoFile], chosen: Option<&str>) -> Vec<&'a RepoFile> {
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }
    let name_of = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| serde_saphyr::from_str::<Named>(t).ok())
            .and_then(|n| n.name)
    };
    let named: Vec<(&RepoFile, Option<String>)> =
        files.iter().map(|f| (f, name_of(&f.1))).collect();
    let wanted = match chosen {
        Some(n) => n,
        None if files.len() <= 1 => return files.iter().collect(),
        None => "default",
    };
    if !named.iter().any(|(_, n)| n.as_deref() == Some(wanted)) {
        return files.iter().collect();
    }
    named
        .into_iter()
        .filter(|(_, n)| n.is_none() || n.as_deref() == Some(wanted))
        .map(|(f, _)| f)
        .collect()
}

/// A settings file's text without its top-level `daemon:` block (tokens, listen address and
/// schedules change no promotion).
pub fn without_daemon_section(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '\t', '#']);
        if top_level {
            skipping = line.starts_with("daemon:");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// SHA-256 of everything a promotion of `manifest` depends on: the manifest, the playbook files
/// it uses ([`playbooks_used`]) and the settings the child reads (`daemon:` aside). A change to
/// any of them is a change to promote.
pub fn promotion_hash(manifest: &[u8], playbooks: &[&RepoFile], settings: Option<&str>) -> String {
    let mut h = Sha256::new();
    let mut part = |label: &str, bytes: &[u8]| {
        h.update(label.as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part("manifest", manifest);
    for (rel, bytes) in playbooks {
        part(rel, bytes);
    }
    if let Some(text) = settings {
        part("settings", without_daemon_section(text).as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// A repository address fit for messages and the API: credentials in a URL
/// (`https://user:token@host/...`) are replaced by `***`.
pub fn redact(repo: &str) -> String {
    if let Some((scheme, rest)) = repo.split_once("://") {
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    repo.to_string()
}

/// Keeps the last `MAX` bytes' worth of lines of a child's stderr.
pub fn tail(text: &str) -> String {
    const MAX: usize = 4000;
    let t = text.trim();
    if t.len() <= MAX {
        return t.to_string();
    }
    let mut start = t.len() - MAX;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &t[start..])
}

// ---------------------------------------------------------------- child processes

/// A finished child `rollout`.
#[derive(Debug)]
pub struct ChildOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bin ARGS` to completion, with `env` added and the variables in `hide` (the daemon's
/// token variables) removed. On `cancel` the child gets SIGTERM (rollout's own shutdown
/// path: an in-flight run reaches a safe point) and is still waited for.
pub async fn run_child(
    bin: &Path,
    args: &[String],
    env: &[(String, String)],
    hide: &[String],
    cancel: &CancellationToken,
) -> std::io::Result<ChildOutput> {
    let mut command = tokio::process::Command::new(bin);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1");
    for var in hide {
        command.env_remove(var);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let read = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        a?;
        b?;
        Ok::<_, std::io::Error>((out, err))
    };
    tokio::pin!(read);
    let (out, err) = tokio::select! {
        r = &mut read => r?,
        _ = cancel.cancelled() => {
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            read.await?
        }
    };
    let status = child.wait().await?;
    Ok(ChildOutput {
        code: status.code(),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

// ---------------------------------------------------------------- the controller

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

    /// Brings the checkout to `origin/<branch>`; the commit and its subject.
    async fn fetch(&self) -> Result<(String, String), FetchState> {
        let dir = self.checkout();
        let git = self.git.as_ref();
        let shown = redact(&self.settings.repo);
        // git may echo the address it was given; never let a credential reach the status.
        let clean = |m: String| m.replace(&self.settings.repo, &shown);
        let err = |message: String| FetchState::Error {
            message: clean(message),
        };
        if !dir.join(".git").exists() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            git.run(&dir, &["init", "--quiet"]).await.map_err(err)?;
            git.run(&dir, &["remote", "add", "origin", &self.settings.repo])
                .await
                .map_err(err)?;
        } else {
            // The repository setting may have changed since the checkout was made.
            git.run(&dir, &["remote", "set-url", "origin", &self.settings.repo])
                .await
                .map_err(err)?;
        }
        let branch = &self.settings.branch;
        let remote_ref = format!("refs/remotes/origin/{branch}");
        let refspec = format!("+refs/heads/{branch}:{remote_ref}");
        if let Err(message) = git
            .run(&dir, &["fetch", "--quiet", "--no-tags", "origin", &refspec])
            .await
        {
            // Tell a missing branch from a remote that cannot be reached.
            return Err(
                match git
                    .run(&dir, &["ls-remote", "--heads", "origin", branch])
                    .await
                {
                    Ok(heads) if heads.trim().is_empty() => FetchState::BranchMissing {
                        message: format!(
                            "branch `{branch}` does not exist on {shown}; following nothing until it is back"
                        ),
                    },
                    Ok(_) => err(message),
                    Err(_) => FetchState::Unreachable {
                        message: format!("cannot fetch {shown}: {}", clean(message)),
                    },
                },
            );
        }
        git.run(
            &dir,
            &[
                "checkout",
                "--quiet",
                "--force",
                "-B",
                "gitops",
                &remote_ref,
            ],
        )
        .await
        .map_err(err)?;
        git.run(&dir, &["clean", "-ffdxq"]).await.map_err(err)?;
        let commit = git
            .run(&dir, &["rev-parse", "HEAD"])
            .await
            .map_err(err)?
            .trim()
            .to_string();
        let subject = git
            .run(&dir, &["log", "-1", "--format=%s"])
            .await
            .map_err(err)?
            .trim()
            .to_string();
        Ok((commit, subject))
    }

    /// The manifest files at the checkout, and errors for files that cannot be read.
    fn manifests(&self, status: &Status) -> (Vec<ManifestFile>, Vec<String>) {
        let dir = self.project_dir();
        let playbooks: Vec<RepoFile> = yaml_files(&dir.join("playbooks"))
            .into_iter()
            .filter_map(|p| {
                let bytes = std::fs::read(&p).ok()?;
                let name = p.file_name()?.to_string_lossy().into_owned();
                Some((format!("playbooks/{name}"), bytes))
            })
            .collect();
        let used = playbooks_used(&playbooks, self.settings.playbook.as_deref());
        // The children read the daemon project's settings, or else the checkout's.
        let settings_path = self
            .settings
            .settings_file
            .clone()
            .unwrap_or_else(|| dir.join("rollout.yaml"));
        let settings = std::fs::read_to_string(&settings_path).ok();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for path in yaml_files(&dir.join("manifests")) {
            let rel = format!(
                "manifests/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    // Still there: keep what is known of it.
                    if let Some((n, e)) =
                        status.environments.iter().find(|(_, e)| e.manifest == rel)
                    {
                        out.push(ManifestFile {
                            rel,
                            hash: None,
                            name: n.clone(),
                            client: e.client.clone(),
                            self_heal: e.self_heal,
                        });
                    }
                    continue;
                }
            };
            let hash = promotion_hash(&bytes, &used, settings.as_deref());
            // The name and client, even from a manifest that does not load as a whole (a typo
            // in a service must not hide which environment and client it is about).
            let header = Header::read(&bytes);
            let full = Source::from_bytes(&path, bytes).ok().and_then(|src| {
                crate::manifest::yaml::parse::<RawEnvironment>(&src, "an Environment manifest").ok()
            });
            let known = status.environments.iter().find(|(_, e)| e.manifest == rel);
            let name = match (&full, header.as_ref().and_then(|h| h.name.clone()), known) {
                (Some(raw), _, _) => raw.name.value.clone(),
                (None, Some(n), _) => n,
                // A file that does not parse keeps the name it had; the child reports the error.
                (None, None, Some((n, _))) => n.clone(),
                (None, None, None) => path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            };
            let client = full
                .as_ref()
                .map(|raw| raw.client.value.clone())
                .or_else(|| header.as_ref().and_then(|h| h.client.clone()))
                .or_else(|| known.and_then(|(_, e)| e.client.clone()));
            let self_heal = match &full {
                Some(raw) => raw.self_heal.unwrap_or(false),
                None => header
                    .as_ref()
                    .and_then(|h| h.self_heal)
                    .unwrap_or_else(|| known.is_some_and(|(_, e)| e.self_heal)),
            };
            out.push(ManifestFile {
                rel,
                hash: Some(hash),
                name,
                client,
                self_heal,
            });
        }
        (out, errors)
    }

    fn child_env(&self) -> Vec<(String, String)> {
        let mut env = self.settings.child_env.clone();
        env.push((
            STATE_ENV.to_string(),
            self.settings.state_dir.display().to_string(),
        ));
        if let Some(f) = &self.settings.settings_file {
            env.push((SETTINGS_ENV.to_string(), f.display().to_string()));
        }
        env
    }

    async fn promote(
        &self,
        manifest: &str,
        hash: &str,
        commit: &str,
        subject: &str,
        trigger: Trigger,
    ) -> Attempt {
        let short = &commit[..commit.len().min(12)];
        let reason = match trigger {
            Trigger::SelfHeal => format!("gitops: self-heal at {short} {subject}"),
            Trigger::Retry => format!("gitops: retry {short} {subject}"),
            Trigger::Commit => format!("gitops: {short} {subject}"),
        };
        let mut args: Vec<String> = vec![
            "-C".into(),
            self.project_dir().display().to_string(),
            "promote".into(),
            "-m".into(),
            manifest.into(),
            "--yes".into(),
            "--reason".into(),
            reason,
        ];
        if let Some(p) = &self.settings.playbook {
            args.extend(["-p".into(), p.clone()]);
        }
        let at = Timestamp::now();
        match run_child(
            &self.settings.rollout_bin,
            &args,
            &self.child_env(),
            &self.settings.hide_env,
            &self.cancel,
        )
        .await
        {
            Ok(out) => {
                let run = out
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("run "))
                    .map(|s| s.trim().to_string());
                let outcome = Outcome::from_exit(out.code, run.is_some());
                Attempt {
                    commit: commit.to_string(),
                    manifest_hash: hash.to_string(),
                    trigger,
                    outcome,
                    run,
                    exit: out.code,
                    at,
                    error: (outcome != Outcome::Promoted).then(|| tail(&out.stderr)),
                }
            }
            Err(e) => Attempt {
                commit: commit.to_string(),
                manifest_hash: hash.to_string(),
                trigger,
                outcome: Outcome::Failed,
                run: None,
                exit: None,
                at,
                error: Some(format!(
                    "cannot start {}: {e}",
                    self.settings.rollout_bin.display()
                )),
            },
        }
    }

    async fn drift(&self, manifest: &str) -> Drift {
        let mut args: Vec<String> = vec![
            "-C".into(),
            self.project_dir().display().to_string(),
            "plan".into(),
            "-m".into(),
            manifest.into(),
            "-o".into(),
            "json".into(),
        ];
        if let Some(p) = &self.settings.playbook {
            args.extend(["-p".into(), p.clone()]);
        }
        match run_child(
            &self.settings.rollout_bin,
            &args,
            &self.child_env(),
            &self.settings.hide_env,
            &self.cancel,
        )
        .await
        {
            Ok(out) => match out.code {
                Some(0) => Drift::InSync,
                Some(2) => Drift::Drifted,
                _ => Drift::Error {
                    message: tail(&out.stderr),
                },
            },
            Err(e) => Drift::Error {
                message: format!("cannot run plan: {e}"),
            },
        }
    }

    /// Tells the webhooks that `env` started to drift (once per episode, not every tick).
    fn notify_drift(&self, env: &str, commit: &str, self_heal: bool, now: Timestamp) {
        let short = &commit[..commit.len().min(12)];
        let what = if self_heal {
            "putting it back (selfHeal)"
        } else {
            "selfHeal is off: reported only"
        };
        let reason = format!("what runs differs from the manifest at {short}; {what}");
        self.notifier.send(&crate::notify::Notification::new(
            crate::notify::Event::Drifted,
            env,
            short,
            Some(&reason),
            now,
        ));
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
                if attempt.outcome == Outcome::Promoted {
                    env.commit = Some(commit.clone());
                    env.promoted_hash = Some(hash.clone());
                    promoted_now = true;
                }
                report.attempts.push((name.clone(), attempt.clone()));
                env.last = Some(attempt);
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
                    if attempt.outcome == Outcome::Promoted {
                        env.commit = Some(commit.clone());
                        env.promoted_hash = Some(hash.clone());
                    }
                    report.attempts.push((name.clone(), attempt.clone()));
                    report.drift.push((name.clone(), env.drift.clone()));
                    env.last = Some(attempt);
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
            let short = &commit[..commit.len().min(12)];
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

/// A manifest file at the checkout.
struct ManifestFile {
    /// Relative to the project folder in the repository (`manifests/NAME.yaml`).
    rel: String,
    /// The [`promotion_hash`]; `None` when the file is there but cannot be read (this tick
    /// leaves it alone).
    hash: Option<String>,
    /// The environment it declares (or, when it does not parse, the name it had).
    name: String,
    client: Option<String>,
    self_heal: bool,
}

/// The top of an environment manifest, read leniently: what it is about, even when the rest of
/// it does not load.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    name: Option<String>,
    client: Option<String>,
    self_heal: Option<bool>,
}

impl Header {
    fn read(bytes: &[u8]) -> Option<Header> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| serde_saphyr::from_str::<Header>(t).ok())
    }
}

/// The manifest under `<dir>/manifests/` that declares environment `name`, relative to `dir`
/// (`manifests/FILE`), so that a command can be given that file alone (`-m`): one manifest of
/// another environment that does not load must not stop this one.
pub fn manifest_of(dir: &Path, name: &str) -> Option<String> {
    yaml_files(&dir.join("manifests"))
        .into_iter()
        .find_map(|p| {
            let header = Header::read(&std::fs::read(&p).ok()?)?;
            let file = p.file_name()?.to_string_lossy();
            (header.name.as_deref() == Some(name)).then(|| format!("manifests/{file}"))
        })
}

/// The `*.yaml` / `*.yml` files of `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    files
}

/// The project's rollout.yaml, if it has one (as an absolute path when the project's is).
pub fn settings_file(project: &crate::project::Project) -> Option<PathBuf> {
    let f = project.dir.join("rollout.yaml");
    f.is_file().then_some(f)
}

/// Where the controller keeps its checkout of the repository.
pub fn checkout_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("gitops").join("checkout")
}

fn state_file(state_dir: &Path) -> PathBuf {
    let dir = state_dir.join("gitops");
    let _ = std::fs::create_dir_all(&dir);
    dir.join("state.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_gets_its_variables_and_never_the_hidden_ones() {
        // A variable of this process stands for a token variable the daemon has: removed for
        // the child. T is hidden although `env` sets it.
        let shells_own = [
            "PATH", "PWD", "OLDPWD", "IFS", "PPID", "OPTIND", "PS1", "PS2", "PS4",
        ];
        let (inherited, _) = std::env::vars()
            .find(|(k, v)| {
                !v.is_empty()
                    && !shells_own.contains(&k.as_str())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .expect("a variable in this process");
        let script = format!("echo \"${{U:-no U}} ${{T:-no T}} ${{{inherited}:-gone}}\"");
        let run = |hide: Vec<String>| {
            let script = script.clone();
            async move {
                run_child(
                    Path::new("/bin/sh"),
                    &["-c".into(), script],
                    &[("U".into(), "u".into()), ("T".into(), "t".into())],
                    &hide,
                    &CancellationToken::new(),
                )
                .await
                .unwrap()
            }
        };
        let out = run(vec!["T".into(), inherited.clone()]).await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(out.stdout.trim(), "u no T gone");
        // Without hiding it, the same child sees it.
        let out = run(vec![]).await;
        assert!(!out.stdout.trim().ends_with("gone"), "{}", out.stdout);
    }

    fn attempt(commit: &str, outcome: Outcome) -> Attempt {
        Attempt {
            commit: commit.into(),
            manifest_hash: "h2".into(),
            trigger: Trigger::Commit,
            outcome,
            run: None,
            exit: Some(1),
            at: Timestamp::UNIX_EPOCH,
            error: None,
        }
    }

    #[test]
    fn a_changed_manifest_is_promoted_once_and_a_failure_waits_for_a_new_commit_or_a_retry() {
        let mut env = EnvStatus::default();
        assert!(should_promote(&env, "c1", "h1", false), "never promoted");
        env.promoted_hash = Some("h1".into());
        assert!(!should_promote(&env, "c2", "h1", false), "unchanged");
        assert!(should_promote(&env, "c2", "h2", false), "changed");
        env.last = Some(attempt("c2", Outcome::Failed));
        assert!(!should_promote(&env, "c2", "h2", false), "failed here");
        assert!(should_promote(&env, "c2", "h2", true), "manual retry");
        assert!(should_promote(&env, "c3", "h2", false), "new commit");
        env.last = Some(attempt("c2", Outcome::Invalid));
        assert!(!should_promote(&env, "c2", "h2", false), "invalid here");
        env.last = Some(attempt("c2", Outcome::Refused));
        assert!(should_promote(&env, "c2", "h2", false), "refusals retry");
    }

    #[test]
    fn drift_is_healed_only_with_self_heal_and_not_over_a_failure() {
        let mut env = EnvStatus {
            drift: Drift::Drifted,
            ..EnvStatus::default()
        };
        assert!(!should_heal(&env, "c1"));
        env.self_heal = true;
        assert!(should_heal(&env, "c1"));
        env.last = Some(attempt("c1", Outcome::Failed));
        assert!(!should_heal(&env, "c1"));
        assert!(should_heal(&env, "c2"));
        env.drift = Drift::InSync;
        assert!(!should_heal(&env, "c2"));
    }

    #[test]
    fn exit_statuses_map_to_outcomes() {
        assert_eq!(Outcome::from_exit(Some(0), true), Outcome::Promoted);
        assert_eq!(Outcome::from_exit(Some(3), true), Outcome::Refused);
        assert_eq!(Outcome::from_exit(Some(1), true), Outcome::Failed);
        assert_eq!(Outcome::from_exit(Some(1), false), Outcome::Invalid);
        assert_eq!(Outcome::from_exit(None, false), Outcome::Failed);
    }

    #[test]
    fn credentials_in_a_repository_url_are_never_shown() {
        assert_eq!(
            redact("https://bot:s3cr3t@git.example/acme/infra.git"),
            "https://***@git.example/acme/infra.git"
        );
        assert_eq!(
            redact("https://git.example/acme/infra@v2.git"),
            "https://git.example/acme/infra@v2.git"
        );
        assert_eq!(
            redact("git@git.example:acme/infra.git"),
            "git@git.example:acme/infra.git"
        );
        assert_eq!(redact("/srv/git/infra.git"), "/srv/git/infra.git");
    }

    fn pb(rel: &str, name: &str, steps: &str) -> (String, Vec<u8>) {
        (
            rel.to_string(),
            format!("apiVersion: rollout/v1\nkind: Playbook\nname: {name}\nsteps: {steps}\n")
                .into_bytes(),
        )
    }

    fn rels(used: &[&(String, Vec<u8>)]) -> Vec<String> {
        used.iter().map(|(r, _)| r.clone()).collect()
    }

    #[test]
    fn the_playbook_a_promotion_uses_is_chosen_like_rollout_promote_chooses_it() {
        let quick = pb("playbooks/quick.yaml", "quick", "[]");
        let other = pb("playbooks/x.yaml", "other", "[]");
        let default = pb("playbooks/d.yaml", "default", "[]");
        let broken = ("playbooks/broken.yaml".to_string(), b"name: [\n".to_vec());
        let files = vec![quick.clone(), other.clone(), default.clone()];
        // -p quick: the file that declares it, whatever the file is called.
        assert_eq!(
            rels(&playbooks_used(&files, Some("quick"))),
            ["playbooks/quick.yaml"]
        );
        assert_eq!(
            rels(&playbooks_used(&files, Some("other"))),
            ["playbooks/x.yaml"]
        );
        // No -p: `default` among several; the only one; all of them when nothing matches.
        assert_eq!(rels(&playbooks_used(&files, None)), ["playbooks/d.yaml"]);
        assert_eq!(
            rels(&playbooks_used(std::slice::from_ref(&other), None)),
            ["playbooks/x.yaml"]
        );
        assert_eq!(playbooks_used(&files, Some("nosuch")).len(), 3);
        assert_eq!(
            playbooks_used(&[quick.clone(), other.clone()], None).len(),
            2
        );
        // A file whose name cannot be read may be the one: it counts.
        let with_broken = vec![quick, other, broken];
        assert_eq!(
            rels(&playbooks_used(&with_broken, Some("quick"))),
            ["playbooks/quick.yaml", "playbooks/broken.yaml"]
        );
    }

    #[test]
    fn the_promotion_hash_changes_with_the_manifest_its_playbook_and_settings_only() {
        let files = vec![
            pb("playbooks/quick.yaml", "quick", "[]"),
            pb("playbooks/x.yaml", "other", "[]"),
        ];
        let base = promotion_hash(b"m1", &playbooks_used(&files, Some("quick")), None);
        assert_eq!(
            base,
            promotion_hash(b"m1", &playbooks_used(&files, Some("quick")), None)
        );
        assert_ne!(
            base,
            promotion_hash(b"m2", &playbooks_used(&files, Some("quick")), None)
        );
        let quick_changed = vec![
            pb("playbooks/quick.yaml", "quick", "[ { promote: {} } ]"),
            files[1].clone(),
        ];
        assert_ne!(
            base,
            promotion_hash(b"m1", &playbooks_used(&quick_changed, Some("quick")), None),
            "a change to the playbook used is a change"
        );
        let other_changed = vec![files[0].clone(), pb("playbooks/x.yaml", "other", "[ {} ]")];
        assert_eq!(
            base,
            promotion_hash(b"m1", &playbooks_used(&other_changed, Some("quick")), None),
            "a change to another playbook is not"
        );
        let settings =
            "backend: docker\ndaemon:\n  listen: 127.0.0.1:1\n  tokens: []\nnotify: []\n";
        let with = promotion_hash(
            b"m1",
            &playbooks_used(&files, Some("quick")),
            Some(settings),
        );
        assert_ne!(base, with);
        let tokens_changed = settings.replace("127.0.0.1:1", "127.0.0.1:2");
        assert_eq!(
            with,
            promotion_hash(
                b"m1",
                &playbooks_used(&files, Some("quick")),
                Some(&tokens_changed)
            ),
            "the daemon: section changes no promotion"
        );
        let notify_changed = settings.replace(
            "notify: []",
            "notify: [ { webhook: \"http://127.0.0.1:9/\" } ]",
        );
        assert_ne!(
            with,
            promotion_hash(
                b"m1",
                &playbooks_used(&files, Some("quick")),
                Some(&notify_changed)
            )
        );
        assert_eq!(
            without_daemon_section(settings),
            "backend: docker\nnotify: []\n"
        );
    }

    #[test]
    fn a_failed_commit_waits_only_at_the_current_commit_and_until_promoted() {
        let mut env = EnvStatus {
            last: Some(attempt("c2", Outcome::Failed)),
            ..EnvStatus::default()
        };
        assert!(env.failed_at(Some("c2")).is_some());
        assert!(
            env.failed_at(Some("c3")).is_none(),
            "a newer commit is followed"
        );
        env.last = Some(attempt("c2", Outcome::Invalid));
        assert!(env.failed_at(Some("c2")).is_some());
        env.last = Some(attempt("c2", Outcome::Refused));
        assert!(
            env.failed_at(Some("c2")).is_none(),
            "a refusal retries by itself"
        );
        env.last = Some(attempt("c2", Outcome::Failed));
        env.promoted_hash = Some("h2".into());
        assert!(
            env.failed_at(Some("c2")).is_none(),
            "what failed runs already"
        );
    }

    #[test]
    fn tail_keeps_the_end() {
        let long = "x".repeat(5000) + "END";
        let t = tail(&long);
        assert!(t.ends_with("END") && t.len() < 4100);
        assert_eq!(tail("  short \n"), "short");
    }
}
