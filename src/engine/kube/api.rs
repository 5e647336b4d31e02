//! Talking to the API server: finding the cluster, the typed calls every part of the backend
//! makes (server-side apply, ensure, list, scale, wait), and API errors as the user needs them
//! (a conflict names the field manager, a broken connection is transient).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde::de::DeserializeOwned;

use super::objects::pods_of;
use super::{FIELD_MANAGER, KubeEngine, POLL};
use crate::engine::{EngineError, Outcome, error_chain, labels};

/// Finds the cluster: KUBECONFIG (or `~/.kube/config`) first, then the in-cluster service
/// account. The error says what was tried.
pub(super) async fn infer_config() -> Result<(kube::Config, String), EngineError> {
    let source = std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".to_string());
    match kube::config::Kubeconfig::read() {
        Ok(file) => {
            let context = file
                .current_context
                .clone()
                .unwrap_or_else(|| "(no current-context)".to_string());
            let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| EngineError::ClusterUnreachable {
                    context: format!("{context} from {source}"),
                    reason: e.to_string(),
                })?;
            Ok((config, format!("{context} from {source}")))
        }
        Err(file_err) => match kube::Config::incluster() {
            Ok(config) => Ok((config, "in-cluster service account".to_string())),
            Err(cluster_err) => Err(EngineError::ClusterUnreachable {
                context: format!("kubeconfig {source}"),
                reason: format!(
                    "cannot read it ({file_err}), and this is not a pod in a cluster ({cluster_err})"
                ),
            }),
        },
    }
}

/// An API error as the user needs it: a conflict names the field manager problem, a 5xx is the
/// server's fault, a broken connection is transient (retried by `retry::Retrying`).
pub(super) fn api_error(e: kube::Error, action: &'static str, object: &str) -> EngineError {
    match e {
        kube::Error::Api(s) if s.code == 409 => EngineError::Call {
            action,
            object: object.to_string(),
            reason: format!(
                "conflict (409): {}; another field manager owns these fields, and rollout does not take them over",
                s.message
            ),
        },
        kube::Error::Api(s) if s.code >= 500 => EngineError::Call {
            action,
            object: object.to_string(),
            reason: format!("the API server failed ({}): {}", s.code, s.message),
        },
        kube::Error::Api(s) => EngineError::Call {
            action,
            object: object.to_string(),
            reason: format!("{} ({}): {}", s.reason, s.code, s.message),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => EngineError::LostCluster {
            action,
            object: object.to_string(),
            reason: error_chain(&e),
        },
        other => EngineError::Call {
            action,
            object: object.to_string(),
            reason: other.to_string(),
        },
    }
}

pub(super) fn unsupported(what: &str) -> EngineError {
    EngineError::Unsupported {
        what: what.to_string(),
    }
}

/// A delete that found nothing to delete is fine: every call is idempotent.
pub(super) fn delete_ok<T>(r: Result<T, kube::Error>, object: &str) -> Result<(), EngineError> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_error(e, "delete", object)),
    }
}

/// A kind of object the typed calls below read (and, with `Serialize`, write): any of
/// k8s-openapi's, whose kind name needs no discovery.
pub(super) trait Kind:
    Resource<DynamicType: Default> + Clone + DeserializeOwned + std::fmt::Debug
{
}

impl<K> Kind for K where
    K: Resource<DynamicType: Default> + Clone + DeserializeOwned + std::fmt::Debug
{
}

/// A [`Kind`] whose objects live in a namespace.
pub(super) trait NamespacedKind:
    Kind + Resource<Scope = k8s_openapi::NamespaceResourceScope>
{
}

impl<K> NamespacedKind for K where K: Kind + Resource<Scope = k8s_openapi::NamespaceResourceScope> {}

impl KubeEngine {
    pub(super) fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    pub(super) async fn apply<K: Kind + serde::Serialize>(
        &self,
        api: &Api<K>,
        name: &str,
        object: &K,
    ) -> Result<K, EngineError> {
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(object),
        )
        .await
        .map_err(|e| {
            api_error(
                e,
                "apply",
                &format!("{} {name}", K::kind(&Default::default())),
            )
        })
    }

    /// The objects of kind `K` in namespace `ns` that `list` selects.
    pub(super) async fn list_in<K: NamespacedKind>(
        &self,
        ns: &str,
        list: &ListParams,
    ) -> Result<Vec<K>, EngineError> {
        let what = format!("{}s in {ns}", K::kind(&Default::default()));
        self.api::<K>(ns)
            .list(list)
            .await
            .map(|found| found.items)
            .map_err(|e| api_error(e, "list", &what))
    }

    /// Object `name`, read from `api`, which must have it: its absence is the error `absent`
    /// makes.
    pub(super) async fn read_present<K: Kind>(
        &self,
        api: &Api<K>,
        name: &str,
        absent: impl FnOnce() -> EngineError,
    ) -> Result<K, EngineError> {
        let what = format!("{} {name}", K::kind(&Default::default()));
        api.get_opt(name)
            .await
            .map_err(|e| api_error(e, "read", &what))?
            .ok_or_else(absent)
    }

    /// [`KubeEngine::read_present`] of an object `action` needs in namespace `ns`: its absence
    /// says it is not there.
    pub(super) async fn read_needed<K: NamespacedKind>(
        &self,
        ns: &str,
        name: &str,
        action: &'static str,
    ) -> Result<K, EngineError> {
        let absent = || EngineError::Call {
            action,
            object: format!("{} {name}", K::kind(&Default::default())),
            reason: format!("it is not in {ns}"),
        };
        self.read_present(&self.api::<K>(ns), name, absent).await
    }

    /// Applies `object` only if nothing of that name exists yet.
    pub(super) async fn ensure<K: Kind + serde::Serialize>(
        &self,
        api: &Api<K>,
        name: &str,
        object: &K,
    ) -> Result<Outcome, EngineError> {
        let what = format!("{} {name}", K::kind(&Default::default()));
        match api.get_opt(name).await {
            Ok(Some(_)) => Ok(Outcome::Unchanged),
            Ok(None) => {
                self.apply(api, name, object).await?;
                Ok(Outcome::Created)
            }
            Err(e) => Err(api_error(e, "read", &what)),
        }
    }

    /// The Deployment of that name in any namespace rollout manages.
    pub(super) async fn find_deployment(
        &self,
        name: &str,
    ) -> Result<Option<Deployment>, EngineError> {
        let api: Api<Deployment> = Api::all(self.client.clone());
        let lp = ListParams::default()
            .fields(&format!("metadata.name={name}"))
            .labels(labels::ENVIRONMENT);
        let list = api
            .list(&lp)
            .await
            .map_err(|e| api_error(e, "find", &format!("Deployment {name}")))?;
        Ok(list.items.into_iter().next())
    }

    /// Scales the Deployment `container` to `replicas`; the Deployment found, if any.
    pub(super) async fn scale(
        &self,
        container: &str,
        replicas: i32,
    ) -> Result<Option<Deployment>, EngineError> {
        let Some(d) = self.find_deployment(container).await? else {
            return Ok(None);
        };
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        self.set_replicas(&ns, container, replicas).await?;
        Ok(Some(d))
    }

    /// Sets Deployment `name` in `ns` to `replicas` (a merge patch of `spec.replicas` alone).
    pub(super) async fn set_replicas(
        &self,
        ns: &str,
        name: &str,
        replicas: i32,
    ) -> Result<(), EngineError> {
        let api: Api<Deployment> = self.api(ns);
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error(e, "scale", &format!("Deployment {name}")))?;
        Ok(())
    }

    /// Waits (up to `limit`) until Deployment `d` has no pod left, terminating ones included:
    /// a stopped stateful service's process must be gone before another mounts its claim.
    pub(super) async fn wait_no_pods(
        &self,
        d: &Deployment,
        limit: Duration,
    ) -> Result<(), EngineError> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let Some(selector) = pods_of(d).filter(|s| !s.is_empty()) else {
            // No selector to tell its pods by (rollout's Deployments always have one).
            return Ok(());
        };
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = self.api(&ns);
        let t0 = tokio::time::Instant::now();
        loop {
            let left = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| api_error(e, "list", &format!("Pods of {name}")))?
                .items
                .len();
            if left == 0 {
                return Ok(());
            }
            if t0.elapsed() + POLL > limit {
                return Err(EngineError::Call {
                    action: "stop",
                    object: format!("Deployment {name}"),
                    reason: format!(
                        "{left} pod(s) still there {}s after scaling it to zero",
                        t0.elapsed().as_secs()
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last `most` Warning events of Pod `pod` in `ns`, a line each (`event FailedMount:
    /// …`, with how many times it happened when more than once).
    pub(super) async fn warnings(
        &self,
        ns: &str,
        pod: &str,
        most: usize,
    ) -> Result<Vec<String>, EngineError> {
        let events: Api<k8s_openapi::api::core::v1::Event> = self.api(ns);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=Pod,involvedObject.name={pod},type=Warning"
        ));
        let mut list = events
            .list(&lp)
            .await
            .map_err(|e| api_error(e, "list", &format!("events of Pod {pod}")))?
            .items;
        list.sort_by_key(|e| e.last_timestamp.clone().or(e.first_timestamp.clone()));
        let skip = list.len().saturating_sub(most);
        Ok(list
            .into_iter()
            .skip(skip)
            .map(|e| {
                let reason = e.reason.unwrap_or_else(|| "Warning".into());
                let message = e.message.unwrap_or_default();
                match e.count.filter(|n| *n > 1) {
                    Some(n) => format!("event {reason} (x{n}): {message}"),
                    None => format!("event {reason}: {message}"),
                }
            })
            .collect())
    }

    pub(super) async fn list_all<K: Kind>(&self, selector: &str) -> Result<Vec<K>, EngineError> {
        let api: Api<K> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| {
                api_error(
                    e,
                    "list",
                    &format!("{}s {selector}", K::kind(&Default::default())),
                )
            })?;
        // An object being deleted (a namespace terminating after a teardown) is already going.
        Ok(list
            .items
            .into_iter()
            .filter(|k| k.meta().deletion_timestamp.is_none())
            .collect())
    }

    /// Deletes every object of kind `K` carrying `selector`, in whichever namespace it is; how
    /// many there were. `object` names one (from its name and namespace) for messages.
    pub(super) async fn delete_all<K: NamespacedKind>(
        &self,
        selector: &str,
        object: impl Fn(&str, &str) -> String,
    ) -> Result<usize, EngineError> {
        let dp = DeleteParams::background();
        let mut deleted = 0;
        for k in self.list_all::<K>(selector).await? {
            let meta = k.meta();
            let (Some(name), Some(ns)) = (meta.name.as_deref(), meta.namespace.as_deref()) else {
                continue;
            };
            let api: Api<K> = self.api(ns);
            delete_ok(api.delete(name, &dp).await, &object(name, ns))?;
            deleted += 1;
        }
        Ok(deleted)
    }
}
