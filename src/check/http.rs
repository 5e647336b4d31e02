//! HTTP checks: one `GET` from the host to a published 127.0.0.1 port, judged against what the
//! playbook expects (status, body text, headers, a JSON value).
//!
//! Fetching ([`get`]) and judging ([`judge`]) are apart so the judging, where every failure
//! reason is worded, is a pure function with its own tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONNECTION, HOST, HeaderMap, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::json_path;
use super::{Verdict, head, human};
use crate::engine::error_chain;

/// More than any health or status page needs; a check must not buffer a download.
pub(super) const MAX_BODY: usize = 1 << 20;
/// How much of a body a failure reason quotes.
const QUOTE: usize = 200;

/// What a response must look like.
#[derive(Debug, Clone, Copy)]
pub(super) struct Expect<'a> {
    /// `None`: any status from 200 to 399, as health probes conventionally accept.
    pub status: Option<u16>,
    pub body: Option<&'a str>,
    /// Header names in any case; values compared exactly.
    pub headers: &'a [(String, String)],
    /// A JSON path and the value it must name.
    pub json: Option<(&'a str, &'a serde_json::Value)>,
}

impl Expect<'static> {
    /// What a health probe expects: a successful status, nothing else.
    pub fn ok() -> Self {
        Expect {
            status: None,
            body: None,
            headers: &[],
            json: None,
        }
    }
}

/// A response as far as a check cares.
#[derive(Debug, Clone)]
pub(super) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// At most [`MAX_BODY`] bytes.
    pub body: Bytes,
    /// The body was longer than [`MAX_BODY`] and was cut.
    pub truncated: bool,
}

/// One attempt: fetch `path` from 127.0.0.1:`port` within `timeout`, then judge the answer.
pub(super) async fn attempt(
    port: u16,
    path: &str,
    expect: &Expect<'_>,
    timeout: Duration,
) -> Verdict {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    match tokio::time::timeout(timeout, get(port, &path)).await {
        Err(_) => Verdict::fail(format!("no response within {}", human(timeout))),
        Ok(Err(verdict)) => verdict,
        Ok(Ok(response)) => judge(
            expect,
            &response,
            &format!("GET {path} on 127.0.0.1:{port}"),
        ),
    }
}

/// Aborts the connection task when the request is done or abandoned (on timeout), so no task
/// outlives its check.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fetches `path` (starting with `/`). Errors are already verdicts: a refused connection is
/// inconclusive (nothing to judge yet), a broken exchange is a failure.
pub(super) async fn get(port: u16, path: &str) -> Result<Response, Verdict> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            Verdict::inconclusive(format!("connection refused on {addr}"))
        } else {
            Verdict::inconclusive(format!("cannot connect to {addr}: {e}"))
        }
    })?;
    let broken = |e: hyper::Error| {
        if dropped(&e) {
            // Docker's userland proxy accepts on the published port, then closes or resets the
            // connection when nothing listens on the container port: for the user that is a
            // refused connection.
            Verdict::inconclusive(format!(
                "connection to {addr} closed before any response (is the service listening yet?)"
            ))
        } else {
            Verdict::fail(format!(
                "HTTP exchange with {addr} failed: {}",
                error_chain(&e)
            ))
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(broken)?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        // Its errors surface through `send_request` and the body.
        let _ = conn.await;
    }));
    let request = Request::get(path)
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close")
        .header(USER_AGENT, concat!("rollout/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| Verdict::inconclusive(format!("cannot request {path:?}: {e}")))?;
    let response = sender.send_request(request).await.map_err(broken)?;
    let (parts, mut body) = response.into_parts();
    let mut buf = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Verdict::fail(format!(
                "reading the body from {addr} failed: {}",
                error_chain(&e)
            ))
        })?;
        if let Ok(data) = frame.into_data() {
            let room = MAX_BODY - buf.len();
            if data.len() > room {
                buf.extend_from_slice(&data[..room]);
                truncated = true;
                break;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(buf),
        truncated,
    })
}

/// Whether the peer closed or reset the connection before answering, as opposed to answering
/// badly. Depending on timing hyper reports that as an incomplete message, a canceled request
/// (closed before it was sent) or an I/O error underneath.
fn dropped(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_incomplete_message()
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// The verdict on a response. A wrong status says so alone (the rest of such a response is
/// rarely meaningful); otherwise every mismatch is reported, not just the first.
pub(super) fn judge(expect: &Expect<'_>, response: &Response, what: &str) -> Verdict {
    let code = response.status.as_u16();
    match expect.status {
        Some(want) if code != want => {
            return Verdict::fail(format!("expected status {want}, got {code}"));
        }
        None if !(200..400).contains(&code) => {
            return Verdict::fail(format!("expected a status from 200 to 399, got {code}"));
        }
        _ => {}
    }
    let mut found = vec![format!("{what} answered {code}")];
    let mut problems = Vec::new();

    for (name, want) in expect.headers {
        let name = name.to_ascii_lowercase();
        let values: Vec<String> = response
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        match values.first() {
            None => problems.push(format!("header {name} is missing, expected {want:?}")),
            Some(_) if values.iter().any(|v| v == want) => {
                found.push(format!("header {name} is {want:?}"));
            }
            Some(got) => problems.push(format!("header {name} is {got:?}, expected {want:?}")),
        }
    }

    let text = String::from_utf8_lossy(&response.body);
    if let Some(want) = expect.body {
        if text.contains(want) {
            found.push(format!("body contains {want:?}"));
        } else if text.is_empty() {
            problems.push(format!(
                "body does not contain {want:?} (the body is empty)"
            ));
        } else {
            problems.push(format!(
                "body does not contain {want:?} (first {QUOTE} chars: {:?})",
                head(&text, QUOTE)
            ));
        }
    }

    if let Some((path, want)) = expect.json {
        match json_value(&response.body, response.truncated, path) {
            Err(problem) => problems.push(problem),
            Ok(None) => problems.push(format!("{path} is missing, expected {}", show(want))),
            Ok(Some(got)) if json_path::matches(want, &got) => {
                found.push(format!("{path} is {}", show(want)));
            }
            Ok(Some(got)) => {
                problems.push(format!("{path} is {}, expected {}", show(&got), show(want)));
            }
        }
    }

    if problems.is_empty() {
        Verdict::pass(found.join("; "))
    } else {
        Verdict::fail(problems.join("; "))
    }
}

/// The value `path` names in a JSON body, or why it cannot be read.
fn json_value(
    body: &[u8],
    truncated: bool,
    path: &str,
) -> Result<Option<serde_json::Value>, String> {
    let segments = json_path::parse(path).map_err(|e| e.to_string())?;
    if truncated {
        return Err(format!(
            "body is larger than {} MiB, so {path} cannot be read",
            MAX_BODY >> 20
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "body is not JSON, so {path} cannot be read ({e}; first {QUOTE} chars: {:?})",
            head(&String::from_utf8_lossy(body), QUOTE)
        )
    })?;
    Ok(json_path::select(&doc, &segments).cloned())
}

/// A JSON value in a reason: compact, and cut if long (a whole object can be found).
fn show(v: &serde_json::Value) -> String {
    head(&v.to_string(), QUOTE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use serde_json::json;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        Response {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: Bytes::from(body.to_string()),
            truncated: false,
        }
    }

    fn status(code: u16) -> Expect<'static> {
        Expect {
            status: Some(code),
            ..Expect::ok()
        }
    }

    /// Status 200 and the JSON value at `path`.
    fn json_at<'a>(path: &'a str, want: &'a serde_json::Value) -> Expect<'a> {
        Expect {
            json: Some((path, want)),
            ..status(200)
        }
    }

    fn reason(v: Verdict) -> String {
        match v {
            Verdict::Fail { reason } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn status_is_exact_for_checks_and_2xx_3xx_for_probes() {
        let ok = response(200, &[], "");
        assert_eq!(
            judge(&status(200), &ok, "GET /"),
            Verdict::pass("GET / answered 200")
        );
        assert_eq!(
            reason(judge(&status(200), &response(503, &[], "down"), "GET /")),
            "expected status 200, got 503"
        );
        assert_eq!(
            reason(judge(&status(204), &ok, "GET /")),
            "expected status 204, got 200"
        );
        assert!(judge(&Expect::ok(), &response(302, &[], ""), "GET /").passed());
        assert_eq!(
            reason(judge(&Expect::ok(), &response(404, &[], ""), "GET /")),
            "expected a status from 200 to 399, got 404"
        );
    }

    #[test]
    fn body_must_contain_the_text_and_a_miss_quotes_its_start() {
        let expect = Expect {
            body: Some("shop"),
            ..status(200)
        };
        assert_eq!(
            judge(&expect, &response(200, &[], "<h1>the shop</h1>"), "GET /"),
            Verdict::pass("GET / answered 200; body contains \"shop\"")
        );
        let long = format!("maintenance\n{}", "x".repeat(500));
        let r = reason(judge(&expect, &response(200, &[], &long), "GET /"));
        assert!(
            r.starts_with("body does not contain \"shop\" (first 200 chars: \"maintenance\\nxxx"),
            "{r}"
        );
        assert!(r.ends_with("x…\")"), "{r}");
        assert_eq!(
            reason(judge(&expect, &response(200, &[], ""), "GET /")),
            "body does not contain \"shop\" (the body is empty)"
        );
    }

    #[test]
    fn headers_match_by_name_in_any_case_and_value_exactly() {
        let headers = vec![
            ("X-Version".to_string(), "2".to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        let expect = Expect {
            headers: &headers,
            ..status(200)
        };
        let good = response(
            200,
            &[
                ("x-version", "1"),
                ("X-VERSION", "2"),
                ("Content-Type", "application/json"),
            ],
            "",
        );
        assert!(judge(&expect, &good, "GET /").passed());
        let bad = response(200, &[("x-version", "1")], "");
        assert_eq!(
            reason(judge(&expect, &bad, "GET /")),
            "header x-version is \"1\", expected \"2\"; header content-type is missing, expected \"application/json\""
        );
    }

    #[test]
    fn json_values_are_found_by_path_and_compared() {
        let want = json!("ok");
        let expect = json_at("$.status", &want);
        let up = response(200, &[], r#"{"status":"ok","checks":[1,2]}"#);
        assert_eq!(
            judge(&expect, &up, "GET /health"),
            Verdict::pass("GET /health answered 200; $.status is \"ok\"")
        );
        assert_eq!(
            reason(judge(
                &expect,
                &response(200, &[], r#"{"status":"down"}"#),
                "GET /"
            )),
            "$.status is \"down\", expected \"ok\""
        );
        assert_eq!(
            reason(judge(
                &expect,
                &response(200, &[], r#"{"state":"ok"}"#),
                "GET /"
            )),
            "$.status is missing, expected \"ok\""
        );
        let r = reason(judge(&expect, &response(200, &[], "<html>"), "GET /"));
        assert!(
            r.starts_with("body is not JSON, so $.status cannot be read ("),
            "{r}"
        );
        assert!(r.ends_with("first 200 chars: \"<html>\")"), "{r}");

        let count = json!(2);
        let expect = json_at("$.checks.length", &count);
        assert_eq!(
            reason(judge(&expect, &up, "GET /")),
            "$.checks.length is missing, expected 2"
        );
        let expect = json_at("$.checks[1]", &count);
        assert!(
            judge(
                &expect,
                &response(200, &[], r#"{"checks":[1,2.0]}"#),
                "GET /"
            )
            .passed()
        );

        let expect = json_at("status", &want);
        assert_eq!(
            reason(judge(&expect, &up, "GET /")),
            "JSON path `status`: a path starts with `$` at character 1"
        );
    }

    #[test]
    fn a_cut_body_is_not_parsed_as_json() {
        let want = json!("ok");
        let expect = json_at("$.status", &want);
        let mut r = response(200, &[], r#"{"status":"ok""#);
        r.truncated = true;
        assert_eq!(
            reason(judge(&expect, &r, "GET /")),
            "body is larger than 1 MiB, so $.status cannot be read"
        );
    }

    #[test]
    fn every_mismatch_is_reported_together() {
        let want = json!(true);
        let headers = vec![("x-a".to_string(), "1".to_string())];
        let expect = Expect {
            status: Some(200),
            body: Some("up"),
            headers: &headers,
            json: Some(("$.ready", &want)),
        };
        let r = reason(judge(
            &expect,
            &response(200, &[], r#"{"ready":false}"#),
            "GET /",
        ));
        assert_eq!(
            r,
            "header x-a is missing, expected \"1\"; body does not contain \"up\" (first 200 chars: \"{\\\"ready\\\":false}\"); $.ready is false, expected true"
        );
    }
}
