//! The git seam: the operations the controller needs ([`Git`], the command line's
//! [`GitCli`]), and the fetch that brings the checkout to the branch's commit, telling an
//! unreachable remote from a missing branch.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::{Controller, FetchState, redact};

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

impl Controller {
    /// Brings the checkout to `origin/<branch>`; the commit and its subject.
    pub(super) async fn fetch(&self) -> Result<(String, String), FetchState> {
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
}
