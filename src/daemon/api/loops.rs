//! The background loops' views: the GitOps controller's state (and its manual retry) and the
//! scheduled rehearsals, each limited to the environments of the caller's clients.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Caller, clients, environment, require, run_links};
use crate::daemon::auth::Resolved;
use crate::daemon::gitops::short;
use crate::daemon::{Daemon, Shared};
use crate::manifest::config::Right;

/// The GitOps controller's view for `token`: its environments only. `None` without a controller.
pub fn gitops_view(daemon: &Daemon, token: &Resolved) -> ApiResult<Option<Value>> {
    let Some(handle) = daemon.gitops.get() else {
        return Ok(None);
    };
    let status = handle.status();
    let pending = handle.pending_retries();
    let client_of = clients(daemon)?;
    // A removed environment keeps the client its manifest named.
    let sees = |name: &str, recorded: Option<&String>| {
        client_of(name)
            .or_else(|| recorded.cloned())
            .is_some_and(|c| token.sees(&c))
    };
    let attempt = |name: &str, a: &crate::daemon::gitops::Attempt| {
        let mut v = json!({
            "commit": a.commit, "trigger": a.trigger, "outcome": a.outcome, "run": a.run,
            "exit": a.exit, "at": a.at, "error": a.error,
        });
        if let Some(run) = &a.run {
            v["links"] = run_links(name, run);
        }
        v
    };
    let mut environments = Vec::new();
    for (name, e) in &status.environments {
        if !sees(name, e.client.as_ref()) {
            continue;
        }
        environments.push(json!({
            "name": name,
            "client": client_of(name),
            "manifest": e.manifest,
            "selfHeal": e.self_heal,
            "commitApplied": e.commit,
            "lastAttempt": e.last.as_ref().map(|a| attempt(name, a)),
            "failedCommit": e.failed_at(status.commit.as_deref()).map(|a| attempt(name, a)),
            "retryPending": pending.contains(name),
            "drift": e.drift,
            "driftChecked": e.drift_checked,
        }));
    }
    let mut removed = Vec::new();
    for r in &status.removed {
        if sees(&r.environment, r.client.as_ref()) {
            removed.push(json!(r));
        }
    }
    Ok(Some(json!({
        "configured": true,
        "repo": crate::daemon::gitops::redact(&status.repo),
        "branch": status.branch,
        "path": status.path,
        "fetch": status.fetch,
        "lastFetchOk": status.last_fetch_ok,
        "fetchFailures": status.fetch_failures,
        "commit": status.commit,
        "subject": status.subject,
        "lastTick": status.last_tick,
        "environments": environments,
        "removed": removed,
    })))
}

pub(super) async fn gitops(
    State(daemon): State<Shared>,
    Caller(token): Caller,
) -> ApiResult<Json<Value>> {
    require(&token, Right::Read)?;
    Ok(Json(gitops_view(&daemon, &token)?.unwrap_or_else(
        || json!({ "configured": false, "environments": [], "removed": [] }),
    )))
}

/// The scheduled rehearsals of `token`'s environments, at `now`. `None` without a schedule.
pub fn rehearsals_view(
    daemon: &Daemon,
    token: &Resolved,
    now: jiff::Timestamp,
) -> ApiResult<Option<Vec<Value>>> {
    use crate::daemon::schedule::RunResult;
    let Some(handle) = daemon.schedule.get() else {
        return Ok(None);
    };
    let client_of = clients(daemon)?;
    let mut entries = Vec::new();
    for e in handle.status(now).entries {
        if !client_of(&e.environment).is_some_and(|c| token.sees(&c)) {
            continue;
        }
        let last = e.last.as_ref().map(|r| {
            let mut v = json!({ "due": r.due });
            match &r.result {
                RunResult::Ran {
                    run,
                    outcome,
                    exit,
                    started,
                    finished,
                    error,
                } => {
                    v["result"] = json!(outcome);
                    v["run"] = json!(run);
                    v["exit"] = json!(exit);
                    v["started"] = json!(started);
                    v["finished"] = json!(finished);
                    v["error"] = json!(error);
                    if let Some(run) = run {
                        v["links"] = run_links(&e.environment, run);
                    }
                }
                RunResult::Missed { noticed } => {
                    v["result"] = json!("missed");
                    v["noticed"] = json!(noticed);
                }
            }
            v
        });
        entries.push(json!({
            "entry": e.entry, "environment": e.environment, "playbook": e.playbook,
            "schedule": e.schedule, "tz": e.tz, "nextDue": e.next_due,
            "last": last, "missed": e.missed,
        }));
    }
    Ok(Some(entries))
}

pub(super) async fn rehearsals(
    State(daemon): State<Shared>,
    Caller(token): Caller,
) -> ApiResult<Json<Value>> {
    require(&token, Right::Read)?;
    Ok(Json(
        match rehearsals_view(&daemon, &token, jiff::Timestamp::now())? {
            Some(entries) => json!({ "configured": true, "entries": entries }),
            None => json!({ "configured": false, "entries": [] }),
        },
    ))
}

/// Queues a manual retry of `env`'s failed commit (the caller checked the right and the
/// tenant): 409 without a controller, for an environment it does not follow, or when nothing
/// failed. Returns the commit retried.
pub fn request_retry(daemon: &Daemon, env: &str, who: &str) -> ApiResult<String> {
    let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, m);
    let handle = daemon.gitops.get().ok_or_else(|| {
        conflict(
            "no GitOps controller runs in this daemon (rollout.yaml has no `daemon.gitops`)".into(),
        )
    })?;
    let status = handle.status();
    let e = status.environments.get(env).ok_or_else(|| {
        conflict(format!(
            "the GitOps controller does not follow `{env}`: the repository has no manifest for it"
        ))
    })?;
    let failed = e.failed_at(status.commit.as_deref()).ok_or_else(|| {
        conflict(match &e.last {
            Some(a) => format!(
                "nothing to retry: the last attempt for `{env}` (commit {}) ended {}, and no failed commit waits",
                short(&a.commit),
                serde_json::to_value(a.outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ),
            None => format!("nothing to retry: the GitOps controller has not tried `{env}` yet"),
        })
    })?;
    let commit = failed.commit.clone();
    tracing::info!(environment = env, commit = %commit, by = who, "gitops retry requested");
    handle.retry(env);
    Ok(commit)
}

pub(super) async fn gitops_retry(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
) -> ApiResult<Response> {
    environment(&daemon, &token, &env, Right::Promote)?;
    let commit = request_retry(&daemon, &env, &format!("api:{}", token.name))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "environment": env, "commit": commit, "retry": "queued",
            "message": format!("the GitOps controller tries commit {} again now", short(&commit)),
            "links": { "gitops": "/api/v1/gitops" },
        })),
    )
        .into_response())
}
