//! The Docker engine through bollard: [`DockerEngine`] implements [`Engine`] on a local or remote
//! Docker engine.
//!
//! Every call is bounded by a timeout so a hung engine never hangs rollout (the event stream
//! alone is long-lived: its reader decides how long it waits), and the API version
//! is negotiated at connect time because the engine may speak an older API than bollard's default.
//! Nothing is ever pulled: images are built locally ([`Engine::build_image`]) or loaded by the user.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{CreateContainerOptions, StopContainerOptions};

use super::image::BuildContext;
use super::{
    ContainerSpec, ContainerState, ContainerStatus, Copied, Engine, EngineError, EventStream,
    ExecOutput, LabelledObject, Observed, Outcome, Removed, error_chain,
};

mod containers;
mod events;
mod failure;
mod images;
mod observe;
#[cfg(test)]
mod tests;
mod volumes;

use containers::{container_state, container_status, create_body, grace_seconds, to_hash};
use failure::{call, timed};

/// The endpoint used when neither a host nor `DOCKER_HOST` is given.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Bound on every ordinary engine call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a whole image build, output stream included.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How many lines of build output a build error quotes.
const BUILD_TAIL_LINES: usize = 5;
/// Bound on a whole volume copy, helper container included.
const COPY_TIMEOUT: Duration = Duration::from_secs(600);
/// How many lines of a failed helper container's output an error quotes.
const HELPER_TAIL_LINES: usize = 20;
/// How much of an exec's output is kept: the end, where errors usually are.
const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;
/// Bound on waiting for an exec that closed its output to report its exit code.
const EXEC_EXIT_WAIT: Duration = Duration::from_secs(5);

/// A Docker engine, connected and version-negotiated.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    endpoint: String,
    server_version: String,
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

    /// The bollard client, for calls the [`Engine`] trait does not cover (tests, diagnostics).
    pub fn client(&self) -> &Docker {
        &self.docker
    }
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
        self.observed(environment).await
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
        self.build(tag, context).await
    }

    async fn events(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<EventStream, EngineError> {
        self.subscribe(selector).await
    }

    async fn remove_container(&self, container: &str) -> Result<(), EngineError> {
        self.remove_container_if_any(container).await
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match call(self.docker.remove_network(name)).await {
            Ok(()) => Ok(()),
            Err(f) if f.is_not_found() => Ok(()),
            Err(f) => Err(f.call("remove network", name)),
        }
    }

    async fn start_container(&self, container: &str) -> Result<(), EngineError> {
        self.start(container).await
    }

    async fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        match call(self.docker.inspect_image(image)).await {
            Ok(_) => Ok(true),
            Err(f) if f.is_not_found() => Ok(false),
            Err(f) => Err(f.call("inspect image", image)),
        }
    }

    async fn address(
        &self,
        container: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, EngineError> {
        let Some(inspect) = self.inspect_by_name(container).await? else {
            return Ok(None);
        };
        Ok(inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok()))
    }

    async fn status(&self, container: &str) -> Result<Option<ContainerStatus>, EngineError> {
        Ok(self
            .inspect_by_name(container)
            .await?
            .as_ref()
            .map(container_status))
    }

    async fn published_port(
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

    async fn exec(
        &self,
        container: &str,
        command: &[String],
        limit: Duration,
    ) -> Result<ExecOutput, EngineError> {
        self.exec_in(container, command, limit).await
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, EngineError> {
        self.tail_logs(container, lines).await
    }

    async fn pause(&self, container: &str) -> Result<(), EngineError> {
        let failure = match call(self.docker.pause_container(container)).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        // Refused because it is already paused (by a concurrent call) is done, not failed.
        // Engines disagree on the status of that refusal (409, or 500 on 20.10): the state tells.
        if self.state_of(container).await? == Some(ContainerState::Paused) {
            return Ok(());
        }
        Err(failure.call("pause container", container))
    }

    async fn unpause(&self, container: &str) -> Result<(), EngineError> {
        let failure = match call(self.docker.unpause_container(container)).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        // Refused because it is not paused: running is what an unpause wants (see `pause`).
        if self.state_of(container).await? == Some(ContainerState::Running) {
            return Ok(());
        }
        Err(failure.call("unpause container", container))
    }

    async fn copy_volume(
        &self,
        from: &str,
        to: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Copied, EngineError> {
        self.copy(from, to, labels).await
    }

    async fn list_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<LabelledObject>, EngineError> {
        self.labelled(selector).await
    }

    async fn stop_container(&self, container: &str, grace: Duration) -> Result<(), EngineError> {
        // By exact name, then by ID: a bare name could otherwise match another container's ID.
        let Some(inspect) = self.inspect_by_name(container).await? else {
            return Ok(());
        };
        let Some(id) = inspect.id else {
            return Ok(());
        };
        let t = grace_seconds(grace);
        let options = StopContainerOptions {
            t: Some(t),
            signal: None,
        };
        // The engine waits up to `t` seconds before it kills: the bound is on top of that.
        let limit = CALL_TIMEOUT + Duration::from_secs(u64::try_from(t).unwrap_or_default());
        match timed(limit, self.docker.stop_container(&id, Some(options))).await {
            Ok(()) => Ok(()),
            // 304: not running. 404: removed meanwhile.
            Err(f) if f.status() == Some(304) || f.is_not_found() => Ok(()),
            Err(f) => Err(f.call("stop container", container)),
        }
    }
}
