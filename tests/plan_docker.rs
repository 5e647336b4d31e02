//! `rollout plan` against the real Docker engine: services that do not run yet are listed
//! (exit 2); once they run with rollout's labels the plan is empty (exit 0); every kind of
//! change is reported, secret values never.

use rollout::engine::spec::production_container;
use rollout::manifest::env::Environment;

use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{Project, unique};

const SECRET: &str = "s3cr3t-Value-0xC0FFEE";
const OTHER_SECRET: &str = "another-S3cret-9f2b";

fn manifest(env: &str, web_image: &str, db_image: &str) -> String {
    format!(
        r#"apiVersion: rollout/v1
kind: Environment
name: {env}
client: acme
services:
  web:
    image: {web_image}
    env: {{ API_URL: "http://api:9000" }}
    secrets: {{ SESSION_KEY: {{ fromEnv: T_SESSION_KEY }} }}
    ports: [ {{ name: http, container: 8080, public: 18080 }} ]
    dependsOn: [api]
    health: {{ http: {{ port: 8080, path: /healthz }} }}
  api:
    image: shop-api:1.9.0
    ports: [ {{ name: api, container: 9000 }} ]
    dependsOn: [db]
    health: {{ tcp: {{ port: 9000 }} }}
  db:
    image: {db_image}
    stateful: true
    volumes: [ {{ name: data, path: /var/lib/data }} ]
    managedBy: {{ thirdParty: hosting-co }}
"#
    )
}

const PLAYBOOK: &str = "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - testEnv: { copyData: [db] }\n  - smoke: { checks: [ { http: { service: web, path: / } } ] }\n  - approve: { by: client }\n  - canary: { weight: 10, hold: 1s }\n  - promote: { drain: 2s }\n";

/// Starts every service of the project's environment through the engine seam, with the labels,
/// as a promotion would.
async fn start_production(project: &Project, secret: &str) -> Environment {
    let lookup = |v: &str| (v == "T_SESSION_KEY").then(|| secret.to_string());
    crate::support::docker::start_production(project.path(), "r1", &lookup).await
}

#[test]
fn plan_lists_every_service_until_they_run_then_reports_no_change() {
    let rt = runtime();
    let name = unique("plan");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let project = Project::new()
        .manifest(&name, &manifest(&name, "shop-web:2.4.0", "shop-db:15"))
        .playbook("standard", PLAYBOOK)
        .env("T_SESSION_KEY", SECRET);

    let out = project.run(&["plan"]).code(2);
    for svc in ["+ web", "+ api", "+ db"] {
        assert!(out.stdout.contains(svc), "{svc} is listed\n{out}");
    }
    assert!(
        out.stdout
            .contains("Plan: 3 to create, 0 to update, 0 to restart, 0 to remove, 0 unchanged."),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("canary: 10% of traffic for 1s - skipped: nothing runs yet"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("authorization by third party `hosting-co`, which manages db"),
        "{out}"
    );
    assert!(out.stdout.contains("approval by `client`"), "{out}");
    out.nowhere(SECRET);

    rt.block_on(start_production(&project, SECRET));

    let out = project.run(&["plan"]).code(0).stdout_has("No changes:");
    assert!(
        !out.stdout.contains("Steps"),
        "no steps when nothing changes\n{out}"
    );
    let json = project.run(&["plan", "-o", "json"]).code(0).json();
    assert_eq!(json["environment"], name.as_str());
    assert!(
        json["services"]
            .as_array()
            .expect("services")
            .iter()
            .all(|s| s["action"] == "unchanged"),
        "{json}"
    );
    assert_eq!(json["steps"].as_array().expect("steps").len(), 0);
}

#[test]
fn secret_values_never_appear_in_plan_output() {
    let rt = runtime();
    let name = unique("secret");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let project = Project::new()
        .manifest(&name, &manifest(&name, "shop-web:2.4.0", "shop-db:15"))
        .env("T_SESSION_KEY", SECRET);
    rt.block_on(start_production(&project, SECRET));
    project.run(&["plan"]).code(0).nowhere(SECRET);

    // The same project with the secret rotated: the change is reported, neither value is.
    let rotated = Project::new()
        .manifest(&name, &manifest(&name, "shop-web:2.4.0", "shop-db:15"))
        .env("T_SESSION_KEY", OTHER_SECRET);
    let text = rotated
        .run(&["plan"])
        .code(2)
        .stdout_has("secret SESSION_KEY: changed (value hidden)");
    text.nowhere(SECRET).nowhere(OTHER_SECRET);
    let json = rotated
        .run(&["plan", "-o", "json"])
        .code(2)
        .nowhere(SECRET)
        .nowhere(OTHER_SECRET)
        .json();
    let web = json["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "web")
        .expect("web")
        .clone();
    assert_eq!(web["action"], "update");
    assert_eq!(
        web["changes"],
        serde_json::json!([{ "change": "secretChanged", "key": "SESSION_KEY" }])
    );
    // Verbose diagnostics must not leak it either.
    rotated
        .run(&["-vv", "plan"])
        .code(2)
        .nowhere(SECRET)
        .nowhere(OTHER_SECRET);
}

#[test]
fn changes_are_reported_per_service_with_gates() {
    let rt = runtime();
    let name = unique("chg");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let running = Project::new()
        .manifest(&name, &manifest(&name, "shop-web:2.4.0", "shop-db:15"))
        .env("T_SESSION_KEY", SECRET);
    rt.block_on(start_production(&running, SECRET));

    // web gets a new image; db (managed by a third party, stateful) a new version too.
    let next = manifest(&name, "shop-web:2.5.0", "shop-db:16").replace(
        "API_URL: \"http://api:9000\"",
        "API_URL: \"http://api:9001\", FEATURE: on",
    );
    let project = Project::new()
        .manifest(&name, &next)
        .playbook("standard", PLAYBOOK)
        .env("T_SESSION_KEY", SECRET);
    let out = project.run(&["plan"]).code(2);
    for line in [
        "~ web",
        "image: shop-web:2.4.0 -> shop-web:2.5.0",
        "env API_URL: \"http://api:9000\" -> \"http://api:9001\"",
        "env FEATURE: added (\"on\")",
        "= api",
        "~ db",
        "image: shop-db:15 -> shop-db:16",
        "canary: 10% of traffic for 1s",
        "web: blue-green: new version beside the old, switch, drain",
        "db: stop-start (stateful)",
        "authorization by third party `hosting-co`, which manages db",
        "warning: `db` is stateful",
        "Plan: 0 to create, 2 to update, 0 to restart, 0 to remove, 1 unchanged.",
    ] {
        assert!(out.stdout.contains(line), "plan lacks {line:?}\n{out}");
    }
    assert!(
        !out.stdout.contains("skipped"),
        "the canary runs: web has a public port\n{out}"
    );

    // A service removed from the manifest is reported for removal.
    let without_web = manifest(&name, "shop-web:2.4.0", "shop-db:15");
    let trimmed: String = {
        let start = without_web.find("  web:").expect("web");
        let end = without_web.find("  api:").expect("api");
        format!("{}{}", &without_web[..start], &without_web[end..])
    };
    Project::new()
        .manifest(&name, &trimmed)
        .run(&["plan"])
        .code(2)
        .stdout_has("- web")
        .stdout_has("remove");
}

#[test]
fn a_stopped_service_is_planned_for_restart() {
    let rt = runtime();
    let name = unique("stop");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let project = Project::new()
        .manifest(&name, &manifest(&name, "shop-web:2.4.0", "shop-db:15"))
        .env("T_SESSION_KEY", SECRET);
    let env = rt.block_on(start_production(&project, SECRET));
    let container = production_container(&env, env.service("api").expect("api"), "r1").name;
    let stopped = std::process::Command::new("docker")
        .args(["stop", "-t", "1", &container])
        .output()
        .expect("docker stop");
    assert!(stopped.status.success(), "{stopped:?}");
    project
        .run(&["plan"])
        .code(2)
        .stdout_has("~ api")
        .stdout_has("restart")
        .stdout_has("not running (exited");
}
