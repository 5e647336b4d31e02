//! `rollout approve RUN --by ROLE|PARTY`: records an approval of a run parked at an `approve`
//! gate, or a third party's authorization for the services it manages, then says how to
//! resume. Exit 0 recorded, 1 bad input (no such parked run, nothing awaited from that role),
//! 3 refused (the two-person rule).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::audit;
use crate::cli::output::Printer;
use crate::cli::{ApproveArgs, ExitStatus, Format};
use crate::exec::report::current_user;
use crate::project::Project;
use crate::store::{Grant, GrantKind, Store};

pub async fn run(dir: &Path, args: ApproveArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let ApproveArgs {
        run,
        by,
        note,
        reference,
        expires,
        env,
        output,
    } = args;
    let project = Project::open(dir)?;
    let store = Arc::new(Store::open(&project.state_dir())?);
    let now = jiff::Timestamp::now();
    let parked = if run == "latest" {
        let name = project.environment_name(env.env.as_deref())?;
        store.parked(&name)?.with_context(|| {
            format!("no run of {name} is waiting for an approval (see `rollout status`)")
        })?
    } else {
        store.parked_run(&run)?.with_context(|| {
            format!(
                "run {run} is not waiting for an approval: only a run parked at a gate by `rollout promote` can be approved (see `rollout status`)"
            )
        })?
    };
    let Some(awaited) = parked.awaiting.iter().find(|a| a.gate == by) else {
        anyhow::bail!(
            "run {} does not wait for `{by}`; it waits for {}",
            parked.run,
            super::promote::awaited_text(&parked.awaiting)
        );
    };
    let who = current_user();
    let expires = match (&expires, awaited.kind) {
        (Some(text), GrantKind::Authorization) => Some(parse_when(text, now)?),
        (Some(_), GrantKind::Approval) => {
            anyhow::bail!(
                "--expires is for a third party's authorization; `{by}` is an approval role"
            )
        }
        (None, _) => None,
    };
    if awaited.kind == GrantKind::Authorization && reference.is_none() {
        anyhow::bail!(
            "an authorization by third party `{by}` needs its reference: --reference REF (their ticket or change number)"
        );
    }
    if awaited.kind == GrantKind::Approval && parked.two_person && who == parked.user {
        let reason = format!(
            "two-person rule: {who} started run {} and cannot also approve it; another person must run `rollout approve {} --by {by}`",
            parked.run, parked.run
        );
        if output == Format::Json {
            printer.json(&serde_json::json!({ "run": parked.run, "outcome": { "outcome": "refused", "reason": reason } }))?;
        } else {
            printer.warn(&reason);
        }
        return Ok(ExitStatus::Refused);
    }
    let grant = Grant {
        run: parked.run.clone(),
        environment: parked.environment.clone(),
        kind: awaited.kind,
        gate: by.clone(),
        who: who.clone(),
        reference: reference.clone(),
        note: note.clone(),
        expires,
        at: now,
    };
    store.record_grant(&grant)?;
    let event = match awaited.kind {
        GrantKind::Approval => audit::Event::ApprovalRecorded {
            run: parked.run.clone(),
            environment: parked.environment.clone(),
            role: by.clone(),
            by: who.clone(),
            note: note.clone(),
        },
        GrantKind::Authorization => audit::Event::AuthorizationRecorded {
            run: parked.run.clone(),
            environment: parked.environment.clone(),
            third_party: by.clone(),
            by: who.clone(),
            reference: reference.clone(),
            note: note.clone(),
            expires,
        },
    };
    if let Err(e) = audit::append(&project.state_dir(), event) {
        printer.warn(&format!(
            "the audit trail could not record the approval: {e}"
        ));
    }
    let what = match awaited.kind {
        GrantKind::Approval => format!("approval by `{by}` ({who})"),
        GrantKind::Authorization => format!(
            "authorization by third party `{by}` (reference {}, recorded by {who}{})",
            reference.as_deref().unwrap_or_default(),
            expires
                .map(|e| format!(", expires {}", e.strftime("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_default()
        ),
    };
    if output == Format::Json {
        printer.json(&serde_json::json!({ "run": parked.run, "environment": parked.environment, "recorded": grant }))?;
    } else {
        printer.out(&format!(
            "Recorded the {what} for run {} of {}. `rollout promote -e {}` resumes it.",
            parked.run, parked.environment, parked.environment
        ));
    }
    Ok(ExitStatus::Success)
}

/// A duration from `now` (`24h`) or a point in time (RFC 3339, or with a time zone).
fn parse_when(text: &str, now: jiff::Timestamp) -> anyhow::Result<jiff::Timestamp> {
    if let Ok(d) = crate::manifest::duration::parse(text) {
        return Ok(now + jiff::SignedDuration::try_from(d)?);
    }
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(z) = text.parse::<jiff::Zoned>() {
        return Ok(z.timestamp());
    }
    anyhow::bail!(
        "--expires `{text}`: expected a duration like 24h or a time like 2026-12-01T18:00:00Z or 2026-12-01T18:00[Europe/Paris]"
    )
}
