//! The resolved playbook: how a change goes out, step by step.
//!
//! A playbook is resolved on its own (durations, weights, windows) by [`resolve`], then checked
//! against the environment it is used with by [`Playbook::check_against`] (check targets and
//! `copyData` must name real services of that environment).

use std::time::Duration;

use serde::Serialize;

use super::duration;
use super::env::{Checker, Environment, Protocol};
use super::json_path;
use super::raw::{RawAnalysis, RawCheck, RawPlaybook, RawStep, RawWindow};
use super::source::{Diagnostics, Pos, Source};
use super::suggest;
use super::yaml::{Spanned, pos};

/// A traffic weight in percent, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Weight(u8);

impl Weight {
    pub fn new(percent: i64) -> Option<Self> {
        u8::try_from(percent).ok().filter(|p| *p <= 100).map(Weight)
    }
    pub fn percent(self) -> u8 {
        self.0
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Playbook {
    pub name: String,
    /// `None` for the built-in default playbook.
    pub source: Option<std::path::PathBuf>,
    pub window: Option<Window>,
    pub steps: Vec<Step>,
    pub on_failure: OnFailure,
    /// The person who started a run cannot approve it (`twoPersonRule`, on unless set false).
    pub two_person_rule: bool,
    /// Roles whose `approve` step the environment added (`requires.approvals`): the playbook
    /// had none for them.
    pub required: Vec<String>,
    /// Where each step and check names a service, for errors when checked against an environment.
    #[serde(skip)]
    refs: Vec<ServiceRef>,
}

#[derive(Debug, Clone)]
struct ServiceRef {
    name: String,
    at: Pos,
    what: RefKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefKind {
    Check,
    CopyData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    #[serde(serialize_with = "weekdays")]
    pub days: Vec<jiff::civil::Weekday>,
    /// Minutes after midnight; `to` before `from` means the window crosses midnight.
    pub from: Minutes,
    pub to: Minutes,
    pub tz: String,
    pub freezes: Vec<Freeze>,
}

fn weekdays<S: serde::Serializer>(days: &[jiff::civil::Weekday], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(days.iter().map(|d| weekday_name(*d)))
}

pub fn weekday_name(d: jiff::civil::Weekday) -> &'static str {
    use jiff::civil::Weekday::*;
    match d {
        Monday => "mon",
        Tuesday => "tue",
        Wednesday => "wed",
        Thursday => "thu",
        Friday => "fri",
        Saturday => "sat",
        Sunday => "sun",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Minutes(pub u16);

impl std::fmt::Display for Minutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Freeze {
    pub from: jiff::civil::Date,
    pub to: jiff::civil::Date,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "step")]
pub enum Step {
    TestEnv {
        #[serde(with = "super::env::millis")]
        ttl: Duration,
        copy_data: Vec<String>,
    },
    Smoke {
        target: Target,
        checks: Vec<Check>,
    },
    Approve {
        by: String,
    },
    Canary {
        weight: Weight,
        #[serde(with = "super::env::millis")]
        hold: Duration,
        analysis: Option<Analysis>,
    },
    Promote {
        #[serde(with = "super::env::millis")]
        drain: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Test,
    Production,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Test => "test",
            Target::Production => "production",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    pub max_error_rate: Option<f64>,
    #[serde(with = "opt_millis")]
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
}

mod opt_millis {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub service: String,
    pub kind: CheckKind,
    #[serde(with = "super::env::millis")]
    pub timeout: Duration,
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum CheckKind {
    Http {
        /// `None`: the service's first http port.
        port: Option<u16>,
        path: String,
        expect_status: u16,
        expect_body: Option<String>,
        expect_headers: Vec<(String, String)>,
        expect_json: Option<(String, serde_json::Value)>,
    },
    Tcp {
        port: u16,
    },
    Exec {
        command: Vec<String>,
        expect_exit: i64,
        expect_output: Option<String>,
    },
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            CheckKind::Http {
                port,
                path,
                expect_status,
                expect_body,
                ..
            } => {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                write!(
                    f,
                    "http GET {}{port} {path} expects {expect_status}",
                    self.service
                )?;
                if let Some(b) = expect_body {
                    write!(f, " and body containing {b:?}")?;
                }
                Ok(())
            }
            CheckKind::Tcp { port } => write!(f, "tcp {}:{port}", self.service),
            CheckKind::Exec {
                command,
                expect_exit,
                ..
            } => {
                write!(
                    f,
                    "exec in {}: {} expects exit {expect_exit}",
                    self.service,
                    command.join(" ")
                )
            }
        }
    }
}

pub const DEFAULT_TTL: Duration = Duration::from_secs(2 * 3600);
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(15);
pub const DEFAULT_HOLD: Duration = Duration::from_secs(60);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CHECK_RETRIES: u32 = 3;
pub const DEFAULT_MIN_REQUESTS: u64 = 20;

/// The name of the built-in default playbook, the one a project without playbooks gets.
pub const BUILTIN_NAME: &str = "default (built-in)";

impl Playbook {
    /// The built-in safe default: a test version, every service's health checked there,
    /// promotion, a production health check, rollback on failure.
    pub fn builtin_default() -> Self {
        Playbook {
            name: BUILTIN_NAME.into(),
            source: None,
            window: None,
            steps: vec![
                Step::TestEnv {
                    ttl: DEFAULT_TTL,
                    copy_data: Vec::new(),
                },
                Step::Smoke {
                    target: Target::Test,
                    checks: Vec::new(),
                },
                Step::Promote {
                    drain: DEFAULT_DRAIN,
                },
                Step::Smoke {
                    target: Target::Production,
                    checks: Vec::new(),
                },
            ],
            on_failure: OnFailure::Rollback,
            two_person_rule: true,
            required: Vec::new(),
            refs: Vec::new(),
        }
    }

    /// A playbook of one `promote` step, for rollbacks: what they put back already ran.
    pub fn switch_only(name: String) -> Self {
        Playbook {
            name,
            source: None,
            window: None,
            steps: vec![Step::Promote {
                drain: DEFAULT_DRAIN,
            }],
            on_failure: OnFailure::Rollback,
            two_person_rule: true,
            required: Vec::new(),
            refs: Vec::new(),
        }
    }

    /// This playbook as the environment's gates make it: an `approve` step for each role in
    /// `roles` it has none for, before its first step that changes production (after the test
    /// version's steps), so that choosing a playbook never skips a gate the environment requires.
    pub fn requiring(mut self, roles: &[String]) -> Self {
        let at = self
            .steps
            .iter()
            .position(|s| matches!(s, Step::Canary { .. } | Step::Promote { .. }))
            .unwrap_or(self.steps.len());
        let missing: Vec<String> = roles
            .iter()
            .filter(|r| {
                !self
                    .steps
                    .iter()
                    .any(|s| matches!(s, Step::Approve { by } if by == *r))
            })
            .cloned()
            .collect();
        for (i, by) in missing.iter().enumerate() {
            self.steps.insert(at + i, Step::Approve { by: by.clone() });
        }
        self.required = missing;
        self
    }

    pub fn is_builtin(&self) -> bool {
        self.source.is_none()
    }

    /// Checks that every service this playbook names exists in `env` (and that `copyData` names
    /// stateful services). Errors point into the playbook file.
    pub fn check_against(&self, src: &Source, env: &Environment) -> Result<(), Diagnostics> {
        let mut c = Checker::new(src);
        for r in &self.refs {
            match env.service(&r.name) {
                None => c.error(
                    r.at,
                    format!(
                        "{} names service `{}`, which environment `{}` does not have (services: {})",
                        if r.what == RefKind::Check { "this check" } else { "copyData" },
                        r.name,
                        env.name,
                        suggest::listing(env.services.iter().map(|s| s.name.as_str()))
                    ),
                ),
                Some(s) if r.what == RefKind::CopyData && s.volumes.is_empty() => c.error(
                    r.at,
                    format!("copyData names `{}`, which has no volumes to copy", r.name),
                ),
                Some(_) => {}
            }
        }
        for step in &self.steps {
            if let Step::Smoke { checks, .. } = step {
                for (check, r) in checks
                    .iter()
                    .zip(self.refs.iter().filter(|r| r.what == RefKind::Check))
                {
                    if let (CheckKind::Http { port: None, .. }, Some(svc)) =
                        (&check.kind, env.service(&check.service))
                        && !svc.ports.iter().any(|p| p.protocol == Protocol::Http)
                    {
                        c.error(
                            r.at,
                            format!(
                                "this http check names no port and service `{}` has no http port",
                                svc.name
                            ),
                        );
                    }
                }
            }
        }
        c.finish(())
    }
}

/// Resolves a parsed playbook.
pub fn resolve(src: &Source, raw: RawPlaybook) -> Result<Playbook, Diagnostics> {
    let RawPlaybook {
        api_version,
        kind,
        name,
        window,
        steps,
        on_failure,
        two_person_rule,
    } = raw;
    let mut c = Checker::new(src);
    c.head(&api_version, &kind, "Playbook");
    let name = c.name(&name, "playbook name");
    let window = window.as_ref().map(|w| resolve_window(&mut c, w));
    let on_failure = c.keyword(
        on_failure.as_ref(),
        "onFailure",
        &[("rollback", OnFailure::Rollback)],
    );
    let mut refs = Vec::new();
    let mut out = Vec::new();
    if steps.value.is_empty() {
        c.error(pos(&steps), "a playbook needs at least one step");
    }
    for step in &steps.value {
        out.push(resolve_step(&mut c, step, &mut refs));
    }
    let promotes = out
        .iter()
        .filter(|s| matches!(s, Step::Promote { .. }))
        .count();
    let first_test_env = out.iter().position(|s| matches!(s, Step::TestEnv { .. }));
    let first_promote = out.iter().position(|s| matches!(s, Step::Promote { .. }));
    let first_production = out
        .iter()
        .position(|s| matches!(s, Step::Canary { .. } | Step::Promote { .. }));
    let last_approve = out.iter().rposition(|s| matches!(s, Step::Approve { .. }));
    if promotes > 1 {
        c.error(
            pos(&steps),
            "a playbook can promote only once; remove the extra `promote` steps",
        );
    }
    let mut last_weight = 0;
    for (i, (step, raw)) in out.iter().zip(steps.value.iter()).enumerate() {
        match step {
            Step::Smoke { target: Target::Test, .. } if first_test_env.is_none_or(|t| t > i) => c.error(
                pos(raw),
                "a smoke step targets the test version before any `testEnv` step creates it",
            ),
            Step::Canary { weight, .. } if first_promote.is_some_and(|p| p < i) => {
                c.error(pos(raw), format!("canary {}% comes after `promote`; canary steps go before it", weight.percent()))
            }
            Step::Canary { weight, .. } => {
                if weight.percent() < last_weight {
                    c.error(pos(raw), format!("canary weight {}% is lower than the previous step's {last_weight}%", weight.percent()));
                }
                last_weight = weight.percent();
            }
            Step::Approve { by } if first_production.is_some_and(|p| p < i) => c.error(
                pos(raw),
                format!("the approval by `{by}` comes after a step that changes production; approve steps go before canary and promote"),
            ),
            Step::TestEnv { .. } | Step::Smoke { target: Target::Test, .. }
                if last_approve.is_some_and(|a| a < i) =>
            {
                c.error(pos(raw), "a test-version step after an `approve` step: a run waiting for approval lets its test version go, so test steps go before approve")
            }
            Step::TestEnv { .. } if first_promote.is_some_and(|p| p < i) => {
                c.error(pos(raw), "testEnv comes after `promote`: production would be changed before the test version ran")
            }
            _ => {}
        }
    }
    let playbook = Playbook {
        name,
        source: Some(src.path().to_path_buf()),
        window,
        steps: out,
        on_failure,
        two_person_rule: two_person_rule.is_none_or(|t| t.value),
        required: Vec::new(),
        refs,
    };
    c.finish(playbook)
}

fn resolve_step(c: &mut Checker<'_>, step: &Spanned<RawStep>, refs: &mut Vec<ServiceRef>) -> Step {
    match &step.value {
        RawStep::TestEnv(t) => {
            let ttl = c.duration(&t.ttl, DEFAULT_TTL);
            let mut copy = Vec::new();
            for s in t.copy_data.iter().flatten() {
                refs.push(ServiceRef {
                    name: s.value.clone(),
                    at: pos(s),
                    what: RefKind::CopyData,
                });
                copy.push(s.value.clone());
            }
            Step::TestEnv {
                ttl,
                copy_data: copy,
            }
        }
        RawStep::Smoke(s) => {
            let target = c.keyword(
                s.target.as_ref(),
                "smoke target",
                &[("test", Target::Test), ("production", Target::Production)],
            );
            let checks = s
                .checks
                .iter()
                .map(|ch| resolve_check(c, ch, refs))
                .collect();
            Step::Smoke { target, checks }
        }
        RawStep::Approve(a) => Step::Approve {
            by: c.name(&a.by, "approver role"),
        },
        RawStep::Canary(k) => {
            let weight = Weight::new(k.weight.value).unwrap_or_else(|| {
                c.error(
                    pos(&k.weight),
                    format!(
                        "canary weight {} is out of range; expected a percentage from 0 to 100",
                        k.weight.value
                    ),
                );
                Weight(0)
            });
            let hold = c.duration(&k.hold, DEFAULT_HOLD);
            let analysis = k.analysis.as_ref().map(|a| resolve_analysis(c, a));
            Step::Canary {
                weight,
                hold,
                analysis,
            }
        }
        RawStep::Promote(p) => Step::Promote {
            drain: c.duration(&p.drain, DEFAULT_DRAIN),
        },
    }
}

fn resolve_analysis(c: &mut Checker<'_>, a: &Spanned<RawAnalysis>) -> Analysis {
    let RawAnalysis {
        max_error_rate,
        max_p99,
        min_requests,
    } = &a.value;
    let rate = max_error_rate.as_ref().map(|r| {
        let text = r.value.0.trim();
        let parsed = match text.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
            None => text.parse::<f64>(),
        };
        match parsed {
            Ok(v) if (0.0..=1.0).contains(&v) => v,
            Ok(_) => {
                c.error(
                    pos(r),
                    format!(
                        "maxErrorRate {text} is out of range; expected a fraction from 0 to 1 (0.01) or a percentage from 0% to 100% (1%)"
                    ),
                );
                0.0
            }
            Err(_) => {
                c.error(
                    pos(r),
                    format!(
                        "maxErrorRate `{text}` is not a rate; expected a fraction from 0 to 1 (0.01) or a percentage (1%)"
                    ),
                );
                0.0
            }
        }
    });
    let p99 = max_p99
        .as_ref()
        .map(|_| c.duration(max_p99, Duration::ZERO));
    let min = c.count(min_requests, "minRequests", DEFAULT_MIN_REQUESTS as u32) as u64;
    if rate.is_none() && p99.is_none() {
        c.error(pos(a), "analysis needs `maxErrorRate`, `maxP99` or both");
    }
    Analysis {
        max_error_rate: rate,
        max_p99: p99,
        min_requests: min,
    }
}

fn resolve_check(c: &mut Checker<'_>, ch: &Spanned<RawCheck>, refs: &mut Vec<ServiceRef>) -> Check {
    let (service, timeout, retries, kind) = match &ch.value {
        RawCheck::Http(h) => {
            let path = h
                .path
                .as_ref()
                .map_or_else(|| "/".to_string(), |p| p.value.clone());
            if !path.starts_with('/') {
                c.error(
                    pos(h.path.as_ref().expect("given")),
                    format!("http path `{path}` must start with `/`"),
                );
            }
            let status = match &h.expect_status {
                None => 200,
                Some(s) => match u16::try_from(s.value) {
                    Ok(v) if (100..=599).contains(&v) => v,
                    _ => {
                        c.error(
                            pos(s),
                            format!("expectStatus {} is not an HTTP status (100-599)", s.value),
                        );
                        200
                    }
                },
            };
            let headers = h
                .expect_header
                .iter()
                .flat_map(|m| m.0.iter())
                .map(|(k, v)| (k.value.to_ascii_lowercase(), v.value.0.clone()))
                .collect();
            let json = h.expect_json.as_ref().map(|j| {
                if let Err(e) = json_path::parse(&j.value.path.value) {
                    c.error(pos(&j.value.path), format!("invalid JSON path: {e}"));
                }
                (j.value.path.value.clone(), j.value.equals.clone())
            });
            let kind = CheckKind::Http {
                port: h.port.as_ref().map(|p| c.port(p, "check port")),
                path,
                expect_status: status,
                expect_body: h.expect_body.clone(),
                expect_headers: headers,
                expect_json: json,
            };
            (&h.service, &h.timeout, &h.retries, kind)
        }
        RawCheck::Tcp(t) => (
            &t.service,
            &t.timeout,
            &t.retries,
            CheckKind::Tcp {
                port: c.port(&t.port, "check port"),
            },
        ),
        RawCheck::Exec(e) => {
            if e.command.value.is_empty() {
                c.error(
                    pos(&e.command),
                    "an exec check needs a command, e.g. [/bin/check]",
                );
            }
            let kind = CheckKind::Exec {
                command: e.command.value.clone(),
                expect_exit: e.expect_exit.as_ref().map_or(0, |x| x.value),
                expect_output: e.expect_output.clone(),
            };
            (&e.service, &e.timeout, &e.retries, kind)
        }
    };
    refs.push(ServiceRef {
        name: service.value.clone(),
        at: pos(service),
        what: RefKind::Check,
    });
    Check {
        service: service.value.clone(),
        kind,
        timeout: c.duration(timeout, DEFAULT_CHECK_TIMEOUT),
        retries: c.count(retries, "retries", DEFAULT_CHECK_RETRIES),
    }
}

fn resolve_window(c: &mut Checker<'_>, w: &Spanned<RawWindow>) -> Window {
    use jiff::civil::Weekday;
    let RawWindow {
        days,
        from,
        to,
        tz,
        freezes,
    } = &w.value;
    let mut out_days = Vec::new();
    for d in days {
        let day = match d.value.to_ascii_lowercase().as_str() {
            "mon" | "monday" => Some(Weekday::Monday),
            "tue" | "tuesday" => Some(Weekday::Tuesday),
            "wed" | "wednesday" => Some(Weekday::Wednesday),
            "thu" | "thursday" => Some(Weekday::Thursday),
            "fri" | "friday" => Some(Weekday::Friday),
            "sat" | "saturday" => Some(Weekday::Saturday),
            "sun" | "sunday" => Some(Weekday::Sunday),
            _ => None,
        };
        match day {
            Some(day) if out_days.contains(&day) => {
                c.error(pos(d), format!("`{}` is listed twice", d.value))
            }
            Some(day) => out_days.push(day),
            None => c.error(
                pos(d),
                format!(
                    "unknown day `{}`; expected mon, tue, wed, thu, fri, sat or sun",
                    d.value
                ),
            ),
        }
    }
    if days.is_empty() {
        c.error(pos(w), "a window needs at least one day");
    }
    let from_m = clock(c, from);
    let to_m = clock(c, to);
    if from_m == to_m {
        c.error(pos(to), "the window opens and closes at the same time");
    }
    c.time_zone(tz);
    let mut out_freezes = Vec::new();
    for f in freezes.iter().flatten() {
        let from = date(c, &f.value.from);
        let to = date(c, &f.value.to);
        if let (Some(from), Some(to)) = (from, to) {
            if to < from {
                c.error(pos(&f.value.to), "this freeze ends before it starts");
            }
            out_freezes.push(Freeze {
                from,
                to,
                reason: f.value.reason.clone(),
            });
        }
    }
    Window {
        days: out_days,
        from: from_m,
        to: to_m,
        tz: tz.value.clone(),
        freezes: out_freezes,
    }
}

fn clock(c: &mut Checker<'_>, v: &Spanned<String>) -> Minutes {
    let parsed = v.value.split_once(':').and_then(|(h, m)| {
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && v.value.len() == 5).then_some(Minutes(h * 60 + m))
    });
    parsed.unwrap_or_else(|| {
        c.error(
            pos(v),
            format!(
                "`{}` is not a time of day; expected HH:MM, e.g. \"22:00\"",
                v.value
            ),
        );
        Minutes(0)
    })
}

fn date(c: &mut Checker<'_>, v: &Spanned<String>) -> Option<jiff::civil::Date> {
    match v.value.parse::<jiff::civil::Date>() {
        Ok(d) => Some(d),
        Err(_) => {
            c.error(
                pos(v),
                format!("`{}` is not a date; expected YYYY-MM-DD", v.value),
            );
            None
        }
    }
}

/// A fraction as a percentage with at most two decimals and no float noise (0.07 -> "7").
fn percent(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Formats a playbook step in one line, for plans and progress.
pub fn describe(step: &Step) -> String {
    match step {
        Step::TestEnv { ttl, copy_data } => {
            let mut s = format!(
                "testEnv: start a test version (ttl {})",
                duration::format(*ttl)
            );
            if !copy_data.is_empty() {
                s.push_str(&format!(
                    ", with a copy of the data of {}",
                    copy_data.join(", ")
                ));
            }
            s
        }
        Step::Smoke { target, checks } if checks.is_empty() => {
            format!("smoke on {target}: every service's health check")
        }
        Step::Smoke { target, checks } => format!(
            "smoke on {target}: {} check{}",
            checks.len(),
            if checks.len() == 1 { "" } else { "s" }
        ),
        Step::Approve { by } => format!("approve: wait for an approval by `{by}`"),
        Step::Canary {
            weight,
            hold,
            analysis,
        } => {
            let mut s = format!(
                "canary: {}% of traffic for {}",
                weight.percent(),
                duration::format(*hold)
            );
            if let Some(a) = analysis {
                let mut limits = Vec::new();
                if let Some(r) = a.max_error_rate {
                    limits.push(format!("error rate <= {}%", percent(r)));
                }
                if let Some(p) = a.max_p99 {
                    limits.push(format!("p99 <= {}", duration::format(p)));
                }
                s.push_str(&format!(
                    ", analysis: {} (min {} requests)",
                    limits.join(", "),
                    a.min_requests
                ));
            }
            s
        }
        Step::Promote { drain } => format!(
            "promote: switch all traffic, drain the old version for up to {}",
            duration::format(*drain)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_have_no_float_noise() {
        assert_eq!(percent(0.07), "7");
        assert_eq!(percent(0.01), "1");
        assert_eq!(percent(0.015), "1.5");
        assert_eq!(percent(0.0), "0");
    }

    fn analysis_of(rate: &str) -> Result<Option<f64>, String> {
        let text = format!(
            "apiVersion: rollout/v1\nkind: Playbook\nname: p\nsteps:\n  - canary: {{ weight: 10, hold: 1s, analysis: {{ maxErrorRate: {rate} }} }}\n  - promote: {{}}\n"
        );
        let src = Source::new("p.yaml", text.as_str());
        let raw = super::super::yaml::parse(&src, "a playbook").map_err(|e| e.to_string())?;
        let pb = resolve(&src, raw).map_err(|e| e.to_string())?;
        match &pb.steps[0] {
            Step::Canary { analysis, .. } => Ok(analysis.as_ref().and_then(|a| a.max_error_rate)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn max_error_rate_takes_a_fraction_or_a_percentage_and_says_which_it_wants() {
        assert_eq!(analysis_of("0.01"), Ok(Some(0.01)));
        assert_eq!(analysis_of("1%"), Ok(Some(0.01)));
        assert_eq!(analysis_of("\"2.5 %\""), Ok(Some(0.025)));
        let err = analysis_of("lots").unwrap_err();
        assert!(err.contains("p.yaml:5:"), "{err}");
        assert!(
            err.contains("maxErrorRate `lots` is not a rate; expected a fraction from 0 to 1 (0.01) or a percentage (1%)"),
            "{err}"
        );
        let err = analysis_of("150%").unwrap_err();
        assert!(err.contains("maxErrorRate 150% is out of range"), "{err}");
    }
}
