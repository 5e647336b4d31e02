//! HTTP listeners: accept HTTP/1.1 and HTTP/2 (h2c) from clients, forward each request to a
//! backend picked by weight over pooled HTTP/1.1 connections, and stream both bodies.
//!
//! Plain HTTP/1.1 requests go through the fast path (`fast.rs`, `h1.rs`), which keeps the
//! promises below with its own code; hyper (this file) serves HTTP/2, upgrades, streamed
//! uploads and anything unusual, from the first such request of a connection on.
//!
//! What a request is promised:
//! - It finishes on the backend it started on, whatever updates happen meanwhile (it holds the
//!   `Route` it read at its start).
//! - If its backend cannot be reached (refused, reset, timed out) before the request left the
//!   proxy, it is sent once to another backend of the same port: the next one of the weighted
//!   cycle, else a standby at weight 0 (an old version still running while it drains). Only
//!   requests that provably did not reach the backend are retried: hyper hands the request back,
//!   body untouched, when it failed before writing it. One exception, as browsers and nginx do:
//!   an idempotent request without a body (GET, HEAD, ...) written to a connection that then
//!   broke without any answer is sent again, once.
//! - No backend with a weight: 503. A backend that breaks the exchange: 502.
//!
//! Hop-by-hop headers are dropped both ways, `X-Forwarded-For` gets the client's address,
//! `X-Forwarded-Proto` says `http`. An `Upgrade` (WebSocket) handshake is passed to the backend
//! on its own connection; on `101` both sides are taken over and copied until either closes.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::ListenerCtx;
use super::fast::{self, Prefixed};
use super::stats::InFlight;
use super::table::Target;
use super::upstream::{UpBody, UpConn, Upstream};

/// Accepts connections until the listener is stopped, then lets each connection finish its
/// in-flight requests (idle keep-alive connections close at once).
pub(crate) async fn serve(listener: TcpListener, ctx: ListenerCtx) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer is what lets hyper enforce its header read timeout on slow clients.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let fwd = Arc::new(Forwarder {
        port: ctx.port,
        ctx: ctx.clone(),
    });
    let failed = |e: &std::io::Error| tracing::warn!(port = ctx.port, error = %e, "accept failed");
    while let Some((stream, peer)) = super::accept(&listener, &ctx.stop, failed).await {
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let fwd = fwd.clone();
        let stop = ctx.stop.clone();
        let kill = ctx.kill.clone();
        ctx.tracker.spawn(async move {
            let mut stream = stream;
            // Formatted once per connection rather than once per request.
            let client = peer.ip().to_canonical().to_string();
            // Plain HTTP/1.1 requests take the fast path; hyper serves the rest of the
            // connection from the first request that is not one (or from the HTTP/2 preface).
            let end = tokio::select! {
                biased;
                end = fast::serve(&mut stream, &fwd.ctx, &client) => end,
                _ = kill.cancelled() => return,
            };
            let fast::End::HandOff(read) = end else {
                return;
            };
            let stream = Prefixed::new(read, stream);
            let client = HeaderValue::from_str(&client).ok();
            let svc = hyper::service::service_fn(move |req| {
                let fwd = fwd.clone();
                let client = client.clone();
                async move { Ok::<_, Infallible>(fwd.forward(req, client).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "client connection ended");
                    }
                    return;
                }
                _ = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn => {}
                _ = kill.cancelled() => {}
            }
        });
    }
    tracing::debug!(port = ctx.port, "HTTP listener stopped accepting");
}

struct Forwarder {
    port: u16,
    ctx: ListenerCtx,
}

/// Why an attempt failed, and whether the request can still go elsewhere.
enum Failure {
    /// The request never reached the backend; here it is, untouched.
    NotSent(Box<Request<UpBody>>, BoxError),
    /// The backend may have seen (part of) the request.
    Sent(hyper::Error),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Forwarder {
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: Option<HeaderValue>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return message(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not forwarded by this proxy\n",
            );
        }
        let route = self.ctx.slot.current();
        let (n, first) = route.next();
        let Some(mut idx) = first else {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend is serving this port\n",
            );
        };
        let upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let replayable = upgrade.is_none() && Replay::applies(&req);
        prepare_request(&mut req, client, upgrade.is_some());
        let mut req = req.map(Either::Left);
        let mut retried = false;
        loop {
            let target = &route.targets[idx];
            target.stats.attempt();
            let in_flight = InFlight::enter(&target.stats);
            let started = Instant::now();
            let failed = match send(
                &target.upstream,
                req,
                replayable,
                upgrade.is_some(),
                started,
            )
            .await
            {
                Ok((resp, conn)) => {
                    return self.respond(resp, conn, target, in_flight, started, upgrade);
                }
                Err(f) => f,
            };
            target.stats.connection_error();
            drop(in_flight);
            match failed {
                Failure::NotSent(back, error) => {
                    let Some(alt) = route.retry(idx, n, &mut retried) else {
                        tracing::warn!(port = self.port, backend = %target.id, %error, "backend unreachable, no other backend to retry on");
                        return bad_gateway();
                    };
                    tracing::info!(port = self.port, backend = %target.id, retry = %route.targets[alt].id, %error, "backend unreachable, retrying on another");
                    idx = alt;
                    req = *back;
                }
                Failure::Sent(error) => {
                    tracing::warn!(port = self.port, backend = %target.id, %error, "backend failed the request");
                    return bad_gateway();
                }
            }
        }
    }

    fn respond(
        &self,
        mut resp: Response<Incoming>,
        conn: Option<Box<UpConn>>,
        target: &Target,
        in_flight: InFlight,
        started: Instant,
        upgrade: Option<OnUpgrade>,
    ) -> Response<ProxyBody> {
        target
            .stats
            .response(resp.status().as_u16(), started.elapsed());
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client) = upgrade
        {
            let backend = hyper::upgrade::on(&mut resp);
            let upstream = target.upstream.clone();
            let kill = self.ctx.kill.clone();
            let id = target.id.clone();
            self.ctx.tracker.spawn(async move {
                tunnel(client, backend, &upstream, kill, &id).await;
                drop(in_flight);
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, ProxyBody::message(None));
        }
        strip_hop_by_hop(resp.headers_mut(), false);
        // The backend's HTTP version is no business of the client's: an HTTP/1.0 backend must
        // not make hyper answer a keep-alive HTTP/1.1 client as 1.0 and close its connection.
        *resp.version_mut() = Version::HTTP_11;
        let upstream = target.upstream.clone();
        resp.map(|inner| {
            ProxyBody(Kind::Upstream {
                inner,
                conn: conn.map(|conn| Done { conn, upstream }),
                _in_flight: in_flight,
            })
        })
    }
}

/// Sends `req` to `up`: on a pooled connection if one is ready, else on a new one. Returns the
/// response head and the connection its body comes on (`None` for an upgrade, whose connection
/// has a task of its own).
///
/// `replayable` (an idempotent request without a body) allows one resend when a connection broke
/// after the request was written but before any answer. Copying the head for that costs an
/// allocation per request, so it is only taken where the race is real: on a connection idle
/// long enough that the backend may be closing it, and on a new connection (a backend that is
/// going away accepts and then resets).
async fn send(
    up: &Upstream,
    mut req: Request<UpBody>,
    replayable: bool,
    upgrade: bool,
    now: Instant,
) -> Result<(Response<Incoming>, Option<Box<UpConn>>), Failure> {
    if upgrade {
        // An upgrade takes its connection over for good: a fresh one, outside the pool.
        let mut sender = match up.connect_upgradable().await {
            Ok(s) => s,
            Err(e) => return Err(Failure::NotSent(Box::new(req), e.into())),
        };
        return match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, None)),
            Err(mut e) => match e.take_message() {
                Some(back) => Err(Failure::NotSent(Box::new(back), e.into_error().into())),
                None => Err(Failure::Sent(e.into_error())),
            },
        };
    }
    let mut replayed = false;
    while let Some((mut conn, idle)) = up.checkout(now).await {
        let replay = (replayable && idle >= STALE_AFTER).then(|| Replay::of(&req));
        match conn.send(req).await {
            Ok(resp) => return Ok((resp, Some(conn))),
            Err(mut e) => match e.take_message() {
                // The pooled connection was already dead: try the next.
                Some(back) => req = back,
                None => match replay {
                    // Written on a connection the backend was closing, with no answer.
                    Some(r) => {
                        tracing::debug!(addr = %up.addr, error = %e.error(), "pooled connection broke, sending again");
                        replayed = true;
                        req = r.rebuild();
                        break;
                    }
                    None => return Err(Failure::Sent(e.into_error())),
                },
            },
        }
    }
    let replay = (replayable && !replayed).then(|| Replay::of(&req));
    let mut conn = match up.connect_http().await {
        Ok(c) => c,
        Err(e) => return Err(Failure::NotSent(Box::new(req), e.into())),
    };
    match conn.send(req).await {
        Ok(resp) => Ok((resp, Some(conn))),
        Err(mut e) => match (e.take_message(), replay) {
            (Some(back), _) => Err(Failure::NotSent(Box::new(back), e.into_error().into())),
            (None, Some(r)) => Err(Failure::NotSent(
                Box::new(r.rebuild()),
                e.into_error().into(),
            )),
            (None, None) => Err(Failure::Sent(e.into_error())),
        },
    }
}

/// A pooled connection idle for less than this is not one a backend's keep-alive timer is
/// closing: the shortest common server timeouts are a few seconds.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(1);

/// Copies bytes both ways between an upgraded client connection and its backend connection,
/// until either side closes, the backend leaves the table and its drain deadline passes, or the
/// proxy stops.
async fn tunnel(
    client: OnUpgrade,
    backend: OnUpgrade,
    upstream: &Upstream,
    kill: tokio_util::sync::CancellationToken,
    id: &str,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(backend = %id, error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = r {
                tracing::debug!(backend = %id, error = %e, "upgraded connection ended");
            }
        }
        _ = upstream.evicted() => {
            tracing::info!(backend = %id, "closing an upgraded connection: its backend left the table and the drain time is over");
        }
        _ = kill.cancelled() => {}
    }
}

/// Enough of a bodiless idempotent request to send it again.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// Whether the request may be sent twice: idempotent, and nothing in its body to lose.
    fn applies(req: &Request<Incoming>) -> bool {
        matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ) && req.body().is_end_stream()
    }

    fn of(req: &Request<UpBody>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn rebuild(&self) -> Request<UpBody> {
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Drops the headers that describe one connection rather than the message: those named in
/// `Connection` and the fixed list of RFC 9110 section 7.6.1. An upgrade keeps `Upgrade` and
/// `Connection: upgrade`, which are the handshake itself.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        // Usually just `keep-alive`, `close` or `upgrade`, which go anyway: collect (and
        // allocate) only for other names.
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| {
                !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Turns a client's request into the one the backend gets, over HTTP/1.1. `client` is the
/// client's address as a header value.
fn prepare_request(req: &mut Request<Incoming>, client: Option<HeaderValue>, upgrade: bool) {
    // HTTP/2 names the host in `:authority` and the target in absolute form; an HTTP/1.1
    // backend wants a Host header and the origin form.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        if !req.headers().contains_key(header::HOST) {
            let host = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(host) = host {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .map(Uri::from)
            .unwrap_or_else(|| Uri::from_static("/"));
        *req.uri_mut() = origin;
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if let Some(client) = client {
        let forwarded = if headers.contains_key(&X_FORWARDED_FOR) {
            // Proxies before us: append, as `$proxy_add_x_forwarded_for` does.
            let mut joined = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            joined.push_str(", ");
            joined.push_str(client.to_str().unwrap_or_default());
            HeaderValue::from_str(&joined).ok()
        } else {
            Some(client)
        };
        if let Some(v) = forwarded {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

fn message(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::message(Some(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn bad_gateway() -> Response<ProxyBody> {
    message(StatusCode::BAD_GATEWAY, "the backend did not answer\n")
}

/// The connection a response body comes on, and its pool: the body drives it, and gives it back
/// when the body ended.
struct Done {
    conn: Box<UpConn>,
    upstream: Arc<Upstream>,
}

/// The body the proxy answers with: a backend's response streamed frame by frame, or a short
/// message of the proxy's own.
pub struct ProxyBody(Kind);

enum Kind {
    Upstream {
        inner: Incoming,
        /// `None` once given back (or for an upgrade's empty body).
        conn: Option<Done>,
        /// The request stops counting as in flight when its body is done with.
        _in_flight: InFlight,
    },
    Message(Option<Bytes>),
}

impl ProxyBody {
    fn message(text: Option<Bytes>) -> ProxyBody {
        ProxyBody(Kind::Message(text))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Message(text) => Poll::Ready(text.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { inner, conn, .. } => {
                // The connection reads the next chunk into `inner`'s channel.
                if let Some(d) = conn.as_mut() {
                    d.conn.drive(cx);
                }
                let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
                match &frame {
                    Some(Ok(_)) if !inner.is_end_stream() => {}
                    Some(Err(_)) => {
                        // A body cut short leaves the connection unusable: do not pool it.
                        conn.take();
                    }
                    _ => {
                        if let Some(d) = conn.take() {
                            d.upstream.checkin(d.conn);
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
            Kind::Message(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Upstream { inner, .. } => inner.size_hint(),
            Kind::Message(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may drop a body it knows is complete (empty, or exactly sized) without polling
        // it to the end; its connection is still good.
        if let Kind::Upstream { inner, conn, .. } = &mut self.0
            && let Some(d) = conn.take()
            && inner.is_end_stream()
        {
            d.upstream.checkin(d.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn upgrade_keeps_its_handshake() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }
}
