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
//!
//! This file holds the route table, the router and what every handler shares (errors, the
//! caller's token, access checks); the handlers live by resource: `read` (environments,
//! status, history, runs, reports), `approvals`, `triggers` (runs started as children),
//! `loops` (the GitOps controller and scheduled rehearsals) and `openapi`.

mod approvals;
mod loops;
mod openapi;
mod read;
mod triggers;

use axum::Json;
use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::auth::Resolved;
use super::{Daemon, Shared};
use crate::manifest::config::Right;

pub use loops::{gitops_view, rehearsals_view, request_retry};
pub use openapi::openapi_document;
pub use read::{render_report, run_list, status_of};

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
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/api/v1/environments", get(read::environments))
        .route("/api/v1/environments/{env}", get(read::status))
        .route("/api/v1/environments/{env}/history", get(read::history))
        .route("/api/v1/environments/{env}/runs", get(read::runs))
        .route("/api/v1/environments/{env}/runs/{run}", get(read::run))
        .route(
            "/api/v1/environments/{env}/runs/{run}/report",
            get(read::report),
        )
        .route(
            "/api/v1/environments/{env}/approvals",
            get(approvals::approvals).post(approvals::approve),
        )
        .route(
            "/api/v1/environments/{env}/promote",
            post(triggers::start::<triggers::Promote>),
        )
        .route(
            "/api/v1/environments/{env}/rollback",
            post(triggers::start::<triggers::Rollback>),
        )
        .route(
            "/api/v1/environments/{env}/rehearse",
            post(triggers::start::<triggers::Rehearse>),
        )
        .route("/api/v1/gitops", get(loops::gitops))
        .route("/api/v1/rehearsals", get(loops::rehearsals))
        .route(
            "/api/v1/environments/{env}/gitops/retry",
            post(loops::gitops_retry),
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

    pub(super) fn internal(e: impl std::fmt::Display) -> Self {
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

pub(super) type ApiResult<T> = Result<T, ApiError>;

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
pub(super) fn run_links(env: &str, run: &str) -> Value {
    let base = format!("/api/v1/environments/{env}/runs/{run}");
    json!({ "run": base, "report": format!("{base}/report"), "dashboard": format!("/env/{env}/runs/{run}/report") })
}

/// A JSON body, or `{}` when empty; parsed after the caller was authorized so that a bad body
/// never answers before 401/403.
pub(super) fn body<T: serde::de::DeserializeOwned + Default>(bytes: &Bytes) -> ApiResult<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.route(` in this file's router is in [`ROUTES`] and the other way round, so the
    /// OpenAPI document (built from ROUTES) and the data-driven auth tests cover every route.
    #[test]
    fn the_route_table_matches_the_router() {
        let source = include_str!("mod.rs");
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
