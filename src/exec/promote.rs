//! Promotion: the playbook run against production, after its test version passed.
//!
//! Changed services get a candidate container beside the running one (blue-green); services
//! with public ports are switched by the edge proxy, by weight for canary steps and wholly at
//! `promote`, with the old version drained, not cut. Stateful services are never run twice
//! against the same volume: they are stopped, then started at the new version. Anything that
//! fails once production was touched puts the previous version back: the proxy routes to it
//! again, candidates are removed, a stopped stateful container is started again. The old
//! version's containers are removed only once the whole run has passed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::first_line;
use super::journal::Journal;
use super::report::{
    self, CanaryFigures, Emergency, Outcome, RunKind, RunReport, StepReport, StepStatus,
};
use super::settle;
use super::walk::{Mode, Production, Walk};
use crate::check::Endpoint;
use crate::edge;
use crate::engine::spec::{production_container, production_network, production_volume};
use crate::engine::{ContainerState, Engine, Role, Traffic, Unrouted};
use crate::gate;
use crate::manifest::env::{Environment, Service};
use crate::manifest::playbook::{self, Analysis, Playbook, Step};
use crate::plan::{Action, Plan};
use crate::progress::{Progress, Status};
use crate::proxy::routes::{Backend, Listener, Protocol, Routes, Weight};
use crate::proxy::stats::{StatsSnapshot, Window};
use crate::store::{Grant, NewRevision};

#[derive(Debug, Clone)]
pub struct Options {
    /// Where the edge proxy binds public ports.
    pub bind: std::net::IpAddr,
    /// `--emergency --reason`: go ahead outside the change window, recorded loudly.
    pub emergency: Option<String>,
    /// Why this change (a commit, a note), recorded in the revision.
    pub reason: Option<String>,
    /// A rollback: no test version, no canary; straight to the switch.
    pub kind: RunKind,
    /// Approvals and authorizations recorded for this run (`rollout approve`).
    pub grants: Vec<Grant>,
    /// A run parked at a gate, resumed: where, and what it did before.
    pub resume: Option<Resume>,
}

/// Where a parked run resumes.
#[derive(Debug, Clone)]
pub struct Resume {
    pub gate_step: usize,
    /// The steps done before the gate, as reported then.
    pub steps: Vec<StepReport>,
    /// Who started it and when (the report's own fields).
    pub user: String,
    pub started: String,
}

/// Why the run stops.
pub(super) struct Stop(pub String);

/// What this run changes in production and what it has done so far, so it can be undone.
pub(super) struct Deployment<'a> {
    engine: &'a dyn Engine,
    journal: Journal,
    cancel: CancellationToken,
    env: &'a Environment,
    run: &'a str,
    bind: std::net::IpAddr,
    /// Running containers per service before the run (newest first).
    old: BTreeMap<String, Vec<String>>,
    /// Services that get a new container, in dependency order.
    changed: Vec<&'a Service>,
    /// Services that run now but are no longer in the manifest.
    removed: Vec<String>,
    /// Candidates started so far: service -> container.
    candidates: BTreeMap<String, String>,
    /// Old containers of stateful services stopped for their update.
    stopped: Vec<String>,
    /// The proxy table was changed by this run.
    routed: bool,
    /// [`Traffic::Services`]: a canary split services' traffic ([`Engine::split_service`]);
    /// the next whole routing ends the split.
    split: bool,
    /// How long the switch to the new version took (the routing update alone).
    pub(super) switch_ms: Option<u64>,
    /// How long putting the old version back took, from the failure to the routes.
    pub(super) rollback_ms: Option<u64>,
    /// The current canary step's figures, per candidate, for the report.
    pub(super) canary_figures: Vec<CanaryFigures>,
    /// [`Traffic::Services`]: how the current canary step split each service.
    splits: Vec<(String, crate::engine::Split)>,
}

/// Runs `playbook` against production for the changes in `plan` (a promotion, or a rollback
/// when `opts.kind` says so).
#[allow(clippy::too_many_arguments)]
pub async fn promote(
    engine: &dyn Engine,
    journal: &Journal,
    env: &Environment,
    playbook: &Playbook,
    plan: &Plan,
    run: &str,
    now: jiff::Timestamp,
    opts: &Options,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> RunReport {
    let started = Instant::now();
    let mode = Mode::of(opts.kind);
    let mut report = RunReport::new(opts.kind, run, env, playbook, now);
    report.reason = opts.reason.clone();
    report.emergency = opts.emergency.clone().map(|reason| Emergency { reason });
    report.changes = report::changes(&plan.services, &report::snapshots(env));
    let request = gate::Request {
        kind: opts.kind,
        run,
        emergency: opts.emergency.as_deref(),
    };
    let decision = gate::evaluate(&plan.gates, playbook, &opts.grants, now, request);
    if let gate::Decision::Refused { reason } = decision {
        report.outcome = Outcome::Refused { reason };
        return report;
    }
    if let Some(r) = &opts.emergency {
        progress.note(&format!(
            "EMERGENCY: the change window is overridden ({r}); this is recorded in the run's report"
        ));
        report.steps.push(StepReport::new(
            0,
            "emergency override of the change window",
            StepStatus::Ok,
            r.clone(),
        ));
    }
    match decision {
        gate::Decision::Refused { .. } => unreachable!("returned above"),
        // Third parties first: without their authorization nothing starts.
        gate::Decision::Await { awaiting, reason } => {
            report.awaiting = awaiting;
            report.gate_step = Some(opts.resume.as_ref().map_or(0, |r| r.gate_step));
            report.outcome = Outcome::Refused { reason };
            return report;
        }
        gate::Decision::Proceed { authorized } => {
            for (party, x) in authorized {
                report.authorizations.push(report::Authorization {
                    party,
                    reference: x.reference.clone().unwrap_or_default(),
                    by: x.who.clone(),
                    note: x.note.clone(),
                    expires: x.expires,
                });
            }
        }
    }
    let first_step = match &opts.resume {
        Some(r) => {
            report.steps = r.steps.clone();
            report.user = r.user.clone();
            report.started = r.started.clone();
            progress.note(&format!(
                "resuming run {run} (started by {}) at step {}",
                r.user,
                r.gate_step + 1
            ));
            r.gate_step
        }
        None => 0,
    };
    let deployment = match Deployment::new(engine, env, plan, run, opts.bind, journal, cancel).await
    {
        Ok(d) => d,
        Err(Stop(reason)) => {
            report.outcome = Outcome::Failed { reason };
            return report;
        }
    };
    let steps = mode.steps(playbook);
    let mut w = Walk {
        engine,
        env,
        playbook,
        run,
        now,
        mode,
        progress,
        cancel,
        report,
        test_env: None,
        // A resumed run began its test version before its gate.
        made_test_env: steps
            .iter()
            .take(first_step)
            .any(|s| matches!(s, Step::TestEnv { .. })),
        parked: false,
        production: Some(Production {
            journal,
            plan,
            opts,
            deployment,
            revision: None,
        }),
    };
    let mut failed = w.steps(first_step).await;
    let signalled = cancel.is_cancelled();
    let p = w
        .production
        .as_mut()
        .expect("a promotion has a production side");
    let d = &mut p.deployment;
    // A run must reach `promote`: a playbook that only canaries never switches production.
    if failed.is_none() && !d.switched() {
        failed = Some("the playbook has no promote step: production was not switched".into());
    }
    let facts = settle::Facts {
        failed,
        parked: w.parked,
        signalled,
        switched: d.switched(),
        touched: d.touched(),
    };
    let done = match settle::action(&facts) {
        settle::Action::Park => Ok(()),
        settle::Action::Finish => d.finish(progress).await,
        settle::Action::Undo => d.undo(progress).await,
    };
    let settled = settle::outcome(
        &facts,
        done.as_ref().map(|_| ()).map_err(|Stop(e)| e.as_str()),
        &env.name,
    );
    let (switch_ms, rollback_ms, revision) = (d.switch_ms, d.rollback_ms, p.revision);
    w.teardown().await;
    let mut report = w.report;
    if let (true, Some(number)) = (settled.settled, revision) {
        let revision_outcome = settle::revision_outcome(&facts, &settled.outcome);
        let (name, r) = (env.name.clone(), run.to_string());
        let data = serde_json::to_value(&settled.outcome).unwrap_or_default();
        let ended = match journal
            .store()
            .call(move |s| s.end_run(&name, &r, number, revision_outcome, &data))
            .await
        {
            Ok(()) => journal.sync().await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = ended {
            progress.note(&format!(
                "  the run could not be closed in the journal ({e}); the next command settles it"
            ));
        } else {
            crate::exec::journal::crash_point("end.done");
        }
    }
    report.switch_ms = switch_ms;
    report.rollback_ms = rollback_ms;
    report.outcome = settled.outcome;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// Records the run's revision and its journal's `begin`, just before production is changed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn begin_revision(
    journal: &Journal,
    env: &Environment,
    playbook: &Playbook,
    plan: &Plan,
    run: &str,
    now: jiff::Timestamp,
    opts: &Options,
    report: &RunReport,
    d: &Deployment<'_>,
) -> Result<u64, String> {
    let new = NewRevision {
        environment: env.name.clone(),
        run: run.to_string(),
        started: now,
        user: report.user.clone(),
        playbook: playbook.name.clone(),
        reason: opts
            .reason
            .clone()
            .or_else(|| opts.emergency.as_ref().map(|r| format!("emergency: {r}"))),
        changes: serde_json::to_value(&plan.services).unwrap_or_default(),
        services: serde_json::to_value(report::snapshots(env)).unwrap_or_default(),
        images: env.services.iter().map(|s| s.image.clone()).collect(),
    };
    let begin = serde_json::to_value(Begin {
        kind: opts.kind,
        revision: 0,
        user: report.user.clone(),
        owner: crate::owner::current(),
        old: d.old.clone(),
        changed: d.changed.iter().map(|s| s.name.clone()).collect(),
        removed: d.removed.clone(),
    })
    .unwrap_or_default();
    let revision = journal
        .store()
        .call(move |s| s.begin_run(new, begin))
        .await
        .map_err(|e| format!("the store: {e}"))?;
    journal.sync().await?;
    crate::exec::journal::crash_point("begin.done");
    Ok(revision.number)
}

/// What a run's `begin` entry records: enough to finish or undo it from the journal alone.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Begin {
    pub kind: RunKind,
    /// Filled in by the store with the revision number.
    #[serde(default)]
    pub revision: u64,
    pub user: String,
    /// `host:pid:start` of the process that ran it.
    pub owner: String,
    /// Running containers per service before the run, newest first.
    pub old: BTreeMap<String, Vec<String>>,
    /// Services that get a new container.
    pub changed: Vec<String>,
    /// Services that are removed.
    pub removed: Vec<String>,
}

impl<'a> Deployment<'a> {
    pub(super) async fn new(
        engine: &'a dyn Engine,
        env: &'a Environment,
        plan: &Plan,
        run: &'a str,
        bind: std::net::IpAddr,
        journal: &Journal,
        cancel: &CancellationToken,
    ) -> Result<Self, Stop> {
        let observed = engine
            .observe(&env.name)
            .await
            .map_err(|e| Stop(e.to_string()))?;
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
        Ok(Deployment {
            engine,
            journal: journal.clone(),
            cancel: cancel.clone(),
            env,
            run,
            bind,
            old,
            changed,
            removed,
            candidates: BTreeMap::new(),
            stopped: Vec::new(),
            routed: false,
            split: false,
            splits: Vec::new(),
            switch_ms: None,
            rollback_ms: None,
            canary_figures: Vec::new(),
        })
    }

    /// The deployment an interrupted run left, as its journal tells it: what ran before, which
    /// candidates it may have started, which stateful containers it may have stopped, whether it
    /// may have changed the proxy's table. Every entry with an intent counts, done or not: each
    /// undo step is a no-op for what never happened.
    pub(super) fn from_journal(
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
        Deployment {
            engine,
            journal: journal.clone(),
            cancel: CancellationToken::new(),
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
            routed: routed && routing_needed(engine, env),
            split,
            canary_figures: Vec::new(),
            splits: Vec::new(),
            switch_ms: None,
            rollback_ms: None,
        }
    }

    pub(super) fn touched(&self) -> bool {
        self.routed || !self.stopped.is_empty()
    }

    /// The promote step's switch happened: all traffic went to the new version.
    pub(super) fn switched(&self) -> bool {
        self.switch_ms.is_some()
    }

    /// Changed public services that have a running old version (the ones a canary can split).
    pub(super) fn old_public(&self) -> Vec<&'a Service> {
        self.changed
            .iter()
            .copied()
            .filter(|s| !s.stateful && s.ports.iter().any(|p| p.public.is_some()))
            .filter(|s| self.old.get(&s.name).is_some_and(|o| !o.is_empty()))
            .collect()
    }

    /// Starts candidates of the changed stateless services (idempotent), in dependency order.
    async fn start_candidates(&mut self, progress: &dyn Progress) -> Result<(), Stop> {
        let net = production_network(&self.env.name);
        let labels = crate::engine::spec::base_labels(self.env, Role::Production, self.run);
        self.engine
            .ensure_network(&net, &labels)
            .await
            .map_err(|e| Stop(e.to_string()))?;
        for svc in self.changed.clone() {
            if svc.stateful || self.candidates.contains_key(&svc.name) {
                continue;
            }
            self.start_one(svc, progress).await?;
        }
        Ok(())
    }

    async fn start_one(&mut self, svc: &'a Service, progress: &dyn Progress) -> Result<(), Stop> {
        let labels = crate::engine::spec::base_labels(self.env, Role::Production, self.run);
        for v in &svc.volumes {
            let name = production_volume(&self.env.name, &svc.name, &v.name);
            self.engine
                .ensure_volume(&name, &labels)
                .await
                .map_err(|e| Stop(e.to_string()))?;
        }
        let spec = production_container(self.env, svc, self.run);
        let task = format!("{} {} starting", svc.name, svc.image);
        progress.begin(&task);
        let t0 = Instant::now();
        let entry = serde_json::json!({ "service": svc.name, "container": spec.name });
        self.journal
            .intent("candidate", entry.clone())
            .await
            .map_err(Stop)?;
        self.candidates.insert(svc.name.clone(), spec.name.clone());
        if let Err(e) = self.engine.run_container(&spec).await {
            progress.end(&task, Status::Failed, &e.to_string(), t0.elapsed());
            return Err(Stop(e.to_string()));
        }
        let healthy = tokio::select! {
            r = super::health::wait(self.engine, svc, &spec.name) => r,
            () = self.cancel.cancelled() => Err("stopped by a signal".to_string()),
        };
        match healthy {
            Ok(how) => {
                progress.end(&task, Status::Ok, &how, t0.elapsed());
                self.journal.done("candidate", entry).await.map_err(Stop)?;
                Ok(())
            }
            Err(why) => {
                progress.end(&task, Status::Failed, &first_line(&why), t0.elapsed());
                Err(Stop(why))
            }
        }
    }

    /// The routing table with each changed public service's candidate at `weight` and its old
    /// version at the rest; unchanged services on what runs.
    async fn routes(&self, candidate_weight: u8) -> Result<Routes, Stop> {
        let net = production_network(&self.env.name);
        let mut listeners = BTreeMap::new();
        for svc in &self.env.services {
            for port in svc.ports.iter().filter(|p| p.public.is_some()) {
                let public = port.public.expect("filtered");
                let mut backends = Vec::new();
                let candidate = self.candidates.get(&svc.name);
                let old = self.old.get(&svc.name).and_then(|o| o.first());
                let (old_weight, new_weight) = match (candidate, old) {
                    (Some(_), Some(_)) if svc.stateful => (0, 100),
                    (Some(_), Some(_)) => (100 - candidate_weight, candidate_weight),
                    (Some(_), None) => (0, 100),
                    (None, _) => (100, 0),
                };
                for (container, weight) in [(old, old_weight), (candidate, new_weight)] {
                    let Some(container) = container else { continue };
                    if self.stopped.contains(container) {
                        continue;
                    }
                    let ip = self
                        .engine
                        .address(container, &net)
                        .await
                        .map_err(|e| Stop(e.to_string()))?;
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

    /// Where traffic goes with the candidates at `candidate_weight`, as this platform moves it.
    async fn table(&self, candidate_weight: u8) -> Result<Table, Stop> {
        match self.engine.traffic() {
            Traffic::EdgeProxy => Ok(Table::Edge(self.routes(candidate_weight).await?)),
            Traffic::Services => Ok(self.selectors(candidate_weight)),
        }
    }

    /// [`Traffic::Services`]: the container each changed service's Service sends its traffic
    /// to: the candidate at 100, the old version at 0. Between the two, a service that has both
    /// (stateless, an old version running) is split; the others go whole to their candidate.
    fn selectors(&self, candidate_weight: u8) -> Table {
        let mut whole = BTreeMap::new();
        let mut split = Vec::new();
        for svc in self.changed.iter().filter(|s| !s.ports.is_empty()) {
            let old = self
                .old
                .get(&svc.name)
                .and_then(|o| o.first())
                .filter(|c| !self.stopped.contains(c));
            let candidate = self.candidates.get(&svc.name);
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
            Table::Services(whole)
        } else {
            Table::Split {
                percent: candidate_weight,
                whole,
                split,
            }
        }
    }

    async fn put_routes(&mut self, table: &Table) -> Result<(), Stop> {
        let routes = match table {
            Table::Edge(routes) => routes,
            Table::Services(targets) => {
                let services = crate::engine::traffic::services(self.engine)
                    .map_err(|e| Stop(e.to_string()))?;
                for (service, container) in targets {
                    self.routed = true;
                    services
                        .route_service(&self.env.name, service, container)
                        .await
                        .map_err(|e| Stop(e.to_string()))?;
                    if self.split {
                        let kept = Some(container.as_str()).filter(|c| {
                            self.candidates.get(service).map(String::as_str) == Some(c)
                        });
                        services
                            .end_split(&self.env.name, service, kept)
                            .await
                            .map_err(|e| Stop(e.to_string()))?;
                    }
                }
                self.split = false;
                return Ok(());
            }
            Table::Split {
                percent,
                whole,
                split,
            } => {
                let services = crate::engine::traffic::services(self.engine)
                    .map_err(|e| Stop(e.to_string()))?;
                for (service, container) in whole {
                    self.routed = true;
                    services
                        .route_service(&self.env.name, service, container)
                        .await
                        .map_err(|e| Stop(e.to_string()))?;
                }
                self.splits.clear();
                for (service, stable, candidate) in split {
                    self.routed = true;
                    self.split = true;
                    let how = services
                        .split_service(&self.env.name, service, stable, candidate, *percent)
                        .await
                        .map_err(|e| Stop(e.to_string()))?;
                    self.splits.push((service.clone(), how));
                }
                return Ok(());
            }
        };
        if !edge::needed(self.env) {
            return Ok(());
        }
        edge::ensure(self.engine, self.env, self.run, self.bind)
            .await
            .map_err(|e| Stop(e.to_string()))?;
        let admin = edge::admin(self.engine, &self.env.name)
            .await
            .map_err(|e| Stop(e.to_string()))?;
        self.routed = true;
        admin
            .put_routes(routes)
            .await
            .map_err(|e| Stop(format!("the edge proxy refused the routes: {e}")))?;
        Ok(())
    }

    async fn stats(&self) -> Result<StatsSnapshot, Stop> {
        let admin = edge::admin(self.engine, &self.env.name)
            .await
            .map_err(|e| Stop(e.to_string()))?;
        admin.stats().await.map_err(|e| Stop(e.to_string()))
    }

    pub(super) async fn canary(
        &mut self,
        weight: playbook::Weight,
        hold: Duration,
        analysis: Option<&Analysis>,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<String, Stop> {
        let through_services = self.engine.traffic() == Traffic::Services;
        let measures = self.engine.services().is_some_and(|s| s.measures());
        if through_services && analysis.is_some() && !measures {
            return Err(Stop(format!(
                "a canary analysis needs the requests' figures, and {} has no source for them: name a Prometheus under `kubernetes.prometheus` in rollout.yaml",
                self.engine.describe()
            )));
        }
        self.start_candidates(progress).await?;
        let routes = self.table(weight.percent()).await?;
        let entry = serde_json::json!({ "weight": weight.percent() });
        self.journal
            .intent("canary", entry.clone())
            .await
            .map_err(Stop)?;
        self.put_routes(&routes).await?;
        self.journal.done("canary", entry).await.map_err(Stop)?;
        if through_services {
            return self
                .hold_split(weight, hold, analysis, progress, cancel)
                .await;
        }
        let before = self.stats().await?;
        let t0 = Instant::now();
        let task = format!("canary at {}%", weight.percent());
        progress.begin(&task);
        let mut last_update = Instant::now();
        while t0.elapsed() < hold {
            if cancel.is_cancelled() {
                progress.end(&task, Status::Failed, "stopped by a signal", t0.elapsed());
                return Err(Stop("stopped by a signal".into()));
            }
            for (svc, container) in &self.candidates {
                // An engine lost past its retries ends the canary now, not after the hold.
                let status = self.engine.status(container).await.map_err(|e| {
                    progress.end(&task, Status::Failed, "the engine was lost", t0.elapsed());
                    Stop(e.to_string())
                })?;
                if let Some(s) = status
                    && let ContainerState::Exited { code } = s.state
                {
                    progress.end(&task, Status::Failed, "the candidate exited", t0.elapsed());
                    return Err(Stop(format!(
                        "the {svc} candidate exited with code {code} during the canary"
                    )));
                }
            }
            // The weight and the candidates' figures so far, live on a terminal.
            if last_update.elapsed() >= Duration::from_secs(1) {
                last_update = Instant::now();
                if let Ok(now) = self.stats().await {
                    let figures: Vec<String> = self
                        .candidates
                        .iter()
                        .filter_map(|(svc, c)| {
                            let w = Window::between(before.backends.get(c), now.backends.get(c)?);
                            Some(format!(
                                "{svc} {} requests, error rate {}",
                                w.completed(),
                                w.error_rate()
                                    .map_or("n/a".into(), |r| format!("{:.2}%", r * 100.0))
                            ))
                        })
                        .collect();
                    progress.update(&task, &figures.join(", "));
                }
            }
            tokio::time::sleep(Duration::from_millis(250).min(hold.saturating_sub(t0.elapsed())))
                .await;
        }
        progress.end(&task, Status::Ok, "hold done", t0.elapsed());
        let after = self.stats().await?;
        let mut lines = Vec::new();
        for svc in self.old_public() {
            let Some(container) = self.candidates.get(&svc.name) else {
                continue;
            };
            let Some(now) = after.backends.get(container) else {
                continue;
            };
            let w = Window::between(before.backends.get(container), now);
            let rate = w.error_rate();
            let p99 = w.p99();
            let line = format!(
                "{}: {} requests, error rate {}, p99 {}",
                svc.name,
                w.completed(),
                rate.map_or("n/a".into(), |r| format!("{:.2}%", r * 100.0)),
                p99.map_or("n/a".into(), |p| format!("{}ms", p.as_millis()))
            );
            progress.note(&format!("  {line}"));
            let (figures, failure) = judge(
                &svc.name,
                weight,
                hold,
                w.completed(),
                w.responses.server_error + w.connection_errors,
                p99,
                analysis,
            );
            self.canary_figures.push(figures);
            if let Some(reason) = failure {
                return Err(Stop(format!("{line}: {reason}")));
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

    /// [`Traffic::Services`]: holds a canary split for `hold`, ending it early when a candidate
    /// stops or crash-loops; then asks the platform's metrics source (if it has one) for each
    /// candidate's requests over the hold, and judges them by `analysis`. The step says how each
    /// service was split, the share its candidate really got, and its figures.
    async fn hold_split(
        &mut self,
        weight: playbook::Weight,
        hold: Duration,
        analysis: Option<&Analysis>,
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
                return Err(Stop("stopped by a signal".into()));
            }
            for (svc, container) in &self.candidates {
                let status = self.engine.status(container).await.map_err(|e| {
                    progress.end(&task, Status::Failed, "the engine was lost", t0.elapsed());
                    Stop(e.to_string())
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
                    return Err(Stop(reason));
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
        let measured = self.engine.services().is_some_and(|s| s.measures());
        let mut lines = Vec::new();
        for (svc, split) in self.splits.clone() {
            let share = if split.percent == weight.percent() {
                format!("{}%", split.percent)
            } else {
                format!("{}% (asked {}%)", split.percent, weight.percent())
            };
            let mut line = format!("{svc}: {share} to the candidate by {}", split.how);
            let candidate = self.candidates.get(&svc).cloned().unwrap_or_default();
            let figures = match self.engine.services() {
                Some(services) => services
                    .measure(&self.env.name, &svc, &candidate, hold)
                    .await
                    .map_err(|e| Stop(e.to_string()))?,
                None => None,
            };
            if let Some(m) = figures {
                let (figures, failure) =
                    judge(&svc, weight, hold, m.requests, m.errors, m.p99, analysis);
                line.push_str(&format!(
                    "; {} requests, error rate {}, p99 {}",
                    figures.requests,
                    figures
                        .error_rate
                        .map_or("n/a".into(), |r| format!("{:.2}%", r * 100.0)),
                    figures.p99_ms.map_or("n/a".into(), |p| format!("{p}ms"))
                ));
                progress.note(&format!("  {line}"));
                self.canary_figures.push(figures);
                if let Some(reason) = failure {
                    return Err(Stop(format!("{line}: {reason}")));
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

    /// The promote step: candidates up, stateful services stop-started, all traffic switched,
    /// the old version drained.
    pub(super) async fn switch(
        &mut self,
        drain: Duration,
        progress: &dyn Progress,
    ) -> Result<String, Stop> {
        self.start_candidates(progress).await?;
        for svc in self.changed.clone() {
            if !svc.stateful || self.candidates.contains_key(&svc.name) {
                continue;
            }
            for c in self.old.get(&svc.name).cloned().unwrap_or_default() {
                progress.note(&format!(
                    "  {} is stateful: stopping {c} before starting the new version",
                    svc.name
                ));
                let entry = serde_json::json!({ "service": svc.name, "container": c });
                self.journal
                    .intent("stop", entry.clone())
                    .await
                    .map_err(Stop)?;
                self.stopped.push(c.clone());
                self.engine
                    .stop_container(&c, Duration::from_secs(10))
                    .await
                    .map_err(|e| Stop(e.to_string()))?;
                self.journal.done("stop", entry).await.map_err(Stop)?;
            }
            self.start_one(svc, progress).await?;
        }
        let routes = self.table(100).await?;
        self.journal
            .intent("switch", serde_json::json!({}))
            .await
            .map_err(Stop)?;
        let t0 = Instant::now();
        self.put_routes(&routes).await?;
        let switched_in = t0.elapsed();
        self.journal
            .done(
                "switch",
                serde_json::json!({ "ms": switched_in.as_millis() as u64 }),
            )
            .await
            .map_err(Stop)?;
        self.switch_ms = Some(switched_in.as_millis() as u64);
        let drained = self.drain_old(drain).await?;
        let _ = self
            .journal
            .done("drain", serde_json::json!({ "drained": drained }))
            .await;
        Ok(format!(
            "all traffic on the new version (switch {} ms){}",
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
    pub(super) async fn drain_old(&self, drain: Duration) -> Result<Vec<String>, Stop> {
        let mut drained = Vec::new();
        if !self.routed {
            return Ok(drained);
        }
        if let Some(services) = self.engine.services() {
            for svc in self.changed.iter().filter(|s| !s.ports.is_empty()) {
                for c in self.old.get(&svc.name).into_iter().flatten() {
                    match services
                        .wait_unrouted(&self.env.name, &svc.name, c, drain)
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
            return Ok(drained);
        }
        let admin = edge::admin(self.engine, &self.env.name)
            .await
            .map_err(|e| Stop(e.to_string()))?;
        for svc in &self.changed {
            for c in self.old.get(&svc.name).into_iter().flatten() {
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

    /// After traffic went back to the old version: waits (up to [`playbook::DEFAULT_DRAIN`]) for
    /// the requests in flight to `candidates` to finish, as the edge proxy counts them. Best
    /// effort: an edge proxy that cannot be asked leaves nothing to wait for. (Where Services
    /// carry the traffic, the platform's own pod termination drains them.)
    async fn drain_candidates(&self, candidates: &BTreeMap<String, String>) {
        if self.engine.traffic() != Traffic::EdgeProxy || candidates.is_empty() {
            return;
        }
        let Ok(admin) = edge::admin(self.engine, &self.env.name).await else {
            return;
        };
        for c in candidates.values() {
            let _ = admin.wait_drained(c, playbook::DEFAULT_DRAIN).await;
        }
    }

    /// Where each service runs in production now: candidates for changed ones, else the old.
    pub(super) async fn production_endpoints(&self) -> BTreeMap<String, Endpoint> {
        let mut out = BTreeMap::new();
        for svc in &self.env.services {
            let container = self
                .candidates
                .get(&svc.name)
                .or_else(|| self.old.get(&svc.name).and_then(|o| o.first()));
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

    /// Success: the old version's containers go; the table keeps only what runs.
    pub(super) async fn finish(&mut self, progress: &dyn Progress) -> Result<(), Stop> {
        let mut gone = Vec::new();
        for svc in &self.changed {
            gone.extend(self.old.get(&svc.name).cloned().unwrap_or_default());
        }
        for name in &self.removed {
            gone.extend(self.old.get(name).cloned().unwrap_or_default());
        }
        self.journal
            .intent("finish", serde_json::json!({ "remove": gone }))
            .await
            .map_err(Stop)?;
        // Old containers leave the table first, so nothing is ever routed to a removed one.
        self.old
            .retain(|svc, _| !self.candidates.contains_key(svc) && !self.removed.contains(svc));
        if self.routed || routing_needed(self.engine, self.env) {
            let routes = self.table(100).await?;
            self.put_routes(&routes).await?;
        }
        for c in &gone {
            remove_container(self.engine, c).await.map_err(Stop)?;
        }
        if let Some(services) = self.engine.services() {
            for name in &self.removed {
                services
                    .remove_route(&self.env.name, name)
                    .await
                    .map_err(|e| Stop(e.to_string()))?;
            }
        }
        if !gone.is_empty() {
            progress.note(&format!(
                "  removed the previous version: {}",
                gone.join(", ")
            ));
        }
        self.journal
            .done("finish", serde_json::json!({ "removed": gone }))
            .await
            .map_err(Stop)
    }

    /// Failure: traffic back on the old version, candidates removed, stopped stateful services
    /// started again.
    pub(super) async fn undo(&mut self, progress: &dyn Progress) -> Result<(), Stop> {
        let t0 = Instant::now();
        // Undo runs even when the journal cannot be written (a full disk): putting production
        // back matters more, and every undo step is idempotent for the next command.
        let _ = self.journal.intent("undo", serde_json::json!({})).await;
        if self.routed {
            // Routes are computed without candidates, so only the old version is in the table.
            let candidates = std::mem::take(&mut self.candidates);
            for c in self.stopped.clone() {
                self.engine
                    .start_container(&c)
                    .await
                    .map_err(|e| Stop(e.to_string()))?;
            }
            self.stopped.clear();
            let routes = self.table(0).await?;
            self.put_routes(&routes).await?;
            self.rollback_ms = Some(t0.elapsed().as_millis() as u64);
            // A canary sent the candidates requests that may still be in flight: they finish
            // before the candidates stop, or removing them would cut those requests off.
            self.drain_candidates(&candidates).await;
            self.candidates = candidates;
        } else {
            for c in self.stopped.clone() {
                self.engine
                    .start_container(&c)
                    .await
                    .map_err(|e| Stop(e.to_string()))?;
            }
            self.stopped.clear();
        }
        let mut removed = Vec::new();
        for c in self.candidates.values() {
            remove_container(self.engine, c).await.map_err(Stop)?;
            removed.push(c.clone());
        }
        self.candidates.clear();
        if !removed.is_empty() || self.routed {
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

/// One candidate's canary figures for the report, and why the analysis fails it, if it does:
/// fewer requests than it needs, an error rate or a p99 above its limits. A pure function.
fn judge(
    service: &str,
    weight: playbook::Weight,
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

/// Where traffic goes, as a platform moves it ([`Traffic`]).
enum Table {
    /// The edge proxy's whole routing table.
    Edge(Routes),
    /// Changed services -> the container their Service sends to.
    Services(BTreeMap<String, String>),
    /// A canary through Services: `(service, stable, candidate)` split at `percent`, the other
    /// changed services whole to one container.
    Split {
        percent: u8,
        whole: BTreeMap<String, String>,
        split: Vec<(String, String, String)>,
    },
}

/// Whether `env` has traffic for rollout to move on `engine`'s platform: public ports behind
/// the edge proxy, or any port behind a Service.
fn routing_needed(engine: &dyn Engine, env: &Environment) -> bool {
    match engine.traffic() {
        Traffic::EdgeProxy => edge::needed(env),
        Traffic::Services => env.services.iter().any(|s| !s.ports.is_empty()),
    }
}

/// Stops a container with a grace period, then removes it.
async fn remove_container(engine: &dyn Engine, container: &str) -> Result<(), String> {
    engine
        .stop_container(container, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    engine
        .remove_container(container)
        .await
        .map_err(|e| e.to_string())
}
