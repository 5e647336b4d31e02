//! `rollout daemon`: the API's auth and tenant isolation on every route (data-driven from the
//! route table, so none is forgotten), `/metrics` parsed as strict Prometheus text, a promotion
//! triggered through the API against the real Docker engine, the dashboard in headless Chromium,
//! and a graceful shutdown on SIGTERM.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use rollout::daemon::api::ROUTES;
use rollout::daemon::{Daemon, router};

use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{Project, chromium, chromium_dom, free_port, unique};

const OPS: &str = "tok-acme-ops-7c1e9a";
const APPROVER: &str = "tok-acme-approver-41b2";
const READER: &str = "tok-acme-reader-93d0";
const GLOBEX: &str = "tok-globex-ops-0a6f";

fn token_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("T_ACME_OPS", OPS),
        ("T_ACME_APPROVER", APPROVER),
        ("T_ACME_READER", READER),
        ("T_GLOBEX_OPS", GLOBEX),
    ]
}

fn environment(name: &str, client: &str) -> String {
    format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: {client}\nservices:\n  web:\n    image: shop-web:2.4.0\n    health: {{ http: {{ port: 8080, path: /healthz }} }}\n    ports: [ {{ container: 8080 }} ]\n"
    )
}

/// Two clients, one environment each, four tokens.
fn project(acme: &str, globex: &str) -> Project {
    let mut p = Project::new()
        .file(
            "rollout.yaml",
            "daemon:\n  listen: 127.0.0.1:7480\n  tokens:\n\
             \x20   - { name: acme-ops, fromEnv: T_ACME_OPS, clients: [acme], may: [read, promote, rollback, rehearse, approve] }\n\
             \x20   - { name: acme-approver, fromEnv: T_ACME_APPROVER, clients: [acme], may: [approve] }\n\
             \x20   - { name: acme-reader, fromEnv: T_ACME_READER, clients: [acme], may: [read] }\n\
             \x20   - { name: globex-ops, fromEnv: T_GLOBEX_OPS, clients: [globex], may: [read, promote, rollback, rehearse, approve] }\n",
        )
        .manifest(acme, &environment(acme, "acme"))
        .manifest(globex, &environment(globex, "globex"))
        .playbook(
            "quick",
            "apiVersion: rollout/v1\nkind: Playbook\nname: quick\nsteps:\n  - promote: { drain: 1s }\n",
        );
    for (k, v) in token_vars() {
        p = p.env(k, v);
    }
    p
}

async fn open(project: &Project) -> Arc<Daemon> {
    let vars: BTreeMap<&str, &str> = token_vars().into_iter().collect();
    let lookup = move |v: &str| vars.get(v).map(|s| s.to_string());
    Arc::new(
        Daemon::open(
            project.path(),
            env!("CARGO_BIN_EXE_rollout").into(),
            &lookup,
        )
        .await
        .expect("daemon opens"),
    )
}

async fn call(
    daemon: &Arc<Daemon>,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let response = router(daemon.clone())
        .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every route of the table (and `/metrics`): 401 without or with a bad token; 403 with a token
/// that lacks the right; 403 with another client's token, answered exactly like an environment
/// that does not exist.
#[test]
fn every_route_needs_a_token_its_right_and_its_client() {
    let (acme, globex) = (unique("apia"), unique("apig"));
    let p = project(&acme, &globex);
    runtime().block_on(async {
        let d = open(&p).await;
        let mut routes: Vec<(&str, &str, Option<rollout::manifest::config::Right>)> =
            ROUTES.iter().map(|r| (r.method, r.path, r.right)).collect();
        routes.push((
            "GET",
            "/metrics",
            Some(rollout::manifest::config::Right::Read),
        ));
        assert!(routes.len() >= 16, "the route table lost routes");
        for (method, template, right) in routes {
            let path = template
                .replace("{env}", &acme)
                .replace("{run}", "nosuchrun");
            let what = format!("{method} {template}");
            for auth in [
                None,
                Some("Bearer not-a-token".to_string()),
                Some(format!("Basic {OPS}")),
                Some(format!("Bearer {OPS}x")),
                Some("Bearer".to_string()),
            ] {
                let (status, body) = call(&d, method, &path, auth.as_deref(), "{}").await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{what} with {auth:?}: {body}"
                );
                assert!(!body.contains(OPS), "{what} echoed a token");
            }
            let Some(right) = right else {
                // The OpenAPI document: any valid token, whatever its rights and clients.
                for t in [READER, APPROVER, GLOBEX] {
                    let (status, _) = call(&d, method, &path, Some(&bearer(t)), "").await;
                    assert_eq!(status, StatusCode::OK, "{what}");
                }
                continue;
            };
            let lacking = if right == rollout::manifest::config::Right::Read {
                APPROVER
            } else {
                READER
            };
            let (status, body) = call(&d, method, &path, Some(&bearer(lacking)), "{}").await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{what} without the right: {body}"
            );
            assert!(body.contains("may not"), "{what}: {body}");
            if template.contains("{env}") {
                let (status, other) = call(&d, method, &path, Some(&bearer(GLOBEX)), "{}").await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{what} by another client: {other}"
                );
                let missing = template
                    .replace("{env}", "nosuchenv")
                    .replace("{run}", "nosuchrun");
                let (status, absent) = call(&d, method, &missing, Some(&bearer(OPS)), "{}").await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{what} of no environment");
                assert_eq!(
                    other.replace(&acme, "X"),
                    absent.replace("nosuchenv", "X"),
                    "{what}: another client's environment must answer like a missing one"
                );
                // Nothing was started or recorded by a refused call.
                assert!(d.runs.running().is_empty(), "{what} started a run");
            }
        }

        // What a token sees: its clients' environments only.
        let (status, body) = call(&d, "GET", "/api/v1/environments", Some(&bearer(OPS)), "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(&acme) && !body.contains(&globex), "{body}");
        let (_, body) = call(&d, "GET", "/api/v1/environments", Some(&bearer(GLOBEX)), "").await;
        assert!(body.contains(&globex) && !body.contains(&acme), "{body}");

        // The read routes answer inside a visible environment.
        let base = format!("/api/v1/environments/{acme}");
        let (status, body) = call(&d, "GET", &base, Some(&bearer(READER)), "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let status_json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(status_json["environment"], acme.as_str());
        assert_eq!(status_json["client"], "acme");
        assert_eq!(status_json["services"][0]["desiredImage"], "shop-web:2.4.0");
        let (status, body) = call(
            &d,
            "GET",
            &format!("{base}/history"),
            Some(&bearer(READER)),
            "",
        )
        .await;
        assert_eq!(
            (status, body.contains("\"revisions\":[]")),
            (StatusCode::OK, true),
            "{body}"
        );
        let (status, body) = call(
            &d,
            "GET",
            &format!("{base}/runs"),
            Some(&bearer(READER)),
            "",
        )
        .await;
        assert_eq!(
            (status, body.contains("\"runs\":[]")),
            (StatusCode::OK, true),
            "{body}"
        );
        let (status, body) = call(
            &d,
            "GET",
            &format!("{base}/runs/nosuchrun"),
            Some(&bearer(READER)),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = call(
            &d,
            "GET",
            &format!("{base}/runs/nosuchrun/report"),
            Some(&bearer(READER)),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = call(
            &d,
            "GET",
            &format!("{base}/approvals"),
            Some(&bearer(READER)),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"waiting\":null"), "{body}");
        // Approving with nothing parked is bad input, said clearly; a bad body comes after auth.
        let (status, body) = call(
            &d,
            "POST",
            &format!("{base}/approvals"),
            Some(&bearer(APPROVER)),
            r#"{"by":"client"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains("waiting for an approval"), "{body}");
        let (status, body) = call(
            &d,
            "POST",
            &format!("{base}/promote"),
            Some(&bearer(OPS)),
            "{bad",
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(d.runs.running().is_empty());

        // Without `daemon.gitops` and `daemon.rehearsals`: their views say so, and a retry is a
        // clear conflict (after the right and the tenant were checked).
        let (status, body) = call(&d, "GET", "/api/v1/gitops", Some(&bearer(READER)), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&body)["configured"], false, "{body}");
        let (status, body) = call(&d, "GET", "/api/v1/rehearsals", Some(&bearer(READER)), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&body)["configured"], false, "{body}");
        let (status, body) = call(
            &d,
            "POST",
            &format!("{base}/gitops/retry"),
            Some(&bearer(OPS)),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("no GitOps controller"), "{body}");

        // The OpenAPI document lists every route of the table.
        let (_, body) = call(&d, "GET", "/api/v1/openapi.json", Some(&bearer(READER)), "").await;
        let doc: serde_json::Value = serde_json::from_str(&body).expect("openapi json");
        assert_eq!(doc["openapi"], "3.0.3");
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} is not documented", r.method, r.path);
            assert!(op["responses"]["401"].is_object());
            if r.right.is_some() {
                assert!(op["responses"]["403"].is_object());
            }
        }

        // Metrics: strict Prometheus text, the token's environments only, and drift computed
        // against the engine (nothing of this environment runs: it differs from its manifest).
        let (status, text) = call(&d, "GET", "/metrics", Some(&bearer(READER)), "").await;
        assert_eq!(status, StatusCode::OK);
        let samples = parse_prometheus(&text);
        assert!(
            !text.contains(&globex),
            "metrics leak another client:\n{text}"
        );
        assert_eq!(
            value(&samples, "rollout_drift", &[("environment", &acme)]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &samples,
                "rollout_drift_services",
                &[("environment", &acme)]
            ),
            Some(1.0)
        );
        let (_, text) = call(&d, "GET", "/metrics", Some(&bearer(GLOBEX)), "").await;
        parse_prometheus(&text);
        assert!(
            !text.contains(&acme),
            "metrics leak another client:\n{text}"
        );
    });
}

/// One sample of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// A strict parser of the Prometheus text format (0.0.4): `# HELP` and `# TYPE` once per family
/// and before its samples, known types, valid metric and label names, quoted label values with
/// only `\\`, `\"` and `\n` escapes, no duplicate label, a float value, a newline at the end;
/// every name starts with `rollout_`. Panics on the first violation, naming the line.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, ()> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: `{line}`", n + 1);
        assert!(!line.is_empty(), "{at}: empty line");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("{at}: no metric name"));
            assert!(is_name(name, true), "{at}: bad metric name");
            match kw {
                Some("HELP") => {
                    assert!(helps.insert(name.into(), ()).is_none(), "{at}: second HELP");
                    assert!(tail.is_some_and(|t| !t.is_empty()), "{at}: empty HELP");
                }
                Some("TYPE") => {
                    let t = tail.unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "summary", "histogram", "untyped"].contains(&t),
                        "{at}: unknown type"
                    );
                    assert!(
                        !samples.iter().any(|s: &Sample| s.name.starts_with(name)),
                        "{at}: TYPE after samples"
                    );
                    assert!(
                        types.insert(name.into(), t.into()).is_none(),
                        "{at}: second TYPE"
                    );
                }
                _ => panic!("{at}: a comment that is neither HELP nor TYPE"),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("{at}: no value"),
        };
        assert!(is_name(name, true), "{at}: bad metric name");
        assert!(name.starts_with("rollout_"), "{at}: no rollout_ prefix");
        let family = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|suf| {
                let base = name.strip_suffix(suf)?;
                matches!(
                    types.get(base).map(String::as_str),
                    Some("summary" | "histogram")
                )
                .then_some(base)
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{at}: sample before its TYPE");
        let mut labels = BTreeMap::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                let (start, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("{at}: unclosed labels"));
                if c == '}' {
                    end = start;
                    break;
                }
                let mut lname = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    lname.push(c);
                }
                assert!(is_name(&lname, false), "{at}: bad label name `{lname}`");
                assert_eq!(
                    chars.next().map(|x| x.1),
                    Some('"'),
                    "{at}: unquoted label value"
                );
                let mut v = String::new();
                loop {
                    match chars.next().map(|x| x.1) {
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|x| x.1) {
                            Some('\\') => v.push('\\'),
                            Some('"') => v.push('"'),
                            Some('n') => v.push('\n'),
                            other => panic!("{at}: bad escape {other:?}"),
                        },
                        Some('\n') | None => panic!("{at}: unterminated label value"),
                        Some(c) => v.push(c),
                    }
                }
                assert!(labels.insert(lname, v).is_none(), "{at}: duplicate label");
                match chars.peek().map(|x| x.1) {
                    Some(',') => {
                        chars.next();
                    }
                    Some('}') => {}
                    other => panic!("{at}: expected , or }} after a label, got {other:?}"),
                }
            }
            &body[end + 1..]
        } else {
            rest
        };
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{at}: no space before the value"));
        let mut fields = value.split(' ');
        let v = fields.next().unwrap_or_default();
        let parsed: f64 = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => v
                .parse()
                .unwrap_or_else(|_| panic!("{at}: bad value `{v}`")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("{at}: bad timestamp"));
        }
        assert!(fields.next().is_none(), "{at}: trailing text");
        assert!(
            seen.insert(format!("{name}{labels:?}")),
            "{at}: duplicate series"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: parsed,
        });
    }
    samples
}

#[test]
fn the_prometheus_parser_is_strict() {
    let ok = "# HELP rollout_x X.\n# TYPE rollout_x gauge\nrollout_x{a=\"1\",b=\"q\\\"\"} 2\n";
    assert_eq!(parse_prometheus(ok)[0].labels["b"], "q\"");
    for bad in [
        "rollout_x 1\n",                                          // no TYPE
        "# TYPE rollout_x gauge\nrollout_x{a=1} 1\n",             // unquoted
        "# TYPE rollout_x gauge\nrollout_x{a=\"1\"} one\n",       // not a number
        "# TYPE rollout_x gauge\nrollout_x 1\nrollout_x 2\n",     // duplicate series
        "# TYPE rollout_x gauge\nrollout_x{a=\"1\",a=\"2\"} 1\n", // duplicate label
        "# TYPE other_x gauge\nother_x 1\n",                      // no prefix
        "# TYPE rollout_x gauge\nrollout_x 1",                    // no final newline
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_prometheus(bad)).is_err(),
            "accepted: {bad:?}"
        );
    }
}

/// A tiny HTTP/1.1 client (Connection: close): status, headers (lowercase names), body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let hs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = String::new();
    if hs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        loop {
            let (size, after) = rest.split_once("\r\n").expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
            if n == 0 {
                break;
            }
            body.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
    } else {
        body = rest.to_string();
    }
    (status, hs, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Serves `html` to every GET on a loopback port for the rest of the test process; returns its URL.
fn serve_page(html: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
        }
    });
    url
}

/// A daemon process, stopped if the test fails before it does.
struct Kill(std::process::Child);

impl Kill {
    /// Starts `command` (a `rollout daemon`) and waits until it listens on `addr`.
    fn listening(command: &mut std::process::Command, addr: &str) -> Kill {
        let daemon = Kill(command.spawn().expect("start the daemon"));
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the daemon does not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    /// Sends it SIGTERM.
    fn terminate(&self) {
        let pid = self.0.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
    }

    /// Waits for it to exit, at most `limit`; returns its status and what it wrote to stderr
    /// (when that was piped).
    fn exit_within(&mut self, limit: Duration, what: &str) -> (std::process::ExitStatus, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                break s;
            }
            assert!(started.elapsed() < limit, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            e.read_to_string(&mut err).ok();
        }
        (status, err)
    }
}

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A playbook whose smoke step in the test version takes `seconds`, so a signal can arrive while
/// a run is in flight.
fn slow_playbook(seconds: u32) -> String {
    format!(
        "apiVersion: rollout/v1\nkind: Playbook\nname: slow\nsteps:\n  - testEnv: {{}}\n  - smoke:\n      target: test\n      checks:\n        - exec: {{ service: web, command: [/bin/busybox, sleep, \"{seconds}\"], timeout: 60s }}\n  - promote: {{ drain: 1s }}\n"
    )
}

/// Starts a promotion of `env` with the slow playbook through the API and waits until the run
/// has reached its smoke step; returns the run's id.
fn promote_until_smoke(addr: &str, token: &str, env: &str) -> String {
    let auth = bearer(token);
    let h = [("Authorization", auth.as_str())];
    let base = format!("/api/v1/environments/{env}");
    let (status, _, body) = http(
        addr,
        "POST",
        &format!("{base}/promote"),
        &h,
        r#"{"playbook":"slow"}"#,
    );
    assert_eq!(status, 202, "{body}");
    let run = json(&body)["run"].as_str().expect("run").to_string();
    let started = Instant::now();
    loop {
        let (_, _, body) = http(addr, "GET", &format!("{base}/runs/{run}"), &h, "");
        if json(&body)["output"]
            .as_str()
            .is_some_and(|o| o.to_lowercase().contains("smoke"))
        {
            return run;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no smoke step: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The real daemon on 127.0.0.1: a promotion triggered through the API runs against the real
/// engine as a child `rollout promote`, is recorded with the token's name, shows in metrics and
/// on the dashboard (logged in through its form, in headless Chromium); SIGTERM stops it with 0.
#[test]
fn a_promotion_through_the_api_then_the_dashboard_then_sigterm() {
    let (acme, globex) = (unique("apip"), unique("apiq"));
    let _cleanup = Cleanup {
        environment: acme.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let p = project(&acme, &globex);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut daemon = Kill::listening(
        p.command(&["daemon", "--listen", &addr])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        &addr,
    );
    let auth = bearer(OPS);
    let h = [("Authorization", auth.as_str())];

    let base = format!("/api/v1/environments/{acme}");
    let (status, _, body) = http(
        &addr,
        "POST",
        &format!("{base}/promote"),
        &h,
        r#"{"playbook":"quick","reason":"CHG-42"}"#,
    );
    assert_eq!(status, 202, "{body}");
    let run = json(&body)["run"].as_str().expect("run id").to_string();

    // The run goes on in its own process; poll it until it ends.
    let started = Instant::now();
    let record = loop {
        let (status, _, body) = http(&addr, "GET", &format!("{base}/runs/{run}"), &h, "");
        assert_eq!(status, 200, "{body}");
        let v = json(&body);
        if !v["daemon"]["exitCode"].is_null() {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the run did not end: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(record["daemon"]["exitCode"], 0, "{record:#}");
    assert_eq!(record["record"]["outcome"], "promoted", "{record:#}");
    assert_eq!(record["record"]["user"], "api:acme-ops");
    let output = record["output"].as_str().unwrap_or_default();
    assert!(output.contains(&format!("run {run}\n")), "{output}");
    for t in [OPS, APPROVER, READER, GLOBEX] {
        assert!(!output.contains(t), "a token reached the run's output");
    }
    assert!(record["journal"].as_array().is_some_and(|j| !j.is_empty()));

    let (_, _, body) = http(&addr, "GET", &format!("{base}/history"), &h, "");
    let history = json(&body);
    assert_eq!(history["revisions"][0]["run"], run.as_str());
    assert_eq!(history["revisions"][0]["user"], "api:acme-ops");
    assert_eq!(history["revisions"][0]["reason"], "CHG-42");
    let (status, _, body) = http(
        &addr,
        "GET",
        &format!("{base}/runs/{run}/report?format=json"),
        &h,
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(json(&body)["outcome"]["outcome"], "promoted");
    let (_, _, body) = http(&addr, "GET", &base, &h, "");
    let st = json(&body);
    assert_eq!(st["revision"]["run"], run.as_str(), "{st:#}");
    assert_eq!(
        st["services"][0]["containers"][0]["image"],
        "shop-web:2.4.0"
    );

    // Metrics after it: the run by outcome, and no drift any more.
    let (status, hs, text) = http(&addr, "GET", "/metrics", &h, "");
    assert_eq!(status, 200);
    assert!(
        hs.iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4"))
    );
    let samples = parse_prometheus(&text);
    assert_eq!(
        value(
            &samples,
            "rollout_runs_total",
            &[
                ("environment", &acme),
                ("kind", "promotion"),
                ("outcome", "promoted")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&samples, "rollout_drift", &[("environment", &acme)]),
        Some(0.0),
        "{text}"
    );
    assert!(
        value(
            &samples,
            "rollout_step_duration_seconds_count",
            &[("environment", &acme)]
        )
        .is_some(),
        "{text}"
    );

    // The dashboard: a login page without the cookie; a bad token is refused; a good one sets
    // an HttpOnly cookie.
    let page = format!("/env/{acme}");
    let (status, _, body) = http(&addr, "GET", &page, &[], "");
    assert_eq!(status, 401);
    assert!(
        body.contains("<form method=\"post\" action=\"/login\">"),
        "{body}"
    );
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, body) = http(
        &addr,
        "POST",
        "/login",
        &form,
        &format!("token=nope&next={page}"),
    );
    assert_eq!(status, 401);
    assert!(body.contains("Unknown token."));
    let (status, hs, _) = http(
        &addr,
        "POST",
        "/login",
        &form,
        &format!("token={OPS}&next={page}"),
    );
    assert_eq!(status, 303);
    let cookie = hs
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.clone())
        .expect("cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let (status, _, other) = http(
        &addr,
        "GET",
        &format!("/env/{globex}"),
        &[("Cookie", &format!("rollout_token={OPS}"))],
        "",
    );
    assert_eq!(status, 403, "{other}");

    // In Chromium: a page that submits the login form (as a person would), then the
    // environment page it redirects to. The form page is served over http from 127.0.0.1 (the
    // daemon's site): from a file:// page, the cross-site navigation swaps renderer processes
    // and headless Chromium's --dump-dom then sometimes prints nothing on a loaded machine.
    let profile = tempfile::tempdir().expect("profile");
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("daemon");
    std::fs::create_dir_all(&artifacts).expect("artifacts");
    let url = serve_page(format!(
        "<!doctype html><html><body onload=\"document.forms[0].submit()\">\
         <form method=\"post\" action=\"http://{addr}/login\">\
         <input name=\"token\" value=\"{OPS}\"><input name=\"next\" value=\"{page}\"></form></body></html>"
    ));
    let dom = chromium_dom(profile.path(), &url);
    std::fs::write(artifacts.join("environment.dom.html"), &dom).expect("dom");
    assert!(
        dom.contains(&format!("<h1>{acme} ")),
        "not the environment page:\n{dom}"
    );
    assert!(
        dom.contains("What runs") && dom.contains("shop-web:2.4.0"),
        "{dom}"
    );
    assert!(
        dom.contains(&run) && dom.contains("promoted") && dom.contains("CHG-42"),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("/env/{acme}/runs/{run}/report")),
        "{dom}"
    );
    assert!(!dom.contains(OPS), "the token is in the page");
    // The cookie stays in the browser: the page itself, loaded directly, then its screenshot.
    let direct = format!("http://{addr}{page}");
    let again = chromium_dom(profile.path(), &direct);
    assert!(
        again.contains(&format!("<h1>{acme} ")),
        "the cookie did not stay:\n{again}"
    );
    let png = artifacts.join("environment.png");
    chromium(
        profile.path(),
        &[
            "--window-size=1200,1400",
            &format!("--screenshot={}", png.display()),
        ],
        &direct,
    );
    let bytes = std::fs::read(&png).expect("screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
    let (status, hs, report) = http(
        &addr,
        "GET",
        &format!("/env/{acme}/runs/{run}/report"),
        &[("Cookie", &format!("rollout_token={OPS}"))],
        "",
    );
    assert_eq!(status, 200);
    assert!(
        hs.iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/html"))
    );
    assert!(report.contains(&run));

    // SIGTERM: stops accepting and exits 0.
    daemon.terminate();
    let (status, err) = daemon.exit_within(Duration::from_secs(30), "the daemon did not stop");
    assert_eq!(status.code(), Some(0), "{err}");
    for t in [OPS, APPROVER, READER, GLOBEX] {
        assert!(!err.contains(t), "a token was logged");
    }
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still listening"
    );
}

/// SIGTERM while a run triggered through the API is in flight: the daemon forwards the signal,
/// the run stops at its safe point (its test version removed, production untouched, recorded as
/// ended), and only then does the daemon exit 0.
#[test]
fn sigterm_waits_for_the_run_in_flight_to_reach_its_end() {
    let (acme, globex) = (unique("apis"), unique("apit"));
    let _cleanup = Cleanup {
        environment: acme.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let p = project(&acme, &globex).playbook("slow", &slow_playbook(6));
    let addr = format!("127.0.0.1:{}", free_port());
    let mut daemon = Kill::listening(
        p.command(&["-v", "daemon", "--listen", &addr])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        &addr,
    );
    // Let it reach its smoke check in the test version.
    let run = promote_until_smoke(&addr, OPS, &acme);
    daemon.terminate();
    let (status, err) = daemon.exit_within(Duration::from_secs(90), "the daemon did not stop");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("forwarding SIGTERM to the run"), "{err}");
    // The run had ended when the daemon exited: its record is final and its output kept.
    let report = p.run(&["report", &run, "-o", "json"]).code(0).json();
    let outcome = report["outcome"]["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ["cancelled", "failed"].contains(&outcome.as_str()),
        "the run was not stopped: {report:#}"
    );
    let log = std::fs::read_to_string(p.path().join(format!(".rollout/daemon/runs/{run}.log")))
        .expect("the run's output is kept");
    assert!(log.contains(&format!("run {run}")), "{log}");
    let leftovers = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=rollout.environment={acme}"),
        ])
        .output()
        .expect("docker ps");
    assert!(
        leftovers.stdout.is_empty(),
        "the stopped run left containers behind"
    );
}

/// An approval through the API is the same record as `rollout approve`'s: it names the token,
/// the next promote resumes the run; a token that started the run cannot approve it.
#[test]
fn an_approval_through_the_api_is_recorded_like_rollout_approve() {
    let (acme, globex) = (unique("apiv"), unique("apiw"));
    let _cleanup = Cleanup {
        environment: acme.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let p = project(&acme, &globex).playbook(
        "gated",
        "apiVersion: rollout/v1\nkind: Playbook\nname: gated\nsteps:\n  - approve: { by: client }\n  - promote: { drain: 1s }\n",
    );
    let parked = p
        .run_with(
            &["promote", "-e", &acme, "-p", "gated", "--yes"],
            &[("USER", "api:acme-approver")],
        )
        .code(3);
    let run = parked.run_id();
    runtime().block_on(async {
        let d = open(&p).await;
        let base = format!("/api/v1/environments/{acme}");
        let (status, body) = call(
            &d,
            "GET",
            &format!("{base}/approvals"),
            Some(&bearer(READER)),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["waiting"]["run"], run.as_str(), "{body}");
        assert_eq!(v["waiting"]["awaiting"][0]["gate"], "client");
        // The two-person rule: the token whose name started the run is refused.
        let (status, body) = call(
            &d,
            "POST",
            &format!("{base}/approvals"),
            Some(&bearer(APPROVER)),
            r#"{"by":"client"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("two-person rule"), "{body}");
        let (status, body) = call(
            &d,
            "POST",
            &format!("{base}/approvals"),
            Some(&bearer(OPS)),
            &format!(r#"{{"run":"{run}","by":"client","note":"ok <b>go</b>"}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, body) = call(
            &d,
            "GET",
            &format!("{base}/approvals"),
            Some(&bearer(READER)),
            "",
        )
        .await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["grants"][0]["who"], "api:acme-ops", "{body}");
        assert_eq!(v["grants"][0]["note"], "ok <b>go</b>");
    });
    let audit = std::fs::read_to_string(p.path().join(".rollout/audit.log")).expect("audit log");
    assert!(
        audit.contains("approvalRecorded") && audit.contains("api:acme-ops"),
        "{audit}"
    );
    p.run(&["promote", "-e", &acme, "-p", "gated", "--yes"])
        .code(0)
        .stdout_has(&format!("resuming run {run}"));
}

/// The edge proxy's per-backend counters reach `/metrics`: requests sent through an
/// environment's public port show as requests and 2xx responses of its backend.
#[test]
fn metrics_carry_the_edge_proxys_per_backend_counters() {
    let (acme, globex) = (unique("apix"), unique("apiy"));
    let _cleanup = Cleanup {
        environment: acme.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let port = free_port();
    let p = project(&acme, &globex).manifest(
        &acme,
        &format!(
            "apiVersion: rollout/v1\nkind: Environment\nname: {acme}\nclient: acme\nservices:\n  web:\n    image: shop-web:2.4.0\n    ports: [ {{ name: http, container: 8080, public: {port} }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }} }}\n"
        ),
    );
    p.run(&["promote", "-e", &acme, "-p", "quick", "--yes"])
        .code(0);
    let public = format!("127.0.0.1:{port}");
    for _ in 0..5 {
        let (status, _, _) = http(&public, "GET", "/", &[], "");
        assert_eq!(status, 200);
    }
    runtime().block_on(async {
        let d = open(&p).await;
        let (status, text) = call(&d, "GET", "/metrics", Some(&bearer(READER)), "").await;
        assert_eq!(status, StatusCode::OK);
        let samples = parse_prometheus(&text);
        let requests: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == "rollout_proxy_backend_requests_total" && s.labels["environment"] == acme
            })
            .collect();
        assert!(
            requests.iter().map(|s| s.value).sum::<f64>() >= 5.0,
            "the proxy's requests are not in the metrics:\n{text}"
        );
        let ok: f64 = samples
            .iter()
            .filter(|s| {
                s.name == "rollout_proxy_backend_responses_total"
                    && s.labels["environment"] == acme
                    && s.labels["class"] == "2xx"
            })
            .map(|s| s.value)
            .sum();
        assert!(ok >= 5.0, "{text}");
        assert!(
            value(&samples, "rollout_scrape_error", &[("environment", &acme)]).is_none(),
            "{text}"
        );
    });
}

/// A second SIGTERM does not wait: the run is ended at once (leaving its journal and record), the
/// daemon exits 130, and the next command settles what the run left.
#[test]
fn a_second_sigterm_exits_at_once() {
    let (acme, globex) = (unique("apiz"), unique("apiu"));
    let _cleanup = Cleanup {
        environment: acme.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let p = project(&acme, &globex).playbook("slow", &slow_playbook(20));
    let addr = format!("127.0.0.1:{}", free_port());
    let mut daemon = Kill::listening(
        p.command(&["daemon", "--listen", &addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
        &addr,
    );
    let run = promote_until_smoke(&addr, OPS, &acme);
    for _ in 0..2 {
        daemon.terminate();
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, _) = daemon.exit_within(
        Duration::from_secs(10),
        "the daemon waited after a second signal",
    );
    assert_eq!(status.code(), Some(130));
    // The run was ended too: its lock has no live holder left (the next promote or rollback
    // takes it over and settles what the journal holds).
    let started = Instant::now();
    loop {
        let status = p.run(&["status", "-e", &acme, "-o", "json"]).code(0).json();
        if status["lock"].is_null() || status["lock"]["alive"] == false {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the run still holds its lock: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It was ended during its smoke step, before production was touched: the next promote
    // closes its record and goes on.
    p.run(&["promote", "-e", &acme, "-p", "quick", "--yes"])
        .code(0)
        .stdout_has(&format!("Closed the record of run {run}"));
}

/// Issue 7: the real daemon with `daemon.gitops` and `daemon.rehearsals` shows their state through
/// the API (tenant-filtered), `/metrics` and the dashboard, and a failed commit is retried from
/// the API and from the dashboard's Retry button (pressed in headless Chromium), while the same
/// form posted from another origin, even of the same site with the cookie, is refused.
#[test]
fn the_gitops_controller_and_the_schedule_through_the_api_metrics_and_the_dashboard() {
    use crate::gitops::{QUICK, Repo, manifest};
    use crate::support::browser::Browser;

    let (acme, globex) = (unique("gsa"), unique("gsg"));
    // Only in the repository (the controller promotes it), and only in the project folder.
    let (gonly, pon) = (unique("gso"), unique("gsp"));
    let _cleanup = Cleanup {
        environment: gonly.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let broken = |name: &str, client: &str| {
        format!(
            "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: {client}\nservices: 1\n"
        )
    };
    let nightly = "apiVersion: rollout/v1\nkind: Playbook\nname: nightly\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: web, path: /healthz } } ] }\n";
    let repo = Repo::new();
    let c1 = repo.commit(
        "acme and globex broken, gonly fine",
        &[
            (&format!("manifests/{acme}.yaml"), &broken(&acme, "acme")),
            (
                &format!("manifests/{globex}.yaml"),
                &broken(&globex, "globex"),
            ),
            (
                &format!("manifests/{gonly}.yaml"),
                &manifest(&gonly, "shop-web:2.4.0", false),
            ),
            ("playbooks/quick.yaml", QUICK),
            ("playbooks/nightly.yaml", nightly),
        ],
    );
    let addr = format!("127.0.0.1:{}", free_port());
    // A rehearsal of gonly once, 40 s from now (after its first promotion); a nightly one of
    // acme that the daemon "missed" for three days; one of globex.
    let soon = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 40)
        .expect("time")
        .to_zoned(jiff::tz::TimeZone::UTC);
    let once = format!("{} {} {} * * *", soon.second(), soon.minute(), soon.hour());
    let mut p = Project::new()
        .file(
            "rollout.yaml",
            format!(
                "proxy: {{ bind: 127.0.0.1 }}\ndaemon:\n  listen: {addr}\n  tokens:\n\
                 \x20   - {{ name: acme-ops, fromEnv: T_ACME_OPS, clients: [acme], may: [read, promote, rollback, rehearse, approve] }}\n\
                 \x20   - {{ name: acme-approver, fromEnv: T_ACME_APPROVER, clients: [acme], may: [approve] }}\n\
                 \x20   - {{ name: acme-reader, fromEnv: T_ACME_READER, clients: [acme], may: [read] }}\n\
                 \x20   - {{ name: globex-ops, fromEnv: T_GLOBEX_OPS, clients: [globex], may: [read, promote, rollback, rehearse, approve] }}\n\
                 \x20 gitops: {{ repo: \"{}\", branch: main, path: ., interval: 1s, playbook: quick }}\n\
                 \x20 rehearsals:\n\
                 \x20   - {{ environment: {gonly}, playbook: nightly, schedule: \"{once}\", tz: UTC }}\n\
                 \x20   - {{ environment: {acme}, schedule: \"0 2 * * *\", tz: Europe/Paris }}\n\
                 \x20   - {{ environment: {globex}, schedule: \"0 3 * * *\", tz: UTC }}\n",
                repo.origin.display()
            ),
        )
        .manifest(&acme, &environment(&acme, "acme"))
        .manifest(&globex, &environment(&globex, "globex"))
        .manifest(&pon, &environment(&pon, "acme"));
    for (k, v) in token_vars() {
        p = p.env(k, v);
    }
    let three_days_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72);
    let seeded = serde_json::json!({
        "entry": format!("{acme}/-@0 2 * * * Europe/Paris"), "environment": acme,
        "due": three_days_ago.to_string(), "result": "ran", "run": "r-before", "outcome": "passed",
        "exit": 0, "started": three_days_ago.to_string(), "finished": three_days_ago.to_string(),
    });
    std::fs::create_dir_all(p.path().join(".rollout")).expect("state dir");
    std::fs::write(
        p.path().join(".rollout/rehearsals.jsonl"),
        format!("{seeded}\n"),
    )
    .expect("seed the log");

    let mut daemon = Kill::listening(
        p.command(&["-v", "daemon"])
            .env("NO_COLOR", "1")
            .env("ROLLOUT_STATIC_BINARY", crate::support::static_binary())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
        &addr,
    );
    let get = |token: &str, path: &str| {
        let auth = bearer(token);
        let (status, _, body) = http(&addr, "GET", path, &[("Authorization", &auth)], "");
        assert_eq!(status, 200, "GET {path}: {body}");
        json(&body)
    };
    let post = |token: &str, path: &str| {
        let auth = bearer(token);
        let (status, _, body) = http(&addr, "POST", path, &[("Authorization", &auth)], "");
        (status, json(&body))
    };
    let env_of = |view: &serde_json::Value, name: &str| {
        view["environments"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
    };

    // The controller's first ticks: acme's commit does not load, gonly is promoted and in sync.
    let started = Instant::now();
    let view = loop {
        let v = get(OPS, "/api/v1/gitops");
        let acme_failed = env_of(&v, &acme).is_some_and(|e| !e["failedCommit"].is_null());
        let gonly_synced = env_of(&v, &gonly)
            .is_some_and(|e| e["commitApplied"] == c1.as_str() && e["drift"]["state"] == "inSync");
        if acme_failed && gonly_synced {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the controller did not get there: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(view["configured"], true);
    assert_eq!(view["repo"], repo.origin.display().to_string());
    assert_eq!(view["branch"], "main");
    assert_eq!(view["fetch"]["state"], "ok");
    assert_eq!(view["commit"], c1.as_str());
    assert_eq!(view["fetchFailures"], 0);
    assert!(view["lastFetchOk"].is_string(), "{view:#}");
    // The token's clients' environments only.
    let names: Vec<&str> = view["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{view:#}");
    assert!(names.contains(&acme.as_str()) && names.contains(&gonly.as_str()));
    let a = env_of(&view, &acme).expect("acme");
    assert_eq!(a["client"], "acme");
    assert_eq!(a["failedCommit"]["commit"], c1.as_str());
    assert_eq!(a["failedCommit"]["outcome"], "invalid");
    let error = a["failedCommit"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("{acme}.yaml:5:")), "{error}");
    assert!(a["commitApplied"].is_null());
    assert_eq!(a["retryPending"], false);
    let g = env_of(&view, &gonly).expect("gonly");
    assert_eq!(g["lastAttempt"]["outcome"], "promoted");
    assert!(g["failedCommit"].is_null());
    let run = g["lastAttempt"]["run"]
        .as_str()
        .expect("run id")
        .to_string();
    assert_eq!(
        g["lastAttempt"]["links"]["report"],
        format!("/api/v1/environments/{gonly}/runs/{run}/report")
    );
    let other = get(GLOBEX, "/api/v1/gitops");
    let names: Vec<&str> = other["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, [globex.as_str()], "{other:#}");
    assert!(!other.to_string().contains(&acme) && !other.to_string().contains(&gonly));

    // An environment only the repository has is one of its client's environments: listed,
    // its status read from the checkout, its report reachable; not for another client.
    let list = get(OPS, "/api/v1/environments").to_string();
    assert!(list.contains(&gonly) && list.contains(&pon), "{list}");
    assert!(
        !get(GLOBEX, "/api/v1/environments")
            .to_string()
            .contains(&gonly)
    );
    let st = get(OPS, &format!("/api/v1/environments/{gonly}"));
    assert_eq!(
        st["services"][0]["desiredImage"], "shop-web:2.4.0",
        "{st:#}"
    );
    let report = get(
        READER,
        &format!("/api/v1/environments/{gonly}/runs/{run}/report?format=json"),
    );
    assert_eq!(report["outcome"]["outcome"], "promoted", "{report:#}");
    let auth = bearer(GLOBEX);
    let (status, _, _) = http(
        &addr,
        "GET",
        &format!("/api/v1/environments/{gonly}"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 403);

    // Retries through the API: another client's environment answers like a missing one; one
    // the controller does not follow, or with nothing failed, is a clear conflict.
    let (s1, other) = post(GLOBEX, &format!("/api/v1/environments/{acme}/gitops/retry"));
    let (s2, missing) = post(OPS, "/api/v1/environments/nosuchenv/gitops/retry");
    assert_eq!((s1, s2), (403, 403));
    assert_eq!(
        other.to_string().replace(&acme, "X"),
        missing.to_string().replace("nosuchenv", "X")
    );
    let (status, body) = post(OPS, &format!("/api/v1/environments/{pon}/gitops/retry"));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not follow")),
        "{body}"
    );
    let (status, body) = post(OPS, &format!("/api/v1/environments/{gonly}/gitops/retry"));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing to retry")),
        "{body}"
    );
    let (status, body) = post(READER, &format!("/api/v1/environments/{acme}/gitops/retry"));
    assert_eq!(status, 403, "{body}");
    let before = a["lastAttempt"]["at"].clone();
    let asked = Instant::now();
    let (status, body) = post(OPS, &format!("/api/v1/environments/{acme}/gitops/retry"));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["commit"], c1.as_str());
    let retried = loop {
        let e = env_of(&get(OPS, "/api/v1/gitops"), &acme).expect("acme");
        if e["lastAttempt"]["at"] != before {
            break e;
        }
        assert!(asked.elapsed() < Duration::from_secs(60), "no retry: {e:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "api retry: attempted {:?} after the request",
        asked.elapsed()
    );
    assert_eq!(retried["lastAttempt"]["trigger"], "retry", "{retried:#}");
    assert_eq!(retried["lastAttempt"]["outcome"], "invalid");
    assert_eq!(
        retried["failedCommit"]["commit"],
        c1.as_str(),
        "still waiting"
    );

    // The scheduled rehearsal of gonly runs; the nightly one of acme was missed three days.
    let started = Instant::now();
    let entries = loop {
        let v = get(OPS, "/api/v1/rehearsals");
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        if entries
            .iter()
            .any(|e| e["environment"] == gonly && e["last"]["result"] != serde_json::Value::Null)
        {
            break entries;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the scheduled rehearsal did not run: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        entries.len(),
        2,
        "another client's schedule is shown: {entries:#?}"
    );
    let g = entries
        .iter()
        .find(|e| e["environment"] == gonly)
        .expect("gonly");
    assert_eq!(g["last"]["result"], "passed", "{g:#}");
    assert_eq!(g["playbook"], "nightly");
    let rehearsal = g["last"]["run"].as_str().expect("run").to_string();
    let report = get(
        READER,
        &format!(
            "{}?format=json",
            g["last"]["links"]["report"].as_str().expect("link")
        ),
    );
    assert_eq!(report["kind"], "rehearsal", "{report:#}");
    let n = entries
        .iter()
        .find(|e| e["environment"] == acme)
        .expect("acme");
    let missed = n["missed"].as_u64().expect("missed");
    assert!((2..=4).contains(&missed), "{n:#}");
    assert_eq!(n["last"]["result"], "missed");
    assert_eq!(n["schedule"], "0 2 * * *");
    assert_eq!(n["tz"], "Europe/Paris");
    assert!(
        n["nextDue"]
            .as_str()
            .is_some_and(|t| t.ends_with(":00:00Z")),
        "{n:#}"
    );
    let theirs = get(GLOBEX, "/api/v1/rehearsals");
    assert_eq!(
        theirs["entries"].as_array().map(Vec::len),
        Some(1),
        "{theirs:#}"
    );

    // Metrics: the controller's and the scheduler's, for the token's environments only.
    let auth = bearer(READER);
    let (_, _, text) = http(&addr, "GET", "/metrics", &[("Authorization", &auth)], "");
    let samples = parse_prometheus(&text);
    assert!(!text.contains(&globex), "{text}");
    let at = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(
        at("rollout_gitops_failed_commit", &[("environment", &acme)]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at("rollout_gitops_failed_commit", &[("environment", &gonly)]),
        Some(0.0)
    );
    assert_eq!(
        at("rollout_gitops_drift", &[("environment", &gonly)]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(at("rollout_gitops_fetch_ok", &[]), Some(1.0));
    assert_eq!(at("rollout_gitops_fetch_failures_total", &[]), Some(0.0));
    let fetched = at("rollout_gitops_last_fetch_success_timestamp_seconds", &[]).expect("fetched");
    assert!((jiff::Timestamp::now().as_second() as f64 - fetched).abs() < 120.0);
    assert_eq!(
        at(
            "rollout_scheduled_rehearsals_total",
            &[("environment", &acme), ("outcome", "missed")]
        ),
        Some(missed as f64),
        "{text}"
    );
    assert_eq!(
        at(
            "rollout_scheduled_rehearsals_total",
            &[("environment", &acme), ("outcome", "passed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        at(
            "rollout_scheduled_rehearsals_total",
            &[("environment", &gonly), ("outcome", "passed")]
        ),
        Some(1.0)
    );
    assert!(
        at(
            "rollout_scheduled_rehearsal_next_due_timestamp_seconds",
            &[("environment", &acme)]
        )
        .is_some()
    );
    // The plan-based drift of an environment only the repository has, read from the checkout.
    assert_eq!(
        at("rollout_drift", &[("environment", &gonly)]),
        Some(0.0),
        "{text}"
    );

    // The dashboard in Chromium: log in through the form, as a person would.
    let mut browser = Browser::launch();
    browser.navigate(&format!("http://{addr}/login?next=/env/{acme}"));
    browser.wait_for(
        "document.querySelector('form[action=\"/login\"]')",
        Duration::from_secs(30),
    );
    browser
        .eval(&format!(
            "document.querySelector('input[name=token]').value = '{OPS}'; \
             document.querySelector('form[action=\"/login\"]').submit(); true"
        ))
        .expect("submit the login form");
    browser.wait_for(
        &format!("location.pathname === '/env/{acme}' && document.getElementById('gitops')"),
        Duration::from_secs(30),
    );
    let section = |b: &mut Browser, id: &str| {
        b.eval(&format!("document.getElementById('{id}').innerText"))
            .expect("section")
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let gitops = section(&mut browser, "gitops");
    assert!(
        gitops.contains(&format!("Commit {} does not load", &c1[..12]))
            && gitops.contains(&format!("{acme}.yaml:5:"))
            && gitops.contains("Retry commit"),
        "{gitops}"
    );
    let schedule = section(&mut browser, "schedule");
    assert!(
        schedule.contains("0 2 * * * Europe/Paris") && schedule.contains("missed"),
        "{schedule}"
    );
    let html = browser
        .eval("document.documentElement.outerHTML")
        .expect("html")
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!html.contains(OPS), "the token is in the page");
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("daemon");
    std::fs::create_dir_all(&artifacts).expect("artifacts");
    browser.screenshot(&artifacts.join("gitops-failed-commit.png"));

    // The same form from another origin of the same site: the cookie goes along (SameSite
    // does not tell ports apart), the daemon refuses it, and nothing is retried.
    let attempts_before =
        env_of(&get(OPS, "/api/v1/gitops"), &acme).expect("acme")["lastAttempt"]["at"].clone();
    // Another port of 127.0.0.1: another origin than the daemon's, but the same *site*.
    let evil = serve_page(format!(
        "<!doctype html><form method=\"post\" action=\"http://{addr}/env/{acme}/gitops/retry\">\
         <input name=\"csrf\" value=\"guess\"></form><script>document.forms[0].submit()</script>"
    ));
    browser.navigate(&evil);
    browser.wait_for(
        "location.pathname.endsWith('/gitops/retry') && document.body",
        Duration::from_secs(30),
    );
    let text = browser
        .eval("document.body.innerText")
        .expect("text")
        .to_string();
    assert!(
        text.contains("refused: this form is accepted only from the dashboard's own pages"),
        "{text}"
    );
    // By hand: the right form token from the wrong origin, the wrong token from the right
    // origin, and neither Origin nor Referer: all refused.
    let cookie = format!("rollout_token={OPS}");
    let token = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"rollout dashboard form token\0");
        h.update(OPS.as_bytes());
        format!("{:x}", h.finalize())
    };
    let page_token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the form token in the page");
    assert_eq!(page_token, token);
    let form_path = format!("/env/{acme}/gitops/retry");
    let ours = format!("http://{addr}");
    let theirs = format!("http://{evil}");
    for (origin, csrf) in [
        (Some(theirs.as_str()), token.as_str()),
        (Some(ours.as_str()), "0000"),
        (Some("null"), token.as_str()),
        (None, token.as_str()),
    ] {
        let mut h = vec![
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        if let Some(o) = origin {
            h.push(("Origin", o));
        }
        let (status, _, body) = http(&addr, "POST", &form_path, &h, &format!("csrf={csrf}"));
        assert_eq!(status, 403, "{origin:?} {csrf}: {body}");
        assert!(body.contains("refused"), "{body}");
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = env_of(&get(OPS, "/api/v1/gitops"), &acme).expect("acme");
    assert_eq!(
        after["lastAttempt"]["at"], attempts_before,
        "a refused form retried: {after:#}"
    );
    assert_eq!(after["retryPending"], false);

    // The Retry button on the dashboard's own page.
    browser.navigate(&format!("http://{addr}/env/{acme}"));
    browser.wait_for(
        "document.querySelector('#retry button')",
        Duration::from_secs(30),
    );
    let pressed = Instant::now();
    browser
        .eval("document.querySelector('#retry button').click(); true")
        .expect("press Retry");
    browser.wait_for(
        "location.search === '?retry=queued' && document.getElementById('notice')",
        Duration::from_secs(30),
    );
    let retried = loop {
        let e = env_of(&get(OPS, "/api/v1/gitops"), &acme).expect("acme");
        if e["lastAttempt"]["at"] != attempts_before {
            break e;
        }
        assert!(
            pressed.elapsed() < Duration::from_secs(60),
            "no retry: {e:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "dashboard retry: attempted {:?} after the click",
        pressed.elapsed()
    );
    assert_eq!(retried["lastAttempt"]["trigger"], "retry", "{retried:#}");

    // gonly's page: in sync, its scheduled rehearsal passed, with its report a click away.
    browser.navigate(&format!("http://{addr}/env/{gonly}"));
    browser.wait_for(
        "document.getElementById('schedule')",
        Duration::from_secs(30),
    );
    let gitops = section(&mut browser, "gitops");
    assert!(
        gitops.contains("in sync") && gitops.contains(&c1[..12]),
        "{gitops}"
    );
    let schedule = section(&mut browser, "schedule");
    assert!(
        schedule.contains("passed") && schedule.contains(&rehearsal),
        "{schedule}"
    );
    browser.screenshot(&artifacts.join("gitops-in-sync.png"));
    browser
        .eval(&format!(
            "document.querySelector('#schedule a[href$=\"/runs/{rehearsal}/report\"]').click(); true"
        ))
        .expect("open the report");
    browser.wait_for(
        &format!("location.pathname.endsWith('/runs/{rehearsal}/report')"),
        Duration::from_secs(30),
    );
    let report = browser
        .eval("document.body.innerText")
        .expect("report")
        .to_string();
    assert!(report.contains(&rehearsal), "{report}");
    drop(browser);

    // SIGTERM: exits 0; the log names who asked for each retry, and no token.
    daemon.terminate();
    let (status, err) = daemon.exit_within(Duration::from_secs(60), "the daemon did not stop");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("gitops retry requested") && err.contains("api:acme-ops"),
        "{err}"
    );
    assert!(err.contains("dashboard:acme-ops"), "{err}");
    assert!(
        err.contains("dashboard form from another origin refused"),
        "{err}"
    );
    for t in [OPS, APPROVER, READER, GLOBEX] {
        assert!(!err.contains(t), "a token was logged");
    }
}
