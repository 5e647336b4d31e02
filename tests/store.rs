//! The embedded store across real OS processes: concurrent writers never share a revision
//! number or lose a write and never see "database is locked"; processes opening a fresh store at
//! once all succeed; a crash (abort, SIGKILL) keeps every committed write; a read-only store is
//! refused with a message naming it.
//!
//! The second process is this test binary itself, re-run on the `store::child` test with
//! [`CHILD`] set: that test does nothing in a normal run and acts as the other writer when
//! spawned. Children wait for a "go" file so they really start together.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rollout::store::{NewRevision, RevisionOutcome, RunRecord, Store, StoreError};
use serde_json::json;

/// Set on a child process: `MODE|STATE_DIR|GO_FILE|COUNT|TAG`.
const CHILD: &str = "ROLLOUT_TEST_STORE_CHILD";
/// What a child prints before each result, so its lines stand out from libtest's.
const MARK: &str = "STORE|";

fn new_revision(run: &str, image: &str) -> NewRevision {
    NewRevision {
        environment: "shop".into(),
        run: run.into(),
        started: Timestamp::now(),
        user: "ops".into(),
        playbook: "standard".into(),
        reason: None,
        changes: json!({ "web": { "image": image } }),
        services: json!({ "web": { "image": image } }),
        images: vec![image.to_string()],
    }
}

fn run_record(run: &str, outcome: &str) -> RunRecord {
    RunRecord {
        run: run.into(),
        environment: "shop".into(),
        kind: "promote".into(),
        started: Timestamp::now(),
        finished: None,
        user: "ops".into(),
        outcome: outcome.into(),
        report: json!({ "run": run }),
    }
}

/// One full logical promotion, as the executor will write it: run record, revision begun,
/// revision finished, run record finished. Returns the revision number.
fn promote(store: &Store, run: &str) -> u64 {
    store.record_run(&run_record(run, "running")).unwrap();
    let r = store
        .begin_revision(new_revision(run, &format!("web:{run}")))
        .unwrap();
    store
        .finish_revision(
            "shop",
            r.number,
            RevisionOutcome::Promoted,
            Timestamp::now(),
        )
        .unwrap();
    let mut done = run_record(run, "promoted");
    done.finished = Some(Timestamp::now());
    store.record_run(&done).unwrap();
    r.number
}

fn wait_for(go: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !go.exists() {
        assert!(
            Instant::now() < deadline,
            "no go signal at {}",
            go.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{line}").unwrap();
    out.flush().unwrap();
}

/// The other process. Does nothing unless spawned by [`spawn_child`].
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [mode, dir, go, count, tag] = parts[..] else {
        panic!("bad {CHILD}: {spec}");
    };
    let dir = Path::new(dir);
    let count: usize = count.parse().unwrap();
    wait_for(Path::new(go));
    let store = Store::open(dir).unwrap();
    match mode {
        "write" => {
            for i in 0..count {
                say(promote(&store, &format!("{tag}-{i}")));
            }
        }
        "crash" => {
            for i in 0..count {
                promote(&store, &format!("{tag}-{i}"));
            }
            // Begun, never finished, no destructor: what a killed `rollout promote` leaves.
            store
                .record_run(&run_record(&format!("{tag}-crash"), "running"))
                .unwrap();
            let r = store
                .begin_revision(new_revision(&format!("{tag}-crash"), "web:crash"))
                .unwrap();
            say(r.number);
            std::process::abort();
        }
        "loop" => {
            for i in 0.. {
                let run = format!("{tag}-{i}");
                let r = store.begin_revision(new_revision(&run, "web:x")).unwrap();
                say(format!("begun {}", r.number));
                store
                    .finish_revision(
                        "shop",
                        r.number,
                        RevisionOutcome::Promoted,
                        Timestamp::now(),
                    )
                    .unwrap();
                say(format!("done {}", r.number));
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn_child(mode: &str, dir: &Path, go: &Path, count: usize, tag: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["store::child", "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CHILD,
            format!("{mode}|{}|{}|{count}|{tag}", dir.display(), go.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The child's marked lines; panics with its output if it failed.
fn results(out: &Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("locked") && !stdout.contains("locked"),
        "{stdout}\n{stderr}"
    );
    marked(&stdout)
}

fn marked(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.find(MARK).map(|at| l[at + MARK.len()..].to_string()))
        .collect()
}

fn numbers(store: &Store) -> Vec<u64> {
    let mut n: Vec<u64> = store
        .history("shop")
        .unwrap()
        .iter()
        .map(|r| r.number)
        .collect();
    n.reverse();
    n
}

fn integrity(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
}

#[test]
fn concurrent_processes_never_share_a_number_nor_lose_a_write() {
    const PER_WRITER: usize = 40;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join(".rollout");
    let go = tmp.path().join("go");
    let children: Vec<Child> = (0..3)
        .map(|c| spawn_child("write", &state, &go, PER_WRITER, &format!("p{c}")))
        .collect();
    // This process is a fourth writer, on its own connection, started with the others.
    let parent = {
        let (state, go) = (state.clone(), go.clone());
        std::thread::spawn(move || {
            wait_for(&go);
            let store = Store::open(&state).unwrap();
            (0..PER_WRITER)
                .map(|i| promote(&store, &format!("parent-{i}")))
                .collect::<Vec<_>>()
        })
    };
    std::fs::write(&go, "").unwrap();

    let mut seen = BTreeSet::new();
    let mut total = 0;
    for child in children {
        let got = results(&child.wait_with_output().unwrap());
        assert_eq!(got.len(), PER_WRITER, "{got:?}");
        for n in got {
            total += 1;
            assert!(
                seen.insert(n.parse::<u64>().unwrap()),
                "number {n} given twice"
            );
        }
    }
    for n in parent.join().unwrap() {
        total += 1;
        assert!(seen.insert(n), "number {n} given twice");
    }

    let all = 4 * PER_WRITER as u64;
    assert_eq!(total, all);
    assert_eq!(seen, (1..=all).collect::<BTreeSet<_>>());
    let store = Store::open(&state).unwrap();
    assert_eq!(numbers(&store), (1..=all).collect::<Vec<_>>());
    for r in store.history("shop").unwrap() {
        assert_eq!(
            r.outcome,
            RevisionOutcome::Promoted,
            "revision {}",
            r.number
        );
        let run = store.run(&r.run).unwrap().expect("its run was recorded");
        assert_eq!(run.outcome, "promoted");
    }
    assert_eq!(store.runs("shop", 1000).unwrap().len(), all as usize);
    integrity(store.path());
}

#[test]
fn processes_opening_a_fresh_store_at_once_all_succeed() {
    for round in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("a/b/.rollout");
        let go = tmp.path().join("go");
        let children: Vec<Child> = (0..4)
            .map(|c| spawn_child("write", &state, &go, 1, &format!("r{round}c{c}")))
            .collect();
        std::fs::write(&go, "").unwrap();
        let mut got: Vec<u64> = children
            .into_iter()
            .flat_map(|c| results(&c.wait_with_output().unwrap()))
            .map(|n| n.parse().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3, 4], "round {round}");
    }
}

#[test]
fn an_aborted_process_leaves_every_committed_write() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join(".rollout");
    let go = tmp.path().join("go");
    std::fs::write(&go, "").unwrap();
    let out = spawn_child("crash", &state, &go, 2, "k")
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success(), "the child should have aborted");
    let begun = marked(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(begun, ["3"]);

    let store = Store::open(&state).unwrap();
    integrity(store.path());
    let history = store.history("shop").unwrap();
    assert_eq!(numbers(&store), [1, 2, 3]);
    assert_eq!(history[0].outcome, RevisionOutcome::InProgress);
    assert_eq!(history[0].finished, None);
    assert_eq!(store.current("shop").unwrap().unwrap().number, 2);
    assert_eq!(store.previous("shop").unwrap().unwrap().number, 1);
    assert_eq!(
        store.latest_run("shop").unwrap().unwrap().outcome,
        "running"
    );
    assert_eq!(store.run("k-1").unwrap().unwrap().outcome, "promoted");
    // Recovery can settle the interrupted revision, and numbering goes on after it.
    store
        .finish_revision(
            "shop",
            3,
            RevisionOutcome::Failed {
                reason: "interrupted".into(),
            },
            Timestamp::now(),
        )
        .unwrap();
    assert_eq!(promote(&store, "after"), 4);
}

#[test]
fn a_process_killed_mid_write_loses_nothing_it_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join(".rollout");
    let go = tmp.path().join("go");
    std::fs::write(&go, "").unwrap();
    let mut child = spawn_child("loop", &state, &go, 0, "loop");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut begun = BTreeSet::new();
    let mut done = BTreeSet::new();
    // Kill it somewhere in its stream of writes, not at a quiet moment.
    for line in stdout.lines() {
        let line = line.unwrap();
        let Some(at) = line.find(MARK) else { continue };
        let (what, n) = line[at + MARK.len()..].split_once(' ').unwrap();
        let n: u64 = n.parse().unwrap();
        match what {
            "begun" => begun.insert(n),
            "done" => done.insert(n),
            other => panic!("{other}"),
        };
        if done.len() == 25 {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();

    let store = Store::open(&state).unwrap();
    integrity(store.path());
    let history = store.history("shop").unwrap();
    let max = history.first().map_or(0, |r| r.number);
    assert_eq!(
        numbers(&store),
        (1..=max).collect::<Vec<_>>(),
        "no gap, no double"
    );
    for r in &history {
        if done.contains(&r.number) {
            assert_eq!(
                r.outcome,
                RevisionOutcome::Promoted,
                "revision {}",
                r.number
            );
        }
    }
    assert!(begun.iter().all(|n| *n <= max), "{begun:?} vs {max}");
    assert!(done.iter().all(|n| begun.contains(n)));
    assert_eq!(promote(&store, "after"), max + 1);
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A read-only place for a store. Root ignores permission bits, so as root it is a tmpfs
/// remounted read-only; otherwise a directory without write permission.
struct ReadOnly {
    dir: PathBuf,
    mounted: bool,
    _tmp: tempfile::TempDir,
}

impl ReadOnly {
    /// Runs `fill` on the place while writable, then makes it read-only.
    fn new(fill: impl FnOnce(&Path)) -> ReadOnly {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ro");
        std::fs::create_dir(&dir).unwrap();
        let mounted = is_root();
        if mounted {
            sh(&format!(
                "mount -t tmpfs -o size=4m tmpfs '{}'",
                dir.display()
            ));
        }
        let place = ReadOnly {
            dir,
            mounted,
            _tmp: tmp,
        };
        fill(&place.dir);
        if mounted {
            sh(&format!("mount -o remount,ro '{}'", place.dir.display()));
        } else {
            chmod_tree(&place.dir, true);
        }
        place
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        } else {
            chmod_tree(&self.dir, false);
        }
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chmod_tree(dir: &Path, read_only: bool) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            chmod_tree(&p, read_only);
        } else {
            let mode = if read_only { 0o444 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let mode = if read_only { 0o555 } else { 0o755 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn assert_read_only(err: StoreError, path: &Path) {
    let text = err.to_string();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
    assert!(
        text.contains(&path.display().to_string()),
        "`{text}` should name {}",
        path.display()
    );
    assert!(text.contains("read-only"), "{text}");
}

#[test]
fn a_read_only_store_is_refused_with_its_path() {
    let place = ReadOnly::new(|dir| {
        let store = Store::open(&dir.join("existing")).unwrap();
        promote(&store, "r1");
        std::fs::create_dir(dir.join("empty")).unwrap();
    });

    // An existing store: refused at open, not at the first write far from here.
    let existing = place.dir.join("existing");
    let err = Store::open(&existing).unwrap_err();
    assert_read_only(err, &existing.join("state.db"));

    // A state directory with no store yet.
    let empty = place.dir.join("empty");
    let err = Store::open(&empty).unwrap_err();
    assert_read_only(err, &empty.join("state.db"));

    // A state directory that cannot even be created.
    let missing = place.dir.join("missing/.rollout");
    let err = Store::open(&missing).unwrap_err();
    assert_read_only(err, &missing.join("state.db"));
}

/// A tiny tmpfs filled by one store: the write that does not fit fails with `DiskFull` naming
/// the file, and everything committed before it reads back, in this process and the next.
#[test]
fn a_full_disk_is_reported_and_keeps_what_was_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("small");
    std::fs::create_dir(&dir).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=512k tmpfs '{}'",
        dir.display()
    ));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());

    let store = Store::open(&dir).unwrap();
    let bulky = "x".repeat(32 * 1024);
    let mut committed = 0u64;
    let err = loop {
        let mut r = new_revision(&format!("r{committed}"), "web:1");
        r.changes = json!({ "web": { "note": bulky } });
        match store.begin_revision(r) {
            Ok(r) => committed = r.number,
            Err(e) => break e,
        }
        assert!(committed < 1000, "the disk never filled");
    };
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&store.path().display().to_string()),
        "{err}"
    );
    assert!(committed > 0);
    assert_eq!(numbers(&store), (1..=committed).collect::<Vec<_>>());
    drop(store);

    let store = Store::open(&dir).unwrap();
    assert_eq!(numbers(&store), (1..=committed).collect::<Vec<_>>());
    let last = store.revision("shop", committed).unwrap().unwrap();
    assert_eq!(
        last.changes["web"]["note"].as_str().unwrap().len(),
        bulky.len()
    );
}
