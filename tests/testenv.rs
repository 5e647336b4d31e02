//! Test versions on the real engine: bring-up in order, data copies, failures noticed at once,
//! teardown on every path (end, failure, SIGINT, a killed process), production untouched.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rollout::engine::image::busybox_context;
use rollout::engine::{Engine, labels};

use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{Project, unique};

/// Objects (containers, networks, volumes) of an environment with a given role, via the CLI
/// so the test checks what a user would see.
fn objects(env: &str, role: &str) -> Vec<String> {
    let filter = format!("label={}={env}", labels::ENVIRONMENT);
    let role = format!("label={}={role}", labels::ROLE);
    let mut out = Vec::new();
    for kind in [
        vec!["ps", "-a"],
        vec!["network", "ls"],
        vec!["volume", "ls"],
    ] {
        let o = Command::new("docker")
            .args(&kind)
            .args(["-q", "--filter", &filter, "--filter", &role])
            .output()
            .expect("docker");
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| format!("{} {l}", kind[0])),
        );
    }
    out
}

fn inspect(container: &str, format: &str) -> String {
    let o = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn docker_exec(container: &str, cmd: &[&str]) -> String {
    let o = Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(cmd)
        .output()
        .expect("docker exec");
    assert!(
        o.status.success(),
        "docker exec {container} {cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn shop(env: &str) -> String {
    format!(
        r#"apiVersion: rollout/v1
kind: Environment
name: {env}
client: acme
services:
  web:
    image: shop-web:2.4.0
    env: {{ API_URL: "http://api:9000" }}
    ports: [ {{ name: http, container: 8080, public: 18080 }} ]
    dependsOn: [api]
    health: {{ http: {{ port: 8080, path: /healthz }}, startPeriod: 20s }}
  api:
    image: shop-api:1.9.0
    ports: [ {{ name: api, container: 9000 }} ]
    dependsOn: [db]
    health: {{ tcp: {{ port: 9000 }}, startPeriod: 20s }}
  db:
    image: shop-db:15
    stateful: true
    ports: [ {{ name: db, container: 5432, protocol: tcp }} ]
    volumes: [ {{ name: data, path: /var/lib/data }} ]
    health: {{ exec: [/bin/sh, -c, "test -f /var/lib/data/boot.log"], interval: 500ms, startPeriod: 20s }}
"#
    )
}

const REHEARSAL: &str = r#"apiVersion: rollout/v1
kind: Playbook
name: nightly
steps:
  - testEnv: { ttl: 10m, copyData: [db] }
  - smoke:
      checks:
        - http: { service: web, path: /, expectBody: "shop web 2.4.0" }
        - http: { service: api, path: /status, expectJson: { path: $.status, equals: ok } }
        - tcp: { service: db, port: 5432 }
        - exec: { service: api, command: [/bin/check] }
        - exec: { service: db, command: [cat, /var/lib/data/marker], expectOutput: "production-data" }
  - approve: { by: client }
  - promote: { drain: 1s }
  - smoke: { target: production, checks: [ { http: { service: web, path: / } } ] }
"#;

#[test]
fn three_services_come_up_healthy_in_order_and_go_away() {
    let rt = runtime();
    let name = unique("te");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let project = Project::new().manifest(&name, &shop(&name));

    let out = project.run(&["test-env", "up", "-o", "json"]).code(0);
    let json = out.json();
    let run = json["run"].as_str().expect("run id").to_string();
    assert_eq!(json["network"], format!("{name}-test-{run}"));
    let names: BTreeMap<&str, String> = ["web", "api", "db"]
        .iter()
        .map(|s| (*s, format!("{name}-test-{run}-{s}")))
        .collect();
    for (svc, container) in &names {
        assert_eq!(json["services"][svc]["container"], container.as_str());
        assert_eq!(
            inspect(container, "{{.State.Running}}"),
            "true",
            "{svc} runs"
        );
        assert_eq!(
            inspect(container, "{{index .Config.Labels \"rollout.role\"}}"),
            "test"
        );
        assert_eq!(
            inspect(container, "{{index .Config.Labels \"rollout.run\"}}"),
            run
        );
        // Probe ports are published on loopback only.
        let bindings = inspect(container, "{{json .HostConfig.PortBindings}}");
        assert!(
            bindings.contains("127.0.0.1") && !bindings.contains("0.0.0.0"),
            "{bindings}"
        );
    }
    // Dependency order: each service started after the one it depends on.
    // Parsed: Docker trims trailing zeros of the fraction, so the strings do not sort.
    let started = |svc: &str| -> jiff::Timestamp {
        inspect(&names[svc], "{{.State.StartedAt}}")
            .parse()
            .expect("timestamp")
    };
    let (db, api, web) = (started("db"), started("api"), started("web"));
    assert!(db < api && api < web, "db {db} < api {api} < web {web}");
    // Names resolve inside the copy exactly as in production: `api` is the test version's api.
    let status = docker_exec(
        &names["web"],
        &["wget", "-q", "-O", "-", "http://api:9000/status"],
    );
    assert!(status.contains("\"ok\""), "{status}");
    // The published port answers from the host.
    let web_port = json["services"]["web"]["ports"]["8080"]
        .as_u64()
        .expect("web port");
    let body = http_get(web_port as u16, "/");
    assert!(body.contains("shop web 2.4.0"), "{body}");

    project.run(&["test-env", "list"]).code(0).stdout_has(&run);
    project
        .run(&["test-env", "down"])
        .code(0)
        .stdout_has(&format!("removed test version {run}"));
    assert_eq!(
        objects(&name, "test"),
        Vec::<String>::new(),
        "nothing of the test version is left"
    );
    // Scoped to this environment: other tests' test versions may be up meanwhile.
    project
        .run(&["test-env", "list", "-e", &name])
        .code(0)
        .stdout_has("no test versions");
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Starts the environment's production through the engine seam and writes `marker` into db's volume.
async fn production_with_data(
    project: &Project,
    marker: &str,
) -> rollout::manifest::env::Environment {
    let env = crate::support::docker::start_production(project.path(), "p1", &|_| None).await;
    let engine = engine().await;
    let db = format!("{}-db-p1", env.name);
    let wrote = engine
        .exec(
            &db,
            &[
                "/bin/sh".into(),
                "-c".into(),
                format!("echo {marker} > /var/lib/data/marker"),
            ],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(wrote.exit_code, 0);
    env
}

#[test]
fn rehearsal_copies_production_data_and_never_touches_production() {
    let rt = runtime();
    let name = unique("reh");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let project = Project::new()
        .manifest(&name, &shop(&name))
        .playbook("nightly", REHEARSAL);
    rt.block_on(production_with_data(&project, "production-data"));
    let prod: Vec<String> = ["web", "api", "db"]
        .iter()
        .map(|s| format!("{name}-{s}-p1"))
        .collect();
    let before: Vec<String> = prod
        .iter()
        .map(|c| {
            inspect(
                c,
                "{{.Id}} {{.State.StartedAt}} {{.RestartCount}} {{.State.Status}}",
            )
        })
        .collect();

    let out = project.run(&["rehearse"]).code(0);
    assert!(
        out.stdout.starts_with("run "),
        "the first line names the run\n{out}"
    );
    for line in [
        "db data copy: copied while production db was paused for",
        "exec in db: cat /var/lib/data/marker",
        "skipped in rehearsal (a gate before production is touched)",
        "skipped in rehearsal (changes production)",
        "skipped in rehearsal (targets production)",
        "teardown of the test version: removed 3 containers, 1 networks, 1 volumes",
        "passed",
    ] {
        assert!(
            out.stdout.contains(line),
            "rehearsal output lacks {line:?}\n{out}"
        );
    }
    let after: Vec<String> = prod
        .iter()
        .map(|c| {
            inspect(
                c,
                "{{.Id}} {{.State.StartedAt}} {{.RestartCount}} {{.State.Status}}",
            )
        })
        .collect();
    assert_eq!(
        before, after,
        "production containers are untouched (same id, start, restarts, running)"
    );
    assert!(after.iter().all(|a| a.ends_with("running")), "{after:?}");
    assert_eq!(
        docker_exec(&prod[2], &["cat", "/var/lib/data/marker"]),
        "production-data"
    );
    assert_eq!(objects(&name, "test"), Vec::<String>::new());
    // The report was written.
    let run = out
        .stdout
        .lines()
        .next()
        .expect("first line")
        .trim_start_matches("run ")
        .to_string();
    let report = project
        .path()
        .join(format!(".rollout/reports/{name}/{run}.json"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    assert_eq!(report["outcome"]["outcome"], "passed");
}

#[test]
fn a_test_copy_changes_nothing_in_production_data() {
    let rt = runtime();
    let name = unique("cpy");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let project = Project::new()
        .manifest(&name, &shop(&name))
        .playbook("nightly", REHEARSAL);
    rt.block_on(production_with_data(&project, "original"));
    let json = project
        .run(&["test-env", "up", "-p", "nightly", "-o", "json"])
        .code(0)
        .json();
    let test_db = json["services"]["db"]["container"]
        .as_str()
        .expect("db")
        .to_string();
    assert_eq!(
        docker_exec(&test_db, &["cat", "/var/lib/data/marker"]),
        "original",
        "the copy holds production's data"
    );
    docker_exec(
        &test_db,
        &[
            "/bin/sh",
            "-c",
            "echo changed-in-test > /var/lib/data/marker",
        ],
    );
    assert_eq!(
        docker_exec(&format!("{name}-db-p1"), &["cat", "/var/lib/data/marker"]),
        "original",
        "production's volume is unchanged"
    );
    project.run(&["test-env", "down"]).code(0);
    assert_eq!(objects(&name, "test"), Vec::<String>::new());
}

fn crash_and_hang_images() {
    runtime().block_on(async {
        let engine = engine().await;
        let crash = busybox_context(
            "CMD [\"/bin/sh\", \"-c\", \"echo booting; echo 'fatal: DATABASE_URL is not set' >&2; sleep 0.5; exit 3\"]\n",
            Vec::new(),
        )
        .expect("context");
        engine.build_image("rollout-test-crash:1", &crash).await.expect("build crash image");
        let hang = busybox_context("CMD [\"/bin/sh\", \"-c\", \"echo up; exec sleep 600\"]\n", Vec::new()).expect("context");
        engine.build_image("rollout-test-hang:1", &hang).await.expect("build hang image");
    });
}

fn one(env: &str, image: &str, health: &str) -> String {
    format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {env}\nclient: acme\nservices:\n  app:\n    image: {image}\n    ports: [ {{ container: 8080 }} ]\n    health: {health}\n"
    )
}

#[test]
fn a_crashing_service_fails_the_run_at_once_with_its_logs() {
    crash_and_hang_images();
    let name = unique("crash");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let project = Project::new().manifest(
        &name,
        &one(
            &name,
            "rollout-test-crash:1",
            "{ tcp: { port: 8080 }, startPeriod: 60s }",
        ),
    );
    let t0 = Instant::now();
    let out = project.run(&["test-env", "up"]).code(1);
    let took = t0.elapsed();
    let out = out
        .stderr_has("app exited with code 3 while the test version came up")
        .stderr_has("fatal: DATABASE_URL is not set");
    // Noticed from the engine's events, not by waiting out the 60 s start period.
    assert!(
        took < Duration::from_secs(30),
        "failed after {took:?}\n{out}"
    );
    assert_eq!(
        objects(&name, "test"),
        Vec::<String>::new(),
        "a failed bring-up removes what it created"
    );
}

#[test]
fn a_health_check_that_never_passes_fails_at_its_deadline() {
    crash_and_hang_images();
    let name = unique("sick");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let health =
        "{ tcp: { port: 8080 }, interval: 200ms, timeout: 200ms, startPeriod: 1s, retries: 2 }";
    let project = Project::new().manifest(&name, &one(&name, "rollout-test-hang:1", health));
    let out = project.run(&["test-env", "up"]).code(1);
    out.stderr_has("app did not become healthy within 1.")
        .stderr_has("127.0.0.1");
    assert_eq!(objects(&name, "test"), Vec::<String>::new());
}

/// Starts `rollout rehearse` on a project whose service never becomes healthy and waits until
/// its test container exists.
fn rehearse_in_background(project: &Project, name: &str) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .arg("-C")
        .arg(project.path())
        .arg("rehearse")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rollout");
    let t0 = Instant::now();
    while objects(name, "test").iter().all(|o| !o.starts_with("ps")) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no test container appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn sigint_during_bring_up_leaves_nothing_behind() {
    crash_and_hang_images();
    let name = unique("intr");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let project = Project::new().manifest(
        &name,
        &one(
            &name,
            "rollout-test-hang:1",
            "{ tcp: { port: 8080 }, startPeriod: 120s }",
        ),
    );
    let child = rehearse_in_background(&project, &name);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(1),
        "stopped by SIGINT: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cancelled"), "{stdout}");
    assert_eq!(
        objects(&name, "test"),
        Vec::<String>::new(),
        "SIGINT tears the test version down"
    );
}

#[test]
fn a_test_version_left_by_a_killed_process_is_removed_by_the_next_command() {
    crash_and_hang_images();
    let name = unique("kill");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let project = Project::new().manifest(
        &name,
        &one(
            &name,
            "rollout-test-hang:1",
            "{ tcp: { port: 8080 }, startPeriod: 120s }",
        ),
    );
    let mut child = rehearse_in_background(&project, &name);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert!(
        !objects(&name, "test").is_empty(),
        "a killed process leaves its test version behind"
    );
    project
        .run(&["test-env", "list", "-e", &name])
        .code(0)
        .stderr_has("removed test version")
        .stderr_has("is gone");
    assert_eq!(objects(&name, "test"), Vec::<String>::new());
}

#[test]
fn an_expired_test_version_is_removed_by_the_next_command() {
    let rt = runtime();
    let name = unique("ttl");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let project = Project::new().manifest(
        &name,
        &one(
            &name,
            "shop-web:2.4.0",
            "{ http: { port: 8080, path: /healthz } }",
        ),
    );
    project.run(&["test-env", "up", "--ttl", "1s"]).code(0);
    std::thread::sleep(Duration::from_millis(1500));
    project
        .run(&["test-env", "list"])
        .code(0)
        .stderr_has("its TTL has passed");
    assert_eq!(objects(&name, "test"), Vec::<String>::new());
}

#[test]
fn a_failing_smoke_check_fails_the_rehearsal() {
    let rt = runtime();
    let name = unique("smk");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let playbook = "apiVersion: rollout/v1\nkind: Playbook\nname: p\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: app, path: /, expectBody: \"shop web 9.9\", retries: 1 } } ] }\n";
    let project = Project::new()
        .manifest(
            &name,
            &one(
                &name,
                "shop-web:2.4.0",
                "{ http: { port: 8080, path: /healthz } }",
            ),
        )
        .playbook("p", playbook);
    let out = project.run(&["rehearse", "-o", "json"]).code(1);
    let report = out.json();
    assert_eq!(report["outcome"]["outcome"], "failed");
    assert_eq!(report["steps"][1]["status"], "failed");
    assert_eq!(report["steps"][1]["checks"][0]["attempts"], 2);
    assert_eq!(objects(&name, "test"), Vec::<String>::new());
}

#[test]
fn without_a_manifest_health_check_the_images_own_is_used() {
    runtime().block_on(async {
        let engine = engine().await;
        let ctx = busybox_context(
            "HEALTHCHECK --interval=300ms --timeout=1s --retries=3 CMD test -f /ready\nCMD [\"/bin/sh\", \"-c\", \"sleep 1; touch /ready; exec sleep 600\"]\n",
            Vec::new(),
        )
        .expect("context");
        engine.build_image("rollout-test-imagehealth:2", &ctx).await.expect("build");
    });
    let name = unique("ihc");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let manifest = format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices:\n  app:\n    image: rollout-test-imagehealth:2\n"
    );
    let project = Project::new().manifest(&name, &manifest);
    let out = project
        .run(&["test-env", "up"])
        .code(0)
        .stdout_has("app starting: healthy (the image's HEALTHCHECK)");
    let run = out
        .stdout
        .lines()
        .next()
        .expect("run line")
        .trim_start_matches("run ")
        .to_string();
    assert_eq!(
        inspect(
            &format!("{name}-test-{run}-app"),
            "{{.State.Health.Status}}"
        ),
        "healthy"
    );
    project.run(&["test-env", "down"]).code(0);
}
