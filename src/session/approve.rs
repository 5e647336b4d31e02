//! Approval recording: an approval of a run parked at an `approve` gate, or a third party's
//! authorization for the services it manages, checked against what the run waits for and the
//! two-person rule, stored and written to the audit trail. `rollout approve` and the daemon's
//! API record through here, so both accept and refuse the same requests.

use anyhow::Context;

use crate::audit;
use crate::project::Project;
use crate::store::{Awaited, Grant, GrantKind, Store};

/// What is to be approved: `rollout approve`'s arguments, or the daemon's API request.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    /// A run id or `latest` (the API's default).
    #[serde(default)]
    pub run: String,
    /// The role, or the third party.
    pub by: String,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub expires: Option<String>,
    /// The environment, for `latest` (and checked against the run's otherwise).
    #[serde(default)]
    pub env: Option<String>,
}

/// What [`record`] did.
#[derive(Debug)]
pub enum Outcome {
    Recorded {
        grant: Grant,
        what: String,
    },
    /// The two-person rule: `who` started the run.
    Refused {
        run: String,
        reason: String,
    },
}

#[derive(Debug)]
pub struct Recorded {
    pub outcome: Outcome,
    /// What the caller should show: the audit trail could not record it, ...
    pub warnings: Vec<String>,
}

/// Records `who`'s approval or authorization of a parked run, shared by `rollout approve` and the
/// daemon's API. An error is bad input (no such parked run, nothing awaited from that role).
pub fn record(
    project: &Project,
    store: &Store,
    request: &Request,
    who: &str,
    now: jiff::Timestamp,
) -> anyhow::Result<Recorded> {
    let Request {
        run,
        by,
        note,
        reference,
        expires,
        env,
    } = request;
    let parked = if run == "latest" {
        let name = project.environment_name(env.as_deref())?;
        store.parked(&name)?.with_context(|| {
            format!("no run of {name} is waiting for an approval (see `rollout status`)")
        })?
    } else {
        store.parked_run(run)?.with_context(|| {
            format!(
                "run {run} is not waiting for an approval: only a run parked at a gate by `rollout promote` can be approved (see `rollout status`)"
            )
        })?
    };
    if let Some(env) = env
        && *env != parked.environment
    {
        anyhow::bail!(
            "run {} is a run of {}, not of {env}",
            parked.run,
            parked.environment
        );
    }
    let Some(awaited) = parked.awaiting.iter().find(|a| a.gate == *by) else {
        anyhow::bail!(
            "run {} does not wait for `{by}`; it waits for {}",
            parked.run,
            awaited_text(&parked.awaiting)
        );
    };
    let expires = match (expires, awaited.kind) {
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
        return Ok(Recorded {
            outcome: Outcome::Refused {
                run: parked.run.clone(),
                reason,
            },
            warnings: Vec::new(),
        });
    }
    let grant = Grant {
        run: parked.run.clone(),
        environment: parked.environment.clone(),
        kind: awaited.kind,
        gate: by.clone(),
        who: who.to_string(),
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
            by: who.to_string(),
            note: note.clone(),
        },
        GrantKind::Authorization => audit::Event::AuthorizationRecorded {
            run: parked.run.clone(),
            environment: parked.environment.clone(),
            third_party: by.clone(),
            by: who.to_string(),
            reference: reference.clone(),
            note: note.clone(),
            expires,
        },
    };
    let mut warnings = Vec::new();
    if let Err(e) = audit::append(&project.state_dir(), event) {
        warnings.push(format!(
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
    Ok(Recorded {
        outcome: Outcome::Recorded { grant, what },
        warnings,
    })
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

/// "an approval by `client`, an authorization by `hosting-co`".
pub(crate) fn awaited_text(awaiting: &[Awaited]) -> String {
    awaiting
        .iter()
        .map(|a| match a.kind {
            GrantKind::Approval => format!("an approval by `{}`", a.gate),
            GrantKind::Authorization => format!(
                "an authorization by third party `{}` (for {})",
                a.gate,
                a.services.join(", ")
            ),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
