//! The tamper-evident audit trail: `<state>/audit.log`, one JSON entry per line, each carrying
//! the SHA-256 of the entry before it.
//!
//! # Why a JSON-lines file
//! An auditor reads it with `less`, `grep` or `jq`, ships it to a log collector with `tail -f`,
//! or keeps it on append-only storage (`chattr +a`), without rollout. The store holds only its
//! anchor (the last entry's number and hash, [`crate::store::AuditHead`]), and appends run under
//! the store's write lock, so rollout processes running side by side take turns and never
//! interleave or fork the chain. Each entry is fsynced before its anchor is committed.
//!
//! # An entry
//! `{"seq":7,"time":"…","event":{"kind":"runFinished",…},"prev":"<hex>","hash":"<hex>"}`.
//! `hash` is the SHA-256 of the entry without `hash`, serialized canonically (object keys sorted,
//! no whitespace), so any JSON tool can recompute it; `prev` is the hash of entry `seq - 1`
//! ([`GENESIS`] for the first).
//!
//! # What it detects, and what it cannot
//! [`verify`] names the first entry (number and line) that fails, and reports:
//! - an entry whose content was edited (its hash no longer matches);
//! - entries deleted from the middle or the start (numbers jump, or the link breaks);
//! - entries reordered or duplicated (numbers go backwards);
//! - entries cut off the end, or the whole file deleted (the store's anchor records more);
//! - lines that are not entries at all.
//!
//! A hash chain without a secret proves consistency, not authorship. Someone who can write the
//! state directory *and* knows this format can rewrite the log from any point on, recompute
//! every later hash and the store's anchor, and `verify` will find nothing. To catch that, keep
//! the head that `rollout audit verify` prints (`#N sha256:…`) somewhere they cannot write (a
//! ticket, an email, the client's system) and later pass it back with `--expect`: a rewritten
//! log no longer holds that entry with that hash. Likewise, a deletion is only evident after
//! the fact: nothing stops deleting the file, only hiding that it happened.
//!
//! # Secrets
//! No event type has a field for a secret value: events name runs, environments, people, roles
//! and outcomes. Notes and reasons are kept as typed by the person who wrote them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::report::run::{Outcome as ReportOutcome, RunKind, RunReport};
use crate::store::{AuditHead, Store, StoreError};

/// The log's file name inside the state directory.
pub const FILE_NAME: &str = "audit.log";

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened. New kinds are new variants; an older rollout still verifies a log holding
/// kinds it does not know (hashes are computed over the JSON, not over this type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    /// A run (promote, rollback, rehearse, test-env up) began.
    RunStarted {
        run: String,
        environment: String,
        command: RunCommand,
        user: String,
        playbook: Option<String>,
        reason: Option<String>,
    },
    /// A run ended.
    RunFinished {
        run: String,
        environment: String,
        outcome: RunOutcome,
        reason: Option<String>,
    },
    /// `rollout approve RUN --by ROLE` opened an approval gate.
    ApprovalRecorded {
        run: String,
        environment: String,
        role: String,
        by: String,
        note: Option<String>,
    },
    /// A third party authorized a change to a service it manages.
    AuthorizationRecorded {
        run: String,
        environment: String,
        third_party: String,
        by: String,
        reference: Option<String>,
        note: Option<String>,
        expires: Option<Timestamp>,
    },
    /// `--emergency --reason`: a change window was overridden.
    EmergencyOverride {
        run: String,
        environment: String,
        user: String,
        reason: String,
    },
    /// A lock left by a dead process was taken over.
    LockTakeover {
        environment: String,
        run: String,
        user: String,
        previous_holder: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunCommand {
    Promote,
    Rollback,
    Rehearse,
    TestEnv,
    /// `rollout down`: an environment's production removed.
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunOutcome {
    /// The new version serves production.
    Promoted,
    /// A previous version was put back: a failed promotion undone, or `rollout rollback`.
    RolledBack,
    /// A rehearsal or test version passed.
    Passed,
    /// Failed; nothing was left changed, or recovery will finish it.
    Failed,
    /// Refused by a gate (window, approval, lock) before anything changed.
    Refused,
    /// Stopped by a signal.
    Cancelled,
    /// `rollout down` removed the environment's production.
    Removed,
}

impl Event {
    /// The `kind` as written in the log.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "runStarted",
            Event::RunFinished { .. } => "runFinished",
            Event::ApprovalRecorded { .. } => "approvalRecorded",
            Event::AuthorizationRecorded { .. } => "authorizationRecorded",
            Event::EmergencyOverride { .. } => "emergencyOverride",
            Event::LockTakeover { .. } => "lockTakeover",
        }
    }
}

impl Event {
    /// The start of the run `report` describes (a report as made by `RunReport::new`).
    pub fn run_started(report: &RunReport, reason: Option<&str>) -> Event {
        Event::RunStarted {
            run: report.run.clone(),
            environment: report.environment.clone(),
            command: match report.kind {
                RunKind::Promotion => RunCommand::Promote,
                RunKind::Rollback => RunCommand::Rollback,
                RunKind::Rehearsal => RunCommand::Rehearse,
                RunKind::Down => RunCommand::Down,
            },
            user: report.user.clone(),
            playbook: Some(report.playbook.clone()),
            reason: reason.map(str::to_string),
        }
    }

    /// The end of the run `report` describes, with its outcome and reason.
    pub fn run_finished(report: &RunReport) -> Event {
        let (outcome, reason) = match &report.outcome {
            ReportOutcome::Running => (RunOutcome::Cancelled, Some("still running".to_string())),
            ReportOutcome::Passed if report.kind == RunKind::Down => (RunOutcome::Removed, None),
            ReportOutcome::Passed => (RunOutcome::Passed, None),
            ReportOutcome::Promoted => (RunOutcome::Promoted, None),
            ReportOutcome::Restored => (RunOutcome::RolledBack, report.reason.clone()),
            ReportOutcome::Failed { reason } => (RunOutcome::Failed, Some(reason.clone())),
            ReportOutcome::Cancelled { reason } => (RunOutcome::Cancelled, Some(reason.clone())),
            ReportOutcome::RolledBack { reason } => (RunOutcome::RolledBack, Some(reason.clone())),
            ReportOutcome::Refused { reason } => (RunOutcome::Refused, Some(reason.clone())),
        };
        Event::RunFinished {
            run: report.run.clone(),
            environment: report.environment.clone(),
            outcome,
            reason,
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub time: Timestamp,
    pub event: Event,
    pub prev: String,
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit log {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("audit log: cannot serialize an entry: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("audit log: the call was cancelled because the runtime is shutting down")]
    Cancelled,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends `event` to the log of `state_dir`, now. Blocks for one fsync, or while another
/// process appends; async code uses [`record`].
pub fn append(state_dir: &Path, event: Event) -> Result<Entry, AuditError> {
    let store = Store::open(state_dir)?;
    append_to(&store, event, Timestamp::now())
}

/// Appends `event` to the log beside `store`, at `now`. Blocking, like [`append`].
pub fn append_to(store: &Store, event: Event, now: Timestamp) -> Result<Entry, AuditError> {
    let path = log_path(store);
    store.audit_append(|head| {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let created = file.metadata().map_err(io_err(&path))?.len() == 0;
        let last = last_entry(&mut file, &path)?;
        // Continue from whichever is further along: the log, or the anchor. Continuing from the
        // anchor when the log lost its end keeps the loss visible as a gap in the numbers.
        let (seq, prev) = match (last, head) {
            (Some(l), Some(h)) if h.seq >= l.0 => (h.seq, h.hash.clone()),
            (Some(l), _) => l,
            (None, Some(h)) => (h.seq, h.hash.clone()),
            (None, None) => (0, GENESIS.to_string()),
        };
        let mut entry = Entry {
            seq: seq + 1,
            time: now,
            event,
            prev,
            hash: String::new(),
        };
        entry.hash = hash_of(&serde_json::to_value(&entry)?);
        let mut line = serde_json::to_string(&entry)?;
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        if created && let Some(dir) = path.parent() {
            // A new file's name must survive a crash too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&path))?;
        }
        Ok((
            AuditHead {
                seq: entry.seq,
                hash: entry.hash.clone(),
            },
            entry,
        ))
    })
}

/// [`append_to`] on tokio's blocking pool, for code that shares its runtime (the executor).
pub async fn record(store: Arc<Store>, event: Event) -> Result<Entry, AuditError> {
    let now = Timestamp::now();
    match tokio::task::spawn_blocking(move || append_to(&store, event, now)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(AuditError::Cancelled),
    }
}

fn log_path(store: &Store) -> PathBuf {
    store
        .path()
        .parent()
        .unwrap_or(Path::new("."))
        .join(FILE_NAME)
}

/// The number and hash of the log's last entry. A torn last line (a crash in the middle of a
/// write, never anchored) is cut off; an unreadable one is skipped over.
fn last_entry(file: &mut File, path: &Path) -> Result<Option<(u64, String)>, AuditError> {
    let len = file.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    file.read_to_string(&mut text).map_err(|e| AuditError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(e.kind(), format!("not UTF-8 text: {e}")),
    })?;
    if !text.ends_with('\n') {
        let keep = text.rfind('\n').map_or(0, |i| i + 1);
        tracing::warn!(log = %path.display(), at = keep, "cutting off a torn last line of the audit log");
        file.set_len(keep as u64).map_err(io_err(path))?;
        text.truncate(keep);
    }
    Ok(text.lines().rev().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        Some((
            v.get("seq")?.as_u64()?,
            v.get("hash")?.as_str()?.to_string(),
        ))
    }))
}

/// The SHA-256 (hex) of an entry without its `hash`, serialized canonically.
pub fn hash_of(entry: &Value) -> String {
    let mut body = entry.clone();
    if let Value::Object(m) = &mut body {
        m.remove("hash");
    }
    let mut text = String::new();
    canonical(&body, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys sorted and no whitespace: independent of the writer's field order.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut fields: Vec<_> = m.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

// ------------------------------------------------------------------------------- reading

/// A line of the log as read back: an entry, or why it is not one.
#[derive(Debug, Clone)]
pub struct Line {
    /// 1-based line number in the file.
    pub line: usize,
    pub entry: Result<Entry, String>,
    /// The raw JSON, for kinds this rollout does not know.
    pub raw: Option<Value>,
}

/// Every line of the log of `state_dir` (none if there is no log). Reading changes nothing.
pub fn read(state_dir: &Path) -> Result<Vec<Line>, AuditError> {
    let path = state_dir.join(FILE_NAME);
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    Ok(split_lines(&text)
        .into_iter()
        .map(|(line, text)| {
            let raw: Option<Value> = serde_json::from_str(text).ok();
            let entry = match &raw {
                None if text.is_empty() => Err("an empty line".to_string()),
                None => Err("not a JSON entry".to_string()),
                Some(v) => serde_json::from_value::<Entry>(v.clone()).map_err(|e| e.to_string()),
            };
            Line { line, entry, raw }
        })
        .collect())
}

/// Lines with their numbers; a last line without its newline is kept (verify reports it).
fn split_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out: Vec<(usize, &str)> = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect();
    if text.ends_with('\n') || text.is_empty() {
        out.pop();
    }
    out
}

// ------------------------------------------------------------------------------ verifying

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ProblemKind {
    /// A line that is not an entry.
    Unreadable,
    /// An entry whose content no longer matches its hash.
    Edited,
    /// Entry numbers jump: entries were deleted.
    Missing,
    /// Entry numbers go backwards: entries were moved or repeated.
    Reordered,
    /// An entry's `prev` is not the hash of the entry before it.
    BrokenLink,
    /// The log ends before the entry the store anchored.
    Truncated,
    /// The anchored entry is there with another hash.
    Rewritten,
    /// Entries beyond the anchor that rollout did not append.
    Unanchored,
    /// The store has no anchor for a log that has entries.
    AnchorMissing,
    /// An entry the auditor kept (`--expect`) is not in the log.
    ExpectedMissing,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The entry concerned, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its line in the file, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

/// An entry an auditor kept elsewhere: `#N sha256:HEX` or `N:HEX`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not an audit head; expected `#N sha256:HEX` or `N:HEX`, as `rollout audit verify` prints"
            )
        };
        let s = s.trim().trim_start_matches('#');
        let (n, h) = s.split_once(':').ok_or_else(bad)?;
        let n = n.trim().trim_end_matches("sha256").trim();
        let seq = n.parse::<u64>().map_err(|_| bad())?;
        let hash = h.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Anchor { seq, hash })
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub log: PathBuf,
    /// Lines in the log.
    pub entries: usize,
    /// The log's last readable entry.
    pub head: Option<Anchor>,
    /// What the store anchored.
    pub anchored: Option<Anchor>,
    /// In file order; the first is where the log stops being trustworthy.
    pub problems: Vec<Problem>,
    /// Worth knowing, not tampering (an entry not anchored yet after a crash).
    pub notes: Vec<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the log of `state_dir` against its hash chain, the store's anchor and the `expect`ed
/// entries an auditor kept. Changes nothing (it does not create a missing store).
pub fn verify(state_dir: &Path, expect: &[Anchor]) -> Result<Report, AuditError> {
    let lines = read(state_dir)?;
    let anchored = if state_dir.join(crate::store::FILE_NAME).exists() {
        Store::open(state_dir)?.audit_head()?.map(|h| Anchor {
            seq: h.seq,
            hash: h.hash,
        })
    } else {
        None
    };
    Ok(check(state_dir.join(FILE_NAME), &lines, anchored, expect))
}

struct Seen {
    seq: u64,
    line: usize,
    hash: String,
}

/// The pure part of [`verify`].
fn check(log: PathBuf, lines: &[Line], anchored: Option<Anchor>, expect: &[Anchor]) -> Report {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut seen: Vec<Seen> = Vec::new();
    let mut prev: Option<Seen> = None;
    // Gaps, to drop those whose entries turn up later (then it is a reordering).
    let mut gaps: Vec<(usize, u64, u64)> = Vec::new();
    for l in lines {
        let Some(raw) = &l.raw else {
            problems.push(Problem {
                kind: ProblemKind::Unreadable,
                seq: None,
                line: Some(l.line),
                message: format!(
                    "line {} is {}",
                    l.line,
                    l.entry.as_ref().err().map_or("unreadable", |e| e.as_str())
                ),
            });
            continue;
        };
        let (Some(seq), Some(hash), Some(link)) = (
            raw.get("seq").and_then(Value::as_u64),
            raw.get("hash").and_then(Value::as_str),
            raw.get("prev").and_then(Value::as_str),
        ) else {
            problems.push(Problem {
                kind: ProblemKind::Unreadable,
                seq: None,
                line: Some(l.line),
                message: format!("line {} is not an entry (no seq, prev or hash)", l.line),
            });
            continue;
        };
        let here = format!("entry #{seq} (line {})", l.line);
        if hash_of(raw) != hash {
            problems.push(Problem {
                kind: ProblemKind::Edited,
                seq: Some(seq),
                line: Some(l.line),
                message: format!("{here} was edited: its content no longer matches its hash"),
            });
        }
        let (after_seq, after_hash) = prev
            .as_ref()
            .map_or((0, GENESIS), |p| (p.seq, p.hash.as_str()));
        if let Some(p) = &prev
            && seq <= after_seq
        {
            problems.push(Problem {
                kind: ProblemKind::Reordered,
                seq: Some(seq),
                line: Some(l.line),
                message: format!(
                    "{here} comes after entry #{} (line {}): entries were reordered or repeated",
                    p.seq, p.line
                ),
            });
        } else if seq != after_seq + 1 {
            gaps.push((l.line, after_seq + 1, seq - 1));
        } else if link != after_hash {
            problems.push(Problem {
                kind: ProblemKind::BrokenLink,
                seq: Some(seq),
                line: Some(l.line),
                message: match &prev {
                    Some(p) => format!(
                        "{here} does not link to entry #{} (line {}): an entry was replaced or removed and the rest renumbered",
                        p.seq, p.line
                    ),
                    None => format!(
                        "{here} does not start the chain: the entries before it were removed"
                    ),
                },
            });
        }
        prev = Some(Seen {
            seq,
            line: l.line,
            hash: hash.to_string(),
        });
        seen.push(Seen {
            seq,
            line: l.line,
            hash: hash.to_string(),
        });
    }
    for (line, from, to) in gaps {
        let missing: Vec<u64> = (from..=to)
            .filter(|n| !seen.iter().any(|s| s.seq == *n))
            .collect();
        if missing.is_empty() {
            continue; // they turn up elsewhere: reported as a reordering
        }
        let (a, b) = (missing[0], missing[missing.len() - 1]);
        let which = if a == b {
            format!("entry #{a} is")
        } else {
            format!("entries #{a} to #{b} are")
        };
        problems.push(Problem {
            kind: ProblemKind::Missing,
            seq: Some(a),
            line: Some(line),
            message: format!("{which} missing before line {line}: deleted"),
        });
    }
    let last = seen.iter().max_by_key(|s| s.seq);
    let head = seen.last().map(|s| Anchor {
        seq: s.seq,
        hash: s.hash.clone(),
    });
    match (&anchored, last) {
        (None, Some(_)) => problems.push(Problem {
            kind: ProblemKind::AnchorMissing,
            seq: None,
            line: None,
            message: format!(
                "the store has no record of this log, which holds {} entries: the store was replaced or reset",
                seen.len()
            ),
        }),
        (Some(a), None) => problems.push(Problem {
            kind: ProblemKind::Truncated,
            seq: Some(a.seq),
            line: None,
            message: format!(
                "the log holds no entry but the store records {} entr{}: the log was deleted or emptied",
                a.seq,
                if a.seq == 1 { "y" } else { "ies" }
            ),
        }),
        (Some(a), Some(last)) => match seen.iter().find(|s| s.seq == a.seq) {
            Some(s) if s.hash != a.hash => problems.push(Problem {
                kind: ProblemKind::Rewritten,
                seq: Some(s.seq),
                line: Some(s.line),
                message: format!(
                    "entry #{} (line {}) is not the entry the store anchored: it was rewritten",
                    s.seq, s.line
                ),
            }),
            Some(_) => {}
            None if last.seq < a.seq => problems.push(Problem {
                kind: ProblemKind::Truncated,
                seq: Some(last.seq + 1),
                line: None,
                message: format!(
                    "the log ends at entry #{} (line {}) but the store records #{}: entries #{} to #{} were cut off the end",
                    last.seq,
                    last.line,
                    a.seq,
                    last.seq + 1,
                    a.seq
                ),
            }),
            None => {} // reported as missing above
        },
        (None, None) => {}
    }
    if let (Some(a), Some(last)) = (&anchored, last) {
        if last.seq == a.seq + 1 {
            notes.push(format!(
                "entry #{} is not anchored in the store yet (a process stopped between writing and anchoring it); the next entry anchors it",
                last.seq
            ));
        } else if last.seq > a.seq + 1 {
            problems.push(Problem {
                kind: ProblemKind::Unanchored,
                seq: Some(a.seq + 1),
                line: seen.iter().find(|s| s.seq == a.seq + 1).map(|s| s.line),
                message: format!(
                    "entries #{} to #{} are beyond what the store anchored (#{}): they were not appended by rollout, or the store was restored from an older copy",
                    a.seq + 1,
                    last.seq,
                    a.seq
                ),
            });
        }
    }
    for e in expect {
        match seen.iter().find(|s| s.seq == e.seq) {
            Some(s) if s.hash == e.hash => {}
            found => problems.push(Problem {
                kind: ProblemKind::ExpectedMissing,
                seq: Some(e.seq),
                line: found.map(|s| s.line),
                message: match found {
                    Some(s) => format!(
                        "entry #{} (line {}) has another hash than the one kept: the log was rewritten from there on",
                        e.seq, s.line
                    ),
                    None => format!("entry #{} that was kept is not in the log", e.seq),
                },
            }),
        }
    }
    problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.seq.unwrap_or(u64::MAX)));
    Report {
        log,
        entries: lines.len(),
        head,
        anchored,
        problems,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(run: &str) -> Event {
        Event::RunStarted {
            run: run.into(),
            environment: "shop".into(),
            command: RunCommand::Promote,
            user: "ana".into(),
            playbook: Some("standard".into()),
            reason: None,
        }
    }

    #[test]
    fn the_hash_ignores_key_order_and_whitespace() {
        let a: Value =
            serde_json::from_str(r#"{"seq":1,"prev":"x","event":{"b":1,"a":[1,{"d":2,"c":3}]}}"#)
                .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "event": {"a":[1,{"c":3,"d":2}],"b":1}, "prev":"x", "seq":1, "hash":"zz" }"#,
        )
        .unwrap();
        assert_eq!(hash_of(&a), hash_of(&b));
        let c: Value =
            serde_json::from_str(r#"{"seq":2,"prev":"x","event":{"b":1,"a":[1,{"d":2,"c":3}]}}"#)
                .unwrap();
        assert_ne!(hash_of(&a), hash_of(&c));
        assert_eq!(hash_of(&a).len(), 64);
    }

    #[test]
    fn entries_chain_and_verify_clean() {
        let dir = tempfile::tempdir().unwrap();
        let one = append(dir.path(), started("r1")).unwrap();
        let two = append(dir.path(), started("r2")).unwrap();
        assert_eq!((one.seq, two.seq), (1, 2));
        assert_eq!(one.prev, GENESIS);
        assert_eq!(two.prev, one.hash);
        let report = verify(dir.path(), &[]).unwrap();
        assert!(report.intact(), "{report:?}");
        assert_eq!(
            report.head,
            Some(Anchor {
                seq: 2,
                hash: two.hash.clone()
            })
        );
        assert_eq!(report.anchored, report.head);
    }

    #[test]
    fn the_event_kind_matches_its_serialized_tag() {
        let e = Event::LockTakeover {
            environment: "shop".into(),
            run: "r".into(),
            user: "u".into(),
            previous_holder: "pid 1 on h".into(),
            reason: "dead".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], e.kind());
        assert_eq!(v["previousHolder"], "pid 1 on h");
    }

    #[test]
    fn anchors_parse_as_printed_and_in_short_form() {
        let h = "ab".repeat(32);
        let a: Anchor = format!("#12 sha256:{h}").parse().unwrap();
        assert_eq!(
            a,
            Anchor {
                seq: 12,
                hash: h.clone()
            }
        );
        let b: Anchor = format!("12:{}", h.to_uppercase()).parse().unwrap();
        assert_eq!(b, a);
        assert!("12:abc".parse::<Anchor>().is_err());
        assert!("x:".parse::<Anchor>().is_err());
    }

    #[test]
    fn a_torn_last_line_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), started("r1")).unwrap();
        let log = dir.path().join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"{"seq":2,"time":"#).unwrap();
        drop(f);
        let e = append(dir.path(), started("r2")).unwrap();
        assert_eq!(e.seq, 2);
        assert!(verify(dir.path(), &[]).unwrap().intact());
    }
}
