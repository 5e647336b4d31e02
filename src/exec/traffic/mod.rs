//! Moving production's traffic between a service's versions, behind one trait: [`Shift`]. The
//! deployment ([`super::deploy`]) decides who should get what share; a shift makes it so on its
//! platform: rollout's edge proxy ([`edge`], docker) or the platform's own Services
//! ([`services`], kubernetes). The step loop never asks which.

mod edge;
mod services;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::Stop;
use crate::engine::Engine;
use crate::manifest::env::{Environment, Service};
use crate::manifest::playbook::{Analysis, Weight};
use crate::progress::Progress;
use crate::report::run::{self as report, CanaryFigures};

/// Production's versions during a run: what ran before, what the run started, what it stopped,
/// and whether it moved traffic yet.
pub(crate) struct Versions<'a> {
    pub engine: &'a dyn Engine,
    pub env: &'a Environment,
    pub run: &'a str,
    /// Where the edge proxy binds public ports.
    pub bind: std::net::IpAddr,
    /// Running containers per service before the run (newest first).
    pub old: BTreeMap<String, Vec<String>>,
    /// Services that get a new container, in dependency order.
    pub changed: Vec<&'a Service>,
    /// Services that run now but are no longer in the manifest.
    pub removed: Vec<String>,
    /// Candidates started so far: service -> container.
    pub candidates: BTreeMap<String, String>,
    /// Old containers of stateful services stopped for their update.
    pub stopped: Vec<String>,
    /// Traffic was moved by this run (so undoing it must move it back).
    pub routed: bool,
}

impl<'a> Versions<'a> {
    /// Changed public services that have a running old version (the ones a canary can split).
    pub fn old_public(&self) -> Vec<&'a Service> {
        self.changed
            .iter()
            .copied()
            .filter(|s| !s.stateful && s.ports.iter().any(|p| p.public.is_some()))
            .filter(|s| self.old.get(&s.name).is_some_and(|o| !o.is_empty()))
            .collect()
    }
}

/// How traffic moves on a platform. Every call is idempotent: recovery calls them again for a
/// run whose journal says they may have happened.
#[async_trait]
pub(crate) trait Shift: Send + Sync {
    /// Whether `env` has traffic for rollout to move here.
    fn needed(&self, env: &Environment) -> bool;

    /// Refuses a canary this platform cannot judge, before anything starts.
    fn check_canary(&self, analysis: Option<&Analysis>) -> Result<(), Stop> {
        let _ = analysis;
        Ok(())
    }

    /// Sends each changed service's candidate `weight` percent of its traffic and its old
    /// version the rest (0: the old version only, 100: the candidates only); unchanged services
    /// stay on what runs.
    async fn route(&mut self, v: &mut Versions<'_>, weight: u8) -> Result<(), Stop>;

    /// Holds a canary at `weight` for `hold`, ending early when a candidate fails; then judges
    /// each candidate's figures by `analysis`, adding them to `figures`. The step's detail.
    #[allow(clippy::too_many_arguments)]
    async fn hold(
        &mut self,
        v: &Versions<'_>,
        weight: Weight,
        hold: Duration,
        analysis: Option<&Analysis>,
        figures: &mut Vec<CanaryFigures>,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<String, Stop>;

    /// Waits (up to `drain`) for the old version's requests in flight to finish, now that no
    /// new ones reach it. Says per container how it went.
    async fn drain_old(&self, v: &Versions<'_>, drain: Duration) -> Result<Vec<String>, Stop>;

    /// After traffic went back to the old version: waits for the requests in flight to
    /// `candidates` to finish. Best effort.
    async fn drain_candidates(&self, v: &Versions<'_>, candidates: &BTreeMap<String, String>) {
        let _ = (v, candidates);
    }

    /// Removes what routes to the services the run removed, once their containers are gone.
    async fn forget_removed(&self, v: &Versions<'_>) -> Result<(), Stop> {
        let _ = v;
        Ok(())
    }
}

/// The shift `engine`'s platform moves traffic with. `split`: a canary of an interrupted run
/// may have split services' traffic (the next whole routing ends the split).
pub(crate) fn for_engine<'a>(engine: &'a dyn Engine, split: bool) -> Box<dyn Shift + 'a> {
    match engine.services() {
        Some(s) => Box::new(services::Services::new(engine, s, split)),
        None => Box::new(edge::Edge),
    }
}

/// One candidate's canary figures for the report, and why the analysis fails it, if it does:
/// fewer requests than it needs, an error rate or a p99 above its limits. A pure function.
fn judge(
    service: &str,
    weight: Weight,
    hold: Duration,
    requests: u64,
    errors: u64,
    p99: Option<Duration>,
    analysis: Option<&Analysis>,
) -> (CanaryFigures, Option<String>) {
    let rate = (requests > 0).then(|| errors as f64 / requests as f64);
    let failure = analysis.and_then(|a| {
        if requests < a.min_requests {
            Some(format!(
                "fewer than the {} requests the analysis needs",
                a.min_requests
            ))
        } else if let (Some(max), Some(r)) = (a.max_error_rate, rate)
            && r > max
        {
            Some(format!("error rate above {:.2}%", max * 100.0))
        } else if let (Some(max), Some(p)) = (a.max_p99, p99)
            && p > max
        {
            Some(format!("p99 above {}ms", max.as_millis()))
        } else {
            None
        }
    });
    let figures = CanaryFigures {
        service: service.to_string(),
        weight: weight.percent(),
        hold_ms: hold.as_millis() as u64,
        requests,
        errors,
        error_rate: rate,
        p99_ms: p99.map(|p| p.as_millis() as u64),
        max_error_rate: analysis.and_then(|a| a.max_error_rate),
        max_p99_ms: analysis
            .and_then(|a| a.max_p99)
            .map(|p| p.as_millis() as u64),
        min_requests: analysis.map(|a| a.min_requests),
        analysis: match (analysis, &failure) {
            (None, _) => report::Analysis::NotAnalysed,
            (Some(_), None) => report::Analysis::Pass,
            (Some(_), Some(reason)) => report::Analysis::Fail {
                reason: reason.clone(),
            },
        },
    };
    (figures, failure)
}

/// Whether a canary's analysis can no longer pass before its hold is over: once the candidate
/// has served the requests the analysis needs, an error rate above the limit fails it now
/// rather than sending users more errors for the rest of the hold. (Latency is judged at the
/// end: a p99 over a short window swings too much to stop on.) A pure function.
fn failed_early(requests: u64, errors: u64, analysis: Option<&Analysis>) -> Option<String> {
    let a = analysis?;
    let max = a.max_error_rate?;
    if requests == 0 || requests < a.min_requests {
        return None;
    }
    let rate = errors as f64 / requests as f64;
    (rate > max).then(|| format!("error rate above {:.2}%", max * 100.0))
}

/// `12.34%`, or `n/a` without requests.
fn percent(rate: Option<f64>) -> String {
    rate.map_or("n/a".into(), |r| format!("{:.2}%", r * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis() -> Analysis {
        Analysis {
            max_error_rate: Some(0.01),
            max_p99: Some(Duration::from_millis(500)),
            min_requests: 10,
        }
    }

    #[test]
    fn the_analysis_fails_too_few_requests_then_errors_then_latency() {
        let w = Weight::new(10).unwrap();
        let h = Duration::from_secs(30);
        let a = analysis();
        let (_, f) = judge("web", w, h, 5, 0, None, Some(&a));
        assert_eq!(
            f.as_deref(),
            Some("fewer than the 10 requests the analysis needs")
        );
        let (fig, f) = judge(
            "web",
            w,
            h,
            100,
            2,
            Some(Duration::from_millis(10)),
            Some(&a),
        );
        assert_eq!(f.as_deref(), Some("error rate above 1.00%"));
        assert_eq!(fig.error_rate, Some(0.02));
        let (_, f) = judge(
            "web",
            w,
            h,
            100,
            0,
            Some(Duration::from_millis(900)),
            Some(&a),
        );
        assert_eq!(f.as_deref(), Some("p99 above 500ms"));
        let (fig, f) = judge(
            "web",
            w,
            h,
            100,
            1,
            Some(Duration::from_millis(10)),
            Some(&a),
        );
        assert_eq!(f, None);
        assert_eq!(fig.analysis, report::Analysis::Pass);
        let (fig, f) = judge("web", w, h, 0, 0, None, None);
        assert_eq!((fig.analysis, f), (report::Analysis::NotAnalysed, None));
    }

    #[test]
    fn a_canary_stops_early_only_once_the_analysis_has_its_requests_and_they_fail_it() {
        let a = analysis();
        assert_eq!(
            failed_early(9, 9, Some(&a)),
            None,
            "too few requests to judge yet"
        );
        assert_eq!(
            failed_early(10, 9, Some(&a)).as_deref(),
            Some("error rate above 1.00%")
        );
        assert_eq!(
            failed_early(200, 2, Some(&a)),
            None,
            "1% is within the limit"
        );
        assert_eq!(
            failed_early(200, 3, Some(&a)).as_deref(),
            Some("error rate above 1.00%")
        );
        assert_eq!(
            failed_early(200, 200, None),
            None,
            "no analysis, nothing to judge"
        );
        let latency_only = Analysis {
            max_error_rate: None,
            ..analysis()
        };
        assert_eq!(failed_early(200, 200, Some(&latency_only)), None);
    }
}
