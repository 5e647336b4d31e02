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
        .stdout_has("waiting for an approval by `client`");
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

/// The parked run's id, from a refused promote's first line.
fn parked_run(out: &crate::support::Output) -> String {
    out.run_id()
}

fn web_serves(env: &str, image: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--format",
            "{{.Image}}",
            "--filter",
            &format!("label=rollout.environment={env}"),
            "--filter",
            "label=rollout.service=web",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).trim() == image
}

#[test]
fn an_approval_gate_parks_the_run_until_another_person_approves_and_promote_resumes_it() {
    let name = unique("apv");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let playbook = "apiVersion: rollout/v1\nkind: Playbook\nname: p\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: web, path: /healthz } } ] }\n  - approve: { by: client }\n  - promote: { drain: 1s }\n";
    let project = Project::new()
        .manifest(&name, &one(&name))
        .playbook("p", playbook);
    let as_ana = [("USER", "ana")];
    let as_bob = [("USER", "bob")];

    // Parked at the gate: exit 3, nothing in production, the test version gone.
    let parked = project
        .run_with(&["promote", "--yes"], &as_ana)
        .code(3)
        .stdout_has("waiting for an approval by `client`")
        .stdout_has("by someone other than ana (two-person rule)")
        // Issue 23: the hint names the playbook it was parked with.
        .stdout_has(&format!(
            "then `rollout promote -e {name} -p p` resumes the run"
        ));
    let run = parked_run(&parked);
    nothing_runs(&name);
    project
        .run(&["status"])
        .code(0)
        .stdout_has(&format!("Waiting: run {run} (started by ana"))
        .stdout_has("an approval by `client`")
        .stdout_has(&format!("then `rollout promote -e {name} -p p` resumes it"));

    // The starter cannot approve; an unknown role is bad input; another person can.
    project
        .run_with(&["approve", &run, "--by", "client"], &as_ana)
        .code(3)
        .stderr_has("two-person rule: ana started run");
    project
        .run_with(&["approve", &run, "--by", "ops"], &as_bob)
        .code(1)
        .stderr_has("does not wait for `ops`; it waits for an approval by `client`");
    project
        .run_with(&["approve", "nosuchrun", "--by", "client"], &as_bob)
        .code(1)
        .stderr_has("run nosuchrun is not waiting for an approval");
    project
        .run_with(
            &[
                "approve",
                &run,
                "--by",
                "client",
                "--note",
                "go ahead tonight",
            ],
            &as_bob,
        )
        .code(0)
        .stdout_has(&format!(
            "Recorded the approval by `client` (bob) for run {run} of {name}. `rollout promote -e {name} -p p` resumes it."
        ));

    // The next promote resumes the same run from the gate: the test steps are not run again.
    let resumed = project
        .run_with(&["promote", "--yes"], &as_ana)
        .code(0)
        .stdout_has(&format!("resuming run {run} (started by ana) at step 3"))
        .stdout_has("approved by bob as `client`: go ahead tonight")
        .stdout_has("promoted");
    assert_eq!(resumed.run_id(), run, "the same run");
    assert!(!resumed.stdout.contains("1. testEnv"), "{resumed}");
    assert!(web_serves(&name, "shop-web:2.4.0"));

    let report = project.run(&["report", &run, "-o", "json"]).code(0).json();
    assert_eq!(report["approvals"][0]["by"], "bob");
    assert_eq!(report["approvals"][0]["role"], "client");
    assert_eq!(report["approvals"][0]["note"], "go ahead tonight");
    assert_eq!(report["user"], "ana");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(steps, ["ok", "ok", "ok", "ok"], "{report}");
    project
        .run(&["report", &run, "-o", "md"])
        .code(0)
        .stdout_has("go ahead tonight");
    let audit = project.run(&["audit", "list", "-o", "json"]).code(0).json();
    assert!(
        audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["event"]["kind"] == "approvalRecorded" && e["event"]["by"] == "bob"),
        "{audit}"
    );
    project.run(&["audit", "verify"]).code(0);

    // Once it ran, the run is no longer waiting.
    project
        .run_with(&["approve", &run, "--by", "client"], &as_bob)
        .code(1)
        .stderr_has("is not waiting for an approval");
}

#[test]
fn a_third_party_service_needs_an_unexpired_authorization_and_the_rule_can_be_turned_off() {
    let name = unique("tpa");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let managed = one(&name).replace(
        "    ports:",
        "    managedBy: { thirdParty: hosting-co }\n    ports:",
    );
    let playbook = "apiVersion: rollout/v1\nkind: Playbook\nname: p\ntwoPersonRule: false\nsteps:\n  - approve: { by: lead }\n  - promote: { drain: 1s }\n";
    let project = Project::new()
        .manifest(&name, &managed)
        .playbook("p", playbook);
    let as_ana = [("USER", "ana")];

    let refused = project
        .run_with(&["promote", "--yes"], &as_ana)
        .code(3)
        .stdout_has(
            "web managed by third party `hosting-co`: its recorded authorization is required",
        );
    let run = parked_run(&refused);
    nothing_runs(&name);
    project
        .run_with(&["approve", &run, "--by", "hosting-co"], &as_ana)
        .code(1)
        .stderr_has("needs its reference: --reference REF");
    project
        .run_with(
            &[
                "approve",
                &run,
                "--by",
                "hosting-co",
                "--reference",
                "CHG-1",
                "--expires",
                "soon",
            ],
            &as_ana,
        )
        .code(1)
        .stderr_has("--expires `soon`: expected a duration");
    project
        .run_with(
            &[
                "approve",
                &run,
                "--by",
                "hosting-co",
                "--reference",
                "CHG-1",
                "--expires",
                "1s",
            ],
            &as_ana,
        )
        .code(0);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Expired: it does not count.
    project
        .run_with(&["promote", "--yes"], &as_ana)
        .code(3)
        .stdout_has("its authorization expired at");
    nothing_runs(&name);
    project
        .run_with(
            &[
                "approve",
                &run,
                "--by",
                "hosting-co",
                "--reference",
                "CHG-2",
                "--expires",
                "1h",
                "--note",
                "window agreed with their NOC",
            ],
            &as_ana,
        )
        .code(0)
        .stdout_has("reference CHG-2");
    // Authorized; now the approval gate, which the starter may pass with twoPersonRule: false.
    project
        .run_with(&["promote", "--yes"], &as_ana)
        .code(3)
        .stdout_has("waiting for an approval by `lead`");
    nothing_runs(&name);
    project
        .run_with(&["approve", &run, "--by", "lead"], &as_ana)
        .code(0);
    project
        .run_with(&["promote", "--yes"], &as_ana)
        .code(0)
        .stdout_has("promoted");
    assert!(web_serves(&name, "shop-web:2.4.0"));
    let report = project.run(&["report", &run, "-o", "json"]).code(0).json();
    assert_eq!(report["authorizations"][0]["party"], "hosting-co");
    assert_eq!(report["authorizations"][0]["reference"], "CHG-2");
    assert_eq!(report["approvals"][0]["by"], "ana");
}

/// A rollback would change a third party's service without a run to authorize: it is refused
/// before anything starts, says how to go back instead, and production and history stay.
#[test]
fn a_rollback_of_a_third_partys_service_is_refused_and_changes_nothing() {
    let name = unique("tpr");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let managed = |image: &str| {
        one(&name).replace("shop-web:2.4.0", image).replace(
            "    ports:",
            "    managedBy: { thirdParty: hosting-co }\n    ports:",
        )
    };
    let playbook =
        "apiVersion: rollout/v1\nkind: Playbook\nname: p\nsteps:\n  - promote: { drain: 1s }\n";
    let project = Project::new()
        .manifest(&name, &managed("shop-web:2.4.0"))
        .playbook("p", playbook);
    let authorized_promote = |project: &Project, reference: &str| {
        let run = parked_run(&project.run(&["promote", "--yes"]).code(3));
        project
            .run(&[
                "approve",
                &run,
                "--by",
                "hosting-co",
                "--reference",
                reference,
            ])
            .code(0);
        project
            .run(&["promote", "--yes"])
            .code(0)
            .stdout_has("promoted");
    };
    authorized_promote(&project, "CHG-1");
    let project = project.manifest(&name, &managed("shop-web:2.5.0"));
    authorized_promote(&project, "CHG-2");
    assert!(web_serves(&name, "shop-web:2.5.0"));
    let before = project.run(&["history", "-o", "json"]).code(0).json();

    project
        .run(&["rollback"])
        .code(3)
        .stdout_has("web managed by third party `hosting-co`: a rollback changes it too")
        .stdout_has("rollout approve RUN --by hosting-co");
    assert!(web_serves(&name, "shop-web:2.5.0"));
    assert_eq!(
        project.run(&["history", "-o", "json"]).code(0).json(),
        before
    );
}

/// Issue 23: a run parked at its gate with an approval recorded is never superseded silently by
/// another change: refused (exit 3, `error:`), saying what would be lost and how to resume it,
/// unless `--supersede` says so.
#[test]
fn an_approved_parked_run_is_superseded_only_with_supersede() {
    let name = unique("sup");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let playbook = "apiVersion: rollout/v1\nkind: Playbook\nname: gated\nsteps:\n  - approve: { by: client }\n  - promote: { drain: 1s }\n";
    let project = Project::new()
        .manifest(&name, &one(&name))
        .playbook("gated", playbook);
    let as_ana = [("USER", "ana")];
    let as_bob = [("USER", "bob")];
    let parked = project.run_with(&["promote", "--yes"], &as_ana).code(3);
    let run = parked.run_id();
    project
        .run_with(&["approve", &run, "--by", "client"], &as_bob)
        .code(0);

    let project = project.manifest(&name, &one(&name).replace("2.4.0", "2.5.0"));
    let refused = project
        .run_with(&["promote", "--yes"], &as_ana)
        .code(3)
        .stderr_has("error: ")
        .stderr_has(&format!(
            "run {run} waits at its gate with an approval by `client` (bob) recorded"
        ))
        .stderr_has(&format!(
            "resume it with `rollout promote -e {name} -p gated`, or pass --supersede"
        ));
    assert!(!refused.stdout.contains("superseded"), "{refused}");
    project
        .run(&["status"])
        .code(0)
        .stdout_has(&format!("Waiting: run {run}"));
    nothing_runs(&name);

    let superseding = project
        .run_with(&["promote", "--yes", "--supersede"], &as_ana)
        .code(3)
        .stdout_has(&format!(
            "Run {run} was waiting for an approval by `client`; it is superseded by this change."
        ))
        .stdout_has("waiting for an approval by `client`");
    assert_ne!(
        superseding.run_id(),
        run,
        "a new run, parked at its own gate"
    );
    nothing_runs(&name);
}

/// Issue 23: an approval the environment requires (`requires.approvals`) holds every
/// promotion, whatever playbook is chosen: a playbook without an approve step gets one before its
/// first production step (the plan says so), parks there, and resumes after the approval.
#[test]
fn an_approval_the_environment_requires_holds_a_playbook_without_one() {
    let name = unique("req");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let quick = "apiVersion: rollout/v1\nkind: Playbook\nname: quick\nsteps:\n  - testEnv: {}\n  - promote: { drain: 1s }\n";
    let manifest = one(&name).replace(
        "client: acme\n",
        "client: acme\nrequires:\n  approvals: [client]\n",
    );
    let project = Project::new()
        .manifest(&name, &manifest)
        .playbook("quick", quick);
    let as_ana = [("USER", "ana")];
    let as_bob = [("USER", "bob")];

    let plan = project
        .run(&["plan", "-p", "quick", "-o", "json"])
        .code(2)
        .json();
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["description"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        steps[1], "approve: wait for an approval by `client`",
        "{plan}"
    );
    assert!(
        plan["steps"][1]["notes"][0]
            .as_str()
            .unwrap_or_default()
            .contains("requires an approval by `client` for every promotion"),
        "{plan}"
    );
    project
        .run(&["plan", "-p", "quick"])
        .code(2)
        .stdout_has("requires.approvals");

    let parked = project
        .run_with(&["promote", "-p", "quick", "--yes"], &as_ana)
        .code(3)
        .stdout_has("waiting for an approval by `client`")
        .stdout_has(&format!(
            "`rollout promote -e {name} -p quick` resumes the run"
        ));
    let run = parked.run_id();
    nothing_runs(&name);
    project
        .run_with(&["approve", &run, "--by", "client"], &as_bob)
        .code(0);
    let resumed = project
        .run_with(&["promote", "-p", "quick", "--yes"], &as_ana)
        .code(0)
        .stdout_has(&format!("resuming run {run}"))
        .stdout_has("approved by bob as `client`")
        .stdout_has("promoted");
    assert_eq!(resumed.run_id(), run);
    assert!(web_serves(&name, "shop-web:2.4.0"));
}
