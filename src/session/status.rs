//! Status gathering: what an environment runs, its revision, runs in flight or interrupted, a
//! run waiting at a gate, the locks and test versions, read from the store and the engine.
//! `rollout status` prints it and the daemon's API and dashboard serve it, from one reading.

use crate::store::{RevisionOutcome, Store};

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
        serde_json::json!({
            "environment": self.environment,
            "client": client,
            "revision": self.current, "inFlight": self.in_flight, "interrupted": self.interrupted, "waiting": self.parked,
            "lock": self.lock.as_ref().map(|h| serde_json::json!({ "holder": h, "alive": self.lock_alive })),
            "clusterLock": self.cluster_lock,
            "services": self.services, "testVersions": self.tests,
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
