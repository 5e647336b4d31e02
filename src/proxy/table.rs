//! The live form of one listener's routes: backends resolved to their counters and connection
//! pools, the pick cycle, and the slot through which an update swaps it atomically.
//!
//! A request reads the slot once, at its start, and keeps that `Arc<Route>` to the end: this is
//! what makes an in-flight request finish on the backend it started on whatever the table says
//! meanwhile, and what lets an update never wait for traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::routes::{self, Weight};
use super::stats::BackendStats;
use super::upstream::Upstream;

/// One backend of a listener, ready to take traffic.
#[derive(Debug)]
pub struct Target {
    pub id: String,
    pub stats: Arc<BackendStats>,
    pub upstream: Arc<Upstream>,
}

#[derive(Debug, Default)]
pub struct Route {
    pub targets: Vec<Target>,
    weights: Vec<Weight>,
    schedule: Vec<u16>,
    counter: AtomicU64,
}

impl Route {
    pub fn new(targets: Vec<Target>, weights: Vec<Weight>) -> Route {
        let schedule = routes::schedule(&weights);
        Route {
            targets,
            weights,
            schedule,
            counter: AtomicU64::new(0),
        }
    }

    /// The number of this request and the backend it goes to (`None`: no backend has weight).
    pub fn next(&self) -> (u64, Option<usize>) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        (n, routes::pick(&self.schedule, n))
    }

    /// Where request `n` retries when backend `failed` refused it: another backend, and only
    /// once (`retried` says whether that one retry is taken; it is set when this returns one).
    pub fn retry(&self, failed: usize, n: u64, retried: &mut bool) -> Option<usize> {
        if *retried {
            return None;
        }
        let alt = routes::fallback(&self.schedule, &self.weights, failed, n)?;
        *retried = true;
        Some(alt)
    }
}

/// The current route of one listener.
#[derive(Debug, Default)]
pub struct Slot {
    route: RwLock<Arc<Route>>,
}

impl Slot {
    pub fn new(route: Route) -> Slot {
        Slot {
            route: RwLock::new(Arc::new(route)),
        }
    }

    pub fn current(&self) -> Arc<Route> {
        self.route.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, route: Route) {
        *self.route.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(route);
    }
}
