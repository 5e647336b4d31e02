//! The kubernetes backend against a mock API server (`tower_test::mock::pair`), in the style of
//! kube-rs/controller-rs `src/fixtures.rs`: each scenario scripts the requests the API server
//! must see, in order (method, path with query, and body), and answers each as the server would.
//! A request that never comes fails the test after [`WAIT`]; one that comes unasked fails it too.
//! Whole promotions and rollbacks, driven through the executor, are in [`promote`]; test
//! namespaces in [`testenv`].

mod promote;
mod testenv;

use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::lease::LeaseLock;
use super::*;
use crate::engine::shared_lock::{Acquired, SharedLock, SharedLockError};
use crate::engine::spec::{base_labels, production_container, production_network};
use crate::engine::{ContainerState, Role, ServiceTraffic, Unrouted};
use crate::manifest::env::Environment;
use crate::manifest::source::Source;
use crate::manifest::{env, yaml};

/// How long the mock server waits for each scripted request.
const WAIT: Duration = Duration::from_secs(2);

type BodyCheck = Box<dyn FnOnce(&Value) + Send>;

/// One request the API server expects, and its answer.
struct Exchange {
    method: Method,
    uri: String,
    check: Option<BodyCheck>,
    status: u16,
    reply: Value,
    /// The connection breaks instead of an answer.
    broken: bool,
    /// A watch: the answer is these events, one JSON object a line, then the server closes.
    events: Option<Vec<Value>>,
    /// A plain-text answer (a pod's log).
    text: Option<String>,
}

fn on(method: Method, uri: &str) -> Exchange {
    Exchange {
        method,
        uri: uri.to_string(),
        check: None,
        status: 200,
        reply: json!({}),
        broken: false,
        events: None,
        text: None,
    }
}

impl Exchange {
    fn body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }
    fn reply(mut self, status: u16, reply: Value) -> Self {
        self.status = status;
        self.reply = reply;
        self
    }
    fn ok(self, reply: Value) -> Self {
        self.reply(200, reply)
    }
    fn broken(mut self) -> Self {
        self.broken = true;
        self
    }
    /// Answers with `text` as it is (a pod's log is not JSON).
    fn text(mut self, text: &str) -> Self {
        self.text = Some(text.to_string());
        self
    }
    /// Answers a watch with `events` (each `{"type": ..., "object": ...}`), then closes it.
    fn events(mut self, events: Vec<Value>) -> Self {
        self.events = Some(events);
        self
    }
}

/// A watch event as the API server streams it.
fn event(kind: &str, object: Value) -> Value {
    json!({ "type": kind, "object": object })
}

/// A `Status` body as the API server sends with an error.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message })
}

fn not_found(kind: &str, name: &str) -> Value {
    status(404, "NotFound", &format!("{kind} \"{name}\" not found"))
}

/// The `Status` body of a request that went through (a delete).
fn success() -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" })
}

/// A list, across the cluster, of what the label selector `query` finds in `collection`.
fn labelled(collection: &str, query: &str) -> Exchange {
    on(Method::GET, &format!("{collection}?&{query}"))
}

/// The object at `uri` deleted with its dependents (`Background`).
fn delete_background(uri: &str) -> Exchange {
    on(Method::DELETE, &format!("{uri}?"))
        .body(|b| assert_eq!(b["propagationPolicy"], "Background"))
}

/// Object `name` of `collection` looked for and not there (`resource` as the server names it).
fn absent(collection: &str, resource: &str, name: &str) -> Exchange {
    on(Method::GET, &format!("{collection}/{name}")).reply(404, not_found(resource, name))
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({ "kind": kind, "apiVersion": "v1", "metadata": { "resourceVersion": "1" }, "items": items })
}

/// A client whose API server plays `script`; await the handle to check every request came.
fn serve(script: Vec<Exchange>) -> (Client, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        for ex in script {
            let what = format!("{} {}", ex.method, ex.uri);
            let (request, send) = tokio::time::timeout(WAIT, handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("the API server waited in vain for {what}"))
                .unwrap_or_else(|| panic!("the client went away before {what}"));
            assert_eq!(request.method(), ex.method, "method, expecting {what}");
            assert_eq!(request.uri().to_string(), ex.uri, "uri, expecting {what}");
            let bytes = request.into_body().collect_bytes().await.unwrap();
            if let Some(check) = ex.check {
                let body: Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e})"));
                check(&body);
            }
            if ex.broken {
                send.send_error(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
                continue;
            }
            let body = match &ex.events {
                None if ex.text.is_some() => ex.text.clone().unwrap_or_default().into_bytes(),
                Some(events) => events
                    .iter()
                    .flat_map(|e| {
                        let mut line = serde_json::to_vec(e).unwrap();
                        line.push(b'\n');
                        line
                    })
                    .collect(),
                None => serde_json::to_vec(&ex.reply).unwrap(),
            };
            let response = Response::builder()
                .status(ex.status)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            send.send_response(response);
        }
        // Nothing more may be asked.
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await
        {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    });
    (Client::new(service, "default"), server)
}

async fn finished(server: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(WAIT * 4, server)
        .await
        .expect("the mock API server finished")
        .expect("every scripted request came as expected");
}

const SHOP: &str = "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\nservices:\n  web:\n    image: web:1\n    env: { MODE: fast }\n    secrets: { KEY: { fromEnv: K } }\n    ports: [ { name: http, container: 8080, public: 18080 } ]\n    health: { http: { port: 8080, path: /healthz } }\n    dependsOn: [db]\n  db:\n    image: db:1\n    stateful: true\n    volumes: [ { name: data, path: /data } ]\n";

fn environment() -> Environment {
    let src = Source::new("shop.yaml", SHOP);
    let raw = yaml::parse(&src, "a manifest").expect("parses");
    env::resolve(&src, raw, &|_| Some("s3cret".to_string())).expect("resolves")
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/rollout-shop/deployments";
const OBSERVE: &str = "/apis/apps/v1/namespaces/rollout-shop/deployments?&labelSelector=rollout.environment%3Dshop%2Crollout.role%3Dproduction";
const PODS_OF_SHOP: &str = "/api/v1/namespaces/rollout-shop/pods?&labelSelector=rollout.environment%3Dshop%2Crollout.role%3Dproduction";
const SECRETS_OF_SHOP: &str = "/api/v1/namespaces/rollout-shop/secrets?&labelSelector=rollout.environment%3Dshop%2Crollout.role%3Dproduction";

fn apply_uri(collection: &str, name: &str) -> String {
    format!("{collection}/{name}?&fieldManager=rollout")
}

#[tokio::test]
async fn plan_on_an_empty_namespace_creates_everything() {
    let (client, server) = serve(vec![
        on(Method::GET, OBSERVE).ok(list("DeploymentList", vec![])),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let observed = engine.observe("shop").await.unwrap();
    finished(server).await;
    assert!(observed.services.is_empty());
    let env = environment();
    let plan = crate::plan::compute(
        &env,
        &observed,
        &crate::manifest::playbook::Playbook::builtin_default(),
    );
    assert!(plan.has_changes());
    assert_eq!(plan.count(crate::plan::Action::Create), 2);
}

/// Applies the whole environment as a first promotion would, checking every object sent, then
/// reads it back: the planner sees web as declared, and db's crash-looping pod as not running.
#[tokio::test]
async fn apply_of_a_new_environment_then_plan_sees_it_and_a_crash_loop() {
    let env = environment();
    let web = env.services.iter().find(|s| s.name == "web").unwrap();
    let db = env.services.iter().find(|s| s.name == "db").unwrap();
    let web_spec = production_container(&env, web, "r1");
    let db_spec = production_container(&env, db, "r1");
    let (_, _, web_deploy) = objects(&web_spec);
    let (_, _, db_deploy) = objects(&db_spec);
    let web_deploy = serde_json::to_value(&web_deploy).unwrap();
    let db_deploy = serde_json::to_value(&db_deploy).unwrap();
    let (sent_web, sent_db) = (web_deploy.clone(), db_deploy.clone());
    let ns = "/api/v1/namespaces";
    let pvcs = "/api/v1/namespaces/rollout-shop/persistentvolumeclaims";
    let secrets = "/api/v1/namespaces/rollout-shop/secrets";
    let services = "/api/v1/namespaces/rollout-shop/services";
    let (client, server) = serve(vec![
        // The namespace is the production "network".
        absent(ns, "namespaces", "rollout-shop"),
        on(Method::PATCH, &apply_uri(ns, "rollout-shop"))
            .body(|b| {
                assert_eq!(b["kind"], "Namespace");
                assert_eq!(b["metadata"]["labels"]["rollout.environment"], "shop");
                assert_eq!(b["metadata"]["labels"]["rollout.role"], "production");
                assert_eq!(b["metadata"]["labels"]["rollout.client"], "acme");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "rollout-shop" } })),
        // db's volume as a claim.
        absent(pvcs, "persistentvolumeclaims", "shop-db-data"),
        on(Method::PATCH, &apply_uri(pvcs, "shop-db-data"))
            .body(|b| {
                assert_eq!(b["kind"], "PersistentVolumeClaim");
                assert_eq!(b["spec"]["accessModes"], json!(["ReadWriteOnce"]));
                assert_eq!(b["spec"]["resources"]["requests"]["storage"], "1Gi");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "shop-db-data" } })),
        // db: a Deployment mounting it, no Secret, no ports so no Service.
        absent(DEPLOYMENTS, "deployments.apps", "shop-db-r1"),
        on(Method::PATCH, &apply_uri(DEPLOYMENTS, "shop-db-r1"))
            .body(|b| {
                assert_eq!(b["kind"], "Deployment");
                assert_eq!(b["spec"]["replicas"], 1);
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "shop-db-data");
                assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/data");
                assert!(b["metadata"]["labels"].get("rollout.spec").is_none(), "JSON is not a label value");
                assert!(b["metadata"]["annotations"]["rollout.spec"].is_string());
            })
            .ok(db_deploy.clone()),
        // web: its Secret, its Deployment, its Service.
        absent(DEPLOYMENTS, "deployments.apps", "shop-web-r1"),
        on(Method::PATCH, &apply_uri(secrets, "shop-web-r1"))
            .body(|b| {
                assert_eq!(b["kind"], "Secret");
                assert_eq!(b["stringData"]["KEY"], "s3cret");
                assert_eq!(b["metadata"]["labels"]["rollout.run"], "r1");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "shop-web-r1" } })),
        on(Method::PATCH, &apply_uri(DEPLOYMENTS, "shop-web-r1"))
            .body(move |b| {
                assert_eq!(b, &sent_web);
                let c = &b["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(c["image"], "web:1");
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
                let envs = c["env"].as_array().unwrap();
                let key = envs.iter().find(|e| e["name"] == "KEY").unwrap();
                assert_eq!(key["valueFrom"]["secretKeyRef"]["name"], "shop-web-r1");
                assert!(key.get("value").is_none(), "the secret's value is not in the Deployment");
                assert!(!b.to_string().contains("s3cret"));
                assert_eq!(
                    b["spec"]["selector"]["matchLabels"],
                    json!({ "rollout.environment": "shop", "rollout.run": "r1", "rollout.service": "web" })
                );
            })
            .ok(web_deploy.clone()),
        absent(services, "services", "web"),
        on(Method::PATCH, &apply_uri(services, "web"))
            .body(|b| {
                assert_eq!(b["kind"], "Service");
                assert_eq!(b["spec"]["selector"]["rollout.run"], "r1");
                assert_eq!(b["spec"]["ports"][0]["port"], 8080);
                assert!(b["metadata"]["labels"].get("rollout.run").is_none());
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web" } })),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let labels = base_labels(&env, Role::Production, "r1");
    assert_eq!(
        engine
            .ensure_network(&production_network("shop"), &labels)
            .await
            .unwrap(),
        Outcome::Created
    );
    assert_eq!(
        engine.ensure_volume("shop-db-data", &labels).await.unwrap(),
        Outcome::Created
    );
    assert_eq!(
        engine.run_container(&db_spec).await.unwrap(),
        Outcome::Created
    );
    assert_eq!(
        engine.run_container(&web_spec).await.unwrap(),
        Outcome::Created
    );
    finished(server).await;

    // Read back as the API server stores it: a creation time, the secret as `data`.
    let stored = |mut d: Value, t: &str| {
        d["metadata"]["creationTimestamp"] = json!(t);
        d["metadata"]["uid"] = json!(format!("uid-{t}"));
        d["status"] = json!({ "replicas": 1, "readyReplicas": 1 });
        d
    };
    let (client, server) = serve(vec![
        on(Method::GET, OBSERVE).ok(list(
            "DeploymentList",
            vec![
                stored(sent_db, "2026-01-01T10:00:00Z"),
                stored(web_deploy, "2026-01-01T10:00:01Z"),
            ],
        )),
        on(Method::GET, PODS_OF_SHOP).ok(list(
            "PodList",
            vec![json!({
                "metadata": { "name": "shop-db-r1-x", "labels": { "rollout.environment": "shop", "rollout.service": "db", "rollout.run": "r1" } },
                "status": { "containerStatuses": [ { "name": "db", "image": "db:1", "imageID": "", "ready": false,
                    "restartCount": 7, "state": { "waiting": { "reason": "CrashLoopBackOff" } } } ] }
            })],
        )),
        on(Method::GET, SECRETS_OF_SHOP).ok(list(
            "SecretList",
            vec![json!({ "metadata": { "name": "shop-web-r1" }, "data": { "KEY": "czNjcmV0" } })],
        )),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let observed = engine.observe("shop").await.unwrap();
    finished(server).await;
    let web = &observed.services["web"];
    assert_eq!(web.containers[0].name, "shop-web-r1");
    assert_eq!(web.containers[0].state, ContainerState::Running);
    assert_eq!(web.containers[0].run.as_deref(), Some("r1"));
    // db's pod crash-loops although its Deployment once counted a ready replica.
    assert_eq!(
        observed.services["db"].containers[0].state,
        ContainerState::Restarting
    );
    let plan = crate::plan::compute(
        &env,
        &observed,
        &crate::manifest::playbook::Playbook::builtin_default(),
    );
    let action = |name: &str| {
        let p = plan.services.iter().find(|p| p.name == name).unwrap();
        (p.action, format!("{:?}", p.changes))
    };
    assert_eq!(
        action("web"),
        (crate::plan::Action::Unchanged, "[]".to_string()),
        "{plan:?}"
    );
    assert_eq!(
        action("db"),
        (
            crate::plan::Action::Restart,
            r#"[NotRunning { state: "restarting" }]"#.to_string()
        ),
        "{plan:?}"
    );
}

/// The switch applies the whole Service (a server-side apply of the selector alone would drop the
/// ports rollout applied before), selecting exactly the target Deployment's pods.
#[tokio::test]
async fn blue_green_switch_applies_the_whole_service_selecting_the_new_deployment() {
    let env = environment();
    let web = env.services.iter().find(|s| s.name == "web").unwrap();
    let (_, _, d) = objects(&production_container(&env, web, "r2"));
    let d = serde_json::to_value(&d).unwrap();
    let (client, server) = serve(vec![
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r2")).ok(d),
        on(Method::PATCH, &apply_uri("/api/v1/namespaces/rollout-shop/services", "web"))
            .body(|b| {
                assert_eq!(
                    b,
                    &json!({
                        "apiVersion": "v1", "kind": "Service",
                        "metadata": { "name": "web", "namespace": "rollout-shop", "labels": {
                            "rollout.client": "acme", "rollout.environment": "shop",
                            "rollout.role": "production", "rollout.service": "web" } },
                        "spec": {
                            "selector": { "rollout.environment": "shop", "rollout.run": "r2", "rollout.service": "web" },
                            "ports": [ { "name": "p8080", "port": 8080, "targetPort": 8080 } ]
                        }
                    })
                );
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web" } })),
        absent(DEPLOYMENTS, "deployments.apps", "shop-web-gone"),
    ]);
    let engine = KubeEngine::new(client, "mock");
    engine
        .route_service("shop", "web", "shop-web-r2")
        .await
        .unwrap();
    let err = engine
        .route_service("shop", "web", "shop-web-gone")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "switch `Service web` failed: its target, Deployment shop-web-gone, is not in rollout-shop"
    );
    finished(server).await;
}

#[test]
fn pods_of_a_deployment_are_told_by_their_generated_names() {
    assert!(pod_of("shop-web-r1-5d9f8c-abcde", "shop-web-r1"));
    assert!(!pod_of("shop-web-r10-5d9f8c-abcde", "shop-web-r1"));
    assert!(
        !pod_of("shop-web-r1-x-5d9f8c-abcde", "shop-web-r1"),
        "another Deployment's"
    );
    assert!(!pod_of("shop-web-r1", "shop-web-r1"));
}

#[tokio::test]
async fn status_finds_the_deployment_and_sees_a_crash_loop() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "shop-web-r2", "namespace": "rollout-shop" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "rollout.environment": "shop", "rollout.run": "r2", "rollout.service": "web" } },
            "template": { "spec": { "containers": [ { "name": "web", "image": "web:2", "readinessProbe": { "tcpSocket": { "port": 8080 } } } ] } }
        },
        "status": { "replicas": 1, "readyReplicas": 0 }
    });
    let pod = json!({
        "metadata": { "name": "shop-web-r2-x" },
        "status": { "containerStatuses": [ { "name": "web", "image": "web:2", "imageID": "", "ready": false,
            "restartCount": 5, "state": { "waiting": { "reason": "CrashLoopBackOff" } } } ] }
    });
    let (client, server) = serve(vec![
        on(Method::GET, "/apis/apps/v1/deployments?&fieldSelector=metadata.name%3Dshop-web-r2&labelSelector=rollout.environment")
            .ok(list("DeploymentList", vec![deployment])),
        on(Method::GET, "/api/v1/namespaces/rollout-shop/pods?&labelSelector=rollout.environment%3Dshop%2Crollout.run%3Dr2%2Crollout.service%3Dweb")
            .ok(list("PodList", vec![pod])),
        on(Method::GET, "/apis/apps/v1/deployments?&fieldSelector=metadata.name%3Dgone&labelSelector=rollout.environment")
            .ok(list("DeploymentList", vec![])),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let s = engine.status("shop-web-r2").await.unwrap().unwrap();
    assert_eq!(s.state, ContainerState::Restarting);
    assert_eq!(s.restart_count, 5);
    assert_eq!(engine.status("gone").await.unwrap(), None);
    finished(server).await;
}

#[tokio::test]
async fn a_field_conflict_is_a_clear_409_and_not_forced() {
    let env = environment();
    let db = env.services.iter().find(|s| s.name == "db").unwrap();
    let spec = production_container(&env, db, "r1");
    let (client, server) = serve(vec![
        absent(DEPLOYMENTS, "deployments.apps", "shop-db-r1"),
        on(Method::PATCH, &apply_uri(DEPLOYMENTS, "shop-db-r1")).reply(
            409,
            status(
                409,
                "Conflict",
                "Apply failed with 1 conflict: conflict with \"kubectl-edit\": .spec.replicas",
            ),
        ),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let err = engine.run_container(&spec).await.unwrap_err().to_string();
    finished(server).await;
    assert!(
        err.contains("apply `Deployment shop-db-r1` failed: conflict (409)"),
        "{err}"
    );
    assert!(err.contains("kubectl-edit"), "{err}");
    assert!(err.contains("does not take them over"), "{err}");
}

#[tokio::test]
async fn a_server_error_is_reported_with_its_code() {
    let (client, server) = serve(vec![on(Method::GET, OBSERVE).reply(
        500,
        status(500, "InternalError", "etcdserver: request timed out"),
    )]);
    let engine = KubeEngine::new(client, "mock");
    let err = engine.observe("shop").await.unwrap_err();
    finished(server).await;
    assert_eq!(
        err.to_string(),
        "list `Deployments in rollout-shop` failed: the API server failed (500): etcdserver: request timed out"
    );
}

#[tokio::test]
async fn operations_without_meaning_here_say_so() {
    let (client, server) = serve(vec![]);
    let engine = KubeEngine::new(client, "mock");
    // A pod cannot be frozen (a data copy there is a snapshot instead).
    let err = engine.pause("shop-db-r1").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "not supported on the kubernetes backend yet: pausing shop-db-r1"
    );
    // A copy must say which test version it is for (its labels name the namespace).
    let err = engine
        .copy_volume("a", "b", &BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not supported on the kubernetes backend yet: a volume copy without the rollout.environment label (b)"
    );
    finished(server).await;
}

// --- the Lease lock ---

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/rollout-shop/leases";

fn lease(holder: &str, renewed: &str, secs: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "rollout-lock", "namespace": "rollout-shop", "resourceVersion": "41" },
        "spec": { "holderIdentity": holder, "renewTime": renewed, "acquireTime": renewed, "leaseDurationSeconds": secs, "leaseTransitions": 2 }
    })
}

/// The Lease read, held by `holder` since `renewed` for `secs`.
fn read_lease(holder: &str, renewed: &str, secs: i32) -> Exchange {
    on(Method::GET, &format!("{LEASE}/rollout-lock")).ok(lease(holder, renewed, secs))
}

/// The Lease replaced whole (a renewal or a takeover), guarded by the version read.
fn replace_lease() -> Exchange {
    on(
        Method::PUT,
        &format!("{LEASE}/rollout-lock?&fieldManager=rollout"),
    )
}

fn now() -> jiff::Timestamp {
    "2026-01-01T12:00:00Z".parse().unwrap()
}

#[tokio::test]
async fn lease_absent_is_created_with_our_identity() {
    let (client, server) = serve(vec![
        absent(LEASE, "leases", "rollout-lock"),
        on(Method::POST, &format!("{LEASE}?&fieldManager=rollout"))
            .body(|b| {
                assert_eq!(b["spec"]["holderIdentity"], "host:1:run-a");
                assert_eq!(b["spec"]["leaseDurationSeconds"], 30);
                assert_eq!(b["spec"]["renewTime"], "2026-01-01T12:00:00.000000Z");
            })
            .reply(201, lease("host:1:run-a", "2026-01-01T12:00:00Z", 30)),
    ]);
    let lock = LeaseLock::new(client, "shop", "host:1:run-a", 30);
    assert_eq!(lock.acquire(now()).await.unwrap(), Acquired::Created);
    finished(server).await;
}

#[tokio::test]
async fn lease_held_by_another_holder_is_refused_naming_it() {
    let (client, server) = serve(vec![read_lease("ci:7:run-b", "2026-01-01T11:59:50Z", 30)]);
    let lock = LeaseLock::new(client, "shop", "host:1:run-a", 30);
    let err = lock.acquire(now()).await.unwrap_err();
    finished(server).await;
    assert!(matches!(err, SharedLockError::Held { .. }));
    assert_eq!(
        err.to_string(),
        "environment shop is locked by ci:7:run-b until 2026-01-01T12:00:20Z (Lease rollout-lock in rollout-shop); try again after it finishes"
    );
}

#[tokio::test]
async fn expired_lease_is_taken_over_with_its_resource_version() {
    let (client, server) = serve(vec![
        read_lease("ci:7:run-b", "2026-01-01T11:00:00Z", 30),
        replace_lease()
            .body(|b| {
                assert_eq!(
                    b["metadata"]["resourceVersion"], "41",
                    "optimistic concurrency"
                );
                assert_eq!(b["spec"]["holderIdentity"], "host:1:run-a");
                assert_eq!(b["spec"]["leaseTransitions"], 3);
                assert_eq!(b["spec"]["renewTime"], "2026-01-01T12:00:00.000000Z");
            })
            .ok(lease("host:1:run-a", "2026-01-01T12:00:00Z", 30)),
    ]);
    let lock = LeaseLock::new(client, "shop", "host:1:run-a", 30);
    assert_eq!(
        lock.acquire(now()).await.unwrap(),
        Acquired::TookOver {
            from: Some("ci:7:run-b".into())
        }
    );
    finished(server).await;
}

/// `status` reads who holds the Lease without writing it: a held one names its holder, an
/// expired or absent one is nobody's.
#[tokio::test]
async fn the_lease_holder_is_read_without_a_write() {
    let (client, server) = serve(vec![
        read_lease("ci:7:run-b", "2026-01-01T11:59:50Z", 30),
        read_lease("ci:7:run-b", "2026-01-01T11:00:00Z", 30),
        absent(LEASE, "leases", "rollout-lock"),
    ]);
    let lock = LeaseLock::new(client, "shop", "", 30);
    assert_eq!(
        lock.holder_at(now()).await.unwrap(),
        Some((
            "ci:7:run-b".to_string(),
            "2026-01-01T12:00:20Z".parse().unwrap()
        ))
    );
    assert_eq!(lock.holder_at(now()).await.unwrap(), None, "expired");
    assert_eq!(lock.holder_at(now()).await.unwrap(), None, "absent");
    finished(server).await;
}

/// A run of this host killed outright leaves its Lease valid for up to its duration; its
/// process being gone is enough to take it over at once.
#[tokio::test]
async fn a_lease_whose_process_on_this_host_is_gone_is_taken_over_at_once() {
    // No pid reaches 2^22 + 1 (Linux's pid_max is at most 2^22).
    let dead = crate::engine::shared_lock::holder(
        "bob",
        &format!("{}:4194305:1", crate::owner::hostname()),
        "r0",
    );
    let (client, server) = serve(vec![
        read_lease(&dead, "2026-01-01T11:59:59Z", 60),
        replace_lease()
            .body(|b| assert_eq!(b["spec"]["holderIdentity"], "host:1:run-a"))
            .ok(lease("host:1:run-a", "2026-01-01T12:00:00Z", 60)),
    ]);
    let lock = LeaseLock::new(client, "shop", "host:1:run-a", 60);
    assert_eq!(
        lock.acquire(now()).await.unwrap(),
        Acquired::TookOver { from: Some(dead) }
    );
    finished(server).await;
}

#[tokio::test]
async fn losing_the_takeover_race_is_a_held_lock_and_release_leaves_others_alone() {
    let (client, server) = serve(vec![
        read_lease("ci:7:run-b", "2026-01-01T11:00:00Z", 30),
        replace_lease().reply(409, status(409, "Conflict", "the object has been modified")),
        read_lease("ci:9:run-c", "2026-01-01T12:00:00Z", 30),
    ]);
    let lock = LeaseLock::new(client, "shop", "host:1:run-a", 30);
    let err = lock.acquire(now()).await.unwrap_err();
    assert!(
        err.to_string().contains("changed the Lease just now"),
        "{err}"
    );
    assert!(!lock.release().await.unwrap(), "not ours: left alone");
    finished(server).await;
}

#[tokio::test]
async fn our_lease_is_renewed_and_released() {
    let (client, server) = serve(vec![
        read_lease("host:1:run-a", "2026-01-01T11:59:55Z", 30),
        replace_lease()
            .body(|b| {
                assert_eq!(b["spec"]["renewTime"], "2026-01-01T12:00:00.000000Z");
                assert_eq!(
                    b["spec"]["acquireTime"], "2026-01-01T11:59:55.000000Z",
                    "still the first acquisition"
                );
                assert_eq!(b["spec"]["leaseTransitions"], 2);
            })
            .ok(lease("host:1:run-a", "2026-01-01T12:00:00Z", 30)),
        read_lease("host:1:run-a", "2026-01-01T12:00:00Z", 30),
        on(Method::DELETE, &format!("{LEASE}/rollout-lock?"))
            .body(|b| assert_eq!(b["preconditions"]["resourceVersion"], "41"))
            .ok(success()),
    ]);
    let lock = LeaseLock::new(client, "shop", "host:1:run-a", 30);
    assert_eq!(lock.acquire(now()).await.unwrap(), Acquired::Renewed);
    assert!(lock.release().await.unwrap());
    finished(server).await;
}

// --- gates: the run parked at a gate, and its grants, for every machine ---

const GATES_CM: &str = "/api/v1/namespaces/rollout-shop/configmaps/rollout-gates";

fn parked_r1() -> crate::store::Parked {
    crate::store::Parked {
        environment: "shop".into(),
        run: "r1".into(),
        digest: "d1".into(),
        user: "alice".into(),
        two_person: true,
        awaiting: vec![crate::store::Awaited {
            kind: crate::store::GrantKind::Approval,
            gate: "client".into(),
            services: vec![],
        }],
        gate_step: 1,
        report: json!({ "steps": [] }),
        at: now(),
    }
}

fn approval(who: &str, minute: i64) -> crate::store::Grant {
    crate::store::Grant {
        run: "r1".into(),
        environment: "shop".into(),
        kind: crate::store::GrantKind::Approval,
        gate: "client".into(),
        who: who.into(),
        reference: None,
        note: None,
        expires: None,
        at: now() + jiff::SignedDuration::from_mins(minute),
    }
}

fn gates_cm(rv: &str, grants: Vec<crate::store::Grant>) -> Value {
    let doc = crate::store::GatesDoc {
        environment: "shop".into(),
        parked: Some(parked_r1()),
        grants,
    };
    json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "rollout-gates", "namespace": "rollout-shop", "resourceVersion": rv },
        "data": { "gates.json": serde_json::to_string(&doc).unwrap() } })
}

fn gates_in(body: &Value) -> crate::store::GatesDoc {
    serde_json::from_str(body["data"]["gates.json"].as_str().unwrap()).unwrap()
}

/// Machine A parks run r1 (the gates ConfigMap is created: there was none), then records bob's
/// approval; carol's, from machine B, lands in between, so A's replace guarded by the version it
/// read is refused (409) and A reads again and keeps both. Machine C, with an empty store, then
/// reads the run parked and both approvals.
#[tokio::test]
async fn gates_are_written_for_every_machine_guarded_by_their_version_and_read_back() {
    let (client, server) = serve(vec![
        on(Method::GET, GATES_CM).reply(404, not_found("configmaps", "rollout-gates")),
        on(Method::POST, "/api/v1/namespaces/rollout-shop/configmaps?")
            .body(|b| {
                assert_eq!(b["metadata"]["name"], "rollout-gates");
                assert_eq!(b["metadata"]["labels"]["rollout.environment"], "shop");
                assert_eq!(b["metadata"]["labels"]["rollout.state"], "gates");
                assert!(b["metadata"].get("resourceVersion").is_none_or(Value::is_null));
                let doc = gates_in(b);
                assert_eq!(doc.parked, Some(parked_r1()));
                assert!(doc.grants.is_empty());
            })
            .reply(201, gates_cm("5", vec![])),
        on(Method::GET, GATES_CM).ok(gates_cm("5", vec![])),
        on(Method::PUT, &format!("{GATES_CM}?"))
            .body(|b| assert_eq!(b["metadata"]["resourceVersion"], "5"))
            .reply(409, status(409, "Conflict", "Operation cannot be fulfilled on configmaps \"rollout-gates\": the object has been modified; please apply your changes to the latest version and try again")),
        on(Method::GET, GATES_CM).ok(gates_cm("6", vec![approval("carol", 1)])),
        on(Method::PUT, &format!("{GATES_CM}?"))
            .body(|b| {
                assert_eq!(b["metadata"]["resourceVersion"], "6");
                assert_eq!(gates_in(b).grants, vec![approval("carol", 1), approval("bob", 2)]);
            })
            .ok(gates_cm("7", vec![approval("carol", 1), approval("bob", 2)])),
        on(Method::GET, GATES_CM).ok(gates_cm("7", vec![approval("carol", 1), approval("bob", 2)])),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let dir = tempfile::tempdir().unwrap();
    let a = std::sync::Arc::new(crate::store::Store::open(dir.path()).unwrap());
    a.park(&parked_r1()).unwrap();
    crate::exec::journal::push_gates(&engine, &a, "shop")
        .await
        .unwrap();
    a.record_grant(&approval("bob", 2)).unwrap();
    crate::exec::journal::push_grant(&engine, &a, &approval("bob", 2))
        .await
        .unwrap();

    let dir_c = tempfile::tempdir().unwrap();
    let c = std::sync::Arc::new(crate::store::Store::open(dir_c.path()).unwrap());
    crate::exec::journal::pull_gates(&engine, &c, "shop")
        .await
        .unwrap();
    finished(server).await;
    assert_eq!(c.parked("shop").unwrap(), Some(parked_r1()));
    assert_eq!(
        c.grants("r1").unwrap(),
        vec![approval("carol", 1), approval("bob", 2)]
    );
}

/// An approval whose run was resumed (or superseded) on another machine between reading the
/// gates and writing the approval: nothing is written (the run is not put back on its gate),
/// and the error says why.
#[tokio::test]
async fn an_approval_for_a_run_no_longer_parked_in_the_cluster_writes_nothing() {
    let (client, server) = serve(vec![
        on(Method::GET, GATES_CM).ok(json!({ "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "rollout-gates", "namespace": "rollout-shop", "resourceVersion": "8" },
            "data": { "gates.json": json!({ "environment": "shop", "parked": null, "grants": [] }).to_string() } })),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let dir = tempfile::tempdir().unwrap();
    let a = std::sync::Arc::new(crate::store::Store::open(dir.path()).unwrap());
    a.park(&parked_r1()).unwrap();
    a.record_grant(&approval("erin", 3)).unwrap();
    let err = crate::exec::journal::push_grant(&engine, &a, &approval("erin", 3))
        .await
        .unwrap_err();
    finished(server).await;
    assert_eq!(
        err.to_string(),
        "run r1 is no longer waiting at its gate in ConfigMap rollout-gates in rollout-shop (it was resumed or superseded on another machine)"
    );
}

// --- objects found and removed by their labels ---

const TEST_SELECTOR: &str =
    "labelSelector=rollout.environment%3Dshop%2Crollout.role%3Dtest%2Crollout.run%3Dr9";

fn test_selector() -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::ENVIRONMENT.to_string(), "shop".to_string()),
        (labels::ROLE.to_string(), "test".to_string()),
        (labels::RUN.to_string(), "r9".to_string()),
    ])
}

/// The teardown's look for what a killed data copy left (in any namespace, by the run's
/// labels): its Jobs, VolumeSnapshots and their contents; `query` is the label selector; none
/// found.
fn no_copy_leftovers(query: &str) -> Vec<Exchange> {
    vec![
        labelled("/apis/batch/v1/jobs", query).ok(list("JobList", vec![])),
        labelled("/apis/snapshot.storage.k8s.io/v1/volumesnapshots", query)
            .ok(list("VolumeSnapshotList", vec![])),
        labelled(
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents",
            query,
        )
        .ok(list("VolumeSnapshotContentList", vec![])),
    ]
}

fn meta(name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({ "name": name, "labels": { "rollout.environment": "shop", "rollout.role": "test", "rollout.run": "r9" } });
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    json!({ "metadata": m })
}

/// A namespace already being deleted (its teardown began): not listed, not deleted again.
fn terminating(name: &str) -> Value {
    let mut n = meta(name, None);
    n["metadata"]["deletionTimestamp"] = json!("2026-01-01T11:59:00Z");
    n["status"] = json!({ "phase": "Terminating" });
    n
}

fn deployment_item(name: &str, ns: &str) -> Value {
    let mut d = meta(name, Some(ns));
    d["spec"] = json!({ "selector": {}, "template": {} });
    d
}

#[tokio::test]
async fn list_labelled_finds_deployments_namespaces_and_claims_in_every_namespace() {
    let (client, server) = serve(vec![
        labelled("/apis/apps/v1/deployments", TEST_SELECTOR).ok(list(
            "DeploymentList",
            vec![deployment_item("shop-web-r9", "shop-test-r9")],
        )),
        labelled("/api/v1/namespaces", TEST_SELECTOR).ok(list(
            "NamespaceList",
            vec![meta("shop-test-r9", None), terminating("shop-test-r8")],
        )),
        labelled("/api/v1/persistentvolumeclaims", TEST_SELECTOR)
            .ok(list("PersistentVolumeClaimList", vec![])),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let found = engine.list_labelled(&test_selector()).await.unwrap();
    finished(server).await;
    let kinds: Vec<(ObjectKind, &str)> = found.iter().map(|o| (o.kind, o.name.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (ObjectKind::Container, "shop-web-r9"),
            (ObjectKind::Network, "shop-test-r9")
        ]
    );
    assert_eq!(found[0].labels[labels::RUN], "r9");
}

#[tokio::test]
async fn remove_labelled_deletes_what_the_selector_finds_and_tolerates_it_gone() {
    let (client, server) = serve(vec![
        labelled("/apis/apps/v1/deployments", TEST_SELECTOR).ok(list(
            "DeploymentList",
            vec![deployment_item("shop-web-r9", "shop-test-r9")],
        )),
        delete_background("/apis/apps/v1/namespaces/shop-test-r9/deployments/shop-web-r9")
            .ok(success()),
        labelled("/api/v1/secrets", TEST_SELECTOR).ok(list(
            "SecretList",
            vec![meta("shop-web-r9", Some("shop-test-r9"))],
        )),
        // Deleted meanwhile (by the namespace going, say): fine.
        delete_background("/api/v1/namespaces/shop-test-r9/secrets/shop-web-r9")
            .reply(404, not_found("secrets", "shop-web-r9")),
        labelled("/api/v1/persistentvolumeclaims", TEST_SELECTOR).ok(list(
            "PersistentVolumeClaimList",
            vec![meta("shop-db-data-r9", Some("shop-test-r9"))],
        )),
        delete_background("/api/v1/namespaces/shop-test-r9/persistentvolumeclaims/shop-db-data-r9")
            .ok(success()),
        // A data copy killed half-way left its source Job beside production's claim.
        labelled("/apis/batch/v1/jobs", TEST_SELECTOR).ok(list(
            "JobList",
            vec![meta("shop-test-r9-db-data-source", Some("rollout-shop"))],
        )),
        delete_background(
            "/apis/batch/v1/namespaces/rollout-shop/jobs/shop-test-r9-db-data-source",
        )
        .ok(success()),
        // A cluster without VolumeSnapshots: nothing to look for there.
        labelled(
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshots",
            TEST_SELECTOR,
        )
        .reply(
            404,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
        labelled("/api/v1/namespaces", TEST_SELECTOR).ok(list(
            "NamespaceList",
            vec![meta("shop-test-r9", None), terminating("shop-test-r8")],
        )),
        delete_background("/api/v1/namespaces/shop-test-r9").ok(success()),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let removed = engine.remove_labelled(&test_selector()).await.unwrap();
    finished(server).await;
    assert_eq!(
        removed,
        Removed {
            containers: 1,
            networks: 1,
            volumes: 1
        }
    );
}

/// A pod none of whose containers has run has no log to read: what a failure quotes instead is
/// why, from the pod's status (the waiting reason; conditions but Ready's) and its Warning
/// events, oldest first, as `kubectl describe pod` shows them. No log is asked for.
#[tokio::test]
async fn a_pod_that_never_started_says_why_from_its_status_and_events_instead_of_a_log() {
    let find = "/apis/apps/v1/deployments?&fieldSelector=metadata.name%3Dshop-db-r2&labelSelector=rollout.environment";
    let mut d = deployment_item("shop-db-r2", "rollout-shop");
    d["spec"]["selector"] = json!({ "matchLabels": { "rollout.environment": "shop", "rollout.run": "r2", "rollout.service": "db" } });
    let pods = "/api/v1/namespaces/rollout-shop/pods?&labelSelector=rollout.environment%3Dshop%2Crollout.run%3Dr2%2Crollout.service%3Ddb";
    let pending = json!({
        "metadata": { "name": "shop-db-r2-7c4b9d-bbbbb" },
        "status": { "phase": "Pending",
            "conditions": [
                { "type": "PodScheduled", "status": "True" },
                { "type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "message": "containers with unready status: [db]" } ],
            "containerStatuses": [ { "name": "db", "image": "db:2", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": "ContainerCreating" } } } ] }
    });
    let warning = |reason: &str, message: &str, count: i32, at: &str| {
        json!({ "metadata": { "name": format!("shop-db-r2-7c4b9d-bbbbb.{reason}") },
            "involvedObject": { "kind": "Pod", "name": "shop-db-r2-7c4b9d-bbbbb" },
            "type": "Warning", "reason": reason, "message": message, "count": count, "lastTimestamp": at })
    };
    let (client, server) = serve(vec![
        on(Method::GET, find).ok(list("DeploymentList", vec![d])),
        on(Method::GET, pods).ok(list("PodList", vec![pending])),
        on(
            Method::GET,
            "/api/v1/namespaces/rollout-shop/events?&fieldSelector=involvedObject.kind%3DPod%2CinvolvedObject.name%3Dshop-db-r2-7c4b9d-bbbbb%2Ctype%3DWarning",
        )
        .ok(list(
            "EventList",
            vec![
                warning("FailedMount", "MountVolume.SetUp failed for volume \"data\": rpc error: code = Internal", 4, "2026-01-01T12:03:00Z"),
                warning("FailedAttachVolume", "Multi-Attach error for volume \"pvc-1\": Volume is already exclusively attached to one node", 1, "2026-01-01T12:01:00Z"),
            ],
        )),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let lines = engine.logs_tail("shop-db-r2", 10).await.unwrap();
    finished(server).await;
    assert_eq!(
        lines,
        vec![
            "container db is waiting: ContainerCreating",
            "event FailedAttachVolume: Multi-Attach error for volume \"pvc-1\": Volume is already exclusively attached to one node",
            "event FailedMount (x4): MountVolume.SetUp failed for volume \"data\": rpc error: code = Internal",
        ]
    );
}

/// Stopping scales to zero and waits until no pod of the Deployment is left (a terminating pod
/// still runs); one that never goes fails the stop after its grace period and a margin.
#[tokio::test(start_paused = true)]
async fn stopping_scales_to_zero_and_waits_for_the_pods_to_be_gone() {
    let find = "/apis/apps/v1/deployments?&fieldSelector=metadata.name%3Dshop-web-r1&labelSelector=rollout.environment";
    let mut d = deployment_item("shop-web-r1", "rollout-shop");
    d["spec"]["selector"] = json!({ "matchLabels": { "rollout.environment": "shop", "rollout.run": "r1", "rollout.service": "web" } });
    let pods = "/api/v1/namespaces/rollout-shop/pods?&labelSelector=rollout.environment%3Dshop%2Crollout.run%3Dr1%2Crollout.service%3Dweb";
    let terminating = || {
        list(
            "PodList",
            vec![
                json!({ "metadata": { "name": "shop-web-r1-5d9f8c-x1x2x", "deletionTimestamp": "2026-01-01T12:00:00Z" } }),
            ],
        )
    };
    let scale = || {
        on(
            Method::PATCH,
            "/apis/apps/v1/namespaces/rollout-shop/deployments/shop-web-r1?",
        )
        .body(|b| assert_eq!(b, &json!({ "spec": { "replicas": 0 } })))
    };
    let mut script = vec![
        on(Method::GET, find).ok(list("DeploymentList", vec![d.clone()])),
        scale().ok(d.clone()),
        on(Method::GET, pods).ok(terminating()),
        on(Method::GET, pods).ok(list("PodList", vec![])),
        // A pod that never goes: asked every second for the 30s grace and the 30s margin.
        on(Method::GET, find).ok(list("DeploymentList", vec![d.clone()])),
        scale().ok(d),
    ];
    for _ in 0..=60 {
        script.push(on(Method::GET, pods).ok(terminating()));
    }
    let (client, server) = serve(script);
    let engine = KubeEngine::new(client, "mock");
    engine
        .stop_container("shop-web-r1", Duration::from_secs(5))
        .await
        .unwrap();
    let err = engine
        .stop_container("shop-web-r1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stop `Deployment shop-web-r1` failed: 1 pod(s) still there 60s after scaling it to zero"
    );
    finished(server).await;
}

#[tokio::test(start_paused = true)]
async fn a_broken_connection_is_asked_again_through_retrying_but_a_500_is_not() {
    let (client, server) = serve(vec![
        on(Method::GET, OBSERVE).broken(),
        on(Method::GET, OBSERVE).ok(list("DeploymentList", vec![])),
        on(Method::GET, OBSERVE).reply(500, status(500, "InternalError", "boom")),
    ]);
    let engine = crate::engine::retry::Retrying::new(KubeEngine::new(client, "mock"));
    let observed = engine.observe("shop").await.unwrap();
    assert!(observed.services.is_empty());
    let err = engine.observe("shop").await.unwrap_err();
    assert!(matches!(err, EngineError::Call { .. }), "{err}");
    finished(server).await;
}
