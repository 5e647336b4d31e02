//! Waiting for a container to become healthy, and noticing when it dies: production candidates,
//! and the services of a test version on platforms that probe them themselves.
//!
//! Candidates start beside production one service at a time, so a short poll of the engine's
//! state (and of the http/tcp probe from the host) is enough here; test versions on docker, which
//! start whole graphs, read the event stream instead (`testenv`).

use std::time::{Duration, Instant};

use crate::check::{self, Endpoint, Verdict};
use crate::engine::{ContainerState, ContainerStatus, Engine, HealthState, Probes};
use crate::manifest::env::{Probe, Service};

const POLL: Duration = Duration::from_millis(100);
const IMAGE_HEALTH_DEADLINE: Duration = Duration::from_secs(120);
const NO_HEALTH_SETTLE: Duration = Duration::from_millis(500);

/// Waits until `container` (running `svc`) is healthy. The error says why not, with its last logs.
pub async fn wait(engine: &dyn Engine, svc: &Service, container: &str) -> Result<String, String> {
    if engine.probes() == Probes::ByPlatform {
        return wait_ready(engine, svc, container).await;
    }
    let t0 = Instant::now();
    let deadline = match &svc.health {
        Some(h) => h.start_period + (h.interval + h.timeout) * h.retries.max(1),
        None => IMAGE_HEALTH_DEADLINE,
    };
    let mut ports = std::collections::BTreeMap::new();
    for p in &svc.ports {
        if let Ok(Some(host)) = engine.published_port(container, p.container).await {
            ports.insert(p.container, host);
        }
    }
    let endpoint = Endpoint {
        container: container.to_string(),
        ports,
    };
    let mut last = String::from("not checked yet");
    loop {
        let status = read_status(engine, container).await?;
        if let ContainerState::Exited { code } = status.state {
            return Err(exited(engine, svc, container, code).await);
        }
        if status.state == ContainerState::Running {
            match svc.health.as_ref().map(|h| (&h.probe, h.timeout)) {
                Some((probe @ (Probe::Http { .. } | Probe::Tcp { .. }), timeout)) => {
                    match check::probe_once(engine, &endpoint, probe, timeout).await {
                        Verdict::Pass { .. } => return Ok(format!("healthy ({probe})")),
                        Verdict::Fail { reason } | Verdict::Inconclusive { reason } => {
                            last = reason
                        }
                    }
                }
                _ if status.has_healthcheck => match status.health {
                    Some(HealthState::Healthy) => return Ok("healthy (engine health check)".into()),
                    other => last = format!("health is {other:?}"),
                },
                _ if t0.elapsed() >= NO_HEALTH_SETTLE => {
                    return Ok("running (no health check)".into());
                }
                _ => {}
            }
        }
        if t0.elapsed() >= deadline {
            return Err(gave_up(engine, svc, container, "healthy", t0.elapsed(), &last).await);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`Probes::ByPlatform`]: the platform runs the manifest's probe (a readiness probe), so this
/// reads the result. A crash loop, an image that cannot be pulled or a progress deadline passed
/// fails at once: none of them mends itself within the wait.
async fn wait_ready(engine: &dyn Engine, svc: &Service, container: &str) -> Result<String, String> {
    // tokio's clock, so tests that pause time see the polls as elapsed time.
    use tokio::time::Instant;
    let t0 = Instant::now();
    // Scheduling and pulling the image come before the first probe.
    let deadline = match &svc.health {
        Some(h) => h.start_period + (h.interval + h.timeout) * h.retries.max(1),
        None => Duration::ZERO,
    }
    .max(IMAGE_HEALTH_DEADLINE);
    let mut running_since: Option<Instant> = None;
    let mut last = String::from("not scheduled yet");
    loop {
        let status = read_status(engine, container).await?;
        match &status.state {
            ContainerState::Exited { code } => {
                return Err(exited(engine, svc, container, *code).await);
            }
            ContainerState::Restarting => {
                return Err(format!(
                    "{} is crash-looping ({} restarts){}",
                    svc.name,
                    status.restart_count,
                    logs(engine, container).await
                ));
            }
            ContainerState::Other { name } => return Err(format!("{} is {name}", svc.name)),
            ContainerState::Running if status.has_healthcheck => match status.health {
                Some(HealthState::Healthy) => return Ok("ready (readiness probe)".into()),
                other => last = format!("readiness is {other:?}"),
            },
            ContainerState::Running => {
                let since = *running_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= NO_HEALTH_SETTLE {
                    return Ok("running (no health check)".into());
                }
            }
            other => last = other.to_string(),
        }
        if t0.elapsed() >= deadline {
            return Err(gave_up(engine, svc, container, "ready", t0.elapsed(), &last).await);
        }
        tokio::time::sleep(crate::engine::kube::POLL).await;
    }
}

/// The container's state, or why there is none to read (an engine error, or it is gone).
async fn read_status(engine: &dyn Engine, container: &str) -> Result<ContainerStatus, String> {
    engine
        .status(container)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{container} is gone"))
}

async fn exited(engine: &dyn Engine, svc: &Service, container: &str, code: i64) -> String {
    format!(
        "{} exited with code {code}{}",
        svc.name,
        logs(engine, container).await
    )
}

/// The service did not become `became` (healthy, ready) within `waited`: the last thing seen,
/// and the container's last logs.
async fn gave_up(
    engine: &dyn Engine,
    svc: &Service,
    container: &str,
    became: &str,
    waited: Duration,
    last: &str,
) -> String {
    format!(
        "{} did not become {became} within {}: {last}{}",
        svc.name,
        crate::progress::seconds(waited),
        logs(engine, container).await
    )
}

async fn logs(engine: &dyn Engine, container: &str) -> String {
    match engine.logs_tail(container, 10).await {
        Ok(lines) if !lines.is_empty() => {
            format!("\nlast log lines:\n  | {}", lines.join("\n  | "))
        }
        _ => String::new(),
    }
}
