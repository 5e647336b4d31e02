//! The kubernetes backend: [`KubeEngine`] speaks to a cluster through kube-rs.
//!
//! The Docker-shaped [`Engine`] maps onto the cluster like this:
//!
//! | Engine            | cluster                                                               |
//! | ----------------- | --------------------------------------------------------------------- |
//! | network           | Namespace: `rollout-<env>` for production, `<env>-test-<run>` for a   |
//! |                   | test version                                                          |
//! | container         | Deployment of one replica, its secrets in a Secret of the same name   |
//! | container's ports | a Service named after the manifest service, created with the first    |
//! |                   | Deployment of the service; [`ServiceTraffic::route_service`] moves it |
//! | volume            | PersistentVolumeClaim (in the namespace its labels name); a copy is a  |
//! |                   | VolumeSnapshot moved into the test namespace ([`snapshot`]), else two |
//! |                   | Jobs streaming a tar from production's claim to the test claim        |
//! |                   | ([`copyjob`])                                                         |
//! | shared lock       | a `coordination.k8s.io/v1` Lease ([`lease`])                          |
//! | run records       | a ConfigMap per run in `rollout-<env>` ([`ledger`])                   |
//! | published port    | a port on 127.0.0.1 carried to a pod by `portforward`; exec through   |
//! |                   | the pod's `exec` ([`forward`])                                        |
//!
//! The executor is the same as on Docker; where the platform differs it asks the engine:
//! [`Traffic::Services`](crate::engine::Traffic::Services) (a Service's selector moves traffic, whole, instead of the edge proxy;
//! a canary splits it by HTTPRoute weights or a replica ratio, [`canary`]; the old pods are
//! waited out of its EndpointSlices before their Deployment goes) and [`Probes::ByPlatform`]
//! (the manifest's probe is the pods' readiness probe; rollout reads the result from
//! [`Engine::status`]; a canary's request figures come from Prometheus, [`ServiceTraffic::measure`]).
//!
//! Everything is written with server-side apply under the field manager `rollout`, without
//! forcing: a field another manager owns is a 409 the user sees, never silently taken over.
//! The JSON of a service's settings ([`labels::SPEC`]) does not fit in a label value, so it is an
//! annotation here. Objects carry the labels SPEC.md promises.
//!
//! The drain after a switch watches the Service's EndpointSlices ([`watch`]; a 410 Gone lists
//! them again); the other waits (readiness, pods gone, snapshots ready) poll every [`POLL`].
//! What has no meaning here (pause, images, events, building) fails with
//! [`EngineError::Unsupported`]; the commands that need it are refused before they start (see
//! `cmd::connect`), and a playbook whose canary analysis has no Prometheus to ask is refused by
//! `cmd::kubernetes_unsupported`.

mod api;
pub mod canary;
pub mod copyjob;
pub mod forward;
pub mod lease;
pub mod ledger;
mod objects;
mod services;
pub mod snapshot;
pub mod status;
pub mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, Secret,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};

use super::{
    ContainerSpec, ContainerStatus, Copied, Engine, EngineError, EventStream, ExecOutput,
    LabelledObject, ObjectKind, Observed, Outcome, Probes, Removed, ServiceTraffic, SharedLock,
    error_chain, image, labels,
};
use crate::manifest::secret::SecretValue;

use api::*;

/// A copy of production's claim `source` (named `from`, in `prod_ns`) into the test claim `to`
/// in `test_ns`, the test claim labelled `labels`: what [`KubeEngine::copy_by_snapshot`] and
/// [`KubeEngine::copy_by_job`] make.
struct ClaimCopy<'a> {
    source: &'a PersistentVolumeClaim,
    from: &'a str,
    to: &'a str,
    prod_ns: &'a str,
    test_ns: &'a str,
    labels: &'a BTreeMap<String, String>,
}
pub use objects::*;

/// How long the Lease lock lasts past each renewal; it is renewed every third of that.
pub const LEASE_SECONDS: i32 = 60;

/// How often readiness and endpoints are asked while waiting (each ask is an API call or two).
pub const POLL: Duration = Duration::from_secs(1);

/// A pod's termination grace period when its spec sets none (Kubernetes' default).
const POD_GRACE: Duration = Duration::from_secs(30);

/// How long past the grace period a stop waits for the pods to be gone.
const STOP_MARGIN: Duration = Duration::from_secs(30);

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "rollout";

/// How long connecting waits for the API server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The size asked for a volume's claim (the manifest has no size yet).
const VOLUME_SIZE: &str = "1Gi";

/// The namespace of an environment's production objects (also its "network").
pub fn namespace(env: &str) -> String {
    super::spec::production_network(env)
}

/// The namespace of an object carrying `labels`: its test version's own (`<env>-test-<run>`)
/// for `rollout.role=test`, else the environment's.
pub fn namespace_of(labels: &BTreeMap<String, String>) -> Option<String> {
    let env = labels.get(labels::ENVIRONMENT)?;
    match (
        labels.get(labels::ROLE).map(String::as_str),
        labels.get(labels::RUN),
    ) {
        (Some("test"), Some(run)) => Some(super::spec::test_network(env, run)),
        _ => Some(namespace(env)),
    }
}

pub struct KubeEngine {
    client: Client,
    /// The kubeconfig context (or "in-cluster") and the server, for messages.
    context: String,
    /// Where a canary's figures come from (`kubernetes.prometheus` in rollout.yaml).
    prometheus: Option<crate::manifest::config::Prometheus>,
    /// Local ports carried to pods' ports, for checks from this machine ([`forward`]).
    forwards: std::sync::Arc<forward::Forwards>,
    /// The image of a copy's Jobs (`kubernetes.copyImage`), [`copyjob::DEFAULT_COPY_IMAGE`]
    /// when unset.
    copy_image: Option<String>,
}

impl KubeEngine {
    /// An engine over an existing client (the mock API server in tests).
    pub fn new(client: Client, context: impl Into<String>) -> Self {
        KubeEngine {
            client,
            context: context.into(),
            prometheus: None,
            forwards: Default::default(),
            copy_image: None,
        }
    }

    /// The engine running a copy's Jobs ([`copyjob`]) from `image` rather than the default.
    pub fn with_copy_image(mut self, image: Option<String>) -> Self {
        self.copy_image = image;
        self
    }

    /// The engine asking `prometheus` for a canary's figures ([`ServiceTraffic::measure`]).
    pub fn with_prometheus(
        mut self,
        prometheus: Option<crate::manifest::config::Prometheus>,
    ) -> Self {
        self.prometheus = prometheus;
        self
    }

    /// Connects to the cluster of KUBECONFIG's current context (or `~/.kube/config`), else the
    /// in-cluster service account, and checks that the API server answers.
    pub async fn connect() -> Result<Self, EngineError> {
        let (config, context) = infer_config().await?;
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| EngineError::ClusterUnreachable {
            context: context.clone(),
            reason: format!("cannot build a client for {server}: {e}"),
        })?;
        let version = tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version())
            .await
            .map_err(|_| EngineError::ClusterUnreachable {
                context: context.clone(),
                reason: format!(
                    "{server} did not answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            })?
            .map_err(|e| EngineError::ClusterUnreachable {
                context: context.clone(),
                reason: format!("{server}: {}", error_chain(&e)),
            })?;
        Ok(KubeEngine {
            client,
            prometheus: None,
            forwards: Default::default(),
            copy_image: None,
            context: format!(
                "kubernetes {}.{} at {server} (context {context})",
                version.major, version.minor
            ),
        })
    }
}

#[async_trait]
impl Engine for KubeEngine {
    fn describe(&self) -> String {
        self.context.clone()
    }

    fn probes(&self) -> Probes {
        Probes::ByPlatform
    }

    fn services(&self) -> Option<&dyn ServiceTraffic> {
        Some(self)
    }

    /// Run records as ConfigMaps in `rollout-<env>` ([`ledger`]).
    fn ledger(&self) -> Option<std::sync::Arc<dyn crate::engine::RunLedger>> {
        Some(std::sync::Arc::new(ledger::ConfigMaps::new(
            self.client.clone(),
        )))
    }

    fn shared_lock(&self, env: &str, holder: &str) -> Option<Box<dyn SharedLock>> {
        Some(Box::new(lease::LeaseLock::new(
            self.client.clone(),
            env,
            holder,
            LEASE_SECONDS,
        )))
    }

    async fn observe(&self, environment: &str) -> Result<Observed, EngineError> {
        let ns = namespace(environment);
        let selector = format!(
            "{}={environment},{}=production",
            labels::ENVIRONMENT,
            labels::ROLE
        );
        let production = ListParams::default().labels(&selector);
        let deployments: Vec<Deployment> = self.list_in(&ns, &production).await?;
        // Their pods, for crash loops and pull failures the Deployment's status does not say.
        let pods: Vec<Pod> = if deployments.is_empty() {
            Vec::new()
        } else {
            self.list_in(&ns, &production).await?
        };
        let mut found: Vec<_> = deployments
            .iter()
            .filter_map(|d| observed_container(d, &pods))
            .collect();
        // Oldest first, so the newest Deployment of a service is its last.
        found.sort_by(|a, b| (a.1.created, &a.1.name).cmp(&(b.1.created, &b.1.name)));
        let secrets: BTreeMap<String, Secret> = if found.is_empty() {
            BTreeMap::new()
        } else {
            (self.list_in::<Secret>(&ns, &production).await?)
                .into_iter()
                .filter_map(|s| Some((s.metadata.name.clone()?, s)))
                .collect()
        };
        let mut observed = Observed {
            environment: environment.to_string(),
            services: BTreeMap::new(),
            traffic: self.traffic(),
        };
        for (service, container, spec) in found {
            let values = secrets
                .get(&container.name)
                .and_then(|s| s.data.as_ref())
                .map(|data| {
                    data.iter()
                        .filter_map(|(k, v)| {
                            Some((
                                k.clone(),
                                SecretValue::new(String::from_utf8(v.0.clone()).ok()?),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            observed.add(&service, container, spec, values);
        }
        Ok(observed)
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError> {
        let (labels, annotations) = split_labels(labels);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(labels),
                annotations: some(annotations),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.ensure(&api, name, &ns).await
    }

    async fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError> {
        let Some(ns) = namespace_of(labels) else {
            return Err(unsupported(&format!(
                "a volume without the {} label ({name})",
                labels::ENVIRONMENT
            )));
        };
        let (labels, annotations) = split_labels(labels);
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.clone()),
                labels: Some(labels),
                annotations: some(annotations),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(VOLUME_SIZE.to_string()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.ensure(&self.api(&ns), name, &pvc).await
    }

    async fn run_container(&self, spec: &ContainerSpec) -> Result<Outcome, EngineError> {
        let (ns, secret, deployment) = objects(spec);
        let deployments: Api<Deployment> = self.api(&ns);
        let existed = deployments
            .get_opt(&spec.name)
            .await
            .map_err(|e| api_error(e, "read", &format!("Deployment {}", spec.name)))?
            .is_some();
        if let Some(secret) = &secret {
            self.apply(&self.api(&ns), &spec.name, secret).await?;
        }
        self.apply(&deployments, &spec.name, &deployment).await?;
        if let Some((name, service)) = service_object(spec) {
            // Created with the first Deployment only: later ones are switched to explicitly.
            self.ensure(&self.api(&ns), &name, &service).await?;
        }
        Ok(if existed {
            Outcome::Unchanged
        } else {
            Outcome::Created
        })
    }

    async fn remove_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Removed, EngineError> {
        let sel = labels::selector(selector);
        let mut removed = Removed {
            containers: self
                .delete_all::<Deployment>(&sel, |name, _| format!("Deployment {name}"))
                .await?,
            ..Removed::default()
        };
        self.delete_all::<Secret>(&sel, |name, _| format!("Secret {name}"))
            .await?;
        removed.volumes = self
            .delete_all::<PersistentVolumeClaim>(&sel, |name, _| {
                format!("PersistentVolumeClaim {name}")
            })
            .await?;
        // What a data copy killed half-way left outside the test namespace: its source Job in
        // production's namespace, its snapshots.
        self.delete_all::<Job>(&sel, |name, ns| format!("Job {name} in {ns}"))
            .await?;
        self.remove_snapshots(&sel).await?;
        let dp = DeleteParams::background();
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for n in self.list_all::<Namespace>(&sel).await? {
            let Some(name) = n.metadata.name else {
                continue;
            };
            delete_ok(
                namespaces.delete(&name, &dp).await,
                &format!("Namespace {name}"),
            )?;
            removed.networks += 1;
        }
        Ok(removed)
    }

    async fn build_image(
        &self,
        tag: &str,
        _context: &image::BuildContext,
    ) -> Result<(), EngineError> {
        Err(unsupported(&format!(
            "building images ({tag}): push images to a registry the cluster pulls from"
        )))
    }

    async fn events(
        &self,
        _selector: &BTreeMap<String, String>,
    ) -> Result<EventStream, EngineError> {
        Err(unsupported("container events (pod watches)"))
    }

    async fn status(&self, container: &str) -> Result<Option<ContainerStatus>, EngineError> {
        let Some(d) = self.find_deployment(container).await? else {
            return Ok(None);
        };
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let selector = pods_of(&d).unwrap_or_default();
        let pods: Api<Pod> = self.api(&ns);
        let pods = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error(e, "list", &format!("Pods of {container}")))?
            .items;
        Ok(Some(status::from_deployment(&d, &pods)))
    }

    /// A port on 127.0.0.1 carried to the pod's port through the API server, as `kubectl
    /// port-forward` does ([`forward`]).
    async fn published_port(
        &self,
        container: &str,
        container_port: u16,
    ) -> Result<Option<u16>, EngineError> {
        self.forward(container, container_port).await.map(Some)
    }

    /// In the Deployment's running pod, through the API server, as `kubectl exec` does.
    async fn exec(
        &self,
        container: &str,
        command: &[String],
        limit: Duration,
    ) -> Result<ExecOutput, EngineError> {
        self.exec_in_pod(container, command, limit).await
    }

    /// The last `lines` of the log of Deployment `container`'s newest pod: of its previous
    /// instance when it has restarted and is not running now (a crash loop's useful lines are
    /// the crashed one's). No pod is no lines. A pod none of whose containers has run has no
    /// log: its lines say why instead, from its status ([`status::not_started`]) and its
    /// Warning events (a volume that cannot be mounted, an image that cannot be pulled...), as
    /// `kubectl describe pod` shows them.
    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, EngineError> {
        let Some(d) = self.find_deployment(container).await? else {
            return Ok(Vec::new());
        };
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let Some(selector) = pods_of(&d) else {
            return Ok(Vec::new());
        };
        let pods: Api<Pod> = self.api(&ns);
        let mut list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error(e, "list", &format!("Pods of {container}")))?
            .items;
        list.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
        let Some(pod) = list.first() else {
            return Ok(Vec::new());
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Some(mut why) = status::not_started(pod) {
            why.extend(self.warnings(&ns, &name, lines).await?);
            return Ok(why);
        }
        let previous = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .is_some_and(|c| {
                c.restart_count > 0 && c.state.as_ref().is_none_or(|s| s.running.is_none())
            });
        let params = kube::api::LogParams {
            tail_lines: Some(lines as i64),
            previous,
            ..Default::default()
        };
        let text = pods
            .logs(&name, &params)
            .await
            .map_err(|e| api_error(e, "read the log of", &format!("Pod {name}")))?;
        Ok(text.lines().map(str::to_string).collect())
    }

    async fn pause(&self, container: &str) -> Result<(), EngineError> {
        Err(unsupported(&format!("pausing {container}")))
    }

    async fn unpause(&self, container: &str) -> Result<(), EngineError> {
        Err(unsupported(&format!("unpausing {container}")))
    }

    /// Through a VolumeSnapshot moved into the test namespace ([`snapshot`]), else by two Jobs
    /// ([`copyjob`]).
    async fn copy_volume(
        &self,
        from: &str,
        to: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Copied, EngineError> {
        let (Some(test_ns), Some(env)) = (namespace_of(labels), labels.get(labels::ENVIRONMENT))
        else {
            return Err(unsupported(&format!(
                "a volume copy without the {} label ({to})",
                labels::ENVIRONMENT
            )));
        };
        let prod_ns = namespace(env);
        let copy = ClaimCopy {
            source: &self.production_claim(from, &prod_ns).await?,
            from,
            to,
            prod_ns: &prod_ns,
            test_ns: &test_ns,
            labels,
        };
        match self.copy_by_snapshot(&copy).await? {
            snapshot::Snapshotted::Done => Ok(Copied::Snapshot),
            snapshot::Snapshotted::NotServed => {
                self.copy_by_job(&copy).await?;
                Ok(Copied::Streamed)
            }
        }
    }

    async fn list_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<LabelledObject>, EngineError> {
        let sel = labels::selector(selector);
        let mut out = Vec::new();
        let found = |kind, meta: &ObjectMeta| LabelledObject {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            labels: found_labels(meta),
        };
        for d in self.list_all::<Deployment>(&sel).await? {
            out.push(found(ObjectKind::Container, &d.metadata));
        }
        for n in self.list_all::<Namespace>(&sel).await? {
            out.push(found(ObjectKind::Network, &n.metadata));
        }
        for c in self.list_all::<PersistentVolumeClaim>(&sel).await? {
            out.push(found(ObjectKind::Volume, &c.metadata));
        }
        Ok(out)
    }

    /// Scales to zero and waits for the pods to be gone (their termination grace period, set on
    /// the pod, plus [`STOP_MARGIN`]), as a stopped container is gone on Docker.
    async fn stop_container(&self, container: &str, grace: Duration) -> Result<(), EngineError> {
        match self.scale(container, 0).await? {
            Some(d) => {
                self.wait_no_pods(&d, grace.max(POD_GRACE) + STOP_MARGIN)
                    .await
            }
            None => Ok(()),
        }
    }

    async fn remove_container(&self, container: &str) -> Result<(), EngineError> {
        let Some(d) = self.find_deployment(container).await? else {
            return Ok(());
        };
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let dp = DeleteParams::background();
        let deployments: Api<Deployment> = self.api(&ns);
        delete_ok(
            deployments.delete(container, &dp).await,
            &format!("Deployment {container}"),
        )?;
        let secrets: Api<Secret> = self.api(&ns);
        delete_ok(
            secrets.delete(container, &dp).await,
            &format!("Secret {container}"),
        )
    }

    async fn start_container(&self, container: &str) -> Result<(), EngineError> {
        self.scale(container, 1).await.map(|_| ())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        // An environment's "network" here is its Namespace: deleting it deletes its
        // PersistentVolumeClaims too, so it cannot be removed while the data is kept.
        Err(unsupported(&format!(
            "removing namespace `{name}` while keeping its volumes (its PersistentVolumeClaims go with it)"
        )))
    }

    async fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        Err(unsupported(&format!(
            "checking for image {image} (the cluster's nodes pull it)"
        )))
    }

    async fn address(
        &self,
        container: &str,
        _network: &str,
    ) -> Result<Option<std::net::IpAddr>, EngineError> {
        Err(unsupported(&format!(
            "the edge proxy's addresses ({container}): traffic moves through Services"
        )))
    }
}

#[cfg(test)]
mod mock;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_kubernetes_cannot_hold_become_annotations() {
        assert!(
            valid_label_value("shop") && valid_label_value("r1.a_b-c") && valid_label_value("")
        );
        assert!(!valid_label_value("Acme Corp"));
        assert!(!valid_label_value("host:12:1700000000"));
        assert!(!valid_label_value("-x") && !valid_label_value(&"a".repeat(64)));
        let all = BTreeMap::from([
            (labels::ENVIRONMENT.to_string(), "shop".to_string()),
            (labels::CLIENT.to_string(), "Acme Corp".to_string()),
            (
                labels::SPEC.to_string(),
                "{\"image\":\"web:1\"}".to_string(),
            ),
        ]);
        let (labels, annotations) = split_labels(&all);
        assert_eq!(labels.keys().collect::<Vec<_>>(), vec![labels::ENVIRONMENT]);
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            vec![labels::CLIENT, labels::SPEC]
        );
        let meta = ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        };
        let mut back = all.clone();
        back.remove(labels::SPEC);
        assert_eq!(
            found_labels(&meta),
            back,
            "read back as written, but the spec"
        );
    }
}
