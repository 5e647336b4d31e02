//! What the controller runs as child `rollout` processes: promotions (`rollout promote -m FILE
//! --yes`) and drift checks (`rollout plan -m FILE -o json`), with the daemon's state directory
//! and settings and without its token variables; and the webhook told when drift starts.

use std::path::Path;
use std::process::Stdio;

use jiff::Timestamp;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::{Attempt, Controller, Drift, Outcome, SETTINGS_ENV, STATE_ENV, Trigger, short, tail};

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

impl Controller {
    pub(super) fn child_env(&self) -> Vec<(String, String)> {
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

    /// Runs `rollout -C <checkout>/<path> COMMAND -m MANIFEST FLAGS [-p PLAYBOOK]` to its end.
    async fn rollout(
        &self,
        command: &str,
        manifest: &str,
        flags: Vec<String>,
    ) -> std::io::Result<ChildOutput> {
        let mut args: Vec<String> = vec![
            "-C".into(),
            self.project_dir().display().to_string(),
            command.into(),
            "-m".into(),
            manifest.into(),
        ];
        args.extend(flags);
        if let Some(p) = &self.settings.playbook {
            args.extend(["-p".into(), p.clone()]);
        }
        run_child(
            &self.settings.rollout_bin,
            &args,
            &self.child_env(),
            &self.settings.hide_env,
            &self.cancel,
        )
        .await
    }

    pub(super) async fn promote(
        &self,
        manifest: &str,
        hash: &str,
        commit: &str,
        subject: &str,
        trigger: Trigger,
    ) -> Attempt {
        let short = short(commit);
        let reason = match trigger {
            Trigger::SelfHeal => format!("gitops: self-heal at {short} {subject}"),
            Trigger::Retry => format!("gitops: retry {short} {subject}"),
            Trigger::Commit => format!("gitops: {short} {subject}"),
        };
        let at = Timestamp::now();
        let flags = vec!["--yes".into(), "--reason".into(), reason];
        let (outcome, run, exit, error) = match self.rollout("promote", manifest, flags).await {
            Ok(out) => {
                let run = out
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("run "))
                    .map(|s| s.trim().to_string());
                let outcome = Outcome::from_exit(out.code, run.is_some());
                let error = (outcome != Outcome::Promoted).then(|| tail(&out.stderr));
                (outcome, run, out.code, error)
            }
            Err(e) => {
                let error = format!("cannot start {}: {e}", self.settings.rollout_bin.display());
                (Outcome::Failed, None, None, Some(error))
            }
        };
        Attempt {
            commit: commit.to_string(),
            manifest_hash: hash.to_string(),
            trigger,
            outcome,
            run,
            exit,
            at,
            error,
        }
    }

    pub(super) async fn drift(&self, manifest: &str) -> Drift {
        let flags = vec!["-o".into(), "json".into()];
        match self.rollout("plan", manifest, flags).await {
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
    pub(super) fn notify_drift(&self, env: &str, commit: &str, self_heal: bool, now: Timestamp) {
        let short = short(commit);
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
}
