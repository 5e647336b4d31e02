//! The approval handlers: the run waiting at a gate with the grants recorded for it, and an
//! approval or authorization recorded through the API as `rollout approve` records it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Caller, body, environment};
use crate::daemon::Shared;
use crate::manifest::config::Right;

pub(super) async fn approvals(
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

pub(super) async fn approve(
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
