//! Webhook notifications (`notify:` in rollout.yaml): a JSON POST per subscribed webhook when a
//! run fails, is promoted, is rolled back, awaits an approval, a rehearsal fails, or the GitOps
//! controller finds an environment drifted from its manifest (`drifted`; its `run` is the commit).
//!
//! # Never blocking a run
//! [`Notifier::send`] returns at once: each delivery is a task on the runtime that retries with
//! exponential backoff, within a bounded number of attempts, a per-request timeout and a total
//! budget ([`Policy`]). A short-lived command calls [`Notifier::flush`] before it exits: it
//! waits for deliveries still in flight up to a deadline, then gives up on them and returns
//! which webhooks did not get what, for the command to warn about.
//!
//! # The request
//! `POST` with `Content-Type: application/json`, `X-Rollout-Event: <event>` and
//! `X-Rollout-Delivery: <run>.<event>` (the same on every retry, so a receiver can drop
//! duplicates), and a body:
//! `{"event":"rolledBack","environment":"shop","run":"t4x9k2a7q","outcome":"rolledBack",
//!   "reason":"…","time":"2026-03-01T22:14:03Z","summary":"shop: run t4x9k2a7q was rolled back: …"}`.
//! A 2xx answer is a delivery; 408, 425, 429 and 5xx, a refused or dropped connection and a
//! timeout are retried; any other status is final (the receiver refused the request).
//!
//! Plain `http://` only: this build carries no TLS stack, so an `https://` webhook fails at once
//! with a message saying so (point it at a relay on the host, or a receiver on a private network).
//! Webhook URLs often hold a token in their path, so messages show only scheme, host and port.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::manifest::config::Event;
use crate::manifest::config::Notify;
use crate::report::run::{Outcome, RunKind, RunReport};

/// What a webhook is told.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    #[serde(serialize_with = "event_name")]
    pub event: Event,
    pub environment: String,
    pub run: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub time: Timestamp,
    /// One line for a chat message, without links.
    pub summary: String,
}

fn event_name<S: serde::Serializer>(e: &Event, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(e.name())
}

impl Notification {
    /// A notification with the event's natural outcome (`failed` for a failed rehearsal,
    /// the event's name otherwise) and a summary made from the rest.
    pub fn new(
        event: Event,
        environment: &str,
        run: &str,
        reason: Option<&str>,
        time: Timestamp,
    ) -> Self {
        let outcome = match event {
            Event::RehearsalFailed => "failed",
            other => other.name(),
        };
        let what = match event {
            Event::Failed => "failed",
            Event::Promoted => "was promoted",
            Event::RolledBack => "was rolled back",
            Event::AwaitingApproval => "is awaiting approval",
            Event::RehearsalFailed => "(rehearsal) failed",
            Event::Drifted => "found drift",
        };
        let summary = match reason {
            Some(r) => format!("{environment}: run {run} {what}: {r}"),
            None => format!("{environment}: run {run} {what}"),
        };
        Notification {
            event,
            environment: environment.to_string(),
            run: run.to_string(),
            outcome: outcome.to_string(),
            reason: reason.map(str::to_string),
            time,
            summary,
        }
    }
}

impl Notification {
    /// What a finished run tells webhooks, if anything: a failed, cancelled, promoted or rolled
    /// back promotion or rollback, or a failed or cancelled rehearsal. A passed rehearsal and a
    /// refusal tell nothing (a run parked at an approval gate sends [`Event::AwaitingApproval`]
    /// itself, with [`Notification::new`]).
    pub fn for_report(report: &RunReport, now: Timestamp) -> Option<Notification> {
        let rehearsal = report.kind == RunKind::Rehearsal;
        let (event, reason) = match &report.outcome {
            Outcome::Running | Outcome::Passed | Outcome::Refused { .. } => return None,
            Outcome::Promoted => (Event::Promoted, None),
            // `rollout rollback` put an earlier revision back: its reason says which.
            Outcome::Restored => (Event::RolledBack, report.reason.as_deref()),
            Outcome::RolledBack { reason } => (Event::RolledBack, Some(reason.as_str())),
            Outcome::Failed { reason } | Outcome::Cancelled { reason } if rehearsal => {
                (Event::RehearsalFailed, Some(reason.as_str()))
            }
            Outcome::Failed { reason } | Outcome::Cancelled { reason } => {
                (Event::Failed, Some(reason.as_str()))
            }
        };
        let mut n = Notification::new(event, &report.environment, &report.run, reason, now);
        if let Outcome::Cancelled { .. } = report.outcome {
            n.outcome = "cancelled".into();
        }
        Some(n)
    }
}

/// How long a command waits for its notifications before it exits.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// How hard a delivery tries.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// At most this many requests per delivery.
    pub attempts: u32,
    /// The wait after the first failure; doubled after each next one, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// One request, from connecting to the answer's status.
    pub request_timeout: Duration,
    /// All attempts and waits of one delivery together.
    pub budget: Duration,
}

impl Default for Policy {
    /// 5 attempts, waits of 0.5 s, 1 s, 2 s, 4 s, 5 s per request, within 30 s.
    fn default() -> Self {
        Policy {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_secs(5),
            budget: Duration::from_secs(30),
        }
    }
}

/// A webhook that did not get a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// `webhook N (http://host:port/…)`: N counts from 1 in rollout.yaml's `notify` list.
    pub webhook: String,
    pub event: Event,
    pub run: String,
    pub why: String,
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was not notified that run {} {}: {}",
            self.webhook,
            self.run,
            match self.event {
                Event::Failed => "failed",
                Event::Promoted => "was promoted",
                Event::RolledBack => "was rolled back",
                Event::AwaitingApproval => "awaits approval",
                Event::RehearsalFailed => "failed its rehearsal",
                Event::Drifted => "found drift",
            },
            self.why
        )
    }
}

#[derive(Debug, Clone)]
struct Target {
    name: String,
    url: String,
    on: Vec<Event>,
}

struct InFlight {
    target: String,
    event: Event,
    run: String,
    last_error: Arc<Mutex<Option<String>>>,
    handle: JoinHandle<()>,
}

/// Sends notifications in the background. Cheap to create; needs a tokio runtime to send.
pub struct Notifier {
    targets: Vec<Target>,
    policy: Policy,
    in_flight: Mutex<Vec<InFlight>>,
    failed: Arc<Mutex<Vec<Undelivered>>>,
}

impl Notifier {
    /// The webhooks of rollout.yaml, with the default [`Policy`].
    pub fn new(notify: &[Notify]) -> Self {
        Self::with_policy(notify, Policy::default())
    }

    pub fn with_policy(notify: &[Notify], policy: Policy) -> Self {
        Notifier {
            targets: notify
                .iter()
                .enumerate()
                .map(|(i, n)| Target {
                    name: format!("webhook {} ({})", i + 1, shown(&n.webhook)),
                    url: n.webhook.clone(),
                    on: n.on.clone(),
                })
                .collect(),
            policy,
            in_flight: Mutex::new(Vec::new()),
            failed: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts delivering `n` to every webhook subscribed to its event, and returns at once.
    /// Must be called from within a tokio runtime.
    pub fn send(&self, n: &Notification) {
        let targets: Vec<&Target> = self
            .targets
            .iter()
            .filter(|t| t.on.contains(&n.event))
            .collect();
        if targets.is_empty() {
            return;
        }
        let body = Bytes::from(serde_json::to_vec(n).expect("a notification serializes"));
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.retain(|d| !d.handle.is_finished());
        for t in targets {
            let last_error = Arc::new(Mutex::new(None));
            let request = Delivery {
                url: t.url.clone(),
                event: n.event,
                id: format!("{}.{}", n.run, n.event.name()),
                body: body.clone(),
            };
            let (policy, failed, last) = (
                self.policy,
                Arc::clone(&self.failed),
                Arc::clone(&last_error),
            );
            let (name, run) = (t.name.clone(), n.run.clone());
            let event = n.event;
            let handle = tokio::spawn(async move {
                match request.run(policy, &last).await {
                    Ok(attempts) => {
                        tracing::debug!(webhook = %name, event = event.name(), attempts, "notification delivered");
                    }
                    Err(why) => {
                        let u = Undelivered {
                            webhook: name,
                            event,
                            run,
                            why,
                        };
                        tracing::warn!("{u}");
                        failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(u);
                    }
                }
            });
            in_flight.push(InFlight {
                target: t.name.clone(),
                event: n.event,
                run: n.run.clone(),
                last_error,
                handle,
            });
        }
    }

    /// One call for the executor: sends what a finished run tells webhooks (see
    /// [`Notification::for_report`]), if anything.
    pub fn run_finished(&self, report: &RunReport) {
        if let Some(n) = Notification::for_report(report, Timestamp::now()) {
            self.send(&n);
        }
    }

    /// Waits up to `deadline` for deliveries in flight, then stops those still retrying, and
    /// returns every notification not delivered since the last flush (given up on, or stopped).
    pub async fn flush(&self, deadline: Duration) -> Vec<Undelivered> {
        let until = Instant::now() + deadline;
        let pending = std::mem::take(
            &mut *self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut stopped = Vec::new();
        for mut d in pending {
            if tokio::time::timeout_at(until, &mut d.handle).await.is_err() {
                d.handle.abort();
                let last = d
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                stopped.push(Undelivered {
                    webhook: d.target,
                    event: d.event,
                    run: d.run,
                    why: match last {
                        Some(e) => format!(
                            "still retrying after {} when rollout had to exit (last: {e})",
                            secs(deadline)
                        ),
                        None => format!(
                            "no answer within {} before rollout had to exit",
                            secs(deadline)
                        ),
                    },
                });
            }
        }
        let mut out =
            std::mem::take(&mut *self.failed.lock().unwrap_or_else(PoisonError::into_inner));
        out.extend(stopped);
        out
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// A URL as shown in messages: scheme, host and port (paths often hold a token).
fn shown(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(u) => {
            let scheme = u.scheme_str().unwrap_or("http");
            let host = u.host().unwrap_or("?");
            let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path_and_query().is_some_and(|p| p.as_str() != "/") {
                "/…"
            } else {
                ""
            };
            format!("{scheme}://{host}{port}{rest}")
        }
        Err(_) => "an unreadable URL".to_string(),
    }
}

struct Delivery {
    url: String,
    event: Event,
    id: String,
    body: Bytes,
}

/// Why one attempt failed, and whether another may succeed.
enum Attempt {
    Retry(String),
    Final(String),
}

impl Delivery {
    /// Tries until delivered, a final refusal, or the policy's limits. `Ok(attempts)`.
    async fn run(&self, policy: Policy, last_error: &Mutex<Option<String>>) -> Result<u32, String> {
        let started = Instant::now();
        let mut backoff = policy.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = policy.budget.saturating_sub(started.elapsed());
            let limit = policy.request_timeout.min(left);
            let why = match tokio::time::timeout(limit, self.post()).await {
                Ok(Ok(status)) if status.is_success() => return Ok(attempt),
                Ok(Ok(status)) if retryable(status) => format!("HTTP {}", status.as_u16()),
                Ok(Ok(status)) => {
                    return Err(format!(
                        "the receiver answered HTTP {} (not retried: it refused the request)",
                        status.as_u16()
                    ));
                }
                Ok(Err(Attempt::Final(e))) => return Err(e),
                Ok(Err(Attempt::Retry(e))) => e,
                Err(_) => format!("no answer within {}", secs(limit)),
            };
            *last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.clone());
            let spent = started.elapsed();
            if attempt >= policy.attempts || spent + backoff >= policy.budget {
                return Err(format!(
                    "gave up after {attempt} attempt{} in {} (last: {why})",
                    if attempt == 1 { "" } else { "s" },
                    secs(spent)
                ));
            }
            tracing::debug!(event = self.event.name(), attempt, ?backoff, %why, "webhook failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }

    /// One POST over a fresh HTTP/1.1 connection.
    async fn post(&self) -> Result<StatusCode, Attempt> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| Attempt::Final(format!("the URL is not valid: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(Attempt::Final(
                    "https webhooks are not supported: this build of rollout has no TLS; use an http:// URL (for instance a relay on this host)".into(),
                ));
            }
            _ => return Err(Attempt::Final("the URL must start with http://".into())),
        }
        let host = uri
            .host()
            .ok_or_else(|| Attempt::Final("the URL has no host".into()))?;
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| Attempt::Retry(format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Attempt::Retry(format!("HTTP handshake failed: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let request = Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("rollout/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-rollout-event", self.event.name())
            .header("x-rollout-delivery", &self.id)
            .body(Full::new(self.body.clone()))
            .map_err(|e| Attempt::Final(format!("cannot build the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Attempt::Retry(format!("the connection failed: {e}")))?;
        let status = response.status();
        // Read the (small) answer so the receiver sees a clean close; its content is not used.
        let _ = response.into_body().collect().await;
        Ok(status)
    }
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_hide_paths_and_credentials() {
        assert_eq!(
            shown("http://hooks.example/rollout/T0KEN"),
            "http://hooks.example/…"
        );
        assert_eq!(shown("http://u:p@127.0.0.1:5000/"), "http://127.0.0.1:5000");
        assert_eq!(shown("https://h:8443"), "https://h:8443");
    }

    #[test]
    fn the_body_carries_the_event_by_its_config_name() {
        let t: Timestamp = "2026-03-01T22:14:03Z".parse().unwrap();
        let n = Notification::new(
            Event::RehearsalFailed,
            "shop",
            "r1",
            Some("web: HTTP 500"),
            t,
        );
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["event"], "rehearsalFailed");
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["time"], "2026-03-01T22:14:03Z");
        assert_eq!(
            v["summary"],
            "shop: run r1 (rehearsal) failed: web: HTTP 500"
        );
    }

    #[test]
    fn only_server_trouble_and_throttling_are_retried() {
        for (code, retry) in [
            (500, true),
            (503, true),
            (429, true),
            (408, true),
            (404, false),
            (400, false),
            (301, false),
        ] {
            assert_eq!(
                retryable(StatusCode::from_u16(code).unwrap()),
                retry,
                "{code}"
            );
        }
    }
}
