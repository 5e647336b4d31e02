//! The GitOps controller against real git repositories made in temp dirs (commits, a force
//! push, a deleted branch, an unreachable remote) and the real Docker engine: a commit is
//! promoted, a bad commit is reported with file:line and changes nothing, drift is found after a
//! container is removed by hand and healed where `selfHeal: true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rollout::daemon::gitops::{Controller, Drift, FetchState, Outcome, Settings, Trigger};

use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{static_binary, unique, webhook_receiver};

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=rollout-test",
            "-c",
            "user.email=test@rollout.invalid",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare "remote" and a working clone pushing to it on branch `main`.
pub(crate) struct Repo {
    _dir: tempfile::TempDir,
    pub origin: PathBuf,
    pub work: PathBuf,
}

impl Repo {
    pub(crate) fn new() -> Repo {
        let dir = tempfile::tempdir().expect("temp dir");
        let origin = dir.path().join("origin.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&origin).expect("mkdir");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&origin, &["init", "--quiet", "--bare", "-b", "main"]);
        // Like a hosted remote, where the followed branch need not be the default one.
        git(&origin, &["config", "receive.denyDeleteCurrent", "ignore"]);
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(
            &work,
            &["remote", "add", "origin", &origin.display().to_string()],
        );
        Repo {
            _dir: dir,
            origin,
            work,
        }
    }

    /// Removes `files`, commits and pushes; the new commit.
    pub fn remove(&self, message: &str, files: &[&str]) -> String {
        for rel in files {
            git(&self.work, &["rm", "--quiet", rel]);
        }
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Writes `files` (path, contents), commits them and pushes; the new commit.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        for (rel, contents) in files {
            let p = self.work.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, contents).expect("write");
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

fn settings(repo: &str, state: &Path) -> Settings {
    Settings {
        repo: repo.to_string(),
        branch: "main".into(),
        path: ".".into(),
        interval: Duration::from_secs(1),
        playbook: Some("quick".into()),
        state_dir: state.to_path_buf(),
        rollout_bin: env!("CARGO_BIN_EXE_rollout").into(),
        child_env: vec![(
            "ROLLOUT_STATIC_BINARY".into(),
            static_binary().display().to_string(),
        )],
        hide_env: Vec::new(),
        settings_file: None,
        notify: Vec::new(),
    }
}

pub const QUICK: &str =
    "apiVersion: rollout/v1\nkind: Playbook\nname: quick\nsteps:\n  - promote: { drain: 1s }\n";

pub fn manifest(env: &str, image: &str, self_heal: bool) -> String {
    format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {env}\nclient: acme\nselfHeal: {self_heal}\nservices:\n  web:\n    image: {image}\n    ports: [ {{ container: 8080 }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }}, interval: 200ms, startPeriod: 3s, retries: 2 }}\n"
    )
}

/// The images of the environment's running `web` containers.
pub fn web_images(env: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--format",
            "{{.Image}}",
            "--filter",
            &format!("label=rollout.environment={env}"),
            "--filter",
            "label=rollout.service=web",
            "--filter",
            "label=rollout.role=production",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn remove_web_by_hand(env: &str) {
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=rollout.environment={env}"),
            "--filter",
            "label=rollout.service=web",
        ])
        .output()
        .expect("docker ps");
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let rm = Command::new("docker")
            .args(["rm", "-f", id])
            .output()
            .expect("docker rm");
        assert!(rm.status.success());
    }
    assert!(web_images(env).is_empty());
}

#[test]
fn commits_are_promoted_a_bad_commit_changes_nothing_and_drift_is_found_and_healed() {
    let name = unique("gop");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let repo = Repo::new();
    let state = tempfile::tempdir().expect("state");
    let file = format!("manifests/{name}.yaml");
    let c1 = repo.commit(
        "first version",
        &[
            (&file, &manifest(&name, "shop-web:2.4.0", false)),
            ("playbooks/quick.yaml", QUICK),
        ],
    );
    let (hook, hits) = webhook_receiver();
    let mut s = settings(&repo.origin.display().to_string(), state.path());
    s.notify = vec![rollout::manifest::config::Notify {
        webhook: hook,
        on: vec![rollout::notify::Event::Drifted],
    }];
    // The daemon project's settings (not the repository's) apply to the promotions it runs.
    let (promoted_hook, promoted_hits) = webhook_receiver();
    let daemon_project = tempfile::tempdir().expect("project");
    let settings_file = daemon_project.path().join("rollout.yaml");
    std::fs::write(
        &settings_file,
        format!("notify:\n  - {{ webhook: \"{promoted_hook}\", on: [promoted] }}\n"),
    )
    .expect("write");
    s.settings_file = Some(settings_file.clone());
    let mut controller = Controller::new(s);
    let rt = runtime();

    // The first tick promotes the environment at the first commit.
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.fetch, FetchState::Ok, "{r:?}");
    assert_eq!(r.commit.as_deref(), Some(c1.as_str()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    let (env, a) = &r.attempts[0];
    assert_eq!(env, &name);
    assert_eq!(a.outcome, Outcome::Promoted, "{a:?}");
    assert_eq!(a.trigger, Trigger::Commit);
    assert_eq!(web_images(&name), ["shop-web:2.4.0"]);
    assert_eq!(r.drift, [(name.clone(), Drift::InSync)]);

    // Nothing changed: the next tick promotes nothing.
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert!(r.attempts.is_empty(), "{r:?}");

    // A new commit is promoted, and the commit is in the history and the report.
    let c2 = repo.commit(
        "web 2.5.0",
        &[(&file, &manifest(&name, "shop-web:2.5.0", false))],
    );
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    let run = r.attempts[0].1.run.clone().expect("run id");
    assert_eq!(r.attempts[0].1.outcome, Outcome::Promoted, "{r:?}");
    assert_eq!(web_images(&name), ["shop-web:2.5.0"]);
    let checkout = state.path().join("gitops/checkout");
    let history = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .arg("-C")
        .arg(&checkout)
        .args(["history", "-e", &name, "-o", "json"])
        .env("ROLLOUT_STATE", state.path())
        .output()
        .expect("history");
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).expect("json");
    let reasons: Vec<String> = history["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .filter_map(|r| r["reason"].as_str().map(str::to_string))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r == &format!("gitops: {} web 2.5.0", &c2[..12])),
        "{reasons:?}"
    );
    let report = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .arg("-C")
        .arg(&checkout)
        .args(["report", &run, "-o", "json"])
        .env("ROLLOUT_STATE", state.path())
        .output()
        .expect("report");
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("json");
    assert_eq!(
        report["reason"].as_str(),
        Some(format!("gitops: {} web 2.5.0", &c2[..12]).as_str())
    );

    // A bad commit: reported with file:line:column, nothing changes, not retried on its own.
    let bad = manifest(&name, "shop-web:2.6.0", false)
        .replace("client: acme\n", "client: acme\ncolour: red\n");
    let c3 = repo.commit("typo", &[(&file, &bad)]);
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    let a = &r.attempts[0].1;
    assert_eq!(a.outcome, Outcome::Invalid, "{a:?}");
    assert_eq!(a.commit, c3);
    let error = a.error.clone().expect("error");
    assert!(error.contains(&format!("{name}.yaml:5:1")), "{error}");
    assert!(error.contains("colour"), "{error}");
    assert_eq!(web_images(&name), ["shop-web:2.5.0"]);
    let status = controller.status();
    let env_status = &status.environments[&name];
    assert_eq!(env_status.commit.as_deref(), Some(c2.as_str()));
    assert_eq!(
        env_status.last.as_ref().map(|a| a.outcome),
        Some(Outcome::Invalid)
    );
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert!(r.attempts.is_empty(), "retried a bad commit: {r:?}");
    // A manual retry tries again (and fails the same way).
    controller.retry(&name);
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    assert_eq!(r.attempts[0].1.trigger, Trigger::Retry);
    assert_eq!(r.attempts[0].1.outcome, Outcome::Invalid);

    // Back to the manifest that runs: nothing to promote, in sync.
    repo.commit("fix", &[(&file, &manifest(&name, "shop-web:2.5.0", false))]);
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert!(r.attempts.is_empty(), "{r:?}");
    assert_eq!(r.drift, [(name.clone(), Drift::InSync)]);
    // Without selfHeal, drift is reported, not healed.
    remove_web_by_hand(&name);
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert!(r.attempts.is_empty(), "{r:?}");
    assert_eq!(r.drift, [(name.clone(), Drift::Drifted)]);
    assert_eq!(
        controller.status().environments[&name].drift,
        Drift::Drifted
    );
    assert!(web_images(&name).is_empty());

    // With selfHeal: true, drift is put back.
    repo.commit(
        "self-heal",
        &[(&file, &manifest(&name, "shop-web:2.5.0", true))],
    );
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    assert_eq!(web_images(&name), ["shop-web:2.5.0"]);
    remove_web_by_hand(&name);
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    assert_eq!(r.attempts[0].1.trigger, Trigger::SelfHeal);
    assert_eq!(r.attempts[0].1.outcome, Outcome::Promoted, "{r:?}");
    assert_eq!(web_images(&name), ["shop-web:2.5.0"]);
    assert_eq!(controller.status().environments[&name].drift, Drift::InSync);

    // Each drift episode was told to the webhook once (not on every tick).
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await });
    let hits = hits.lock().expect("hits").clone();
    assert_eq!(hits.len(), 2, "{hits:?}");
    for h in &hits {
        assert_eq!(h["event"], "drifted");
        assert_eq!(h["environment"], name.as_str());
    }
    assert!(
        hits[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("selfHeal is off")),
        "{hits:?}"
    );
    assert!(
        hits[1]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("putting it back")),
        "{hits:?}"
    );

    let promoted = promoted_hits.lock().expect("hits").clone();
    assert!(
        promoted
            .iter()
            .any(|h| h["event"] == "promoted" && h["run"] == run.as_str()),
        "the 2.5.0 promotion was not notified through the daemon's settings: {promoted:?}"
    );

    // The state survives a restart: a new controller (same settings) promotes nothing again.
    let mut restarted = settings(&repo.origin.display().to_string(), state.path());
    restarted.settings_file = Some(settings_file);
    let mut again = Controller::new(restarted);
    let r = rt.block_on(again.tick(jiff::Timestamp::now()));
    assert!(r.attempts.is_empty(), "{r:?}");
    assert_eq!(r.drift, [(name.clone(), Drift::InSync)]);
}

#[test]
fn force_pushes_a_deleted_branch_and_an_unreachable_remote_leave_a_clear_status() {
    // A manifest that does not load: every promotion stops before the engine, so this test
    // exercises git alone.
    let name = unique("gfp");
    let repo = Repo::new();
    let state = tempfile::tempdir().expect("state");
    let file = format!("manifests/{name}.yaml");
    let broken = |v: &str| {
        format!(
            "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices: {v}\n"
        )
    };
    let c1 = repo.commit("one", &[(&file, &broken("1"))]);
    let rt = runtime();
    let origin = repo.origin.display().to_string();
    let mut controller = Controller::new(settings(&origin, state.path()));
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.commit.as_deref(), Some(c1.as_str()), "{r:?}");
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].1.outcome, Outcome::Invalid);

    // A force push replaces the commit: the controller follows it.
    std::fs::write(repo.work.join(&file), broken("2")).expect("write");
    git(
        &repo.work,
        &["commit", "--quiet", "-a", "--amend", "-m", "one, rewritten"],
    );
    git(
        &repo.work,
        &["push", "--quiet", "--force", "origin", "main"],
    );
    let c2 = git(&repo.work, &["rev-parse", "HEAD"]);
    assert_ne!(c1, c2);
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.fetch, FetchState::Ok);
    assert_eq!(r.commit.as_deref(), Some(c2.as_str()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    assert_eq!(r.attempts[0].1.commit, c2);
    let status = controller.status();
    assert_eq!(status.subject.as_deref(), Some("one, rewritten"));

    // The branch is deleted on the remote: a clear status, the last commit kept, no run.
    git(
        &repo.work,
        &["push", "--quiet", "origin", "--delete", "main"],
    );
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    match &r.fetch {
        FetchState::BranchMissing { message } => {
            assert!(
                message.contains("branch `main` does not exist"),
                "{message}"
            )
        }
        other => panic!("expected a missing branch, got {other:?}"),
    }
    assert!(r.attempts.is_empty());
    let status = controller.status();
    assert_eq!(status.commit.as_deref(), Some(c2.as_str()));
    assert!(matches!(status.fetch, FetchState::BranchMissing { .. }));

    // An unreachable remote (nothing listens on 127.0.0.1:1): a clear status, no crash.
    let mut unreachable = Controller::new(settings(
        "http://bot:s3cr3t@127.0.0.1:1/acme/infra.git",
        state.path(),
    ));
    let r = rt.block_on(unreachable.tick(jiff::Timestamp::now()));
    match &r.fetch {
        FetchState::Unreachable { message } => {
            assert!(
                message.contains("cannot fetch http://***@127.0.0.1:1/acme/infra.git"),
                "{message}"
            )
        }
        other => panic!("expected an unreachable remote, got {other:?}"),
    }
    assert!(r.attempts.is_empty());
    // What it knew survives: the environment and its last attempt. The credential in the
    // address appears nowhere in the status.
    let status = unreachable.status();
    assert!(
        !serde_json::to_string(&status)
            .expect("json")
            .contains("s3cr3t")
    );
    assert_eq!(status.commit.as_deref(), Some(c2.as_str()));
    assert_eq!(
        status.environments[&name]
            .last
            .as_ref()
            .map(|a| a.commit.clone()),
        Some(c2.clone())
    );

    // A remote that never existed, on the first tick of a fresh state: the same.
    let fresh = tempfile::tempdir().expect("state");
    let mut never = Controller::new(settings("/nonexistent/rollout/infra.git", fresh.path()));
    let r = rt.block_on(never.tick(jiff::Timestamp::now()));
    assert!(matches!(r.fetch, FetchState::Unreachable { .. }), "{r:?}");
    assert!(
        serde_json::to_string(&never.status())
            .expect("status serializes")
            .contains("unreachable")
    );
}

/// Waits (polling the handle) until `done` holds for the environment's status, or panics.
fn wait_for(
    handle: &rollout::daemon::gitops::GitopsHandle,
    env: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&rollout::daemon::gitops::EnvStatus) -> bool,
) -> rollout::daemon::gitops::EnvStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(e) = handle.status().environments.get(env)
            && done(e)
        {
            return e.clone();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; status {:#?}",
            handle.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_loop_promotes_a_commit_within_a_couple_of_intervals_and_a_failed_run_waits_for_a_new_commit()
{
    let name = unique("glp");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let repo = Repo::new();
    let state = tempfile::tempdir().expect("state");
    let file = format!("manifests/{name}.yaml");
    repo.commit(
        "first version",
        &[
            (&file, &manifest(&name, "shop-web:2.4.0", false)),
            ("playbooks/quick.yaml", QUICK),
        ],
    );
    let interval = Duration::from_secs(2);
    let mut s = settings(&repo.origin.display().to_string(), state.path());
    s.interval = interval;
    let controller = Controller::new(s);
    let handle = controller.handle();
    let cancel = tokio_util::sync::CancellationToken::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let task = rt.spawn(controller.run(cancel.clone()));

    let first = wait_for(
        &handle,
        &name,
        Duration::from_secs(120),
        "first promotion",
        |e| {
            e.last
                .as_ref()
                .is_some_and(|a| a.outcome == Outcome::Promoted)
        },
    );
    assert_eq!(web_images(&name), ["shop-web:2.4.0"]);
    assert!(first.commit.is_some());

    // A commit whose version never becomes healthy (2.6.0): the run starts within a couple of
    // intervals, fails and rolls back; production keeps serving 2.4.0.
    let committed = jiff::Timestamp::now();
    let bad = repo.commit(
        "web 2.6.0",
        &[(&file, &manifest(&name, "shop-web:2.6.0", false))],
    );
    let failed = wait_for(
        &handle,
        &name,
        Duration::from_secs(120),
        "failed run",
        |e| e.last.as_ref().is_some_and(|a| a.commit == bad),
    );
    let attempt = failed.last.clone().expect("attempt");
    assert_eq!(attempt.outcome, Outcome::Failed, "{attempt:?}");
    assert!(attempt.run.is_some());
    let waited = attempt.at.duration_since(committed);
    assert!(
        waited
            <= jiff::SignedDuration::try_from(interval * 2).expect("span")
                + jiff::SignedDuration::from_secs(3),
        "the commit waited {waited:?} before its run started"
    );
    assert_eq!(web_images(&name), ["shop-web:2.4.0"]);

    // Not retried on the same commit: several intervals later, the same attempt.
    std::thread::sleep(interval * 3);
    assert_eq!(
        handle.status().environments[&name].last.as_ref(),
        Some(&attempt)
    );

    // A new commit (even one that does not touch the manifest) tries again.
    let other = repo.commit("notes", &[("NOTES.md", "deploy notes\n")]);
    let again = wait_for(
        &handle,
        &name,
        Duration::from_secs(120),
        "retry on a new commit",
        |e| e.last.as_ref().is_some_and(|a| a.commit == other),
    );
    assert_eq!(
        again.last.as_ref().map(|a| a.outcome),
        Some(Outcome::Failed)
    );
    assert_ne!(again.last.as_ref().map(|a| a.at), Some(attempt.at));
    assert_eq!(
        again.commit, first.commit,
        "the promoted commit is still the first"
    );

    cancel.cancel();
    rt.block_on(task).expect("controller loop");
    assert_eq!(web_images(&name), ["shop-web:2.4.0"]);
}

/// `rollout daemon` with `daemon.gitops` runs the controller: a commit to the followed branch
/// goes to production without anyone calling the API, and SIGTERM stops the daemon cleanly.
#[test]
fn the_daemon_runs_the_gitops_controller_in_the_background() {
    let name = unique("gdm");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let repo = Repo::new();
    repo.commit(
        "v1",
        &[
            (
                &format!("manifests/{name}.yaml"),
                &manifest(&name, "shop-web:2.4.0", false),
            ),
            ("playbooks/quick.yaml", QUICK),
        ],
    );
    let addr = format!("127.0.0.1:{}", crate::support::free_port());
    let project = crate::support::Project::new().file(
        "rollout.yaml",
        format!(
            "proxy: {{ bind: 127.0.0.1 }}\ndaemon:\n  listen: {addr}\n  tokens:\n    - {{ name: reader, fromEnv: GITOPS_TEST_TOKEN, clients: [acme], may: [read] }}\n  gitops: {{ repo: \"{}\", branch: main, path: ., interval: 1s, playbook: quick }}\n",
            repo.origin.display()
        ),
    );
    let mut daemon = project
        .command(&["daemon"])
        .env("GITOPS_TEST_TOKEN", "s3cret-reader-token")
        .env("ROLLOUT_STATIC_BINARY", static_binary())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let started = std::time::Instant::now();
    while web_images(&name) != ["shop-web:2.4.0"] {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = daemon.kill();
            let out = daemon.wait_with_output().expect("daemon output");
            panic!(
                "the commit was not promoted by the daemon\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let term = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let out = daemon.wait_with_output().expect("daemon output");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Recorded in the daemon project's own store, with the commit as the reason.
    let store = rollout::store::Store::open(&project.path().join(".rollout")).expect("store");
    let history = store.history(&name).expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(
        history[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("gitops: ")),
        "{history:?}"
    );
}

/// Issue 7: a commit that changes only the playbook an environment is promoted with is a change
/// to promote (one to another playbook is not); a manifest removed from the repository drops
/// the environment from the controller's status with a clear word, and production keeps running.
#[test]
fn a_playbook_only_change_is_promoted_and_a_removed_manifest_leaves_production_as_it_is() {
    let name = unique("gpb");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let repo = Repo::new();
    let state = tempfile::tempdir().expect("state");
    let file = format!("manifests/{name}.yaml");
    let v1 = manifest(&name, "shop-web:2.4.0", false);
    repo.commit("v1", &[(&file, &v1), ("playbooks/quick.yaml", QUICK)]);
    let mut controller =
        Controller::new(settings(&repo.origin.display().to_string(), state.path()));
    let rt = runtime();
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    assert_eq!(r.attempts[0].1.outcome, Outcome::Promoted, "{r:?}");
    assert_eq!(web_images(&name), ["shop-web:2.4.0"]);
    assert_eq!(
        controller.status().environments[&name].client.as_deref(),
        Some("acme")
    );

    // Another playbook (not the one the controller promotes with) is no change to this one.
    repo.commit(
        "a playbook for something else",
        &[(
            "playbooks/careful.yaml",
            "apiVersion: rollout/v1\nkind: Playbook\nname: careful\nsteps:\n  - testEnv: {}\n  - promote: { drain: 5s }\n",
        )],
    );
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert!(r.attempts.is_empty(), "{r:?}");

    // Only the playbook it uses changes: promoted again, at that commit.
    let c3 = repo.commit(
        "quick: drain 2s",
        &[(
            "playbooks/quick.yaml",
            &QUICK.replace("drain: 1s", "drain: 2s"),
        )],
    );
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(
        r.attempts.len(),
        1,
        "a playbook-only change was not promoted: {r:?}"
    );
    let (env, a) = &r.attempts[0];
    assert_eq!(env, &name);
    assert_eq!(
        (a.trigger, a.outcome, a.commit.as_str()),
        (Trigger::Commit, Outcome::Promoted, c3.as_str()),
        "{a:?}"
    );
    assert_eq!(
        controller.status().environments[&name].commit.as_deref(),
        Some(c3.as_str())
    );
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert!(r.attempts.is_empty(), "promoted twice: {r:?}");

    // The manifest is removed: dropped from the status, said so, production untouched.
    let c4 = repo.remove("retire the environment", &[&file]);
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert_eq!(r.commit.as_deref(), Some(c4.as_str()));
    assert!(r.attempts.is_empty(), "{r:?}");
    assert_eq!(r.removed, std::slice::from_ref(&name), "{r:?}");
    let status = controller.status();
    assert!(!status.environments.contains_key(&name), "{status:#?}");
    assert_eq!(status.removed.len(), 1, "{status:#?}");
    let removed = &status.removed[0];
    assert_eq!(removed.environment, name);
    assert_eq!(removed.client.as_deref(), Some("acme"));
    assert_eq!(removed.commit, c4);
    assert!(
        removed.message.contains(&format!(
            "{file} was removed from the repository at {}",
            &c4[..12]
        )) && removed.message.contains("production left as it is"),
        "{}",
        removed.message
    );
    assert_eq!(
        web_images(&name),
        ["shop-web:2.4.0"],
        "production was touched"
    );
    // Durable, and said once: the next tick (and a restarted controller) removes nothing more.
    let r = rt.block_on(controller.tick(jiff::Timestamp::now()));
    assert!(r.removed.is_empty() && r.attempts.is_empty(), "{r:?}");
    let mut restarted = Controller::new(settings(&repo.origin.display().to_string(), state.path()));
    assert_eq!(restarted.status().removed, status.removed);
    let r = rt.block_on(restarted.tick(jiff::Timestamp::now()));
    assert!(r.removed.is_empty() && r.attempts.is_empty(), "{r:?}");
    assert_eq!(web_images(&name), ["shop-web:2.4.0"]);

    // The manifest comes back: followed again (promoting what already runs changes nothing),
    // and no longer listed as removed.
    repo.commit("bring it back", &[(&file, &v1)]);
    let r = rt.block_on(restarted.tick(jiff::Timestamp::now()));
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    assert_eq!(r.attempts[0].1.outcome, Outcome::Promoted, "{r:?}");
    let status = restarted.status();
    assert!(status.removed.is_empty(), "{status:#?}");
    assert_eq!(status.environments[&name].drift, Drift::InSync);
    assert_eq!(web_images(&name), ["shop-web:2.4.0"]);
}
