//! Containers on Docker: the create body from a [`ContainerSpec`] (ports, mounts, health check,
//! restart policy), their state and status as rollout reads them, exec and logs.

use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    HealthConfig, HealthStatusEnum, HostConfig, Mount, MountType, NetworkingConfig, PortBinding,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{LogsOptions, RemoveContainerOptions};

use super::failure::{Failure, call, timed};
use super::{DockerEngine, EXEC_EXIT_WAIT, EXEC_OUTPUT_LIMIT};
use crate::engine::{
    ContainerSpec, ContainerState, ContainerStatus, EngineError, EnvValue, ExecOutput, HealthState,
};
use crate::manifest::env::{Health, Probe};
use crate::manifest::secret::SecretValue;

pub(super) fn label_filters(selector: &BTreeMap<String, String>) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        selector.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

pub(super) fn to_hash(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The Docker HEALTHCHECK for a health check, if the engine should run it. Only exec probes run
/// inside the container; http and tcp probes are made by rollout from the host, so the image's
/// own HEALTHCHECK is kept for those.
pub(super) fn docker_healthcheck(health: &Health) -> Option<HealthConfig> {
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

pub(super) fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
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

pub(super) fn container_state(inspect: &ContainerInspectResponse) -> ContainerState {
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

pub(super) fn health_state(inspect: &ContainerInspectResponse) -> Option<HealthState> {
    let status = inspect.state.as_ref()?.health.as_ref()?.status?;
    match status {
        HealthStatusEnum::STARTING => Some(HealthState::Starting),
        HealthStatusEnum::HEALTHY => Some(HealthState::Healthy),
        HealthStatusEnum::UNHEALTHY => Some(HealthState::Unhealthy),
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    }
}

/// Reads `keys` from a container's environment (`KEY=value` entries).
pub(super) fn secrets_from_env(env: &[String], keys: &[&str]) -> BTreeMap<String, SecretValue> {
    env.iter()
        .filter_map(|entry| entry.split_once('='))
        .filter(|(k, _)| keys.contains(k))
        .map(|(k, v)| (k.to_string(), SecretValue::new(v)))
        .collect()
}

/// What a container looks like now, from its inspection.
pub(super) fn container_status(inspect: &ContainerInspectResponse) -> ContainerStatus {
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

/// Appends `chunk` to `out`, keeping at most the last `limit` bytes (amortized: trims when the
/// buffer doubles).
pub(super) fn push_tail(out: &mut Vec<u8>, chunk: &[u8], limit: usize) {
    out.extend_from_slice(chunk);
    if out.len() > 2 * limit {
        out.drain(..out.len() - limit);
    }
}

/// The last `limit` bytes of `bytes` as text, starting on a character boundary.
pub(super) fn tail_text(bytes: &[u8], limit: usize) -> String {
    let mut start = bytes.len().saturating_sub(limit);
    // Skip UTF-8 continuation bytes so the cut does not leave half a character.
    while start < bytes.len() && start > 0 && (bytes[start] & 0b1100_0000) == 0b1000_0000 {
        start += 1;
    }
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

pub(super) fn log_bytes(item: &LogOutput) -> &[u8] {
    match item {
        LogOutput::StdOut { message }
        | LogOutput::StdErr { message }
        | LogOutput::StdIn { message }
        | LogOutput::Console { message } => message,
    }
}

/// Whole seconds of a grace period, rounded up, as Docker's stop takes them.
pub(super) fn grace_seconds(grace: Duration) -> i32 {
    let secs = grace
        .as_secs()
        .saturating_add(u64::from(grace.subsec_nanos() > 0));
    i32::try_from(secs).unwrap_or(i32::MAX)
}

impl DockerEngine {
    pub(super) async fn exec_in(
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

    pub(super) async fn tail_logs(
        &self,
        container: &str,
        lines: usize,
    ) -> Result<Vec<String>, EngineError> {
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

    /// Inspects a container by exact name; `None` if there is none.
    pub(super) async fn inspect_by_name(
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
    pub(super) async fn start(&self, name: &str) -> Result<(), EngineError> {
        match call(self.docker.start_container(name, None)).await {
            // 304: already started, by a concurrent call.
            Ok(()) => Ok(()),
            Err(f) if f.status() == Some(304) => Ok(()),
            Err(f) => Err(f.call("start container", name)),
        }
    }

    /// The state a container is in now, `None` if there is none of that name.
    pub(super) async fn state_of(
        &self,
        container: &str,
    ) -> Result<Option<ContainerState>, EngineError> {
        Ok(self
            .inspect_by_name(container)
            .await?
            .as_ref()
            .map(container_state))
    }

    /// Force-removes a container with its anonymous volumes; a missing one is fine.
    pub(super) async fn remove_container_if_any(&self, name: &str) -> Result<(), EngineError> {
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
}
