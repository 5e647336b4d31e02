//! Bad input: exit 1, a message naming file:line:column with the offending line and a caret,
//! and nothing created or changed.

use crate::support::Project;

/// Runs `plan` on a project whose only manifest is `yaml`, expecting a located error.
fn plan_fails(yaml: &[u8], at: &str, message: &str) -> crate::support::Output {
    let project = Project::new().file("manifests/shop.yaml", yaml);
    let before = project.snapshot();
    let out = project.run(&["plan"]).code(1);
    let path = project.path().join("manifests/shop.yaml");
    let located = format!("{}:{at}: ", path.display());
    assert!(
        out.stderr.contains(&located),
        "expected {located:?} in stderr\n{out}"
    );
    assert!(
        out.stderr.contains(message),
        "expected {message:?} in stderr\n{out}"
    );
    assert_eq!(
        project.snapshot(),
        before,
        "a failed plan must not change the project"
    );
    assert!(
        !project.path().join(".rollout").exists(),
        "no state may be created on bad input"
    );
    out
}

const HEAD: &str = "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\n";

#[test]
fn empty_file() {
    let project = Project::new().file("manifests/shop.yaml", "\n# nothing here\n");
    let path = project.path().join("manifests/shop.yaml");
    project.run(&["plan"]).code(1).stderr_has(&format!(
        "{}: the file is empty: expected an Environment manifest",
        path.display()
    ));
}

#[test]
fn binary_file() {
    plan_fails(
        b"apiVersion: rollout/v1\nkind: \x00\x01\x02",
        "2:7",
        "this is not a text file",
    );
}

#[test]
fn tab_indentation() {
    let yaml = format!("{HEAD}services:\n  web:\n\timage: x:1\n");
    let out = plan_fails(yaml.as_bytes(), "7:1", "a tab is used for indentation");
    assert!(
        out.stderr.contains("7 |  image: x:1\n  | ^"),
        "caret under the tab\n{out}"
    );
}

#[test]
fn wrong_type() {
    let yaml = format!(
        "{HEAD}services:\n  web:\n    image: x:1\n    ports:\n      - {{ container: eighty }}\n"
    );
    let out = plan_fails(yaml.as_bytes(), "9:22", "expected an integer here");
    assert!(
        out.stderr.contains("9 |       - { container: eighty }"),
        "{out}"
    );
    assert!(
        out.stderr.contains("  |                      ^"),
        "caret under the value\n{out}"
    );
}

#[test]
fn unknown_key() {
    let yaml = format!("{HEAD}services:\n  web:\n    image: x:1\n    dependson: [db]\n");
    plan_fails(
        yaml.as_bytes(),
        "8:5",
        "unknown key `dependson`, expected one of image, command, env",
    );
}

#[test]
fn unknown_top_level_key() {
    let yaml = format!("{HEAD}servces: {{}}\n");
    plan_fails(yaml.as_bytes(), "5:1", "unknown key `servces`");
}

#[test]
fn dependency_cycle() {
    let yaml = format!(
        "{HEAD}services:\n  web:\n    image: w:1\n    dependsOn: [api]\n  api:\n    image: a:1\n    dependsOn: [db]\n  db:\n    image: d:1\n    dependsOn: [web]\n"
    );
    plan_fails(
        yaml.as_bytes(),
        "6:3",
        "dependsOn has a cycle: web -> api -> db -> web",
    );
}

#[test]
fn unknown_dependency() {
    let yaml = format!("{HEAD}services:\n  web:\n    image: w:1\n    dependsOn: [cache]\n");
    plan_fails(
        yaml.as_bytes(),
        "8:17",
        "service `web` depends on `cache`, which is not a service of this environment (services: web)",
    );
}

#[test]
fn duplicate_public_port() {
    let yaml = format!(
        "{HEAD}services:\n  web:\n    image: w:1\n    ports: [{{ container: 80, public: 18080 }}]\n  admin:\n    image: a:1\n    ports: [{{ container: 81, public: 18080 }}]\n"
    );
    plan_fails(
        yaml.as_bytes(),
        "11:38",
        "public port 18080 is already used by service `web`",
    );
}

#[test]
fn duplicate_container_port() {
    let yaml = format!(
        "{HEAD}services:\n  web:\n    image: w:1\n    ports: [{{ container: 80 }}, {{ container: 80 }}]\n"
    );
    plan_fails(
        yaml.as_bytes(),
        "8:45",
        "container port 80 is listed twice in service `web`",
    );
}

#[test]
fn port_out_of_range() {
    let yaml =
        format!("{HEAD}services:\n  web:\n    image: w:1\n    ports: [{{ container: 70000 }}]\n");
    plan_fails(
        yaml.as_bytes(),
        "8:26",
        "container port 70000 is out of range",
    );
}

#[test]
fn bad_duration() {
    let yaml = format!(
        "{HEAD}services:\n  web:\n    image: w:1\n    health: {{ tcp: {{ port: 80 }}, interval: 5 }}\n"
    );
    plan_fails(yaml.as_bytes(), "8:44", "duration `5` has no unit");
}

#[test]
fn duplicate_key() {
    let yaml = format!("{HEAD}services:\n  web:\n    image: w:1\n    image: w:2\n");
    plan_fails(yaml.as_bytes(), "8:5", "duplicate mapping key: image");
}

#[test]
fn missing_secret_variable_names_the_variable_not_a_value() {
    let yaml = format!(
        "{HEAD}services:\n  web:\n    image: w:1\n    secrets: {{ KEY: {{ fromEnv: ROLLOUT_TEST_UNSET_VAR }} }}\n"
    );
    plan_fails(
        yaml.as_bytes(),
        "8:32",
        "reads environment variable `ROLLOUT_TEST_UNSET_VAR`, which is not set",
    );
}

#[test]
fn several_errors_are_reported_together() {
    let yaml = "apiVersion: rollout/v2\nkind: Environment\nname: Shop\nclient: acme\nservices:\n  web:\n    image: w:1\n";
    let project = Project::new().file("manifests/shop.yaml", yaml);
    project
        .run(&["plan"])
        .code(1)
        .stderr_has("shop.yaml:1:13: unsupported apiVersion `rollout/v2`")
        .stderr_has("shop.yaml:3:7: invalid environment name `Shop`")
        .stderr_has("2 errors");
}

#[test]
fn bad_playbook_is_located() {
    let project = Project::new().manifest("shop", &crate::support::one_service("shop", "w:1")).playbook(
        "standard",
        "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - canary: { weight: 150 }\n  - promote: { drian: 5s }\n",
    );
    let path = project.path().join("playbooks/standard.yaml");
    project.run(&["plan"]).code(1).stderr_has(&format!(
        "{}:6:16: unknown key `drian`, expected one of drain",
        path.display()
    ));
}

#[test]
fn canary_weight_out_of_range() {
    let project = Project::new().manifest("shop", &crate::support::one_service("shop", "w:1")).playbook(
        "standard",
        "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - canary: { weight: 150 }\n  - promote: {}\n",
    );
    project
        .run(&["plan"])
        .code(1)
        .stderr_has("standard.yaml:5:23: canary weight 150 is out of range; expected a percentage from 0 to 100");
}

#[test]
fn check_naming_a_missing_service() {
    let project = Project::new().manifest("shop", &crate::support::one_service("shop", "w:1")).playbook(
        "standard",
        "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { tcp: { service: api, port: 9000 } } ] }\n  - promote: {}\n",
    );
    project
        .run(&["plan"])
        .code(1)
        .stderr_has("standard.yaml:6:42: this check names service `api`, which environment `shop` does not have (services: web)");
}

#[test]
fn bad_settings_file() {
    let project = Project::new()
        .manifest("shop", &crate::support::one_service("shop", "w:1"))
        .file("rollout.yaml", "backend: dokcer\n");
    project.run(&["plan"]).code(1).stderr_has(
        "rollout.yaml:1:10: unknown backend `dokcer`; expected `docker` or `kubernetes`",
    );
}

/// Every problem of the Prometheus settings at once, each located: TLS this build lacks, an
/// unknown placeholder, an empty query; and a key the section does not know.
#[test]
fn bad_prometheus_settings_are_located() {
    let project = Project::new()
        .manifest("shop", &crate::support::one_service("shop", "w:1"))
        .file(
            "rollout.yaml",
            "backend: kubernetes\nkubernetes:\n  prometheus:\n    url: https://prom:9090\n    requests: 'sum(x{pod=~\"{{pod}}-.*\"})'\n    errors: ' '\n",
        );
    let before = project.snapshot();
    project
        .run(&["plan"])
        .code(1)
        .stderr_has("rollout.yaml:4:10: `https://prom:9090`: https is not supported, this build of rollout has no TLS")
        .stderr_has("rollout.yaml:5:15: unknown placeholder `{{pod}}`; expected {{namespace}}, {{service}}, {{deployment}}, {{window}}")
        .stderr_has("rollout.yaml:6:13: the query is empty");
    assert_eq!(project.snapshot(), before, "nothing written");
    let project = Project::new()
        .manifest("shop", &crate::support::one_service("shop", "w:1"))
        .file(
            "rollout.yaml",
            "backend: kubernetes\nkubernetes:\n  prometheus:\n    url: http://127.0.0.1:9090\n    requests: x\n    errors: y\n    p95: z\n",
        );
    project.run(&["plan"]).code(1).stderr_has(
        "rollout.yaml:7:5: unknown key `p95`, expected one of url, requests, errors, p99",
    );
}

/// A copy image that is no image reference, located; the section's keys named when one is
/// misspelt.
#[test]
fn a_bad_copy_image_is_located() {
    let project = Project::new()
        .manifest("shop", &crate::support::one_service("shop", "w:1"))
        .file(
            "rollout.yaml",
            "backend: kubernetes\nkubernetes:\n  copyImage: 'busybox:'\n",
        );
    let before = project.snapshot();
    project
        .run(&["plan"])
        .code(1)
        .stderr_has("rollout.yaml:3:14: copyImage `busybox:`: the tag after `:` is empty");
    assert_eq!(project.snapshot(), before, "nothing written");
    let project = Project::new()
        .manifest("shop", &crate::support::one_service("shop", "w:1"))
        .file(
            "rollout.yaml",
            "backend: kubernetes\nkubernetes:\n  copyimage: x\n",
        );
    project.run(&["plan"]).code(1).stderr_has(
        "rollout.yaml:3:3: unknown key `copyimage`, expected one of prometheus, copyImage",
    );
}

#[test]
fn invalid_json_path_is_located() {
    let project = Project::new().manifest("shop", &crate::support::one_service("shop", "w:1")).playbook(
        "standard",
        "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: web, port: 80, expectJson: { path: \"$.a[\", equals: 1 } } } ] }\n",
    );
    project.run(&["plan"]).code(1).stderr_has("standard.yaml:6:78: invalid JSON path: JSON path `$.a[`: expected an index or a quoted key after `[`");
}

#[test]
fn self_heal_must_be_a_boolean() {
    let yaml = format!("{HEAD}selfHeal: sometimes\nservices:\n  web:\n    image: x:1\n");
    plan_fails(yaml.as_bytes(), "5:11", "expected true or false here");
}
