//! The Docker engine through bollard: [`DockerEngine`] implements [`Engine`] on a local or remote
//! Docker engine.
//!
//! Every call is bounded by a timeout so a hung engine never hangs rollout (the event stream
//! alone is long-lived: its reader decides how long it waits), and the API version
//! is negotiated at connect time because the engine may speak an older API than bollard's default.
//! Nothing is ever pulled: images are built locally ([`Engine::build_image`]) or loaded by the user.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    EventMessage, EventMessageTypeEnum, HealthConfig, HealthStatusEnum, HostConfig, Mount,
    MountType, NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, EventsOptions, ListContainersOptions,
    ListNetworksOptions, ListVolumesOptions, LogsOptions, RemoveContainerOptions,
    RemoveVolumeOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;

use super::image::{self, BuildContext, UTIL_IMAGE};
use super::{
    ContainerEvent, ContainerSpec, ContainerState, ContainerStatus, Copied, Engine, EngineError,
    EnvValue, EventKind, EventStream, ExecOutput, HealthState, LabelledObject, ObjectKind,
    Observed, ObservedContainer, ObservedService, Outcome, Removed, Role, ServiceSnapshot, labels,
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

    /// The engine's own message for a refused call, else the whole reason.
    fn message(&self) -> String {
        match self {
            Failure::Docker(BollardError::DockerResponseServerError { message, .. }) => {
                message.clone()
            }
            other => other.reason(),
        }
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
        if self.is_connection_lost() {
            return EngineError::Lost {
                action,
                object: object.to_string(),
                reason: self.reason(),
            };
        }
        EngineError::Call {
            action,
            object: object.to_string(),
            reason: self.reason(),
        }
    }

    /// The engine did not answer, or the connection to it failed (socket gone, refused, reset,
    /// closed mid-answer): worth asking again; an answer from the engine is not.
    fn is_connection_lost(&self) -> bool {
        let Failure::Docker(e) = self else {
            return true;
        };
        if matches!(e, BollardError::DockerResponseServerError { .. }) {
            return false;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::NotConnected
                )
            {
                return true;
            }
            if let Some(h) = s.downcast_ref::<hyper::Error>()
                && (h.is_closed() || h.is_incomplete_message() || h.is_canceled())
            {
                return true;
            }
            source = s.source();
        }
        // hyper-util's client wraps connect failures without exposing the type.
        let text = error_chain(e);
        text.contains("client error (Connect)") || text.contains("connection closed")
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
    let mut bindings: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    for p in &spec.probe_ports {
        // Loopback only: probe ports are for rollout on this host, never the outside.
        // An empty host port lets the engine pick a free one.
        bindings
            .entry(format!("{p}/tcp"))
            .or_default()
            .push(PortBinding {
                host_ip: Some("127.0.0.1".to_string()),
                host_port: Some(String::new()),
            });
    }
    for p in &spec.publish {
        bindings
            .entry(format!("{}/tcp", p.container))
            .or_default()
            .push(PortBinding {
                host_ip: Some(p.host_ip.clone()),
                host_port: Some(p.host_port.to_string()),
            });
    }
    let port_keys: Vec<String> = bindings.keys().cloned().collect();
    let port_bindings = bindings.into_iter().map(|(k, v)| (k, Some(v))).collect();
    let restart_policy = match spec.restart {
        crate::engine::spec::Restart::Never => None,
        crate::engine::spec::Restart::UnlessStopped => Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
    };
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
            restart_policy,
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

/// What a container looks like now, from its inspection.
fn container_status(inspect: &ContainerInspectResponse) -> ContainerStatus {
    // The container's config holds the image's HEALTHCHECK merged in; `NONE` disables it.
    let has_healthcheck = inspect
        .config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.as_ref())
        .and_then(|test| test.first())
        .is_some_and(|first| first != "NONE");
    ContainerStatus {
        state: container_state(inspect),
        health: health_state(inspect),
        has_healthcheck,
        restart_count: inspect.restart_count.unwrap_or_default(),
    }
}

/// A container event of interest, from the engine's message; `None` for anything else.
fn container_event(message: &EventMessage) -> Option<ContainerEvent> {
    if message
        .typ
        .is_some_and(|t| t != EventMessageTypeEnum::CONTAINER)
    {
        return None;
    }
    let attributes = message.actor.as_ref()?.attributes.as_ref()?;
    let container = attributes.get("name")?.trim_start_matches('/').to_string();
    let action = message.action.as_deref()?;
    let kind = match action {
        "start" => EventKind::Started,
        // Docker always reports the exit code of a `die`; -1 marks one it did not.
        "die" => EventKind::Died {
            exit_code: attributes
                .get("exitCode")
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1),
        },
        "oom" => EventKind::OutOfMemory,
        other => {
            // `health_status: healthy` up to at least API 1.41; a bare action with the status
            // as an attribute is accepted too.
            let status = other.strip_prefix("health_status")?;
            let status = match status.trim_start_matches(':').trim() {
                "" => attributes.get("healthStatus")?.as_str(),
                s => s,
            };
            EventKind::Health(match status {
                "healthy" => HealthState::Healthy,
                "unhealthy" => HealthState::Unhealthy,
                "starting" => HealthState::Starting,
                _ => return None,
            })
        }
    };
    Some(ContainerEvent { container, kind })
}

/// Appends `chunk` to `out`, keeping at most the last `limit` bytes (amortized: trims when the
/// buffer doubles).
fn push_tail(out: &mut Vec<u8>, chunk: &[u8], limit: usize) {
    out.extend_from_slice(chunk);
    if out.len() > 2 * limit {
        out.drain(..out.len() - limit);
    }
}

/// The last `limit` bytes of `bytes` as text, starting on a character boundary.
fn tail_text(bytes: &[u8], limit: usize) -> String {
    let mut start = bytes.len().saturating_sub(limit);
    // Skip UTF-8 continuation bytes so the cut does not leave half a character.
    while start < bytes.len() && start > 0 && (bytes[start] & 0b1100_0000) == 0b1000_0000 {
        start += 1;
    }
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn log_bytes(item: &LogOutput) -> &[u8] {
    match item {
        LogOutput::StdOut { message }
        | LogOutput::StdErr { message }
        | LogOutput::StdIn { message }
        | LogOutput::Console { message } => message,
    }
}

/// Whole seconds of a grace period, rounded up, as Docker's stop takes them.
fn grace_seconds(grace: Duration) -> i32 {
    let secs = grace
        .as_secs()
        .saturating_add(u64::from(grace.subsec_nanos() > 0));
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// A timestamp as the `since` query parameter of `/events` takes it: `seconds.nanoseconds`.
fn since_param(t: jiff::Timestamp) -> String {
    format!("{}.{:09}", t.as_second(), t.subsec_nanosecond())
}

fn event_filters(selector: &BTreeMap<String, String>) -> HashMap<String, Vec<String>> {
    let mut filters = label_filters(selector);
    filters.insert("type".to_string(), vec!["container".to_string()]);
    filters.insert(
        "event".to_string(),
        ["start", "die", "health_status", "oom"]
            .iter()
            .map(|e| e.to_string())
            .collect(),
    );
    filters
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

    /// The bollard client, for calls the [`Engine`] trait does not cover (tests, diagnostics).
    pub fn client(&self) -> &Docker {
        &self.docker
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

    /// Starts a container by name or ID; one already running is fine.
    async fn start(&self, name: &str) -> Result<(), EngineError> {
        match call(self.docker.start_container(name, None)).await {
            // 304: already started, by a concurrent call.
            Ok(()) => Ok(()),
            Err(f) if f.status() == Some(304) => Ok(()),
            Err(f) => Err(f.call("start container", name)),
        }
    }

    /// The engine's clock now, so an event subscription starts at the engine's present even when
    /// its clock and ours disagree. Falls back to ours if the engine does not say.
    async fn engine_now(&self) -> Result<jiff::Timestamp, EngineError> {
        let info = call(self.docker.info())
            .await
            .map_err(|f| f.call("read the time of", &self.endpoint))?;
        Ok(info
            .system_time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(jiff::Timestamp::now))
    }

    /// The state a container is in now, `None` if there is none of that name.
    async fn state_of(&self, container: &str) -> Result<Option<ContainerState>, EngineError> {
        Ok(self
            .inspect_by_name(container)
            .await?
            .as_ref()
            .map(container_state))
    }

    /// Force-removes a container with its anonymous volumes; a missing one is fine.
    async fn remove_container_if_any(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match call(self.docker.remove_container(name, Some(options))).await {
            Ok(()) => Ok(()),
            Err(f) if f.is_not_found() => Ok(()),
            Err(f) => Err(f.call("remove container", name)),
        }
    }

    /// Builds [`UTIL_IMAGE`] unless the engine has it.
    async fn ensure_util_image(&self) -> Result<(), EngineError> {
        match call(self.docker.inspect_image(UTIL_IMAGE)).await {
            Ok(_) => return Ok(()),
            Err(f) if f.is_not_found() => {}
            Err(f) => return Err(f.call("inspect image", UTIL_IMAGE)),
        }
        let context = image::util_context().map_err(|e| EngineError::Build {
            tag: UTIL_IMAGE.to_string(),
            reason: e.to_string(),
        })?;
        self.build_image(UTIL_IMAGE, &context).await
    }

    /// Runs the copy helper `helper` to completion; the caller removes it.
    async fn run_copy_helper(
        &self,
        helper: &str,
        from: &str,
        to: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let object = format!("{from} -> {to}");
        let mount = |source: &str, target: &str, read_only: bool| Mount {
            source: Some(source.to_string()),
            target: Some(target.to_string()),
            typ: Some(MountType::VOLUME),
            read_only: Some(read_only),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(UTIL_IMAGE.to_string()),
            cmd: Some(
                ["/bin/busybox", "cp", "-a", "/from/.", "/to/"]
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
            ),
            labels: Some(to_hash(labels)),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                mounts: Some(vec![mount(from, "/from", true), mount(to, "/to", false)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(helper.to_string()),
            ..Default::default()
        };
        call(self.docker.create_container(Some(options), body))
            .await
            .map_err(|f| f.call("create container", helper))?;
        self.start(helper).await?;
        let wait = async {
            let options = WaitContainerOptions {
                condition: "not-running".to_string(),
            };
            let mut stream = self.docker.wait_container(helper, Some(options));
            match stream.next().await {
                // bollard reports a non-zero exit as an error; the exit code is read below.
                Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) | None => {
                    Ok(())
                }
                Some(Err(e)) => Err(e),
            }
        };
        timed(COPY_TIMEOUT, wait)
            .await
            .map_err(|f| f.call("wait for container", helper))?;
        match self.state_of(helper).await? {
            Some(ContainerState::Exited { code: 0 }) => Ok(()),
            Some(ContainerState::Exited { code }) => {
                let logs = self
                    .logs_tail(helper, HELPER_TAIL_LINES)
                    .await
                    .unwrap_or_default();
                let mut reason = format!("`cp` exited with code {code}");
                if !logs.is_empty() {
                    reason.push_str(": ");
                    reason.push_str(&logs.join("\n  "));
                }
                Err(EngineError::Call {
                    action: "copy volume",
                    object,
                    reason,
                })
            }
            other => Err(EngineError::Call {
                action: "copy volume",
                object,
                reason: format!(
                    "the helper container {helper} ended in an unexpected state: {}",
                    other.map_or_else(|| "removed".to_string(), |s| s.to_string())
                ),
            }),
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
            traffic: self.traffic(),
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
                        if let Some(line) = info.stream.as_deref().map(str::trim_end)
                            && !line.is_empty()
                        {
                            tracing::trace!(tag, "{line}");
                            if tail.len() == BUILD_TAIL_LINES {
                                tail.remove(0);
                            }
                            tail.push(line.to_string());
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

    async fn events(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<EventStream, EngineError> {
        // The subscription starts now, in the engine's clock: with `since`, the engine replays
        // from its (small, engine-wide) buffer what happened between this call and the moment
        // the request reaches it.
        let since = self.engine_now().await?;
        let options = EventsOptions {
            since: Some(since_param(since)),
            until: None,
            filters: Some(event_filters(selector)),
        };
        let object = describe_selector(selector);
        // Not bounded by the call timeout: the stream lives as long as its reader wants.
        let stream = self.docker.events(Some(options)).filter_map(move |item| {
            let out = match item {
                Ok(message) => container_event(&message).map(Ok),
                Err(e) => Some(Err(EngineError::Call {
                    action: "watch events of",
                    object: object.clone(),
                    reason: error_chain(&e),
                })),
            };
            futures_util::future::ready(out)
        });
        // bollard sends the request only when its stream is first polled: a task reads it at
        // once, so events wait here (selected ones only) rather than in the engine's buffer,
        // however late the caller starts reading. The task ends with the reader.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    item = stream.next() => match item {
                        Some(item) => {
                            if tx.send(item).is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        });
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn remove_container(&self, container: &str) -> Result<(), EngineError> {
        self.remove_container_if_any(container).await
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
        let options = CreateExecOptions {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = match call(self.docker.create_exec(container, options)).await {
            Ok(c) => c,
            Err(f) if f.status() == Some(409) => {
                return Err(EngineError::Call {
                    action: "exec in container",
                    object: container.to_string(),
                    reason: format!("the container is not running ({})", f.message()),
                });
            }
            Err(f) if f.is_not_found() => {
                return Err(EngineError::Call {
                    action: "exec in container",
                    object: container.to_string(),
                    reason: "no such container".to_string(),
                });
            }
            Err(f) => return Err(f.call("exec in container", container)),
        };
        let run = async {
            let started = self.docker.start_exec(&created.id, None).await?;
            let mut out = Vec::new();
            if let StartExecResults::Attached { mut output, .. } = started {
                while let Some(item) = output.next().await {
                    push_tail(&mut out, log_bytes(&item?), EXEC_OUTPUT_LIMIT);
                }
            }
            Ok(out)
        };
        let output = match timed(limit, run).await {
            Ok(out) => tail_text(&out, EXEC_OUTPUT_LIMIT),
            // The process may go on inside the container: the engine has no call to kill an exec.
            Err(Failure::Timeout(_)) => {
                return Err(EngineError::ExecTimeout {
                    container: container.to_string(),
                    command: command.join(" "),
                    limit,
                });
            }
            Err(f) => return Err(f.call("exec in container", container)),
        };
        // The output closes as the process ends; the engine may record the exit code just after.
        let deadline = tokio::time::Instant::now() + EXEC_EXIT_WAIT;
        loop {
            let inspect = call(self.docker.inspect_exec(&created.id))
                .await
                .map_err(|f| f.call("inspect exec in container", container))?;
            match (inspect.running, inspect.exit_code) {
                (Some(false) | None, Some(exit_code)) => {
                    return Ok(ExecOutput { exit_code, output });
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(EngineError::Call {
                        action: "exec in container",
                        object: container.to_string(),
                        reason: format!(
                            "`{}` closed its output but reported no exit code",
                            command.join(" ")
                        ),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, EngineError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            follow: false,
            tail: lines.to_string(),
            ..Default::default()
        };
        let collect = async {
            let mut stream = self.docker.logs(container, Some(options));
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                out.extend_from_slice(log_bytes(&item?));
            }
            Ok(out)
        };
        let bytes = call(collect)
            .await
            .map_err(|f| f.call("read logs of container", container))?;
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        let skip = all.len().saturating_sub(lines);
        Ok(all[skip..].iter().map(|l| l.to_string()).collect())
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
        // Mounting a missing volume would create it empty: check, so a wrong name is an error.
        match call(self.docker.inspect_volume(from)).await {
            Ok(_) => {}
            Err(f) if f.is_not_found() => {
                return Err(EngineError::Call {
                    action: "copy volume",
                    object: format!("{from} -> {to}"),
                    reason: format!("there is no volume `{from}`"),
                });
            }
            Err(f) => return Err(f.call("inspect volume", from)),
        }
        self.ensure_volume(to, labels).await?;
        self.ensure_util_image().await?;
        let helper = format!("rollout-copy-{to}");
        // Left over by a run that crashed mid-copy.
        self.remove_container_if_any(&helper).await?;
        let copied = self.run_copy_helper(&helper, from, to, labels).await;
        let removed = self.remove_container_if_any(&helper).await;
        copied.and(removed).map(|()| Copied::Files)
    }

    async fn list_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<LabelledObject>, EngineError> {
        let object = describe_selector(selector);
        let sorted = |map: Option<HashMap<String, String>>| -> BTreeMap<String, String> {
            map.unwrap_or_default().into_iter().collect()
        };
        let mut found = Vec::new();
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(selector)),
            ..Default::default()
        };
        let containers = call(self.docker.list_containers(Some(options)))
            .await
            .map_err(|f| f.call("list containers", &object))?;
        for c in containers {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .or(c.id)
                .unwrap_or_default();
            found.push(LabelledObject {
                kind: ObjectKind::Container,
                name,
                labels: sorted(c.labels),
            });
        }
        let options = ListNetworksOptions {
            filters: Some(label_filters(selector)),
        };
        let networks = call(self.docker.list_networks(Some(options)))
            .await
            .map_err(|f| f.call("list networks", &object))?;
        for n in networks {
            found.push(LabelledObject {
                kind: ObjectKind::Network,
                name: n.name.or(n.id).unwrap_or_default(),
                labels: sorted(n.labels),
            });
        }
        let options = ListVolumesOptions {
            filters: Some(label_filters(selector)),
        };
        let volumes = call(self.docker.list_volumes(Some(options)))
            .await
            .map_err(|f| f.call("list volumes", &object))?;
        for v in volumes.volumes.unwrap_or_default() {
            found.push(LabelledObject {
                kind: ObjectKind::Volume,
                name: v.name,
                labels: v.labels.into_iter().collect(),
            });
        }
        found.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok(found)
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
            publish: Vec::new(),
            restart: crate::engine::spec::Restart::Never,
        }
    }

    #[test]
    fn fixed_ports_and_the_restart_policy_reach_the_engine() {
        let mut spec = spec();
        spec.publish = vec![crate::engine::spec::Published {
            container: 18080,
            host_ip: "127.0.0.1".into(),
            host_port: 18080,
        }];
        spec.restart = crate::engine::spec::Restart::UnlessStopped;
        let body = create_body(&spec);
        let host = body.host_config.expect("host config");
        let bindings = host.port_bindings.expect("bindings");
        let b = bindings["18080/tcp"].as_ref().expect("binding");
        assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b[0].host_port.as_deref(), Some("18080"));
        assert!(bindings.contains_key("8080/tcp"), "probe ports stay");
        assert_eq!(
            host.restart_policy.and_then(|r| r.name),
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        assert_eq!(
            create_body(&super::tests::spec())
                .host_config
                .and_then(|h| h.restart_policy),
            None
        );
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

    fn message(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.to_string()),
            actor: Some(bollard::models::EventActor {
                id: Some("abc".into()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn engine_events_map_to_container_events() {
        let event = |action, attributes: &[(&str, &str)]| {
            container_event(&message(action, attributes)).map(|e| e.kind)
        };
        let name = ("name", "shop-web-r1");
        assert_eq!(
            container_event(&message("start", &[name])),
            Some(ContainerEvent {
                container: "shop-web-r1".into(),
                kind: EventKind::Started
            })
        );
        assert_eq!(
            event("die", &[name, ("exitCode", "3")]),
            Some(EventKind::Died { exit_code: 3 })
        );
        assert_eq!(
            event("die", &[name]),
            Some(EventKind::Died { exit_code: -1 })
        );
        assert_eq!(
            event("health_status: healthy", &[name]),
            Some(EventKind::Health(HealthState::Healthy))
        );
        assert_eq!(
            event("health_status: unhealthy", &[name]),
            Some(EventKind::Health(HealthState::Unhealthy))
        );
        assert_eq!(
            event("health_status", &[name, ("healthStatus", "healthy")]),
            Some(EventKind::Health(HealthState::Healthy))
        );
        assert_eq!(event("oom", &[name]), Some(EventKind::OutOfMemory));
        assert_eq!(event("exec_start: /bin/true", &[name]), None);
        assert_eq!(event("health_status: bogus", &[name]), None);
        assert_eq!(event("start", &[]), None, "no name, no event");
        let mut network = message("start", &[name]);
        network.typ = Some(EventMessageTypeEnum::NETWORK);
        assert_eq!(container_event(&network), None);
    }

    #[test]
    fn event_filters_select_container_lifecycle_events_by_label() {
        let sel = BTreeMap::from([("rollout.environment".to_string(), "shop".to_string())]);
        let filters = event_filters(&sel);
        assert_eq!(filters["type"], vec!["container".to_string()]);
        assert_eq!(
            filters["label"],
            vec!["rollout.environment=shop".to_string()]
        );
        assert_eq!(
            filters["event"],
            vec!["start", "die", "health_status", "oom"]
        );
        let t: jiff::Timestamp = "2024-05-01T10:00:00.000000042Z".parse().expect("ts");
        assert_eq!(since_param(t), "1714557600.000000042");
    }

    #[test]
    fn exec_output_keeps_the_last_bytes_on_a_character_boundary() {
        let mut out = Vec::new();
        for _ in 0..10 {
            push_tail(&mut out, b"0123456789", 8);
        }
        assert!(out.len() <= 16);
        assert_eq!(tail_text(&out, 8), "23456789");
        assert_eq!(tail_text("h\u{e9}llo".as_bytes(), 4), "llo");
        assert_eq!(tail_text("h\u{e9}llo".as_bytes(), 5), "\u{e9}llo");
        assert_eq!(tail_text(b"short", 64), "short");
    }

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_seconds(Duration::ZERO), 0);
        assert_eq!(grace_seconds(Duration::from_millis(1)), 1);
        assert_eq!(grace_seconds(Duration::from_secs(15)), 15);
        assert_eq!(grace_seconds(Duration::from_millis(15_001)), 16);
        assert_eq!(grace_seconds(Duration::MAX), i32::MAX);
    }

    #[test]
    fn status_reads_health_check_presence_from_the_config() {
        let inspect = |test: Option<Vec<&str>>| ContainerInspectResponse {
            config: Some(bollard::models::ContainerConfig {
                healthcheck: test.map(|t| HealthConfig {
                    test: Some(t.into_iter().map(String::from).collect()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_count: Some(2),
            ..Default::default()
        };
        let status = container_status(&inspect(Some(vec!["CMD", "/bin/true"])));
        assert!(status.has_healthcheck);
        assert_eq!(status.restart_count, 2);
        assert!(!container_status(&inspect(Some(vec!["NONE"]))).has_healthcheck);
        assert!(!container_status(&inspect(None)).has_healthcheck);
    }
}
