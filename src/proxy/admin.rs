//! The admin API, JSON over HTTP/1.1: `GET /healthz`, `GET /routes`, `PUT /routes` (the whole
//! table), `GET /stats` (every backend), `GET /backends/<id>` (one backend, to wait for a drain).
//!
//! It has no authentication, so it must only be reachable from the host: the proxy container
//! binds it on 0.0.0.0 inside its own network namespace and Docker publishes it on 127.0.0.1
//! only (see `ProxyConfig::admin`). Plain hyper rather than a web framework: five routes do not
//! pay for one in build time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::client::decode_path;
use super::routes::Routes;
use super::{Core, UpdateError};

/// A routing table is a few kilobytes; anything much bigger is a mistake.
const MAX_BODY: usize = 1 << 20;

pub(crate) async fn serve(listener: TcpListener, core: Arc<Core>, stop: CancellationToken) {
    let failed = |e: &std::io::Error| tracing::warn!(error = %e, "admin accept failed");
    while let Some((stream, peer)) = super::accept(&listener, &stop, failed).await {
        let core = core.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let core = core.clone();
                async move { Ok::<_, Infallible>(handle(&core, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "admin connection ended");
                    }
                    return;
                }
                _ = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        });
    }
}

async fn handle(core: &Arc<Core>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({ "ok": true })),
        (&Method::GET, "/routes") => json(StatusCode::OK, &core.lock().routes),
        (&Method::PUT, "/routes") => put_routes(core, req).await,
        (&Method::GET, "/stats") => json(StatusCode::OK, &core.stats.snapshot()),
        (&Method::GET, p) if p.starts_with("/backends/") => {
            let id = decode_path(&p["/backends/".len()..]);
            match core.stats.find(&id) {
                Some(s) => json(StatusCode::OK, &s),
                None => error(StatusCode::NOT_FOUND, format!("no backend `{id}`")),
            }
        }
        (_, "/healthz" | "/routes" | "/stats") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {path} is not supported", req.method()),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such resource: {path}")),
    }
}

async fn put_routes(core: &Arc<Core>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
    };
    let routes: Routes = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a routing table: {e}"),
            );
        }
    };
    match core.apply(routes, true).await {
        Ok(()) => {
            tracing::info!("routing table updated");
            json(StatusCode::OK, &core.lock().routes)
        }
        Err(e) => {
            let status = match &e {
                UpdateError::Invalid(_) => StatusCode::BAD_REQUEST,
                UpdateError::Bind { .. } => StatusCode::CONFLICT,
                UpdateError::Save(_) => StatusCode::INTERNAL_SERVER_ERROR,
                UpdateError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::warn!(error = %e, "routing table update refused");
            error(status, e.to_string())
        }
    }
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            let mut resp = Response::new(Full::new(Bytes::from(e.to_string())));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}
