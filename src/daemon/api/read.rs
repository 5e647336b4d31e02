//! The reading handlers: the environments a token sees, an environment's status and history,
//! its runs (with the output of those the daemon started) and their change documents.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Caller, environment, require, visible};
use crate::daemon::{Daemon, Shared};
use crate::manifest::config::Right;
use crate::report::Selector;

pub(super) async fn environments(
    State(daemon): State<Shared>,
    Caller(token): Caller,
) -> ApiResult<Json<Value>> {
    require(&token, Right::Read)?;
    let list: Vec<Value> = visible(&daemon, &token)?
        .into_iter()
        .map(|(name, client)| json!({ "name": name, "client": client }))
        .collect();
    Ok(Json(json!({ "environments": list })))
}

/// Where the platform keeps the run records and gates (kubernetes), brings `env`'s into the
/// store first, logging any record it could not take.
pub(super) async fn pull_records(daemon: &Daemon, env: &str) -> ApiResult<()> {
    let conflicts = crate::exec::journal::pull_from(daemon.engine.as_ref(), &daemon.store, env)
        .await
        .map_err(ApiError::internal)?;
    for line in conflicts {
        tracing::warn!(environment = %env, "{line}");
    }
    Ok(())
}

/// The status of `name`, as `rollout status -o json` shows it.
pub async fn status_of(daemon: &Daemon, name: &str, client: &str) -> ApiResult<Value> {
    pull_records(daemon, name).await?;
    let lookup = |var: &str| std::env::var(var).ok();
    let source = daemon.source_of(name);
    let loaded = source
        .project
        .environment(Some(name), source.manifest.as_deref(), &lookup)
        .map_err(ApiError::internal)?;
    let status = crate::session::status::gather(
        name,
        &loaded.environment,
        &daemon.store,
        daemon.engine.as_ref(),
    )
    .await
    .map_err(ApiError::internal)?;
    Ok(status.to_json(client))
}

pub(super) async fn status(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
) -> ApiResult<Json<Value>> {
    let client = environment(&daemon, &token, &env, Right::Read)?;
    Ok(Json(status_of(&daemon, &env, &client).await?))
}

pub(super) async fn history(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
) -> ApiResult<Json<Value>> {
    environment(&daemon, &token, &env, Right::Read)?;
    pull_records(&daemon, &env).await?;
    let name = env.clone();
    let revisions = daemon
        .store
        .call(move |s| s.history(&name))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "environment": env, "revisions": revisions })))
}

/// The runs of `env` (newest first, at most `limit`), without their reports.
pub async fn run_list(daemon: &Daemon, env: &str, limit: usize) -> ApiResult<Vec<Value>> {
    let name = env.to_string();
    let records = daemon
        .store
        .call(move |s| s.runs(&name, limit))
        .await
        .map_err(ApiError::internal)?;
    Ok(records
        .into_iter()
        .map(|r| {
            json!({
                "run": r.run, "kind": r.kind, "started": r.started, "finished": r.finished,
                "user": r.user, "outcome": r.outcome,
                // Why it ran (`--reason`), else why it ended as it did.
                "reason": if r.report["reason"].is_string() { r.report["reason"].clone() } else { r.report["outcome"]["reason"].clone() },
                "startedByDaemon": daemon.runs.get(&r.run).is_some()
                    || crate::daemon::runs::has_log(&daemon.project.state_dir(), &r.run),
            })
        })
        .collect())
}

pub(super) async fn runs(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
) -> ApiResult<Json<Value>> {
    environment(&daemon, &token, &env, Right::Read)?;
    let runs = run_list(&daemon, &env, 100).await?;
    Ok(Json(json!({ "environment": env, "runs": runs })))
}

pub(super) async fn run(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path((env, run)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    environment(&daemon, &token, &env, Right::Read)?;
    let id = run.clone();
    let (record, journal) = daemon
        .store
        .call(move |s| Ok((s.run(&id)?, s.journal(&id)?)))
        .await
        .map_err(ApiError::internal)?;
    let child = daemon.runs.get(&run).filter(|c| c.environment == env);
    let record = record.filter(|r| r.environment == env);
    if record.is_none() && child.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no run `{run}` in environment `{env}`"),
        ));
    }
    let output = child
        .as_ref()
        .and_then(|c| c.output())
        .or_else(|| crate::daemon::runs::saved_log(&daemon.project.state_dir(), &run));
    let journal: Vec<Value> = journal
        .iter()
        .map(|e| json!({ "step": e.label(), "at": e.at }))
        .collect();
    Ok(Json(json!({
        "run": run, "environment": env, "record": record, "journal": journal,
        "daemon": child.as_ref().map(|c| json!({
            "kind": c.kind, "by": c.by, "started": c.started, "exitCode": c.exit(),
        })),
        "output": output,
    })))
}

#[derive(Debug, Deserialize)]
pub(super) struct ReportQuery {
    format: Option<String>,
}

/// The report of `run` in `env`, rendered as `format`: (content type, document).
pub fn render_report(
    daemon: &Daemon,
    env: &str,
    run: &str,
    format: &str,
) -> ApiResult<(&'static str, String)> {
    let state = daemon.project.state_dir();
    let found =
        crate::report::find(&daemon.store, &state, Some(env), Selector::Run(run)).map_err(|e| {
            match e {
                crate::report::FindError::Store(e) => ApiError::internal(e),
                other => ApiError::new(StatusCode::NOT_FOUND, other.to_string()),
            }
        })?;
    Ok(match format {
        "md" => (
            "text/markdown; charset=utf-8",
            crate::report::markdown(&found),
        ),
        "html" => ("text/html; charset=utf-8", crate::report::html(&found)),
        "json" => ("application/json", crate::report::json(&found)),
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("format `{other}`: expected md, html or json"),
            ));
        }
    })
}

pub(super) async fn report(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path((env, run)): Path<(String, String)>,
    Query(q): Query<ReportQuery>,
) -> ApiResult<Response> {
    environment(&daemon, &token, &env, Right::Read)?;
    let (content_type, body) =
        render_report(&daemon, &env, &run, q.format.as_deref().unwrap_or("md"))?;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
