//! `rollout audit [list]` and `rollout audit verify`: read and check the tamper-evident audit
//! trail of the project's state directory. Neither changes anything.

use std::path::Path;

use serde_json::Value;

use crate::audit::{self, Anchor, Line};
use crate::cli::output::Printer;
use crate::cli::{AuditAction, AuditArgs, AuditListArgs, AuditVerifyArgs, ExitStatus, Format};
use crate::project::Project;

pub fn run(dir: &Path, args: AuditArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let AuditArgs { action, list } = args;
    let project = Project::open(dir)?;
    let state = project.state_dir();
    match action {
        None => list_entries(&state, list, printer),
        Some(AuditAction::List(args)) => list_entries(&state, args, printer),
        Some(AuditAction::Verify(args)) => verify(&state, args, printer),
    }
}

fn list_entries(state: &Path, args: AuditListArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let AuditListArgs { env, run, output } = args;
    let log = state.join(audit::FILE_NAME);
    let lines = audit::read(state)?;
    let keep = |raw: &Value| {
        let field = |k: &str| raw["event"][k].as_str();
        env.as_deref()
            .is_none_or(|e| field("environment") == Some(e))
            && run.as_deref().is_none_or(|r| field("run") == Some(r))
    };
    let (good, bad): (Vec<&Line>, Vec<&Line>) = lines.iter().partition(|l| l.raw.is_some());
    let shown: Vec<&Value> = good
        .iter()
        .filter_map(|l| l.raw.as_ref())
        .filter(|v| keep(v))
        .collect();
    if output == Format::Json {
        let unreadable: Vec<Value> = bad
            .iter()
            .map(|l| serde_json::json!({ "line": l.line, "error": l.entry.as_ref().err() }))
            .collect();
        printer.json(&serde_json::json!({
            "log": log,
            "entries": shown,
            "unreadable": unreadable,
        }))?;
        return Ok(ExitStatus::Success);
    }
    if lines.is_empty() {
        printer.out(&format!(
            "the audit log {} has no entries yet",
            log.display()
        ));
        return Ok(ExitStatus::Success);
    }
    let mut out = String::from(
        "SEQ   TIME                     EVENT                  RUN         ENVIRONMENT  DETAILS\n",
    );
    for v in &shown {
        let e = &v["event"];
        let time = v["time"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or("?".to_string(), |t| {
                t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
            });
        out.push_str(&format!(
            "{:<5} {:<24} {:<22} {:<11} {:<12} {}\n",
            v["seq"].as_u64().map_or("?".to_string(), |n| n.to_string()),
            time,
            e["kind"].as_str().unwrap_or("?"),
            e["run"].as_str().unwrap_or("-"),
            e["environment"].as_str().unwrap_or("-"),
            details(e)
        ));
    }
    printer.out(&out);
    for l in bad {
        printer.warn(&format!(
            "{} line {}: {}; run `rollout audit verify`",
            log.display(),
            l.line,
            l.entry.as_ref().err().map_or("unreadable", String::as_str)
        ));
    }
    Ok(ExitStatus::Success)
}

/// The rest of an event, in words.
fn details(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("?").to_string();
    let opt = |k: &str, label: &str| {
        e[k].as_str()
            .map(|v| format!(", {label} {v}"))
            .unwrap_or_default()
    };
    match e["kind"].as_str().unwrap_or("") {
        "runStarted" => format!(
            "{} by {}{}{}",
            s("command"),
            s("user"),
            opt("playbook", "playbook"),
            opt("reason", "reason:")
        ),
        "runFinished" => match e["reason"].as_str() {
            Some(r) => format!("{}: {r}", s("outcome")),
            None => s("outcome"),
        },
        "approvalRecorded" => format!(
            "{} approved as {}{}",
            s("by"),
            s("role"),
            opt("note", "note:")
        ),
        "authorizationRecorded" => format!(
            "{} authorized for {}{}{}{}",
            s("by"),
            s("thirdParty"),
            opt("reference", "ref"),
            opt("expires", "expires"),
            opt("note", "note:")
        ),
        "emergencyOverride" => format!("window overridden by {}: {}", s("user"), s("reason")),
        "lockTakeover" => format!(
            "{} took over the lock of {}: {}",
            s("user"),
            s("previousHolder"),
            s("reason")
        ),
        _ => {
            // A kind from a newer rollout: show its fields as they are.
            let Some(m) = e.as_object() else {
                return String::new();
            };
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "kind" | "run" | "environment"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
}

fn verify(state: &Path, args: AuditVerifyArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let AuditVerifyArgs { expect, output } = args;
    let expect = expect
        .iter()
        .map(|e| {
            e.parse::<Anchor>()
                .map_err(|m| anyhow::anyhow!("--expect: {m}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = audit::verify(state, &expect)?;
    let log = report.log.display().to_string();
    if output == Format::Json {
        printer.json(&serde_json::json!({
            "log": report.log,
            "intact": report.intact(),
            "entries": report.entries,
            "head": report.head,
            "anchored": report.anchored,
            "problems": report.problems,
            "notes": report.notes,
        }))?;
        return Ok(if report.intact() {
            ExitStatus::Success
        } else {
            ExitStatus::Failure
        });
    }
    for n in &report.notes {
        printer.warn(n);
    }
    if let Some(first) = report.problems.first() {
        let mut out = format!(
            "audit log {log}: TAMPERED ({} problem{})\n",
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        );
        for p in &report.problems {
            out.push_str(&format!("  - {}\n", p.message));
        }
        printer.out(&out);
        anyhow::bail!("the audit log {log} was tampered with: {}", first.message);
    }
    match &report.head {
        None => printer.out(&format!("audit log {log}: no entries yet")),
        Some(h) => printer.out(&format!(
            "audit log {log}: intact, {} entr{}\nhead: #{} sha256:{}\n(keep the head line somewhere else and check it later with `rollout audit verify --expect '#{} sha256:…'`: that also catches a log rewritten as a whole)",
            report.entries,
            if report.entries == 1 { "y" } else { "ies" },
            h.seq,
            h.hash,
            h.seq,
        )),
    }
    Ok(ExitStatus::Success)
}
