//! The audit trail: entries appended through the library into a project's real state directory,
//! then the file edited by hand the way a person with file access would, and `rollout audit
//! verify` / `rollout audit` run as processes.

use std::path::{Path, PathBuf};

use rollout::audit::{self, Event, RunCommand, RunOutcome};
use rollout::store::{AuditHead, Store, StoreError};

use crate::support::Project;

fn state(p: &Project) -> PathBuf {
    p.path().join(".rollout")
}

fn log(p: &Project) -> PathBuf {
    state(p).join(audit::FILE_NAME)
}

/// A project whose log holds `n` entries (runs started and finished, alternately).
fn project_with(n: u64) -> Project {
    let p = Project::new();
    for i in 1..=n {
        let run = format!("run{}", i.div_ceil(2));
        let event = if i % 2 == 1 {
            Event::RunStarted {
                run,
                environment: "shop".into(),
                command: RunCommand::Promote,
                user: "ana".into(),
                playbook: Some("standard".into()),
                reason: None,
            }
        } else {
            Event::RunFinished {
                run,
                environment: "shop".into(),
                outcome: RunOutcome::Promoted,
                reason: None,
            }
        };
        audit::append(&state(&p), event).unwrap();
    }
    p
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

#[test]
fn an_untouched_log_verifies_and_lists() {
    let p = project_with(4);
    let before = p.snapshot();
    let out = p
        .run(&["audit", "verify"])
        .code(0)
        .stdout_has("intact, 4 entries")
        .stdout_has("head: #4 sha256:");
    let head = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .unwrap()
        .to_string();
    // The head as printed is accepted back by --expect.
    p.run(&["audit", "verify", "--expect", &head]).code(0);
    let v = p.run(&["audit", "verify", "-o", "json"]).code(0).json();
    assert_eq!(v["intact"], true);
    assert_eq!(v["entries"], 4);
    assert_eq!(v["head"]["seq"], 4);
    assert_eq!(v["head"], v["anchored"]);

    p.run(&["audit"])
        .code(0)
        .stdout_has("runStarted")
        .stdout_has("promote by ana, playbook standard")
        .stdout_has("runFinished");
    let list = p.run(&["audit", "list", "-o", "json"]).code(0).json();
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0]["seq"], 1);
    assert_eq!(entries[0]["prev"], audit::GENESIS);
    assert_eq!(entries[1]["prev"], entries[0]["hash"]);
    let one_run = p
        .run(&["audit", "--run", "run2", "-o", "json"])
        .code(0)
        .json();
    assert_eq!(one_run["entries"].as_array().unwrap().len(), 2);
    assert_eq!(p.snapshot(), before, "reading the log changed nothing");
}

#[test]
fn an_edited_entry_is_named_by_number_and_line() {
    let p = project_with(4);
    let mut l = lines(&log(&p));
    assert!(l[1].contains("\"promoted\""));
    l[1] = l[1].replace("\"promoted\"", "\"rolledBack\"");
    write_lines(&log(&p), &l);
    p.run(&["audit", "verify"])
        .code(1)
        .stdout_has("TAMPERED")
        .stderr_has("entry #2 (line 2) was edited");
    let v = p.run(&["audit", "verify", "-o", "json"]).code(1).json();
    assert_eq!(v["intact"], false);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["kind"], "edited");
    assert_eq!(problems[0]["seq"], 2);
    assert_eq!(problems[0]["line"], 2);
}

#[test]
fn a_deleted_entry_is_named() {
    let p = project_with(5);
    let mut l = lines(&log(&p));
    l.remove(2);
    write_lines(&log(&p), &l);
    p.run(&["audit", "verify"])
        .code(1)
        .stderr_has("entry #3 is missing before line 3: deleted");
}

#[test]
fn a_deletion_hidden_by_renumbering_breaks_the_chain() {
    let p = project_with(4);
    let mut l = lines(&log(&p));
    l.remove(1);
    // Renumber what followed and give each its own correct hash, but keep its link.
    for (i, line) in l.iter_mut().enumerate().skip(1) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["seq"] = (i as u64 + 1).into();
        v["hash"] = audit::hash_of(&v).into();
        *line = v.to_string();
    }
    write_lines(&log(&p), &l);
    let v = p.run(&["audit", "verify", "-o", "json"]).code(1).json();
    let kinds: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "brokenLink", "{v}");
    assert_eq!(v["problems"][0]["seq"], 2);
    // The store still anchors #4, which the log no longer holds.
    assert!(kinds.contains(&"truncated"), "{v}");
}

#[test]
fn entries_cut_off_the_end_are_detected_through_the_anchor() {
    let p = project_with(5);
    let l = lines(&log(&p));
    write_lines(&log(&p), &l[..3]);
    p.run(&["audit", "verify"])
        .code(1)
        .stderr_has("the log ends at entry #3 (line 3) but the store records #5: entries #4 to #5 were cut off the end");
    // Appending later keeps the gap visible instead of papering over it.
    audit::append(
        &state(&p),
        Event::EmergencyOverride {
            run: "run9".into(),
            environment: "shop".into(),
            user: "ana".into(),
            reason: "outage".into(),
        },
    )
    .unwrap();
    p.run(&["audit", "verify"])
        .code(1)
        .stderr_has("entries #4 to #5 are missing before line 4: deleted");
}

#[test]
fn a_deleted_log_is_detected() {
    let p = project_with(2);
    std::fs::remove_file(log(&p)).unwrap();
    p.run(&["audit", "verify"])
        .code(1)
        .stderr_has("the log holds no entry but the store records 2 entries");
}

#[test]
fn reordered_entries_are_named() {
    let p = project_with(4);
    let mut l = lines(&log(&p));
    l.swap(1, 2);
    write_lines(&log(&p), &l);
    let v = p.run(&["audit", "verify", "-o", "json"]).code(1).json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["kind"], "reordered");
    assert_eq!(problems[0]["seq"], 2);
    assert_eq!(problems[0]["line"], 3);
}

#[test]
fn a_line_that_is_not_an_entry_is_named() {
    let p = project_with(2);
    let mut l = lines(&log(&p));
    l.insert(1, "nothing to see here".into());
    write_lines(&log(&p), &l);
    p.run(&["audit", "verify"])
        .code(1)
        .stderr_has("line 2 is not a JSON entry");
    p.run(&["audit"])
        .code(0)
        .stdout_has("runFinished")
        .stderr_has("line 2: not a JSON entry");
}

/// The limit the module docs state: a rewrite of the whole chain and its anchor passes the
/// chain check; only a head kept elsewhere (`--expect`) catches it.
#[test]
fn a_consistent_rewrite_passes_the_chain_but_not_a_kept_head() {
    let p = project_with(3);
    let kept = p
        .run(&["audit", "verify"])
        .code(0)
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .unwrap()
        .to_string();
    let mut prev = audit::GENESIS.to_string();
    let mut rewritten = Vec::new();
    for line in lines(&log(&p)) {
        let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(user) = v["event"].get_mut("user") {
            *user = "eve".into();
        }
        v["prev"] = prev.clone().into();
        v["hash"] = audit::hash_of(&v).into();
        prev = v["hash"].as_str().unwrap().to_string();
        rewritten.push(v.to_string());
    }
    write_lines(&log(&p), &rewritten);
    let store = Store::open(&state(&p)).unwrap();
    store
        .audit_append(|_| Ok::<_, StoreError>((AuditHead { seq: 3, hash: prev }, ())))
        .unwrap();
    p.run(&["audit", "verify"]).code(0);
    p.run(&["audit", "verify", "--expect", &kept])
        .code(1)
        .stderr_has("entry #3 (line 3) has another hash than the one kept");
}

#[test]
fn a_bad_expected_head_is_refused_clearly() {
    let p = project_with(1);
    p.run(&["audit", "verify", "--expect", "3:abc"])
        .code(1)
        .stderr_has("--expect: `3:abc` is not an audit head");
}

#[test]
fn appenders_in_parallel_never_fork_the_chain() {
    let p = Project::new();
    let dir = state(&p);
    Store::open(&dir).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let dir = dir.clone();
            // Each thread opens its own store connection, as separate processes would.
            std::thread::spawn(move || {
                let store = Store::open(&dir).unwrap();
                for i in 0..15 {
                    audit::append_to(
                        &store,
                        Event::ApprovalRecorded {
                            run: format!("t{t}-{i}"),
                            environment: "shop".into(),
                            role: "client".into(),
                            by: "bob".into(),
                            note: None,
                        },
                        jiff::Timestamp::now(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let report = audit::verify(&dir, &[]).unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.entries, 60);
    assert_eq!(report.head.unwrap().seq, 60);
}

#[test]
fn a_project_without_a_log_says_so_and_creates_nothing() {
    let p = Project::new();
    p.run(&["audit", "verify"])
        .code(0)
        .stdout_has("no entries yet");
    p.run(&["audit"]).code(0).stdout_has("has no entries yet");
    assert!(!state(&p).exists(), "verify created the state directory");
}
