//! Webhook notifications against a real HTTP receiver on 127.0.0.1 that answers from a script:
//! retries, backoff, the body, giving up, and never holding the caller past the flush deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollout::manifest::config::Notify;
use rollout::notify::{Event, Notification, Notifier, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Project, free_port};

#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// Read the request, then close the connection without answering.
    Drop,
    /// Read the request and never answer.
    Hang,
}

#[derive(Debug)]
struct Hit {
    at: Instant,
    head: String,
    body: serde_json::Value,
}

struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    /// Answers the n-th request with `script[n]`, and every later one with `then`.
    async fn start(script: Vec<Reply>, then: Reply) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/s3cr3t-token",
            listener.local_addr().unwrap()
        );
        let hits = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&hits);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = Arc::clone(&recorded);
                let script = script.clone();
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(stream).await else {
                        return;
                    };
                    let (mut stream, n) = {
                        let mut hits = recorded.lock().unwrap();
                        hits.push(Hit {
                            at: Instant::now(),
                            head,
                            body: serde_json::from_slice(&body.1).unwrap_or_default(),
                        });
                        (body.0, hits.len() - 1)
                    };
                    match script.get(n).copied().unwrap_or(then) {
                        Reply::Status(code) => {
                            let answer = format!(
                                "HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            );
                            let _ = stream.write_all(answer.as_bytes()).await;
                            let _ = stream.shutdown().await;
                        }
                        Reply::Drop => drop(stream),
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            drop(stream);
                        }
                    }
                });
            }
        });
        Receiver { url, hits }
    }

    fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

/// Reads one HTTP/1.1 request with a content-length body: (head, (stream, body)).
async fn read_request(mut stream: TcpStream) -> Option<(String, (TcpStream, Vec<u8>))> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, (stream, buf[end..end + len].to_vec())))
}

fn hook(url: &str, on: &[Event]) -> Notify {
    Notify {
        webhook: url.to_string(),
        on: on.to_vec(),
    }
}

fn fast(attempts: u32) -> Policy {
    Policy {
        attempts,
        first_backoff: Duration::from_millis(60),
        max_backoff: Duration::from_millis(400),
        request_timeout: Duration::from_millis(500),
        budget: Duration::from_secs(5),
    }
}

fn rolled_back() -> Notification {
    Notification::new(
        Event::RolledBack,
        "shop",
        "t4x9k2a7q",
        Some("candidate web unhealthy"),
        "2026-03-01T22:14:03Z".parse().unwrap(),
    )
}

#[tokio::test]
async fn failures_are_retried_with_growing_waits_until_delivered() {
    let rx = Receiver::start(
        vec![Reply::Status(500), Reply::Drop, Reply::Status(503)],
        Reply::Status(200),
    )
    .await;
    let notifier = Notifier::with_policy(&[hook(&rx.url, &Event::ALL)], fast(5));
    notifier.send(&rolled_back());
    let undelivered = notifier.flush(Duration::from_secs(5)).await;
    assert!(undelivered.is_empty(), "{undelivered:?}");
    let hits = rx.hits.lock().unwrap();
    assert_eq!(hits.len(), 4, "three failures, then the delivery");
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Waits of 60, 120, 240 ms: each gap at least its wait, and each wait twice the last.
    for (gap, wait) in gaps.iter().zip([60u64, 120, 240]) {
        assert!(
            *gap >= Duration::from_millis(wait),
            "gap {gap:?} < {wait}ms: {gaps:?}"
        );
    }
    assert!(gaps[2] > gaps[0] * 2, "backoff did not grow: {gaps:?}");
    for h in hits.iter() {
        assert_eq!(h.body, hits[0].body, "every retry carries the same body");
        assert!(h.head.starts_with("POST /hooks/s3cr3t-token HTTP/1.1\r\n"));
        let head = h.head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-rollout-event: rolledback"), "{head}");
        assert!(
            head.contains("x-rollout-delivery: t4x9k2a7q.rolledback"),
            "{head}"
        );
    }
    assert_eq!(
        hits[0].body,
        serde_json::json!({
            "event": "rolledBack",
            "environment": "shop",
            "run": "t4x9k2a7q",
            "outcome": "rolledBack",
            "reason": "candidate web unhealthy",
            "time": "2026-03-01T22:14:03Z",
            "summary": "shop: run t4x9k2a7q was rolled back: candidate web unhealthy",
        })
    );
}

#[tokio::test]
async fn a_delivery_gives_up_after_its_attempts_and_names_the_webhook() {
    let rx = Receiver::start(vec![], Reply::Status(500)).await;
    let notifier = Notifier::with_policy(&[hook(&rx.url, &Event::ALL)], fast(3));
    notifier.send(&rolled_back());
    let undelivered = notifier.flush(Duration::from_secs(5)).await;
    assert_eq!(rx.count(), 3);
    assert_eq!(undelivered.len(), 1, "{undelivered:?}");
    let port = rx.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let text = undelivered[0].to_string();
    assert!(
        text.starts_with(&format!(
            "webhook 1 (http://127.0.0.1:{port}/…) was not notified that run t4x9k2a7q was rolled back: gave up after 3 attempts"
        )),
        "{text}"
    );
    assert!(text.contains("last: HTTP 500"), "{text}");
    assert!(
        !text.contains("s3cr3t"),
        "the URL's path is not shown: {text}"
    );
    // Reported once.
    assert!(notifier.flush(Duration::from_secs(1)).await.is_empty());
}

#[tokio::test]
async fn the_total_budget_bounds_a_delivery() {
    let rx = Receiver::start(vec![], Reply::Status(502)).await;
    let policy = Policy {
        attempts: 100,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(200),
        request_timeout: Duration::from_millis(500),
        budget: Duration::from_millis(700),
    };
    let notifier = Notifier::with_policy(&[hook(&rx.url, &Event::ALL)], policy);
    let started = Instant::now();
    notifier.send(&rolled_back());
    let undelivered = notifier.flush(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!((2..=6).contains(&rx.count()), "{} requests", rx.count());
    assert_eq!(undelivered.len(), 1);
    assert!(
        undelivered[0].why.contains("gave up"),
        "{:?}",
        undelivered[0]
    );
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let rx = Receiver::start(vec![], Reply::Status(404)).await;
    let notifier = Notifier::with_policy(&[hook(&rx.url, &Event::ALL)], fast(5));
    notifier.send(&rolled_back());
    let undelivered = notifier.flush(Duration::from_secs(5)).await;
    assert_eq!(rx.count(), 1);
    assert!(
        undelivered[0].why.contains("HTTP 404 (not retried"),
        "{undelivered:?}"
    );
}

#[tokio::test]
async fn a_hanging_receiver_holds_the_caller_no_longer_than_the_flush_deadline() {
    let rx = Receiver::start(vec![], Reply::Hang).await;
    let policy = Policy {
        request_timeout: Duration::from_secs(30),
        budget: Duration::from_secs(60),
        ..Policy::default()
    };
    let notifier = Notifier::with_policy(&[hook(&rx.url, &Event::ALL)], policy);
    let started = Instant::now();
    notifier.send(&rolled_back());
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "send waited {:?}",
        started.elapsed()
    );
    let undelivered = notifier.flush(Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "flush took {took:?}"
    );
    assert_eq!(rx.count(), 1, "the request reached the receiver");
    assert_eq!(undelivered.len(), 1);
    assert!(
        undelivered[0]
            .why
            .contains("no answer within 0.3s before rollout had to exit"),
        "{:?}",
        undelivered[0]
    );
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_then_reported() {
    let url = format!("http://127.0.0.1:{}/", free_port());
    let notifier = Notifier::with_policy(&[hook(&url, &Event::ALL)], fast(3));
    notifier.send(&rolled_back());
    let undelivered = notifier.flush(Duration::from_secs(5)).await;
    assert_eq!(undelivered.len(), 1);
    let why = &undelivered[0].why;
    assert!(
        why.contains("gave up after 3 attempts") && why.contains("cannot connect"),
        "{why}"
    );
}

#[tokio::test]
async fn each_webhook_gets_only_the_events_it_subscribed_to() {
    let promoted_only = Receiver::start(vec![], Reply::Status(204)).await;
    let everything = Receiver::start(vec![], Reply::Status(200)).await;
    let notifier = Notifier::with_policy(
        &[
            hook(&promoted_only.url, &[Event::Promoted]),
            hook(&everything.url, &Event::ALL),
        ],
        fast(2),
    );
    let t = jiff::Timestamp::now();
    notifier.send(&Notification::new(Event::Failed, "shop", "r1", None, t));
    notifier.send(&Notification::new(Event::Promoted, "shop", "r2", None, t));
    notifier.send(&Notification::new(
        Event::AwaitingApproval,
        "shop",
        "r3",
        Some("approve: client"),
        t,
    ));
    assert!(notifier.flush(Duration::from_secs(5)).await.is_empty());
    let got: Vec<String> = promoted_only
        .hits
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.body["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ["promoted"]);
    let mut all: Vec<String> = everything
        .hits
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.body["event"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    assert_eq!(all, ["awaitingApproval", "failed", "promoted"]);
}

#[tokio::test]
async fn an_https_webhook_fails_at_once_saying_why() {
    let notifier = Notifier::with_policy(
        &[hook("https://hooks.example/rollout", &Event::ALL)],
        fast(5),
    );
    let started = Instant::now();
    notifier.send(&rolled_back());
    let undelivered = notifier.flush(Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(undelivered.len(), 1);
    assert!(
        undelivered[0]
            .why
            .contains("https webhooks are not supported")
            && undelivered[0]
                .to_string()
                .contains("https://hooks.example/…"),
        "{}",
        undelivered[0]
    );
}

#[test]
fn an_unknown_event_in_rollout_yaml_is_located_and_changes_nothing() {
    let p = Project::new().file(
        "rollout.yaml",
        "notify:\n  - webhook: http://127.0.0.1:9/hook\n    on: [failed, promotd]\n",
    );
    let before = p.snapshot();
    p.run(&["audit"])
        .code(1)
        .stderr_has("rollout.yaml:3:18")
        .stderr_has("unknown event `promotd`");
    assert_eq!(p.snapshot(), before);
}

/// End to end on the real engine: a rehearsal whose smoke check fails tells the webhook, and
/// leaves its start and end in the audit trail.
#[test]
fn a_failed_rehearsal_notifies_its_webhook_and_is_audited() {
    use crate::support::docker::{Cleanup, demo_images, engine, runtime};
    use crate::support::unique;

    runtime().block_on(async { demo_images(&engine().await).await });
    let name = unique("ntf");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    // A runtime with its own worker, so the receiver answers while the CLI runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rx = rt.block_on(Receiver::start(
        vec![Reply::Status(500)],
        Reply::Status(200),
    ));
    let project = Project::new()
        .file(
            "rollout.yaml",
            format!(
                "notify:\n  - {{ webhook: \"{}\", on: [rehearsalFailed] }}\n",
                rx.url
            ),
        )
        .manifest(
            &name,
            &format!(
                "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices:\n  app:\n    image: shop-web:2.4.0\n    ports: [ {{ container: 8080 }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }} }}\n"
            ),
        )
        .playbook(
            "p",
            "apiVersion: rollout/v1\nkind: Playbook\nname: p\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: app, path: /, expectBody: \"shop web 9.9\", retries: 0 } } ] }\n",
        );
    let out = project.run(&["rehearse"]).code(1);
    let run = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .strip_prefix("run ")
        .unwrap()
        .to_string();
    let hits = rx.hits.lock().unwrap();
    assert_eq!(hits.len(), 2, "one 500, then the delivery\n{out}");
    assert_eq!(hits[1].body["event"], "rehearsalFailed");
    assert_eq!(hits[1].body["run"], run.as_str());
    assert_eq!(hits[1].body["environment"], name.as_str());
    assert_eq!(hits[1].body["outcome"], "failed");
    let audit = project
        .run(&["audit", "--run", &run, "-o", "json"])
        .code(0)
        .json();
    let kinds: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"]["kind"].as_str().unwrap(),
                e["event"]["outcome"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(kinds, [("runStarted", "-"), ("runFinished", "failed")]);
    project.run(&["audit", "verify"]).code(0);
}
