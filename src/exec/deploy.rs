//! What a promotion or rollback changes in production, and what it has done so far, so it can
//! be finished or undone, by this run or, from its journal, by the next command.
//!
//! Changed services get a candidate container beside the running one (blue-green); traffic moves
//! to them through the platform's [`Shift`], by weight for canary steps and wholly at `promote`,
//! with the old version drained, not cut. Stateful services are never run twice against the same
//! volume: they are stopped, then started at the new version. Anything that fails once
//! production was touched puts the previous version back: traffic on it again, candidates
//! removed, a stopped stateful container started again. The old version's containers are removed
//! only once the whole run has passed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Stop;
use super::first_line;
use super::journal::Journal;
use super::promote::Begin;
use super::traffic::{self, Shift, Versions};
use crate::check::Endpoint;
use crate::engine::spec::{production_container, production_network, production_volume};
use crate::engine::{ContainerState, Engine, Role};
use crate::manifest::env::{Environment, Service};
use crate::manifest::playbook::{Analysis, Weight};
use crate::plan::{Action, Plan};
use crate::progress::{Progress, Status};
use crate::report::run::CanaryFigures;

/// The grace a container gets to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub(super) struct Deployment<'a> {
    v: Versions<'a>,
    shift: Box<dyn Shift + 'a>,
    journal: Journal,
    cancel: CancellationToken,
    /// How long the switch to the new version took (the routing update alone).
    pub switch_ms: Option<u64>,
    /// How long putting the old version back took, from the failure to the routes.
    pub rollback_ms: Option<u64>,
    /// The current canary step's figures, per candidate, for the report.
    pub canary_figures: Vec<CanaryFigures>,
}

impl<'a> Deployment<'a> {
    pub async fn new(
        engine: &'a dyn Engine,
        env: &'a Environment,
        plan: &Plan,
        run: &'a str,
        bind: std::net::IpAddr,
        journal: &Journal,
        cancel: &CancellationToken,
    ) -> Result<Self, Stop> {
        let observed = engine.observe(&env.name).await?;
        let mut old = BTreeMap::new();
        for (name, svc) in &observed.services {
            let mut running: Vec<_> = svc
                .containers
                .iter()
                .filter(|c| c.state == ContainerState::Running)
                .collect();
            running.sort_by_key(|c| std::cmp::Reverse(c.created));
            old.insert(
                name.clone(),
                running.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            );
        }
        let changed = env
            .services
            .iter()
            .filter(|s| {
                plan.services.iter().any(|p| {
                    p.name == s.name
                        && matches!(p.action, Action::Create | Action::Update | Action::Restart)
                })
            })
            .collect();
        let removed = plan
            .services
            .iter()
            .filter(|p| p.action == Action::Remove)
            .map(|p| p.name.clone())
            .collect();
        let v = Versions {
            engine,
            env,
            run,
            bind,
            old,
            changed,
            removed,
            candidates: BTreeMap::new(),
            stopped: Vec::new(),
            routed: false,
        };
        Ok(Self::with(v, false, journal, cancel.clone()))
    }

    fn with(v: Versions<'a>, split: bool, journal: &Journal, cancel: CancellationToken) -> Self {
        Deployment {
            shift: traffic::for_engine(v.engine, split),
            v,
            journal: journal.clone(),
            cancel,
            switch_ms: None,
            rollback_ms: None,
            canary_figures: Vec::new(),
        }
    }

    /// The deployment an interrupted run left, as its journal tells it: what ran before, which
    /// candidates it may have started, which stateful containers it may have stopped, whether it
    /// may have moved traffic. Every entry with an intent counts, done or not: each undo step is
    /// a no-op for what never happened.
    pub fn from_journal(
        engine: &'a dyn Engine,
        env: &'a Environment,
        run: &'a str,
        bind: std::net::IpAddr,
        journal: &Journal,
        begin: &Begin,
        entries: &[crate::store::JournalEntry],
    ) -> Self {
        let mut candidates = BTreeMap::new();
        let mut stopped = Vec::new();
        let mut routed = false;
        let mut split = false;
        for e in entries {
            let text = |k: &str| e.data[k].as_str().unwrap_or_default().to_string();
            match e.step.as_str() {
                "candidate" => {
                    candidates.insert(text("service"), text("container"));
                }
                "stop" => stopped.push(text("container")),
                "canary" => (routed, split) = (true, true),
                "switch" | "finish" | "undo" => routed = true,
                _ => {}
            }
        }
        let v = Versions {
            engine,
            env,
            run,
            bind,
            old: begin.old.clone(),
            changed: env
                .services
                .iter()
                .filter(|s| begin.changed.contains(&s.name))
                .collect(),
            removed: begin.removed.clone(),
            candidates,
            stopped,
            routed: false,
        };
        let mut d = Self::with(v, split, journal, CancellationToken::new());
        d.v.routed = routed && d.shift.needed(env);
        d
    }

    /// Running containers per service before the run, and the services it changes and
    /// removes: what a `begin` entry records.
    pub fn before(&self) -> (&BTreeMap<String, Vec<String>>, Vec<String>, &[String]) {
        (
            &self.v.old,
            self.v.changed.iter().map(|s| s.name.clone()).collect(),
            &self.v.removed,
        )
    }

    pub fn touched(&self) -> bool {
        self.v.routed || !self.v.stopped.is_empty()
    }

    /// The promote step's switch happened: all traffic went to the new version.
    pub fn switched(&self) -> bool {
        self.switch_ms.is_some()
    }

    /// Changed public services that have a running old version (the ones a canary can split).
    pub fn old_public(&self) -> Vec<&'a Service> {
        self.v.old_public()
    }

    /// Starts candidates of the changed stateless services (idempotent), in dependency order.
    async fn start_candidates(&mut self, progress: &dyn Progress) -> Result<(), Stop> {
        let net = production_network(&self.v.env.name);
        let labels = crate::engine::spec::base_labels(self.v.env, Role::Production, self.v.run);
        self.v.engine.ensure_network(&net, &labels).await?;
        for svc in self.v.changed.clone() {
            if svc.stateful || self.v.candidates.contains_key(&svc.name) {
                continue;
            }
            self.start_one(svc, progress).await?;
        }
        Ok(())
    }

    async fn start_one(&mut self, svc: &'a Service, progress: &dyn Progress) -> Result<(), Stop> {
        let (engine, env, run) = (self.v.engine, self.v.env, self.v.run);
        let labels = crate::engine::spec::base_labels(env, Role::Production, run);
        for v in &svc.volumes {
            let name = production_volume(&env.name, &svc.name, &v.name);
            engine.ensure_volume(&name, &labels).await?;
        }
        let spec = production_container(env, svc, run);
        let task = format!("{} {} starting", svc.name, svc.image);
        progress.begin(&task);
        let t0 = Instant::now();
        let entry = serde_json::json!({ "service": svc.name, "container": spec.name });
        self.journal.intent("candidate", entry.clone()).await?;
        self.v
            .candidates
            .insert(svc.name.clone(), spec.name.clone());
        if let Err(e) = engine.run_container(&spec).await {
            progress.end(&task, Status::Failed, &e.to_string(), t0.elapsed());
            return Err(e.into());
        }
        let healthy = tokio::select! {
            r = crate::check::ready::wait(engine, svc, &spec.name) => r,
            () = self.cancel.cancelled() => Err("stopped by a signal".to_string()),
        };
        match healthy {
            Ok(how) => {
                progress.end(&task, Status::Ok, &how, t0.elapsed());
                self.journal.done("candidate", entry).await?;
                Ok(())
            }
            Err(why) => {
                progress.end(&task, Status::Failed, &first_line(&why), t0.elapsed());
                Err(Stop::Reason(why))
            }
        }
    }

    /// A canary step: candidates up, `weight` percent of their services' traffic on them for
    /// `hold`, judged by `analysis`.
    pub async fn canary(
        &mut self,
        weight: Weight,
        hold: Duration,
        analysis: Option<&Analysis>,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<String, Stop> {
        self.shift.check_canary(analysis)?;
        self.start_candidates(progress).await?;
        let entry = serde_json::json!({ "weight": weight.percent() });
        self.journal.intent("canary", entry.clone()).await?;
        self.shift.route(&mut self.v, weight.percent()).await?;
        self.journal.done("canary", entry).await?;
        self.shift
            .hold(
                &self.v,
                weight,
                hold,
                analysis,
                &mut self.canary_figures,
                progress,
                cancel,
            )
            .await
    }

    /// The promote step: candidates up, stateful services stop-started, all traffic switched,
    /// the old version drained. `serving` names the version that gets the traffic, for the
    /// step's detail.
    pub async fn switch(
        &mut self,
        drain: Duration,
        serving: &str,
        progress: &dyn Progress,
    ) -> Result<String, Stop> {
        self.start_candidates(progress).await?;
        for svc in self.v.changed.clone() {
            if !svc.stateful || self.v.candidates.contains_key(&svc.name) {
                continue;
            }
            for c in self.v.old.get(&svc.name).cloned().unwrap_or_default() {
                progress.note(&format!(
                    "  {} is stateful: stopping {c} before starting the new version",
                    svc.name
                ));
                let entry = serde_json::json!({ "service": svc.name, "container": c });
                self.journal.intent("stop", entry.clone()).await?;
                self.v.stopped.push(c.clone());
                self.v.engine.stop_container(&c, STOP_GRACE).await?;
                self.journal.done("stop", entry).await?;
            }
            self.start_one(svc, progress).await?;
        }
        self.journal.intent("switch", serde_json::json!({})).await?;
        let t0 = Instant::now();
        self.shift.route(&mut self.v, 100).await?;
        let switched_in = t0.elapsed();
        self.journal
            .done(
                "switch",
                serde_json::json!({ "ms": switched_in.as_millis() as u64 }),
            )
            .await?;
        self.switch_ms = Some(switched_in.as_millis() as u64);
        let drained = self.drain_old(drain).await?;
        let _ = self
            .journal
            .done("drain", serde_json::json!({ "drained": drained }))
            .await;
        Ok(format!(
            "all traffic on {serving} (switch {} ms){}",
            switched_in.as_millis(),
            if drained.is_empty() {
                String::new()
            } else {
                format!("; {}", drained.join(", "))
            }
        ))
    }

    /// Waits (up to `drain`) for the requests in flight to the old version to finish, now that
    /// no new ones reach it. Says per container how it went.
    pub async fn drain_old(&self, drain: Duration) -> Result<Vec<String>, Stop> {
        if !self.v.routed {
            return Ok(Vec::new());
        }
        self.shift.drain_old(&self.v, drain).await
    }

    /// Where each service runs in production now: candidates for changed ones, else the old.
    pub async fn production_endpoints(&self) -> BTreeMap<String, Endpoint> {
        let mut out = BTreeMap::new();
        for svc in &self.v.env.services {
            let container = self
                .v
                .candidates
                .get(&svc.name)
                .or_else(|| self.v.old.get(&svc.name).and_then(|o| o.first()));
            if let Some(c) = container {
                out.insert(
                    svc.name.clone(),
                    Endpoint {
                        container: c.clone(),
                        ports: BTreeMap::new(),
                    },
                );
            }
        }
        out
    }

    /// Success: the old version's containers go; traffic goes only to what runs.
    pub async fn finish(&mut self, progress: &dyn Progress) -> Result<(), Stop> {
        let v = &mut self.v;
        let mut gone = Vec::new();
        for svc in &v.changed {
            gone.extend(v.old.get(&svc.name).cloned().unwrap_or_default());
        }
        for name in &v.removed {
            gone.extend(v.old.get(name).cloned().unwrap_or_default());
        }
        self.journal
            .intent("finish", serde_json::json!({ "remove": gone }))
            .await?;
        // Old containers leave the table first, so nothing is ever routed to a removed one.
        let (candidates, removed) = (&v.candidates, &v.removed);
        v.old
            .retain(|svc, _| !candidates.contains_key(svc) && !removed.contains(svc));
        if v.routed || self.shift.needed(v.env) {
            self.shift.route(v, 100).await?;
        }
        for c in &gone {
            remove_container(v.engine, c).await?;
        }
        self.shift.forget_removed(v).await?;
        if !gone.is_empty() {
            progress.note(&format!(
                "  removed the previous version: {}",
                gone.join(", ")
            ));
        }
        self.journal
            .done("finish", serde_json::json!({ "removed": gone }))
            .await
            .map_err(Stop::from)
    }

    /// Failure: traffic back on the old version, candidates removed, stopped stateful services
    /// started again.
    pub async fn undo(&mut self, progress: &dyn Progress) -> Result<(), Stop> {
        let t0 = Instant::now();
        // Undo runs even when the journal cannot be written (a full disk): putting production
        // back matters more, and every undo step is idempotent for the next command.
        let _ = self.journal.intent("undo", serde_json::json!({})).await;
        let v = &mut self.v;
        // Traffic is moved without candidates, so only the old version gets any.
        let candidates = std::mem::take(&mut v.candidates);
        for c in std::mem::take(&mut v.stopped) {
            v.engine.start_container(&c).await?;
        }
        if v.routed {
            self.shift.route(v, 0).await?;
            self.rollback_ms = Some(t0.elapsed().as_millis() as u64);
            // A canary sent the candidates requests that may still be in flight: they finish
            // before the candidates stop, or removing them would cut those requests off.
            self.shift.drain_candidates(v, &candidates).await;
        }
        let mut removed = Vec::new();
        for c in candidates.values() {
            remove_container(v.engine, c).await?;
            removed.push(c.clone());
        }
        if !removed.is_empty() || v.routed {
            progress.note(&format!(
                "  put the previous version back; removed {}",
                if removed.is_empty() {
                    "nothing".into()
                } else {
                    removed.join(", ")
                }
            ));
        }
        let _ = self
            .journal
            .done("undo", serde_json::json!({ "removed": removed }))
            .await;
        Ok(())
    }
}

/// Stops a container with a grace period, then removes it.
async fn remove_container(engine: &dyn Engine, container: &str) -> Result<(), Stop> {
    engine.stop_container(container, STOP_GRACE).await?;
    engine.remove_container(container).await.map_err(Stop::from)
}
