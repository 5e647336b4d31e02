//! `DockerEngine` against the real engine: busybox images built from memory, an environment run
//! from a manifest, read back by labels alone, probed from the host on 127.0.0.1, and removed
//! without a trace. No mocks; the tests fail (never skip) when there is no engine.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rollout::engine::docker::DockerEngine;
use rollout::engine::image::{BuildContext, ContextFile, busybox_context};
use rollout::engine::spec::{
    base_labels, production_container, production_network, production_volume,
};
use rollout::engine::{
    ContainerEvent, ContainerSpec, ContainerState, ContainerStatus, Engine, EngineError, EventKind,
    EventStream, HealthState, ObjectKind, Outcome, Removed, Role, ServiceSnapshot, labels,
};
use rollout::manifest::env::{self, Environment, Health, Probe};
use rollout::manifest::raw::RawEnvironment;
use rollout::manifest::secret::SecretValue;
use rollout::manifest::source::Source;
use rollout::manifest::yaml;

use crate::support::docker::{Cleanup, engine};
use crate::support::unique;

const PAGE: &str = "rollout engine test page\n";
const SESSION_KEY: &str = "engine-Test-S3cret";
const API_TOKEN: &str = "another=secret value";

/// Removes an image tag when dropped, even if the test panicked.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let tag = self.0.clone();
        // A fresh thread: Drop may run inside a runtime, which cannot block on another one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(engine) = DockerEngine::connect(None).await {
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

/// Builds a busybox httpd image serving [`PAGE`] from `/www` on port 8080.
async fn httpd_image(engine: &DockerEngine) -> ImageGuard {
    let tag = format!("rollout-test-busybox:{}", unique("t"));
    let guard = ImageGuard(tag.clone());
    let context = busybox_context(
        "EXPOSE 8080\nCMD [\"/bin/busybox\",\"httpd\",\"-f\",\"-p\",\"8080\",\"-h\",\"/www\"]\n",
        vec![ContextFile {
            path: "www/index.html".into(),
            mode: 0o644,
            contents: PAGE.as_bytes().to_vec(),
        }],
    )
    .expect("busybox context (is busybox-static installed?)");
    engine.build_image(&tag, &context).await.expect("build");
    guard
}

fn environment(name: &str, image: &str) -> Environment {
    let yaml = format!(
        r#"apiVersion: rollout/v1
kind: Environment
name: {name}
client: acme
services:
  web:
    image: {image}
    env: {{ GREETING: hello }}
    secrets: {{ SESSION_KEY: {{ fromEnv: T_SESSION_KEY }} }}
    ports: [ {{ name: http, container: 8080 }} ]
    health: {{ http: {{ port: 8080, path: / }} }}
  api:
    image: {image}
    command: ["/bin/busybox", "httpd", "-f", "-p", "9000", "-h", "/www"]
    secrets: {{ API_TOKEN: {{ fromEnv: T_API_TOKEN }} }}
    ports: [ {{ name: api, container: 9000, protocol: tcp }} ]
    volumes: [ {{ name: data, path: /data }} ]
    # Run by the engine inside the container; reaching `web` by its alias proves the network.
    health:
      exec: ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://web:8080/"]
      interval: 1s
      startPeriod: 1s
"#
    );
    let src = Source::new(format!("{name}.yaml"), yaml);
    let raw: RawEnvironment = yaml::parse(&src, "an Environment manifest").expect("parse");
    let lookup = |var: &str| match var {
        "T_SESSION_KEY" => Some(SESSION_KEY.to_string()),
        "T_API_TOKEN" => Some(API_TOKEN.to_string()),
        _ => None,
    };
    env::resolve(&src, raw, &lookup).expect("resolve")
}

/// `GET /` on 127.0.0.1:`port`, retried while the server starts; the whole response.
fn http_get(port: u16) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let attempt = || -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        match attempt() {
            Ok(resp) if resp.starts_with("HTTP/") => return resp,
            Ok(resp) => last = format!("unexpected answer {resp:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing answers HTTP on 127.0.0.1:{port}: {last}");
}

#[tokio::test]
async fn negotiates_the_api_version_and_describes_itself() {
    let engine = engine().await;
    let api = engine.api_version();
    let parsed: Vec<u32> = api
        .split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("API version {api:?}")))
        .collect();
    assert_eq!(parsed.len(), 2, "API version {api:?}");
    let default = bollard::API_DEFAULT_VERSION;
    assert!(
        (parsed[0] as usize, parsed[1] as usize) <= (default.major_version, default.minor_version),
        "negotiation never goes above bollard's default"
    );
    // What the engine itself speaks bounds what was negotiated.
    let server = engine.client().version().await.expect("version");
    let server_api = server.api_version.expect("engine reports its API version");
    let server_parsed: Vec<u32> = server_api
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        parsed <= server_parsed,
        "negotiated {api}, engine speaks {server_api}"
    );

    let described = engine.describe();
    assert!(described.starts_with("docker "), "{described}");
    assert!(described.contains(&format!("(API {api})")), "{described}");
    assert!(described.ends_with(engine.endpoint()), "{described}");
}

#[tokio::test]
async fn an_unreachable_engine_is_reported_with_its_endpoint() {
    for host in [
        "unix:///nonexistent/rollout/docker.sock",
        "tcp://127.0.0.1:1",
    ] {
        match DockerEngine::connect(Some(host)).await {
            Err(EngineError::Unreachable { endpoint, reason }) => {
                assert_eq!(endpoint, host);
                assert!(!reason.is_empty());
            }
            other => panic!("{host}: expected Unreachable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn builds_images_from_memory_and_reports_build_errors() {
    let engine = engine().await;
    let image = httpd_image(&engine).await;
    let inspect = engine
        .client()
        .inspect_image(&image.0)
        .await
        .expect("the built image exists");
    let cmd = inspect.config.and_then(|c| c.cmd).unwrap_or_default();
    assert_eq!(cmd.first().map(String::as_str), Some("/bin/busybox"));

    let tag = format!("rollout-test-broken:{}", unique("t"));
    let _guard = ImageGuard(tag.clone());
    let broken = BuildContext {
        dockerfile: "FROM scratch\nCOPY missing.txt /missing.txt\n".into(),
        ..Default::default()
    };
    match engine.build_image(&tag, &broken).await {
        Err(EngineError::Build { tag: t, reason }) => {
            assert_eq!(t, tag);
            assert!(reason.contains("missing.txt"), "{reason}");
        }
        other => panic!("expected a build error, got {other:?}"),
    }
}

#[tokio::test]
async fn runs_observes_probes_and_removes_an_environment() {
    let engine = engine().await;
    let image = httpd_image(&engine).await;
    let name = unique("rt");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let env = environment(&name, &image.0);
    let run = "r1";
    let labels = base_labels(&env, Role::Production, run);

    let network = production_network(&name);
    assert_eq!(
        engine
            .ensure_network(&network, &labels)
            .await
            .expect("network"),
        Outcome::Created
    );
    assert_eq!(
        engine
            .ensure_network(&network, &labels)
            .await
            .expect("network"),
        Outcome::Unchanged
    );
    let volume = production_volume(&name, "api", "data");
    assert_eq!(
        engine
            .ensure_volume(&volume, &labels)
            .await
            .expect("volume"),
        Outcome::Created
    );
    assert_eq!(
        engine
            .ensure_volume(&volume, &labels)
            .await
            .expect("volume"),
        Outcome::Unchanged
    );

    let specs: Vec<_> = env
        .services
        .iter()
        .map(|s| production_container(&env, s, run))
        .collect();
    for spec in &specs {
        assert_eq!(
            engine.run_container(spec).await.expect("run"),
            Outcome::Created,
            "{}",
            spec.name
        );
    }
    for spec in &specs {
        assert_eq!(
            engine.run_container(spec).await.expect("run again"),
            Outcome::Unchanged
        );
    }
    // Production containers come back after a crash or an engine restart, and each has an
    // address on the environment's network (what the edge proxy forwards to).
    for spec in &specs {
        let policy = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.HostConfig.RestartPolicy.Name}}",
                &spec.name,
            ])
            .output()
            .expect("docker inspect");
        assert_eq!(
            String::from_utf8_lossy(&policy.stdout).trim(),
            "unless-stopped"
        );
        let ip = engine
            .address(&spec.name, &network)
            .await
            .expect("address")
            .expect("on the network");
        assert!(ip.is_ipv4() && !ip.is_loopback(), "{ip}");
        assert_eq!(
            engine
                .address(&spec.name, "no-such-network")
                .await
                .expect("address"),
            None
        );
    }

    // Read back from labels alone.
    let observed = engine.observe(&name).await.expect("observe");
    assert_eq!(observed.environment, name);
    assert_eq!(
        observed.services.keys().collect::<Vec<_>>(),
        vec!["api", "web"]
    );
    for service in &env.services {
        let seen = &observed.services[&service.name];
        assert_eq!(
            seen.spec.as_ref(),
            Some(&ServiceSnapshot::from(service)),
            "{}",
            service.name
        );
        let expected: BTreeMap<String, SecretValue> = service
            .secrets
            .iter()
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect();
        assert_eq!(seen.secrets, expected, "{}", service.name);
        assert_eq!(seen.containers.len(), 1);
        let c = &seen.containers[0];
        assert_eq!(c.name, format!("{name}-{}-{run}", service.name));
        assert_eq!(c.image, image.0);
        assert_eq!(c.run.as_deref(), Some(run));
        assert!(c.state.is_running(), "{}: {}", c.name, c.state);
        assert!(c.created > 0);
    }
    assert_eq!(
        observed.services["web"].containers[0].health, None,
        "http probes are rollout's"
    );

    // The probe port answers from the host, and is bound to loopback only.
    let web = &specs
        .iter()
        .find(|s| s.aliases == ["web"])
        .expect("web spec")
        .name;
    let port = engine
        .published_port(web, 8080)
        .await
        .expect("port")
        .expect("8080 is published");
    let bindings = engine
        .client()
        .inspect_container(web, None)
        .await
        .expect("inspect")
        .network_settings
        .and_then(|n| n.ports)
        .expect("ports");
    for (key, list) in &bindings {
        for b in list.iter().flatten() {
            assert_eq!(
                b.host_ip.as_deref(),
                Some("127.0.0.1"),
                "{key} published beyond loopback"
            );
        }
    }
    assert_eq!(engine.published_port(web, 9999).await.expect("port"), None);
    let response = tokio::task::spawn_blocking(move || http_get(port))
        .await
        .expect("probe");
    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 "),
        "{response}"
    );
    assert!(response.ends_with(PAGE), "{response}");

    // The engine runs the exec probe; it passes once `api` reaches `web` by its alias.
    let mut health = None;
    for _ in 0..60 {
        let observed = engine.observe(&name).await.expect("observe");
        health = observed.services["api"].containers[0].health;
        if health == Some(HealthState::Healthy) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(health, Some(HealthState::Healthy));

    // A stopped container is started again, and reported unchanged.
    // busybox httpd runs as PID 1 and ignores SIGTERM: do not wait the default 10 s for it.
    let stop = bollard::query_parameters::StopContainerOptions {
        t: Some(0),
        signal: None,
    };
    engine
        .client()
        .stop_container(web, Some(stop))
        .await
        .expect("stop");
    let observed = engine.observe(&name).await.expect("observe");
    assert!(
        matches!(
            observed.services["web"].containers[0].state,
            ContainerState::Exited { .. }
        ),
        "{}",
        observed.services["web"].containers[0].state
    );
    let web_spec = specs.iter().find(|s| &s.name == web).expect("web spec");
    assert_eq!(
        engine.run_container(web_spec).await.expect("restart"),
        Outcome::Unchanged
    );
    let observed = engine.observe(&name).await.expect("observe");
    assert!(observed.services["web"].containers[0].state.is_running());

    // An image that is not on the engine is never pulled.
    let mut missing = web_spec.clone();
    missing.name = format!("{name}-missing-{run}");
    missing.image = format!("rollout-test-missing:{}", unique("t"));
    match engine.run_container(&missing).await {
        Err(EngineError::ImageMissing { image }) => assert_eq!(image, missing.image),
        other => panic!("expected ImageMissing, got {other:?}"),
    }

    // Removal leaves nothing, and is idempotent.
    let selector = BTreeMap::from([(labels::ENVIRONMENT.to_string(), name.clone())]);
    let removed = engine.remove_labelled(&selector).await.expect("remove");
    assert_eq!(
        removed,
        Removed {
            containers: 2,
            networks: 1,
            volumes: 1
        }
    );
    assert!(
        engine
            .observe(&name)
            .await
            .expect("observe")
            .services
            .is_empty()
    );
    assert_eq!(
        engine.remove_labelled(&selector).await.expect("again"),
        Removed::default()
    );
    assert!(
        engine.remove_labelled(&BTreeMap::new()).await.is_err(),
        "an empty selector matches everything"
    );
}

/// Builds a busybox image whose containers sleep unless told otherwise.
async fn sleeper_image(engine: &DockerEngine) -> ImageGuard {
    let tag = format!("rollout-test-sleeper:{}", unique("t"));
    let guard = ImageGuard(tag.clone());
    let context = busybox_context("CMD [\"/bin/busybox\",\"sleep\",\"3600\"]\n", vec![])
        .expect("busybox context (is busybox-static installed?)");
    engine.build_image(&tag, &context).await.expect("build");
    guard
}

/// A unique environment with its own network; everything labelled with it is removed on drop.
struct Fixture {
    env: String,
    labels: BTreeMap<String, String>,
    network: String,
    image: String,
    _cleanup: Cleanup,
}

impl Fixture {
    async fn new(engine: &DockerEngine, image: &ImageGuard, prefix: &str) -> Fixture {
        let env = unique(prefix);
        let cleanup = Cleanup {
            environment: env.clone(),
        };
        let labels = BTreeMap::from([
            (labels::ENVIRONMENT.to_string(), env.clone()),
            (labels::ROLE.to_string(), Role::Test.as_str().to_string()),
            (labels::RUN.to_string(), "r1".to_string()),
        ]);
        let network = format!("{env}-net");
        engine
            .ensure_network(&network, &labels)
            .await
            .expect("network");
        Fixture {
            env,
            labels,
            network,
            image: image.0.clone(),
            _cleanup: cleanup,
        }
    }

    fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(labels::ENVIRONMENT.to_string(), self.env.clone())])
    }

    /// A container of the fixture; `command` `None` sleeps.
    fn spec(&self, suffix: &str, command: Option<&[&str]>) -> ContainerSpec {
        ContainerSpec {
            name: format!("{}-{suffix}", self.env),
            image: self.image.clone(),
            command: command.map(|c| c.iter().map(|a| a.to_string()).collect()),
            env: BTreeMap::new(),
            labels: self.labels.clone(),
            network: self.network.clone(),
            aliases: vec![suffix.to_string()],
            probe_ports: vec![],
            volumes: vec![],
            healthcheck: None,
            publish: Vec::new(),
            restart: rollout::engine::spec::Restart::Never,
        }
    }

    async fn volume(&self, engine: &DockerEngine, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.env);
        engine
            .ensure_volume(&name, &self.labels)
            .await
            .expect("volume");
        name
    }
}

fn args(command: &[&str]) -> Vec<String> {
    command.iter().map(|a| a.to_string()).collect()
}

/// The next event, within `limit`.
async fn next_event(events: &mut EventStream, limit: Duration) -> ContainerEvent {
    match tokio::time::timeout(limit, events.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("event stream failed: {e}"),
        Ok(None) => panic!("event stream ended"),
        Err(_) => panic!("no event within {limit:?}"),
    }
}

fn exec_health(command: &[&str], retries: u32) -> Health {
    Health {
        probe: Probe::Exec {
            command: args(command),
        },
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
        start_period: Duration::ZERO,
        retries,
    }
}

#[tokio::test]
async fn events_report_a_start_then_the_exit_code() {
    let engine = engine().await;
    let image = sleeper_image(&engine).await;
    let fx = Fixture::new(&engine, &image, "ev").await;
    let mut events = engine.events(&fx.selector()).await.expect("events");
    // Not ours: another environment's container is not reported.
    let other = Fixture::new(&engine, &image, "evx").await;
    let noise = other.spec("noise", Some(&["/bin/sh", "-c", "exit 0"]));
    engine.run_container(&noise).await.expect("run");

    let spec = fx.spec("exit3", Some(&["/bin/sh", "-c", "exit 3"]));
    engine.run_container(&spec).await.expect("run");
    let limit = Duration::from_secs(20);
    let event = |kind| ContainerEvent {
        container: spec.name.clone(),
        kind,
    };
    // In order, and nothing about the other environment's container in between.
    assert_eq!(
        next_event(&mut events, limit).await,
        event(EventKind::Started)
    );
    assert_eq!(
        next_event(&mut events, limit).await,
        event(EventKind::Died { exit_code: 3 })
    );
    let status = engine.status(&spec.name).await.expect("status");
    assert_eq!(
        status.map(|s| s.state),
        Some(ContainerState::Exited { code: 3 })
    );
    engine.run_container(&noise).await.expect("run again");
    let spec2 = fx.spec("exit0", Some(&["/bin/sh", "-c", "exit 0"]));
    engine.run_container(&spec2).await.expect("run");
    assert_eq!(
        next_event(&mut events, limit).await.container,
        spec2.name,
        "only the selected environment's events come through"
    );
}

#[tokio::test]
async fn health_events_and_status_follow_the_engine_health_check() {
    let engine = engine().await;
    let image = sleeper_image(&engine).await;
    let fx = Fixture::new(&engine, &image, "hl").await;
    assert_eq!(
        engine
            .status(&format!("{}-missing", fx.env))
            .await
            .expect("status"),
        None
    );
    let mut events = engine.events(&fx.selector()).await.expect("events");
    let mut good = fx.spec("good", None);
    good.healthcheck = Some(exec_health(&["/bin/true"], 3));
    let mut bad = fx.spec("bad", None);
    bad.healthcheck = Some(exec_health(&["/bin/false"], 1));
    let plain = fx.spec("plain", None);
    for spec in [&good, &bad, &plain] {
        engine.run_container(spec).await.expect("run");
    }

    let mut seen: BTreeMap<String, HealthState> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Ok(ContainerEvent {
                container,
                kind: EventKind::Health(h),
            }))) => {
                seen.entry(container).or_insert(h);
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for health events, got {other:?}; seen {seen:?}"),
        }
    }
    assert_eq!(
        seen.get(&good.name),
        Some(&HealthState::Healthy),
        "{seen:?}"
    );
    assert_eq!(
        seen.get(&bad.name),
        Some(&HealthState::Unhealthy),
        "{seen:?}"
    );

    let status = engine
        .status(&good.name)
        .await
        .expect("status")
        .expect("exists");
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.health, Some(HealthState::Healthy));
    assert!(status.has_healthcheck);
    assert_eq!(status.restart_count, 0);
    let status = engine
        .status(&plain.name)
        .await
        .expect("status")
        .expect("exists");
    assert_eq!((status.health, status.has_healthcheck), (None, false));
}

#[tokio::test]
async fn exec_returns_output_and_exit_code_and_times_out() {
    let engine = engine().await;
    let image = sleeper_image(&engine).await;
    let fx = Fixture::new(&engine, &image, "ex").await;
    let spec = fx.spec("box", None);
    engine.run_container(&spec).await.expect("run");
    let limit = Duration::from_secs(20);

    let out = engine
        .exec(
            &spec.name,
            &args(&["/bin/sh", "-c", "echo out; echo err >&2; exit 4"]),
            limit,
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 4);
    assert!(out.output.contains("out\n"), "{out:?}");
    assert!(out.output.contains("err\n"), "{out:?}");

    // Long output is cut to its last 64 KiB.
    let script = "i=0; while [ $i -lt 3000 ]; do echo line-$i-................................; i=$((i+1)); done";
    let out = engine
        .exec(&spec.name, &args(&["/bin/sh", "-c", script]), limit)
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 0);
    assert!(out.output.len() <= 64 * 1024, "{}", out.output.len());
    assert!(out.output.len() > 60 * 1024, "{}", out.output.len());
    assert!(
        out.output
            .ends_with("line-2999-................................\n")
    );

    let started = Instant::now();
    match engine
        .exec(
            &spec.name,
            &args(&["/bin/sleep", "5"]),
            Duration::from_millis(500),
        )
        .await
    {
        Err(EngineError::ExecTimeout {
            container,
            command,
            limit,
        }) => {
            assert_eq!(container, spec.name);
            assert_eq!(command, "/bin/sleep 5");
            assert_eq!(limit, Duration::from_millis(500));
        }
        other => panic!("expected ExecTimeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    engine
        .stop_container(&spec.name, Duration::ZERO)
        .await
        .expect("stop");
    match engine.exec(&spec.name, &args(&["/bin/true"]), limit).await {
        Err(e @ EngineError::Call { .. }) => {
            assert!(e.to_string().contains("not running"), "{e}");
            assert!(e.to_string().contains(&spec.name), "{e}");
        }
        other => panic!("expected a call error, got {other:?}"),
    }
}

#[tokio::test]
async fn logs_tail_returns_the_last_lines() {
    let engine = engine().await;
    let image = sleeper_image(&engine).await;
    let fx = Fixture::new(&engine, &image, "lg").await;
    let spec = fx.spec(
        "talker",
        Some(&[
            "/bin/sh",
            "-c",
            "echo oops >&2; sleep 0.2; for i in 1 2 3 4 5; do echo line$i; done; sleep 3600",
        ]),
    );
    engine.run_container(&spec).await.expect("run");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = engine.logs_tail(&spec.name, 3).await.expect("logs");
        if last.last().map(String::as_str) == Some("line5") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, vec!["line3", "line4", "line5"]);
    let all = engine.logs_tail(&spec.name, 100).await.expect("logs");
    assert_eq!(
        all,
        vec!["oops", "line1", "line2", "line3", "line4", "line5"],
        "stderr is included"
    );
    assert!(
        engine
            .logs_tail(&format!("{}-missing", fx.env), 3)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn copy_volume_copies_contents_and_leaves_the_source_alone() {
    let engine = engine().await;
    let image = sleeper_image(&engine).await;
    let fx = Fixture::new(&engine, &image, "cp").await;
    let limit = Duration::from_secs(20);
    let a = fx.volume(&engine, "a").await;
    let mut writer = fx.spec("writer", None);
    writer.volumes = vec![(a.clone(), "/data".into())];
    engine.run_container(&writer).await.expect("run");
    let write = "echo hello > /data/f && mkdir -p /data/sub && echo nested > /data/sub/g && chmod 600 /data/sub/g";
    let out = engine
        .exec(&writer.name, &args(&["/bin/sh", "-c", write]), limit)
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 0, "{out:?}");

    let b = format!("{}-b", fx.env);
    let mut copy_labels = fx.labels.clone();
    copy_labels.insert("rollout.copy-of".into(), a.clone());
    engine
        .copy_volume(&a, &b, &copy_labels)
        .await
        .expect("copy");

    // A leftover helper of a crashed copy is replaced; copying again is harmless.
    let helper = format!("rollout-copy-{b}");
    let mut leftover = fx.spec("leftover", None);
    leftover.name = helper.clone();
    engine.run_container(&leftover).await.expect("leftover");
    engine
        .copy_volume(&a, &b, &copy_labels)
        .await
        .expect("copy again");
    assert_eq!(
        engine.status(&helper).await.expect("status"),
        None,
        "the helper container is removed"
    );

    let mut reader = fx.spec("reader", None);
    reader.volumes = vec![(a.clone(), "/a".into()), (b.clone(), "/b".into())];
    engine.run_container(&reader).await.expect("run");
    let read = |script: &'static str| {
        let engine = &engine;
        let name = reader.name.clone();
        async move {
            let out = engine
                .exec(&name, &args(&["/bin/sh", "-c", script]), limit)
                .await
                .expect("exec");
            assert_eq!(out.exit_code, 0, "{script}: {out:?}");
            out.output
        }
    };
    assert_eq!(read("cat /b/f /b/sub/g").await, "hello\nnested\n");
    assert_eq!(read("ls -l /b/sub/g").await[..10].to_string(), "-rw-------");
    assert_eq!(read("ls /a; cat /a/f").await, "f\nsub\nhello\n");

    let volume = engine.client().inspect_volume(&b).await.expect("b exists");
    assert_eq!(
        volume.labels.get("rollout.copy-of").map(String::as_str),
        Some(a.as_str())
    );

    let missing = format!("{}-nope", fx.env);
    match engine.copy_volume(&missing, &b, &copy_labels).await {
        Err(e) => assert!(e.to_string().contains("no volume"), "{e}"),
        Ok(_) => panic!("copied from a missing volume"),
    }
    assert!(
        engine.client().inspect_volume(&missing).await.is_err(),
        "a missing source is not created"
    );
}

/// Waits until container `name` has exited; its exit code.
async fn exit_code(engine: &DockerEngine, name: &str, limit: Duration) -> i64 {
    let t0 = Instant::now();
    loop {
        let status = engine.status(name).await.expect("status");
        if let Some(ContainerStatus {
            state: ContainerState::Exited { code },
            ..
        }) = status
        {
            return code;
        }
        assert!(
            t0.elapsed() < limit,
            "{name} still running after {limit:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scripts of the kubernetes backend's copy Jobs (`copyjob::SINK_SCRIPT` and
/// `SOURCE_SCRIPT`, as the Jobs run them: `sh -c`) run here by busybox in two containers on one
/// network, as the sink and source pods do: the sink starts listening two seconds late (the
/// source is refused, and tries again), and the copy arrives whole: contents, modes, numeric
/// owners, a symlink, an empty directory, a 3 MB random file. A source whose `tar` cannot read
/// its directory fails at once (it does not try again after connecting), and so does the sink,
/// which received no archive. Only the scripts run here: the Jobs around them are the mock API
/// server's (`engine::kube::mock::testenv`).
#[tokio::test]
async fn the_copy_job_scripts_stream_a_volume_whole_between_two_busybox_containers() {
    use rollout::engine::kube::copyjob::{SINK_SCRIPT, SOURCE_SCRIPT};
    let engine = engine().await;
    let tag = format!("rollout-test-copyjob:{}", unique("t"));
    let image = ImageGuard(tag.clone());
    let context = rollout::engine::image::util_context().expect("util context (busybox-static?)");
    engine.build_image(&tag, &context).await.expect("build");
    let fx = Fixture::new(&engine, &image, "cj").await;
    let limit = Duration::from_secs(60);
    let source = fx.volume(&engine, "source").await;
    let sink = fx.volume(&engine, "sink").await;
    let scratch = fx.volume(&engine, "scratch").await;

    let seed = "mkdir -p /data/sub/deep /data/empty && echo hello > /data/sub/a.txt \
        && busybox head -c 3000000 /dev/urandom > /data/big && busybox ln -s big /data/link \
        && busybox chown 999:998 /data/sub/a.txt && busybox chmod 640 /data/sub/a.txt \
        && busybox chmod 700 /data/sub/deep";
    let mut seeder = fx.spec("seed", Some(&["sh", "-c", seed]));
    seeder.volumes = vec![(source.clone(), "/data".into())];
    engine.run_container(&seeder).await.expect("seed");
    assert_eq!(exit_code(&engine, &seeder.name, limit).await, 0);

    let late_sink = format!("sleep 2; {SINK_SCRIPT}");
    let mut receiving = fx.spec("sink", Some(&["sh", "-c", &late_sink]));
    receiving.volumes = vec![(sink.clone(), "/data".into())];
    engine.run_container(&receiving).await.expect("sink");
    let mut sending = fx.spec("source", Some(&["sh", "-c", SOURCE_SCRIPT]));
    sending.volumes = vec![
        (source.clone(), "/data".into()),
        (scratch.clone(), "/tmp".into()),
    ];
    sending.env = BTreeMap::from([(
        "SINK".to_string(),
        rollout::engine::spec::EnvValue::Plain("sink".to_string()),
    )]);
    engine.run_container(&sending).await.expect("source");
    let sent = exit_code(&engine, &sending.name, limit).await;
    let received = exit_code(&engine, &receiving.name, limit).await;
    let logs = |name: String| {
        let engine = &engine;
        async move { engine.logs_tail(&name, 20).await.expect("logs").join("\n") }
    };
    assert_eq!(sent, 0, "source: {}", logs(sending.name.clone()).await);
    assert_eq!(received, 0, "sink: {}", logs(receiving.name.clone()).await);
    assert!(
        logs(sending.name.clone()).await.contains("can't connect"),
        "the source was refused first, and tried again"
    );

    // Both trees described the same way: type, mode, numeric owner, size, link target, and
    // every file's checksum.
    let describe = "cd /data && busybox find . | busybox sort | while read -r f; do \
        busybox stat -c '%n %F %a %u:%g %s %N' \"$f\"; done; \
        busybox find . -type f | busybox sort | busybox xargs busybox md5sum";
    let mut described = Vec::new();
    for (suffix, volume) in [("read-source", &source), ("read-sink", &sink)] {
        let mut reader = fx.spec(suffix, Some(&["sh", "-c", describe]));
        reader.volumes = vec![(volume.clone(), "/data".into())];
        engine.run_container(&reader).await.expect("reader");
        assert_eq!(exit_code(&engine, &reader.name, limit).await, 0);
        described.push(logs(reader.name.clone()).await);
    }
    assert!(
        described[0].contains("./sub/a.txt regular file 640 999:998 6"),
        "{}",
        described[0]
    );
    assert!(
        described[0].contains("./link symbolic link"),
        "{}",
        described[0]
    );
    assert!(
        described[0].contains("./empty directory"),
        "{}",
        described[0]
    );
    assert!(described[0].contains(" 3000000 "), "{}", described[0]);
    assert_eq!(described[0], described[1], "the copy is whole");

    // A source whose tar fails: no retry after connecting, and the sink fails too.
    let broken = fx.volume(&engine, "broken").await;
    let scratch2 = fx.volume(&engine, "scratch2").await;
    let mut receiving = fx.spec("sink2", Some(&["sh", "-c", SINK_SCRIPT]));
    receiving.volumes = vec![(broken.clone(), "/data".into())];
    engine.run_container(&receiving).await.expect("sink2");
    let mut sending = fx.spec("source2", Some(&["sh", "-c", SOURCE_SCRIPT]));
    // No /data to read.
    sending.volumes = vec![(scratch2.clone(), "/tmp".into())];
    sending.env = BTreeMap::from([(
        "SINK".to_string(),
        rollout::engine::spec::EnvValue::Plain("sink2".to_string()),
    )]);
    engine.run_container(&sending).await.expect("source2");
    assert_eq!(exit_code(&engine, &sending.name, limit).await, 1);
    let said = logs(sending.name.clone()).await;
    assert_eq!(
        said.matches("tar: can't change directory to '/data'")
            .count(),
        1,
        "tar ran once: no second try after connecting: {said}"
    );
    assert!(!said.contains("never answered"), "{said}");
    assert_eq!(exit_code(&engine, &receiving.name, limit).await, 1);
    assert!(logs(receiving.name.clone()).await.contains("tar"));
}

#[tokio::test]
async fn pause_and_unpause_round_trip() {
    let engine = engine().await;
    let image = sleeper_image(&engine).await;
    let fx = Fixture::new(&engine, &image, "pz").await;
    let spec = fx.spec("box", None);
    engine.run_container(&spec).await.expect("run");
    let state = |engine: &DockerEngine, name: String| {
        let engine = engine.clone();
        async move {
            engine
                .status(&name)
                .await
                .expect("status")
                .expect("exists")
                .state
        }
    };
    engine.pause(&spec.name).await.expect("pause");
    engine.pause(&spec.name).await.expect("pause again");
    assert_eq!(
        state(&engine, spec.name.clone()).await,
        ContainerState::Paused
    );
    engine.unpause(&spec.name).await.expect("unpause");
    engine.unpause(&spec.name).await.expect("unpause again");
    assert_eq!(
        state(&engine, spec.name.clone()).await,
        ContainerState::Running
    );
    engine
        .stop_container(&spec.name, Duration::ZERO)
        .await
        .expect("stop");
    assert!(
        engine.pause(&spec.name).await.is_err(),
        "a stopped container cannot be paused"
    );
}

#[tokio::test]
async fn list_labelled_finds_containers_networks_and_volumes() {
    let engine = engine().await;
    let image = sleeper_image(&engine).await;
    let fx = Fixture::new(&engine, &image, "ls").await;
    let volume = fx.volume(&engine, "data").await;
    let spec = fx.spec("box", Some(&["/bin/sh", "-c", "exit 0"]));
    engine.run_container(&spec).await.expect("run");

    let found = engine.list_labelled(&fx.selector()).await.expect("list");
    let names: Vec<(ObjectKind, &str)> = found.iter().map(|o| (o.kind, o.name.as_str())).collect();
    assert_eq!(
        names,
        vec![
            (ObjectKind::Container, spec.name.as_str()),
            (ObjectKind::Network, fx.network.as_str()),
            (ObjectKind::Volume, volume.as_str()),
        ],
        "stopped containers are listed too"
    );
    for object in &found {
        assert_eq!(
            object.labels, fx.labels,
            "{:?} {}",
            object.kind, object.name
        );
    }
    let mut narrower = fx.selector();
    narrower.insert(labels::RUN.to_string(), "r2".to_string());
    assert!(
        engine
            .list_labelled(&narrower)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn stop_container_stops_and_tolerates_missing_or_stopped_containers() {
    let engine = engine().await;
    let image = sleeper_image(&engine).await;
    let fx = Fixture::new(&engine, &image, "st").await;
    engine
        .stop_container(&format!("{}-missing", fx.env), Duration::from_secs(1))
        .await
        .expect("a missing container is fine");
    let spec = fx.spec("box", None);
    engine.run_container(&spec).await.expect("run");
    // busybox sleep as PID 1 ignores SIGTERM: the grace, rounded up to 1 s, runs out.
    let started = Instant::now();
    engine
        .stop_container(&spec.name, Duration::from_millis(200))
        .await
        .expect("stop");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let status = engine
        .status(&spec.name)
        .await
        .expect("status")
        .expect("exists");
    assert!(
        matches!(status.state, ContainerState::Exited { .. }),
        "{}",
        status.state
    );
    engine
        .stop_container(&spec.name, Duration::from_secs(1))
        .await
        .expect("a stopped container is fine");
}
