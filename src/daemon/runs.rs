//! Runs the daemon starts: each is the rollout CLI itself as a child process
//! (`rollout -C DIR promote -e ENV --yes`, ...), so it takes the same lock, journal, crash
//! recovery, audit trail and notifications as a run started by hand. The API answers once the
//! child printed its first line, `run <id>`; the child goes on, and its output (stdout and
//! stderr, in arrival order) is kept in memory while it runs and written to
//! `<state>/daemon/runs/<run>.log` when it ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::task::TaskTracker;

/// A child run, while it runs and after.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildRun {
    pub run: String,
    pub environment: String,
    pub kind: String,
    /// The token that started it.
    pub by: String,
    pub started: jiff::Timestamp,
    #[serde(skip)]
    pub pid: Option<u32>,
    #[serde(skip)]
    output: Arc<Mutex<String>>,
    #[serde(skip)]
    exit: Mutex<Option<i32>>,
}

impl ChildRun {
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// The exit status once it ended (-1: ended by a signal).
    pub fn exit(&self) -> Option<i32> {
        self.exit.lock().ok().and_then(|e| *e)
    }
}

/// How a start went.
#[derive(Debug)]
pub enum Started {
    /// The child printed its run id and goes on.
    Run(Arc<ChildRun>),
    /// The child ended without printing a run id (bad input, a refusal before any run).
    Ended { code: Option<i32>, output: String },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub bin: PathBuf,
    pub project: PathBuf,
    pub state: PathBuf,
    pub args: Vec<String>,
    pub environment: String,
    pub kind: String,
    pub by: String,
    /// Variables the child must not inherit: the API tokens' values.
    pub hide: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Runs {
    children: Mutex<BTreeMap<String, Arc<ChildRun>>>,
    tracker: TaskTracker,
}

impl Runs {
    /// Starts `spec` and waits for its `run <id>` line (or its end).
    pub async fn start(&self, spec: Spec) -> std::io::Result<Started> {
        let Spec {
            bin,
            project,
            state,
            args,
            environment,
            kind,
            by,
            hide,
        } = spec;
        let mut command = Command::new(&bin);
        for var in &hide {
            command.env_remove(var);
        }
        let mut child = command
            .arg("-C")
            .arg(&project)
            .args(&args)
            .env("NO_COLOR", "1")
            // Who the run's history, report and audit trail name: the API token.
            .env("USER", format!("api:{by}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().map(|e| {
            let out = output.clone();
            self.tracker.spawn(copy_lines(e, out))
        });
        let mut stdout = child
            .stdout
            .take()
            .map(|s| BufReader::new(s).lines())
            .ok_or_else(|| std::io::Error::other("the child's stdout is not piped"))?;
        let mut run_id = None;
        while let Some(line) = stdout.next_line().await? {
            push(&output, &line);
            if let Some(id) = line.strip_prefix("run ").map(str::trim)
                && !id.is_empty()
                && id.chars().all(|c| c.is_ascii_alphanumeric())
            {
                run_id = Some(id.to_string());
                break;
            }
        }
        let Some(run) = run_id else {
            let status = child.wait().await?;
            if let Some(h) = stderr {
                let _ = h.await;
            }
            let output = output.lock().map(|o| o.clone()).unwrap_or_default();
            return Ok(Started::Ended {
                code: status.code(),
                output,
            });
        };
        let record = Arc::new(ChildRun {
            run: run.clone(),
            environment,
            kind,
            by,
            started: jiff::Timestamp::now(),
            pid,
            output: output.clone(),
            exit: Mutex::new(None),
        });
        if let Ok(mut children) = self.children.lock() {
            children.insert(run.clone(), record.clone());
        }
        let rec = record.clone();
        self.tracker.spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                push(&output, &line);
            }
            if let Some(h) = stderr {
                let _ = h.await;
            }
            let code = match child.wait().await {
                Ok(status) => status.code().unwrap_or(-1),
                Err(e) => {
                    push(
                        &output,
                        &format!("(the daemon lost the run's process: {e})"),
                    );
                    -1
                }
            };
            if let Ok(mut exit) = rec.exit.lock() {
                *exit = Some(code);
            }
            tracing::info!(run = %rec.run, environment = %rec.environment, code, "run ended");
            save_log(&state, &rec.run, &rec.output());
        });
        Ok(Started::Run(record))
    }

    pub fn get(&self, run: &str) -> Option<Arc<ChildRun>> {
        self.children.lock().ok()?.get(run).cloned()
    }

    /// Runs still going.
    pub fn running(&self) -> Vec<Arc<ChildRun>> {
        self.children
            .lock()
            .map(|c| c.values().filter(|r| r.exit().is_none()).cloned().collect())
            .unwrap_or_default()
    }

    /// Forwards SIGTERM to every child still running (each stops at its next safe point and
    /// puts production in order), then waits for them all.
    pub async fn stop_all(&self) {
        self.signal_all().await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Sends SIGTERM to every child still running.
    pub async fn signal_all(&self) {
        for run in self.running() {
            if let Some(pid) = run.pid {
                tracing::info!(run = %run.run, pid, "forwarding SIGTERM to the run");
                // `kill(1)`: the crate forbids unsafe code, so no direct libc call.
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
    }
}

/// A run's output kept by the daemon, from memory or from its log.
pub fn saved_log(state: &Path, run: &str) -> Option<String> {
    std::fs::read_to_string(log_path(state, run)).ok()
}

fn log_path(state: &Path, run: &str) -> PathBuf {
    state.join("daemon").join("runs").join(format!("{run}.log"))
}

fn save_log(state: &Path, run: &str, output: &str) {
    let path = log_path(state, run);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, output));
    if let Err(e) = written {
        tracing::warn!(run, path = %path.display(), error = %e, "the run's output could not be saved");
    }
}

fn push(output: &Mutex<String>, line: &str) {
    if let Ok(mut o) = output.lock() {
        o.push_str(line);
        o.push('\n');
    }
}

async fn copy_lines(from: impl AsyncRead + Unpin, to: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        push(&to, &line);
    }
}
