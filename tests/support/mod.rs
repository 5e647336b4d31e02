//! A small builder for throwaway projects and a runner for the `rollout` binary.
//!
//! `Project::new().manifest("shop", YAML).run(&["plan"]).code(2).stdout_has("web")`

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use tempfile::TempDir;

pub mod browser;
pub mod docker;

pub struct Project {
    dir: TempDir,
    env: BTreeMap<String, String>,
}

impl Project {
    pub fn new() -> Self {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
            env: BTreeMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(self, rel: &str, contents: impl AsRef<[u8]>) -> Self {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
        self
    }

    pub fn manifest(self, name: &str, yaml: &str) -> Self {
        self.file(&format!("manifests/{name}.yaml"), yaml)
    }

    pub fn playbook(self, name: &str, yaml: &str) -> Self {
        self.file(&format!("playbooks/{name}.yaml"), yaml)
    }

    /// An environment variable for every run of this project (secrets come from here).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    /// The command `run` would run, to spawn it in the background (and signal it).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollout"));
        cmd.arg("-C")
            .arg(self.dir.path())
            .args(args)
            .envs(&self.env)
            .env_remove("NO_COLOR");
        // Promotions start the edge proxy, whose image is a static rollout.
        if args.iter().any(|a| matches!(*a, "promote" | "rollback")) {
            cmd.env("ROLLOUT_STATIC_BINARY", static_binary());
        }
        cmd
    }

    /// `run` with extra environment variables for this run only.
    pub fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(vars.iter().copied());
        let out = cmd.output().expect("run rollout");
        Output {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every file below the project, with its contents: to prove a command changed nothing.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).expect("read dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).expect("read"));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

#[derive(Debug)]
pub struct Output {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Wraps a finished child's output (from [`Project::command`]).
    pub fn from_child(args: &[&str], out: std::process::Output) -> Output {
        Output {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The run id a promote or rollback printed first (`run <id>`).
    pub fn run_id(&self) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("run "))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no `run <id>` line in\n{self}"))
    }

    pub fn code(self, expected: i32) -> Self {
        assert_eq!(
            self.code,
            Some(expected),
            "rollout {:?}: unexpected exit status\n{self}",
            self.args
        );
        self
    }

    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }

    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    pub fn nowhere(self, needle: &str) -> Self {
        assert!(
            !self.stdout.contains(needle) && !self.stderr.contains(needle),
            "output contains {needle:?}\n{self}"
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document: {e}\n{self}"))
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A name no other test (or earlier run) uses: environments, images and containers are shared
/// engine-wide, and nextest runs tests in parallel.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!(
        "{prefix}{:x}{:x}{}",
        std::process::id() % 0xffff,
        nanos % 0xfff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A minimal valid manifest with one service.
pub fn one_service(env: &str, image: &str) -> String {
    format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {env}\nclient: acme\nservices:\n  web:\n    image: {image}\n"
    )
}

/// A loopback port nobody listens on right now (for public ports of test environments, which
/// must not collide across tests running in parallel).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A statically linked rollout: `$ROLLOUT_STATIC_BINARY` (set by .ci/run), else built once here
/// with scripts/build-static.sh under a lock, so parallel tests build it once.
pub fn static_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ROLLOUT_STATIC_BINARY") {
        return p.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = std::fs::File::create(std::env::temp_dir().join("rollout-static-build.lock"))
        .expect("lock file");
    lock.lock().expect("lock");
    let out = Command::new(root.join("scripts/build-static.sh"))
        .output()
        .expect("scripts/build-static.sh");
    assert!(
        out.status.success(),
        "static build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.join(String::from_utf8_lossy(&out.stdout).trim())
}

/// Counts the POSTs a webhook receiver on 127.0.0.1 gets, answering each with 200.
pub fn webhook_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            recorded
                .lock()
                .expect("hits")
                .push(serde_json::from_slice(&body).unwrap_or_default());
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, hits)
}

/// Headless Chromium (Debian's `chromium`, which scripts/setup.sh installs) on `url` with a
/// profile of its own; the test fails without it rather than skipping. Scripts get 10 s of
/// virtual time to settle before Chromium dumps, screenshots or prints.
pub fn chromium(profile: &std::path::Path, args: &[&str], url: &str) -> std::process::Output {
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium (install it: scripts/setup.sh, or apt-get install chromium)");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM of `url` as headless Chromium leaves it once its scripts ran.
pub fn chromium_dom(profile: &std::path::Path, url: &str) -> String {
    String::from_utf8(chromium(profile, &["--dump-dom"], url).stdout).expect("utf-8 DOM")
}
