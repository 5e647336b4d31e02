//! Runs the daemon starts: each is the rollout CLI itself as a child process
//! (`rollout -C DIR promote -e ENV --yes`, ...), so it takes the same lock, journal, crash
//! recovery, audit trail and notifications as a run started by hand. The API answers once the
//! child printed its first line, `run <id>`; the child goes on, and its output (stdout and
//! stderr, in arrival order) is kept in memory while it runs and written to
//! `<state>/daemon/runs/<run>.log` when it ends, then read from there: a daemon that runs for
//! months keeps no finished run's output in memory, and only the newest [`KEEP_FINISHED`]
//! finished runs' few fields.

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
    /// The output is in the run's log file, no longer in memory.
    #[serde(skip)]
    saved: Mutex<bool>,
}

/// Finished runs whose fields (not their output) stay in memory.
pub const KEEP_FINISHED: usize = 100;

impl ChildRun {
    /// The output so far, while it is in memory (until the run ended and its log is written).
    pub fn output(&self) -> Option<String> {
        let saved = self.saved.lock().map(|s| *s).unwrap_or(false);
        (!saved).then(|| self.output.lock().map(|o| o.clone()).unwrap_or_default())
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
    children: Arc<Mutex<BTreeMap<String, Arc<ChildRun>>>>,
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
            saved: Mutex::new(false),
        });
        if let Ok(mut children) = self.children.lock() {
            children.insert(run.clone(), record.clone());
        }
        let rec = record.clone();
        let children = self.children.clone();
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
            let text = rec.output().unwrap_or_default();
            if save_log(&state, &rec.run, &text) {
                if let Ok(mut saved) = rec.saved.lock() {
                    *saved = true;
                }
                if let Ok(mut o) = rec.output.lock() {
                    *o = String::new();
                }
            }
            forget_old(&children);
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

    /// Sends SIGTERM to every child still running: each stops at its next safe point.
    pub async fn signal_all(&self) {
        self.send_all("TERM", "forwarding SIGTERM to the run").await;
    }

    /// Sends SIGKILL to every child still running: they end at once, their journal and lock
    /// left for the next command to settle (as after a crash).
    pub async fn kill_all(&self) {
        self.send_all("KILL", "ending the run at once (SIGKILL)")
            .await;
    }

    async fn send_all(&self, signal: &str, what: &str) {
        for run in self.running() {
            if let Some(pid) = run.pid {
                tracing::info!(run = %run.run, pid, "{what}");
                // `kill(1)`: the crate forbids unsafe code, so no direct libc call.
                let _ = Command::new("kill")
                    .args([&format!("-{signal}"), &pid.to_string()])
                    .status()
                    .await;
            }
        }
    }
}

/// Drops the oldest finished runs beyond [`KEEP_FINISHED`] (their logs stay on disk).
fn forget_old(children: &Mutex<BTreeMap<String, Arc<ChildRun>>>) {
    let Ok(mut children) = children.lock() else {
        return;
    };
    let mut finished: Vec<(jiff::Timestamp, String)> = children
        .values()
        .filter(|r| r.exit().is_some())
        .map(|r| (r.started, r.run.clone()))
        .collect();
    if finished.len() > KEEP_FINISHED {
        finished.sort();
        let excess = finished.len() - KEEP_FINISHED;
        for (_, run) in finished.into_iter().take(excess) {
            children.remove(&run);
        }
    }
}

/// Whether the daemon started `run` (it wrote the run's log), in this process or before.
pub fn has_log(state: &Path, run: &str) -> bool {
    log_path(state, run).is_file()
}

/// A run's output kept by the daemon in its log.
pub fn saved_log(state: &Path, run: &str) -> Option<String> {
    std::fs::read_to_string(log_path(state, run)).ok()
}

fn log_path(state: &Path, run: &str) -> PathBuf {
    state.join("daemon").join("runs").join(format!("{run}.log"))
}

/// Writes the run's log; false (and a warning) when it could not, so the output stays in memory.
fn save_log(state: &Path, run: &str, output: &str) -> bool {
    let path = log_path(state, run);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, output));
    if let Err(e) = &written {
        tracing::warn!(run, path = %path.display(), error = %e, "the run's output could not be saved");
    }
    written.is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(run: &str, second: i64) -> Arc<ChildRun> {
        Arc::new(ChildRun {
            run: run.into(),
            environment: "shop".into(),
            kind: "promote".into(),
            by: "ops".into(),
            started: jiff::Timestamp::from_second(1_780_000_000 + second).unwrap(),
            pid: None,
            output: Arc::new(Mutex::new(String::new())),
            exit: Mutex::new(Some(0)),
            saved: Mutex::new(true),
        })
    }

    #[tokio::test]
    async fn a_finished_runs_output_moves_to_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("fake-rollout");
        // Called as `fake-rollout -C DIR ARGS...`, like rollout.
        std::fs::write(
            &bin,
            "#!/bin/sh\necho 'run t1abc'\necho working\necho oops >&2\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let runs = Runs::default();
        let state = dir.path().join("state");
        let started = runs
            .start(Spec {
                bin,
                project: dir.path().into(),
                state: state.clone(),
                args: vec!["promote".into()],
                environment: "shop".into(),
                kind: "promote".into(),
                by: "ops".into(),
                hide: vec![],
            })
            .await
            .unwrap();
        let Started::Run(child) = started else {
            panic!("no run id: {started:?}")
        };
        runs.tracker.close();
        runs.tracker.wait().await;
        assert_eq!(child.exit(), Some(3));
        assert_eq!(child.output(), None, "the output is not kept in memory");
        assert_eq!(child.output.lock().unwrap().len(), 0);
        let log = saved_log(&state, "t1abc").expect("log");
        assert!(log.contains("working") && log.contains("oops"), "{log}");
        assert!(has_log(&state, "t1abc") && !has_log(&state, "t2abc"));
    }

    #[test]
    fn only_the_newest_finished_runs_stay_in_memory() {
        let children = Mutex::new(BTreeMap::new());
        for i in 0..(KEEP_FINISHED as i64 + 5) {
            let r = finished(&format!("r{i:03}"), i);
            children.lock().unwrap().insert(r.run.clone(), r);
        }
        let mut running = finished("early", -10);
        Arc::get_mut(&mut running).unwrap().exit = Mutex::new(None);
        children.lock().unwrap().insert("early".into(), running);
        forget_old(&children);
        let kept = children.lock().unwrap();
        assert_eq!(kept.len(), KEEP_FINISHED + 1);
        assert!(
            kept.contains_key("early"),
            "a running run is never forgotten"
        );
        assert!(!kept.contains_key("r004") && kept.contains_key("r005"));
    }
}
