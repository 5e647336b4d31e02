//! `rollout down` against the real engine: refused without --yes off a terminal, then the
//! production (containers, network, edge proxy) removed with its data volume kept, listed by
//! `runs` and in the audit trail; `--volumes` then removes the volume.

use std::net::TcpStream;

use crate::promote::serving;
use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{Project, unique};

const QUICK: &str =
    "apiVersion: rollout/v1\nkind: Playbook\nname: quick\nsteps:\n  - promote: { drain: 1s }\n";

/// The public port answers 200 to every request.
fn answers(port: u16) {
    let got = serving(port);
    assert!(got.iter().all(|g| g.starts_with("200 ")), "{got:?}");
}

/// The names `docker <what> ls` (or `ps -a`) lists with the environment's label.
fn listed(what: &[&str], env: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(what)
        .args([
            "--format",
            if what[0] == "ps" {
                "{{.Names}}"
            } else {
                "{{.Name}}"
            },
            "--filter",
            &format!("label=rollout.environment={env}"),
        ])
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn containers(env: &str) -> Vec<String> {
    listed(&["ps", "-a"], env)
}

fn networks(env: &str) -> Vec<String> {
    listed(&["network", "ls"], env)
}

fn volumes(env: &str) -> Vec<String> {
    listed(&["volume", "ls"], env)
}

#[test]
fn down_removes_production_and_keeps_volumes_unless_asked() {
    let rt = runtime();
    let name = unique("dn");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let port = crate::support::free_port();
    let manifest = format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices:\n  web:\n    image: shop-web:2.4.0\n    ports: [ {{ name: http, container: 8080, public: {port} }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }} }}\n  db:\n    image: shop-db:15\n    stateful: true\n    ports: [ {{ container: 5432, protocol: tcp }} ]\n    volumes: [ {{ name: data, path: /var/lib/data }} ]\n"
    );
    let project = Project::new()
        .file("rollout.yaml", "proxy: { bind: 127.0.0.1 }\n")
        .playbook("quick", QUICK)
        .manifest(&name, &manifest);
    project.run(&["promote", "--yes"]).code(0);
    answers(port);
    let before = containers(&name);
    assert!(
        before.contains(&format!("rollout-proxy-{name}")),
        "{before:?}"
    );
    assert_eq!(before.len(), 3, "web, db and the proxy: {before:?}");
    // A test version of the environment goes with it.
    project.run(&["test-env", "up"]).code(0);
    assert!(containers(&name).len() > 3, "{:?}", containers(&name));
    let before = containers(&name);
    let data = format!("{name}-db-data");
    assert!(volumes(&name).contains(&data), "{:?}", volumes(&name));

    // No terminal, no --yes: refused, nothing removed.
    project
        .run(&["down"])
        .code(1)
        .stderr_has("pass --yes")
        .stderr_has("nothing was removed");
    assert_eq!(containers(&name), before);
    answers(port);

    let down = project
        .run(&["down", "--yes"])
        .code(0)
        .stdout_has("remove test versions: ok removed")
        .stdout_has("kept")
        .stdout_has(&data);
    let run = down.run_id();
    assert!(down.stdout.starts_with(&format!("run {run}\n")), "{down}");
    assert_eq!(containers(&name), Vec::<String>::new());
    assert_eq!(networks(&name), Vec::<String>::new());
    assert!(volumes(&name).contains(&data), "{:?}", volumes(&name));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the public port still answers"
    );

    let runs = project.run(&["runs", "-o", "json"]).code(0).json();
    let listed = runs["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["run"] == run.as_str())
        .unwrap_or_else(|| panic!("{run} not in {runs}"))
        .clone();
    assert_eq!(listed["kind"], "down", "{listed}");
    assert_eq!(listed["outcome"], "passed", "{listed}");
    project
        .run(&["report", &run])
        .code(0)
        .stdout_has("Down")
        .stdout_has(&data);
    let audit = project.run(&["audit"]).code(0);
    let lines: Vec<&str> = audit.stdout.lines().filter(|l| l.contains(&run)).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("runStarted") && l.contains("down by")),
        "{audit}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("runFinished") && l.contains("removed")),
        "{audit}"
    );

    project
        .run(&["down", "--yes", "--volumes"])
        .code(0)
        .stdout_has("remove volumes");
    assert_eq!(volumes(&name), Vec::<String>::new());
    project
        .run(&["down", "--yes"])
        .code(0)
        .stdout_has("Nothing to remove");
}

#[test]
fn down_is_refused_for_a_service_a_third_party_manages() {
    let name = unique("dm");
    let manifest = format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices:\n  web:\n    image: shop-web:2.4.0\n  pay:\n    image: shop-api:1.9.0\n    managedBy: {{ thirdParty: paycorp }}\n"
    );
    let project = Project::new().manifest(&name, &manifest);
    project
        .run(&["down", "--yes"])
        .code(3)
        .stderr_has("pay (managed by paycorp)")
        .stderr_has("nothing was removed");
    let runs = project.run(&["runs", "-o", "json"]).code(0).json();
    assert_eq!(runs["runs"], serde_json::json!([]), "{runs}");
}
