//! Which playbook a command uses: `-p`, the only one, `default`, or the built-in.

use crate::support::{Project, one_service};

const STANDARD: &str = "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - testEnv: {}\n  - promote: {}\n";
const FAST: &str =
    "apiVersion: rollout/v1\nkind: Playbook\nname: fast\nsteps:\n  - promote: { drain: 1s }\n";
const DEFAULT: &str = "apiVersion: rollout/v1\nkind: Playbook\nname: default\nsteps:\n  - testEnv: { ttl: 30m }\n  - promote: {}\n";

fn project(env: &str) -> Project {
    Project::new().manifest(env, &one_service(env, "rollout-never-built:1"))
}

#[test]
fn several_playbooks_without_default_is_an_error_listing_them() {
    project("pb1")
        .playbook("standard", STANDARD)
        .playbook("fast", FAST)
        .run(&["plan"])
        .code(1)
        .stderr_has(
            "several playbooks and none named `default` (fast, standard); choose one with -p",
        );
}

#[test]
fn unknown_playbook_lists_the_known_ones() {
    project("pb2")
        .playbook("standard", STANDARD)
        .run(&["plan", "-p", "nightly"])
        .code(1)
        .stderr_has("no playbook `nightly` in this project (playbooks: standard)");
}

#[test]
fn the_only_playbook_is_used_and_named() {
    let env = crate::support::unique("pb");
    project(&env)
        .playbook("fast", FAST)
        .run(&["plan"])
        .code(2)
        .stdout_has("playbook fast (")
        .stdout_has("promote: switch all traffic, drain the old version for up to 1s");
}

#[test]
fn default_wins_among_several() {
    let env = crate::support::unique("pb");
    project(&env)
        .playbook("fast", FAST)
        .playbook("default", DEFAULT)
        .run(&["plan"])
        .code(2)
        .stdout_has("playbook default (")
        .stdout_has("ttl 30m");
}

#[test]
fn explicit_playbook() {
    let env = crate::support::unique("pb");
    project(&env)
        .playbook("fast", FAST)
        .playbook("default", DEFAULT)
        .run(&["plan", "-p", "fast"])
        .code(2)
        .stdout_has("playbook fast (");
}

#[test]
fn no_playbook_uses_the_builtin_safe_default() {
    let env = crate::support::unique("pb");
    let out = project(&env).run(&["plan", "-o", "json"]).code(2);
    let plan = out.json();
    assert_eq!(plan["playbook"]["name"], "default (built-in)");
    assert_eq!(plan["playbook"]["file"], serde_json::Value::Null);
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"]["step"].as_str().expect("kind"))
        .collect();
    assert_eq!(steps, ["testEnv", "smoke", "promote", "smoke"]);
    assert_eq!(plan["steps"][1]["step"]["target"], "test");
    assert_eq!(plan["steps"][3]["step"]["target"], "production");
}

#[test]
fn several_environments_need_e() {
    Project::new()
        .manifest("a", &one_service("a", "x:1"))
        .manifest("b", &one_service("b", "x:1"))
        .run(&["plan"])
        .code(1)
        .stderr_has("this project has several environments (a, b); choose one with -e");
}

#[test]
fn approve_steps_must_come_before_production_and_after_test_steps() {
    let late = "apiVersion: rollout/v1\nkind: Playbook\nname: late\nsteps:\n  - testEnv: {}\n  - canary: { weight: 10, hold: 1s }\n  - approve: { by: client }\n  - smoke: { target: test, checks: [] }\n  - promote: {}\n";
    let p = project("pb9").playbook("late", late);
    let before = p.snapshot();
    p.run(&["plan", "-p", "late"])
        .code(1)
        .stderr_has("playbooks/late.yaml:7:5: the approval by `client` comes after a step that changes production")
        .stderr_has("playbooks/late.yaml:8:5: a test-version step after an `approve` step");
    assert_eq!(p.snapshot(), before, "bad input changes nothing");
    let bad_flag = "apiVersion: rollout/v1\nkind: Playbook\nname: p\ntwoPersonRule: maybe\nsteps:\n  - promote: {}\n";
    project("pb10")
        .playbook("p", bad_flag)
        .run(&["plan", "-p", "p"])
        .code(1)
        .stderr_has("playbooks/p.yaml:4:");
}
