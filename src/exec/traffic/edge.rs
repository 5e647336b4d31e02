//! Traffic through rollout's edge proxy (docker): the proxy holds the public ports and moves
//! requests between containers by weight; its admin API takes the routing table, counts each
//! backend's requests (the canary's figures) and says when a backend has drained.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Shift, Versions, failed_early, judge, percent};
use crate::edge;
use crate::engine::ContainerState;
use crate::engine::spec::production_network;
use crate::exec::Stop;
use crate::manifest::env::Environment;
use crate::manifest::playbook::{self, Analysis, Weight as StepWeight};
use crate::progress::{Progress, Status};
use crate::proxy::routes::{Backend, Listener, Protocol, Routes, Weight};
use crate::proxy::stats::{StatsSnapshot, Window};
use crate::report::run::CanaryFigures;

/// The edge proxy's side of a run; it keeps nothing itself (the table lives in the proxy).
pub(super) struct Edge;

/// The routing table with each changed public service's candidate at `weight` and its old
/// version at the rest; unchanged services on what runs.
async fn routes(v: &Versions<'_>, candidate_weight: u8) -> Result<Routes, Stop> {
    let net = production_network(&v.env.name);
    let mut listeners = BTreeMap::new();
    for svc in &v.env.services {
        for port in svc.ports.iter().filter(|p| p.public.is_some()) {
            let public = port.public.expect("filtered");
            let mut backends = Vec::new();
            let candidate = v.candidates.get(&svc.name);
            let old = v.old.get(&svc.name).and_then(|o| o.first());
            let (old_weight, new_weight) = match (candidate, old) {
                (Some(_), Some(_)) if svc.stateful => (0, 100),
                (Some(_), Some(_)) => (100 - candidate_weight, candidate_weight),
                (Some(_), None) => (0, 100),
                (None, _) => (100, 0),
            };
            for (container, weight) in [(old, old_weight), (candidate, new_weight)] {
                let Some(container) = container else { continue };
                if v.stopped.contains(container) {
                    continue;
                }
                let ip = v.engine.address(container, &net).await?;
                let Some(ip) = ip else { continue };
                backends.push(Backend {
                    id: container.clone(),
                    addr: SocketAddr::new(ip, port.container),
                    weight: Weight::new(weight).expect("0..=100"),
                });
            }
            let protocol = match port.protocol {
                crate::manifest::env::Protocol::Http => Protocol::Http,
                crate::manifest::env::Protocol::Tcp => Protocol::Tcp,
            };
            listeners.insert(public, Listener { protocol, backends });
        }
    }
    Ok(Routes {
        listeners,
        drain_ms: None,
    })
}

async fn stats(v: &Versions<'_>) -> Result<StatsSnapshot, Stop> {
    let admin = edge::admin(v.engine, &v.env.name).await?;
    admin.stats().await.map_err(Stop::from)
}

#[async_trait]
impl Shift for Edge {
    fn needed(&self, env: &Environment) -> bool {
        edge::needed(env)
    }

    async fn route(&mut self, v: &mut Versions<'_>, weight: u8) -> Result<(), Stop> {
        let routes = routes(v, weight).await?;
        if !edge::needed(v.env) {
            return Ok(());
        }
        edge::ensure(v.engine, v.env, v.run, v.bind).await?;
        let admin = edge::admin(v.engine, &v.env.name).await?;
        v.routed = true;
        admin
            .put_routes(&routes)
            .await
            .map_err(|e| Stop::Reason(format!("the edge proxy refused the routes: {e}")))?;
        Ok(())
    }

    async fn hold(
        &mut self,
        v: &Versions<'_>,
        weight: StepWeight,
        hold: Duration,
        analysis: Option<&Analysis>,
        figures: &mut Vec<CanaryFigures>,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<String, Stop> {
        let before = stats(v).await?;
        let t0 = Instant::now();
        let task = format!("canary at {}%", weight.percent());
        progress.begin(&task);
        let mut last_update = Instant::now();
        while t0.elapsed() < hold {
            if cancel.is_cancelled() {
                progress.end(&task, Status::Failed, "stopped by a signal", t0.elapsed());
                return Err(Stop::Reason("stopped by a signal".into()));
            }
            for (svc, container) in &v.candidates {
                // An engine lost past its retries ends the canary now, not after the hold.
                let status = v.engine.status(container).await.map_err(|e| {
                    progress.end(&task, Status::Failed, "the engine was lost", t0.elapsed());
                    Stop::from(e)
                })?;
                if let Some(s) = status
                    && let ContainerState::Exited { code } = s.state
                {
                    progress.end(&task, Status::Failed, "the candidate exited", t0.elapsed());
                    return Err(Stop::Reason(format!(
                        "the {svc} candidate exited with code {code} during the canary"
                    )));
                }
            }
            // The weight and the candidates' figures so far, live on a terminal; an analysis
            // that can no longer pass ends the canary now.
            if last_update.elapsed() >= Duration::from_secs(1) {
                last_update = Instant::now();
                if let Ok(now) = stats(v).await {
                    for svc in v.old_public() {
                        let Some(c) = v.candidates.get(&svc.name) else {
                            continue;
                        };
                        let Some(after) = now.backends.get(c) else {
                            continue;
                        };
                        let w = Window::between(before.backends.get(c), after);
                        let errors = w.responses.server_error + w.connection_errors;
                        if let Some(reason) = failed_early(w.completed(), errors, analysis) {
                            progress.end(&task, Status::Failed, &reason, t0.elapsed());
                            let p99 = w.p99();
                            let (figure, _) = judge(
                                &svc.name,
                                weight,
                                hold,
                                w.completed(),
                                errors,
                                p99,
                                analysis,
                            );
                            figures.push(figure);
                            return Err(Stop::Reason(format!(
                                "{}: {} requests, error rate {}, p99 {}: {reason} (stopped {} into the hold of {})",
                                svc.name,
                                w.completed(),
                                percent(w.error_rate()),
                                p99.map_or("n/a".into(), |p| format!("{}ms", p.as_millis())),
                                crate::manifest::duration::format(Duration::from_secs(
                                    t0.elapsed().as_secs()
                                )),
                                crate::manifest::duration::format(hold)
                            )));
                        }
                    }
                    let live: Vec<String> = v
                        .candidates
                        .iter()
                        .filter_map(|(svc, c)| {
                            let w = Window::between(before.backends.get(c), now.backends.get(c)?);
                            Some(format!(
                                "{svc} {} requests, error rate {}",
                                w.completed(),
                                percent(w.error_rate())
                            ))
                        })
                        .collect();
                    progress.update(&task, &live.join(", "));
                }
            }
            tokio::time::sleep(Duration::from_millis(250).min(hold.saturating_sub(t0.elapsed())))
                .await;
        }
        progress.end(&task, Status::Ok, "hold done", t0.elapsed());
        let after = stats(v).await?;
        let mut lines = Vec::new();
        for svc in v.old_public() {
            let Some(container) = v.candidates.get(&svc.name) else {
                continue;
            };
            let Some(now) = after.backends.get(container) else {
                continue;
            };
            let w = Window::between(before.backends.get(container), now);
            let p99 = w.p99();
            let line = format!(
                "{}: {} requests, error rate {}, p99 {}",
                svc.name,
                w.completed(),
                percent(w.error_rate()),
                p99.map_or("n/a".into(), |p| format!("{}ms", p.as_millis()))
            );
            progress.note(&format!("  {line}"));
            let (figure, failure) = judge(
                &svc.name,
                weight,
                hold,
                w.completed(),
                w.responses.server_error + w.connection_errors,
                p99,
                analysis,
            );
            figures.push(figure);
            if let Some(reason) = failure {
                return Err(Stop::Reason(format!("{line}: {reason}")));
            }
            lines.push(line);
        }
        Ok(format!(
            "{}% to the new version for {}: {}",
            weight.percent(),
            crate::manifest::duration::format(hold),
            lines.join("; ")
        ))
    }

    async fn drain_old(&self, v: &Versions<'_>, drain: Duration) -> Result<Vec<String>, Stop> {
        let admin = edge::admin(v.engine, &v.env.name).await?;
        let mut drained = Vec::new();
        for svc in &v.changed {
            for c in v.old.get(&svc.name).into_iter().flatten() {
                match admin.wait_drained(c, drain).await {
                    Ok(crate::proxy::client::Drain::Drained) => {
                        drained.push(format!("{c} drained"))
                    }
                    Ok(crate::proxy::client::Drain::TimedOut { in_flight }) => {
                        drained.push(format!(
                            "{c}: {in_flight} still open after {}",
                            crate::manifest::duration::format(drain)
                        ))
                    }
                    Err(e) => drained.push(format!("{c}: {e}")),
                }
            }
        }
        Ok(drained)
    }

    /// Waits (up to [`playbook::DEFAULT_DRAIN`]) for the requests in flight to `candidates` to
    /// finish, as the edge proxy counts them. An edge proxy that cannot be asked leaves nothing
    /// to wait for.
    async fn drain_candidates(&self, v: &Versions<'_>, candidates: &BTreeMap<String, String>) {
        if candidates.is_empty() {
            return;
        }
        let Ok(admin) = edge::admin(v.engine, &v.env.name).await else {
            return;
        };
        for c in candidates.values() {
            let _ = admin.wait_drained(c, playbook::DEFAULT_DRAIN).await;
        }
    }
}
