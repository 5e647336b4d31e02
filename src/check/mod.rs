//! Smoke checks against a test version or production, run from the host, with typed results.
//!
//! A playbook [`Check`] names a service; the [`Target`] says which container runs it and which
//! 127.0.0.1 host ports its container ports are published on. [`run`] makes up to `1 + retries`
//! attempts, each bounded by the check's timeout, and returns a [`CheckResult`] whose [`Verdict`]
//! carries a reason precise enough to act on. [`health`] turns a service's manifest health probe
//! into the same kind of result, and [`probe_once`] makes a single probe attempt for callers that
//! loop themselves (waiting for a test version to come up).
//!
//! One file per check kind: `http.rs`, `tcp.rs`, `exec.rs`; [`json_path`] is `expectJson`'s path
//! language.

mod exec;
mod http;
pub mod ready;
mod tcp;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::engine::{Engine, HealthState};
use crate::manifest::env::{
    DEFAULT_RETRIES, DEFAULT_TIMEOUT, Environment, Probe, Protocol, Service,
};
use crate::manifest::json_path;
use crate::manifest::playbook::{Check, CheckKind};

/// The outcome of one check. Inconclusive (could not decide: e.g. no published port, connection
/// refused on the last try) counts as a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Verdict {
    Pass { detail: String },
    Fail { reason: String },
    Inconclusive { reason: String },
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass { .. })
    }

    fn pass(detail: impl Into<String>) -> Self {
        Verdict::Pass {
            detail: detail.into(),
        }
    }

    fn fail(reason: impl Into<String>) -> Self {
        Verdict::Fail {
            reason: reason.into(),
        }
    }

    fn inconclusive(reason: impl Into<String>) -> Self {
        Verdict::Inconclusive {
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Pass { detail } => write!(f, "passed: {detail}"),
            Verdict::Fail { reason } => write!(f, "failed: {reason}"),
            Verdict::Inconclusive { reason } => write!(f, "inconclusive: {reason}"),
        }
    }
}

/// What one check found, for the journal, the printer and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The check as a user reads it (`http GET web / expects 200`).
    pub description: String,
    pub service: String,
    /// The verdict of the last attempt.
    pub verdict: Verdict,
    /// Attempts made, at least 1.
    pub attempts: u32,
    /// From the first attempt to the verdict, backoff included.
    #[serde(with = "crate::manifest::env::millis")]
    pub elapsed: Duration,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }
}

/// Where a check's service runs: its container name and container-port → 127.0.0.1 host-port map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub container: String,
    /// Ports missing here are asked of the engine ([`Engine::published_port`]).
    pub ports: BTreeMap<u16, u16>,
}

/// What checks run against: one container per service, on one engine.
pub struct Target<'a> {
    pub engine: &'a dyn Engine,
    /// By manifest service name.
    pub services: BTreeMap<String, Endpoint>,
    /// The environment the services come from (for a service's ports and health probe).
    pub environment: &'a Environment,
}

/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs a playbook check against `target`: up to `retries` extra attempts while it has not
/// passed, each bounded by the check's `timeout`.
pub async fn run(target: &Target<'_>, check: &Check) -> CheckResult {
    let description = check.to_string();
    let Some(endpoint) = target.services.get(&check.service) else {
        return not_running(description, &check.service);
    };
    let engine = target.engine;
    let timeout = check.timeout;
    let (verdict, attempts, elapsed) = match &check.kind {
        CheckKind::Http {
            port,
            path,
            expect_status,
            expect_body,
            expect_headers,
            expect_json,
        } => {
            let Some(port) = port.or_else(|| first_http_port(target.environment, &check.service))
            else {
                return CheckResult {
                    description,
                    service: check.service.clone(),
                    verdict: Verdict::inconclusive(format!(
                        "service `{}` has no http port and the check names none",
                        check.service
                    )),
                    attempts: 1,
                    elapsed: Duration::ZERO,
                };
            };
            let expect = http::Expect {
                status: Some(*expect_status),
                body: expect_body.as_deref(),
                headers: expect_headers,
                json: expect_json.as_ref().map(|(p, v)| (p.as_str(), v)),
            };
            let expect = &expect;
            retrying(check.retries, || async move {
                match host_port(engine, endpoint, port).await {
                    Ok(host) => http::attempt(host, path, expect, timeout).await,
                    Err(v) => v,
                }
            })
            .await
        }
        CheckKind::Tcp { port } => {
            let port = *port;
            retrying(check.retries, || async move {
                match host_port(engine, endpoint, port).await {
                    Ok(host) => tcp::attempt(host, timeout).await,
                    Err(v) => v,
                }
            })
            .await
        }
        CheckKind::Exec {
            command,
            expect_exit,
            expect_output,
        } => {
            let expect = exec::Expect {
                exit: *expect_exit,
                output: expect_output.as_deref(),
            };
            let expect = &expect;
            retrying(check.retries, || {
                exec::attempt(engine, &endpoint.container, command, expect, timeout)
            })
            .await
        }
    };
    CheckResult {
        description,
        service: check.service.clone(),
        verdict,
        attempts,
        elapsed,
    }
}

/// The service's manifest health probe as a check: http and tcp from the host, exec inside the
/// container, with the probe's timeout and retries. A service without a probe passes when its
/// container runs (and, if the image has a health check, the engine calls it healthy).
pub async fn health(target: &Target<'_>, service: &Service) -> CheckResult {
    let description = match &service.health {
        Some(h) => format!("health of {}: {}", service.name, h.probe),
        None => format!("health of {}: container running", service.name),
    };
    let Some(endpoint) = target.services.get(&service.name) else {
        return not_running(description, &service.name);
    };
    let engine = target.engine;
    let (verdict, attempts, elapsed) = match &service.health {
        // The platform runs the probe (a readiness probe): its verdict is the container's health.
        Some(h) if engine.probes() == crate::engine::Probes::ByPlatform => {
            retrying(h.retries, || running(engine, endpoint)).await
        }
        Some(h) => {
            retrying(h.retries, || {
                probe_once(engine, endpoint, &h.probe, h.timeout)
            })
            .await
        }
        None => {
            retrying(DEFAULT_RETRIES, || async move {
                match tokio::time::timeout(DEFAULT_TIMEOUT, running(engine, endpoint)).await {
                    Ok(v) => v,
                    Err(_) => Verdict::inconclusive(format!(
                        "the engine did not report the state of `{}` within {}",
                        endpoint.container,
                        human(DEFAULT_TIMEOUT)
                    )),
                }
            })
            .await
        }
    };
    CheckResult {
        description,
        service: service.name.clone(),
        verdict,
        attempts,
        elapsed,
    }
}

/// One attempt of a health probe, used while a test version comes up (no retries here; the
/// caller loops).
pub async fn probe_once(
    engine: &dyn Engine,
    endpoint: &Endpoint,
    probe: &Probe,
    timeout: Duration,
) -> Verdict {
    match probe {
        Probe::Http { port, path } => match host_port(engine, endpoint, *port).await {
            Ok(host) => http::attempt(host, path, &http::Expect::ok(), timeout).await,
            Err(v) => v,
        },
        Probe::Tcp { port } => match host_port(engine, endpoint, *port).await {
            Ok(host) => tcp::attempt(host, timeout).await,
            Err(v) => v,
        },
        Probe::Exec { command } => {
            exec::attempt(
                engine,
                &endpoint.container,
                command,
                &exec::Expect::success(),
                timeout,
            )
            .await
        }
    }
}

fn not_running(description: String, service: &str) -> CheckResult {
    CheckResult {
        description,
        service: service.to_string(),
        verdict: Verdict::inconclusive(format!(
            "service `{service}` has no container in this target"
        )),
        attempts: 1,
        elapsed: Duration::ZERO,
    }
}

fn first_http_port(env: &Environment, service: &str) -> Option<u16> {
    env.service(service)?
        .ports
        .iter()
        .find(|p| p.protocol == Protocol::Http)
        .map(|p| p.container)
}

/// The 127.0.0.1 host port of a container port: from the endpoint's map, else from the engine.
async fn host_port(
    engine: &dyn Engine,
    endpoint: &Endpoint,
    container_port: u16,
) -> Result<u16, Verdict> {
    if let Some(host) = endpoint.ports.get(&container_port) {
        return Ok(*host);
    }
    match engine
        .published_port(&endpoint.container, container_port)
        .await
    {
        Ok(Some(host)) => Ok(host),
        Ok(None) => Err(Verdict::inconclusive(format!(
            "port {container_port} of `{}` is not published on 127.0.0.1",
            endpoint.container
        ))),
        Err(e) => Err(Verdict::inconclusive(format!(
            "cannot find where port {container_port} of `{}` is published: {e}",
            endpoint.container
        ))),
    }
}

async fn running(engine: &dyn Engine, endpoint: &Endpoint) -> Verdict {
    let name = &endpoint.container;
    match engine.status(name).await {
        Ok(None) => Verdict::inconclusive(format!("there is no container `{name}`")),
        Ok(Some(s)) if !s.state.is_running() => {
            Verdict::fail(format!("container `{name}` is {}", s.state))
        }
        Ok(Some(s)) => match s.health {
            Some(HealthState::Unhealthy) => {
                Verdict::fail(format!("the engine reports `{name}` unhealthy"))
            }
            Some(HealthState::Starting) => Verdict::fail(format!(
                "the engine's health check of `{name}` has not passed yet"
            )),
            Some(HealthState::Healthy) => Verdict::pass(format!("`{name}` is running and healthy")),
            None => Verdict::pass(format!("`{name}` is running")),
        },
        Err(e) => Verdict::inconclusive(format!("cannot read the state of `{name}`: {e}")),
    }
}

/// Makes up to `1 + retries` attempts while they do not pass, with a doubling backoff between
/// them. Returns the last verdict, the attempts made and the time taken.
async fn retrying<F, Fut>(retries: u32, mut attempt: F) -> (Verdict, u32, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Verdict>,
{
    // tokio's clock, so tests that pause time see backoff as elapsed time.
    let start = tokio::time::Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let verdict = attempt().await;
        if verdict.passed() || attempts > retries {
            return (verdict, attempts, start.elapsed());
        }
        tracing::debug!(attempt = attempts, %verdict, "check attempt did not pass; retrying");
        tokio::time::sleep(backoff(attempts)).await;
    }
}

/// The wait after failed attempt `n` (from 1): [`FIRST_BACKOFF`], doubling, capped at
/// [`MAX_BACKOFF`].
fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// A duration as a user writes it in a playbook: `2s`, `1500ms`.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// At most `max` characters of `text` from its start, marked when cut, for failure reasons.
pub(crate) fn head(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// At most `max` characters of `text` from its end (where a command's verdict usually is).
pub(crate) fn tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let cut = text.char_indices().nth(count - max).map_or(0, |(i, _)| i);
    format!("…{}", &text[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{FakeCall, FakeEngine, FakeOp};
    use crate::engine::{ContainerState, EngineError, ExecOutput};

    fn env() -> Environment {
        Environment {
            name: "shop".into(),
            client: "acme".into(),
            self_heal: false,
            requires: Default::default(),
            services: Vec::new(),
            source: "shop.yaml".into(),
        }
    }

    #[test]
    fn only_pass_passes() {
        assert!(Verdict::pass("x").passed());
        assert!(!Verdict::fail("x").passed());
        assert!(!Verdict::inconclusive("x").passed());
    }

    #[test]
    fn results_serialize_for_reports() {
        let r = CheckResult {
            description: "tcp api:9000".into(),
            service: "api".into(),
            verdict: Verdict::fail("connection refused on 127.0.0.1:4000"),
            attempts: 3,
            elapsed: Duration::from_millis(1250),
        };
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            serde_json::json!({
                "description": "tcp api:9000",
                "service": "api",
                "verdict": { "kind": "fail", "reason": "connection refused on 127.0.0.1:4000" },
                "attempts": 3,
                "elapsed": 1250,
            })
        );
        assert_eq!(
            Verdict::inconclusive("no port").to_string(),
            "inconclusive: no port"
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let waits: Vec<u128> = (1..=7).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000, 2000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[tokio::test]
    async fn retries_stop_at_the_first_pass() {
        let mut n = 0;
        let (v, attempts, elapsed) = retrying(10, || {
            n += 1;
            let v = if n == 2 {
                Verdict::pass("ok")
            } else {
                Verdict::fail("no")
            };
            async move { v }
        })
        .await;
        assert_eq!((v, attempts), (Verdict::pass("ok"), 2));
        assert!(elapsed >= FIRST_BACKOFF, "{elapsed:?}");
    }

    #[tokio::test]
    async fn the_last_verdict_stands_after_the_last_retry() {
        let mut n = 0;
        let (v, attempts, elapsed) = retrying(2, || {
            n += 1;
            let v = Verdict::fail(format!("try {n}"));
            async move { v }
        })
        .await;
        assert_eq!(v, Verdict::fail("try 3"));
        assert_eq!(attempts, 3);
        assert!(elapsed >= Duration::from_millis(750), "{elapsed:?}");

        let (v, attempts, elapsed) = retrying(0, || async { Verdict::inconclusive("x") }).await;
        assert_eq!((v, attempts), (Verdict::inconclusive("x"), 1));
        assert!(elapsed < FIRST_BACKOFF, "no wait after the last attempt");
    }

    #[test]
    fn reasons_quote_text_by_characters() {
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
        assert_eq!(head("héllo", 3), "hél…");
        assert_eq!(head("hé", 3), "hé");
        assert_eq!(tail("héllo", 3), "…llo");
        assert_eq!(tail("lo", 3), "lo");
    }

    #[tokio::test]
    async fn a_service_without_a_container_is_inconclusive() {
        let engine = FakeEngine::new();
        let env = env();
        let target = Target {
            engine: &engine,
            services: BTreeMap::new(),
            environment: &env,
        };
        let check = Check {
            service: "web".into(),
            kind: CheckKind::Tcp { port: 80 },
            timeout: Duration::from_secs(1),
            retries: 3,
        };
        let r = run(&target, &check).await;
        assert_eq!(
            r.verdict,
            Verdict::inconclusive("service `web` has no container in this target")
        );
        assert_eq!(r.attempts, 1);
        assert_eq!(r.description, "tcp web:80");
    }

    #[tokio::test]
    async fn an_unpublished_port_is_inconclusive() {
        let engine = FakeEngine::new();
        let env = env();
        let target = Target {
            engine: &engine,
            services: BTreeMap::from([(
                "web".to_string(),
                Endpoint {
                    container: "shop-web-r1".into(),
                    ports: BTreeMap::new(),
                },
            )]),
            environment: &env,
        };
        let check = Check {
            service: "web".into(),
            kind: CheckKind::Http {
                port: None,
                path: "/".into(),
                expect_status: 200,
                expect_body: None,
                expect_headers: Vec::new(),
                expect_json: None,
            },
            timeout: Duration::from_secs(1),
            retries: 0,
        };
        let r = run(&target, &check).await;
        assert_eq!(
            r.verdict,
            Verdict::inconclusive("service `web` has no http port and the check names none")
        );

        let check = Check {
            kind: CheckKind::Tcp { port: 9000 },
            ..check
        };
        let r = run(&target, &check).await;
        match &r.verdict {
            Verdict::Inconclusive { reason } => assert!(
                reason.starts_with("cannot find where port 9000 of `shop-web-r1` is published"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    fn spec(name: &str) -> crate::engine::ContainerSpec {
        crate::engine::ContainerSpec {
            name: name.into(),
            image: "shop-api:1".into(),
            command: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            network: "net".into(),
            aliases: Vec::new(),
            probe_ports: Vec::new(),
            volumes: Vec::new(),
            healthcheck: None,
            publish: Vec::new(),
            restart: crate::engine::spec::Restart::Never,
        }
    }

    /// A fake holding one running container, `shop-api-r1`, for service `api`.
    async fn fake() -> FakeEngine {
        let engine = FakeEngine::new();
        engine
            .ensure_network("net", &BTreeMap::new())
            .await
            .expect("network");
        engine
            .run_container(&spec("shop-api-r1"))
            .await
            .expect("container");
        engine
    }

    fn api() -> BTreeMap<String, Endpoint> {
        BTreeMap::from([(
            "api".to_string(),
            Endpoint {
                container: "shop-api-r1".into(),
                ports: BTreeMap::new(),
            },
        )])
    }

    /// Checks on `env` that run against the fake's `api` container (see [`fake`]).
    fn api_target<'a>(engine: &'a FakeEngine, env: &'a Environment) -> Target<'a> {
        Target {
            engine,
            services: api(),
            environment: env,
        }
    }

    fn exec_check(command: &[&str], expect_exit: i64, expect_output: Option<&str>) -> Check {
        Check {
            service: "api".into(),
            kind: CheckKind::Exec {
                command: command.iter().map(|s| s.to_string()).collect(),
                expect_exit,
                expect_output: expect_output.map(str::to_string),
            },
            timeout: Duration::from_secs(30),
            retries: 0,
        }
    }

    fn service(health: Option<crate::manifest::env::Health>) -> Service {
        Service {
            name: "api".into(),
            image: "shop-api:1".into(),
            command: None,
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            ports: Vec::new(),
            depends_on: Vec::new(),
            health,
            stateful: false,
            volumes: Vec::new(),
            managed_by: None,
        }
    }

    #[tokio::test]
    async fn exec_checks_judge_the_scripted_exit_and_output() {
        let engine = fake().await;
        engine.script_exec(
            "shop-api-r1",
            ["/bin/check"],
            ExecOutput {
                exit_code: 0,
                output: "db ready\n".into(),
            },
        );
        let env = env();
        let target = api_target(&engine, &env);
        let r = run(&target, &exec_check(&["/bin/check"], 0, Some("ready"))).await;
        assert_eq!(
            r.verdict,
            Verdict::pass("exit code 0, output contains \"ready\"")
        );
        assert_eq!(r.attempts, 1);
        assert_eq!(r.description, "exec in api: /bin/check expects exit 0");

        let r = run(&target, &exec_check(&["/bin/check"], 3, None)).await;
        assert_eq!(
            r.verdict,
            Verdict::fail("exit code 0, expected 3 (last 200 chars of output: \"db ready\")")
        );
        let r = run(&target, &exec_check(&["/bin/check"], 0, Some("migrated"))).await;
        assert_eq!(
            r.verdict,
            Verdict::fail(
                "output does not contain \"migrated\" (last 200 chars of output: \"db ready\")"
            )
        );
        assert!(engine.calls().iter().any(|c| matches!(
            c,
            FakeCall::Exec { container, command }
                if container == "shop-api-r1" && command == &["/bin/check".to_string()]
        )));
    }

    #[tokio::test]
    async fn exec_timeouts_fail_with_the_engines_words_and_are_retried() {
        let engine = fake().await;
        let limit = Duration::from_secs(30);
        for _ in 0..2 {
            engine.fail_next(
                FakeOp::Exec,
                EngineError::ExecTimeout {
                    container: "shop-api-r1".into(),
                    command: "/bin/check".into(),
                    limit,
                },
            );
        }
        let env = env();
        let target = api_target(&engine, &env);
        let mut check = exec_check(&["/bin/check"], 0, None);
        check.retries = 1;
        let r = run(&target, &check).await;
        assert_eq!(
            r.verdict,
            Verdict::fail("`/bin/check` in `shop-api-r1` did not finish within 30s")
        );
        assert_eq!(r.attempts, 2);

        // The scripted failures are used up: the third call runs.
        check.retries = 2;
        let r = run(&target, &check).await;
        assert_eq!(r.verdict, Verdict::pass("exit code 0"));
        assert_eq!(r.attempts, 1);
    }

    #[tokio::test]
    async fn exec_in_a_stopped_container_is_inconclusive() {
        let engine = fake().await;
        engine.set_state("shop-api-r1", ContainerState::Exited { code: 137 });
        let env = env();
        let target = api_target(&engine, &env);
        let r = run(&target, &exec_check(&["/bin/check"], 0, None)).await;
        match &r.verdict {
            Verdict::Inconclusive { reason } => assert!(
                reason.starts_with("cannot run `/bin/check` in `shop-api-r1`: "),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn health_runs_the_services_exec_probe_with_its_retries() {
        let engine = fake().await;
        let probe = vec!["/bin/busybox".to_string(), "true".to_string()];
        engine.script_exec(
            "shop-api-r1",
            probe.clone(),
            ExecOutput {
                exit_code: 1,
                output: String::new(),
            },
        );
        let env = env();
        let target = api_target(&engine, &env);
        let svc = service(Some(crate::manifest::env::Health {
            probe: Probe::Exec { command: probe },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            start_period: Duration::from_secs(30),
            retries: 2,
        }));
        let r = health(&target, &svc).await;
        assert_eq!(r.description, "health of api: exec /bin/busybox true");
        assert_eq!(
            r.verdict,
            Verdict::fail("exit code 1, expected 0 (no output)")
        );
        assert_eq!(r.attempts, 3);
        assert!(r.elapsed >= Duration::from_millis(750), "{r:?}");
    }

    #[tokio::test]
    async fn health_without_a_probe_asks_whether_the_container_runs() {
        let engine = fake().await;
        let env = env();
        let target = api_target(&engine, &env);
        let svc = service(None);
        let r = health(&target, &svc).await;
        assert_eq!(r.description, "health of api: container running");
        assert_eq!(r.verdict, Verdict::pass("`shop-api-r1` is running"));

        engine.set_health("shop-api-r1", Some(HealthState::Unhealthy));
        let r = health(&target, &svc).await;
        assert_eq!(
            r.verdict,
            Verdict::fail("the engine reports `shop-api-r1` unhealthy")
        );
        assert_eq!(r.attempts, 1 + DEFAULT_RETRIES);

        engine.set_state("shop-api-r1", ContainerState::Exited { code: 1 });
        let r = health(&target, &svc).await;
        assert_eq!(
            r.verdict,
            Verdict::fail("container `shop-api-r1` is exited (1)")
        );

        let mut gone = api();
        gone.get_mut("api").expect("api").container = "shop-api-r0".into();
        let target = Target {
            engine: &engine,
            services: gone,
            environment: &env,
        };
        assert_eq!(
            health(&target, &svc).await.verdict,
            Verdict::inconclusive("there is no container `shop-api-r0`")
        );
    }

    #[tokio::test]
    async fn probe_once_finds_the_published_port_through_the_engine() {
        let engine = fake().await;
        let endpoint = &api()["api"];
        let v = probe_once(
            &engine,
            endpoint,
            &Probe::Tcp { port: 9000 },
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            v,
            Verdict::inconclusive("port 9000 of `shop-api-r1` is not published on 127.0.0.1")
        );
        assert!(engine.calls().iter().any(|c| matches!(
            c,
            FakeCall::PublishedPort { container, container_port: 9000 } if container == "shop-api-r1"
        )));
    }

    /// The checks' own http and tcp probes through a kubernetes port-forward: an endpoint
    /// without ports asks the engine for them, and each connection reaches the running pod.
    #[tokio::test]
    async fn probes_pass_through_a_kubernetes_port_forward() {
        use crate::engine::kube::forward::tests::{api_server, pod};
        let (engine, seen) = api_server(vec![
            pod("shop-web-r1-5d9f8c-new01", false),
            pod("shop-web-r1-5d9f8c-x1x2x", true),
        ])
        .await;
        let endpoint = Endpoint {
            container: "shop-web-r1".into(),
            ports: Default::default(),
        };
        for probe in [
            Probe::Http {
                port: 8080,
                path: "/ready".into(),
            },
            Probe::Tcp { port: 8080 },
        ] {
            let verdict = probe_once(&engine, &endpoint, &probe, Duration::from_secs(5)).await;
            assert!(
                matches!(verdict, Verdict::Pass { .. }),
                "{probe}: {verdict:?}"
            );
        }
        let seen = seen.lock().unwrap().clone();
        let forwards: Vec<&String> = seen.iter().filter(|r| r.contains("/portforward")).collect();
        // One upgrade per connection that sent a request (the tcp probe's may not have reached
        // the stand-in yet: it only connects).
        assert!(!forwards.is_empty(), "{seen:?}");
        assert!(
            forwards.iter().all(|r| *r
                == "GET /api/v1/namespaces/rollout-shop/pods/shop-web-r1-5d9f8c-x1x2x/portforward?&ports=8080"),
            "to the running pod: {seen:?}"
        );
    }
}

/// Replaces every secret value of `env` in a result's text with `<redacted>`: a service may echo
/// a secret in a body or an error message, and results end up in reports and on screens.
pub fn redact(mut result: CheckResult, env: &Environment) -> CheckResult {
    let secrets: Vec<&str> = env
        .services
        .iter()
        .flat_map(|s| s.secrets.values())
        .map(|s| s.value.expose())
        .filter(|v| !v.is_empty())
        .collect();
    let clean = |text: &mut String| {
        for s in &secrets {
            if text.contains(s) {
                *text = text.replace(s, "<redacted>");
            }
        }
    };
    match &mut result.verdict {
        Verdict::Pass { detail } => clean(detail),
        Verdict::Fail { reason } | Verdict::Inconclusive { reason } => clean(reason),
    }
    clean(&mut result.description);
    result
}

#[cfg(test)]
mod redact_tests {
    use super::*;
    use crate::manifest::source::Source;
    use crate::manifest::{env, yaml};

    #[test]
    fn secret_values_are_cut_out_of_results() {
        let text = "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\nservices:\n  web:\n    image: w:1\n    secrets: { KEY: { fromEnv: K } }\n";
        let src = Source::new("m.yaml", text);
        let environment = env::resolve(&src, yaml::parse(&src, "m").unwrap(), &|_| {
            Some("hunter2-secret".into())
        })
        .unwrap();
        let result = CheckResult {
            description: "http GET web /".into(),
            service: "web".into(),
            verdict: Verdict::Fail {
                reason: "body does not contain \"ok\" (first 200 chars: key=hunter2-secret)".into(),
            },
            attempts: 1,
            elapsed: Duration::ZERO,
        };
        let clean = redact(result, &environment);
        assert_eq!(
            clean.verdict,
            Verdict::Fail {
                reason: "body does not contain \"ok\" (first 200 chars: key=<redacted>)".into()
            }
        );
    }
}
