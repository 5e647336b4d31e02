//! Canary splits on the kubernetes backend ([`ServiceTraffic::split_service`](crate::engine::ServiceTraffic)).
//!
//! A Service sends to whatever pods its selector picks, so a weight needs something more. Two
//! ways, chosen per service at each canary step:
//!
//! - **Gateway API weights**, where the cluster serves `gateway.networking.k8s.io/v1` HTTPRoutes
//!   and one in the environment's namespace sends to the service (a `backendRef` naming its
//!   Service). rollout applies a second Service, `<service>-canary`, selecting only the
//!   candidate's pods, and sets the route's rule to send `100 - w` to the Service and `w` to the
//!   canary Service. The route is the user's: it is changed by a merge patch guarded by its
//!   `resourceVersion` (a concurrent change is a 409, read again and retried, never overwritten),
//!   only the `backendRefs` of the rules that send to this service alone change, and ending the
//!   split puts them back as they were (the Service alone, its weight field removed).
//! - **Replica ratio** otherwise: the Service selects the pods of both Deployments and the
//!   candidate is scaled to the number of pods closest to the weight, never above the stable
//!   version's, so the candidate's share is `k / (k + stable)`: with one pod each, 50% whatever
//!   the weight asked. The share really given is what the step reports.
//!
//! Ending a split ([`ServiceTraffic::end_split`](crate::engine::ServiceTraffic)) comes after the Service was
//! pointed at one version again: the route's rules lose the canary backend, the canary Service
//! is deleted, and a candidate that stays is scaled back to its one replica.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KService;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::{Value, json};

use super::{FIELD_MANAGER, KubeEngine, api_error, delete_ok, namespace, service_for};
use crate::engine::{EngineError, Split, labels};

/// How many times a route patch is tried when its `resourceVersion` moved meanwhile (a Gateway
/// controller writing the route's status moves it too).
const ROUTE_ATTEMPTS: usize = 3;

/// The Service rollout adds beside `service` for a canary on a Gateway API route.
pub fn canary_service(service: &str) -> String {
    format!("{service}-canary")
}

/// A change of one route's rules: `Ok(None)` leaves the route alone, an error refuses it.
type Rewrite<'a> = dyn Fn(&str, &[Value]) -> Result<Option<Vec<Value>>, String> + Sync + 'a;

fn http_route() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Whether a `backendRef` of a route in `ns` names Service `name` (kind and group left out mean
/// a core Service; a namespace left out means the route's own).
pub fn names_service(backend_ref: &Value, name: &str, ns: &str) -> bool {
    let kind = backend_ref["kind"].as_str().unwrap_or("Service");
    let group = backend_ref["group"].as_str().unwrap_or("");
    let in_ns = backend_ref["namespace"].as_str().unwrap_or(ns);
    kind == "Service" && group.is_empty() && in_ns == ns && backend_ref["name"] == name
}

/// The rules of route `route` (its `spec.rules`) with the canary split at `percent`: each rule
/// that sends to `service` sends `100 - percent` to it and `percent` to its canary Service.
/// `Ok(None)` when no rule sends to `service`; an error names a rule that also sends elsewhere
/// (rollout would have to re-weigh backends that are not its own). A pure function.
pub fn split_rules(
    route: &str,
    rules: &[Value],
    service: &str,
    ns: &str,
    percent: u8,
) -> Result<Option<Vec<Value>>, String> {
    let canary = canary_service(service);
    let mut touched = false;
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let refs = rule["backendRefs"].as_array().cloned().unwrap_or_default();
        let Some(stable) = refs.iter().find(|r| names_service(r, service, ns)) else {
            out.push(rule.clone());
            continue;
        };
        let others: Vec<&str> = refs
            .iter()
            .filter(|r| !names_service(r, service, ns) && !names_service(r, &canary, ns))
            .map(|r| r["name"].as_str().unwrap_or("?"))
            .collect();
        if !others.is_empty() {
            return Err(format!(
                "rule {} of HTTPRoute {route} sends to {service} and also to {}; rollout splits only rules that send to {service} alone",
                i + 1,
                others.join(", ")
            ));
        }
        let mut stable = stable.clone();
        stable["weight"] = json!(100 - u32::from(percent));
        let mut candidate = stable.clone();
        candidate["name"] = json!(canary);
        candidate["weight"] = json!(u32::from(percent));
        let mut rule = rule.clone();
        rule["backendRefs"] = json!([stable, candidate]);
        out.push(rule);
        touched = true;
    }
    Ok(touched.then_some(out))
}

/// The rules of a route with the canary backend of `service` gone and the Service's own weight
/// field removed (it sends everything again). `None` when no rule names the canary Service.
/// A pure function.
pub fn unsplit_rules(rules: &[Value], service: &str, ns: &str) -> Option<Vec<Value>> {
    let canary = canary_service(service);
    let mut touched = false;
    let out = rules
        .iter()
        .map(|rule| {
            let refs = rule["backendRefs"].as_array().cloned().unwrap_or_default();
            if !refs.iter().any(|r| names_service(r, &canary, ns)) {
                return rule.clone();
            }
            touched = true;
            let kept: Vec<Value> = refs
                .into_iter()
                .filter(|r| !names_service(r, &canary, ns))
                .map(|mut r| {
                    if names_service(&r, service, ns)
                        && let Some(o) = r.as_object_mut()
                    {
                        o.remove("weight");
                    }
                    r
                })
                .collect();
            let mut rule = rule.clone();
            rule["backendRefs"] = json!(kept);
            rule
        })
        .collect();
    touched.then_some(out)
}

/// Replica ratio: how many pods the candidate runs beside `stable` pods for `percent`, and the
/// share that gives it. Never fewer than one pod, never more than the stable version has.
/// A pure function.
pub fn replica_ratio(stable: i32, percent: u8) -> (i32, u8) {
    let stable = stable.max(1);
    let p = f64::from(percent.clamp(1, 99));
    let wanted = (p * f64::from(stable) / (100.0 - p)).round() as i32;
    let pods = wanted.clamp(1, stable);
    let share = (f64::from(pods) * 100.0 / f64::from(pods + stable)).round() as u8;
    (pods, share)
}

impl KubeEngine {
    fn routes_api(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &http_route())
    }

    /// The HTTPRoutes of `ns`; `None` when the cluster serves no Gateway API (a 404 for the
    /// resource type itself).
    async fn http_routes(&self, ns: &str) -> Result<Option<Vec<DynamicObject>>, EngineError> {
        match self.routes_api(ns).list(&Default::default()).await {
            Ok(list) => Ok(Some(list.items)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(api_error(e, "list", &format!("HTTPRoutes in {ns}"))),
        }
    }

    /// Rewrites the rules of every route `rewrite` changes, each guarded by the resourceVersion
    /// it was read at (`read`, the routes as just listed, else they are listed); a 409 lists
    /// them again, up to [`ROUTE_ATTEMPTS`] times. The names of the routes changed (`None` when
    /// the cluster has no Gateway API).
    async fn rewrite_routes(
        &self,
        ns: &str,
        mut read: Option<Vec<DynamicObject>>,
        rewrite: &Rewrite<'_>,
    ) -> Result<Option<Vec<String>>, EngineError> {
        let api = self.routes_api(ns);
        let mut attempt = 0;
        'read: loop {
            attempt += 1;
            let routes = match read.take() {
                Some(routes) => routes,
                None => match self.http_routes(ns).await? {
                    Some(routes) => routes,
                    None => return Ok(None),
                },
            };
            let mut changed = Vec::new();
            for route in routes {
                let name = route.metadata.name.clone().unwrap_or_default();
                let rules = route.data["spec"]["rules"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let Some(rules) = rewrite(&name, &rules).map_err(|reason| EngineError::Call {
                    action: "split",
                    object: format!("HTTPRoute {name}"),
                    reason,
                })?
                else {
                    continue;
                };
                let patch = json!({
                    "metadata": { "resourceVersion": route.metadata.resource_version },
                    "spec": { "rules": rules },
                });
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => changed.push(name),
                    Err(kube::Error::Api(s)) if s.code == 409 && attempt < ROUTE_ATTEMPTS => {
                        continue 'read;
                    }
                    Err(e) => return Err(api_error(e, "split", &format!("HTTPRoute {name}"))),
                }
            }
            return Ok(Some(changed));
        }
    }

    async fn deployment(&self, ns: &str, name: &str) -> Result<Deployment, EngineError> {
        self.read_needed(ns, name, "split").await
    }

    async fn apply_service(&self, ns: &str, svc: &KService) -> Result<(), EngineError> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let api: Api<KService> = self.api(ns);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(svc),
        )
        .await
        .map_err(|e| api_error(e, "split", &format!("Service {name}")))?;
        Ok(())
    }

    pub(super) async fn split(
        &self,
        env: &str,
        service: &str,
        stable: &str,
        candidate: &str,
        percent: u8,
    ) -> Result<Split, EngineError> {
        let ns = namespace(env);
        let routes = self.http_routes(&ns).await?;
        let sends_to_service = routes.as_ref().is_some_and(|routes| {
            routes.iter().any(|r| {
                r.data["spec"]["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|rule| rule["backendRefs"].as_array().into_iter().flatten())
                    .any(|b| names_service(b, service, &ns))
            })
        });
        if sends_to_service {
            let candidate_d = self.deployment(&ns, candidate).await?;
            let canary = canary_service(service);
            let Some(svc) = service_for(&canary, &candidate_d) else {
                return Err(EngineError::Call {
                    action: "split",
                    object: format!("Service {service}"),
                    reason: format!("Deployment {candidate} exposes no port"),
                });
            };
            self.apply_service(&ns, &svc).await?;
            let changed = self
                .rewrite_routes(&ns, routes, &|route, rules| {
                    split_rules(route, rules, service, &ns, percent)
                })
                .await?
                .unwrap_or_default();
            return Ok(Split {
                percent,
                how: format!(
                    "HTTPRoute {}: {} to Service {service}, {percent} to Service {canary}",
                    changed.join(", "),
                    100 - u32::from(percent)
                ),
            });
        }
        let stable_d = self.deployment(&ns, stable).await?;
        let stable_pods = stable_d.spec.replicas.unwrap_or(1);
        let (pods, share) = replica_ratio(stable_pods, percent);
        let candidate_d = self.deployment(&ns, candidate).await?;
        if candidate_d.spec.replicas != Some(pods) {
            self.set_replicas(&ns, candidate, pods).await?;
        }
        let Some(mut svc) = service_for(service, &stable_d) else {
            return Err(EngineError::Call {
                action: "split",
                object: format!("Service {service}"),
                reason: format!("Deployment {stable} exposes no port"),
            });
        };
        // Both versions' pods: the run label left out of the selector.
        let both = BTreeMap::from([
            (labels::ENVIRONMENT.to_string(), env.to_string()),
            (labels::SERVICE.to_string(), service.to_string()),
            (labels::ROLE.to_string(), "production".to_string()),
        ]);
        if let Some(spec) = svc.spec.as_mut() {
            spec.selector = Some(both);
        }
        self.apply_service(&ns, &svc).await?;
        Ok(Split {
            percent: share,
            how: format!(
                "{} (no HTTPRoute sends to Service {service}): {pods} candidate pod(s) beside {stable_pods}",
                if routes.is_some() {
                    "replica ratio"
                } else {
                    "replica ratio, the cluster serves no Gateway API"
                }
            ),
        })
    }

    pub(super) async fn unsplit(
        &self,
        env: &str,
        service: &str,
        kept: Option<&str>,
    ) -> Result<(), EngineError> {
        let ns = namespace(env);
        self.rewrite_routes(&ns, None, &|_, rules| {
            Ok(unsplit_rules(rules, service, &ns))
        })
        .await?;
        let canary = canary_service(service);
        let api: Api<KService> = self.api(&ns);
        delete_ok(
            api.delete(&canary, &DeleteParams::default()).await,
            &format!("Service {canary}"),
        )?;
        if let Some(kept) = kept {
            let d = self.deployment(&ns, kept).await?;
            if d.spec.replicas.unwrap_or(1) > 1 {
                self.set_replicas(&ns, kept, 1).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(refs: Value) -> Value {
        json!({ "matches": [ { "path": { "type": "PathPrefix", "value": "/" } } ], "backendRefs": refs })
    }

    #[test]
    fn a_rule_sending_to_the_service_alone_is_split_and_put_back_as_it_was() {
        let rules = vec![
            rule(json!([{ "name": "web", "port": 8080 }])),
            rule(json!([{ "name": "api", "port": 9000 }])),
        ];
        let split = split_rules("shop", &rules, "web", "rollout-shop", 10)
            .unwrap()
            .unwrap();
        assert_eq!(
            split[0]["backendRefs"],
            json!([{ "name": "web", "port": 8080, "weight": 90 }, { "name": "web-canary", "port": 8080, "weight": 10 }])
        );
        assert_eq!(split[1], rules[1], "another service's rule is left alone");
        // A later step re-weighs the same rule.
        let again = split_rules("shop", &split, "web", "rollout-shop", 50)
            .unwrap()
            .unwrap();
        assert_eq!(again[0]["backendRefs"][0]["weight"], 50);
        assert_eq!(again[0]["backendRefs"].as_array().unwrap().len(), 2);
        assert_eq!(unsplit_rules(&again, "web", "rollout-shop").unwrap(), rules);
        assert_eq!(unsplit_rules(&rules, "web", "rollout-shop"), None);
    }

    #[test]
    fn a_rule_that_also_sends_elsewhere_is_refused_and_other_namespaces_are_not_the_service() {
        let mixed = vec![rule(
            json!([{ "name": "web", "weight": 80 }, { "name": "legacy", "weight": 20 }]),
        )];
        let err = split_rules("shop", &mixed, "web", "rollout-shop", 10).unwrap_err();
        assert_eq!(
            err,
            "rule 1 of HTTPRoute shop sends to web and also to legacy; rollout splits only rules that send to web alone"
        );
        let elsewhere = vec![rule(json!([{ "name": "web", "namespace": "other" }]))];
        assert_eq!(
            split_rules("shop", &elsewhere, "web", "rollout-shop", 10),
            Ok(None)
        );
        let not_a_service = vec![rule(
            json!([{ "name": "web", "kind": "Bucket", "group": "example.com" }]),
        )];
        assert_eq!(
            split_rules("shop", &not_a_service, "web", "rollout-shop", 10),
            Ok(None)
        );
    }

    #[test]
    fn a_replica_ratio_never_runs_more_candidate_pods_than_stable_ones() {
        assert_eq!(replica_ratio(1, 10), (1, 50));
        assert_eq!(replica_ratio(1, 90), (1, 50));
        assert_eq!(replica_ratio(4, 20), (1, 20));
        assert_eq!(replica_ratio(4, 50), (4, 50));
        assert_eq!(replica_ratio(9, 10), (1, 10));
        assert_eq!(replica_ratio(3, 25), (1, 25));
        assert_eq!(
            replica_ratio(0, 25),
            (1, 50),
            "no replicas set counts as one"
        );
    }
}
