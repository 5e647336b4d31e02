//! Promotions and rollbacks on the kubernetes backend, driven through the same executor as on
//! Docker (`exec::promote::promote`, journal and history in a store on disk), against the mock API
//! server: every request the run makes is scripted here, in order, and answered as the API
//! server would. A request the script does not name fails the scenario, so "production is
//! untouched" is checked by the absence of any write to it.
//!
//! The environment is the parent module's `shop`: web (port 8080, http health, a secret) on db
//! (stateful, a volume, no port). Production runs both at run r1.

use std::sync::Arc;

use super::*;
use crate::exec::journal::Journal;
use crate::exec::promote::{Options, promote};
use crate::manifest::playbook::{Playbook, Step, Target as StepTarget};
use crate::report::run::{Outcome, RunKind};
use crate::store::{RevisionOutcome, Store};

mod canary;

const NAMESPACE: &str = "/api/v1/namespaces/rollout-shop";
const SERVICES: &str = "/api/v1/namespaces/rollout-shop/services";
const SECRETS: &str = "/api/v1/namespaces/rollout-shop/secrets";
const SLICES_OF_WEB: &str = "/apis/discovery.k8s.io/v1/namespaces/rollout-shop/endpointslices?&labelSelector=kubernetes.io%2Fservice-name%3Dweb";

fn with_web_image(image: &str) -> Environment {
    let mut env = environment();
    for s in &mut env.services {
        if s.name == "web" {
            s.image = image.to_string();
        }
    }
    env
}

/// Deployment `<env>-<svc>-<run>` as the API server stores it, `ready` of its one replica ready.
fn stored(env: &Environment, service: &str, run: &str, ready: i32) -> Value {
    let svc = env.services.iter().find(|s| s.name == service).unwrap();
    let (_, _, d) = objects(&production_container(env, svc, run));
    let mut d = serde_json::to_value(&d).unwrap();
    d["metadata"]["uid"] = json!(format!("uid-{service}-{run}"));
    d["metadata"]["generation"] = json!(1);
    d["metadata"]["creationTimestamp"] = json!(format!("2026-01-01T10:00:0{}Z", run.len()));
    d["status"] = json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": ready });
    d
}

/// The pod of a Deployment, in `state` (`running`, or a `waiting` reason).
fn pod(service: &str, run: &str, state: Value, restarts: i32) -> Value {
    json!({
        "metadata": { "name": format!("shop-{service}-{run}-5d9f8c-x1x2x"), "labels": {
            "rollout.environment": "shop", "rollout.role": "production", "rollout.service": service, "rollout.run": run } },
        "status": { "containerStatuses": [ { "name": service, "image": "", "imageID": "", "ready": false,
            "restartCount": restarts, "state": state } ] }
    })
}

/// Web's pod at r2 crash-looping: waiting to restart after three, for `back_off`.
fn crash_looping(back_off: &str) -> Value {
    pod(
        "web",
        "r2",
        json!({ "waiting": { "reason": "CrashLoopBackOff", "message": back_off } }),
        3,
    )
}

fn running() -> Value {
    json!({ "running": { "startedAt": "2026-01-01T10:00:00Z" } })
}

/// What `observe` reads: production's Deployments, their pods, their Secrets.
fn observe_script(deployments: Vec<Value>, pods: Vec<Value>) -> Vec<Exchange> {
    vec![
        on(Method::GET, OBSERVE).ok(list("DeploymentList", deployments)),
        on(Method::GET, PODS_OF_SHOP).ok(list("PodList", pods)),
        on(Method::GET, SECRETS_OF_SHOP).ok(list(
            "SecretList",
            vec![json!({ "metadata": { "name": "shop-web-r1" }, "data": { "KEY": "czNjcmV0" } })],
        )),
    ]
}

/// The two observations every run begins with: the test's, to plan, then the executor's.
fn observed(deployments: Vec<Value>, pods: Vec<Value>) -> Vec<Exchange> {
    let mut script = observe_script(deployments.clone(), pods.clone());
    script.extend(observe_script(deployments, pods));
    script
}

fn find(name: &str) -> String {
    format!(
        "/apis/apps/v1/deployments?&fieldSelector=metadata.name%3D{name}&labelSelector=rollout.environment"
    )
}

fn pods_of(service: &str, run: &str) -> String {
    format!(
        "/api/v1/namespaces/rollout-shop/pods?&labelSelector=rollout.environment%3Dshop%2Crollout.run%3D{run}%2Crollout.service%3D{service}"
    )
}

/// `status` of Deployment `shop-<service>-<run>`: found by name, then its pods.
fn status_script(deployment: Value, pods: Vec<Value>) -> Vec<Exchange> {
    let name = deployment["metadata"]["name"].as_str().unwrap().to_string();
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    let (service, run) = (
        labels["rollout.service"].as_str().unwrap().to_string(),
        labels["rollout.run"].as_str().unwrap().to_string(),
    );
    vec![
        on(Method::GET, &find(&name)).ok(list("DeploymentList", vec![deployment])),
        on(Method::GET, &pods_of(&service, &run)).ok(list("PodList", pods)),
    ]
}

/// `status` of web's Deployment at `run`: its one replica ready, its pod running.
fn web_ready(env: &Environment, run: &str) -> Vec<Exchange> {
    status_script(
        stored(env, "web", run, 1),
        vec![pod("web", run, running(), 0)],
    )
}

/// A candidate of web applied: its Deployment is new, its Secret and Deployment applied, its
/// Service already there (so left as it is, still sending to production).
fn apply_candidate(env: &Environment, run: &str, image: &'static str) -> Vec<Exchange> {
    let name = format!("shop-web-{run}");
    let run_label = run.to_string();
    vec![
        on(Method::GET, NAMESPACE).ok(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "rollout-shop" } })),
        absent(DEPLOYMENTS, "deployments.apps", &name),
        on(Method::PATCH, &apply_uri(SECRETS, &name))
            .body(|b| assert_eq!(b["stringData"]["KEY"], "s3cret"))
            .ok(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name } })),
        on(Method::PATCH, &apply_uri(DEPLOYMENTS, &name))
            .body(move |b| {
                assert_eq!(b["spec"]["template"]["spec"]["containers"][0]["image"], image);
                assert_eq!(b["spec"]["selector"]["matchLabels"]["rollout.run"], run_label);
                assert_eq!(b["metadata"]["labels"]["rollout.role"], "production");
            })
            .ok(stored(env, "web", run, 0)),
        on(Method::GET, &format!("{SERVICES}/web")).ok(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web" } })),
    ]
}

/// Service web applied whole, selecting the pods of `run`.
fn switch_to(env: &Environment, run: &'static str) -> Vec<Exchange> {
    vec![
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-{run}")).ok(stored(env, "web", run, 1)),
        on(Method::PATCH, &apply_uri(SERVICES, "web"))
            .body(move |b| {
                assert_eq!(b["spec"]["selector"]["rollout.run"], run);
                assert_eq!(b["spec"]["ports"][0]["port"], 8080, "the ports stay");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web" } })),
    ]
}

/// A Deployment and its Secret removed: scaled to zero, then deleted.
fn remove(env: &Environment, run: &str) -> Vec<Exchange> {
    let name = format!("shop-web-{run}");
    let found = || list("DeploymentList", vec![stored(env, "web", run, 1)]);
    vec![
        on(Method::GET, &find(&name)).ok(found()),
        on(Method::PATCH, &format!("{DEPLOYMENTS}/{name}?"))
            .body(|b| assert_eq!(b, &json!({ "spec": { "replicas": 0 } })))
            .ok(stored(env, "web", run, 0)),
        // Its pods gone before it is deleted.
        on(Method::GET, &pods_of("web", run)).ok(list("PodList", vec![])),
        on(Method::GET, &find(&name)).ok(found()),
        delete_background(&format!("{DEPLOYMENTS}/{name}")).ok(success()),
        delete_background(&format!("{SECRETS}/{name}")).ok(success()),
    ]
}

const CONFIGMAPS: &str = "/api/v1/namespaces/rollout-shop/configmaps";

/// Run `run`'s record written whole to its ConfigMap, its journal now ending in `last`
/// (`step.phase`).
fn record(run: &'static str, last: &'static str) -> Exchange {
    let name = format!("rollout-run-{run}");
    on(Method::PATCH, &apply_uri(CONFIGMAPS, &name))
        .body(move |b| {
            assert_eq!(b["metadata"]["labels"]["rollout.state"], "run");
            assert_eq!(b["metadata"]["labels"]["rollout.run"], run);
            let revision: Value =
                serde_json::from_str(b["data"]["revision.json"].as_str().unwrap()).unwrap();
            assert_eq!(revision["run"], run);
            let journal: Vec<Value> =
                serde_json::from_str(b["data"]["journal.json"].as_str().unwrap()).unwrap();
            let e = journal.last().unwrap();
            assert_eq!(
                format!(
                    "{}.{}",
                    e["step"].as_str().unwrap(),
                    e["phase"].as_str().unwrap()
                ),
                last
            );
        })
        .ok(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name } }))
}

fn endpoints(pods: &[&str]) -> Value {
    list("EndpointSliceList", vec![slice(pods, "1")])
}

/// Web's EndpointSlice at `version`, listing `pods`.
fn slice(pods: &[&str], version: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "web-abcde", "resourceVersion": version }, "addressType": "IPv4",
        "endpoints": pods.iter().map(|p| json!({ "addresses": ["10.0.0.1"], "targetRef": { "kind": "Pod", "name": p } })).collect::<Vec<_>>()
    })
}

/// The watch of web's EndpointSlices from `version`, asked for `seconds`.
fn watch_slices(version: &str, seconds: u32) -> String {
    format!(
        "/apis/discovery.k8s.io/v1/namespaces/rollout-shop/endpointslices?&watch=true&timeoutSeconds={seconds}&labelSelector=kubernetes.io%2Fservice-name%3Dweb&allowWatchBookmarks=true&resourceVersion={version}"
    )
}

fn opts(kind: RunKind) -> Options {
    Options {
        bind: std::net::Ipv4Addr::LOCALHOST.into(),
        emergency: None,
        reason: None,
        kind,
        grants: Vec::new(),
        resume: None,
    }
}

/// The end of a promotion to `run` once its old pods are out of web's endpoints (gone already
/// at the first look): web's Service applied once more, then r1 (of `old`) removed.
fn drained_and_finished(old: &Environment, new: &Environment, run: &'static str) -> Vec<Exchange> {
    let mut script = vec![
        on(Method::GET, SLICES_OF_WEB).ok(endpoints(&[&format!("shop-web-{run}-5d9f8c-x1x2x")])),
    ];
    script.extend(switch_to(new, run));
    script.extend(remove(old, "r1"));
    script
}

/// Promote, then check production's health (read from the readiness probes).
fn playbook() -> Playbook {
    let mut p = Playbook::switch_only("kube".into());
    p.steps = vec![
        Step::Promote {
            drain: Duration::from_secs(3),
        },
        Step::Smoke {
            target: StepTarget::Production,
            checks: Vec::new(),
        },
    ];
    p
}

/// Production as it runs before each scenario: web and db at r1 with `web_image`, ready.
fn production(web_image: &str) -> (Environment, Vec<Value>, Vec<Value>) {
    let before = with_web_image(web_image);
    let deployments = vec![
        stored(&before, "db", "r1", 1),
        stored(&before, "web", "r1", 1),
    ];
    let pods = vec![
        pod("db", "r1", running(), 0),
        pod("web", "r1", running(), 0),
    ];
    (before, deployments, pods)
}

/// The promotion most scenarios run, web from web:1 to web:2 as run r2: production as it was,
/// the environment desired, and the script up to the two observations.
fn web_2_observed() -> (Environment, Environment, Vec<Exchange>) {
    let (before, deployments, pods) = production("web:1");
    (before, with_web_image("web:2"), observed(deployments, pods))
}

/// [`web_2_observed`], and the script on to the candidate applied.
fn web_2_applied() -> (Environment, Environment, Vec<Exchange>) {
    let (before, env, mut script) = web_2_observed();
    script.extend(apply_candidate(&env, "r2", "web:2"));
    (before, env, script)
}

struct Ran {
    report: crate::report::run::RunReport,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

impl Ran {
    /// The revision the run recorded (the first of shop).
    fn revision(&self) -> crate::store::Revision {
        self.store.revision("shop", 1).unwrap().unwrap()
    }

    /// The run was rolled back: production put back, and so recorded.
    fn assert_rolled_back(&self) {
        assert!(self.report.rollback_ms.is_some());
        let revision = self.revision();
        assert!(
            matches!(revision.outcome, RevisionOutcome::RolledBack { .. }),
            "{:?}",
            revision.outcome
        );
    }
}

/// Observes, plans `desired` and runs `playbook` as run `run` on `engine`, journaled in a fresh
/// store (and to `ledger`, the run's record in the cluster, where given).
async fn promote_with(
    engine: &KubeEngine,
    ledger: Option<Arc<dyn crate::engine::RunLedger>>,
    desired: &Environment,
    playbook: &Playbook,
    run: &str,
    kind: RunKind,
) -> Ran {
    let observed = engine.observe("shop").await.unwrap();
    let plan = crate::plan::compute(desired, &observed, playbook);
    assert!(plan.has_changes(), "{plan:?}");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let journal = Journal::new(store.clone(), "shop", run).with_ledger(ledger);
    let report = promote(
        engine,
        &journal,
        desired,
        playbook,
        &plan,
        run,
        now(),
        &opts(kind),
        &crate::progress::Silent,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await;
    Ran {
        report,
        store,
        _dir: dir,
    }
}

/// [`promote_with`] against `script` (which begins with the two observations), every
/// scripted request checked to have come.
async fn run(
    script: Vec<Exchange>,
    desired: &Environment,
    playbook: &Playbook,
    run: &str,
    kind: RunKind,
) -> Ran {
    let (client, server) = serve(script);
    let ran = promote_with(
        &KubeEngine::new(client, "mock"),
        None,
        desired,
        playbook,
        run,
        kind,
    )
    .await;
    finished(server).await;
    ran
}

/// [`run`] of `playbook` as promotion r2, which promoted.
async fn promoted(script: Vec<Exchange>, desired: &Environment, playbook: &Playbook) -> Ran {
    let ran = run(script, desired, playbook, "r2", RunKind::Promotion).await;
    assert_eq!(ran.report.outcome, Outcome::Promoted, "{:#?}", ran.report);
    ran
}

/// The next command's recovery, as run r3, of run r2 (its journal in `store`) on `engine`.
async fn recover_on(
    engine: &KubeEngine,
    store: &Arc<Store>,
    env: &Environment,
) -> crate::exec::recover::Recovered {
    crate::exec::recover::recover(
        engine,
        store,
        env,
        "r2",
        "r3",
        std::net::Ipv4Addr::LOCALHOST.into(),
        &crate::progress::Silent,
    )
    .await
    .unwrap()
}

/// [`recover_on`] against `script`, every scripted request checked to have come.
async fn recovered(
    script: Vec<Exchange>,
    store: &Arc<Store>,
    env: &Environment,
) -> crate::exec::recover::Recovered {
    let (client, server) = serve(script);
    let done = recover_on(&KubeEngine::new(client, "mock"), store, env).await;
    finished(server).await;
    done
}

/// Blue-green: the candidate Deployment beside production, ready (after a poll that finds it
/// starting), then the Service switched to it whole, the old pods waited out of its endpoints,
/// production's health read, and only then the old Deployment removed.
#[tokio::test(start_paused = true)]
async fn blue_green_promotion_switches_the_service_after_readiness_and_removes_the_old_after_drain()
{
    let (_, env, mut script) = web_2_applied();
    // Starting, then ready.
    script.extend(status_script(
        stored(&env, "web", "r2", 0),
        vec![pod("web", "r2", running(), 0)],
    ));
    script.extend(web_ready(&env, "r2"));
    script.extend(switch_to(&env, "r2"));
    // The old pod is still an endpoint; the watch sees it leave.
    script.push(on(Method::GET, SLICES_OF_WEB).ok(endpoints(&[
        "shop-web-r1-5d9f8c-x1x2x",
        "shop-web-r2-5d9f8c-x1x2x",
    ])));
    script.push(on(Method::GET, &watch_slices("1", 3)).events(vec![event(
        "MODIFIED",
        slice(&["shop-web-r2-5d9f8c-x1x2x"], "2"),
    )]));
    // Smoke on production: web's health (its readiness probe); db has no health check.
    script.extend(web_ready(&env, "r2"));
    // Finish: the table once more (idempotent, for a finish after a crash), then the old goes.
    script.extend(switch_to(&env, "r2"));
    script.extend(remove(&env, "r1"));

    let ran = promoted(script, &env, &playbook()).await;
    let report = &ran.report;
    let promote_step = &report.steps[0];
    assert!(
        promote_step
            .detail
            .contains("shop-web-r1 no longer an endpoint of web"),
        "{}",
        promote_step.detail
    );
    assert_eq!(report.steps[1].detail, "1 of 1 checks passed");
    let revision = ran.revision();
    assert_eq!(revision.outcome, RevisionOutcome::Promoted);
    assert_eq!(revision.images, vec!["db:1", "web:2"]);
}

/// The built-in playbook, whole: the test namespace up (in dependency order), every service's
/// health read there, then the blue-green promotion, production's health, the old version
/// removed, and the test namespace torn down last.
#[tokio::test(start_paused = true)]
async fn the_builtin_playbook_runs_a_test_namespace_then_promotes_and_tears_it_down() {
    use super::testenv::{status_of, teardown_script, up_script};
    let (_, env, mut script) = web_2_observed();
    script.extend(up_script(crate::owner::current()));
    // smoke on test: web's health (db has none).
    script.extend(status_of("web", 1));
    script.extend(apply_candidate(&env, "r9", "web:2"));
    script.extend(web_ready(&env, "r9"));
    script.extend(switch_to(&env, "r9"));
    script.push(on(Method::GET, SLICES_OF_WEB).ok(endpoints(&["shop-web-r9-5d9f8c-x1x2x"])));
    // smoke on production.
    script.extend(web_ready(&env, "r9"));
    script.extend(switch_to(&env, "r9"));
    script.extend(remove(&with_web_image("web:1"), "r1"));
    script.extend(teardown_script());

    let ran = run(
        script,
        &env,
        &Playbook::builtin_default(),
        "r9",
        RunKind::Promotion,
    )
    .await;
    let report = &ran.report;
    assert_eq!(report.outcome, Outcome::Promoted, "{report:#?}");
    let details: Vec<&str> = report.steps.iter().map(|s| s.detail.as_str()).collect();
    assert_eq!(
        details[0],
        "test version shop-test-r9 is up: 2 services healthy"
    );
    assert_eq!(details[1], "1 of 1 checks passed");
    assert_eq!(details[3], "1 of 1 checks passed");
    let teardown = report.teardown.as_ref().unwrap();
    assert_eq!(
        (
            teardown.containers,
            teardown.networks,
            teardown.volumes,
            teardown.error.as_deref()
        ),
        (2, 1, 1, None)
    );
}

/// A stateful service never runs twice against its claim: the old db Deployment is scaled to
/// zero first, the new one mounts the same claim, and no Service is touched (db has no port).
#[tokio::test(start_paused = true)]
async fn a_stateful_service_is_stopped_before_its_new_deployment_mounts_the_same_claim() {
    let (before, deployments, pods) = production("web:1");
    let mut env = before.clone();
    for s in &mut env.services {
        if s.name == "db" {
            s.image = "db:2".into();
        }
    }
    let pvcs = "/api/v1/namespaces/rollout-shop/persistentvolumeclaims";
    let mut script = observed(deployments, pods);
    let db_r1 = || list("DeploymentList", vec![stored(&before, "db", "r1", 1)]);
    script.extend([
        on(Method::GET, NAMESPACE).ok(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "rollout-shop" } })),
        // The old one stops first, and its pod is waited out (terminating, then gone).
        on(Method::GET, &find("shop-db-r1")).ok(db_r1()),
        on(Method::PATCH, &format!("{DEPLOYMENTS}/shop-db-r1?"))
            .body(|b| assert_eq!(b, &json!({ "spec": { "replicas": 0 } })))
            .ok(stored(&before, "db", "r1", 0)),
        on(Method::GET, &pods_of("db", "r1")).ok(list("PodList", vec![{
            let mut p = pod("db", "r1", running(), 0);
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T12:00:00Z");
            p
        }])),
        on(Method::GET, &pods_of("db", "r1")).ok(list("PodList", vec![])),
        // The claim is there already: kept, data and all.
        on(Method::GET, &format!("{pvcs}/shop-db-data")).ok(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "shop-db-data" } })),
        absent(DEPLOYMENTS, "deployments.apps", "shop-db-r2"),
        on(Method::PATCH, &apply_uri(DEPLOYMENTS, "shop-db-r2"))
            .body(|b| {
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(pod["containers"][0]["image"], "db:2");
                assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "shop-db-data");
            })
            .ok(stored(&env, "db", "r2", 0)),
    ]);
    // No probe: running, then running long enough.
    for _ in 0..2 {
        script.extend(status_script(
            stored(&env, "db", "r2", 1),
            vec![pod("db", "r2", running(), 0)],
        ));
    }
    // Production's health: web, unchanged, at r1.
    script.extend(web_ready(&before, "r1"));
    // Finish: the old db Deployment goes (it has no Secret: a 404 there is fine).
    script.extend([
        on(Method::GET, &find("shop-db-r1")).ok(db_r1()),
        on(Method::PATCH, &format!("{DEPLOYMENTS}/shop-db-r1?"))
            .body(|b| assert_eq!(b, &json!({ "spec": { "replicas": 0 } })))
            .ok(stored(&before, "db", "r1", 0)),
        on(Method::GET, &pods_of("db", "r1")).ok(list("PodList", vec![])),
        on(Method::GET, &find("shop-db-r1")).ok(db_r1()),
        on(Method::DELETE, &format!("{DEPLOYMENTS}/shop-db-r1?")).ok(success()),
        on(Method::DELETE, &format!("{SECRETS}/shop-db-r1?"))
            .reply(404, not_found("secrets", "shop-db-r1")),
    ]);

    promoted(script, &env, &playbook()).await;
}

/// A candidate that crash-loops fails at once (no wait for the deadline), with the last lines its
/// crashed instance logged; production was never switched, so the Service is not written at
/// all; the candidate is removed.
#[tokio::test(start_paused = true)]
async fn crash_looping_candidate_is_removed_and_production_untouched() {
    let (_, env, mut script) = web_2_applied();
    script.extend(status_script(
        stored(&env, "web", "r2", 0),
        vec![crash_looping("back-off 20s")],
    ));
    // Its last log lines, of the instance that crashed (the pod has restarted and is waiting).
    script.extend([
        on(Method::GET, &find("shop-web-r2")).ok(list("DeploymentList", vec![stored(&env, "web", "r2", 0)])),
        on(Method::GET, &pods_of("web", "r2")).ok(list("PodList", vec![crash_looping("back-off 20s")])),
        on(
            Method::GET,
            "/api/v1/namespaces/rollout-shop/pods/shop-web-r2-5d9f8c-x1x2x/log?&previous=true&tailLines=10",
        )
        .text("listening on :8080\npanic: DATABASE_URL is not set\n"),
    ]);
    script.extend(remove(&env, "r2"));

    let ran = run(script, &env, &playbook(), "r2", RunKind::Promotion).await;
    assert_eq!(
        ran.report.outcome,
        Outcome::Failed {
            reason: "web is crash-looping (3 restarts)\nlast log lines:\n  | listening on :8080\n  | panic: DATABASE_URL is not set".into()
        }
    );
    assert_eq!(ran.report.rollback_ms, None, "nothing to put back");
    let revision = ran.revision();
    assert!(
        matches!(revision.outcome, RevisionOutcome::Failed { .. }),
        "{:?}",
        revision.outcome
    );
}

/// A candidate whose Deployment passes its progress deadline fails with that reason.
#[tokio::test(start_paused = true)]
async fn candidate_past_its_progress_deadline_fails_the_run() {
    let (_, env, mut script) = web_2_applied();
    let mut stalled = stored(&env, "web", "r2", 0);
    stalled["status"]["conditions"] =
        json!([{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded" }]);
    script.extend(status_script(stalled, vec![pod("web", "r2", running(), 0)]));
    script.extend(remove(&env, "r2"));

    let ran = run(script, &env, &playbook(), "r2", RunKind::Promotion).await;
    assert_eq!(
        ran.report.outcome,
        Outcome::Failed {
            reason: "web is failing: ProgressDeadlineExceeded".into()
        }
    );
}

/// Another field manager owns a field of the candidate's Deployment (409): the run stops with
/// the conflict named, and cleaning up tolerates a candidate that was never created.
#[tokio::test(start_paused = true)]
async fn a_409_on_the_candidate_is_reported_and_nothing_is_forced() {
    let (_, env, mut script) = web_2_observed();
    let mut apply = apply_candidate(&env, "r2", "web:2");
    apply.truncate(3); // the namespace, the read, the Secret
    script.extend(apply);
    script.push(
        on(Method::PATCH, &apply_uri(DEPLOYMENTS, "shop-web-r2")).reply(
            409,
            status(
                409,
                "Conflict",
                "Apply failed with 1 conflict: conflict with \"kubectl-edit\": .spec.template.spec.containers[name=\"web\"].image",
            ),
        ),
    );
    // Undo: the candidate is looked for, twice (stop, then remove), and is not there.
    script.push(on(Method::GET, &find("shop-web-r2")).ok(list("DeploymentList", vec![])));
    script.push(on(Method::GET, &find("shop-web-r2")).ok(list("DeploymentList", vec![])));

    let ran = run(script, &env, &playbook(), "r2", RunKind::Promotion).await;
    let Outcome::Failed { reason } = &ran.report.outcome else {
        panic!("{:?}", ran.report.outcome)
    };
    assert!(
        reason.starts_with("apply `Deployment shop-web-r2` failed: conflict (409)"),
        "{reason}"
    );
    assert!(reason.contains("kubectl-edit") && reason.contains("does not take them over"));
}

/// The API server fails the switch (500): the Service is applied back to production's
/// Deployment, the candidate removed, and the run reports the server's error.
#[tokio::test(start_paused = true)]
async fn a_500_during_the_switch_puts_the_selector_back_and_removes_the_candidate() {
    let (before, env, mut script) = web_2_applied();
    script.extend(web_ready(&env, "r2"));
    script.push(
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r2")).ok(stored(&env, "web", "r2", 1)),
    );
    script.push(on(Method::PATCH, &apply_uri(SERVICES, "web")).reply(
        500,
        status(500, "InternalError", "etcdserver: leader changed"),
    ));
    // Undo: back to r1, whatever the failed call left.
    script.extend(switch_to(&before, "r1"));
    script.extend(remove(&env, "r2"));

    let ran = run(script, &env, &playbook(), "r2", RunKind::Promotion).await;
    assert_eq!(
        ran.report.outcome,
        Outcome::RolledBack {
            reason: "switch `Service web` failed: the API server failed (500): etcdserver: leader changed".into()
        }
    );
    ran.assert_rolled_back();
}

/// `rollout rollback`: the previous revision's settings (web:1) run again as a new Deployment
/// beside web:2, the Service is switched back to it, and web:2's Deployment goes. No smoke
/// step: a rollback is the switch alone.
#[tokio::test(start_paused = true)]
async fn rollback_switches_the_service_back_to_the_previous_settings() {
    let (_, deployments, pods) = production("web:2");
    let previous = with_web_image("web:1");
    let mut script = observed(deployments, pods);
    script.extend(apply_candidate(&previous, "r3", "web:1"));
    script.extend(web_ready(&previous, "r3"));
    script.extend(switch_to(&previous, "r3"));
    script.extend(drained_and_finished(
        &with_web_image("web:2"),
        &previous,
        "r3",
    ));

    let playbook = Playbook::switch_only("rollback to revision 1".into());
    let ran = run(script, &previous, &playbook, "r3", RunKind::Rollback).await;
    assert_eq!(ran.report.outcome, Outcome::Restored, "{:#?}", ran.report);
    assert_eq!(ran.revision().images, vec!["db:1", "web:1"]);
}

/// A run killed mid-way, as its journal left it: web's candidate r2 started, and the switch
/// intended (and done, when `switched`).
/// Run r2 of shop as another machine's process left it: begun (web changed, its candidate
/// started), with its journal open for the steps the scenario adds.
async fn begun_with_candidate() -> (Arc<Store>, tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let env = with_web_image("web:2");
    let new = crate::store::NewRevision {
        environment: "shop".into(),
        run: "r2".into(),
        started: now(),
        user: "alice".into(),
        playbook: "kube".into(),
        reason: None,
        changes: json!([]),
        services: serde_json::to_value(crate::report::run::snapshots(&env)).unwrap(),
        images: vec!["db:1".into(), "web:2".into()],
    };
    let begin = json!({
        "kind": "promotion", "user": "alice", "owner": "elsewhere:4242:1767268800",
        "old": { "db": ["shop-db-r1"], "web": ["shop-web-r1"] }, "changed": ["web"], "removed": []
    });
    store.begin_run(new, begin).unwrap();
    let journal = Journal::new(store.clone(), "shop", "r2");
    let candidate = json!({ "service": "web", "container": "shop-web-r2" });
    journal
        .intent("candidate", candidate.clone())
        .await
        .unwrap();
    journal.done("candidate", candidate).await.unwrap();
    (store, dir, journal)
}

async fn interrupted(switched: bool) -> (Arc<Store>, tempfile::TempDir) {
    let (store, dir, journal) = begun_with_candidate().await;
    journal.intent("switch", json!({})).await.unwrap();
    if switched {
        journal.done("switch", json!({ "ms": 3 })).await.unwrap();
    }
    (store, dir)
}

/// Teardown of the run's test version, which it never had: four lists that find nothing.
fn no_test_version() -> Vec<Exchange> {
    let of_r2 = "labelSelector=rollout.environment%3Dshop%2Crollout.role%3Dtest%2Crollout.run%3Dr2";
    vec![
        labelled("/apis/apps/v1/deployments", of_r2).ok(list("DeploymentList", vec![])),
        labelled("/api/v1/secrets", of_r2).ok(list("SecretList", vec![])),
        labelled("/api/v1/persistentvolumeclaims", of_r2)
            .ok(list("PersistentVolumeClaimList", vec![])),
    ]
    .into_iter()
    .chain(no_copy_leftovers(of_r2))
    .chain([labelled("/api/v1/namespaces", of_r2).ok(list("NamespaceList", vec![]))])
    .collect()
}

/// The next command undoing run r2 (of `env`), each journal entry in its record in the cluster
/// before its step: web's Service back on r1, then `split_ended` (what a canary left), r2
/// removed, and its test version (none) looked for.
fn undone_by_the_next_command(
    env: &Environment,
    split_ended: impl IntoIterator<Item = Exchange>,
) -> Vec<Exchange> {
    let mut script = vec![record("r2", "recover.intent"), record("r2", "undo.intent")];
    script.extend(switch_to(&with_web_image("web:1"), "r1"));
    script.extend(split_ended);
    script.extend(remove(env, "r2"));
    script.push(record("r2", "undo.done"));
    script.extend(no_test_version());
    script
}

/// The recovery undid the run: production put back, the run rolled back.
fn assert_undone(done: &crate::exec::recover::Recovered) {
    assert_eq!(done.action, "undone");
    assert!(
        matches!(done.outcome, Outcome::RolledBack { .. }),
        "{:?}",
        done.outcome
    );
}

/// Killed after intending the switch, before it was done: the next command cannot know whether
/// the Service moved, so it puts it back on r1 (idempotent either way) and removes r2.
#[tokio::test(start_paused = true)]
async fn a_run_killed_before_the_switch_finished_is_undone_by_the_next_command() {
    let (store, _dir) = interrupted(false).await;
    let env = with_web_image("web:2");
    // Each journal entry of the recovery is in the run's record in the cluster before its
    // step, so yet another machine could take over from there.
    let mut script = undone_by_the_next_command(&env, []);
    script.push(record("r2", "end.done"));
    let done = recovered(script, &store, &env).await;
    assert_undone(&done);
    assert!(matches!(
        store.revision("shop", 1).unwrap().unwrap().outcome,
        RevisionOutcome::RolledBack { .. }
    ));
}

/// Killed after the switch: the new version serves, so the next command finishes the run: the
/// old pods waited out of the Service's endpoints, the Service applied once more, r1 removed.
#[tokio::test(start_paused = true)]
async fn a_run_killed_after_the_switch_is_finished_by_the_next_command() {
    let (store, _dir) = interrupted(true).await;
    let env = with_web_image("web:2");
    let mut script = vec![
        record("r2", "recover.intent"),
        on(Method::GET, SLICES_OF_WEB).ok(endpoints(&["shop-web-r2-5d9f8c-x1x2x"])),
        record("r2", "finish.intent"),
    ];
    script.extend(switch_to(&env, "r2"));
    script.extend(remove(&with_web_image("web:1"), "r1"));
    script.push(record("r2", "finish.done"));
    script.extend(no_test_version());
    script.push(record("r2", "end.done"));
    let done = recovered(script, &store, &env).await;
    assert_eq!(done.action, "finished");
    assert_eq!(done.outcome, Outcome::Promoted);
    assert_eq!(
        store.revision("shop", 1).unwrap().unwrap().outcome,
        RevisionOutcome::Promoted
    );
}

/// The drain watches the Service's EndpointSlices. A watch the server closes is opened again
/// from the last version seen (after a pause, as it closed with no event); a `410 Gone` as an
/// event, then as the answer to the watch itself, lists the slices again and watches from the
/// new list; a slice deleted counts its endpoints out. The old pod leaving ends the wait.
#[tokio::test(start_paused = true)]
async fn the_drain_watches_endpoints_and_lists_again_after_410_gone() {
    let (old, new) = ("shop-web-r1-5d9f8c-x1x2x", "shop-web-r2-5d9f8c-x1x2x");
    let both = || list("EndpointSliceList", vec![slice(&[old, new], "5")]);
    let gone = status(410, "Expired", "too old resource version: 5 (30)");
    let mut relisted = list(
        "EndpointSliceList",
        vec![
            slice(&[old, new], "30"),
            json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": { "name": "web-fghij", "resourceVersion": "31" }, "addressType": "IPv4",
                "endpoints": [ { "addresses": ["10.0.0.2"], "targetRef": { "kind": "Pod", "name": old } } ] }),
        ],
    );
    relisted["metadata"]["resourceVersion"] = json!("31");
    let (client, server) = serve(vec![
        on(Method::GET, SLICES_OF_WEB).ok(both()),
        // A bookmark moves the version on; then the server closes the watch.
        on(Method::GET, &watch_slices("1", 60)).events(vec![event(
            "BOOKMARK",
            json!({ "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": { "resourceVersion": "6" } }),
        )]),
        on(Method::GET, &watch_slices("6", 60)).events(vec![event("ERROR", gone.clone())]),
        on(Method::GET, SLICES_OF_WEB).ok(both()),
        on(Method::GET, &watch_slices("1", 60)).reply(410, gone),
        on(Method::GET, SLICES_OF_WEB).ok(relisted),
        on(Method::GET, &watch_slices("31", 60)).events(vec![
            event("DELETED", json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": { "name": "web-fghij", "resourceVersion": "32" }, "addressType": "IPv4" })),
            event("MODIFIED", slice(&[new], "33")),
        ]),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let result = engine
        .wait_unrouted("shop", "web", "shop-web-r1", Duration::from_secs(60))
        .await
        .unwrap();
    finished(server).await;
    assert_eq!(result, Unrouted::Done);
}

/// The old pod never leaves: the watch ends at the limit with the endpoints still counted.
#[tokio::test(start_paused = true)]
async fn a_drain_past_its_limit_reports_the_endpoints_left() {
    let (old, new) = ("shop-web-r1-5d9f8c-x1x2x", "shop-web-r2-5d9f8c-x1x2x");
    let (client, server) = serve(vec![
        on(Method::GET, SLICES_OF_WEB).ok(endpoints(&[old, new])),
        // Events that change nothing for the old pod, then the server closes the watch...
        on(Method::GET, &watch_slices("1", 2)).events(vec![event(
            "MODIFIED",
            slice(&[old, new, "shop-web-r2-5d9f8c-y3y4y"], "2"),
        )]),
        // ...and the next one stays silent until the limit.
        on(Method::GET, &watch_slices("2", 2)).events(vec![]),
        on(Method::GET, &watch_slices("2", 1)).events(vec![]),
    ]);
    let engine = KubeEngine::new(client, "mock");
    let result = engine
        .wait_unrouted("shop", "web", "shop-web-r1", Duration::from_secs(2))
        .await
        .unwrap();
    finished(server).await;
    assert_eq!(result, Unrouted::StillRouted { endpoints: 1 });
}

/// A service dropped from the manifest: its Deployment and Secret are removed, and so is its
/// Service (with any canary Service a crash may have left: none here), so nothing is left
/// routing to pods that are gone.
#[tokio::test(start_paused = true)]
async fn a_service_dropped_from_the_manifest_loses_its_deployment_and_its_service() {
    let (before, deployments, pods) = production("web:1");
    let mut env = before.clone();
    env.services.retain(|s| s.name != "web");
    let mut script = observed(deployments, pods);
    script.push(on(Method::GET, NAMESPACE).ok(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "rollout-shop" } }),
    ));
    // Production's health has nothing to read (db has no health check); then web goes.
    script.extend(remove(&before, "r1"));
    script.extend([
        delete_background(&format!("{SERVICES}/web")).ok(success()),
        on(Method::DELETE, &format!("{SERVICES}/web-canary?"))
            .reply(404, not_found("services", "web-canary")),
    ]);
    promoted(script, &env, &playbook()).await;
}

/// Machine A was killed mid-run; machine B has never run shop. B reads the run records from the
/// cluster (one ConfigMap per run), so its history shows A's revision and its journal A's run,
/// open; B's recovery then undoes it as A's own would, writing each of its entries to the
/// record first, and the record ends rolled back, for every machine to see.
#[tokio::test(start_paused = true)]
async fn another_machine_reads_the_run_records_from_the_cluster_and_settles_the_interrupted_run() {
    let (a, _a_dir) = interrupted(false).await;
    let doc = a.export_run("r2").unwrap().unwrap();
    let stored_record = serde_json::to_value(super::super::ledger::to_config_map(&doc)).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Arc::new(Store::open(b_dir.path()).unwrap());
    let env = with_web_image("web:2");

    let mut script = vec![
        on(
            Method::GET,
            &format!(
                "{CONFIGMAPS}?&labelSelector=rollout.environment%3Dshop%2Crollout.state%3Drun"
            ),
        )
        .ok(list("ConfigMapList", vec![stored_record])),
    ];
    script.extend(undone_by_the_next_command(&env, []));
    script.push(
        on(Method::PATCH, &apply_uri(CONFIGMAPS, "rollout-run-r2"))
            .body(|b| {
                let revision: Value =
                    serde_json::from_str(b["data"]["revision.json"].as_str().unwrap()).unwrap();
                assert_eq!(revision["outcome"]["status"], "rolledBack", "{revision}");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "rollout-run-r2" } })),
    );
    let (client, server) = serve(script);
    let engine = KubeEngine::new(client, "mock");
    let ledger = engine.ledger().expect("the cluster keeps the records");
    let conflicts = crate::exec::journal::pull(ledger.as_ref(), &b, "shop")
        .await
        .unwrap();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(b.history("shop").unwrap(), a.history("shop").unwrap());
    assert_eq!(b.unfinished_runs("shop").unwrap().len(), 1, "A's run, open");
    let done = recover_on(&engine, &b, &env).await;
    finished(server).await;
    assert_eq!(done.action, "undone");
    assert!(done.left_by.contains("elsewhere"), "{}", done.left_by);
    assert!(matches!(
        b.revision("shop", 1).unwrap().unwrap().outcome,
        RevisionOutcome::RolledBack { .. }
    ));
    assert!(b.unfinished_runs("shop").unwrap().is_empty());
}

/// A promotion on the kubernetes backend keeps its record in the cluster as it goes: the record
/// is written after every journal entry, so each intent is there before its step (the switch's
/// before the Service is written), and the record ends promoted.
#[tokio::test(start_paused = true)]
async fn a_promotion_writes_its_record_to_the_cluster_before_each_step() {
    let (_, env, mut script) = web_2_observed();
    script.push(record("r2", "begin.done"));
    let mut candidate = apply_candidate(&env, "r2", "web:2");
    // The namespace is ensured before the candidate's intent is written.
    candidate.insert(1, record("r2", "candidate.intent"));
    script.extend(candidate);
    script.extend(web_ready(&env, "r2"));
    script.push(record("r2", "candidate.done"));
    script.push(record("r2", "switch.intent"));
    script.extend(switch_to(&env, "r2"));
    script.push(record("r2", "switch.done"));
    script.push(on(Method::GET, SLICES_OF_WEB).ok(endpoints(&["shop-web-r2-5d9f8c-x1x2x"])));
    script.push(record("r2", "drain.done"));
    script.extend(web_ready(&env, "r2"));
    script.push(record("r2", "finish.intent"));
    script.extend(switch_to(&env, "r2"));
    script.extend(remove(&with_web_image("web:1"), "r1"));
    script.push(record("r2", "finish.done"));
    script.push(
        on(Method::PATCH, &apply_uri(CONFIGMAPS, "rollout-run-r2"))
            .body(|b| {
                let revision: Value =
                    serde_json::from_str(b["data"]["revision.json"].as_str().unwrap()).unwrap();
                assert_eq!(revision["outcome"]["status"], "promoted", "{revision}");
                assert_eq!(revision["number"], 1);
            })
            .ok(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "rollout-run-r2" } })),
    );

    let (client, server) = serve(script);
    let engine = KubeEngine::new(client, "mock");
    let ran = promote_with(
        &engine,
        engine.ledger(),
        &env,
        &playbook(),
        "r2",
        RunKind::Promotion,
    )
    .await;
    finished(server).await;
    assert_eq!(ran.report.outcome, Outcome::Promoted, "{:#?}", ran.report);
}
