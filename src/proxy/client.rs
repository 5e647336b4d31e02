//! A typed client of the proxy's admin API, for the promotion code that drives a proxy running
//! in its own container: read and replace the routing table, read counters, wait for a drain.
//!
//! One short HTTP/1.1 connection per call: calls are rare (a few per traffic step) and a fresh
//! connection cannot be one the proxy closed at restart.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::routes::Routes;
use super::stats::{BackendSnapshot, StatsSnapshot};

/// Every call gives up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`AdminClient::wait_drained`] looks.
const DRAIN_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the proxy's admin API at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy's admin API at {addr} broke off: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("the proxy's admin API at {addr} did not answer within {CALL_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("the proxy refused {what} (HTTP {status}): {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    #[error("the proxy's answer to {what} is not what was expected: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The end of a wait for a backend's in-flight requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Drained,
    /// The time ran out with this many requests or connections still open.
    TimedOut {
        in_flight: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminClient {
    pub base: SocketAddr,
}

impl AdminClient {
    pub fn new(base: SocketAddr) -> AdminClient {
        AdminClient { base }
    }

    pub async fn healthz(&self) -> Result<(), AdminError> {
        self.call::<serde_json::Value>(Method::GET, "/healthz", None)
            .await
            .map(|_| ())
    }

    pub async fn routes(&self) -> Result<Routes, AdminError> {
        self.call(Method::GET, "/routes", None).await
    }

    /// Replaces the whole table; returns it as the proxy now serves it. A refused table (bad
    /// weights, a protocol change, a port in use) changes nothing: [`AdminError::Refused`].
    pub async fn put_routes(&self, routes: &Routes) -> Result<Routes, AdminError> {
        let body = serde_json::to_vec(routes).map_err(|source| AdminError::Decode {
            what: "PUT /routes".into(),
            source,
        })?;
        self.call(Method::PUT, "/routes", Some(Bytes::from(body)))
            .await
    }

    pub async fn stats(&self) -> Result<StatsSnapshot, AdminError> {
        self.call(Method::GET, "/stats", None).await
    }

    /// One backend's counters; `None` if the proxy never knew it.
    pub async fn backend(&self, id: &str) -> Result<Option<BackendSnapshot>, AdminError> {
        match self
            .call(Method::GET, &format!("/backends/{}", encode_path(id)), None)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(AdminError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until backend `id` has nothing in flight, up to `timeout`.
    pub async fn wait_drained(&self, id: &str, timeout: Duration) -> Result<Drain, AdminError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let in_flight = self.backend(id).await?.map_or(0, |s| s.in_flight);
            if in_flight == 0 {
                return Ok(Drain::Drained);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Drain::TimedOut { in_flight });
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<T, AdminError> {
        let addr = self.base;
        let what = format!("{method} {path}");
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| AdminError::Timeout { addr })??;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(AdminError::Refused {
                what,
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| AdminError::Decode { what, source })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let addr = self.base;
        let http = |source| AdminError::Http { addr, source };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| AdminError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::new(Full::new(body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = path
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("/"));
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        req.headers_mut().insert(header::HOST, host);
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| AdminError::Connect {
                addr,
                source: std::io::Error::other(e),
            })?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// Percent-encodes everything but unreserved characters, so any backend id fits in a path.
pub(crate) fn encode_path(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn decode_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_encoding_round_trips() {
        for id in ["web-v1", "shop_web.2", "a b/c%d", "é", "%", "%4"] {
            assert_eq!(decode_path(&encode_path(id)), id, "{id}");
        }
        assert_eq!(encode_path("a b"), "a%20b");
    }
}
