//! Per-backend counters kept by the proxy, their JSON snapshots, and the pure window arithmetic
//! (error rate, latency quantiles between two snapshots) that canary analysis runs on.
//!
//! Counters only grow while the proxy runs, so a window is the difference of two snapshots taken
//! by the caller; the proxy keeps no clock-based windows of its own. Latency is the time from
//! the proxy starting an attempt to the backend's response head (connection set-up included,
//! the client's reading of the body not), in a log histogram with four buckets per power of two
//! (at most 25% wide), which is precise enough for a p99 threshold.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Histogram buckets: 4 per power of two from 4 µs up to 2^28 µs (about 4.5 minutes); the last
/// one also takes everything slower.
pub const BUCKETS: usize = 4 * 26;

/// The bucket holding a latency of `us` microseconds.
pub fn bucket_index(us: u64) -> usize {
    let us = us.max(4);
    let e = 63 - us.leading_zeros() as usize; // floor(log2), >= 2
    let sub = ((us >> (e - 2)) & 3) as usize;
    ((e - 2) * 4 + sub).min(BUCKETS - 1)
}

/// The exclusive upper bound of bucket `i`, in microseconds.
pub fn bucket_upper_us(i: usize) -> u64 {
    let e = i / 4 + 2;
    let sub = (i % 4) as u64;
    (5 + sub) << (e - 2)
}

/// The live counters of one backend id, shared by every request that goes to it.
#[derive(Debug)]
pub struct BackendStats {
    requests: AtomicU64,
    responses: [AtomicU64; 5],
    connection_errors: AtomicU64,
    in_flight: AtomicI64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            requests: AtomicU64::new(0),
            responses: Default::default(),
            connection_errors: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl BackendStats {
    /// An attempt to send a request (or open a TCP connection) to this backend.
    pub fn attempt(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// The backend could not be reached, or broke the exchange before answering.
    pub fn connection_error(&self) {
        self.connection_errors.fetch_add(1, Relaxed);
    }

    pub fn response(&self, status: u16, latency: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.responses[class].fetch_add(1, Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_index(us)].fetch_add(1, Relaxed);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    pub fn snapshot(&self) -> BackendSnapshot {
        let r = |i: usize| self.responses[i].load(Relaxed);
        BackendSnapshot {
            requests: self.requests.load(Relaxed),
            responses: Responses {
                informational: r(0),
                success: r(1),
                redirect: r(2),
                client_error: r(3),
                server_error: r(4),
            },
            connection_errors: self.connection_errors.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed).max(0) as u64,
            latency: (0..BUCKETS)
                .filter_map(|i| {
                    let count = self.latency[i].load(Relaxed);
                    (count > 0).then(|| LatencyBucket {
                        le_us: bucket_upper_us(i),
                        count,
                    })
                })
                .collect(),
        }
    }
}

/// Counts a request (or a TCP connection, or an upgraded tunnel) as in flight on a backend for
/// as long as it lives, so a caller can wait for a drain.
#[derive(Debug)]
pub struct InFlight(Arc<BackendStats>);

impl InFlight {
    pub fn enter(stats: &Arc<BackendStats>) -> InFlight {
        stats.in_flight.fetch_add(1, Relaxed);
        InFlight(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// How long a backend's counters outlive its leaving the routing table: a canary analysis or a
/// report reading them just after a rollback still finds them, and a proxy that sees thousands
/// of deployments does not keep counters for every backend it ever had.
pub const KEEP_AFTER_LEAVING: Duration = Duration::from_secs(15 * 60);

/// The backend ids the proxy has sent traffic to: those in the routing table, and those that
/// left it less than [`KEEP_AFTER_LEAVING`] ago (or still have requests in flight). Counters
/// survive route updates (a backend removed and added back keeps counting), so windows stay
/// consistent.
#[derive(Debug, Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Kept>>,
}

#[derive(Debug, Default)]
struct Kept {
    stats: Arc<BackendStats>,
    /// When it left the routing table (none while it is in it).
    left: Option<Instant>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Arc<BackendStats> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_string()).or_default().stats.clone()
    }

    pub fn find(&self, id: &str) -> Option<BackendSnapshot> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).map(|k| k.stats.snapshot())
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        StatsSnapshot {
            backends: map
                .iter()
                .map(|(id, k)| (id.clone(), k.stats.snapshot()))
                .collect(),
        }
    }

    /// A new routing table is in force with the backends `in_table`: the others are marked as
    /// gone from `now`, and those gone for longer than [`KEEP_AFTER_LEAVING`] with nothing in
    /// flight are forgotten.
    pub fn table_changed(&self, in_table: &std::collections::HashSet<&str>, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, kept| {
            if in_table.contains(id.as_str()) {
                kept.left = None;
                return true;
            }
            let left = *kept.left.get_or_insert(now);
            now.duration_since(left) < KEEP_AFTER_LEAVING || kept.stats.in_flight() > 0
        });
    }
}

/// `GET /stats`: counters per backend id since the proxy started, for the backends in the
/// routing table and those that left it less than [`KEEP_AFTER_LEAVING`] ago.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    pub backends: BTreeMap<String, BackendSnapshot>,
}

/// `GET /backends/<id>`: one backend's counters since the proxy started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendSnapshot {
    /// Attempts: requests sent (or TCP connections opened), including those that failed.
    pub requests: u64,
    pub responses: Responses,
    /// Attempts that got no response: connection refused, reset, or closed early.
    pub connection_errors: u64,
    /// Requests, TCP connections and upgraded tunnels open on it now.
    pub in_flight: u64,
    /// Non-empty latency buckets, ascending.
    #[serde(default)]
    pub latency: Vec<LatencyBucket>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Responses {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirect: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl Responses {
    pub fn total(&self) -> u64 {
        self.informational + self.success + self.redirect + self.client_error + self.server_error
    }

    fn minus(&self, o: &Responses) -> Responses {
        Responses {
            informational: self.informational.saturating_sub(o.informational),
            success: self.success.saturating_sub(o.success),
            redirect: self.redirect.saturating_sub(o.redirect),
            client_error: self.client_error.saturating_sub(o.client_error),
            server_error: self.server_error.saturating_sub(o.server_error),
        }
    }
}

/// Responses whose latency was below `le_us` microseconds (and at or above the previous bucket's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyBucket {
    pub le_us: u64,
    pub count: u64,
}

/// What one backend did between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub requests: u64,
    pub responses: Responses,
    pub connection_errors: u64,
    pub latency: Vec<LatencyBucket>,
}

impl Window {
    /// The window from `before` (`None`: the backend had no traffic yet) to `after`.
    pub fn between(before: Option<&BackendSnapshot>, after: &BackendSnapshot) -> Window {
        let empty = BackendSnapshot::default();
        let before = before.unwrap_or(&empty);
        let mut old: BTreeMap<u64, u64> =
            before.latency.iter().map(|b| (b.le_us, b.count)).collect();
        let latency = after
            .latency
            .iter()
            .filter_map(|b| {
                let count = b.count.saturating_sub(old.remove(&b.le_us).unwrap_or(0));
                (count > 0).then_some(LatencyBucket {
                    le_us: b.le_us,
                    count,
                })
            })
            .collect();
        Window {
            requests: after.requests.saturating_sub(before.requests),
            responses: after.responses.minus(&before.responses),
            connection_errors: after
                .connection_errors
                .saturating_sub(before.connection_errors),
            latency,
        }
    }

    /// Attempts that ended in the window: responses plus connection errors. (Requests still in
    /// flight at the end of the window are left out rather than counted as successes.)
    pub fn completed(&self) -> u64 {
        self.responses.total() + self.connection_errors
    }

    /// 5xx responses and connection errors over completed attempts; `None` with no traffic.
    pub fn error_rate(&self) -> Option<f64> {
        let done = self.completed();
        (done > 0)
            .then(|| (self.responses.server_error + self.connection_errors) as f64 / done as f64)
    }

    /// The `q` quantile (0..=1) of response latency, as the upper bound of its bucket (so it
    /// errs on the slow side); `None` with no responses.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().map(|b| b.count).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for b in &self.latency {
            seen += b.count;
            if seen >= rank {
                return Some(Duration::from_micros(b.le_us));
            }
        }
        self.latency.last().map(|b| Duration::from_micros(b.le_us))
    }

    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_and_order() {
        let mut last = 0;
        for i in 0..BUCKETS {
            let up = bucket_upper_us(i);
            assert!(up > last, "bucket {i}");
            last = up;
        }
        for us in [0, 1, 4, 5, 7, 8, 9, 10, 999, 1000, 1024, 65_000, 10_000_000] {
            let i = bucket_index(us);
            assert!(us < bucket_upper_us(i), "{us} below the upper bound of {i}");
            if i > 0 {
                assert!(us >= bucket_upper_us(i - 1), "{us} not below bucket {i}");
            }
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
        // At most 25% wide: a p99 from buckets is within a quarter of the truth.
        for i in 1..BUCKETS {
            let (lo, hi) = (bucket_upper_us(i - 1), bucket_upper_us(i));
            assert!((hi - lo) * 4 <= lo, "bucket {i}: {lo}..{hi}");
        }
    }

    fn stats_with(ms: &[(u16, u64)]) -> BackendStats {
        let s = BackendStats::default();
        for (status, ms) in ms {
            s.attempt();
            s.response(*status, Duration::from_millis(*ms));
        }
        s
    }

    #[test]
    fn window_counts_only_what_happened_in_it() {
        let s = stats_with(&[(200, 1); 50]);
        let before = s.snapshot();
        for _ in 0..97 {
            s.attempt();
            s.response(200, Duration::from_millis(2));
        }
        s.attempt();
        s.response(503, Duration::from_millis(3));
        s.attempt();
        s.connection_error();
        s.attempt();
        s.response(404, Duration::from_millis(1));
        let after = s.snapshot();
        let w = Window::between(Some(&before), &after);
        assert_eq!(w.requests, 100);
        assert_eq!(w.responses.success, 97);
        assert_eq!(w.responses.server_error, 1);
        assert_eq!(w.responses.client_error, 1);
        assert_eq!(w.connection_errors, 1);
        assert_eq!(w.completed(), 100);
        // 4xx are the client's doing; 5xx and connection errors are the backend's.
        assert_eq!(w.error_rate(), Some(0.02));
        let whole = Window::between(None, &after);
        assert_eq!(whole.requests, 150);
    }

    #[test]
    fn p99_from_a_window() {
        let s = BackendStats::default();
        let before = s.snapshot();
        for _ in 0..990 {
            s.response(200, Duration::from_millis(10));
        }
        for _ in 0..10 {
            s.response(200, Duration::from_millis(800));
        }
        let w = Window::between(Some(&before), &s.snapshot());
        let p50 = w.p50().expect("p50");
        let p99 = w.p99().expect("p99");
        assert!(
            p50 >= Duration::from_millis(10) && p50 <= Duration::from_micros(12_500),
            "{p50:?}"
        );
        assert!(
            p99 >= Duration::from_millis(10) && p99 <= Duration::from_micros(12_500),
            "{p99:?}"
        );
        // One more slow response pushes the 99th percentile into the slow bucket.
        for _ in 0..2 {
            s.response(200, Duration::from_millis(800));
        }
        let w = Window::between(Some(&before), &s.snapshot());
        let p99 = w.p99().expect("p99");
        assert!(
            p99 >= Duration::from_millis(800) && p99 <= Duration::from_millis(1000),
            "{p99:?}"
        );
    }

    #[test]
    fn empty_window_has_no_rates() {
        let w = Window::between(None, &BackendSnapshot::default());
        assert_eq!(w.error_rate(), None);
        assert_eq!(w.p99(), None);
    }

    #[test]
    fn counters_of_a_backend_outlive_its_leaving_the_table_for_a_while_then_go() {
        let registry = Registry::default();
        let t0 = Instant::now();
        let minutes = |m: u64| t0 + Duration::from_secs(60 * m);
        for id in ["old", "new", "busy"] {
            registry.get(id).attempt();
        }
        let _request = InFlight::enter(&registry.get("busy"));
        let table = |ids: &[&'static str]| ids.iter().copied().collect();
        registry.table_changed(&table(&["new"]), t0);
        registry.table_changed(&table(&["new"]), minutes(10));
        assert!(
            registry.find("old").is_some(),
            "kept for a while after leaving"
        );
        // Back in the table before it was forgotten: it keeps counting from where it was.
        registry.table_changed(&table(&["new", "old"]), minutes(14));
        registry.table_changed(&table(&["new"]), minutes(20));
        assert_eq!(registry.find("old").map(|s| s.requests), Some(1));
        registry.table_changed(&table(&["new"]), minutes(36));
        assert!(
            registry.find("old").is_none(),
            "forgotten 16 minutes after leaving"
        );
        assert!(registry.find("new").is_some());
        assert!(
            registry.find("busy").is_some(),
            "a backend with a request in flight is kept"
        );
        assert_eq!(
            registry.snapshot().backends.keys().collect::<Vec<_>>(),
            ["busy", "new"]
        );
    }

    #[test]
    fn in_flight_follows_guards() {
        let s = Arc::new(BackendStats::default());
        let a = InFlight::enter(&s);
        let b = InFlight::enter(&s);
        assert_eq!(s.snapshot().in_flight, 2);
        drop(a);
        drop(b);
        assert_eq!(s.snapshot().in_flight, 0);
    }

    #[test]
    fn snapshot_round_trips_as_json() {
        let s = stats_with(&[(200, 1), (500, 20)]);
        let snap = s.snapshot();
        let json = serde_json::to_string(&snap).expect("json");
        assert!(
            json.contains("\"2xx\":1") && json.contains("\"leUs\""),
            "{json}"
        );
        let back: BackendSnapshot = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, snap);
    }
}
