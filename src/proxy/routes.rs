//! The routing table the proxy serves (public port -> protocol and weighted backends), its
//! validation against the table it replaces, and the pure weighted pick.
//!
//! Picking is deterministic: [`schedule`] lays the weights out as a smooth weighted round-robin
//! cycle (nginx's algorithm, weights reduced by their gcd), and request number `n` goes to
//! `schedule[n % len]`. So 90/10 sends exactly 1 request in 10 to the second backend, spread
//! out rather than in a burst, and a canary's share is exact even over few requests.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How long long-lived connections (TCP, upgraded HTTP) may stay on a backend after it left the
/// table, when the update does not say.
pub const DEFAULT_DRAIN_MS: u64 = 10_000;

/// The longest drain an update may ask for: a typo should not pin connections for days.
pub const MAX_DRAIN_MS: u64 = 3_600_000;

/// The whole routing table. Replaced as a whole by every update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Routes {
    /// Public port -> what listens there.
    #[serde(default)]
    pub listeners: BTreeMap<u16, Listener>,
    /// How long TCP and upgraded connections to a backend that this update removes may go on
    /// before they are closed (default [`DEFAULT_DRAIN_MS`]). HTTP requests in flight are never
    /// cut: they finish on the backend they started on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
}

/// One public port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub protocol: Protocol,
    #[serde(default)]
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        })
    }
}

/// A place traffic can go. `id` names it in stats (a container name); the same id may appear on
/// several listeners (one container, several public ports) and its counters add up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub weight: Weight,
}

/// A share of new traffic, 0..=100. Weight 0 is a standby: it gets no traffic of its own, only
/// the one retry of a request whose chosen backend refused the connection (see `http.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u8")]
pub struct Weight(u8);

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(100);

    pub fn new(percent: u8) -> Option<Weight> {
        (percent <= 100).then_some(Weight(percent))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Weight {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        u8::try_from(v)
            .ok()
            .and_then(Weight::new)
            .ok_or_else(|| format!("weight {v} is out of range; expected 0 to 100"))
    }
}

impl From<Weight> for u8 {
    fn from(w: Weight) -> u8 {
        w.0
    }
}

impl From<crate::manifest::playbook::Weight> for Weight {
    fn from(w: crate::manifest::playbook::Weight) -> Weight {
        Weight(w.percent())
    }
}

/// Why an update was refused. Nothing of a refused update is applied or saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("port 0 cannot be a public port")]
    PortZero,
    #[error(
        "listener {port} is {from} and cannot become {to}: remove it in one update and add it back in another"
    )]
    ProtocolChange {
        port: u16,
        from: Protocol,
        to: Protocol,
    },
    #[error("listener {port}: a backend has an empty id")]
    EmptyId { port: u16 },
    #[error("listener {port}: backend id `{id}` appears twice")]
    DuplicateId { port: u16, id: String },
    #[error("listener {port}: address {addr} appears twice (backends `{first}` and `{second}`)")]
    DuplicateAddr {
        port: u16,
        addr: SocketAddr,
        first: String,
        second: String,
    },
    #[error("drainMs {0} is longer than the maximum of {MAX_DRAIN_MS} (one hour)")]
    DrainTooLong(u64),
}

impl Routes {
    /// Checks that `self` may replace `current`.
    pub fn validate(&self, current: &Routes) -> Result<(), RouteError> {
        if let Some(ms) = self.drain_ms.filter(|ms| *ms > MAX_DRAIN_MS) {
            return Err(RouteError::DrainTooLong(ms));
        }
        for (&port, listener) in &self.listeners {
            if port == 0 {
                return Err(RouteError::PortZero);
            }
            // Open connections were accepted for one protocol; they cannot be re-read as another.
            if let Some(old) = current.listeners.get(&port)
                && old.protocol != listener.protocol
            {
                return Err(RouteError::ProtocolChange {
                    port,
                    from: old.protocol,
                    to: listener.protocol,
                });
            }
            let mut ids = HashSet::new();
            let mut addrs: BTreeMap<SocketAddr, &str> = BTreeMap::new();
            for b in &listener.backends {
                if b.id.trim().is_empty() {
                    return Err(RouteError::EmptyId { port });
                }
                if !ids.insert(b.id.as_str()) {
                    return Err(RouteError::DuplicateId {
                        port,
                        id: b.id.clone(),
                    });
                }
                if let Some(first) = addrs.insert(b.addr, &b.id) {
                    return Err(RouteError::DuplicateAddr {
                        port,
                        addr: b.addr,
                        first: first.to_string(),
                        second: b.id.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn drain(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.drain_ms.unwrap_or(DEFAULT_DRAIN_MS))
    }
}

/// The smooth weighted round-robin cycle over `weights`: backend indices in the order they get
/// requests. Weights are reduced by their gcd, so the cycle is as short as the ratio allows
/// (50/50 -> `[0, 1]`). Empty when every weight is 0.
pub fn schedule(weights: &[Weight]) -> Vec<u16> {
    let g = weights
        .iter()
        .map(|w| u32::from(w.0))
        .filter(|w| *w > 0)
        .fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let reduced: Vec<i64> = weights
        .iter()
        .map(|w| i64::from(u32::from(w.0) / g))
        .collect();
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; reduced.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        // Fewer than 65536 backends on one port: the table is written by the promotion code.
        out.push(u16::try_from(best).unwrap_or(u16::MAX));
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The backend for request number `n`, or `None` when no backend has a weight.
pub fn pick(schedule: &[u16], n: u64) -> Option<usize> {
    if schedule.is_empty() {
        return None;
    }
    let len = schedule.len() as u64;
    Some(usize::from(schedule[(n % len) as usize]))
}

/// Where the one retry of request `n` goes when backend `failed` refused the connection: the
/// next backend of the cycle that is not `failed` (so the retry respects the weights among the
/// others), else the first standby (weight 0) backend that is not `failed`. A backend that left
/// the table is never a candidate, since it is not in `weights`.
pub fn fallback(schedule: &[u16], weights: &[Weight], failed: usize, n: u64) -> Option<usize> {
    let len = schedule.len() as u64;
    (1..=len)
        .map(|k| usize::from(schedule[((n + k) % len) as usize]))
        .find(|i| *i != failed)
        .or_else(|| (0..weights.len()).find(|i| *i != failed && weights[*i] == Weight::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ws: &[u8]) -> Vec<Weight> {
        ws.iter()
            .map(|p| Weight::new(*p).expect("weight"))
            .collect()
    }

    fn counts(ws: &[u8], requests: u64) -> Vec<u64> {
        let s = schedule(&w(ws));
        let mut c = vec![0; ws.len()];
        for n in 0..requests {
            c[pick(&s, n).expect("a backend")] += 1;
        }
        c
    }

    #[test]
    fn full_weight_takes_everything() {
        assert_eq!(counts(&[100, 0], 100), vec![100, 0]);
        assert_eq!(counts(&[0, 100], 100), vec![0, 100]);
    }

    #[test]
    fn ten_percent_is_exactly_one_in_ten() {
        assert_eq!(counts(&[90, 10], 100), vec![90, 10]);
        // Exact in every window of 10 consecutive requests, not only on average.
        let s = schedule(&w(&[90, 10]));
        assert_eq!(s.len(), 10);
        for start in 0..50 {
            let b = (start..start + 10)
                .filter(|n| pick(&s, *n) == Some(1))
                .count();
            assert_eq!(b, 1, "window starting at {start}");
        }
    }

    #[test]
    fn fifty_fifty_alternates() {
        assert_eq!(schedule(&w(&[50, 50])), vec![0, 1]);
        assert_eq!(counts(&[50, 50], 100), vec![50, 50]);
    }

    #[test]
    fn uneven_weights_are_exact_over_a_cycle() {
        assert_eq!(counts(&[33, 67], 100), vec![33, 67]);
        assert_eq!(counts(&[20, 30, 50], 100), vec![20, 30, 50]);
        // Spread, not bunched: 1/3 never gets two in a row.
        let s = schedule(&w(&[33, 67]));
        assert!(s.windows(2).all(|p| !(p[0] == 0 && p[1] == 0)));
    }

    #[test]
    fn weight_zero_is_never_picked() {
        for ws in [[0u8, 100, 0], [0, 1, 0], [0, 50, 50], [100, 0, 0]] {
            let s = schedule(&w(&ws));
            for n in 0..1000 {
                let i = pick(&s, n).expect("a backend");
                assert_ne!(ws[i], 0, "{ws:?} picked {i}");
            }
        }
    }

    #[test]
    fn all_zero_picks_nothing() {
        assert_eq!(pick(&schedule(&w(&[0, 0])), 0), None);
        assert_eq!(pick(&schedule(&[]), 7), None);
    }

    #[test]
    fn fallback_prefers_weighted_then_standby() {
        let ws = w(&[100, 0]);
        let s = schedule(&ws);
        assert_eq!(fallback(&s, &ws, 0, 3), Some(1), "standby takes the retry");
        let ws = w(&[50, 50, 0]);
        let s = schedule(&ws);
        assert_eq!(fallback(&s, &ws, 0, 0), Some(1), "weighted before standby");
        assert_eq!(fallback(&s, &ws, 1, 1), Some(0));
        let ws = w(&[100]);
        assert_eq!(
            fallback(&schedule(&ws), &ws, 0, 0),
            None,
            "nowhere else to go"
        );
    }

    #[test]
    fn weight_rejects_out_of_range() {
        let err = serde_json::from_str::<Weight>("150").expect_err("150 is refused");
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(serde_json::from_str::<Weight>("-1").is_err());
        assert_eq!(serde_json::from_str::<Weight>("100").ok(), Weight::new(100));
    }

    fn listener(protocol: Protocol, backends: &[(&str, &str, u8)]) -> Listener {
        Listener {
            protocol,
            backends: backends
                .iter()
                .map(|(id, addr, weight)| Backend {
                    id: id.to_string(),
                    addr: addr.parse().expect("addr"),
                    weight: Weight::new(*weight).expect("weight"),
                })
                .collect(),
        }
    }

    #[test]
    fn validation() {
        let mut current = Routes::default();
        current
            .listeners
            .insert(80, listener(Protocol::Http, &[("a", "127.0.0.1:1", 100)]));
        let mut next = current.clone();
        next.listeners.insert(80, listener(Protocol::Tcp, &[]));
        assert!(matches!(
            next.validate(&current),
            Err(RouteError::ProtocolChange { port: 80, .. })
        ));
        let mut next = Routes::default();
        next.listeners.insert(
            81,
            listener(
                Protocol::Http,
                &[("a", "127.0.0.1:1", 50), ("a", "127.0.0.1:2", 50)],
            ),
        );
        assert!(matches!(
            next.validate(&current),
            Err(RouteError::DuplicateId { .. })
        ));
        next.listeners.insert(
            81,
            listener(
                Protocol::Http,
                &[("a", "127.0.0.1:1", 50), ("b", "127.0.0.1:1", 50)],
            ),
        );
        assert!(matches!(
            next.validate(&current),
            Err(RouteError::DuplicateAddr { .. })
        ));
        next.listeners.insert(0, listener(Protocol::Http, &[]));
        assert_eq!(next.validate(&current), Err(RouteError::PortZero));
        let ok: Routes = serde_json::from_str(
            r#"{"listeners":{"80":{"protocol":"http","backends":[{"id":"a","addr":"127.0.0.1:1","weight":0}]},
                "81":{"protocol":"tcp","backends":[]}},"drainMs":500}"#,
        )
        .expect("parses");
        assert_eq!(ok.validate(&current), Ok(()));
        assert_eq!(ok.drain(), std::time::Duration::from_millis(500));
    }
}
