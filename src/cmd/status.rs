//! `rollout status`: what runs, which revision, health, and any run in flight.

use std::path::Path;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, ReadArgs};
use crate::project::Project;
use crate::store::{RevisionOutcome, Store};

pub async fn run(dir: &Path, args: ReadArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let project = Project::open(dir)?;
    let env = super::load_environment(&project, &args.env, printer)?.environment;
    let store = std::sync::Arc::new(Store::open(&project.state_dir())?);
    let engine = super::connect(&project, "status").await?;
    super::pull_records(engine.as_ref(), &store, &env.name, printer).await?;
    let status = gather(&env.name, &env, &store, engine.as_ref()).await?;
    if args.output == Format::Json {
        printer.json(&status.to_json(&env.client))?;
        return Ok(ExitStatus::Success);
    }
    let Status {
        environment: _,
        current,
        in_flight,
        interrupted,
        parked,
        lock,
        lock_alive,
        cluster_lock,
        services,
        tests,
    } = status;
    let mut out = format!("Environment {} (client {})\n", env.name, env.client);
    match &current {
        Some(r) => out.push_str(&format!(
            "Revision {} ({}), promoted {} by {}\n",
            r.number,
            r.run,
            r.finished.unwrap_or(r.started),
            r.user
        )),
        None => out.push_str("No promoted revision yet\n"),
    }
    for r in &in_flight {
        out.push_str(&format!(
            "In flight: revision {} (run {}, started {} by {}), now at `{}`\n",
            r["revision"],
            r["run"].as_str().unwrap_or_default(),
            r["started"].as_str().unwrap_or_default(),
            r["leftBy"].as_str().unwrap_or_default(),
            r["lastStep"].as_str().unwrap_or_default(),
        ));
    }
    for r in &interrupted {
        out.push_str(&format!(
            "Interrupted: revision {} (run {}, started {}), left by {} after `{}`; the next `rollout promote` or `rollout rollback` settles it\n",
            r["revision"],
            r["run"].as_str().unwrap_or_default(),
            r["started"].as_str().unwrap_or_default(),
            r["leftBy"].as_str().unwrap_or_default(),
            r["lastStep"].as_str().unwrap_or_default(),
        ));
    }
    if let Some(p) = &parked {
        out.push_str(&format!(
            "Waiting: run {} (started by {} at {}) waits for {}; `rollout approve {} --by ...`, then `rollout promote` resumes it\n",
            p.run,
            p.user,
            p.at.strftime("%Y-%m-%d %H:%M UTC"),
            super::promote::awaited_text(&p.awaiting),
            p.run
        ));
    }
    if let (Some(h), false) = (&lock, lock_alive) {
        out.push_str(&format!(
            "Stale lock: {} (its holder is gone; the next run takes it over)\n",
            h.describe()
        ));
    }
    if let Some(l) = &cluster_lock {
        out.push_str(&format!(
            "Cluster lock: held by {} until {} (Lease {} in {})\n",
            l.holder,
            l.until,
            crate::engine::kube::lease::LEASE_NAME,
            crate::engine::kube::namespace(&env.name)
        ));
    }
    out.push('\n');
    for s in &services {
        let containers = s["containers"].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            out.push_str(&format!(
                "  {:<12} not running (wants {})\n",
                s["name"].as_str().unwrap_or(""),
                s["desiredImage"].as_str().unwrap_or("")
            ));
        }
        for c in containers {
            let health = c["health"]
                .as_str()
                .map(|h| format!(", {h}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<12} {} {} ({}{health})\n",
                s["name"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or(""),
                c["image"].as_str().unwrap_or(""),
                c["state"].as_str().unwrap_or("")
            ));
        }
    }
    if !tests.is_empty() {
        out.push_str(&format!(
            "\n{} test version(s): {}\n",
            tests.len(),
            tests
                .iter()
                .map(|t| t.run.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    printer.out(&out);
    Ok(ExitStatus::Success)
}

/// What `rollout status` shows, read from the store and the engine: shared with the daemon's API
/// and dashboard.
#[derive(Debug)]
pub struct Status {
    pub environment: String,
    pub current: Option<crate::store::Revision>,
    pub in_flight: Vec<serde_json::Value>,
    pub interrupted: Vec<serde_json::Value>,
    pub parked: Option<crate::store::Parked>,
    pub lock: Option<crate::store::LockHolder>,
    pub lock_alive: bool,
    /// The platform's lock (kubernetes: the Lease), when someone holds it.
    pub cluster_lock: Option<ClusterLock>,
    pub services: Vec<serde_json::Value>,
    pub tests: Vec<crate::testenv::Found>,
}

/// Who holds the environment's lock on the platform, and until when.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterLock {
    pub holder: String,
    pub until: jiff::Timestamp,
}

impl Status {
    pub fn to_json(&self, client: &str) -> serde_json::Value {
        let Status {
            environment,
            current,
            in_flight,
            interrupted,
            parked,
            lock,
            lock_alive,
            cluster_lock,
            services,
            tests,
        } = self;
        serde_json::json!({
            "environment": environment,
            "client": client,
            "revision": current, "inFlight": in_flight, "interrupted": interrupted, "waiting": parked,
            "lock": lock.as_ref().map(|h| serde_json::json!({ "holder": h, "alive": lock_alive })),
            "clusterLock": cluster_lock,
            "services": services, "testVersions": tests,
        })
    }
}

/// Reads the status of `name` (whose manifest is `env`).
pub async fn gather(
    name: &str,
    env: &crate::manifest::env::Environment,
    store: &Store,
    engine: &dyn crate::engine::Engine,
) -> anyhow::Result<Status> {
    let history = store.history(name)?;
    let current = history
        .iter()
        .find(|r| r.outcome == RevisionOutcome::Promoted)
        .cloned();
    // A run that began and never ended is in flight while its process holds the lock, and
    // interrupted otherwise (the next promote or rollback settles it).
    let lock = store.lock_holder(name)?;
    let parked = store.parked(name)?;
    let now = jiff::Timestamp::now();
    let lock_alive = lock
        .as_ref()
        .is_some_and(|h| crate::exec::lock::holds(h, now));
    let mut in_flight = Vec::new();
    let mut interrupted = Vec::new();
    for begin in store.unfinished_runs(name)? {
        let running = lock_alive && lock.as_ref().is_some_and(|h| h.run == begin.run);
        let journal = store.journal(&begin.run)?;
        let entry = serde_json::json!({
            "run": begin.run,
            "revision": begin.data["revision"],
            "kind": begin.data["kind"],
            "started": begin.at,
            "leftBy": crate::exec::recover::left_by(&begin),
            "lastStep": journal.last().map(|e| e.label()),
        });
        if running {
            in_flight.push(entry);
        } else {
            interrupted.push(entry);
        }
    }
    // Asked as nobody in particular: this only reads who holds it.
    let cluster_lock = match engine.shared_lock(name, "") {
        Some(l) => l
            .holder_at(now)
            .await?
            .map(|(holder, until)| ClusterLock { holder, until }),
        None => None,
    };
    let observed = engine.observe(name).await?;
    let tests = crate::testenv::list(engine, Some(name)).await?;
    let services: Vec<serde_json::Value> = env
        .services
        .iter()
        .map(|s| {
            let running = observed.services.get(&s.name);
            let containers: Vec<serde_json::Value> = running
                .map(|o| {
                    o.containers
                        .iter()
                        .map(|c| serde_json::json!({ "name": c.name, "image": c.image, "state": c.state.to_string(), "health": c.health }))
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({ "name": s.name, "desiredImage": s.image, "containers": containers })
        })
        .collect();
    Ok(Status {
        environment: name.to_string(),
        current,
        in_flight,
        interrupted,
        parked,
        lock,
        lock_alive,
        cluster_lock,
        services,
        tests,
    })
}
