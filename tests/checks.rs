//! Smoke checks against real servers: HTTP and TCP checks against small servers run in this
//! process on 127.0.0.1, exec and published-port checks against a busybox container on the real
//! Docker engine. No traffic leaves the loopback interface.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollout::check::{self, CheckResult, Endpoint, Target, Verdict};
use rollout::engine::fake::FakeEngine;
use rollout::engine::image::{ContextFile, busybox_context};
use rollout::engine::spec::ContainerSpec;
use rollout::engine::{Engine, labels};
use rollout::manifest::env::{Environment, Health, Port, Probe, Protocol, Service};
use rollout::manifest::playbook::{Check, CheckKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::docker::{Cleanup, engine};
use crate::support::unique;

/// What the test server answers to one request.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Waited before answering.
    delay: Duration,
}

impl Reply {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// An HTTP/1.1 server on 127.0.0.1 that answers request `n` (from 1) with `reply(n)`; stops when
/// dropped.
struct Server {
    port: u16,
    hits: Arc<AtomicU32>,
    /// Request heads as received.
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(reply: impl Fn(u32) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicU32::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(reply);
        let task = tokio::spawn({
            let hits = hits.clone();
            let requests = requests.clone();
            async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                    let reply = reply(n);
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => head.extend_from_slice(&buf[..k]),
                            }
                        }
                        requests
                            .lock()
                            .expect("requests")
                            .push(String::from_utf8_lossy(&head).into_owned());
                        tokio::time::sleep(reply.delay).await;
                        let mut out = format!(
                            "HTTP/1.1 {} Whatever\r\ncontent-length: {}\r\nconnection: close\r\n",
                            reply.status,
                            reply.body.len()
                        );
                        for (k, v) in &reply.headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        out.push_str(&reply.body);
                        let _ = socket.write_all(out.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    });
                }
            }
        });
        Server {
            port,
            hits,
            requests,
            task,
        }
    }

    /// The same reply to every request.
    async fn always(reply: Reply) -> Server {
        Server::start(move |_| reply.clone()).await
    }

    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A 127.0.0.1 port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

fn service(name: &str, ports: Vec<Port>, health: Option<Health>) -> Service {
    Service {
        name: name.into(),
        image: "shop:1".into(),
        command: None,
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        ports,
        depends_on: Vec::new(),
        health,
        stateful: false,
        volumes: Vec::new(),
        managed_by: None,
    }
}

fn port(name: &str, container: u16, protocol: Protocol) -> Port {
    Port {
        name: name.into(),
        container,
        public: None,
        protocol,
    }
}

/// `web` serves HTTP on container port 8080 (after a TCP port 7000, so "first http port" is
/// tested); `api` has TCP 9000.
fn environment() -> Environment {
    Environment {
        name: "shop".into(),
        client: "acme".into(),
        self_heal: false,
        requires: Default::default(),
        services: vec![
            service(
                "web",
                vec![
                    port("admin", 7000, Protocol::Tcp),
                    port("http", 8080, Protocol::Http),
                ],
                None,
            ),
            service("api", vec![port("api", 9000, Protocol::Tcp)], None),
        ],
        source: "shop.yaml".into(),
    }
}

/// Runs `check` with `web`:8080 and `api`:9000 published on the given host ports.
async fn run(check: &Check, web: u16, api: u16) -> CheckResult {
    let engine = FakeEngine::new();
    let env = environment();
    let target = Target {
        engine: &engine,
        services: BTreeMap::from([
            (
                "web".to_string(),
                Endpoint {
                    container: "shop-web-t1".into(),
                    ports: BTreeMap::from([(8080, web)]),
                },
            ),
            (
                "api".to_string(),
                Endpoint {
                    container: "shop-api-t1".into(),
                    ports: BTreeMap::from([(9000, api)]),
                },
            ),
        ]),
        environment: &env,
    };
    check::run(&target, check).await
}

#[derive(Default)]
struct Http {
    path: &'static str,
    status: u16,
    body: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    json: Option<(&'static str, serde_json::Value)>,
    timeout: Duration,
    retries: u32,
}

impl Http {
    fn new() -> Self {
        Http {
            path: "/",
            status: 200,
            timeout: Duration::from_secs(5),
            ..Http::default()
        }
    }

    fn check(self) -> Check {
        Check {
            service: "web".into(),
            kind: CheckKind::Http {
                port: None,
                path: self.path.into(),
                expect_status: self.status,
                expect_body: self.body.map(str::to_string),
                expect_headers: self
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                expect_json: self.json.map(|(p, v)| (p.to_string(), v)),
            },
            timeout: self.timeout,
            retries: self.retries,
        }
    }
}

fn reason(result: &CheckResult) -> &str {
    match &result.verdict {
        Verdict::Fail { reason } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn http_check_passes_when_everything_matches() {
    let server = Server::always(
        Reply::new(200, r#"{"status":"ok","shop":{"items":[{"id":7}]}}"#)
            .header("X-Version", "2")
            .header("content-type", "application/json"),
    )
    .await;
    let check = Http {
        path: "/health?deep=1",
        body: Some("\"shop\""),
        headers: vec![("x-version", "2"), ("Content-Type", "application/json")],
        json: Some(("$.shop.items[0]['id']", json!(7))),
        ..Http::new()
    }
    .check();
    let result = run(&check, server.port, 1).await;
    assert!(result.passed(), "{result:?}");
    assert_eq!(result.attempts, 1);
    assert_eq!(result.service, "web");
    assert_eq!(
        result.description,
        "http GET web /health?deep=1 expects 200 and body containing \"\\\"shop\\\"\""
    );
    match &result.verdict {
        Verdict::Pass { detail } => assert_eq!(
            detail,
            &format!(
                "GET /health?deep=1 on 127.0.0.1:{} answered 200; header x-version is \"2\"; header content-type is \"application/json\"; body contains \"\\\"shop\\\"\"; $.shop.items[0]['id'] is 7",
                server.port
            )
        ),
        other => panic!("{other:?}"),
    }
    let requests = server.requests.lock().expect("requests").clone();
    assert_eq!(requests.len(), 1);
    let head = requests[0].to_ascii_lowercase();
    assert!(
        head.starts_with("get /health?deep=1 http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", server.port)),
        "{head}"
    );
}

#[tokio::test]
async fn http_check_reports_a_wrong_status() {
    let server = Server::always(Reply::new(503, "maintenance")).await;
    let result = run(&Http::new().check(), server.port, 1).await;
    assert_eq!(reason(&result), "expected status 200, got 503");
}

#[tokio::test]
async fn http_check_reports_missing_body_text_with_the_bodys_start() {
    let server = Server::always(Reply::new(200, "<h1>Under maintenance</h1>")).await;
    let check = Http {
        body: Some("shop"),
        ..Http::new()
    }
    .check();
    let result = run(&check, server.port, 1).await;
    assert_eq!(
        reason(&result),
        "body does not contain \"shop\" (first 200 chars: \"<h1>Under maintenance</h1>\")"
    );
}

#[tokio::test]
async fn http_check_reports_a_header_mismatch() {
    let server = Server::always(Reply::new(200, "").header("X-Version", "1")).await;
    let check = Http {
        headers: vec![("x-version", "2")],
        ..Http::new()
    }
    .check();
    let result = run(&check, server.port, 1).await;
    assert_eq!(reason(&result), "header x-version is \"1\", expected \"2\"");
}

#[tokio::test]
async fn http_check_reports_a_json_mismatch() {
    let server = Server::always(Reply::new(200, r#"{"status":"down","code":200.0}"#)).await;
    let check = Http {
        json: Some(("$.status", json!("ok"))),
        ..Http::new()
    }
    .check();
    let result = run(&check, server.port, 1).await;
    assert_eq!(reason(&result), "$.status is \"down\", expected \"ok\"");

    let check = Http {
        json: Some(("$.code", json!(200))),
        ..Http::new()
    }
    .check();
    assert!(
        run(&check, server.port, 1).await.passed(),
        "numbers compare by value"
    );
}

#[tokio::test]
async fn http_check_times_out_on_a_slow_server() {
    let server = Server::always(Reply::new(200, "late").delay(Duration::from_secs(5))).await;
    let check = Http {
        timeout: Duration::from_millis(300),
        ..Http::new()
    }
    .check();
    let result = run(&check, server.port, 1).await;
    assert_eq!(reason(&result), "no response within 300ms");
    assert!(result.elapsed < Duration::from_secs(2), "{result:?}");

    let check = Http {
        timeout: Duration::from_secs(1),
        ..Http::new()
    }
    .check();
    assert_eq!(
        reason(&run(&check, server.port, 1).await),
        "no response within 1s"
    );
}

#[tokio::test]
async fn http_check_retries_until_it_passes() {
    let server = Server::start(|n| {
        if n <= 2 {
            Reply::new(503, "starting")
        } else {
            Reply::new(200, "shop")
        }
    })
    .await;
    let check = Http {
        body: Some("shop"),
        retries: 3,
        ..Http::new()
    }
    .check();
    let result = run(&check, server.port, 1).await;
    assert!(result.passed(), "{result:?}");
    assert_eq!(result.attempts, 3);
    assert_eq!(server.hits(), 3);
    // Two backoffs: 250ms, then 500ms.
    assert!(result.elapsed >= Duration::from_millis(750), "{result:?}");

    // Out of retries, the last attempt's verdict stands.
    let server = Server::start(|n| Reply::new(500 + n as u16, "")).await;
    let check = Http {
        retries: 1,
        ..Http::new()
    }
    .check();
    let result = run(&check, server.port, 1).await;
    assert_eq!(reason(&result), "expected status 200, got 502");
    assert_eq!(result.attempts, 2);
}

#[tokio::test]
async fn http_check_reads_at_most_a_mebibyte_of_body() {
    let big = format!("{}END", "x".repeat(2 << 20));
    let server = Server::always(Reply::new(200, big)).await;
    let check = Http {
        body: Some("END"),
        ..Http::new()
    }
    .check();
    let result = run(&check, server.port, 1).await;
    assert!(
        reason(&result).starts_with("body does not contain \"END\" (first 200 chars: \"xxx"),
        "{result:?}"
    );
}

#[tokio::test]
async fn http_check_against_a_closed_port_is_inconclusive() {
    let port = closed_port().await;
    let result = run(&Http::new().check(), port, 1).await;
    assert_eq!(
        result.verdict,
        Verdict::Inconclusive {
            reason: format!("connection refused on 127.0.0.1:{port}")
        }
    );
    assert!(!result.passed());
}

#[tokio::test]
async fn tcp_check_passes_on_a_listener_and_fails_when_refused() {
    let server = Server::always(Reply::new(200, "")).await;
    let check = Check {
        service: "api".into(),
        kind: CheckKind::Tcp { port: 9000 },
        timeout: Duration::from_secs(2),
        retries: 0,
    };
    let result = run(&check, 1, server.port).await;
    assert_eq!(
        result.verdict,
        Verdict::Pass {
            detail: format!("127.0.0.1:{} accepts connections", server.port)
        }
    );

    let port = closed_port().await;
    let result = run(&check, 1, port).await;
    assert_eq!(
        reason(&result),
        format!("connection refused on 127.0.0.1:{port}")
    );
    assert_eq!(result.attempts, 1);
}

#[tokio::test]
async fn tcp_check_fails_when_the_connection_is_closed_at_once() {
    // What Docker's userland proxy does when nothing listens in the container.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let check = Check {
        service: "api".into(),
        kind: CheckKind::Tcp { port: 9000 },
        timeout: Duration::from_secs(2),
        retries: 0,
    };
    let result = run(&check, 1, port).await;
    task.abort();
    assert_eq!(
        reason(&result),
        format!(
            "127.0.0.1:{port} accepted the connection but closed it at once (nothing listens on the container port?)"
        )
    );
}

#[tokio::test]
async fn probes_run_once_from_the_host() {
    let server = Server::always(Reply::new(204, "")).await;
    let engine = FakeEngine::new();
    let endpoint = Endpoint {
        container: "shop-web-t1".into(),
        ports: BTreeMap::from([(8080, server.port)]),
    };
    let probe = Probe::Http {
        port: 8080,
        path: "/healthz".into(),
    };
    let verdict = check::probe_once(&engine, &endpoint, &probe, Duration::from_secs(2)).await;
    assert!(verdict.passed(), "{verdict:?}");
    assert_eq!(server.hits(), 1);

    let down = Server::always(Reply::new(500, "")).await;
    let endpoint = Endpoint {
        ports: BTreeMap::from([(8080, down.port)]),
        ..endpoint
    };
    let verdict = check::probe_once(&engine, &endpoint, &probe, Duration::from_secs(2)).await;
    assert_eq!(
        verdict,
        Verdict::Fail {
            reason: "expected a status from 200 to 399, got 500".into()
        }
    );
    assert_eq!(down.hits(), 1, "no retries in a single probe");
}

/// Removes an image tag when dropped, even if the test panicked.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let tag = self.0.clone();
        // A fresh thread: Drop may run inside a runtime, which cannot block on another one.
        let _ = std::thread::spawn(move || {
            crate::support::docker::runtime().block_on(async {
                if let Ok(engine) = rollout::engine::docker::DockerEngine::connect(None).await {
                    // `noprune`: its parent layers may be another build's cache right now
                    // (every busybox image starts with the same `COPY bin/ /bin/`); pruning
                    // them under a concurrent build fails that build ("unknown parent image").
                    let options = bollard::query_parameters::RemoveImageOptions {
                        force: true,
                        noprune: true,
                        ..Default::default()
                    };
                    let _ = engine
                        .client()
                        .remove_image(&tag, Some(options), None)
                        .await;
                }
            })
        })
        .join();
    }
}

#[tokio::test]
async fn checks_against_a_container_on_the_real_engine() {
    let engine = engine().await;
    let tag = format!("rollout-test-checks:{}", unique("t"));
    let _image = ImageGuard(tag.clone());
    let context = busybox_context(
        "CMD [\"/bin/busybox\",\"httpd\",\"-f\",\"-p\",\"8080\",\"-h\",\"/www\"]\n",
        vec![ContextFile {
            path: "www/health.json".into(),
            mode: 0o644,
            contents: br#"{"status":"ok","shop":"open"}"#.to_vec(),
        }],
    )
    .expect("busybox context (is busybox-static installed?)");
    engine.build_image(&tag, &context).await.expect("build");

    let name = unique("ck");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let selector = BTreeMap::from([(labels::ENVIRONMENT.to_string(), name.clone())]);
    let network = format!("rollout-{name}");
    engine
        .ensure_network(&network, &selector)
        .await
        .expect("network");
    let container = format!("{name}-web-t1");
    let spec = ContainerSpec {
        name: container.clone(),
        image: tag.clone(),
        command: None,
        env: BTreeMap::new(),
        labels: selector.clone(),
        network,
        aliases: vec!["web".into()],
        // Nothing listens on 9000: its published port is Docker's proxy and nothing behind it.
        probe_ports: vec![8080, 9000],
        volumes: Vec::new(),
        healthcheck: None,
        publish: Vec::new(),
        restart: rollout::engine::spec::Restart::Never,
    };
    engine.run_container(&spec).await.expect("run");

    let env = Environment {
        services: vec![service(
            "web",
            vec![
                port("http", 8080, Protocol::Http),
                port("other", 9000, Protocol::Tcp),
            ],
            Some(Health {
                probe: Probe::Http {
                    port: 8080,
                    path: "/health.json".into(),
                },
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(2),
                start_period: Duration::from_secs(10),
                retries: 10,
            }),
        )],
        ..environment()
    };
    // No ports given: the checks ask the engine where they are published.
    let target = Target {
        engine: &engine,
        services: BTreeMap::from([(
            "web".to_string(),
            Endpoint {
                container: container.clone(),
                ports: BTreeMap::new(),
            },
        )]),
        environment: &env,
    };

    let result = check::health(&target, &env.services[0]).await;
    assert!(result.passed(), "{result:?}");
    assert_eq!(result.description, "health of web: http :8080/health.json");

    let http = Check {
        service: "web".into(),
        kind: CheckKind::Http {
            port: None,
            path: "/health.json".into(),
            expect_status: 200,
            expect_body: Some("open".into()),
            expect_headers: Vec::new(),
            expect_json: Some(("$.status".into(), json!("ok"))),
        },
        timeout: Duration::from_secs(5),
        retries: 0,
    };
    let result = check::run(&target, &http).await;
    assert!(result.passed(), "{result:?}");

    let exec = |command: &[&str], expect_exit: i64, expect_output: Option<&str>, secs: u64| Check {
        service: "web".into(),
        kind: CheckKind::Exec {
            command: command.iter().map(|s| s.to_string()).collect(),
            expect_exit,
            expect_output: expect_output.map(str::to_string),
        },
        timeout: Duration::from_secs(secs),
        retries: 0,
    };
    let result = check::run(
        &target,
        &exec(
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "echo hello from the shop; exit 3",
            ],
            3,
            Some("hello from"),
            10,
        ),
    )
    .await;
    assert_eq!(
        result.verdict,
        Verdict::Pass {
            detail: "exit code 3, output contains \"hello from\"".into()
        }
    );

    let result = check::run(
        &target,
        &exec(&["/bin/busybox", "cat", "/www/missing"], 0, None, 10),
    )
    .await;
    let r = reason(&result);
    assert!(
        r.starts_with("exit code 1, expected 0 (last 200 chars of output: \""),
        "{r}"
    );
    assert!(r.contains("No such file or directory"), "{r}");

    let result = check::run(&target, &exec(&["/bin/busybox", "sleep", "30"], 0, None, 1)).await;
    assert_eq!(
        reason(&result),
        format!("`/bin/busybox sleep 30` in `{container}` did not finish within 1s")
    );
    assert!(result.elapsed < Duration::from_secs(10), "{result:?}");

    // Docker publishes 9000 although nothing listens there: the check must not pass.
    let tcp = Check {
        service: "web".into(),
        kind: CheckKind::Tcp { port: 9000 },
        timeout: Duration::from_secs(2),
        retries: 0,
    };
    let result = check::run(&target, &tcp).await;
    assert!(
        reason(&result).ends_with(
            "accepted the connection but closed it at once (nothing listens on the container port?)"
        ),
        "{result:?}"
    );
    let http_9000 = Check {
        kind: CheckKind::Http {
            port: Some(9000),
            path: "/".into(),
            expect_status: 200,
            expect_body: None,
            expect_headers: Vec::new(),
            expect_json: None,
        },
        ..tcp.clone()
    };
    match check::run(&target, &http_9000).await.verdict {
        Verdict::Inconclusive { reason } => assert!(
            reason.ends_with("closed before any response (is the service listening yet?)"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    let tcp = Check {
        kind: CheckKind::Tcp { port: 8080 },
        ..tcp
    };
    assert!(check::run(&target, &tcp).await.passed());

    // A port the container does not publish.
    let tcp = Check {
        kind: CheckKind::Tcp { port: 7777 },
        ..tcp
    };
    assert_eq!(
        check::run(&target, &tcp).await.verdict,
        Verdict::Inconclusive {
            reason: format!("port 7777 of `{container}` is not published on 127.0.0.1")
        }
    );
}
