//! Gates before production is touched: confirmation, change windows (with the emergency
//! override), approvals and third-party authorizations. Refusals exit 3 and change nothing.

use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{Project, unique};

fn one(env: &str) -> String {
    format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {env}\nclient: acme\nservices:\n  web:\n    image: shop-web:2.4.0\n    health: {{ http: {{ port: 8080, path: /healthz }} }}\n    ports: [ {{ container: 8080 }} ]\n"
    )
}

fn nothing_runs(env: &str) {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=rollout.environment={env}"),
        ])
        .output()
        .expect("docker ps");
    assert!(out.stdout.is_empty(), "a refused run created containers");
}

#[test]
fn promote_without_a_terminal_needs_yes() {
    let name = unique("cfm");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    Project::new()
        .manifest(&name, &one(&name))
        .run(&["promote"])
        .code(1)
        .stderr_has("refusing to change production without a confirmation");
    nothing_runs(&name);
}

#[test]
fn a_closed_window_refuses_with_the_next_opening_and_an_emergency_overrides_it() {
    let name = unique("win");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let today = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::get("Europe/Paris").expect("tz"))
        .date();
    let until = today.checked_add(jiff::Span::new().days(2)).expect("date");
    let playbook = format!(
        "apiVersion: rollout/v1\nkind: Playbook\nname: p\nwindow: {{ days: [mon, tue, wed, thu, fri, sat, sun], from: \"00:00\", to: \"23:59\", tz: Europe/Paris, freezes: [ {{ from: \"{today}\", to: \"{until}\", reason: \"year-end freeze\" }} ] }}\nsteps:\n  - promote: {{ drain: 1s }}\n"
    );
    let project = Project::new()
        .manifest(&name, &one(&name))
        .playbook("p", &playbook);
    let out = project.run(&["promote", "--yes"]).code(3);
    out.stdout_has("refused: frozen from")
        .stdout_has("year-end freeze")
        .stdout_has("it opens next at")
        .stdout_has("--emergency");
    nothing_runs(&name);

    let out = project
        .run(&[
            "promote",
            "--yes",
            "--emergency",
            "--reason",
            "payment outage fix",
            "-o",
            "json",
        ])
        .code(0);
    let report = out.json();
    assert_eq!(report["outcome"]["outcome"], "promoted");
    assert_eq!(
        report["steps"][0]["description"],
        "emergency override of the change window"
    );
    assert_eq!(report["steps"][0]["detail"], "payment outage fix");
    let history = project.run(&["history", "-o", "json"]).code(0).json();
    assert_eq!(history["revisions"][0]["reason"], "payment outage fix");
}

#[test]
fn approvals_and_third_parties_refuse_until_they_are_recorded() {
    let name = unique("apr");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let approve = "apiVersion: rollout/v1\nkind: Playbook\nname: p\nsteps:\n  - approve: { by: client }\n  - promote: {}\n";
    Project::new()
        .manifest(&name, &one(&name))
        .playbook("p", approve)
        .run(&["promote", "--yes"])
        .code(3)
        .stdout_has("waits for an approval by `client`");
    nothing_runs(&name);
    let managed = one(&name).replace(
        "    ports:",
        "    managedBy: { thirdParty: hosting-co }\n    ports:",
    );
    Project::new()
        .manifest(&name, &managed)
        .run(&["promote", "--yes"])
        .code(3)
        .stdout_has(
            "web managed by third party `hosting-co`: its recorded authorization is required",
        );
    nothing_runs(&name);
}
