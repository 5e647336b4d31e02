//! `backend: kubernetes` from the command line. No cluster runs here: these tests check what the
//! binary does without one (and what it refuses), and run `plan`, `status` and a `promote`
//! refused by another holder's Lease end to end against a stand-in API server on loopback
//! (read-only GETs answered from canned JSON, every request recorded). The request-by-request
//! scenarios, whole promotions and rollbacks included, are unit tests in
//! `src/engine/kube/mock.rs` and `src/engine/kube/mock/promote.rs`.
//! `real_cluster_plan_and_status` and `real_cluster_promote_rollback_and_test_namespace` need a
//! cluster: run them with `KUBECONFIG=... cargo test -- --ignored real_cluster`.

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
    // `demo` builds images on the local engine: it has no meaning on a cluster.
    for args in [&["demo"][..], &["demo", "--build-only"]] {
        let p = kube_project("shop");
        let before = p.snapshot();
        let what = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        run_bare(&p, args, &[])
            .code(1)
            .stderr_has(&format!(
                "not supported on the kubernetes backend yet: `rollout {what}`"
            ))
            .stderr_has("nothing was done");
        assert_eq!(p.snapshot(), before, "{args:?} changed the project");
    }
}

/// Not `p.run`: that builds the proxy's static binary for promote and rollback, never used on
/// this backend.
fn run_bare(p: &Project, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
        .arg("-C")
        .arg(p.path())
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .expect("run rollout");
    Output::from_child(args, out)
}

/// Without a Prometheus named in rollout.yaml a canary analysis has no figures on this backend:
/// promote names that step, before it even looks for a cluster. Every other step runs there
/// (explicit checks through a port-forward or the pod's exec, a canary without an analysis), so
/// none of them is named.
#[test]
fn promote_with_steps_the_backend_cannot_run_is_refused_naming_them() {
    let p = kube_project("shop").playbook(
        "standard",
        "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - testEnv: { ttl: 1h }\n  - smoke: { target: test, checks: [ { http: { service: web, port: 80, path: / } } ] }\n  - canary: { weight: 10, hold: 1s, analysis: { maxErrorRate: 0.01 } }\n  - canary: { weight: 50, hold: 1s }\n  - promote: {}\n",
    );
    let before = p.snapshot();
    let err = run_bare(&p, &["promote", "--yes"], &[("KUBECONFIG", "/nonexistent")])
        .code(1)
        .stderr_has("the kubernetes backend cannot carry out playbook `standard` (")
        .stderr_has("step 3 `canary")
        .stderr_has("a canary analysis needs the candidates' request figures: name a Prometheus and its queries under `kubernetes.prometheus` in rollout.yaml")
        .stderr_has("nothing was done");
    for step in ["step 1", "step 2", "step 4", "step 5"] {
        assert!(
            !err.stderr.contains(step),
            "{step} runs there: {}",
            err.stderr
        );
    }
    assert_eq!(p.snapshot(), before);
}

/// With a Prometheus named in rollout.yaml, a canary analysis is no longer refused; one with
/// `maxP99` still is while the settings have no `p99` query.
#[test]
fn a_canary_analysis_runs_with_prometheus_and_needs_its_p99_query_for_max_p99() {
    let prometheus = "backend: kubernetes\nkubernetes:\n  prometheus:\n    url: http://127.0.0.1:9090\n    requests: 'sum(increase(http_requests_total{pod=~\"{{deployment}}-.*\"}[{{window}}]))'\n    errors: 'sum(increase(http_requests_total{pod=~\"{{deployment}}-.*\",code=~\"5..\"}[{{window}}]))'\n";
    let p = kube_project("shop").file("rollout.yaml", prometheus).playbook(
        "standard",
        "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - canary: { weight: 10, hold: 1s, analysis: { maxErrorRate: 0.01 } }\n  - canary: { weight: 50, hold: 1s, analysis: { maxP99: 300ms } }\n  - promote: {}\n",
    );
    let before = p.snapshot();
    let out = run_bare(&p, &["promote", "--yes"], &[("KUBECONFIG", "/nonexistent")])
        .code(1)
        .stderr_has("step 2 `canary: 50% of traffic for 1s, analysis: p99 <= 300ms")
        .stderr_has("its analysis has `maxP99`, and `kubernetes.prometheus` in rollout.yaml has no `p99` query")
        .stderr_has("nothing was done");
    assert!(!out.stderr.contains("step 1"), "{}", out.stderr);
    assert_eq!(p.snapshot(), before);
}

/// A rehearsal skips what targets production (here a canary with an analysis, which promote
/// would refuse); its data copy and explicit checks run there, so the playbook passes the check
/// and the rehearsal goes on to look for the cluster.
#[test]
fn rehearse_skips_production_steps_and_runs_checks_and_a_data_copy_there() {
    let p = Project::new()
        .file("rollout.yaml", "backend: kubernetes\n")
        .manifest(
            "shop",
            "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\nservices:\n  db:\n    image: db:1\n    stateful: true\n    volumes: [ { name: data, path: /data } ]\n    ports: [ { name: pg, container: 5432 } ]\n",
        )
        .playbook(
        "standard",
        "apiVersion: rollout/v1\nkind: Playbook\nname: standard\nsteps:\n  - testEnv: { ttl: 1h, copyData: [db] }\n  - smoke: { target: test, checks: [ { tcp: { service: db, port: 5432 } } ] }\n  - canary: { weight: 10, hold: 1s, analysis: { maxErrorRate: 0.01 } }\n  - promote: {}\n  - smoke: { target: production, checks: [ { tcp: { service: db, port: 5432 } } ] }\n",
    );
    let before = p.snapshot();
    let out = run_bare(&p, &["rehearse"], &[("KUBECONFIG", "/nonexistent")])
        .code(1)
        .stderr_has("cannot reach a Kubernetes cluster");
    assert!(!out.stderr.contains("cannot carry out"), "{}", out.stderr);
    assert_eq!(p.snapshot(), before);
}

/// A playbook this backend runs: promote (each candidate ready by its readiness probe first).
const KUBE_PLAYBOOK: &str =
    "apiVersion: rollout/v1\nkind: Playbook\nname: kube\nsteps:\n  - promote: { drain: 5s }\n";

/// Another machine's run holds the environment's Lease: promote is refused (exit 3) naming it,
/// having only read from the cluster.
#[test]
fn promote_refused_by_a_lease_another_holder_holds_naming_it() {
    let renewed = jiff::Timestamp::now().to_string();
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "rollout-lock", "namespace": "rollout-shop", "resourceVersion": "7" },
        "spec": { "holderIdentity": "ci-bot (ci-runner:77:1767268800, run other1)", "renewTime": renewed,
            "acquireTime": renewed, "leaseDurationSeconds": 3600 }
    });
    let api = ApiServer::start(vec![
        ("/version", version()),
        // Test versions left behind, looked for first: none; production runs nothing yet.
        ("/apis/apps/v1/deployments", empty("DeploymentList")),
        (
            "/apis/apps/v1/namespaces/rollout-shop/deployments",
            empty("DeploymentList"),
        ),
        ("/api/v1/namespaces", empty("NamespaceList")),
        (
            "/api/v1/persistentvolumeclaims",
            empty("PersistentVolumeClaimList"),
        ),
        (
            "/api/v1/namespaces/rollout-shop",
            serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "rollout-shop" } }),
        ),
        (
            "/apis/coordination.k8s.io/v1/namespaces/rollout-shop/leases/rollout-lock",
            lease,
        ),
        (
            "/api/v1/namespaces/rollout-shop/configmaps",
            empty("ConfigMapList"),
        ),
    ]);
    let p = kube_project("shop")
        .playbook("kube", KUBE_PLAYBOOK)
        .file("kubeconfig", api.kubeconfig());
    let config = p.path().join("kubeconfig");
    run_bare(
        &p,
        &["promote", "--yes"],
        &[("KUBECONFIG", config.to_str().unwrap())],
    )
    .code(3)
    .stderr_has("environment shop is locked by ci-bot (ci-runner:77:1767268800, run other1) until")
    .stderr_has("(Lease rollout-lock in rollout-shop)");
    // status names the holder too, from any machine.
    p.run_with(&["status"], &[("KUBECONFIG", config.to_str().unwrap())])
        .code(0)
        .stdout_has("Cluster lock: held by ci-bot (ci-runner:77:1767268800, run other1) until");
    let seen = api.seen();
    assert!(
        seen.iter().all(|r| r.starts_with("GET ")),
        "a refused promote and status only read: {seen:?}"
    );
    assert!(
        seen.iter().any(|r| r.starts_with(
            "GET /apis/coordination.k8s.io/v1/namespaces/rollout-shop/leases/rollout-lock"
        )),
        "{seen:?}"
    );
}

const GATES: &str = "/api/v1/namespaces/rollout-shop/configmaps/rollout-gates";

/// The gates ConfigMap of shop (`resourceVersion` 41) with run `run` parked by alice on another
/// machine, waiting for the client's approval, none recorded yet.
fn parked_by_alice(run: &str) -> serde_json::Value {
    let doc = serde_json::json!({
        "environment": "shop",
        "parked": { "environment": "shop", "run": run, "digest": "d1", "user": "alice", "twoPerson": true,
            "awaiting": [ { "kind": "approval", "gate": "client", "services": [] } ], "gateStep": 1,
            "report": { "steps": [], "playbook": "gated" }, "at": "2026-01-01T10:00:00Z" },
        "grants": []
    });
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "rollout-gates", "namespace": "rollout-shop", "resourceVersion": "41" },
        "data": { "gates.json": doc.to_string() }
    })
}

/// Run r1 of shop was parked at its `approve: { by: client }` gate on another machine (by
/// alice): this machine, whose store has never heard of it, reads it from the cluster's gates.
/// alice cannot approve her own run (two-person rule, exit 3, nothing written); bob can, and
/// his approval is written back to the gates ConfigMap, guarded by the version read, for every
/// machine (the next `promote` anywhere resumes the run approved).
#[test]
fn an_approval_on_one_machine_of_a_run_parked_on_another_goes_through_the_cluster() {
    let api = ApiServer::start(vec![
        ("/version", version()),
        (GATES, parked_by_alice("r1")),
    ]);
    let p = kube_project("shop").file("kubeconfig", api.kubeconfig());
    let config = p.path().join("kubeconfig");
    let kube = ("KUBECONFIG", config.to_str().unwrap());
    p.run_with(
        &["approve", "latest", "--by", "client"],
        &[kube, ("USER", "alice")],
    )
    .code(3)
    .stderr_has("two-person rule: alice started run r1 and cannot also approve it");
    assert!(
        api.written().is_empty(),
        "a refused approval writes nothing"
    );
    p.run_with(
        &["approve", "latest", "--by", "client", "--note", "change ticket 4411"],
        &[kube, ("USER", "bob")],
    )
    .code(0)
    .stdout_has("Recorded the approval by `client` (bob) for run r1 of shop. `rollout promote -e shop -p gated` resumes it.");
    let written = api.written();
    assert_eq!(written.len(), 1, "{written:?}");
    let (request, body) = &written[0];
    assert_eq!(
        request,
        "PUT /api/v1/namespaces/rollout-shop/configmaps/rollout-gates"
    );
    assert_eq!(
        body["metadata"]["resourceVersion"], "41",
        "guarded by the version read"
    );
    let doc: serde_json::Value =
        serde_json::from_str(body["data"]["gates.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        doc["parked"]["run"], "r1",
        "still parked: the next promote resumes it"
    );
    assert_eq!(doc["grants"][0]["who"], "bob");
    assert_eq!(doc["grants"][0]["gate"], "client");
    assert_eq!(doc["grants"][0]["note"], "change ticket 4411");
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

/// Deletes the environment's namespace when dropped, so a failed real-cluster test leaves
/// nothing behind.
struct DeleteNamespace(String);

impl Drop for DeleteNamespace {
    fn drop(&mut self) {
        use kube::api::{Api, DeleteParams};
        let name = self.0.clone();
        let Ok(rt) = tokio::runtime::Runtime::new() else {
            return;
        };
        rt.block_on(async move {
            if let Ok(client) = kube::Client::try_default().await {
                let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
                let _ = api.delete(&name, &DeleteParams::background()).await;
            }
        });
    }
}

/// Against a real cluster (KUBECONFIG): the built-in playbook promotes web (a test namespace of
/// its own, its readiness, the Service created), a second image goes out blue-green, rollback
/// puts the first back, and the test namespace is gone at the end. Needs the cluster to pull
/// `nginx:1.27-alpine` and `nginx:1.26-alpine`; deletes `rollout-<env>` when done. Written
/// without a cluster to run it on: never run yet.
#[test]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG)"]
fn real_cluster_promote_rollback_and_test_namespace() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "set KUBECONFIG to the cluster to test against"
    );
    let env = crate::support::unique("kube");
    let _cleanup = DeleteNamespace(format!("rollout-{env}"));
    let manifest = |image: &str| {
        format!(
            "apiVersion: rollout/v1\nkind: Environment\nname: {env}\nclient: acme\nservices:\n  web:\n    image: {image}\n    ports: [ {{ name: http, container: 80 }} ]\n    health: {{ http: {{ port: 80, path: / }}, startPeriod: 120s }}\n"
        )
    };
    let p = Project::new()
        .file("rollout.yaml", "backend: kubernetes\n")
        .manifest(&env, &manifest("nginx:1.27-alpine"));
    run_bare(&p, &["promote", "--yes"], &[])
        .code(0)
        .stdout_has("promoted");
    p.run(&["status"]).code(0).stdout_has("nginx:1.27-alpine");
    let p = p.manifest(&env, &manifest("nginx:1.26-alpine"));
    run_bare(&p, &["promote", "--yes"], &[])
        .code(0)
        .stdout_has("promoted");
    p.run(&["status"]).code(0).stdout_has("nginx:1.26-alpine");
    run_bare(&p, &["rollback"], &[])
        .code(0)
        .stdout_has("restored");
    p.run(&["status"]).code(0).stdout_has("nginx:1.27-alpine");
    p.run(&["history"]).code(0).stdout_has("nginx:1.26-alpine");
    p.run(&["test-env", "list"])
        .code(0)
        .nowhere(&format!("{env}-test-"));
}

/// A stand-in API server on 127.0.0.1: answers `GET path` from `routes` (path without query;
/// anything else is a 404 `Status`), one request per connection, and records each request line.
/// A write (`PUT`, `POST`, `PATCH`) to a path of `routes` is answered with its own body, as the
/// API server answers a successful replace, and its body is kept ([`ApiServer::written`]).
struct ApiServer {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    written: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl ApiServer {
    fn start(routes: Vec<(&'static str, serde_json::Value)>) -> ApiServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, kept) = (seen.clone(), written.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // The rest of the head, and the body it announces.
                let mut header = String::new();
                let mut length = 0usize;
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    header.clear();
                }
                let mut body = vec![0u8; length];
                if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                log.lock().unwrap().push(format!("{method} {target}"));
                let path = target.split('?').next().unwrap_or("");
                let sent: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let (status, body) = match routes.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) if method == "GET" => ("200 OK", body.clone()),
                    Some(_) if matches!(method, "PUT" | "POST" | "PATCH") => {
                        kept.lock()
                            .unwrap()
                            .push((format!("{method} {path}"), sent.clone()));
                        ("200 OK", sent)
                    }
                    _ => (
                        "404 Not Found",
                        serde_json::json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": format!("{path} not found") }),
                    ),
                };
                let body = body.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        ApiServer {
            port,
            seen,
            written,
        }
    }

    /// The writes answered, each with its body.
    fn written(&self) -> Vec<(String, serde_json::Value)> {
        self.written.lock().unwrap().clone()
    }

    /// A kubeconfig whose current context `stand-in` points here.
    fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: stand-in\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n",
            self.port
        )
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn version() -> serde_json::Value {
    serde_json::json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "x", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64" })
}

fn empty(kind: &str) -> serde_json::Value {
    serde_json::json!({ "kind": kind, "apiVersion": "v1", "metadata": {}, "items": [] })
}

#[test]
fn plan_on_an_empty_cluster_wants_everything_created_and_writes_nothing() {
    let api = ApiServer::start(vec![
        ("/version", version()),
        (
            "/apis/apps/v1/namespaces/rollout-shop/deployments",
            empty("DeploymentList"),
        ),
    ]);
    let p = kube_project("shop").file("kubeconfig", api.kubeconfig());
    let config = p.path().join("kubeconfig");
    p.run_with(&["plan"], &[("KUBECONFIG", config.to_str().unwrap())])
        .code(2)
        .stdout_has("web")
        // The built-in playbook (test namespace, health, promote) runs on this backend.
        .nowhere("would be refused");
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], "GET /version");
    assert!(
        seen[1].starts_with("GET /apis/apps/v1/namespaces/rollout-shop/deployments?")
            && seen[1]
                .contains("labelSelector=rollout.environment%3Dshop%2Crollout.role%3Dproduction"),
        "{seen:?}"
    );
}

/// Production of shop on the stand-in cluster: web's Deployment at run r1 crash-looping, its
/// pod, and the run record of r1 (revision 1, promoted by bob from another machine).
fn crash_looping_shop() -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "shop-web-r1", "namespace": "rollout-shop", "creationTimestamp": "2026-01-01T10:00:00Z",
            "labels": { "rollout.environment": "shop", "rollout.role": "production", "rollout.service": "web", "rollout.run": "r1" } },
        "spec": { "replicas": 1,
            "selector": { "matchLabels": { "rollout.environment": "shop", "rollout.run": "r1", "rollout.service": "web" } },
            "template": { "spec": { "containers": [ { "name": "web", "image": "web:1" } ] } } },
        "status": { "replicas": 1, "readyReplicas": 0 }
    });
    let pod = serde_json::json!({
        "metadata": { "name": "shop-web-r1-x", "labels": { "rollout.environment": "shop", "rollout.role": "production", "rollout.service": "web", "rollout.run": "r1" } },
        "status": { "containerStatuses": [ { "name": "web", "image": "web:1", "imageID": "", "ready": false,
            "restartCount": 3, "state": { "waiting": { "reason": "CrashLoopBackOff" } } } ] }
    });
    let revision = serde_json::json!({
        "environment": "shop", "number": 1, "run": "r1", "started": "2026-01-01T10:00:00Z",
        "finished": "2026-01-01T10:00:30Z", "user": "bob", "playbook": "kube", "reason": null,
        "changes": [], "services": {}, "images": ["web:1"], "outcome": { "status": "promoted" }
    });
    let journal = serde_json::json!([
        { "step": "begin", "phase": "done", "data": { "kind": "promotion", "revision": 1, "old": {}, "changed": ["web"], "removed": [] }, "at": "2026-01-01T10:00:00Z" },
        { "step": "end", "phase": "done", "data": { "outcome": "promoted" }, "at": "2026-01-01T10:00:30Z" }
    ]);
    let record = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "rollout-run-r1", "namespace": "rollout-shop",
            "labels": { "rollout.environment": "shop", "rollout.run": "r1", "rollout.state": "run" } },
        "data": { "revision.json": revision.to_string(), "journal.json": journal.to_string() }
    });
    (deployment, pod, record)
}

/// `status` through the real kube client: a crash-looping Deployment is `restarting`, and the
/// revision running is the one the cluster's run records say, recorded by another machine;
/// `history` on this machine shows it too. Both only read.
#[test]
fn status_shows_a_crash_looping_deployment() {
    let (deployment, pod, record) = crash_looping_shop();
    let api = ApiServer::start(vec![
        ("/version", version()),
        (
            "/apis/apps/v1/namespaces/rollout-shop/deployments",
            serde_json::json!({ "kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {}, "items": [deployment] }),
        ),
        (
            "/api/v1/namespaces/rollout-shop/pods",
            serde_json::json!({ "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod] }),
        ),
        (
            "/api/v1/namespaces/rollout-shop/secrets",
            empty("SecretList"),
        ),
        ("/apis/apps/v1/deployments", empty("DeploymentList")),
        ("/api/v1/namespaces", empty("NamespaceList")),
        (
            "/api/v1/persistentvolumeclaims",
            empty("PersistentVolumeClaimList"),
        ),
        // The run records: revision 1, promoted by another machine's run r1.
        (
            "/api/v1/namespaces/rollout-shop/configmaps",
            serde_json::json!({ "kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": [record] }),
        ),
    ]);
    let p = kube_project("shop").file("kubeconfig", api.kubeconfig());
    let config = p.path().join("kubeconfig");
    p.run_with(&["status"], &[("KUBECONFIG", config.to_str().unwrap())])
        .code(0)
        .stdout_has("Revision 1 (r1), promoted 2026-01-01T10:00:30Z by bob")
        .stdout_has("shop-web-r1 web:1 (restarting")
        .nowhere("Cluster lock");
    // history on this machine, which never ran shop, shows the cluster's record.
    let history = p
        .run_with(
            &["history", "-o", "json"],
            &[("KUBECONFIG", config.to_str().unwrap())],
        )
        .code(0)
        .json();
    assert_eq!(history["revisions"][0]["run"], "r1");
    assert_eq!(history["revisions"][0]["user"], "bob");
    assert_eq!(history["revisions"][0]["outcome"]["status"], "promoted");
    assert!(
        api.seen().iter().any(|r| r.starts_with(
            "GET /api/v1/namespaces/rollout-shop/configmaps?&labelSelector=rollout.environment%3Dshop%2Crollout.state%3Drun"
        )),
        "{:?}",
        api.seen()
    );
    assert!(
        api.seen().iter().all(|r| r.starts_with("GET ")),
        "status only reads: {:?}",
        api.seen()
    );
}

/// `rollout daemon` on the kubernetes backend, against the stand-in API server: it connects to
/// the cluster, answers an environment's status through its API (the crash-looping Deployment
/// and the revision the cluster's run record says), serves its metrics (drift against the
/// cluster) and the run parked at a gate on another machine (from the cluster's gates), and
/// exits 0 on SIGTERM, having only read from the cluster.
#[test]
fn the_daemon_serves_status_and_metrics_from_the_cluster() {
    let (deployment, pod, record) = crash_looping_shop();
    let api = ApiServer::start(vec![
        ("/version", version()),
        (
            "/apis/apps/v1/namespaces/rollout-shop/deployments",
            serde_json::json!({ "kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {}, "items": [deployment] }),
        ),
        (
            "/api/v1/namespaces/rollout-shop/pods",
            serde_json::json!({ "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod] }),
        ),
        (
            "/api/v1/namespaces/rollout-shop/secrets",
            empty("SecretList"),
        ),
        ("/apis/apps/v1/deployments", empty("DeploymentList")),
        ("/api/v1/namespaces", empty("NamespaceList")),
        (
            "/api/v1/persistentvolumeclaims",
            empty("PersistentVolumeClaimList"),
        ),
        (
            "/api/v1/namespaces/rollout-shop/configmaps",
            serde_json::json!({ "kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": [record] }),
        ),
        (GATES, parked_by_alice("r2")),
    ]);
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let p = kube_project("shop")
        .file(
            "rollout.yaml",
            format!("backend: kubernetes\ndaemon:\n  listen: {addr}\n  tokens:\n    - {{ name: ops, fromEnv: T_OPS, clients: [acme], may: [read] }}\n"),
        )
        .file("kubeconfig", api.kubeconfig());
    let config = p.path().join("kubeconfig");
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
        .arg("-C")
        .arg(p.path())
        .arg("daemon")
        .env("KUBECONFIG", &config)
        .env("T_OPS", "tok-ops-5e1f")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        if started.elapsed() > std::time::Duration::from_secs(30)
            || daemon.try_wait().unwrap().is_some()
        {
            let _ = daemon.kill();
            let out = daemon.wait_with_output().unwrap();
            panic!(
                "the daemon does not listen on {addr}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer tok-ops-5e1f\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let status = get("/api/v1/environments/shop");
    let history = get("/api/v1/environments/shop/history");
    let metrics = get("/metrics");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let exit = daemon.wait().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let body: serde_json::Value =
        serde_json::from_str(status.split("\r\n\r\n").nth(1).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(body["revision"]["run"], "r1", "{body}");
    assert_eq!(body["revision"]["user"], "bob", "{body}");
    assert!(body.to_string().contains("restarting"), "{body}");
    assert_eq!(
        body["waiting"]["run"], "r2",
        "the run parked on another machine, from the cluster's gates: {body}"
    );
    assert!(
        history.contains("\"user\":\"bob\""),
        "the record read from the cluster: {history}"
    );
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("rollout_drift{environment=\"shop\"}"),
        "{metrics}"
    );
    assert!(exit.success(), "SIGTERM exits 0: {exit:?}");
    assert!(
        api.seen().iter().all(|r| r.starts_with("GET ")),
        "the daemon only read: {:?}",
        api.seen()
    );
}

/// Without the cluster, `history` still shows what this machine has recorded, warning that the
/// other machines' runs (kept in the cluster) could not be read.
#[test]
fn history_without_the_cluster_shows_this_machines_runs_with_a_warning() {
    let p = kube_project("shop");
    let missing = p.path().join("no-such-kubeconfig");
    run_bare(
        &p,
        &["history"],
        &[("KUBECONFIG", missing.to_str().unwrap())],
    )
    .code(0)
    .stdout_has("shop has no revisions yet")
    .stderr_has("showing only the runs this machine has recorded");
}
