//! `DockerEngine` against the real engine: busybox images built from memory, an environment run
//! from a manifest, read back by labels alone, probed from the host on 127.0.0.1, and removed
//! without a trace. No mocks; the tests fail (never skip) when there is no engine.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rollout::engine::docker::DockerEngine;
use rollout::engine::image::{BuildContext, ContextFile, busybox_context};
use rollout::engine::spec::{
    base_labels, production_container, production_network, production_volume,
};
use rollout::engine::{
    ContainerState, Engine, EngineError, HealthState, Outcome, Removed, Role, ServiceSnapshot,
    labels,
};
use rollout::manifest::env::{self, Environment};
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
                    let options = bollard::query_parameters::RemoveImageOptions {
                        force: true,
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
