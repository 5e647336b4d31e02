//! Canary steps on the kubernetes backend, through the executor, against the mock API server:
//! weights on a Gateway API HTTPRoute where one sends to the service (a concurrent change of the
//! route met by a 409 and a fresh read), a replica ratio where the cluster has no Gateway API,
//! a candidate failing during the hold, and a run killed during its canary settled by the next
//! command. Every request is scripted, so "the route is put back" and "production untouched"
//! are checked by the exact writes and by the absence of any other.

use super::*;

const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/rollout-shop/httproutes";

/// The user's HTTPRoute `shop`: `/` to Service web, `/admin` to Service admin (not rollout's).
fn route(version: &str, web_refs: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "shop", "namespace": "rollout-shop", "resourceVersion": version },
        "spec": {
            "parentRefs": [ { "name": "edge" } ],
            "rules": [
                { "matches": [ { "path": { "type": "PathPrefix", "value": "/" } } ], "backendRefs": web_refs },
                { "matches": [ { "path": { "type": "PathPrefix", "value": "/admin" } } ], "backendRefs": [ { "name": "admin", "port": 9000 } ] }
            ]
        }
    })
}

fn routes(items: Vec<Value>) -> Value {
    json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRouteList", "metadata": { "resourceVersion": "7" }, "items": items })
}

fn unsplit_refs() -> Value {
    json!([{ "name": "web", "port": 8080 }])
}

fn split_refs(percent: u32) -> Value {
    json!([{ "name": "web", "port": 8080, "weight": 100 - percent }, { "name": "web-canary", "port": 8080, "weight": percent }])
}

/// The merge patch of route `shop`: guarded by `version`, web's rule sent to `refs`, the admin
/// rule as it was.
fn patch_route(version: &'static str, refs: Value) -> Exchange {
    on(Method::PATCH, &format!("{ROUTES}/shop?")).body(move |b| {
        assert_eq!(
            b["metadata"]["resourceVersion"], version,
            "guarded by the version read"
        );
        assert_eq!(b["spec"]["rules"][0]["backendRefs"], refs);
        assert_eq!(
            b["spec"]["rules"][1]["backendRefs"],
            json!([{ "name": "admin", "port": 9000 }]),
            "another service's rule is left as it was"
        );
        assert_eq!(b["spec"]["rules"].as_array().unwrap().len(), 2);
        assert!(
            b["spec"].get("parentRefs").is_none(),
            "only the rules are written"
        );
    })
}

/// The canary Service applied: web's ports, only the candidate's pods.
fn apply_canary_service(run: &'static str) -> Exchange {
    on(Method::PATCH, &apply_uri(SERVICES, "web-canary"))
        .body(move |b| {
            assert_eq!(b["metadata"]["name"], "web-canary");
            assert_eq!(b["spec"]["selector"]["rollout.run"], run);
            assert_eq!(b["spec"]["selector"]["rollout.service"], "web");
            assert_eq!(b["spec"]["ports"][0]["port"], 8080);
        })
        .ok(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web-canary" } }))
}

fn delete_canary_service(found: bool) -> Exchange {
    let e = on(Method::DELETE, &format!("{SERVICES}/web-canary?"));
    if found {
        e.ok(success())
    } else {
        e.reply(404, not_found("services", "web-canary"))
    }
}

/// A cluster that serves no Gateway API: the HTTPRoute list is a 404 for the resource type.
fn no_gateway_api() -> Exchange {
    on(Method::GET, &format!("{ROUTES}?")).reply(
        404,
        status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    )
}

/// The replica-ratio split of web, r2 beside r1 (one pod each, so the candidate is not scaled):
/// no Gateway API, both Deployments read, web's Service applied selecting both versions' pods.
fn replica_split(before: &Environment, env: &Environment) -> Vec<Exchange> {
    vec![
        no_gateway_api(),
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r1")).ok(stored(before, "web", "r1", 1)),
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r2")).ok(stored(env, "web", "r2", 1)),
        on(Method::PATCH, &apply_uri(SERVICES, "web"))
            .body(|b| {
                assert_eq!(
                    b["spec"]["selector"],
                    json!({ "rollout.environment": "shop", "rollout.role": "production", "rollout.service": "web" }),
                    "both versions' pods, the run left out"
                );
                assert_eq!(b["spec"]["ports"][0]["port"], 8080, "the ports stay");
            })
            .ok(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web" } })),
    ]
}

/// The undo of that split: web on r1 alone, the split ended (no route, no canary Service to
/// find), the candidate removed.
fn replica_undo(before: &Environment, env: &Environment) -> Vec<Exchange> {
    let mut script = switch_to(before, "r1");
    script.extend([no_gateway_api(), delete_canary_service(false)]);
    script.extend(remove(env, "r2"));
    script
}

fn canary_playbook(weight: u8, hold_secs: u64) -> Playbook {
    let mut p = Playbook::switch_only("kube".into());
    p.steps = vec![
        Step::Canary {
            weight: crate::manifest::playbook::Weight::new(weight.into()).unwrap(),
            hold: Duration::from_secs(hold_secs),
            analysis: None,
        },
        Step::Promote {
            drain: Duration::from_secs(3),
        },
    ];
    p
}

fn namespace_there() -> Exchange {
    on(Method::GET, NAMESPACE).ok(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "rollout-shop" } }),
    )
}

/// 10% through the HTTPRoute for 2 s, then the promotion: the canary Service beside web, the
/// route's rule weighted 90/10 (its first patch meets a 409, because the route moved since it
/// was read, so it is read again and patched at its new version), the candidate watched
/// through the hold, then web switched whole, the route's rule put back as it was, the canary
/// Service deleted, the old pods drained and the old Deployment removed.
#[tokio::test(start_paused = true)]
async fn a_canary_weighs_the_httproute_then_the_promotion_puts_the_route_back() {
    let (_, env, mut script) = web_2_applied();
    script.extend(web_ready(&env, "r2"));
    // The split.
    script.extend([
        on(Method::GET, &format!("{ROUTES}?")).ok(routes(vec![route("41", unsplit_refs())])),
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r2")).ok(stored(&env, "web", "r2", 1)),
        apply_canary_service("r2"),
        patch_route("41", split_refs(10)).reply(
            409,
            status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"),
        ),
        on(Method::GET, &format!("{ROUTES}?")).ok(routes(vec![route("42", unsplit_refs())])),
        patch_route("42", split_refs(10)).ok(route("43", split_refs(10))),
    ]);
    // The hold: the candidate's status at 0, 1 and 2 s.
    for _ in 0..3 {
        script.extend(web_ready(&env, "r2"));
    }
    // The promote step: web whole to r2, then the split ended.
    script.push(namespace_there());
    script.extend(switch_to(&env, "r2"));
    script.extend([
        on(Method::GET, &format!("{ROUTES}?")).ok(routes(vec![route("44", split_refs(10))])),
        patch_route("44", unsplit_refs()).ok(route("45", unsplit_refs())),
        delete_canary_service(true),
        // The candidate stays: still its one replica, so it is not scaled.
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r2")).ok(stored(&env, "web", "r2", 1)),
    ]);
    script.extend(drained_and_finished(&with_web_image("web:1"), &env, "r2"));

    let ran = promoted(script, &env, &canary_playbook(10, 2)).await;
    let report = &ran.report;
    assert_eq!(
        report.steps[0].detail,
        "10% to the new version for 2s: web: 10% to the candidate by HTTPRoute shop: 90 to Service web, 10 to Service web-canary; requests not measured on this platform"
    );
    assert!(
        report.steps[1]
            .detail
            .contains("shop-web-r1 no longer an endpoint of web")
    );
    let revision = ran.revision();
    assert_eq!(revision.outcome, RevisionOutcome::Promoted);
}

/// Without Gateway API (the resource type is not served: a 404 for the list), web's Service
/// selects both versions' pods and the candidate keeps its one pod beside the old one's: 50%
/// whatever was asked, and the step says so. The candidate starts crash-looping during the
/// hold: the canary ends at once, the Service goes back to the old pods alone, the canary
/// objects are looked for (none), the candidate is removed, and the revision is rolled back.
#[tokio::test(start_paused = true)]
async fn without_gateway_api_a_replica_ratio_splits_and_a_candidate_failing_in_the_hold_rolls_back()
{
    let (before, env, mut script) = web_2_applied();
    script.extend(web_ready(&env, "r2"));
    script.extend(replica_split(&before, &env));
    // The hold: ready at 0 s, crash-looping at 1 s.
    script.extend(web_ready(&env, "r2"));
    script.extend(status_script(
        stored(&env, "web", "r2", 0),
        vec![crash_looping("back-off 10s")],
    ));
    // Undo.
    script.extend(replica_undo(&before, &env));

    let ran = run(
        script,
        &env,
        &canary_playbook(30, 5),
        "r2",
        RunKind::Promotion,
    )
    .await;
    let report = &ran.report;
    assert_eq!(
        report.outcome,
        Outcome::RolledBack {
            reason: "the web candidate is crash-looping (3 restarts) during the canary".into()
        },
        "{report:#?}"
    );
    ran.assert_rolled_back();
}

/// A replica ratio when the route exists but sends elsewhere, at a weight the pods can give:
/// the stable version runs 4 replicas, so 25% is one candidate pod beside them (1 of 5 = 20%,
/// the nearest), and a promotion scales the kept candidate back to its one replica.
#[tokio::test(start_paused = true)]
async fn a_replica_ratio_beside_a_scaled_stable_version_reports_the_share_it_gives() {
    let (before, mut deployments, pods) = production("web:1");
    deployments[1]["spec"]["replicas"] = json!(4);
    let mut stable = stored(&before, "web", "r1", 1);
    stable["spec"]["replicas"] = json!(4);
    let env = with_web_image("web:2");
    let admin_only = || {
        on(Method::GET, &format!("{ROUTES}?")).ok(routes(vec![json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "admin", "resourceVersion": "3" },
            "spec": { "rules": [ { "backendRefs": [ { "name": "admin", "port": 9000 } ] } ] }
        })]))
    };
    let mut script = observed(deployments, pods);
    script.extend(apply_candidate(&env, "r2", "web:2"));
    script.extend(web_ready(&env, "r2"));
    script.extend([
        admin_only(),
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r1")).ok(stable),
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r2")).ok(stored(&env, "web", "r2", 1)),
        on(Method::PATCH, &apply_uri(SERVICES, "web"))
            .body(|b| assert!(b["spec"]["selector"].get("rollout.run").is_none()))
            .ok(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web" } })),
    ]);
    script.extend(web_ready(&env, "r2"));
    script.push(namespace_there());
    script.extend(switch_to(&env, "r2"));
    let mut scaled = stored(&env, "web", "r2", 1);
    scaled["spec"]["replicas"] = json!(2);
    script.extend([
        admin_only(),
        delete_canary_service(false),
        // Scaled meanwhile (by hand, or an autoscaler): back to the manifest's one replica.
        on(Method::GET, &format!("{DEPLOYMENTS}/shop-web-r2")).ok(scaled),
        on(Method::PATCH, &format!("{DEPLOYMENTS}/shop-web-r2?"))
            .body(|b| assert_eq!(b, &json!({ "spec": { "replicas": 1 } })))
            .ok(stored(&env, "web", "r2", 1)),
    ]);
    script.extend(drained_and_finished(&before, &env, "r2"));

    let ran = promoted(script, &env, &canary_playbook(25, 0)).await;
    let report = &ran.report;
    assert_eq!(
        report.steps[0].detail,
        "25% to the new version for 0s: web: 20% (asked 25%) to the candidate by replica ratio (no HTTPRoute sends to Service web): 1 candidate pod(s) beside 4; requests not measured on this platform"
    );
}

/// Killed during its canary (the route weighted, the canary Service there): the next command
/// undoes the run, which ends the split too: web's Service back on r1, the route's rule put
/// back, the canary Service deleted, the candidate removed.
#[tokio::test(start_paused = true)]
async fn a_run_killed_during_its_canary_is_undone_and_the_route_put_back() {
    let (store, _dir, journal) = begun_with_candidate().await;
    let env = with_web_image("web:2");
    journal
        .intent("canary", json!({ "weight": 10 }))
        .await
        .unwrap();
    journal
        .done("canary", json!({ "weight": 10 }))
        .await
        .unwrap();

    let mut script = undone_by_the_next_command(
        &env,
        [
            on(Method::GET, &format!("{ROUTES}?")).ok(routes(vec![route("50", split_refs(10))])),
            patch_route("50", unsplit_refs()).ok(route("51", unsplit_refs())),
            delete_canary_service(true),
        ],
    );
    script.push(record("r2", "end.done"));
    let done = recovered(script, &store, &env).await;
    assert_undone(&done);
}

/// A canary with an analysis, its figures from a real Prometheus (Debian's, on loopback)
/// scraping an exporter of the candidate's pod: 10% of its requests fail, above the analysis's
/// 1%, so after the hold the run is rolled back (the Service on the old pods alone, the
/// candidate removed) and the report keeps the figures that failed it. Real time: the queries
/// go over real sockets.
#[tokio::test]
async fn a_canary_analysis_from_prometheus_rolls_back_a_failing_candidate() {
    use crate::prometheus::testing;
    let exporter = testing::Exporter::start("rollout-shop", "shop-web-r2", 90, 10);
    let prometheus = testing::Server::start(exporter.port);
    let settings = testing::settings(&prometheus.url);
    prometheus
        .wait_for(
            &settings
                .requests
                .replace("{{namespace}}", "rollout-shop")
                .replace("{{deployment}}", "shop-web-r2")
                .replace("{{window}}", "4s"),
        )
        .await;

    let (before, env, mut script) = web_2_applied();
    script.extend(web_ready(&env, "r2"));
    script.extend(replica_split(&before, &env));
    // The hold of 4 s: the candidate's status at 0, 1, 2, 3 and 4 s.
    for _ in 0..5 {
        script.extend(web_ready(&env, "r2"));
    }
    script.extend(replica_undo(&before, &env));

    let (client, server) = serve(script);
    let engine = KubeEngine::new(client, "mock").with_prometheus(Some(settings));
    let mut playbook = canary_playbook(10, 4);
    if let Step::Canary { analysis, .. } = &mut playbook.steps[0] {
        *analysis = Some(crate::manifest::playbook::Analysis {
            max_error_rate: Some(0.01),
            max_p99: Some(Duration::from_millis(500)),
            min_requests: 20,
        });
    }
    let ran = promote_with(&engine, None, &env, &playbook, "r2", RunKind::Promotion).await;
    finished(server).await;
    let report = &ran.report;
    let Outcome::RolledBack { reason } = &report.outcome else {
        panic!("rolled back: {report:#?}");
    };
    assert!(
        reason.starts_with("web: 50% (asked 10%) to the candidate by replica ratio")
            && reason.ends_with(": error rate above 1.00%"),
        "{reason}"
    );
    let figures = &report.steps[0].canary[0];
    assert_eq!(figures.service, "web");
    let rate = figures.error_rate.expect("an error rate");
    assert!((0.07..=0.13).contains(&rate), "{figures:?}");
    assert!(figures.requests >= 20, "{figures:?}");
    assert!(figures.p99_ms.is_some_and(|p| p < 500), "{figures:?}");
    assert!(matches!(
        figures.analysis,
        crate::report::run::Analysis::Fail { .. }
    ));
}
