//! The Docker engine through bollard: [`DockerEngine`] implements [`Engine`] on a local or remote
//! Docker engine.
//!
//! Every call is bounded by a timeout so a hung engine never hangs rollout, and the API version
//! is negotiated at connect time because the engine may speak an older API than bollard's default.
//! Nothing is ever pulled: images are built locally ([`Engine::build_image`]) or loaded by the user.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    HealthConfig, HealthStatusEnum, HostConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, PortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, ListContainersOptions, ListNetworksOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
};
use futures_util::StreamExt;

use super::image::BuildContext;
use super::{
    ContainerSpec, ContainerState, Engine, EngineError, EnvValue, HealthState, Observed,
    ObservedContainer, ObservedService, Outcome, Removed, Role, ServiceSnapshot, labels,
};
use crate::manifest::env::{Health, Probe};
use crate::manifest::secret::SecretValue;

/// The endpoint used when neither a host nor `DOCKER_HOST` is given.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Bound on every ordinary engine call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a whole image build, output stream included.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How many lines of build output a build error quotes.
const BUILD_TAIL_LINES: usize = 5;

/// A Docker engine, connected and version-negotiated.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    endpoint: String,
    server_version: String,
}

/// Why one bollard call did not succeed.
enum Failure {
    Timeout(Duration),
    Docker(BollardError),
}

impl Failure {
    fn status(&self) -> Option<u16> {
        match self {
            Failure::Docker(BollardError::DockerResponseServerError { status_code, .. }) => {
                Some(*status_code)
            }
            _ => None,
        }
    }

    fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    fn reason(&self) -> String {
        match self {
            Failure::Timeout(limit) => {
                format!("the engine did not answer within {}s", limit.as_secs())
            }
            Failure::Docker(e) => error_chain(e),
        }
    }

    fn call(self, action: &'static str, object: &str) -> EngineError {
        EngineError::Call {
            action,
            object: object.to_string(),
            reason: self.reason(),
        }
    }
}

/// An error and its sources on one line: hyper's own message ("client error (Connect)") hides
/// the useful part ("No such file or directory") in its source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Docker(e)),
        Err(_) => Err(Failure::Timeout(limit)),
    }
}

async fn call<T>(fut: impl Future<Output = Result<T, BollardError>>) -> Result<T, Failure> {
    timed(CALL_TIMEOUT, fut).await
}

fn label_filters(selector: &BTreeMap<String, String>) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        selector.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

fn to_hash(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The Docker HEALTHCHECK for a health check, if the engine should run it. Only exec probes run
/// inside the container; http and tcp probes are made by rollout from the host, so the image's
/// own HEALTHCHECK is kept for those.
fn docker_healthcheck(health: &Health) -> Option<HealthConfig> {
    let Probe::Exec { command } = &health.probe else {
        return None;
    };
    let mut test = vec!["CMD".to_string()];
    test.extend(command.iter().cloned());
    Some(HealthConfig {
        test: Some(test),
        interval: Some(nanos(health.interval)),
        timeout: Some(nanos(health.timeout)),
        start_period: Some(nanos(health.start_period)),
        retries: Some(i64::from(health.retries)),
        ..Default::default()
    })
}

fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let env = spec
        .env
        .iter()
        .map(|(k, v)| match v {
            EnvValue::Plain(s) => format!("{k}={s}"),
            // The one place a secret value leaves rollout: the container's own environment.
            EnvValue::Secret(s) => format!("{k}={}", s.expose()),
        })
        .collect();
    let port_keys: Vec<String> = spec
        .probe_ports
        .iter()
        .map(|p| format!("{p}/tcp"))
        .collect();
    let port_bindings = port_keys
        .iter()
        .map(|key| {
            (
                key.clone(),
                // Loopback only: probe ports are for rollout on this host, never the outside.
                // An empty host port lets the engine pick a free one.
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_string()),
                    host_port: Some(String::new()),
                }]),
            )
        })
        .collect();
    let mounts = spec
        .volumes
        .iter()
        .map(|(volume, path)| Mount {
            target: Some(path.clone()),
            source: Some(volume.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        })
        .collect();
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: Some(env),
        labels: Some(to_hash(&spec.labels)),
        exposed_ports: Some(port_keys),
        healthcheck: spec.healthcheck.as_ref().and_then(docker_healthcheck),
        host_config: Some(HostConfig {
            network_mode: Some(spec.network.clone()),
            port_bindings: Some(port_bindings),
            mounts: Some(mounts),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                spec.network.clone(),
                EndpointSettings {
                    aliases: Some(spec.aliases.clone()),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

fn container_state(inspect: &ContainerInspectResponse) -> ContainerState {
    let Some(state) = inspect.state.as_ref() else {
        return ContainerState::Other {
            name: "unknown".to_string(),
        };
    };
    match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited {
            code: state.exit_code.unwrap_or_default(),
        },
        Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
        Some(other) => ContainerState::Other {
            name: other.to_string(),
        },
        None => ContainerState::Other {
            name: "unknown".to_string(),
        },
    }
}

fn health_state(inspect: &ContainerInspectResponse) -> Option<HealthState> {
    let status = inspect.state.as_ref()?.health.as_ref()?.status?;
    match status {
        HealthStatusEnum::STARTING => Some(HealthState::Starting),
        HealthStatusEnum::HEALTHY => Some(HealthState::Healthy),
        HealthStatusEnum::UNHEALTHY => Some(HealthState::Unhealthy),
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    }
}

/// Reads `keys` from a container's environment (`KEY=value` entries).
fn secrets_from_env(env: &[String], keys: &[&str]) -> BTreeMap<String, SecretValue> {
    env.iter()
        .filter_map(|entry| entry.split_once('='))
        .filter(|(k, _)| keys.contains(k))
        .map(|(k, v)| (k.to_string(), SecretValue::new(v)))
        .collect()
}

/// One production container as listed and inspected, before grouping by service.
struct Found {
    service: String,
    container: ObservedContainer,
    /// Creation time with sub-second precision, to order containers created in the same second.
    created_precise: Option<jiff::Timestamp>,
    spec_label: Option<String>,
    env: Vec<String>,
}

impl DockerEngine {
    /// Connects to `host` (`unix://`, `tcp://` or `http://`), or to `DOCKER_HOST`, or to the
    /// local socket; negotiates the API version and checks that the engine answers.
    pub async fn connect(host: Option<&str>) -> Result<Self, EngineError> {
        let endpoint = match host {
            Some(h) => h.to_string(),
            None => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_HOST.to_string()),
        };
        let unreachable = |reason: String| EngineError::Unreachable {
            endpoint: endpoint.clone(),
            reason,
        };
        // bollard's own timeout only bounds the wait for response headers; it is set to the
        // longest call (a build) and each call gets its own bound below.
        let docker = Docker::connect_with_host(&endpoint)
            .map_err(|e| unreachable(error_chain(&e)))?
            .with_timeout(BUILD_TIMEOUT);
        let docker = call(docker.negotiate_version())
            .await
            .map_err(|f| unreachable(f.reason()))?;
        call(docker.ping())
            .await
            .map_err(|f| unreachable(f.reason()))?;
        let version = call(docker.version())
            .await
            .map_err(|f| unreachable(f.reason()))?;
        Ok(DockerEngine {
            docker,
            endpoint,
            server_version: version.version.unwrap_or_else(|| "unknown".to_string()),
        })
    }

    /// The endpoint connected to, as given or defaulted.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// The bollard client, for calls the [`Engine`] trait does not cover (exec checks, logs).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The 127.0.0.1 host port a container's `container_port`/tcp is published on, if it is.
    pub async fn published_port(
        &self,
        container: &str,
        container_port: u16,
    ) -> Result<Option<u16>, EngineError> {
        let inspect = call(self.docker.inspect_container(container, None))
            .await
            .map_err(|f| f.call("inspect container", container))?;
        let key = format!("{container_port}/tcp");
        let port = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|mut ports| ports.remove(&key))
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b.host_ip.as_deref() == Some("127.0.0.1"))
            .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()));
        Ok(port)
    }

    /// Inspects a container by exact name; `None` if there is none.
    async fn inspect_by_name(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, EngineError> {
        match call(self.docker.inspect_container(name, None)).await {
            // The engine also resolves ID prefixes: only an exact name is the container asked for.
            Ok(c) if c.name.as_deref().map(|n| n.trim_start_matches('/')) == Some(name) => {
                Ok(Some(c))
            }
            Ok(_) => Ok(None),
            Err(f) if f.is_not_found() => Ok(None),
            Err(f) => Err(f.call("inspect container", name)),
        }
    }

    async fn start(&self, name: &str) -> Result<(), EngineError> {
        match call(self.docker.start_container(name, None)).await {
            // 304: already started, by a concurrent call.
            Ok(()) => Ok(()),
            Err(f) if f.status() == Some(304) => Ok(()),
            Err(f) => Err(f.call("start container", name)),
        }
    }

    async fn list_production(&self, environment: &str) -> Result<Vec<Found>, EngineError> {
        let selector = BTreeMap::from([
            (labels::ENVIRONMENT.to_string(), environment.to_string()),
            (
                labels::ROLE.to_string(),
                Role::Production.as_str().to_string(),
            ),
        ]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(&selector)),
            ..Default::default()
        };
        let summaries = call(self.docker.list_containers(Some(options)))
            .await
            .map_err(|f| f.call("list containers of environment", environment))?;
        let mut found = Vec::new();
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            let mut labels = summary.labels.unwrap_or_default();
            let Some(service) = labels.remove(labels::SERVICE) else {
                continue;
            };
            let inspect = match call(self.docker.inspect_container(&id, None)).await {
                Ok(i) => i,
                // Removed between the list and the inspect: it no longer runs.
                Err(f) if f.is_not_found() => continue,
                Err(f) => return Err(f.call("inspect container", &id)),
            };
            let name = inspect
                .name
                .as_deref()
                .or(summary
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(String::as_str))
                .unwrap_or(&id)
                .trim_start_matches('/')
                .to_string();
            let config = inspect.config.clone().unwrap_or_default();
            let image = config.image.clone().or(summary.image).unwrap_or_default();
            let created_precise = inspect
                .created
                .as_deref()
                .and_then(|c| c.parse::<jiff::Timestamp>().ok());
            let created = summary
                .created
                .or(created_precise.map(|t| t.as_second()))
                .unwrap_or_default();
            found.push(Found {
                service,
                container: ObservedContainer {
                    id,
                    name,
                    image,
                    state: container_state(&inspect),
                    health: health_state(&inspect),
                    run: labels.remove(labels::RUN),
                    created,
                },
                created_precise,
                spec_label: labels.remove(labels::SPEC),
                env: config.env.unwrap_or_default(),
            });
        }
        Ok(found)
    }

    async fn remove_containers(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<usize, EngineError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(selector)),
            ..Default::default()
        };
        let containers = call(self.docker.list_containers(Some(options)))
            .await
            .map_err(|f| f.call("list containers", &describe_selector(selector)))?;
        let mut removed = 0;
        for id in containers.into_iter().filter_map(|c| c.id) {
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            match call(self.docker.remove_container(&id, Some(options))).await {
                Ok(()) => removed += 1,
                // Already gone, or being removed by a concurrent call: the goal is reached.
                Err(f) if f.is_not_found() || f.status() == Some(409) => {}
                Err(f) => return Err(f.call("remove container", &id)),
            }
        }
        Ok(removed)
    }

    async fn remove_networks(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<usize, EngineError> {
        let options = ListNetworksOptions {
            filters: Some(label_filters(selector)),
        };
        let networks = call(self.docker.list_networks(Some(options)))
            .await
            .map_err(|f| f.call("list networks", &describe_selector(selector)))?;
        let mut removed = 0;
        for network in networks {
            let Some(id) = network.id else { continue };
            let name = network.name.unwrap_or_else(|| id.clone());
            match call(self.docker.remove_network(&id)).await {
                Ok(()) => removed += 1,
                Err(f) if f.is_not_found() => {}
                Err(f) => return Err(f.call("remove network", &name)),
            }
        }
        Ok(removed)
    }

    async fn remove_volumes(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<usize, EngineError> {
        let options = ListVolumesOptions {
            filters: Some(label_filters(selector)),
        };
        let volumes = call(self.docker.list_volumes(Some(options)))
            .await
            .map_err(|f| f.call("list volumes", &describe_selector(selector)))?;
        let mut removed = 0;
        for volume in volumes.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptions { force: false };
            match call(self.docker.remove_volume(&volume.name, Some(options))).await {
                Ok(()) => removed += 1,
                Err(f) if f.is_not_found() => {}
                Err(f) => return Err(f.call("remove volume", &volume.name)),
            }
        }
        Ok(removed)
    }
}

fn describe_selector(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait]
impl Engine for DockerEngine {
    fn describe(&self) -> String {
        format!(
            "docker {} (API {}) at {}",
            self.server_version,
            self.api_version(),
            self.endpoint
        )
    }

    async fn observe(&self, environment: &str) -> Result<Observed, EngineError> {
        let mut found = self.list_production(environment).await?;
        // Oldest first, so the newest container of a service is its last.
        found.sort_by(|a, b| {
            (a.container.created, a.created_precise, &a.container.name).cmp(&(
                b.container.created,
                b.created_precise,
                &b.container.name,
            ))
        });
        let mut services: BTreeMap<String, ObservedService> = BTreeMap::new();
        for f in found {
            let spec = f.spec_label.as_deref().and_then(|json| {
                serde_json::from_str::<ServiceSnapshot>(json)
                    .inspect_err(|e| {
                        tracing::debug!(container = %f.container.name, error = %e, "unreadable rollout.spec label");
                    })
                    .ok()
            });
            let secrets = match &spec {
                Some(s) => {
                    let keys: Vec<&str> = s.secret_keys.iter().map(String::as_str).collect();
                    secrets_from_env(&f.env, &keys)
                }
                None => BTreeMap::new(),
            };
            let entry = services
                .entry(f.service.clone())
                .or_insert_with(|| ObservedService {
                    name: f.service.clone(),
                    containers: Vec::new(),
                    spec: None,
                    secrets: BTreeMap::new(),
                });
            entry.containers.push(f.container);
            // Later containers are newer: they replace what an older one recorded.
            entry.spec = spec;
            entry.secrets = secrets;
        }
        Ok(Observed {
            environment: environment.to_string(),
            services,
        })
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError> {
        match call(self.docker.inspect_network(name, None)).await {
            // The engine also resolves ID prefixes: only an exact name counts as present.
            Ok(n) if n.name.as_deref() == Some(name) => return Ok(Outcome::Unchanged),
            Ok(_) => {}
            Err(f) if f.is_not_found() => {}
            Err(f) => return Err(f.call("inspect network", name)),
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(to_hash(labels)),
            ..Default::default()
        };
        match call(self.docker.create_network(request)).await {
            Ok(_) => Ok(Outcome::Created),
            // Created by a concurrent call in between.
            Err(f) if f.status() == Some(409) => Ok(Outcome::Unchanged),
            Err(f) => Err(f.call("create network", name)),
        }
    }

    async fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError> {
        match call(self.docker.inspect_volume(name)).await {
            Ok(_) => return Ok(Outcome::Unchanged),
            Err(f) if f.is_not_found() => {}
            Err(f) => return Err(f.call("inspect volume", name)),
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(to_hash(labels)),
            ..Default::default()
        };
        call(self.docker.create_volume(request))
            .await
            .map_err(|f| f.call("create volume", name))?;
        Ok(Outcome::Created)
    }

    async fn run_container(&self, spec: &ContainerSpec) -> Result<Outcome, EngineError> {
        if let Some(existing) = self.inspect_by_name(&spec.name).await? {
            let state = container_state(&existing);
            if matches!(
                state,
                ContainerState::Created | ContainerState::Exited { .. }
            ) {
                self.start(&spec.name).await?;
            }
            return Ok(Outcome::Unchanged);
        }
        // Checked first because a create fails with the same 404 for a missing network.
        match call(self.docker.inspect_image(&spec.image)).await {
            Ok(_) => {}
            Err(f) if f.is_not_found() => {
                return Err(EngineError::ImageMissing {
                    image: spec.image.clone(),
                });
            }
            Err(f) => return Err(f.call("inspect image", &spec.image)),
        }
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let outcome = match call(
            self.docker
                .create_container(Some(options), create_body(spec)),
        )
        .await
        {
            Ok(_) => Outcome::Created,
            // Created by a concurrent call in between: same as finding it above.
            Err(f) if f.status() == Some(409) => Outcome::Unchanged,
            Err(f) => return Err(f.call("create container", &spec.name)),
        };
        self.start(&spec.name).await?;
        Ok(outcome)
    }

    async fn remove_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Removed, EngineError> {
        if selector.is_empty() {
            // An empty label filter matches every object on the engine.
            return Err(EngineError::Call {
                action: "remove",
                object: "objects matching no label".to_string(),
                reason: "refusing an empty selector, which would match everything".to_string(),
            });
        }
        // Containers first: networks and volumes in use cannot be removed.
        let containers = self.remove_containers(selector).await?;
        let networks = self.remove_networks(selector).await?;
        let volumes = self.remove_volumes(selector).await?;
        Ok(Removed {
            containers,
            networks,
            volumes,
        })
    }

    async fn build_image(&self, tag: &str, context: &BuildContext) -> Result<(), EngineError> {
        let build_error = |reason: String| EngineError::Build {
            tag: tag.to_string(),
            reason,
        };
        let body = context
            .to_tar()
            .map_err(|e| build_error(format!("packing the build context: {e}")))?;
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".to_string(),
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let run = async {
            let mut stream = self.docker.build_image(
                options,
                None,
                Some(bollard::body_full(bytes::Bytes::from(body))),
            );
            let mut tail: Vec<String> = Vec::new();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(line) = info.stream.as_deref().map(str::trim_end) {
                            if !line.is_empty() {
                                tracing::trace!(tag, "{line}");
                                if tail.len() == BUILD_TAIL_LINES {
                                    tail.remove(0);
                                }
                                tail.push(line.to_string());
                            }
                        }
                    }
                    Err(e) => {
                        let mut reason = match e {
                            BollardError::DockerStreamError { error } => error,
                            other => error_chain(&other),
                        };
                        if !tail.is_empty() {
                            reason.push_str("\n  after: ");
                            reason.push_str(&tail.join("\n         "));
                        }
                        return Err(reason);
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(BUILD_TIMEOUT, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(build_error(reason)),
            Err(_) => Err(build_error(format!(
                "the build did not finish within {}s",
                BUILD_TIMEOUT.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::env::{DEFAULT_RETRIES, Health, Probe};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "shop-web-r1".into(),
            image: "shop-web:1".into(),
            command: Some(vec!["/bin/web".into()]),
            env: BTreeMap::from([
                ("A".into(), EnvValue::Plain("1".into())),
                ("KEY".into(), EnvValue::Secret(SecretValue::new("s3cret"))),
            ]),
            labels: BTreeMap::from([("rollout.environment".into(), "shop".into())]),
            network: "rollout-shop".into(),
            aliases: vec!["web".into()],
            probe_ports: vec![8080],
            volumes: vec![("shop-web-data".into(), "/data".into())],
            healthcheck: None,
        }
    }

    #[test]
    fn create_body_publishes_probe_ports_on_loopback_only() {
        let body = create_body(&spec());
        let host = body.host_config.expect("host config");
        let bindings = host.port_bindings.expect("bindings");
        let b = bindings["8080/tcp"].as_ref().expect("binding");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b[0].host_port.as_deref(), Some(""));
        assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_string()]));
        assert_eq!(host.network_mode.as_deref(), Some("rollout-shop"));
        let mount = &host.mounts.expect("mounts")[0];
        assert_eq!(mount.typ, Some(MountType::VOLUME));
        assert_eq!(mount.source.as_deref(), Some("shop-web-data"));
        let endpoints = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(
            endpoints["rollout-shop"].aliases,
            Some(vec!["web".to_string()])
        );
        assert_eq!(
            body.env,
            Some(vec!["A=1".to_string(), "KEY=s3cret".to_string()])
        );
        assert_eq!(body.healthcheck, None);
    }

    #[test]
    fn only_exec_probes_become_docker_healthchecks() {
        let health = |probe| Health {
            probe,
            interval: Duration::from_millis(1500),
            timeout: Duration::from_secs(2),
            start_period: Duration::from_secs(30),
            retries: DEFAULT_RETRIES,
        };
        let exec = docker_healthcheck(&health(Probe::Exec {
            command: vec!["/bin/check".into(), "-q".into()],
        }))
        .expect("exec becomes a healthcheck");
        assert_eq!(
            exec.test,
            Some(vec!["CMD".into(), "/bin/check".into(), "-q".into()])
        );
        assert_eq!(exec.interval, Some(1_500_000_000));
        assert_eq!(exec.timeout, Some(2_000_000_000));
        assert_eq!(exec.start_period, Some(30_000_000_000));
        assert_eq!(exec.retries, Some(3));
        assert!(docker_healthcheck(&health(Probe::Tcp { port: 1 })).is_none());
        assert!(
            docker_healthcheck(&health(Probe::Http {
                port: 1,
                path: "/".into()
            }))
            .is_none()
        );
    }

    #[test]
    fn secrets_are_read_only_for_the_keys_asked() {
        let env = vec![
            "A=1".to_string(),
            "KEY=a=b".to_string(),
            "PATH=/bin".to_string(),
        ];
        let got = secrets_from_env(&env, &["KEY", "MISSING"]);
        assert_eq!(got.len(), 1);
        assert_eq!(got["KEY"].expose(), "a=b");
    }

    #[test]
    fn label_filters_and_all_labels() {
        let sel = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "x=y".to_string()),
        ]);
        assert_eq!(
            label_filters(&sel)["label"],
            vec!["a=1".to_string(), "b=x=y".to_string()]
        );
    }
}
