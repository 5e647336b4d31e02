//! Traffic through the platform's own Services (kubernetes): a Service's selector points it at
//! one version; a canary splits it (HTTPRoute weights, or replicas side by side) and the next
//! whole routing ends the split. The canary's figures come from the platform's metrics source
//! (Prometheus) when it has one.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Shift, Versions, judge, percent};
use crate::engine::{ContainerState, Engine, ServiceTraffic, Split, Unrouted};
use crate::exec::Stop;
use crate::manifest::env::Environment;
use crate::manifest::playbook::{Analysis, Weight};
use crate::progress::{Progress, Status};
use crate::report::run::CanaryFigures;

pub(super) struct Services<'a> {
    services: &'a dyn ServiceTraffic,
    /// The engine, for messages.
    describe: String,
    /// A canary split services' traffic; the next whole routing ends the split.
    split: bool,
    /// How the current canary step split each service.
    splits: Vec<(String, Split)>,
}

impl<'a> Services<'a> {
    pub fn new(engine: &dyn Engine, services: &'a dyn ServiceTraffic, split: bool) -> Self {
        Services {
            services,
            describe: engine.describe(),
            split,
            splits: Vec::new(),
        }
    }
}

/// Where traffic goes through Services.
enum Table {
    /// Changed services -> the container their Service sends to.
    Whole(BTreeMap<String, String>),
    /// A canary: `(service, stable, candidate)` split at `percent`, the other changed services
    /// whole to one container.
    Split {
        percent: u8,
        whole: BTreeMap<String, String>,
        split: Vec<(String, String, String)>,
    },
}

/// The container each changed service's Service sends its traffic to: the candidate at 100,
/// the old version at 0. Between the two, a service that has both (stateless, an old version
/// running) is split; the others go whole to their candidate.
fn selectors(v: &Versions<'_>, candidate_weight: u8) -> Table {
    let mut whole = BTreeMap::new();
    let mut split = Vec::new();
    for svc in v.changed.iter().filter(|s| !s.ports.is_empty()) {
        let old = v
            .old
            .get(&svc.name)
            .and_then(|o| o.first())
            .filter(|c| !v.stopped.contains(c));
        let candidate = v.candidates.get(&svc.name);
        let target = match (candidate_weight, candidate, old) {
            (100, Some(c), _) => Some(c),
            (0, _, old) => old,
            (_, Some(c), Some(o)) if !svc.stateful => {
                split.push((svc.name.clone(), o.clone(), c.clone()));
                continue;
            }
            (_, c, old) => c.or(old),
        };
        if let Some(c) = target {
            whole.insert(svc.name.clone(), c.clone());
        }
    }
    if split.is_empty() {
        Table::Whole(whole)
    } else {
        Table::Split {
            percent: candidate_weight,
            whole,
            split,
        }
    }
}

#[async_trait]
impl Shift for Services<'_> {
    fn needed(&self, env: &Environment) -> bool {
        env.services.iter().any(|s| !s.ports.is_empty())
    }

    fn check_canary(&self, analysis: Option<&Analysis>) -> Result<(), Stop> {
        if analysis.is_some() && !self.services.measures() {
            return Err(Stop::Reason(format!(
                "a canary analysis needs the requests' figures, and {} has no source for them: name a Prometheus under `kubernetes.prometheus` in rollout.yaml",
                self.describe
            )));
        }
        Ok(())
    }

    async fn route(&mut self, v: &mut Versions<'_>, weight: u8) -> Result<(), Stop> {
        let env = v.env.name.clone();
        match selectors(v, weight) {
            Table::Whole(targets) => {
                for (service, container) in &targets {
                    v.routed = true;
                    self.services
                        .route_service(&env, service, container)
                        .await
                        .map_err(Stop::from)?;
                    if self.split {
                        let kept = Some(container.as_str())
                            .filter(|c| v.candidates.get(service).map(String::as_str) == Some(c));
                        self.services
                            .end_split(&env, service, kept)
                            .await
                            .map_err(Stop::from)?;
                    }
                }
                self.split = false;
            }
            Table::Split {
                percent,
                whole,
                split,
            } => {
                for (service, container) in &whole {
                    v.routed = true;
                    self.services
                        .route_service(&env, service, container)
                        .await
                        .map_err(Stop::from)?;
                }
                self.splits.clear();
                for (service, stable, candidate) in &split {
                    v.routed = true;
                    self.split = true;
                    let how = self
                        .services
                        .split_service(&env, service, stable, candidate, percent)
                        .await
                        .map_err(Stop::from)?;
                    self.splits.push((service.clone(), how));
                }
            }
        }
        Ok(())
    }

    /// Holds the split for `hold`, ending it early when a candidate stops or crash-loops; then
    /// asks the platform's metrics source (if it has one) for each candidate's requests over
    /// the hold, and judges them by `analysis`. The step says how each service was split, the
    /// share its candidate really got, and its figures.
    async fn hold(
        &mut self,
        v: &Versions<'_>,
        weight: Weight,
        hold: Duration,
        analysis: Option<&Analysis>,
        figures: &mut Vec<CanaryFigures>,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<String, Stop> {
        // The runtime's clock: a paused one in tests moves with the sleeps below.
        let t0 = tokio::time::Instant::now();
        let task = format!("canary at {}%", weight.percent());
        progress.begin(&task);
        loop {
            if cancel.is_cancelled() {
                progress.end(&task, Status::Failed, "stopped by a signal", t0.elapsed());
                return Err(Stop::Reason("stopped by a signal".into()));
            }
            for (svc, container) in &v.candidates {
                let status = v.engine.status(container).await.map_err(|e| {
                    progress.end(&task, Status::Failed, "the engine was lost", t0.elapsed());
                    Stop::from(e)
                })?;
                let failure = match status {
                    None => Some(format!("the {svc} candidate is gone during the canary")),
                    Some(s) => match s.state {
                        ContainerState::Exited { code } => Some(format!(
                            "the {svc} candidate exited with code {code} during the canary"
                        )),
                        ContainerState::Restarting => Some(format!(
                            "the {svc} candidate is crash-looping ({} restarts) during the canary",
                            s.restart_count
                        )),
                        _ => None,
                    },
                };
                if let Some(reason) = failure {
                    progress.end(&task, Status::Failed, "a candidate failed", t0.elapsed());
                    return Err(Stop::Reason(reason));
                }
            }
            if t0.elapsed() >= hold {
                break;
            }
            // The platform is asked once per poll: a status is an API call or two.
            tokio::time::sleep(crate::engine::kube::POLL.min(hold.saturating_sub(t0.elapsed())))
                .await;
        }
        progress.end(&task, Status::Ok, "hold done", t0.elapsed());
        let measured = self.services.measures();
        let mut lines = Vec::new();
        for (svc, split) in self.splits.clone() {
            let share = if split.percent == weight.percent() {
                format!("{}%", split.percent)
            } else {
                format!("{}% (asked {}%)", split.percent, weight.percent())
            };
            let mut line = format!("{svc}: {share} to the candidate by {}", split.how);
            let candidate = v.candidates.get(&svc).cloned().unwrap_or_default();
            let measured_here = self
                .services
                .measure(&v.env.name, &svc, &candidate, hold)
                .await
                .map_err(Stop::from)?;
            if let Some(m) = measured_here {
                let (figure, failure) =
                    judge(&svc, weight, hold, m.requests, m.errors, m.p99, analysis);
                line.push_str(&format!(
                    "; {} requests, error rate {}, p99 {}",
                    figure.requests,
                    percent(figure.error_rate),
                    figure.p99_ms.map_or("n/a".into(), |p| format!("{p}ms"))
                ));
                progress.note(&format!("  {line}"));
                figures.push(figure);
                if let Some(reason) = failure {
                    return Err(Stop::Reason(format!("{line}: {reason}")));
                }
            } else {
                progress.note(&format!("  {line}"));
            }
            lines.push(line);
        }
        Ok(format!(
            "{}% to the new version for {}: {}{}",
            weight.percent(),
            crate::manifest::duration::format(hold),
            if lines.is_empty() {
                "no service to split".to_string()
            } else {
                lines.join("; ")
            },
            if measured {
                " (figures from Prometheus)"
            } else {
                "; requests not measured on this platform"
            }
        ))
    }

    async fn drain_old(&self, v: &Versions<'_>, drain: Duration) -> Result<Vec<String>, Stop> {
        let mut drained = Vec::new();
        for svc in v.changed.iter().filter(|s| !s.ports.is_empty()) {
            for c in v.old.get(&svc.name).into_iter().flatten() {
                match self
                    .services
                    .wait_unrouted(&v.env.name, &svc.name, c, drain)
                    .await
                {
                    Ok(Unrouted::Done) => {
                        drained.push(format!("{c} no longer an endpoint of {}", svc.name))
                    }
                    Ok(Unrouted::StillRouted { endpoints }) => drained.push(format!(
                        "{c}: still {endpoints} endpoint(s) of {} after {}",
                        svc.name,
                        crate::manifest::duration::format(drain)
                    )),
                    Err(e) => drained.push(format!("{c}: {e}")),
                }
            }
        }
        Ok(drained)
    }

    async fn forget_removed(&self, v: &Versions<'_>) -> Result<(), Stop> {
        for name in &v.removed {
            self.services
                .remove_route(&v.env.name, name)
                .await
                .map_err(Stop::from)?;
        }
        Ok(())
    }
}
