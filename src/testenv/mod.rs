//! Test versions: isolated copies of an environment, brought up in dependency order, checked,
//! and always torn down.
//!
//! A test version has its own network (`<env>-test-<run>`), its own names
//! (`<env>-test-<run>-<service>`) and volumes; each service answers to its manifest name on that
//! network, so the copy talks to itself and never to production. Every object carries
//! `rollout.role=test`, `rollout.run` and `rollout.expires` (and `rollout.owner` while a process
//! runs it), which is how [`collect_garbage`] finds versions whose run died or whose TTL passed.
//!
//! Health is read from the engine's event stream (deaths, health status) and, for http/tcp
//! probes, by probing the published port from the host as soon as the container starts; a
//! container that dies is noticed at once, with its last log lines. Where the platform runs the
//! probes itself ([`Probes::ByPlatform`], kubernetes: a namespace `<env>-test-<run>` holds the
//! copy), each service's readiness is read instead, as for a production candidate, and a crash
//! loop fails it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::check::{self, Endpoint, Verdict};
use crate::engine::spec::{
    production_volume, test_container, test_labels, test_network, test_volume,
};
use crate::engine::{
    ContainerState, Copied, Engine, EngineError, EventKind, EventStream, HealthState, ObjectKind,
    Probes, Removed, Role, labels,
};
use crate::manifest::env::{Environment, Probe, Service};
use crate::owner;
use crate::progress::{Progress, Status};

/// How long a service without any health check must have been running to count as started.
const NO_HEALTH_SETTLE: Duration = Duration::from_millis(300);
/// How long to wait for an image's own HEALTHCHECK when the manifest gives none.
const IMAGE_HEALTH_DEADLINE: Duration = Duration::from_secs(120);
/// Probe cadence for http/tcp health while a service comes up.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Log lines quoted when a service fails.
const LOG_LINES: usize = 20;

#[derive(Debug, Clone)]
pub struct Options {
    pub ttl: Duration,
    /// Stateful services whose production volumes are copied into the test version.
    pub copy_data: Vec<String>,
    /// Set while a process runs the test version (see [`owner`]); `None` for `test-env up`,
    /// which leaves it until `test-env down` or its TTL.
    pub owner: Option<String>,
}

/// A test version that came up healthy.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub environment: String,
    pub run: String,
    pub network: String,
    pub expires: jiff::Timestamp,
    pub services: BTreeMap<String, Endpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{service} exited with code {exit_code} while the test version came up{}", log_text(.logs))]
    Crashed {
        service: String,
        exit_code: i64,
        logs: Vec<String>,
    },
    #[error("{service} ran out of memory while the test version came up{}", log_text(.logs))]
    OutOfMemory { service: String, logs: Vec<String> },
    #[error("{service} did not become healthy within {}: {reason}{}", crate::progress::seconds(*.waited), log_text(.logs))]
    Unhealthy {
        service: String,
        waited: Duration,
        reason: String,
        logs: Vec<String>,
    },
    #[error("{reason}")]
    NotReady { reason: String },
    #[error("copying the data of {service} failed: {reason}")]
    CopyData { service: String, reason: String },
    #[error("the engine's event stream ended while the test version came up")]
    EventsEnded,
    #[error("stopped by a signal")]
    Cancelled,
}

fn log_text(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = format!("\nlast {} log lines:", lines.len());
    for l in lines {
        out.push_str("\n  | ");
        out.push_str(l);
    }
    out
}

/// Selector for everything of one test version.
pub fn selector(env: &str, run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::ENVIRONMENT.to_string(), env.to_string()),
        (labels::ROLE.to_string(), Role::Test.as_str().to_string()),
        (labels::RUN.to_string(), run.to_string()),
    ])
}

/// Brings up a test version of `env` as run `run`. On error the caller tears it down with
/// [`down`]; nothing here removes what it created, so a half-built version can be inspected.
pub async fn up(
    engine: &dyn Engine,
    env: &Environment,
    run: &str,
    opts: &Options,
    now: jiff::Timestamp,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<TestEnv, TestEnvError> {
    let expires = now
        + jiff::SignedDuration::try_from(opts.ttl).unwrap_or(jiff::SignedDuration::from_hours(2));
    let labels = test_labels(env, run, expires, opts.owner.as_deref());
    let by_platform = engine.probes() == Probes::ByPlatform;
    // Subscribe before anything starts, so no death or health change is missed. Where the
    // platform runs the probes, each service's own wait reads its state instead.
    let mut events: EventStream = if by_platform {
        Box::pin(futures_util::stream::pending())
    } else {
        engine.events(&selector(&env.name, run)).await?
    };
    let network = test_network(&env.name, run);
    engine.ensure_network(&network, &labels).await?;
    prepare_volumes(engine, env, run, opts, &labels, progress).await?;

    let names: BTreeMap<String, &Service> = env
        .services
        .iter()
        .map(|s| (container_name(env, run, s), s))
        .collect();
    let (health_tx, health_rx) =
        tokio::sync::watch::channel(BTreeMap::<String, HealthState>::new());
    let mut ready: BTreeSet<&str> = BTreeSet::new();
    let mut started: BTreeSet<&str> = BTreeSet::new();
    let mut endpoints = BTreeMap::new();
    let mut pending = FuturesUnordered::new();
    loop {
        for svc in &env.services {
            if !started.contains(svc.name.as_str())
                && svc.depends_on.iter().all(|d| ready.contains(d.as_str()))
            {
                started.insert(&svc.name);
                let task = format!("{} starting", svc.name);
                progress.begin(&task);
                let spec = test_container(env, svc, run, &labels);
                let rx = health_rx.clone();
                pending.push(async move {
                    let t0 = Instant::now();
                    let result = start_and_wait(engine, svc, &spec.name, &spec, rx).await;
                    (svc, task, t0.elapsed(), result)
                });
            }
        }
        if pending.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(TestEnvError::Cancelled),
            event = events.next() => {
                let Some(event) = event else { return Err(TestEnvError::EventsEnded) };
                let event = event?;
                let Some(svc) = names.get(&event.container) else { continue };
                match event.kind {
                    EventKind::Died { exit_code } => {
                        let logs = engine.logs_tail(&event.container, LOG_LINES).await.unwrap_or_default();
                        progress.end(&format!("{} starting", svc.name), Status::Failed, &format!("exited with code {exit_code}"), Duration::ZERO);
                        return Err(TestEnvError::Crashed { service: svc.name.clone(), exit_code, logs });
                    }
                    EventKind::OutOfMemory => {
                        let logs = engine.logs_tail(&event.container, LOG_LINES).await.unwrap_or_default();
                        return Err(TestEnvError::OutOfMemory { service: svc.name.clone(), logs });
                    }
                    EventKind::Health(h) => {
                        health_tx.send_modify(|m| { m.insert(event.container.clone(), h); });
                    }
                    EventKind::Started => {}
                }
            }
            Some((svc, task, elapsed, result)) = pending.next() => {
                match result {
                    Ok((endpoint, how)) => {
                        progress.end(&task, Status::Ok, &how, elapsed);
                        ready.insert(svc.name.as_str());
                        endpoints.insert(svc.name.clone(), endpoint);
                    }
                    Err(e) => {
                        progress.end(&task, Status::Failed, "", elapsed);
                        return Err(e);
                    }
                }
            }
        }
    }
    Ok(TestEnv {
        environment: env.name.clone(),
        run: run.to_string(),
        network,
        expires,
        services: endpoints,
    })
}

pub fn container_name(env: &Environment, run: &str, svc: &Service) -> String {
    format!("{}-test-{run}-{}", env.name, svc.name)
}

/// Fresh volumes for every service volume; for `copyData` services, a copy of production's,
/// taken while that one production container is paused (its processes frozen, so the files are
/// consistent; the pause lasts only as long as the copy and is reported).
async fn prepare_volumes(
    engine: &dyn Engine,
    env: &Environment,
    run: &str,
    opts: &Options,
    labels: &BTreeMap<String, String>,
    progress: &dyn Progress,
) -> Result<(), TestEnvError> {
    let production_volumes: BTreeSet<String> = if opts.copy_data.is_empty() {
        BTreeSet::new()
    } else {
        let sel = BTreeMap::from([
            (labels::ENVIRONMENT.to_string(), env.name.clone()),
            (
                labels::ROLE.to_string(),
                Role::Production.as_str().to_string(),
            ),
        ]);
        engine
            .list_labelled(&sel)
            .await?
            .into_iter()
            .filter(|o| o.kind == ObjectKind::Volume)
            .map(|o| o.name)
            .collect()
    };
    // A platform that runs the pods itself cannot freeze one: its copy is a snapshot,
    // crash-consistent, taken without a pause (so production is not even looked at).
    let frozen = engine.probes() != Probes::ByPlatform;
    let observed = if opts.copy_data.is_empty() || !frozen {
        None
    } else {
        Some(engine.observe(&env.name).await?)
    };
    for svc in &env.services {
        let copy = opts.copy_data.contains(&svc.name);
        let sources: Vec<(String, String)> = svc
            .volumes
            .iter()
            .map(|v| {
                (
                    production_volume(&env.name, &svc.name, &v.name),
                    test_volume(&env.name, run, &svc.name, &v.name),
                )
            })
            .collect();
        if !copy || sources.is_empty() {
            for (_, to) in &sources {
                engine.ensure_volume(to, labels).await?;
            }
            continue;
        }
        if sources
            .iter()
            .any(|(from, _)| !production_volumes.contains(from))
        {
            progress.note(&format!(
                "  note: {} has no production data yet; its test copy starts empty",
                svc.name
            ));
            for (_, to) in &sources {
                engine.ensure_volume(to, labels).await?;
            }
            continue;
        }
        let running = observed
            .as_ref()
            .and_then(|o| o.services.get(&svc.name))
            .and_then(|s| {
                s.containers
                    .iter()
                    .filter(|c| c.state == ContainerState::Running)
                    .max_by_key(|c| c.created)
            })
            .map(|c| c.name.clone());
        let task = format!("{} data copy", svc.name);
        progress.begin(&task);
        let t0 = Instant::now();
        if let Some(c) = &running {
            engine.pause(c).await?;
        }
        let paused_at = Instant::now();
        let mut result = Ok(());
        let mut copied = Copied::Files;
        for (from, to) in &sources {
            match engine.copy_volume(from, to, labels).await {
                Ok(how) => copied = copied.max(how),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Production must never stay frozen: thaw before looking at how the copy went.
        let thawed = match &running {
            Some(c) => engine.unpause(c).await,
            None => Ok(()),
        };
        let paused_for = paused_at.elapsed();
        thawed?;
        result.map_err(|e| TestEnvError::CopyData {
            service: svc.name.clone(),
            reason: e.to_string(),
        })?;
        let how = match (copied, running) {
            (Copied::Streamed, _) => format!(
                "copied file by file by copy Jobs on {} while production kept running (no snapshot to take, a pod cannot be paused: a file written during the copy may arrive torn)",
                engine.describe()
            ),
            (Copied::Snapshot, _) => format!(
                "copied from a snapshot of production's volumes on {} (crash-consistent, production not paused)",
                engine.describe()
            ),
            (Copied::Files, Some(_)) => format!(
                "copied while production {} was paused for {}",
                svc.name,
                crate::progress::seconds(paused_for)
            ),
            (Copied::Files, None) => {
                "copied (production container not running, no pause needed)".to_string()
            }
        };
        progress.end(&task, Status::Ok, &how, t0.elapsed());
    }
    Ok(())
}

/// Starts one service's container and waits until it is healthy (or just running, when nothing
/// can tell its health). Deaths are handled by the caller, which watches the event stream.
async fn start_and_wait(
    engine: &dyn Engine,
    svc: &Service,
    container: &str,
    spec: &crate::engine::ContainerSpec,
    mut health: tokio::sync::watch::Receiver<BTreeMap<String, HealthState>>,
) -> Result<(Endpoint, String), TestEnvError> {
    engine.run_container(spec).await?;
    if engine.probes() == Probes::ByPlatform {
        let how = crate::check::ready::wait(engine, svc, container)
            .await
            .map_err(|reason| TestEnvError::NotReady { reason })?;
        let endpoint = Endpoint {
            container: container.to_string(),
            ports: BTreeMap::new(),
        };
        return Ok((endpoint, how));
    }
    let mut ports = BTreeMap::new();
    for p in &spec.probe_ports {
        if let Some(host) = engine.published_port(container, *p).await? {
            ports.insert(*p, host);
        }
    }
    let endpoint = Endpoint {
        container: container.to_string(),
        ports,
    };
    let t0 = Instant::now();
    let logs = || async {
        engine
            .logs_tail(container, LOG_LINES)
            .await
            .unwrap_or_default()
    };
    let unhealthy = |waited, reason, logs| TestEnvError::Unhealthy {
        service: svc.name.clone(),
        waited,
        reason,
        logs,
    };
    match svc.health.as_ref().map(|h| (h, &h.probe)) {
        Some((h, probe @ (Probe::Http { .. } | Probe::Tcp { .. }))) => {
            // Docker's own rule: failures during the start period do not count; after it,
            // `retries` consecutive failures at `interval` make the service unhealthy.
            let deadline = h.start_period + h.interval * (h.retries.max(1));
            loop {
                let last = match check::probe_once(engine, &endpoint, probe, h.timeout).await {
                    Verdict::Pass { .. } => return Ok((endpoint, format!("healthy ({probe})"))),
                    Verdict::Fail { reason } | Verdict::Inconclusive { reason } => reason,
                };
                if t0.elapsed() >= deadline {
                    return Err(unhealthy(t0.elapsed(), last, logs().await));
                }
                tokio::time::sleep(PROBE_EVERY.min(h.interval)).await;
            }
        }
        Some((h, probe @ Probe::Exec { .. })) => {
            let deadline = h.start_period + (h.interval + h.timeout) * (h.retries.max(1) + 1);
            wait_engine_health(&mut health, container, deadline)
                .await
                .map_err(|reason| unhealthy(t0.elapsed(), reason, Vec::new()))?;
            Ok((endpoint, format!("healthy ({probe})")))
        }
        None => {
            let status = engine.status(container).await?;
            if status.as_ref().is_some_and(|s| s.has_healthcheck) {
                wait_engine_health(&mut health, container, IMAGE_HEALTH_DEADLINE)
                    .await
                    .map_err(|reason| unhealthy(t0.elapsed(), reason, Vec::new()))?;
                return Ok((endpoint, "healthy (the image's HEALTHCHECK)".into()));
            }
            // Nothing tells health: a short settle lets an immediate crash reach the event stream.
            tokio::time::sleep(NO_HEALTH_SETTLE).await;
            Ok((endpoint, "running (no health check)".into()))
        }
    }
}

async fn wait_engine_health(
    health: &mut tokio::sync::watch::Receiver<BTreeMap<String, HealthState>>,
    container: &str,
    deadline: Duration,
) -> Result<(), String> {
    let waited = tokio::time::timeout(
        deadline,
        health.wait_for(|m| m.get(container) == Some(&HealthState::Healthy)),
    )
    .await
    .map(|r| r.map(|_| ()));
    match waited {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("the event stream closed".into()),
        Err(_) => {
            let last = health.borrow().get(container).copied();
            Err(match last {
                Some(HealthState::Unhealthy) => "the engine reports it unhealthy".into(),
                _ => "the engine never reported it healthy".into(),
            })
        }
    }
}

/// Removes everything of one test version. Safe to call for a version that never came up.
pub async fn down(engine: &dyn Engine, env: &str, run: &str) -> Result<Removed, EngineError> {
    engine.remove_labelled(&selector(env, run)).await
}

/// A test version found on the engine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Found {
    pub environment: String,
    pub run: String,
    pub expires: Option<i64>,
    pub owner: Option<String>,
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

/// Test versions on the engine, of one environment or all.
pub async fn list(engine: &dyn Engine, env: Option<&str>) -> Result<Vec<Found>, EngineError> {
    let mut sel = BTreeMap::from([(labels::ROLE.to_string(), Role::Test.as_str().to_string())]);
    if let Some(env) = env {
        sel.insert(labels::ENVIRONMENT.to_string(), env.to_string());
    }
    let mut by_run: BTreeMap<(String, String), Found> = BTreeMap::new();
    for o in engine.list_labelled(&sel).await? {
        let (Some(e), Some(r)) = (o.labels.get(labels::ENVIRONMENT), o.labels.get(labels::RUN))
        else {
            continue;
        };
        let f = by_run
            .entry((e.clone(), r.clone()))
            .or_insert_with(|| Found {
                environment: e.clone(),
                run: r.clone(),
                expires: None,
                owner: None,
                containers: 0,
                networks: 0,
                volumes: 0,
            });
        if let Some(x) = o.labels.get(labels::EXPIRES).and_then(|x| x.parse().ok()) {
            f.expires = Some(f.expires.map_or(x, |y: i64| y.min(x)));
        }
        if f.owner.is_none() {
            f.owner = o.labels.get(labels::OWNER).cloned();
        }
        match o.kind {
            ObjectKind::Container => f.containers += 1,
            ObjectKind::Network => f.networks += 1,
            ObjectKind::Volume => f.volumes += 1,
        }
    }
    Ok(by_run.into_values().collect())
}

/// Why a test version is garbage, if it is.
pub fn garbage_reason(
    found: &Found,
    now: jiff::Timestamp,
    alive: &dyn Fn(&str) -> owner::Liveness,
) -> Option<String> {
    if let Some(owner) = &found.owner
        && alive(owner) == owner::Liveness::Dead
    {
        return Some(format!("the process that ran it ({owner}) is gone"));
    }
    match found.expires {
        Some(x) if x <= now.as_second() => Some("its TTL has passed".into()),
        None => Some("it carries no expiry".into()),
        _ => None,
    }
}

/// Removes test versions whose run is dead or whose TTL has passed, and thaws any production
/// container a killed copy left paused. Returns what it did, one line each.
pub async fn collect_garbage(
    engine: &dyn Engine,
    env: Option<&str>,
    now: jiff::Timestamp,
) -> Result<Vec<String>, EngineError> {
    let mut done = Vec::new();
    for found in list(engine, env).await? {
        if let Some(why) = garbage_reason(&found, now, &owner::liveness) {
            down(engine, &found.environment, &found.run).await?;
            done.push(format!(
                "removed test version {} of {}: {why}",
                found.run, found.environment
            ));
        }
    }
    if let Some(env) = env {
        for svc in engine.observe(env).await?.services.values() {
            for c in svc
                .containers
                .iter()
                .filter(|c| c.state == ContainerState::Paused)
            {
                engine.unpause(&c.name).await?;
                done.push(format!(
                    "resumed production container {}, left paused by an interrupted data copy",
                    c.name
                ));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(expires: Option<i64>, owner: Option<&str>) -> Found {
        Found {
            environment: "shop".into(),
            run: "r1".into(),
            expires,
            owner: owner.map(String::from),
            containers: 1,
            networks: 1,
            volumes: 0,
        }
    }

    #[test]
    fn garbage_is_dead_owner_or_expired() {
        let now = jiff::Timestamp::from_second(1000).unwrap();
        let alive = |_: &str| owner::Liveness::Alive;
        let dead = |_: &str| owner::Liveness::Dead;
        let unknown = |_: &str| owner::Liveness::Unknown;
        assert_eq!(
            garbage_reason(&found(Some(2000), Some("h:1:1")), now, &alive),
            None
        );
        assert!(
            garbage_reason(&found(Some(2000), Some("h:1:1")), now, &dead)
                .unwrap()
                .contains("is gone")
        );
        assert!(
            garbage_reason(&found(Some(999), Some("h:1:1")), now, &alive)
                .unwrap()
                .contains("TTL")
        );
        assert_eq!(
            garbage_reason(&found(Some(2000), None), now, &unknown),
            None
        );
        assert!(garbage_reason(&found(Some(1000), None), now, &unknown).is_some());
    }
}
