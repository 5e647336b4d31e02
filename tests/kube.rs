//! `backend: kubernetes` from the command line. No cluster runs here: these tests check what the
//! binary does without one (and what it refuses); the mock API server scenarios are unit tests in
//! `src/engine/kube/mock.rs`. `real_cluster_plan_and_status` needs a cluster: run it with
//! `KUBECONFIG=... cargo test -- --ignored real_cluster`.

use crate::support::{Output, Project, one_service};

fn kube_project(env: &str) -> Project {
    Project::new()
        .file("rollout.yaml", "backend: kubernetes\n")
        .manifest(env, &one_service(env, "web:1"))
}

#[test]
fn no_kubeconfig_is_exit_1_naming_the_context_tried() {
    let p = kube_project("shop");
    let missing = p.path().join("no-such-kubeconfig");
    p.run_with(
        &["plan"],
        &[
            ("KUBECONFIG", missing.to_str().unwrap()),
            // Not a pod either.
            ("KUBERNETES_SERVICE_HOST", ""),
            ("KUBERNETES_SERVICE_PORT", ""),
        ],
    )
    .code(1)
    .stderr_has("the kubernetes backend needs a reachable cluster")
    .stderr_has(&format!(
        "cannot reach a Kubernetes cluster (tried kubeconfig {})",
        missing.display()
    ))
    .stderr_has("this is not a pod in a cluster");
}

#[test]
fn unreachable_cluster_is_exit_1_naming_context_and_server() {
    let p = kube_project("shop");
    let port = crate::support::free_port();
    let config = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: acme-prod\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: acme-prod\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n"
    );
    let p = p.file("kubeconfig", config);
    let path = p.path().join("kubeconfig");
    p.run_with(&["status"], &[("KUBECONFIG", path.to_str().unwrap())])
        .code(1)
        .stderr_has(&format!(
            "cannot reach a Kubernetes cluster (tried acme-prod from {})",
            path.display()
        ))
        .stderr_has(&format!("http://127.0.0.1:{port}"));
}

#[test]
fn commands_not_built_on_kubernetes_are_refused_before_anything_is_done() {
    for args in [
        &["promote", "--yes"][..],
        &["rollback"],
        &["rehearse"],
        &["test-env", "up"],
        &["test-env", "down"],
        &["test-env", "list"],
    ] {
        let p = kube_project("shop");
        let before = p.snapshot();
        let what = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        // Not `p.run`: promote and rollback would build the proxy's static binary, never used here.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
            .arg("-C")
            .arg(p.path())
            .args(args)
            .output()
            .expect("run rollout");
        Output::from_child(args, out)
            .code(1)
            .stderr_has(&format!(
                "not supported on the kubernetes backend yet: `rollout {what}`"
            ))
            .stderr_has("nothing was done");
        if args[0] != "rollback" {
            assert_eq!(p.snapshot(), before, "{args:?} changed the project");
        }
    }
}

/// Against a real cluster (KUBECONFIG): `plan` on a fresh environment reads nothing and wants
/// everything created; `status` reports it not running. Creates nothing in the cluster.
#[test]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG)"]
fn real_cluster_plan_and_status() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "set KUBECONFIG to the cluster to test against"
    );
    let env = crate::support::unique("kube");
    let p = kube_project(&env);
    p.run(&["plan"]).code(2).stdout_has("web");
    p.run(&["status"])
        .code(0)
        .stdout_has("not running (wants web:1)");
}
