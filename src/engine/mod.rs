//! The seam between rollout's decisions and the container platform.
//!
//! [`Engine`] is ours: bollard has no trait. It is what every backend does (containers, networks,
//! volumes, images, events, exec, logs, status, observe, copy, labels); what only some platforms
//! offer is a capability, each its own trait reached through an `Option` on [`Engine`], with no
//! backend type in it: [`ServiceTraffic`] (kubernetes Services move traffic), [`SharedLock`] (a
//! lock every machine sees: a Lease), [`RunLedger`] (run records kept on the platform).
//! [`docker::DockerEngine`] talks to a Docker engine, [`kube::KubeEngine`] to a cluster, and
//! [`retry::Retrying`] wraps either; `fake::FakeEngine` is a scripted stand-in compiled only for
//! tests (`cfg(test)`, or the `test-support` feature the integration tests turn on).
//! Everything rollout creates carries the labels in [`labels`], and [`Engine::observe`] reads an
//! environment back from those labels alone.

pub mod docker;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod image;
pub mod kube;
pub mod ledger;
pub mod retry;
pub mod shared_lock;
pub mod spec;
pub mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::manifest::env::{Health, Port, Service, Volume};
use crate::manifest::secret::SecretValue;

pub use ledger::RunLedger;
pub use shared_lock::SharedLock;
pub use spec::{ContainerSpec, EnvValue};
pub use traffic::{ServiceTraffic, Split, Traffic, Unrouted};

/// Label keys. SPEC.md promises the first three to users and scripts.
pub mod labels {
    pub const ENVIRONMENT: &str = "rollout.environment";
    pub const ROLE: &str = "rollout.role";
    pub const RUN: &str = "rollout.run";
    /// The manifest service a container runs.
    pub const SERVICE: &str = "rollout.service";
    /// The client (tenant) the environment belongs to.
    pub const CLIENT: &str = "rollout.client";
    /// JSON of the service's non-secret settings ([`super::ServiceSnapshot`]).
    pub const SPEC: &str = "rollout.spec";
    /// Test versions: when it may be removed (seconds since the epoch).
    pub const EXPIRES: &str = "rollout.expires";
    /// Test versions owned by a running process (`host:pid:start`); removed once it is gone.
    pub const OWNER: &str = "rollout.owner";

    /// A label selector as both backends write it, `key=value,key=value` (Kubernetes' selector
    /// syntax, and the object named in Docker's messages).
    pub fn selector(selector: &std::collections::BTreeMap<String, String>) -> String {
        selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An error and its causes on one line ("client error (Connect): Connection refused"): hyper's
/// own message hides the useful part in its source. A cause whose text is already on the line
/// is not said twice.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// What an object is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Production,
    Test,
    Proxy,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Production => "production",
            Role::Test => "test",
            Role::Proxy => "proxy",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The non-secret settings of a service, as recorded on its containers.
///
/// Secret *names* are here; secret values never are (they are compared against the running
/// container's environment instead, in memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSnapshot {
    pub image: String,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub secret_keys: BTreeSet<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub stateful: bool,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub managed_by: Option<String>,
}

impl From<&Service> for ServiceSnapshot {
    fn from(s: &Service) -> Self {
        let Service {
            name: _,
            image,
            command,
            env,
            secrets,
            ports,
            depends_on,
            health,
            stateful,
            volumes,
            managed_by,
        } = s;
        ServiceSnapshot {
            image: image.clone(),
            command: command.clone(),
            env: env.clone(),
            secret_keys: secrets.keys().cloned().collect(),
            ports: ports.clone(),
            depends_on: depends_on.clone(),
            health: health.clone(),
            stateful: *stateful,
            volumes: volumes.clone(),
            managed_by: managed_by.clone(),
        }
    }
}

impl ServiceSnapshot {
    /// The service these settings describe, with its secrets' values supplied by the caller
    /// (they are never recorded): the inverse of `From<&Service>`.
    pub fn into_service(
        self,
        name: String,
        secrets: BTreeMap<String, crate::manifest::secret::Secret>,
    ) -> Service {
        let ServiceSnapshot {
            image,
            command,
            env,
            secret_keys: _,
            ports,
            depends_on,
            health,
            stateful,
            volumes,
            managed_by,
        } = self;
        Service {
            name,
            image,
            command,
            env,
            secrets,
            ports,
            depends_on,
            health,
            stateful,
            volumes,
            managed_by,
        }
    }
}

/// What runs for one environment, as the engine reports it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub environment: String,
    /// Production services by manifest name.
    pub services: BTreeMap<String, ObservedService>,
    /// How the platform observed moves traffic (which services a canary can split).
    pub traffic: Traffic,
}

impl Observed {
    /// Adds one production container of `service`, with the settings recorded on it and the
    /// secret values read from it. Containers come oldest first: a later one is newer, and what
    /// it recorded replaces what an older one did.
    pub fn add(
        &mut self,
        service: &str,
        container: ObservedContainer,
        spec: Option<ServiceSnapshot>,
        secrets: BTreeMap<String, SecretValue>,
    ) {
        let entry = self
            .services
            .entry(service.to_string())
            .or_insert_with(|| ObservedService {
                name: service.to_string(),
                containers: Vec::new(),
                spec: None,
                secrets: BTreeMap::new(),
            });
        entry.containers.push(container);
        entry.spec = spec;
        entry.secrets = secrets;
    }
}

#[derive(Debug, Clone)]
pub struct ObservedService {
    pub name: String,
    /// Every production container of the service (more than one during a blue-green switch).
    pub containers: Vec<ObservedContainer>,
    /// The settings recorded on the newest container, if it carries them.
    pub spec: Option<ServiceSnapshot>,
    /// Secret values read from the newest container's environment, for comparison only.
    pub secrets: BTreeMap<String, SecretValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    /// The image reference the container was created from.
    pub image: String,
    pub state: ContainerState,
    pub health: Option<HealthState>,
    /// The run that created it.
    pub run: Option<String>,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ContainerState {
    Created,
    Running,
    Restarting,
    Paused,
    Exited { code: i64 },
    Dead,
    Other { name: String },
}

impl ContainerState {
    pub fn is_running(&self) -> bool {
        matches!(self, ContainerState::Running)
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerState::Created => f.write_str("created"),
            ContainerState::Running => f.write_str("running"),
            ContainerState::Restarting => f.write_str("restarting"),
            ContainerState::Paused => f.write_str("paused"),
            ContainerState::Exited { code } => write!(f, "exited ({code})"),
            ContainerState::Dead => f.write_str("dead"),
            ContainerState::Other { name } => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Starting,
    Healthy,
    Unhealthy,
}

/// How a volume copy was made, for what the run says of it; ordered from the most consistent
/// to the least (a service's copy is as consistent as its least consistent volume's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Copied {
    /// File by file from the volume itself (consistent if its container was paused).
    Files,
    /// Restored from a snapshot of the volume taken by the platform: crash-consistent.
    Snapshot,
    /// File by file while production kept writing (kubernetes without VolumeSnapshots, whose
    /// pods cannot be paused): a file written during the copy may arrive torn.
    Streamed,
}

/// Whether an idempotent call changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
}

/// What a removal found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

/// Something the engine reports about a container, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// The container's name (without Docker's leading `/`).
    pub container: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Started,
    Died { exit_code: i64 },
    Health(HealthState),
    OutOfMemory,
}

/// A live feed of container events.
pub type EventStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<ContainerEvent, EngineError>> + Send>>;

/// The state of one container now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub state: ContainerState,
    pub health: Option<HealthState>,
    /// The engine runs a health check for it (set by rollout for exec probes, or the image's).
    pub has_healthcheck: bool,
    pub restart_count: i64,
}

/// What a command run inside a container printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// Standard output and error together, cut to the last 64 KiB.
    pub output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Container,
    Network,
    Volume,
}

/// A container, network or volume found by its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledObject {
    pub kind: ObjectKind,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Who runs a service's health probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probes {
    /// rollout, from this machine, through ports published on 127.0.0.1 (docker).
    FromHost,
    /// The platform itself (kubernetes readiness probes); rollout reads the result from
    /// [`Engine::status`].
    ByPlatform,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("`{command}` in `{container}` did not finish within {}", crate::manifest::duration::format(*limit))]
    ExecTimeout {
        container: String,
        command: String,
        limit: Duration,
    },
    #[error("cannot reach the Docker engine at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("image `{image}` is not on this engine (no registry is used: build or load it first)")]
    ImageMissing { image: String },
    #[error("building image `{tag}` failed: {reason}")]
    Build { tag: String, reason: String },
    /// The engine stopped answering or the connection to it broke: transient, retried.
    #[error("lost the Docker engine during {action} `{object}`: {reason}")]
    Lost {
        action: &'static str,
        object: String,
        reason: String,
    },
    #[error("cannot reach a Kubernetes cluster (tried {context}): {reason}")]
    ClusterUnreachable { context: String, reason: String },
    /// The API server stopped answering or the connection to it broke: transient, retried.
    #[error("lost the Kubernetes API server during {action} `{object}`: {reason}")]
    LostCluster {
        action: &'static str,
        object: String,
        reason: String,
    },
    /// Something the kubernetes backend does not do yet: said, never pretended.
    #[error("not supported on the kubernetes backend yet: {what}")]
    Unsupported { what: String },
    #[error("{action} `{object}` failed: {reason}")]
    Call {
        action: &'static str,
        object: String,
        reason: String,
    },
}

/// The operations rollout needs from a container platform, which every backend does; what only
/// some platforms offer is a capability reached through an `Option` ([`Engine::services`],
/// [`Engine::ledger`], [`Engine::shared_lock`]). Every call is idempotent.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Which engine this is, for messages: kind, version and endpoint.
    fn describe(&self) -> String;

    /// The production containers of `environment`, found by their labels.
    async fn observe(&self, environment: &str) -> Result<Observed, EngineError>;

    /// Creates a network if no network of that name exists.
    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError>;

    /// Creates a named volume if none of that name exists.
    async fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError>;

    /// Creates and starts a container; a container of that name already there is started if
    /// stopped and reported `Unchanged`.
    async fn run_container(&self, spec: &ContainerSpec) -> Result<Outcome, EngineError>;

    /// Removes every container, network and volume carrying all of `selector`'s labels.
    async fn remove_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Removed, EngineError>;

    /// Builds an image from an in-memory context and tags it.
    async fn build_image(
        &self,
        tag: &str,
        context: &image::BuildContext,
    ) -> Result<(), EngineError>;

    /// Container events (start, die, health, OOM) for containers carrying all of `selector`'s
    /// labels, from now on. Subscribe before starting containers so no event is missed.
    async fn events(&self, selector: &BTreeMap<String, String>)
    -> Result<EventStream, EngineError>;

    /// A container's state now; `None` if there is no container of that name.
    async fn status(&self, container: &str) -> Result<Option<ContainerStatus>, EngineError>;

    /// The 127.0.0.1 host port a container port is published on.
    async fn published_port(
        &self,
        container: &str,
        container_port: u16,
    ) -> Result<Option<u16>, EngineError>;

    /// Runs a command in a running container, bounded by `limit`.
    async fn exec(
        &self,
        container: &str,
        command: &[String],
        limit: Duration,
    ) -> Result<ExecOutput, EngineError>;

    /// The last `lines` lines a container printed (stdout and stderr).
    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, EngineError>;

    /// Freezes a container's processes (for a consistent copy of its volumes) and thaws them.
    async fn pause(&self, container: &str) -> Result<(), EngineError>;
    async fn unpause(&self, container: &str) -> Result<(), EngineError>;

    /// Copies the contents of volume `from` into volume `to` (created with `labels` if absent),
    /// with a short-lived helper container built locally (kubernetes: a snapshot, else Jobs);
    /// how it was copied.
    async fn copy_volume(
        &self,
        from: &str,
        to: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Copied, EngineError>;

    /// Every container, network and volume carrying all of `selector`'s labels.
    async fn list_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<LabelledObject>, EngineError>;

    /// Stops a container, giving it `grace` to exit; a missing or stopped container is fine.
    async fn stop_container(&self, container: &str, grace: Duration) -> Result<(), EngineError>;

    /// Removes one container (not its named volumes); a missing one is fine.
    async fn remove_container(&self, container: &str) -> Result<(), EngineError>;

    /// Removes one network, which no container may be attached to any more; a missing one is
    /// fine. Volumes are untouched (unlike [`Engine::remove_labelled`]).
    async fn remove_network(&self, name: &str) -> Result<(), EngineError>;

    /// Starts an existing, stopped container again (a stateful service put back after a failed
    /// stop-start update).
    async fn start_container(&self, container: &str) -> Result<(), EngineError>;

    /// Whether an image of that tag is on the engine.
    async fn has_image(&self, image: &str) -> Result<bool, EngineError>;

    /// The container's IP address on `network`, which the edge proxy forwards to (an address, not
    /// a name: the proxy's static binary does no DNS). `None` if it is not on that network.
    async fn address(
        &self,
        container: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, EngineError>;

    /// Who runs health probes here. A fact of every backend (docker: rollout, from the host;
    /// kubernetes: the platform's readiness probes), read by test versions and checks as well
    /// as by promotions, so it stays on the core rather than with service traffic.
    fn probes(&self) -> Probes {
        Probes::FromHost
    }

    /// How traffic moves between versions here: through [`Engine::services`] where the platform
    /// has them, else through rollout's edge proxy. Derived, not overridden.
    fn traffic(&self) -> Traffic {
        if self.services().is_some() {
            Traffic::Services
        } else {
            Traffic::EdgeProxy
        }
    }

    /// The platform's own services, if traffic moves through them (kubernetes).
    fn services(&self) -> Option<&dyn ServiceTraffic> {
        None
    }

    /// Where this platform keeps the environments' run records itself, if it does (the local
    /// store is then a cache of them).
    fn ledger(&self) -> Option<std::sync::Arc<dyn RunLedger>> {
        None
    }

    /// A lock on the platform itself, shared by every machine that manages `env` there
    /// (kubernetes: a Lease), held by `holder` ([`shared_lock::holder`]); `None` where the
    /// store's lock is the only one.
    fn shared_lock(&self, env: &str, holder: &str) -> Option<Box<dyn SharedLock>> {
        let _ = (env, holder);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_error_chain_is_one_line_without_repeating_a_cause() {
        let e = Layer(
            "client error (Connect)",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer("connect error", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "client error (Connect): tcp connect error",
            "a cause already on the line is not said again"
        );
        let e = Layer(
            "read failed",
            Some(Box::new(Layer("Connection reset", None))),
        );
        assert_eq!(error_chain(&e), "read failed: Connection reset");
    }

    #[test]
    fn a_selector_is_written_in_key_order() {
        let selector = BTreeMap::from([
            (labels::ROLE.to_string(), "test".to_string()),
            (labels::ENVIRONMENT.to_string(), "shop".to_string()),
        ]);
        assert_eq!(
            labels::selector(&selector),
            "rollout.environment=shop,rollout.role=test"
        );
        assert_eq!(labels::selector(&BTreeMap::new()), "");
    }
}
