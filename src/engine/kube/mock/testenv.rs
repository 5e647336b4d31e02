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
        absent(&pvcs, "persistentvolumeclaims", "shop-test-r9-db-data"),
        on(Method::PATCH, &apply_uri(&pvcs, "shop-test-r9-db-data"))
            .body(test_labels_checked)
            .ok(json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "shop-test-r9-db-data" } })),
        absent(TEST_DEPLOYMENTS, "deployments.apps", "shop-test-r9-db"),
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
        absent(TEST_DEPLOYMENTS, "deployments.apps", "shop-test-r9-web"),
        on(Method::PATCH, &apply_uri(&secrets, "shop-test-r9-web"))
            .body(|b| {
                test_labels_checked(b);
                assert_eq!(b["stringData"]["KEY"], "s3cret");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "shop-test-r9-web" } })),
        on(Method::PATCH, &apply_uri(TEST_DEPLOYMENTS, "shop-test-r9-web"))
            .body(test_labels_checked)
            .ok(stored_test("web", 0)),
        absent(&services, "services", "web"),
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
    vec![
        labelled("/apis/apps/v1/deployments", TEST_SELECTOR).ok(list(
            "DeploymentList",
            vec![stored_test("db", 1), stored_test("web", 1)],
        )),
        delete_background(&format!("{TEST_DEPLOYMENTS}/shop-test-r9-db")).ok(success()),
        delete_background(&format!("{TEST_DEPLOYMENTS}/shop-test-r9-web")).ok(success()),
        labelled("/api/v1/secrets", TEST_SELECTOR).ok(list(
            "SecretList",
            vec![meta("shop-test-r9-web", Some("shop-test-r9"))],
        )),
        delete_background(&format!("{TEST_NS}/secrets/shop-test-r9-web")).ok(success()),
        labelled("/api/v1/persistentvolumeclaims", TEST_SELECTOR).ok(list(
            "PersistentVolumeClaimList",
            vec![meta("shop-test-r9-db-data", Some("shop-test-r9"))],
        )),
        delete_background(&format!(
            "{TEST_NS}/persistentvolumeclaims/shop-test-r9-db-data"
        ))
        .ok(success()),
    ]
    .into_iter()
    .chain(no_copy_leftovers(TEST_SELECTOR))
    .chain([
        labelled("/api/v1/namespaces", TEST_SELECTOR)
            .ok(list("NamespaceList", vec![meta("shop-test-r9", None)])),
        delete_background(TEST_NS).ok(success()),
    ])
    .collect()
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

/// [`up_script`] with db's claim in the test namespace made by `copy`, where the plain bring-up
/// makes it fresh.
fn up_script_copying(copy: Vec<Exchange>) -> Vec<Exchange> {
    let claim = format!("{TEST_NS}/persistentvolumeclaims/shop-test-r9-db-data");
    let mut script = up_script("host:1:2".into());
    let fresh = script.iter().position(|e| e.uri == claim).unwrap();
    script.splice(fresh..fresh + 2, copy);
    script
}

/// The image the copy Jobs run, where the scenario names one.
const COPY_IMAGE: &str = "registry.example/tools/busybox:1.36";

/// The start of [`up_script`]: the test namespace made, and nothing else yet.
fn test_namespace_made() -> Vec<Exchange> {
    let mut script = up_script("host:1:2".into());
    script.truncate(2);
    script
}

/// [`up_copying_db`] failing: what its error says.
async fn copy_refused(script: Vec<Exchange>, copy_image: Option<&str>) -> String {
    up_copying_db(script, copy_image, &crate::progress::Silent)
        .await
        .unwrap_err()
        .to_string()
}

/// Keeps every line a run reports, for the scenarios that check what it said.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<String>>);

impl Recorded {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl crate::progress::Progress for Recorded {
    fn begin(&self, _: &str) {}
    fn end(&self, task: &str, _: crate::progress::Status, detail: &str, _: Duration) {
        self.0.lock().unwrap().push(format!("{task}: {detail}"));
    }
    fn note(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_string());
    }
}

/// Test version r9 of shop brought up with `copyData: [db]` against the API server `script`
/// plays (copy Jobs from `copy_image`, if named); every scripted request checked to have come.
async fn up_copying_db(
    script: Vec<Exchange>,
    copy_image: Option<&str>,
    progress: &dyn crate::progress::Progress,
) -> Result<testenv::TestEnv, testenv::TestEnvError> {
    let (client, server) = serve(script);
    let engine = KubeEngine::new(client, "mock").with_copy_image(copy_image.map(str::to_string));
    let opts = testenv::Options {
        ttl: Duration::from_secs(7200),
        copy_data: vec!["db".into()],
        owner: Some("host:1:2".into()),
    };
    let up = testenv::up(
        &engine,
        &environment(),
        "r9",
        &opts,
        now(),
        progress,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await;
    finished(server).await;
    up
}

const SNAPSHOTS: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/rollout-shop/volumesnapshots";
const TEST_SNAPSHOTS: &str =
    "/apis/snapshot.storage.k8s.io/v1/namespaces/shop-test-r9/volumesnapshots";
const CONTENTS: &str = "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents";

fn snapshot(ns: &str, status: Value) -> Value {
    json!({ "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": { "name": "shop-test-r9-db-data", "namespace": ns }, "status": status })
}

/// Production's claim of db read, with `spec`.
fn production_claim(spec: Value) -> Exchange {
    on(
        Method::GET,
        "/api/v1/namespaces/rollout-shop/persistentvolumeclaims/shop-db-data",
    )
    .ok(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "shop-db-data", "namespace": "rollout-shop" },
        "spec": spec }))
}

/// What `copyData: [db]` reads before copying: production's claims (by label, across the
/// cluster), the one to copy being there.
fn production_claims() -> Vec<Exchange> {
    let of_production = "labelSelector=rollout.environment%3Dshop%2Crollout.role%3Dproduction";
    vec![
        labelled("/apis/apps/v1/deployments", of_production).ok(list("DeploymentList", vec![])),
        labelled("/api/v1/namespaces", of_production).ok(list("NamespaceList", vec![])),
        labelled("/api/v1/persistentvolumeclaims", of_production).ok(list(
            "PersistentVolumeClaimList",
            vec![meta("shop-db-data", Some("rollout-shop"))],
        )),
    ]
}

/// `copyData: [db]`: the test namespace, then db's claim restored from a snapshot of
/// production's, moved across namespaces the CSI way: a snapshot beside production's claim
/// (pending, then ready), its content kept (`Retain`) while that snapshot and content object
/// go, a content for the same storage snapshot bound ahead to a snapshot in the test namespace
/// (`Delete`, so the teardown takes it), that snapshot (ready), and the claim with it as its
/// data source, production's storage class and the larger size. Production is not paused (a
/// pod cannot be frozen), and nothing of production is written.
#[tokio::test(start_paused = true)]
async fn a_data_copy_restores_the_test_claim_from_a_snapshot_moved_into_the_test_namespace() {
    let pvcs = format!("{TEST_NS}/persistentvolumeclaims");
    let labelled = |b: &Value| {
        test_labels_checked(b);
        assert_eq!(b["metadata"]["name"], "shop-test-r9-db-data");
    };
    let mut copy = production_claims();
    copy.extend([
        production_claim(json!({ "accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd", "resources": { "requests": { "storage": "1Gi" } } })),
        on(Method::POST, &format!("{SNAPSHOTS}?"))
            .body(move |b| {
                assert_eq!(b["metadata"]["labels"]["rollout.role"], "test");
                assert_eq!(b["metadata"]["labels"]["rollout.run"], "r9");
                assert_eq!(b["metadata"]["namespace"], "rollout-shop", "beside production's claim");
                assert_eq!(b["spec"]["source"]["persistentVolumeClaimName"], "shop-db-data");
            })
            .ok(snapshot("rollout-shop", json!({}))),
        on(Method::GET, &format!("{SNAPSHOTS}/shop-test-r9-db-data"))
            .ok(snapshot("rollout-shop", json!({ "readyToUse": false }))),
        on(Method::GET, &format!("{SNAPSHOTS}/shop-test-r9-db-data")).ok(snapshot(
            "rollout-shop",
            json!({ "readyToUse": true, "boundVolumeSnapshotContentName": "snapcontent-1234", "restoreSize": "2Gi" }),
        )),
        on(Method::GET, &format!("{CONTENTS}/snapcontent-1234")).ok(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": { "name": "snapcontent-1234" },
            "spec": { "deletionPolicy": "Delete", "driver": "ebs.csi.aws.com", "volumeSnapshotClassName": "csi-snapclass",
                "source": { "volumeHandle": "vol-0abc" },
                "volumeSnapshotRef": { "name": "shop-test-r9-db-data", "namespace": "rollout-shop" } },
            "status": { "readyToUse": true, "snapshotHandle": "snap-0def" } })),
        on(Method::PATCH, &format!("{CONTENTS}/snapcontent-1234?"))
            .body(|b| assert_eq!(b, &json!({ "spec": { "deletionPolicy": "Retain" } })))
            .ok(json!({ "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent", "metadata": { "name": "snapcontent-1234" } })),
        on(Method::DELETE, &format!("{SNAPSHOTS}/shop-test-r9-db-data?"))
            .ok(success()),
        on(Method::DELETE, &format!("{CONTENTS}/snapcontent-1234?"))
            .ok(success()),
        on(Method::POST, &format!("{CONTENTS}?"))
            .body(|b| {
                assert_eq!(b["metadata"]["labels"]["rollout.run"], "r9");
                assert!(b["metadata"].get("namespace").is_none_or(Value::is_null), "cluster-scoped");
                assert_eq!(
                    b["spec"],
                    json!({ "deletionPolicy": "Delete", "driver": "ebs.csi.aws.com", "volumeSnapshotClassName": "csi-snapclass",
                        "source": { "snapshotHandle": "snap-0def" },
                        "volumeSnapshotRef": { "name": "shop-test-r9-db-data", "namespace": "shop-test-r9" } })
                );
            })
            .ok(json!({ "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent", "metadata": { "name": "shop-test-r9-db-data" } })),
        on(Method::POST, &format!("{TEST_SNAPSHOTS}?"))
            .body(move |b| {
                labelled(b);
                assert_eq!(b["spec"], json!({ "source": { "volumeSnapshotContentName": "shop-test-r9-db-data" } }));
            })
            .ok(snapshot("shop-test-r9", json!({}))),
        on(Method::GET, &format!("{TEST_SNAPSHOTS}/shop-test-r9-db-data"))
            .ok(snapshot("shop-test-r9", json!({ "readyToUse": true }))),
        on(Method::PATCH, &apply_uri(&pvcs, "shop-test-r9-db-data"))
            .body(move |b| {
                labelled(b);
                assert_eq!(
                    b["spec"]["dataSource"],
                    json!({ "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "shop-test-r9-db-data" })
                );
                assert_eq!(b["spec"]["storageClassName"], "fast-ssd");
                assert_eq!(b["spec"]["resources"]["requests"]["storage"], "2Gi", "the snapshot's size, the larger");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "shop-test-r9-db-data" } })),
    ]);
    let script = up_script_copying(copy);
    let progress = Recorded::default();
    let t = up_copying_db(script, None, &progress).await.unwrap();
    assert_eq!(t.services.keys().collect::<Vec<_>>(), vec!["db", "web"]);
    assert!(
        progress
            .lines()
            .iter()
            .any(|l| l.contains("db data copy") && l.contains("copied from a snapshot of production's volumes on mock (crash-consistent, production not paused)")),
        "{:?}",
        progress.lines()
    );
}

const SINK_JOB: &str = "/apis/batch/v1/namespaces/shop-test-r9/jobs/shop-test-r9-db-data-sink";
const SOURCE_JOB: &str = "/apis/batch/v1/namespaces/rollout-shop/jobs/shop-test-r9-db-data-source";
const SINK_PODS: &str =
    "/api/v1/namespaces/shop-test-r9/pods?&labelSelector=rollout.copy%3Dshop-test-r9-db-data-sink";
const SOURCE_PODS: &str = "/api/v1/namespaces/rollout-shop/pods?&labelSelector=rollout.copy%3Dshop-test-r9-db-data-source";
const SINK_REFUSED: &str = "/api/v1/namespaces/shop-test-r9/events?&fieldSelector=involvedObject.kind%3DJob%2CinvolvedObject.name%3Dshop-test-r9-db-data-sink%2Creason%3DFailedCreate";

/// Job `name` (at `uri`) deleted with its pods (`Background`), then found gone.
fn deleted(uri: &str, name: &str) -> [Exchange; 2] {
    [
        delete_background(uri).ok(success()),
        on(Method::GET, uri).reply(404, not_found("jobs.batch", name)),
    ]
}

fn job_status(name: &str, ns: &str, status: Value) -> Value {
    json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": name, "namespace": ns }, "status": status })
}

fn copy_pod(name: &str, phase: &str, ip: Option<&str>) -> Value {
    let mut status = json!({ "phase": phase });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
    }
    json!({ "metadata": { "name": name }, "status": status })
}

/// What a copy by Jobs asks first, on a cluster without VolumeSnapshots: production's claim
/// (`ReadWriteOnce`, class and size), the snapshot refused (not served), production's pods (db's
/// runs on node-7 and mounts the claim), its own Jobs of an earlier try (none), and the fresh
/// test claim in production's class and size, with no data source.
fn copy_by_jobs_begins() -> Vec<Exchange> {
    let pvcs = format!("{TEST_NS}/persistentvolumeclaims");
    let mut script = production_claims();
    script.extend([
        production_claim(json!({ "accessModes": ["ReadWriteOnce"], "storageClassName": "local-path", "resources": { "requests": { "storage": "5Gi" } } })),
        on(Method::POST, &format!("{SNAPSHOTS}?")).reply(
            404,
            status(404, "NotFound", "the server could not find the requested resource"),
        ),
        on(Method::GET, "/api/v1/namespaces/rollout-shop/pods?").ok(list("PodList", vec![
            json!({ "metadata": { "name": "shop-web-r1-5d9f8c-aaaaa" },
                "spec": { "nodeName": "node-3", "containers": [] }, "status": { "phase": "Running" } }),
            json!({ "metadata": { "name": "shop-db-r1-7c4b9d-bbbbb" },
                "spec": { "nodeName": "node-7", "containers": [],
                    "volumes": [ { "name": "data", "persistentVolumeClaim": { "claimName": "shop-db-data" } } ] },
                "status": { "phase": "Running" } }),
        ])),
        on(Method::DELETE, &format!("{SINK_JOB}?"))
            .reply(404, not_found("jobs.batch", "shop-test-r9-db-data-sink")),
        on(Method::DELETE, &format!("{SOURCE_JOB}?"))
            .reply(404, not_found("jobs.batch", "shop-test-r9-db-data-source")),
        on(Method::PATCH, &apply_uri(&pvcs, "shop-test-r9-db-data"))
            .body(|b| {
                test_labels_checked(b);
                assert!(b["spec"].get("dataSource").is_none_or(Value::is_null), "filled by the Jobs");
                assert_eq!(b["spec"]["storageClassName"], "local-path");
                assert_eq!(b["spec"]["accessModes"], json!(["ReadWriteOnce"]));
                assert_eq!(b["spec"]["resources"]["requests"]["storage"], "5Gi");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "shop-test-r9-db-data" } })),
        // The sink: in the test namespace, on the test claim, listening.
        on(Method::PATCH, &apply_uri("/apis/batch/v1/namespaces/shop-test-r9/jobs", "shop-test-r9-db-data-sink"))
            .body(|b| {
                test_labels_checked(b);
                assert_eq!(b["spec"]["backoffLimit"], 0);
                assert_eq!(b["spec"]["activeDeadlineSeconds"], 3600);
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(b["spec"]["template"]["metadata"]["labels"]["rollout.copy"], "shop-test-r9-db-data-sink");
                assert_eq!(b["spec"]["template"]["metadata"]["labels"]["rollout.run"], "r9");
                assert_eq!(pod["restartPolicy"], "Never");
                assert_eq!(pod["containers"][0]["image"], COPY_IMAGE);
                assert_eq!(pod["containers"][0]["command"], json!(["sh", "-c", crate::engine::kube::copyjob::SINK_SCRIPT]));
                assert_eq!(pod["volumes"][0]["persistentVolumeClaim"], json!({ "claimName": "shop-test-r9-db-data", "readOnly": false }));
                assert!(pod.get("affinity").is_none_or(Value::is_null));
            })
            .ok(job_status("shop-test-r9-db-data-sink", "shop-test-r9", json!({}))),
    ]);
    script
}

/// `copyData: [db]` on a cluster without VolumeSnapshots: the test claim is filled by two Jobs,
/// a sink in the test namespace (started first; its pod's address awaited) and a source beside
/// production's claim (read-only, on the node of the pod that mounts it, told the sink's
/// address), both waited to success, then both deleted. The run says the copy was not even
/// crash-consistent.
#[tokio::test(start_paused = true)]
async fn a_data_copy_on_a_cluster_without_snapshots_is_streamed_by_two_jobs() {
    let mut copy = copy_by_jobs_begins();
    copy.extend([
        on(Method::GET, SINK_PODS).ok(list("PodList", vec![])),
        on(Method::GET, SINK_REFUSED).ok(list("EventList", vec![])),
        on(Method::GET, SINK_PODS).ok(list("PodList", vec![copy_pod("sink-x1", "Pending", None)])),
        on(Method::GET, SINK_PODS).ok(list("PodList", vec![copy_pod("sink-x1", "Running", Some("10.42.1.17"))])),
        // The source: beside production's claim, read-only, on its pod's node.
        on(Method::PATCH, &apply_uri("/apis/batch/v1/namespaces/rollout-shop/jobs", "shop-test-r9-db-data-source"))
            .body(|b| {
                assert_eq!(b["metadata"]["labels"]["rollout.role"], "test");
                assert_eq!(b["metadata"]["labels"]["rollout.run"], "r9");
                assert_eq!(b["metadata"]["namespace"], "rollout-shop", "beside production's claim");
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(pod["containers"][0]["command"], json!(["sh", "-c", crate::engine::kube::copyjob::SOURCE_SCRIPT]));
                assert_eq!(pod["containers"][0]["env"], json!([ { "name": "SINK", "value": "10.42.1.17" } ]));
                assert_eq!(pod["volumes"][0]["persistentVolumeClaim"], json!({ "claimName": "shop-db-data", "readOnly": true }));
                assert_eq!(pod["containers"][0]["volumeMounts"][0], json!({ "name": "data", "mountPath": "/data", "readOnly": true }));
                assert_eq!(
                    pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
                    json!([ { "matchFields": [ { "key": "metadata.name", "operator": "In", "values": ["node-7"] } ] } ])
                );
            })
            .ok(job_status("shop-test-r9-db-data-source", "rollout-shop", json!({}))),
        on(Method::GET, SOURCE_PODS).ok(list("PodList", vec![copy_pod("source-y2", "Running", Some("10.42.3.9"))])),
        on(Method::GET, SINK_JOB).ok(job_status("shop-test-r9-db-data-sink", "shop-test-r9", json!({ "active": 1 }))),
        on(Method::GET, SOURCE_JOB).ok(job_status("shop-test-r9-db-data-source", "rollout-shop", json!({ "active": 1 }))),
        on(Method::GET, SINK_JOB).ok(job_status("shop-test-r9-db-data-sink", "shop-test-r9", json!({ "succeeded": 1 }))),
        on(Method::GET, SOURCE_JOB).ok(job_status("shop-test-r9-db-data-source", "rollout-shop", json!({ "succeeded": 1 }))),
        // Both deleted, their pods with them, and waited gone.
        delete_background(SOURCE_JOB).ok(success()),
        on(Method::GET, SOURCE_JOB).ok(job_status("shop-test-r9-db-data-source", "rollout-shop", json!({ "succeeded": 1 }))),
        on(Method::GET, SOURCE_JOB).reply(404, not_found("jobs.batch", "shop-test-r9-db-data-source")),
    ]);
    copy.extend(deleted(SINK_JOB, "shop-test-r9-db-data-sink"));
    let script = up_script_copying(copy);
    let progress = Recorded::default();
    let t = up_copying_db(script, Some(COPY_IMAGE), &progress)
        .await
        .unwrap();
    assert_eq!(t.services.keys().collect::<Vec<_>>(), vec!["db", "web"]);
    assert!(
        progress.lines().iter().any(|l| l.contains("db data copy")
            && l.contains(
                "copied file by file by copy Jobs on mock while production kept running"
            )
            && l.contains("a file written during the copy may arrive torn")),
        "{:?}",
        progress.lines()
    );
}

/// A copy whose source fails (its `tar` could not read the claim): the error quotes both pods'
/// last lines, and both Jobs are deleted, the one in production's namespace included, before
/// the test version goes on failing. No pod of the test version has started.
#[tokio::test(start_paused = true)]
async fn a_failed_copy_job_is_reported_with_both_logs_and_both_jobs_are_deleted() {
    let mut script = test_namespace_made();
    script.extend(copy_by_jobs_begins());
    script.extend([
        on(Method::GET, SINK_PODS).ok(list(
            "PodList",
            vec![copy_pod("sink-x1", "Running", Some("10.42.1.17"))],
        )),
        on(
            Method::PATCH,
            &apply_uri(
                "/apis/batch/v1/namespaces/rollout-shop/jobs",
                "shop-test-r9-db-data-source",
            ),
        )
        .ok(job_status(
            "shop-test-r9-db-data-source",
            "rollout-shop",
            json!({}),
        )),
        on(Method::GET, SOURCE_PODS).ok(list(
            "PodList",
            vec![copy_pod("source-y2", "Running", Some("10.42.3.9"))],
        )),
        on(Method::GET, SINK_JOB).ok(job_status(
            "shop-test-r9-db-data-sink",
            "shop-test-r9",
            json!({ "active": 1 }),
        )),
        on(Method::GET, SOURCE_JOB).ok(job_status(
            "shop-test-r9-db-data-source",
            "rollout-shop",
            json!({ "failed": 1 }),
        )),
        on(Method::GET, SINK_PODS).ok(list(
            "PodList",
            vec![copy_pod("sink-x1", "Running", Some("10.42.1.17"))],
        )),
        on(
            Method::GET,
            "/api/v1/namespaces/shop-test-r9/pods/sink-x1/log?&tailLines=20",
        )
        .text(""),
        on(Method::GET, SOURCE_PODS)
            .ok(list("PodList", vec![copy_pod("source-y2", "Failed", None)])),
        on(
            Method::GET,
            "/api/v1/namespaces/rollout-shop/pods/source-y2/log?&tailLines=20",
        )
        .text("tar: ./pg_wal/000000010000000000000003: Permission denied\n"),
    ]);
    script.extend(deleted(SOURCE_JOB, "shop-test-r9-db-data-source"));
    script.extend(deleted(SINK_JOB, "shop-test-r9-db-data-sink"));
    let text = copy_refused(script, Some(COPY_IMAGE)).await;
    assert!(text.contains("db"), "names the service: {text}");
    assert!(
        text.contains("its source Job shop-test-r9-db-data-source in rollout-shop failed; the sink said: (printed nothing); the source said: tar: ./pg_wal/000000010000000000000003: Permission denied"),
        "{text}"
    );
}

/// A `ReadWriteOncePod` claim on a cluster without VolumeSnapshots: no second pod may mount it
/// while production's runs, so nothing is created and the error says why.
#[tokio::test(start_paused = true)]
async fn a_read_write_once_pod_claim_without_snapshots_is_refused_before_any_job() {
    let mut script = test_namespace_made();
    script.extend(production_claims());
    script.extend([
        production_claim(json!({ "accessModes": ["ReadWriteOncePod"] })),
        on(Method::POST, &format!("{SNAPSHOTS}?")).reply(
            404,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
    ]);
    let text = copy_refused(script, None).await;
    assert!(
        text.contains("it is ReadWriteOncePod, so no pod but production's may mount it, and the cluster serves no VolumeSnapshots to copy it by"),
        "{text}"
    );
}

/// A sink whose pod the test namespace refuses (a Pod Security level forbidding root): the
/// Job's FailedCreate event is quoted at once rather than waited out, and the sink is deleted
/// (the source was never created: its delete finds nothing).
#[tokio::test(start_paused = true)]
async fn a_copy_pod_the_namespace_refuses_is_reported_at_once() {
    let forbidden = "pods \"shop-test-r9-db-data-sink-4x8kq\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true";
    let mut script = test_namespace_made();
    script.extend(copy_by_jobs_begins());
    script.extend([
        on(Method::GET, SINK_PODS).ok(list("PodList", vec![])),
        on(Method::GET, SINK_REFUSED).ok(list(
            "EventList",
            vec![json!({
                "metadata": { "name": "shop-test-r9-db-data-sink.1" },
                "involvedObject": { "kind": "Job", "name": "shop-test-r9-db-data-sink" },
                "reason": "FailedCreate", "type": "Warning", "message": forbidden,
            })],
        )),
        on(Method::DELETE, &format!("{SOURCE_JOB}?"))
            .reply(404, not_found("jobs.batch", "shop-test-r9-db-data-source")),
    ]);
    script.extend(deleted(SINK_JOB, "shop-test-r9-db-data-sink"));
    let text = copy_refused(script, Some(COPY_IMAGE)).await;
    assert!(
        text.contains(&format!("copy `Job shop-test-r9-db-data-sink in shop-test-r9` failed: its pod cannot be created: {forbidden}")),
        "{text}"
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
    let (client, server) = serve(vec![
        labelled("/apis/apps/v1/deployments", of_shop)
        .ok(list("DeploymentList", vec![deployment.clone()])),
        labelled("/api/v1/namespaces", of_shop)
            .ok(list("NamespaceList", vec![left("shop-test-r9", None)])),
        labelled("/api/v1/persistentvolumeclaims", of_shop)
        .ok(list("PersistentVolumeClaimList", vec![])),
        // Teardown of run r9 by its labels.
        labelled("/apis/apps/v1/deployments", TEST_SELECTOR)
        .ok(list("DeploymentList", vec![deployment])),
        on(
            Method::DELETE,
            &format!("{TEST_DEPLOYMENTS}/shop-test-r9-web?"),
        )
        .ok(success()),
        labelled("/api/v1/secrets", TEST_SELECTOR)
            .ok(list("SecretList", vec![])),
        labelled("/api/v1/persistentvolumeclaims", TEST_SELECTOR)
        .ok(list("PersistentVolumeClaimList", vec![])),
        // The copy was killed half-way: its snapshot beside production's claim and a content
        // not yet bound are found by the run's labels and deleted (its Jobs are gone already).
        labelled("/apis/batch/v1/jobs", TEST_SELECTOR)
            .ok(list("JobList", vec![])),
        labelled("/apis/snapshot.storage.k8s.io/v1/volumesnapshots", TEST_SELECTOR)
        .ok(list("VolumeSnapshotList", vec![left("shop-test-r9-db-data", Some("rollout-shop"))])),
        delete_background("/apis/snapshot.storage.k8s.io/v1/namespaces/rollout-shop/volumesnapshots/shop-test-r9-db-data")
        .ok(success()),
        labelled("/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents", TEST_SELECTOR)
        .ok(list("VolumeSnapshotContentList", vec![left("shop-test-r9-db-data", None)])),
        on(
            Method::DELETE,
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/shop-test-r9-db-data?",
        )
        .ok(success()),
        labelled("/api/v1/namespaces", TEST_SELECTOR)
            .ok(list("NamespaceList", vec![left("shop-test-r9", None)])),
        delete_background(TEST_NS)
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
