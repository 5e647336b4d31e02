//! Change documents: a run's [`RunReport`] rendered for a client's steering committee, as
//! GitHub-flavoured Markdown, one self-contained HTML file, or JSON (`rollout report RUN`).
//!
//! Rendering is pure: the same report gives the same document. [`find`] locates a run's report
//! in the store (or, for runs recorded before rehearsals went to the store, in the state
//! directory's report files) and completes older reports from the revision history.
//!
//! Secret values never reach a report: plans only ever name secrets, and check results are
//! redacted before they are recorded. The documents add nothing that could hold one.

mod find;
mod html;
mod markdown;
pub mod run;
mod tables;

pub use find::{FindError, Selector, find};
pub use html::{escape as escape_html, render as html};
pub use markdown::render as markdown;

use jiff::Timestamp;

use crate::plan::Action;
use crate::report::run::{Analysis, Outcome, RunKind, RunReport, StepStatus};

/// The report as one JSON document: the stable camelCase schema of [`RunReport`].
pub fn json(report: &RunReport) -> String {
    let mut text = serde_json::to_string_pretty(report).expect("a report serializes");
    text.push('\n');
    text
}

fn kind_word(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Rehearsal => "Rehearsal",
        RunKind::Promotion => "Promotion",
        RunKind::Rollback => "Rollback",
        RunKind::Down => "Down",
    }
}

/// The outcome in a few words, and the reason apart.
fn outcome_words(o: &Outcome) -> (&'static str, Option<&str>) {
    match o {
        Outcome::Running => ("still running", None),
        Outcome::Passed => ("passed", None),
        Outcome::Promoted => ("promoted", None),
        Outcome::Restored => ("restored", None),
        Outcome::Failed { reason } => ("failed", Some(reason)),
        Outcome::Cancelled { reason } => ("cancelled", Some(reason)),
        Outcome::RolledBack { reason } => ("rolled back", Some(reason)),
        Outcome::Refused { reason } => ("refused", Some(reason)),
    }
}

/// How the outcome reads at a glance: good, bad, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    Good,
    Bad,
    Neutral,
}

fn outcome_tone(o: &Outcome) -> Tone {
    match o {
        Outcome::Passed | Outcome::Promoted | Outcome::Restored => Tone::Good,
        Outcome::Failed { .. } | Outcome::RolledBack { .. } | Outcome::Cancelled { .. } => {
            Tone::Bad
        }
        Outcome::Running | Outcome::Refused { .. } => Tone::Neutral,
    }
}

fn status_word(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Ok => "ok",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
        StepStatus::NotRun => "not run",
    }
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Restart => "restarted",
        Action::Unchanged => "unchanged",
        Action::Remove => "removed",
    }
}

fn analysis_words(a: &Analysis) -> (&'static str, Option<&str>) {
    match a {
        Analysis::NotAnalysed => ("figures only (no analysis)", None),
        Analysis::Pass => ("pass", None),
        Analysis::Fail { reason } => ("FAIL", Some(reason)),
    }
}

/// `2026-03-01 10:00:03 UTC`: reports are read far from where they were made.
fn time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The report's start, which older reports keep as text.
fn started(r: &RunReport) -> String {
    r.started
        .parse::<Timestamp>()
        .map(time)
        .unwrap_or_else(|_| r.started.clone())
}

/// `850 ms`, `12.3 s`, `2 min 05 s`.
fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("n/a".into(), |r| format!("{:.2}%", r * 100.0))
}

fn millis(ms: Option<u64>) -> String {
    ms.map_or("n/a".into(), |m| format!("{m} ms"))
}

/// The canary thresholds of a figure, in words (`error rate ≤ 5.00%, p99 ≤ 500 ms, ≥ 20 requests`).
fn thresholds(f: &crate::report::run::CanaryFigures) -> String {
    let mut t = Vec::new();
    if let Some(m) = f.max_error_rate {
        t.push(format!("error rate ≤ {}", percent(Some(m))));
    }
    if let Some(m) = f.max_p99_ms {
        t.push(format!("p99 ≤ {}", duration_ms(m)));
    }
    if let Some(m) = f.min_requests {
        t.push(format!("≥ {m} requests"));
    }
    if t.is_empty() {
        "none".into()
    } else {
        t.join(", ")
    }
}

/// `2 containers, 1 network, 0 volumes`.
fn removed(t: &crate::report::run::Teardown) -> String {
    let n =
        |count: usize, what: &str| format!("{count} {what}{}", if count == 1 { "" } else { "s" });
    format!(
        "{}, {}, {}",
        n(t.containers, "container"),
        n(t.networks, "network"),
        n(t.volumes, "volume")
    )
}

/// The step that made the run fail, if one did.
fn failed_step(r: &RunReport) -> Option<&crate::report::run::StepReport> {
    r.steps.iter().find(|s| s.status == StepStatus::Failed)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A report as a real promotion that was rolled back leaves it, plus the accountability
    //! data that `rollout approve` will record, for the renderers' tests.

    use std::time::Duration;

    use jiff::Timestamp;

    use crate::check::{CheckResult, Verdict};
    use crate::plan::Action;
    use crate::report::run::*;

    pub const APPROVAL_NOTE: &str = "Go ahead <b>after</b> the \"backup\" & not before";

    fn at(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    pub fn report() -> RunReport {
        let mut steps = vec![
            StepReport::new(
                0,
                "testEnv",
                StepStatus::Ok,
                "test version shop-test-t1 is up".into(),
            ),
            StepReport::new(
                1,
                "smoke on test (2 checks)",
                StepStatus::Ok,
                "2 of 2 checks passed".into(),
            ),
            StepReport::new(
                2,
                "canary: 25% of traffic for 2s",
                StepStatus::Failed,
                "web: 40 requests, error rate 100.00%, p99 5ms: error rate above 5.00%".into(),
            ),
            StepReport::new(
                3,
                "promote (drain 2s)",
                StepStatus::NotRun,
                "not run: web: error rate above 5.00%".into(),
            ),
        ];
        for (s, (t, ms)) in steps.iter_mut().zip([
            ("2026-03-02T21:30:01Z", 2300),
            ("2026-03-02T21:30:03.3Z", 410),
            ("2026-03-02T21:30:03.7Z", 2040),
            ("2026-03-02T21:30:05.8Z", 0),
        ]) {
            s.started = at(t);
            s.elapsed_ms = ms;
        }
        steps[1].checks = vec![
            CheckResult {
                description: "http GET web /healthz expects 200".into(),
                service: "web".into(),
                verdict: Verdict::Pass {
                    detail: "200 in 3 ms".into(),
                },
                attempts: 1,
                elapsed: Duration::from_millis(12),
            },
            CheckResult {
                description: "tcp api:9000".into(),
                service: "api".into(),
                verdict: Verdict::Fail {
                    reason: "connection refused".into(),
                },
                attempts: 3,
                elapsed: Duration::from_millis(380),
            },
        ];
        steps[2].canary = vec![CanaryFigures {
            service: "web".into(),
            weight: 25,
            hold_ms: 2000,
            requests: 40,
            errors: 40,
            error_rate: Some(1.0),
            p99_ms: Some(5),
            max_error_rate: Some(0.05),
            max_p99_ms: Some(500),
            min_requests: Some(5),
            analysis: Analysis::Fail {
                reason: "error rate above 5.00%".into(),
            },
        }];
        RunReport {
            run: "t1abc2def".into(),
            kind: RunKind::Promotion,
            environment: "shop".into(),
            client: "acme".into(),
            playbook: "standard".into(),
            started: "2026-03-02T21:30:00Z".into(),
            user: "marie".into(),
            outcome: Outcome::RolledBack {
                reason: "web: error rate above 5.00%".into(),
            },
            elapsed_ms: 7400,
            steps,
            teardown: Some(Teardown {
                containers: 2,
                networks: 1,
                volumes: 0,
                error: None,
            }),
            switch_ms: None,
            rollback_ms: Some(38),
            reason: Some("<script>alert('reason')</script> ticket #42 | upgrade".into()),
            revision: Some(7),
            changes: vec![ServiceChange {
                service: "web".into(),
                action: Action::Update,
                stateful: false,
                managed_by: None,
                changes: vec![
                    FieldChange {
                        field: "image".into(),
                        before: Some("shop-web:2.5.0".into()),
                        after: Some("shop-web:2.7.0".into()),
                    },
                    FieldChange {
                        field: "env API_URL".into(),
                        before: Some("http://api:9000".into()),
                        after: Some("http://api:9001".into()),
                    },
                    FieldChange {
                        field: "secret SESSION_KEY".into(),
                        before: Some("set (value hidden)".into()),
                        after: Some("changed (value hidden)".into()),
                    },
                ],
            }],
            approvals: vec![Approval {
                by: "jean.client".into(),
                role: "client".into(),
                at: "2026-03-02T20:55:00Z".parse().unwrap(),
                note: Some(APPROVAL_NOTE.into()),
            }],
            authorizations: vec![Authorization {
                party: "hosting-co".into(),
                reference: "CHG-2291".into(),
                by: "ops@hosting-co".into(),
                note: Some("db maintenance window agreed".into()),
                expires: at("2026-03-03T06:00:00Z"),
            }],
            emergency: Some(Emergency {
                reason: "payment outage <fix>".into(),
            }),
            awaiting: Vec::new(),
            gate_step: None,
        }
    }
}
