//! The trigger handlers: promote, rollback and rehearse start `rollout` as a child process
//! (see [`crate::daemon::runs`]) and answer 202 with its run id once it printed it.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, Caller, body, environment};
use crate::daemon::auth::Resolved;
use crate::daemon::runs::{Spec, Started};
use crate::daemon::{Daemon, Shared};
use crate::manifest::config::Right;

/// A trigger's request body (every field optional; an empty body is `{}`): which command it
/// starts, the right that needs, and the flags the body asks for.
pub(super) trait Command: serde::de::DeserializeOwned + Default {
    const KIND: &'static str;
    const RIGHT: Right;
    fn flags(self) -> Vec<String>;
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Promote {
    playbook: Option<String>,
    reason: Option<String>,
}

impl Command for Promote {
    const KIND: &'static str = "promote";
    const RIGHT: Right = Right::Promote;
    fn flags(self) -> Vec<String> {
        let mut args = vec!["--yes".into()];
        if let Some(p) = self.playbook {
            args.extend(["-p".into(), p]);
        }
        if let Some(r) = self.reason {
            args.extend(["--reason".into(), r]);
        }
        args
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Rollback {
    to: Option<u64>,
}

impl Command for Rollback {
    const KIND: &'static str = "rollback";
    const RIGHT: Right = Right::Rollback;
    fn flags(self) -> Vec<String> {
        self.to
            .map(|to| vec!["--to".into(), to.to_string()])
            .unwrap_or_default()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Rehearse {
    playbook: Option<String>,
}

impl Command for Rehearse {
    const KIND: &'static str = "rehearse";
    const RIGHT: Right = Right::Rehearse;
    fn flags(self) -> Vec<String> {
        self.playbook
            .map(|p| vec!["-p".into(), p])
            .unwrap_or_default()
    }
}

/// `POST /api/v1/environments/{env}/<C::KIND>`: the right and the tenant checked before the
/// body is read, then `rollout <kind> -e ENV <flags>` started.
pub(super) async fn start<C: Command>(
    State(daemon): State<Shared>,
    Caller(token): Caller,
    Path(env): Path<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    environment(&daemon, &token, &env, C::RIGHT)?;
    let b: C = body(&bytes)?;
    let mut args = vec![C::KIND.into(), "-e".into(), env.clone()];
    args.extend(b.flags());
    trigger(&daemon, &token, &env, C::KIND, args).await
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
