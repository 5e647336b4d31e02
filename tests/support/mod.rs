//! A small builder for throwaway projects and a runner for the `rollout` binary.
//!
//! `Project::new().manifest("shop", YAML).run(&["plan"]).code(2).stdout_has("web")`

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use tempfile::TempDir;

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

    /// As [`Project::run`], with environment variables for this run only (on top of the
    /// project's): e.g. a secret whose value changes between two promotions.
    pub fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollout"));
        cmd.arg("-C")
            .arg(self.dir.path())
            .args(args)
            .envs(&self.env)
            .envs(vars.iter().copied())
            .env_remove("NO_COLOR");
        // Promotions start the edge proxy, whose image is a static rollout.
        if args.iter().any(|a| matches!(*a, "promote" | "rollback")) {
            cmd.env("ROLLOUT_STATIC_BINARY", static_binary());
        }
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
