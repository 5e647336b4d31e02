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

pub mod canary;
pub mod copyjob;
pub mod forward;
pub mod lease;
pub mod ledger;
pub mod snapshot;
pub mod status;
pub mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Namespace,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSpec, PodTemplateSpec, Probe, Secret, SecretKeySelector, Service as KService, ServicePort,
    ServiceSpec, TCPSocketAction, Volume as KVolume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::{
    ContainerSpec, ContainerStatus, Copied, Engine, EngineError, EnvValue, EventStream, ExecOutput,
    LabelledObject, ObjectKind, Observed, ObservedContainer, ObservedService, Outcome, Probes,
    Removed, ServiceSnapshot, ServiceTraffic, SharedLock, Split, Unrouted, error_chain, image,
    labels,
};
use crate::manifest::env::{Health, Probe as HealthProbe};
use crate::manifest::secret::SecretValue;

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

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn apply<K>(&self, api: &Api<K>, name: &str, object: &K) -> Result<K, EngineError>
    where
        K: Resource + Clone + serde::Serialize + DeserializeOwned + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
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

    /// Applies `object` only if nothing of that name exists yet.
    async fn ensure<K>(&self, api: &Api<K>, name: &str, object: &K) -> Result<Outcome, EngineError>
    where
        K: Resource + Clone + serde::Serialize + DeserializeOwned + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
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
    async fn find_deployment(&self, name: &str) -> Result<Option<Deployment>, EngineError> {
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
    async fn scale(
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
    async fn set_replicas(&self, ns: &str, name: &str, replicas: i32) -> Result<(), EngineError> {
        let api: Api<Deployment> = self.api(ns);
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error(e, "scale", &format!("Deployment {name}")))?;
        Ok(())
    }

    /// Waits (up to `limit`) until Deployment `d` has no pod left, terminating ones included:
    /// a stopped stateful service's process must be gone before another mounts its claim.
    async fn wait_no_pods(&self, d: &Deployment, limit: Duration) -> Result<(), EngineError> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let Some(selector) = d
            .spec
            .selector
            .match_labels
            .as_ref()
            .filter(|m| !m.is_empty())
            .map(labels::selector)
        else {
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
    async fn warnings(&self, ns: &str, pod: &str, most: usize) -> Result<Vec<String>, EngineError> {
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

    async fn list_all<K>(&self, selector: &str) -> Result<Vec<K>, EngineError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
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
}

/// Finds the cluster: KUBECONFIG (or `~/.kube/config`) first, then the in-cluster service
/// account. The error says what was tried.
async fn infer_config() -> Result<(kube::Config, String), EngineError> {
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
fn api_error(e: kube::Error, action: &'static str, object: &str) -> EngineError {
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

fn unsupported(what: &str) -> EngineError {
    EngineError::Unsupported {
        what: what.to_string(),
    }
}

/// The labels that pick the pods of one service's Deployment for one run.
pub fn pod_selector(env: &str, service: &str, run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::ENVIRONMENT.to_string(), env.to_string()),
        (labels::SERVICE.to_string(), service.to_string()),
        (labels::RUN.to_string(), run.to_string()),
    ])
}

/// Whether `value` may be a Kubernetes label value: at most 63 characters of `[A-Za-z0-9-_.]`,
/// beginning and ending with a letter or digit (or empty).
pub fn valid_label_value(value: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric();
    value.is_empty()
        || (value.len() <= 63
            && value.starts_with(ok)
            && value.ends_with(ok)
            && value.chars().all(|c| ok(c) || matches!(c, '-' | '_' | '.')))
}

/// rollout's labels split into what Kubernetes takes as labels and the rest, kept under the same
/// keys as annotations: the JSON spec, and any value a label cannot hold (a client name with a
/// space, an owner `host:pid:start`). [`found_labels`] puts them back together.
pub fn split_labels(
    all: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    all.iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, v)| k != labels::SPEC && valid_label_value(v))
}

/// An object's rollout labels as written: its labels with rollout's annotations put back.
fn found_labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    let mut out = meta.labels.clone().unwrap_or_default();
    for (k, v) in meta.annotations.iter().flatten() {
        if k.starts_with("rollout.") && k != labels::SPEC {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// `Some(map)` unless it is empty.
fn some(map: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then_some(map)
}

fn probe(health: &Health) -> Probe {
    let mut p = Probe {
        period_seconds: Some(health.interval.as_secs().max(1) as i32),
        timeout_seconds: Some(health.timeout.as_secs().max(1) as i32),
        initial_delay_seconds: None,
        ..Default::default()
    };
    match &health.probe {
        HealthProbe::Http { port, path } => {
            p.http_get = Some(HTTPGetAction {
                port: IntOrString::Int(i32::from(*port)),
                path: Some(path.clone()),
                ..Default::default()
            })
        }
        HealthProbe::Tcp { port } => {
            p.tcp_socket = Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(*port)),
                ..Default::default()
            })
        }
        HealthProbe::Exec { command } => {
            p.exec = Some(ExecAction {
                command: Some(command.clone()),
            })
        }
    }
    p
}

/// The namespace, Secret (if any), and Deployment that run `spec`: a pure function.
pub fn objects(spec: &ContainerSpec) -> (String, Option<Secret>, Deployment) {
    let ns = spec.network.clone();
    let (labels, annotations) = split_labels(&spec.labels);
    let env_name = labels.get(labels::ENVIRONMENT).cloned().unwrap_or_default();
    let service = labels
        .get(labels::SERVICE)
        .cloned()
        .unwrap_or_else(|| "main".into());
    let run = labels.get(labels::RUN).cloned().unwrap_or_default();
    let mut secret_data = BTreeMap::new();
    let env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| match v {
            EnvValue::Plain(value) => EnvVar {
                name: k.clone(),
                value: Some(value.clone()),
                value_from: None,
            },
            EnvValue::Secret(s) => {
                secret_data.insert(k.clone(), s.expose().to_string());
                EnvVar {
                    name: k.clone(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: spec.name.clone(),
                            key: k.clone(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                }
            }
        })
        .collect();
    let secret = (!secret_data.is_empty()).then(|| Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        string_data: Some(secret_data),
        ..Default::default()
    });
    let selector = pod_selector(&env_name, &service, &run);
    let mut pod_labels = labels.clone();
    pod_labels.extend(selector.clone());
    let container = Container {
        name: service.clone(),
        image: Some(spec.image.clone()),
        args: spec.command.clone(),
        env: (!env.is_empty()).then_some(env),
        ports: (!spec.probe_ports.is_empty()).then(|| {
            spec.probe_ports
                .iter()
                .map(|p| ContainerPort {
                    container_port: i32::from(*p),
                    ..Default::default()
                })
                .collect()
        }),
        readiness_probe: spec.healthcheck.as_ref().map(probe),
        volume_mounts: (!spec.volumes.is_empty()).then(|| {
            spec.volumes
                .iter()
                .map(|(claim, path)| VolumeMount {
                    name: claim.clone(),
                    mount_path: path.clone(),
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!spec.volumes.is_empty()).then(|| {
                        spec.volumes
                            .iter()
                            .map(|(claim, _)| KVolume {
                                name: claim.clone(),
                                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                    claim_name: claim.clone(),
                                    read_only: None,
                                }),
                                ..Default::default()
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    };
    (ns, secret, deployment)
}

/// The Service of a manifest service, selecting the pods of `run`.
pub fn service_object(spec: &ContainerSpec) -> Option<(String, KService)> {
    let service = spec.labels.get(labels::SERVICE)?.clone();
    let env = spec.labels.get(labels::ENVIRONMENT)?.clone();
    let run = spec.labels.get(labels::RUN).cloned().unwrap_or_default();
    let (mut labels, _) = split_labels(&spec.labels);
    // A production Service outlives the run that created it; a test version's goes with it.
    if labels.get(labels::ROLE).map(String::as_str) != Some("test") {
        labels.remove(labels::RUN);
    }
    let svc = service_with(
        &service,
        &spec.network,
        labels,
        pod_selector(&env, &service, &run),
        &spec.probe_ports,
    )?;
    Some((service, svc))
}

/// The Service `service` as it must be to send its traffic to Deployment `d`'s pods, and only
/// to them: the whole object (a server-side apply of only the selector would drop the ports
/// rollout applied before). `None` when the Deployment exposes no port. A pure function.
pub fn service_for(service: &str, d: &Deployment) -> Option<KService> {
    let ns = d.metadata.namespace.clone()?;
    let selector = d.spec.selector.match_labels.clone()?;
    let ports: Vec<u16> = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    let mut labels = d.metadata.labels.clone().unwrap_or_default();
    labels.remove(labels::RUN);
    service_with(service, &ns, labels, selector, &ports)
}

fn service_with(
    service: &str,
    ns: &str,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    ports: &[u16],
) -> Option<KService> {
    if ports.is_empty() {
        return None;
    }
    Some(KService {
        metadata: ObjectMeta {
            name: Some(service.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(format!("p{p}")),
                        port: i32::from(*p),
                        target_port: Some(IntOrString::Int(i32::from(*p))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Whether `pod` is a pod of Deployment `deployment`: its ReplicaSet's pods are named
/// `<deployment>-<template hash>-<suffix>`.
pub fn pod_of(pod: &str, deployment: &str) -> bool {
    pod.strip_prefix(deployment)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(hash, suffix)| {
            !hash.is_empty() && !suffix.is_empty() && !suffix.contains('-')
        })
}

/// One observed Deployment as the planner sees a container: a pure function.
/// `pods` may hold pods of other Deployments: those its selector picks are used.
pub fn observed_container(
    d: &Deployment,
    pods: &[Pod],
) -> Option<(String, ObservedContainer, Option<ServiceSnapshot>)> {
    let labels = d.metadata.labels.as_ref()?;
    let service = labels.get(labels::SERVICE)?.clone();
    let spec = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::SPEC))
        .and_then(|json| serde_json::from_str::<ServiceSnapshot>(json).ok());
    let image = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let own: Vec<Pod> = pods.iter().filter(|p| selects(d, p)).cloned().collect();
    let st = status::from_deployment(d, &own);
    Some((
        service,
        ObservedContainer {
            id: d.metadata.uid.clone().unwrap_or_default(),
            name: d.metadata.name.clone().unwrap_or_default(),
            image,
            state: st.state,
            health: st.health,
            run: labels.get(labels::RUN).cloned(),
            created: d
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or_default(),
        },
        spec,
    ))
}

/// Whether `d`'s selector picks `pod` (rollout's Deployments select by labels only).
fn selects(d: &Deployment, pod: &Pod) -> bool {
    let Some(want) = d.spec.selector.match_labels.as_ref() else {
        return false;
    };
    let have = pod.metadata.labels.as_ref();
    want.iter()
        .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
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
        let deployments: Api<Deployment> = self.api(&ns);
        let deployments = deployments
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error(e, "list", &format!("Deployments in {ns}")))?
            .items;
        // Their pods, for crash loops and pull failures the Deployment's status does not say.
        let pods: Vec<Pod> = if deployments.is_empty() {
            Vec::new()
        } else {
            let api: Api<Pod> = self.api(&ns);
            api.list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| api_error(e, "list", &format!("Pods in {ns}")))?
                .items
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
            let api: Api<Secret> = self.api(&ns);
            api.list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| api_error(e, "list", &format!("Secrets in {ns}")))?
                .items
                .into_iter()
                .filter_map(|s| Some((s.metadata.name.clone()?, s)))
                .collect()
        };
        let mut services: BTreeMap<String, ObservedService> = BTreeMap::new();
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
            let entry = services
                .entry(service.clone())
                .or_insert_with(|| ObservedService {
                    name: service.clone(),
                    containers: Vec::new(),
                    spec: None,
                    secrets: BTreeMap::new(),
                });
            entry.containers.push(container);
            entry.spec = spec;
            entry.secrets = values;
        }
        Ok(Observed {
            environment: environment.to_string(),
            services,
            traffic: self.traffic(),
        })
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
        let mut removed = Removed::default();
        let dp = DeleteParams::background();
        for d in self.list_all::<Deployment>(&sel).await? {
            let (Some(name), Some(ns)) = (d.metadata.name, d.metadata.namespace) else {
                continue;
            };
            let api: Api<Deployment> = self.api(&ns);
            delete_ok(api.delete(&name, &dp).await, &format!("Deployment {name}"))?;
            removed.containers += 1;
        }
        for s in self.list_all::<Secret>(&sel).await? {
            let (Some(name), Some(ns)) = (s.metadata.name, s.metadata.namespace) else {
                continue;
            };
            let api: Api<Secret> = self.api(&ns);
            delete_ok(api.delete(&name, &dp).await, &format!("Secret {name}"))?;
        }
        for c in self.list_all::<PersistentVolumeClaim>(&sel).await? {
            let (Some(name), Some(ns)) = (c.metadata.name, c.metadata.namespace) else {
                continue;
            };
            let api: Api<PersistentVolumeClaim> = self.api(&ns);
            delete_ok(
                api.delete(&name, &dp).await,
                &format!("PersistentVolumeClaim {name}"),
            )?;
            removed.volumes += 1;
        }
        // What a data copy killed half-way left outside the test namespace: its source Job in
        // production's namespace, its snapshots.
        for j in self.list_all::<Job>(&sel).await? {
            let (Some(name), Some(ns)) = (j.metadata.name, j.metadata.namespace) else {
                continue;
            };
            let api: Api<Job> = self.api(&ns);
            delete_ok(api.delete(&name, &dp).await, &format!("Job {name} in {ns}"))?;
        }
        self.remove_snapshots(&sel).await?;
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
        let selector = d
            .spec
            .selector
            .match_labels
            .as_ref()
            .map(labels::selector)
            .unwrap_or_default();
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
        let Some(selector) = d.spec.selector.match_labels.as_ref().map(labels::selector) else {
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
        let source = self.production_claim(from, &prod_ns).await?;
        match self
            .copy_by_snapshot(&source, from, to, &prod_ns, &test_ns, labels)
            .await?
        {
            snapshot::Snapshotted::Done => Ok(Copied::Snapshot),
            snapshot::Snapshotted::NotServed => {
                self.copy_by_job(&source, from, to, &prod_ns, &test_ns, labels)
                    .await?;
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

/// Traffic moves through Services: a selector switch, a canary split, their endpoints watched.
#[async_trait]
impl ServiceTraffic for KubeEngine {
    /// The blue-green switch: Service `service` is applied whole, selecting exactly the pods of
    /// Deployment `container`. Nothing else changes; the previous Deployment keeps running until
    /// it is removed.
    async fn route_service(
        &self,
        env: &str,
        service: &str,
        container: &str,
    ) -> Result<(), EngineError> {
        let ns = namespace(env);
        let deployments: Api<Deployment> = self.api(&ns);
        let d = deployments
            .get_opt(container)
            .await
            .map_err(|e| api_error(e, "read", &format!("Deployment {container}")))?
            .ok_or_else(|| EngineError::Call {
                action: "switch",
                object: format!("Service {service}"),
                reason: format!("its target, Deployment {container}, is not in {ns}"),
            })?;
        let Some(svc) = service_for(service, &d) else {
            // No port: nothing reaches it through a Service.
            return Ok(());
        };
        let api: Api<KService> = self.api(&ns);
        api.patch(
            service,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&svc),
        )
        .await
        .map_err(|e| api_error(e, "switch", &format!("Service {service}")))?;
        Ok(())
    }

    /// Watches the Service's EndpointSlices until no endpoint is a pod of `container`
    /// ([`watch`]: a 410 Gone lists them again).
    async fn wait_unrouted(
        &self,
        env: &str,
        service: &str,
        container: &str,
        limit: Duration,
    ) -> Result<Unrouted, EngineError> {
        self.wait_out_of_endpoints(&namespace(env), service, container, limit)
            .await
    }

    /// A canary: weights on the HTTPRoute that sends to the service, else a replica ratio
    /// ([`canary`]).
    async fn split_service(
        &self,
        env: &str,
        service: &str,
        stable: &str,
        candidate: &str,
        percent: u8,
    ) -> Result<Split, EngineError> {
        self.split(env, service, stable, candidate, percent).await
    }

    async fn end_split(
        &self,
        env: &str,
        service: &str,
        kept: Option<&str>,
    ) -> Result<(), EngineError> {
        self.unsplit(env, service, kept).await
    }

    fn measures(&self) -> bool {
        self.prometheus.is_some()
    }

    /// The Service of a service dropped from the manifest (and a canary Service a crash left).
    async fn remove_route(&self, env: &str, service: &str) -> Result<(), EngineError> {
        let api: Api<KService> = self.api(&namespace(env));
        for name in [service.to_string(), canary::canary_service(service)] {
            delete_ok(
                api.delete(&name, &DeleteParams::background()).await,
                &format!("Service {name}"),
            )?;
        }
        Ok(())
    }

    /// The candidate's figures from Prometheus, when rollout.yaml names one.
    async fn measure(
        &self,
        env: &str,
        service: &str,
        candidate: &str,
        window: Duration,
    ) -> Result<Option<crate::prometheus::Measured>, EngineError> {
        let Some(settings) = &self.prometheus else {
            return Ok(None);
        };
        let ns = namespace(env);
        let vars = crate::prometheus::Vars {
            namespace: &ns,
            service,
            deployment: candidate,
            window,
        };
        crate::prometheus::measure(settings, &vars)
            .await
            .map(Some)
            .map_err(|reason| EngineError::Call {
                action: "measure",
                object: format!(
                    "the {service} candidate ({candidate}) in Prometheus {}",
                    settings.url
                ),
                reason,
            })
    }
}

/// A delete that found nothing to delete is fine: every call is idempotent.
fn delete_ok<T>(r: Result<T, kube::Error>, object: &str) -> Result<(), EngineError> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_error(e, "delete", object)),
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
