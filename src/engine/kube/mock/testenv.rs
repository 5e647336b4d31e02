//! Test versions on the kubernetes backend against the mock API server: the copy in a namespace
//! of its own (`shop-test-r9`), every object labelled with the run, torn down by deleting what
//! its labels find (the namespace last), and found and deleted by its labels after a crash.

use super::*;
use crate::testenv;

const TEST_NS: &str = "/api/v1/namespaces/shop-test-r9";
const TEST_DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop-test-r9/deployments";

fn expires() -> jiff::Timestamp {
    now() + jiff::SignedDuration::from_hours(2)
}

/// Deployment `shop-test-r9-<service>` as stored, `ready` of its replica ready.
fn stored_test(service: &str, ready: i32) -> Value {
    let env = environment();
    let svc = env.services.iter().find(|s| s.name == service).unwrap();
    let labels = crate::engine::spec::test_labels(&env, "r9", expires(), Some("host:1:2"));
    let (_, _, d) = objects(&crate::engine::spec::test_container(
        &env, svc, "r9", &labels,
    ));
    let mut d = serde_json::to_value(&d).unwrap();
    d["metadata"]["generation"] = json!(1);
    d["status"] = json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": ready });
    d
}

pub(super) fn status_of(service: &str, ready: i32) -> Vec<Exchange> {
    let running = json!({
        "metadata": { "name": format!("shop-test-r9-{service}-5d9f8c-x1x2x") },
        "status": { "containerStatuses": [ { "name": service, "image": "", "imageID": "", "ready": ready == 1,
            "restartCount": 0, "state": { "running": {} } } ] }
    });
    vec![
        on(
            Method::GET,
            &format!("/apis/apps/v1/deployments?&fieldSelector=metadata.name%3Dshop-test-r9-{service}&labelSelector=rollout.environment"),
        )
        .ok(list("DeploymentList", vec![stored_test(service, ready)])),
        on(
            Method::GET,
            &format!("{TEST_NS}/pods?&labelSelector=rollout.environment%3Dshop%2Crollout.run%3Dr9%2Crollout.service%3D{service}"),
        )
        .ok(list("PodList", vec![running])),
    ]
}

fn test_labels_checked(b: &Value) {
    let l = &b["metadata"]["labels"];
    assert_eq!(l["rollout.environment"], "shop");
    assert_eq!(l["rollout.role"], "test");
    assert_eq!(l["rollout.run"], "r9");
    assert_eq!(l["rollout.expires"], expires().as_second().to_string());
    assert_eq!(
        b["metadata"]["namespace"]
            .as_str()
            .unwrap_or("shop-test-r9"),
        "shop-test-r9"
    );
}

/// Test version r9 of shop coming up, owned by `owner`: the namespace, db's fresh claim, db (no
/// port, no probe: running settles it), then web, which depends on it (its Secret, Deployment
/// and Service, all in the namespace).
pub(super) fn up_script(owner: String) -> Vec<Exchange> {
    let pvcs = format!("{TEST_NS}/persistentvolumeclaims");
    let secrets = format!("{TEST_NS}/secrets");
    let services = format!("{TEST_NS}/services");
    let mut script = vec![
        on(Method::GET, TEST_NS).reply(404, not_found("namespaces", "shop-test-r9")),
        on(Method::PATCH, &apply_uri("/api/v1/namespaces", "shop-test-r9"))
            .body(move |b| {
                assert_eq!(b["kind"], "Namespace");
                test_labels_checked(b);
                assert_eq!(
                    b["metadata"]["annotations"]["rollout.owner"], owner,
                    "the owner is no label value"
                );
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "shop-test-r9" } })),
        on(Method::GET, &format!("{pvcs}/shop-test-r9-db-data"))
            .reply(404, not_found("persistentvolumeclaims", "shop-test-r9-db-data")),
        on(Method::PATCH, &apply_uri(&pvcs, "shop-test-r9-db-data"))
            .body(test_labels_checked)
            .ok(json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "shop-test-r9-db-data" } })),
        on(Method::GET, &format!("{TEST_DEPLOYMENTS}/shop-test-r9-db"))
            .reply(404, not_found("deployments.apps", "shop-test-r9-db")),
        on(Method::PATCH, &apply_uri(TEST_DEPLOYMENTS, "shop-test-r9-db"))
            .body(|b| {
                test_labels_checked(b);
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "shop-test-r9-db-data");
            })
            .ok(stored_test("db", 0)),
    ];
    // Running, then running long enough to count as started.
    script.extend(status_of("db", 1));
    script.extend(status_of("db", 1));
    script.extend([
        on(Method::GET, &format!("{TEST_DEPLOYMENTS}/shop-test-r9-web"))
            .reply(404, not_found("deployments.apps", "shop-test-r9-web")),
        on(Method::PATCH, &apply_uri(&secrets, "shop-test-r9-web"))
            .body(|b| {
                test_labels_checked(b);
                assert_eq!(b["stringData"]["KEY"], "s3cret");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "shop-test-r9-web" } })),
        on(Method::PATCH, &apply_uri(TEST_DEPLOYMENTS, "shop-test-r9-web"))
            .body(test_labels_checked)
            .ok(stored_test("web", 0)),
        on(Method::GET, &format!("{services}/web")).reply(404, not_found("services", "web")),
        on(Method::PATCH, &apply_uri(&services, "web"))
            .body(|b| {
                test_labels_checked(b);
                assert_eq!(b["spec"]["selector"]["rollout.run"], "r9");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web" } })),
    ]);
    script.extend(status_of("web", 1));
    script
}

/// The teardown of test version r9: what its labels find, deleted, the namespace last.
pub(super) fn teardown_script() -> Vec<Exchange> {
    let success = || json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" });
    let background = |b: &Value| assert_eq!(b["propagationPolicy"], "Background");
    vec![
        on(
            Method::GET,
            &format!("/apis/apps/v1/deployments?&{TEST_SELECTOR}"),
        )
        .ok(list(
            "DeploymentList",
            vec![stored_test("db", 1), stored_test("web", 1)],
        )),
        on(
            Method::DELETE,
            &format!("{TEST_DEPLOYMENTS}/shop-test-r9-db?"),
        )
        .body(background)
        .ok(success()),
        on(
            Method::DELETE,
            &format!("{TEST_DEPLOYMENTS}/shop-test-r9-web?"),
        )
        .body(background)
        .ok(success()),
        on(Method::GET, &format!("/api/v1/secrets?&{TEST_SELECTOR}")).ok(list(
            "SecretList",
            vec![meta("shop-test-r9-web", Some("shop-test-r9"))],
        )),
        on(
            Method::DELETE,
            &format!("{TEST_NS}/secrets/shop-test-r9-web?"),
        )
        .body(background)
        .ok(success()),
        on(
            Method::GET,
            &format!("/api/v1/persistentvolumeclaims?&{TEST_SELECTOR}"),
        )
        .ok(list(
            "PersistentVolumeClaimList",
            vec![meta("shop-test-r9-db-data", Some("shop-test-r9"))],
        )),
        on(
            Method::DELETE,
            &format!("{TEST_NS}/persistentvolumeclaims/shop-test-r9-db-data?"),
        )
        .body(background)
        .ok(success()),
        on(Method::GET, &format!("/api/v1/namespaces?&{TEST_SELECTOR}"))
            .ok(list("NamespaceList", vec![meta("shop-test-r9", None)])),
        on(Method::DELETE, &format!("{TEST_NS}?"))
            .body(background)
            .ok(success()),
    ]
}

#[tokio::test(start_paused = true)]
async fn test_namespace_with_the_full_copy_comes_up_in_dependency_order() {
    let env = environment();
    let (client, server) = serve(up_script("host:1:2".into()));
    let engine = KubeEngine::new(client, "mock");
    let opts = testenv::Options {
        ttl: Duration::from_secs(7200),
        copy_data: Vec::new(),
        owner: Some("host:1:2".into()),
    };
    let t = testenv::up(
        &engine,
        &env,
        "r9",
        &opts,
        now(),
        &crate::progress::Silent,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    finished(server).await;
    assert_eq!(t.network, "shop-test-r9");
    assert_eq!(
        t.services.keys().collect::<Vec<_>>(),
        vec!["db", "web"],
        "both up"
    );
    assert_eq!(t.services["web"].container, "shop-test-r9-web");
}

/// copyData cannot be honoured yet: said before anything is created.
#[tokio::test]
async fn a_data_copy_is_refused_before_anything_is_created() {
    let (client, server) = serve(vec![]);
    let engine = KubeEngine::new(client, "mock");
    let opts = testenv::Options {
        ttl: Duration::from_secs(60),
        copy_data: vec!["db".into()],
        owner: None,
    };
    let err = testenv::up(
        &engine,
        &environment(),
        "r9",
        &opts,
        now(),
        &crate::progress::Silent,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    finished(server).await;
    assert_eq!(
        err.to_string(),
        "not supported on the kubernetes backend yet: copying the data of db into a test version on mock (VolumeSnapshots or a copy Job)"
    );
}

/// After a crash: the next command finds the test namespace by its labels, sees its TTL passed
/// (its owner ran on another host, so only the TTL can tell), and deletes what the run's labels
/// find, the namespace with it.
#[tokio::test]
async fn a_test_namespace_left_by_a_crash_is_found_by_its_labels_and_deleted() {
    let past = (now().as_second() - 60).to_string();
    let left = |name: &str, ns: Option<&str>| {
        let mut m = meta(name, ns);
        m["metadata"]["labels"]["rollout.expires"] = json!(past);
        m["metadata"]["annotations"] = json!({ "rollout.owner": "elsewhere:4242:1767268800" });
        m
    };
    let mut deployment = left("shop-test-r9-web", Some("shop-test-r9"));
    deployment["spec"] = json!({ "selector": {}, "template": {} });
    let of_shop = "labelSelector=rollout.environment%3Dshop%2Crollout.role%3Dtest";
    let success = || json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" });
    let (client, server) = serve(vec![
        on(
            Method::GET,
            &format!("/apis/apps/v1/deployments?&{of_shop}"),
        )
        .ok(list("DeploymentList", vec![deployment.clone()])),
        on(Method::GET, &format!("/api/v1/namespaces?&{of_shop}"))
            .ok(list("NamespaceList", vec![left("shop-test-r9", None)])),
        on(
            Method::GET,
            &format!("/api/v1/persistentvolumeclaims?&{of_shop}"),
        )
        .ok(list("PersistentVolumeClaimList", vec![])),
        // Teardown of run r9 by its labels.
        on(
            Method::GET,
            &format!("/apis/apps/v1/deployments?&{TEST_SELECTOR}"),
        )
        .ok(list("DeploymentList", vec![deployment])),
        on(
            Method::DELETE,
            &format!("{TEST_DEPLOYMENTS}/shop-test-r9-web?"),
        )
        .ok(success()),
        on(Method::GET, &format!("/api/v1/secrets?&{TEST_SELECTOR}"))
            .ok(list("SecretList", vec![])),
        on(
            Method::GET,
            &format!("/api/v1/persistentvolumeclaims?&{TEST_SELECTOR}"),
        )
        .ok(list("PersistentVolumeClaimList", vec![])),
        on(Method::GET, &format!("/api/v1/namespaces?&{TEST_SELECTOR}"))
            .ok(list("NamespaceList", vec![left("shop-test-r9", None)])),
        on(Method::DELETE, &format!("{TEST_NS}?"))
            .body(|b| assert_eq!(b["propagationPolicy"], "Background"))
            .ok(success()),
        // Production containers a killed data copy left paused: none here.
        on(Method::GET, OBSERVE).ok(list("DeploymentList", vec![])),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let done = testenv::collect_garbage(&engine, Some("shop"), now())
        .await
        .unwrap();
    finished(server).await;
    assert_eq!(
        done,
        vec!["removed test version r9 of shop: its TTL has passed"]
    );
}
