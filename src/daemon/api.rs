//! The HTTP API under `/api/v1`: environments, status, history, runs, reports, approvals,
//! triggers (promote, rollback, rehearse), and the background loops' state: the GitOps
//! controller (with its manual retry) and the scheduled rehearsals. The route table [`ROUTES`] is the contract: the router,
//! the OpenAPI document and the tests all follow it.
//!
//! Every call needs `Authorization: Bearer <token>`: 401 without one or with an unknown one. A
//! token acts only with its `may` rights (403 otherwise) and sees only its `clients`'
//! environments. **An environment of another client and an environment that does not exist get
//! the same answer, 403 `no access to environment NAME`**, so a token cannot learn which
//! environments other clients have. 404 is only said inside an environment the token sees (an
//! unknown run of it). The OpenAPI document needs a valid token and no right.
//!
//! The environments are the project folder's and those the GitOps controller follows
//! ([`Daemon::catalog`]): one the project has no manifest for belongs to the client its manifest
//! names in the repository. The GitOps and rehearsal views list only the token's clients'
//! environments.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Resolved;
use super::runs::{Spec, Started};
use super::{Daemon, Shared};
use crate::manifest::config::Right;
use crate::report::Selector;

/// One route: method, path (axum syntax), the right it needs (`None`: any valid token).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub right: Option<Right>,
    pub summary: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    right: Option<Right>,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        right,
        summary,
    }
}

pub const ROUTES: &[Route] = &[
    route(
        "GET",
        "/api/v1/openapi.json",
        None,
        "This document (any valid token)",
    ),
    route(
        "GET",
        "/api/v1/environments",
        Some(Right::Read),
        "The environments of the token's clients",
    ),
    route(
        "GET",
        "/api/v1/environments/{env}",
        Some(Right::Read),
        "Status: what runs, the revision, runs in flight or interrupted, a waiting run, the lock, test versions",
    ),
    route(
        "GET",
        "/api/v1/environments/{env}/history",
        Some(Right::Read),
        "Revisions, newest first",
    ),
    route(
        "GET",
        "/api/v1/environments/{env}/runs",
        Some(Right::Read),
        "Runs (promote, rollback, rehearse, test-env), newest first, with runs the daemon started",
    ),
    route(
        "GET",
        "/api/v1/environments/{env}/runs/{run}",
        Some(Right::Read),
        "One run: its record, journal and, for runs the daemon started, their output and exit status",
    ),
    route(
        "GET",
        "/api/v1/environments/{env}/runs/{run}/report",
        Some(Right::Read),
        "The run's change document: ?format=md (default), html or json",
    ),
    route(
        "GET",
        "/api/v1/environments/{env}/approvals",
        Some(Right::Read),
        "The run waiting at a gate, what it waits for, and the approvals recorded for it",
    ),
    route(
        "POST",
        "/api/v1/environments/{env}/approvals",
        Some(Right::Approve),
        "Records an approval or third-party authorization, like `rollout approve` (who: api:<token name>)",
    ),
    route(
        "POST",
        "/api/v1/environments/{env}/promote",
        Some(Right::Promote),
        "Starts `rollout promote --yes`; 202 with the run id",
    ),
    route(
        "POST",
        "/api/v1/environments/{env}/rollback",
        Some(Right::Rollback),
        "Starts `rollout rollback`; 202 with the run id",
    ),
    route(
        "POST",
        "/api/v1/environments/{env}/rehearse",
        Some(Right::Rehearse),
        "Starts `rollout rehearse`; 202 with the run id",
    ),
    route(
        "GET",
        "/api/v1/gitops",
        Some(Right::Read),
        "The GitOps controller: repository (credentials redacted), branch, last fetch, and per environment of the token's clients the commit applied, the last attempt, a failed commit waiting for a new commit or a retry, drift; environments whose manifest left the repository",
    ),
    route(
        "GET",
        "/api/v1/rehearsals",
        Some(Right::Read),
        "The scheduled rehearsals of the token's clients' environments: schedule, time zone, next due time, last result with its run and report, missed due times",
    ),
    route(
        "POST",
        "/api/v1/environments/{env}/gitops/retry",
        Some(Right::Promote),
        "Asks the GitOps controller to try the environment's failed commit again now; 202 once queued, 409 with no controller or nothing failed",
    ),
];

pub fn router() -> axum::Router<Shared> {
    use axum::routing::post;
    axum::Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/environments", get(environments))
        .route("/api/v1/environments/{env}", get(status))
        .route("/api/v1/environments/{env}/history", get(history))
        .route("/api/v1/environments/{env}/runs", get(runs))
        .route("/api/v1/environments/{env}/runs/{run}", get(run))
        .route("/api/v1/environments/{env}/runs/{run}/report", get(report))
        .route(
            "/api/v1/environments/{env}/approvals",
            get(approvals).post(approve),
        )
        .route("/api/v1/environments/{env}/promote", post(promote))
        .route("/api/v1/environments/{env}/rollback", post(rollback))
        .route("/api/v1/environments/{env}/rehearse", post(rehearse))
        .route("/api/v1/gitops", get(gitops))
        .route("/api/v1/rehearsals", get(rehearsals))
        .route(
            "/api/v1/environments/{env}/gitops/retry",
            post(gitops_retry),
        )
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "API call failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The token of an API call, from its `Authorization: Bearer` header (never a cookie: the API
/// must not be callable by a page the dashboard's user happens to visit).
pub struct Caller(pub Resolved);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, daemon: &Shared) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(super::auth::bearer)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this call needs `Authorization: Bearer <token>`",
                )
            })?;
        daemon
            .tokens
            .find(presented)
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))
    }
}

pub fn right_name(right: Right) -> &'static str {
    match right {
        Right::Read => "read",
        Right::Promote => "promote",
        Right::Rollback => "rollback",
        Right::Rehearse => "rehearse",
        Right::Approve => "approve",
    }
}

/// Checks that `token` has `right`.
pub fn require(token: &Resolved, right: Right) -> ApiResult<()> {
    if token.may(right) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` may not {} (it may: {})",
                token.name,
                right_name(right),
                token
                    .may
                    .iter()
                    .map(|r| right_name(*r))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// The environment `name` if `token` has `right` and sees its client: 403 otherwise, the same
/// for an environment of another client as for one that does not exist. Returns its client.
pub fn environment(
    daemon: &Daemon,
    token: &Resolved,
    name: &str,
    right: Right,
) -> ApiResult<String> {
    require(token, right)?;
    let catalog = daemon.catalog().map_err(ApiError::internal)?;
    catalog
        .into_iter()
        .find(|(n, client)| n == name && token.sees(client))
        .map(|(_, client)| client)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("no access to environment `{name}`"),
            )
        })
}

/// The environments `token` sees, with their client.
pub fn visible(daemon: &Daemon, token: &Resolved) -> ApiResult<Vec<(String, String)>> {
    Ok(daemon
        .catalog()
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|(_, client)| token.sees(client))
        .collect())
}

/// A lookup of the client of an environment of [`Daemon::catalog`], read once.
pub fn clients(daemon: &Daemon) -> ApiResult<impl Fn(&str) -> Option<String>> {
    let catalog = daemon.catalog().map_err(ApiError::internal)?;
    Ok(move |name: &str| {
        catalog
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
    })
}

/// The links of a run of `env`.
fn run_links(env: &str, run: &str) -> Value {
    let base = format!("/api/v1/environments/{env}/runs/{run}");
    json!({ "run": base, "report": format!("{base}/report"), "dashboard": format!("/env/{env}/runs/{run}/report") })
}

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
    let attempt = |name: &str, a: &super::gitops::Attempt| {
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
        "repo": super::gitops::redact(&status.repo),
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

async fn gitops(State(daemon): State<Shared>, Caller(token): Caller) -> ApiResult<Json<Value>> {
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
    use super::schedule::RunResult;
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

async fn rehearsals(State(daemon): State<Shared>, Caller(token): Caller) -> ApiResult<Json<Value>> {
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

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

async fn gitops_retry(
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

async fn openapi(Caller(_token): Caller) -> Json<Value> {
    Json(openapi_document())
}

async fn environments(
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
async fn pull_records(daemon: &Daemon, env: &str) -> ApiResult<()> {
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

async fn status(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
) -> ApiResult<Json<Value>> {
    let client = environment(&daemon, &token, &env, Right::Read)?;
    Ok(Json(status_of(&daemon, &env, &client).await?))
}

async fn history(
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
                    || super::runs::has_log(&daemon.project.state_dir(), &r.run),
            })
        })
        .collect())
}

async fn runs(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
) -> ApiResult<Json<Value>> {
    environment(&daemon, &token, &env, Right::Read)?;
    let runs = run_list(&daemon, &env, 100).await?;
    Ok(Json(json!({ "environment": env, "runs": runs })))
}

async fn run(
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
        .or_else(|| super::runs::saved_log(&daemon.project.state_dir(), &run));
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
struct ReportQuery {
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

async fn report(
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

async fn approvals(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
) -> ApiResult<Json<Value>> {
    environment(&daemon, &token, &env, Right::Read)?;
    crate::exec::journal::pull_gates(daemon.engine.as_ref(), &daemon.store, &env)
        .await
        .map_err(ApiError::internal)?;
    let name = env.clone();
    let (parked, grants) = daemon
        .store
        .call(move |s| {
            let parked = s.parked(&name)?;
            let grants = match &parked {
                Some(p) => s.grants(&p.run)?,
                None => Vec::new(),
            };
            Ok((parked, grants))
        })
        .await
        .map_err(ApiError::internal)?;
    let waiting = parked.map(|p| {
        json!({ "run": p.run, "user": p.user, "since": p.at, "awaiting": p.awaiting, "twoPersonRule": p.two_person })
    });
    Ok(Json(
        json!({ "environment": env, "waiting": waiting, "grants": grants }),
    ))
}

/// A JSON body, or `{}` when empty; parsed after the caller was authorized so that a bad body
/// never answers before 401/403.
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &Bytes) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("bad request body: {e}"),
        )
    })
}

async fn approve(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    environment(&daemon, &token, &env, Right::Approve)?;
    let mut request: crate::session::approve::Request = body(&bytes)?;
    if request.run.is_empty() {
        request.run = "latest".into();
    }
    request.env = Some(env.clone());
    // Parked or approved on another machine, and approved here for every machine (kubernetes).
    crate::exec::journal::pull_gates(daemon.engine.as_ref(), &daemon.store, &env)
        .await
        .map_err(ApiError::internal)?;
    let who = format!("api:{}", token.name);
    let d = daemon.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        crate::session::approve::record(
            &d.project,
            &d.store,
            &request,
            &who,
            jiff::Timestamp::now(),
        )
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    for w in &recorded.warnings {
        tracing::warn!(environment = %env, "{w}");
    }
    if let crate::session::approve::Outcome::Recorded { grant, .. } = &recorded.outcome {
        crate::exec::journal::push_grant(daemon.engine.as_ref(), &daemon.store, grant)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!("{e}; the approval is recorded on this daemon's machine only"),
                )
            })?;
    }
    Ok(match recorded.outcome {
        crate::session::approve::Outcome::Recorded { grant, what } => (
            StatusCode::CREATED,
            Json(json!({ "run": grant.run, "environment": grant.environment, "recorded": grant, "summary": what })),
        )
            .into_response(),
        crate::session::approve::Outcome::Refused { run, reason } => ApiError::new(
            StatusCode::CONFLICT,
            format!("run {run}: {reason}"),
        )
        .into_response(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PromoteBody {
    playbook: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RollbackBody {
    to: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RehearseBody {
    playbook: Option<String>,
}

async fn promote(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    environment(&daemon, &token, &env, Right::Promote)?;
    let b: PromoteBody = body(&bytes)?;
    let mut args = vec!["promote".into(), "-e".into(), env.clone(), "--yes".into()];
    if let Some(p) = b.playbook {
        args.extend(["-p".into(), p]);
    }
    if let Some(r) = b.reason {
        args.extend(["--reason".into(), r]);
    }
    trigger(&daemon, &token, &env, "promote", args).await
}

async fn rollback(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    environment(&daemon, &token, &env, Right::Rollback)?;
    let b: RollbackBody = body(&bytes)?;
    let mut args = vec!["rollback".into(), "-e".into(), env.clone()];
    if let Some(to) = b.to {
        args.extend(["--to".into(), to.to_string()]);
    }
    trigger(&daemon, &token, &env, "rollback", args).await
}

async fn rehearse(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    environment(&daemon, &token, &env, Right::Rehearse)?;
    let b: RehearseBody = body(&bytes)?;
    let mut args = vec!["rehearse".into(), "-e".into(), env.clone()];
    if let Some(p) = b.playbook {
        args.extend(["-p".into(), p]);
    }
    trigger(&daemon, &token, &env, "rehearse", args).await
}

/// Starts `rollout <args>` as a child and answers 202 with its run id once it printed it.
async fn trigger(
    daemon: &Arc<Daemon>,
    token: &Resolved,
    env: &str,
    kind: &str,
    args: Vec<String>,
) -> ApiResult<Response> {
    if daemon.shutdown.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down and starts no new run",
        ));
    }
    tracing::info!(environment = env, kind, token = %token.name, "starting a run");
    let spec = Spec {
        bin: daemon.rollout_bin.clone(),
        project: daemon.project.dir.clone(),
        state: daemon.project.state_dir(),
        args,
        environment: env.to_string(),
        kind: kind.to_string(),
        by: token.name.clone(),
        hide: daemon.token_vars.clone(),
    };
    match daemon.runs.start(spec).await.map_err(ApiError::internal)? {
        Started::Run(child) => {
            let location = format!("/api/v1/environments/{env}/runs/{}", child.run);
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&location) {
                headers.insert(header::LOCATION, v);
            }
            Ok((
                StatusCode::ACCEPTED,
                headers,
                Json(json!({
                    "run": child.run, "environment": env, "kind": kind, "by": token.name,
                    "links": { "run": location, "report": format!("{location}/report") },
                })),
            )
                .into_response())
        }
        Started::Ended { code, output } => {
            let status = if code == Some(3) {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            Ok((
                status,
                Json(json!({
                    "error": format!("`rollout {kind}` ended before starting a run (exit status {})", code.map_or("none".into(), |c| c.to_string())),
                    "exitCode": code, "output": output,
                })),
            )
                .into_response())
        }
    }
}

/// The OpenAPI 3 document, built from [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut params = Vec::new();
        for name in ["env", "run"] {
            if r.path.contains(&format!("{{{name}}}")) {
                params.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
            }
        }
        if r.path.ends_with("/report") {
            params.push(json!({ "name": "format", "in": "query", "required": false,
                "schema": { "type": "string", "enum": ["md", "html", "json"], "default": "md" } }));
        }
        let right = r.right.map_or("none (any valid token)", right_name);
        let mut responses = serde_json::Map::new();
        let ok = if r.method == "POST" && r.path.ends_with("/approvals") {
            "201"
        } else if r.method == "POST" {
            "202"
        } else {
            "200"
        };
        responses.insert(ok.into(), json!({ "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } }));
        responses.insert(
            "401".into(),
            json!({ "$ref": "#/components/responses/Unauthorized" }),
        );
        if r.right.is_some() {
            responses.insert(
                "403".into(),
                json!({ "$ref": "#/components/responses/Forbidden" }),
            );
        }
        if r.path.contains("{run}") {
            responses.insert("404".into(), json!({ "description": "No such run in this environment", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
        }
        let retry = r.path.ends_with("/gitops/retry");
        if retry {
            responses.insert("409".into(), json!({ "description": "No GitOps controller runs, it does not follow the environment, or no failed commit waits", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
        } else if r.method == "POST" {
            responses.insert("409".into(), json!({ "description": "Refused: the environment's lock is held, or the two-person rule", "content": { "application/json": { "schema": { "type": "object" } } } }));
            responses.insert("422".into(), json!({ "description": "Bad request body, or the command ended with an error before a run began", "content": { "application/json": { "schema": { "type": "object" } } } }));
        }
        let mut op = json!({
            "summary": r.summary,
            "description": format!("Right needed: {right}."),
            "parameters": params,
            "responses": responses,
        });
        if r.method == "POST" && !retry {
            let schema = match r.path.rsplit('/').next() {
                Some("approvals") => json!({ "type": "object", "required": ["by"], "properties": {
                    "run": { "type": "string", "description": "run id, or latest (default)" },
                    "by": { "type": "string", "description": "the role or third party" },
                    "note": { "type": "string" }, "reference": { "type": "string" },
                    "expires": { "type": "string", "description": "24h, or a time" } } }),
                Some("promote") => json!({ "type": "object", "properties": {
                    "playbook": { "type": "string" }, "reason": { "type": "string" } } }),
                Some("rollback") => json!({ "type": "object", "properties": {
                    "to": { "type": "integer", "minimum": 1 } } }),
                _ => {
                    json!({ "type": "object", "properties": { "playbook": { "type": "string" } } })
                }
            };
            op["requestBody"] = json!({ "required": false, "content": { "application/json": { "schema": schema } } });
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "rollout daemon API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every call needs `Authorization: Bearer <token>` (401 otherwise). A token acts with its rights only and sees its clients' environments only (403 otherwise; an environment of another client answers exactly like one that does not exist).",
        },
        "security": [ { "bearer": [] } ],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } } },
            "responses": {
                "Unauthorized": { "description": "No token, or an unknown one", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "Forbidden": { "description": "The token lacks the right, or does not see the environment", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.route(` in this file's router is in [`ROUTES`] and the other way round, so the
    /// OpenAPI document (built from ROUTES) and the data-driven auth tests cover every route.
    #[test]
    fn the_route_table_matches_the_router() {
        let source = include_str!("api.rs");
        let router = &source[source.find("pub fn router()").expect("router")..];
        let router = &router[..router.find("\n}\n").expect("end of router")];
        let mut served = Vec::new();
        for chunk in router.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a quoted path");
            for (method, call) in [("GET", "get("), ("POST", "post(")] {
                if chunk.contains(call) {
                    served.push(format!("{method} {path}"));
                }
            }
        }
        served.sort();
        let mut table: Vec<String> = ROUTES
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        table.sort();
        assert_eq!(served, table);
        let doc = openapi_document();
        for r in ROUTES {
            assert!(
                doc["paths"][r.path][r.method.to_ascii_lowercase()].is_object(),
                "{} {} missing from the OpenAPI document",
                r.method,
                r.path
            );
        }
    }
}
