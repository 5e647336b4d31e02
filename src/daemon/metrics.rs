//! `GET /metrics`: Prometheus text format (0.0.4), every name prefixed `rollout_`, computed
//! on each scrape from the store, the engine and each environment's edge proxy. It needs a
//! bearer token with `read`, like the API, and shows only the token's clients' environments.
//!
//! - `rollout_runs_total{environment,kind,outcome}`: runs recorded in the store.
//! - `rollout_rollbacks_total{environment,cause}`: `automatic` (a promotion rolled back by
//!   itself) and `manual` (`rollout rollback` runs that completed).
//! - `rollout_step_duration_seconds_sum|_count{environment,step}`: time spent per kind of step
//!   over the last 200 runs of each environment.
//! - `rollout_drift{environment}` (1 when what runs differs from the manifest) and
//!   `rollout_drift_services{environment}` (how many services differ), computed with
//!   `plan::compute` against the engine.
//! - `rollout_rehearsal_last_passed{environment}`, `rollout_rehearsal_last_timestamp_seconds`.
//! - `rollout_proxy_backend_requests_total`, `rollout_proxy_backend_connection_errors_total`,
//!   `rollout_proxy_backend_responses_total{class}`, `rollout_proxy_backend_in_flight`, per
//!   `environment` and `backend`, read from the edge proxy's admin API.
//! - `rollout_scrape_error{environment,part}`: 1 for a part that could not be read this time.
//!
//! With `daemon.gitops`, from the controller's status (its environments of the token's clients):
//! - `rollout_gitops_drift{environment}`: 1 drifted, 0 in sync, as the controller last found it.
//! - `rollout_gitops_failed_commit{environment}`: 1 while a failed commit waits for a new commit
//!   or a retry.
//! - `rollout_gitops_fetch_ok`, `rollout_gitops_fetch_failures_total`,
//!   `rollout_gitops_last_fetch_success_timestamp_seconds`: the repository's side.
//!
//! With `daemon.rehearsals`, from the scheduler's log:
//! - `rollout_scheduled_rehearsals_total{environment,outcome}`: due times by how they ended
//!   (`passed`, `failed`, ..., and `missed`).
//! - `rollout_scheduled_rehearsal_next_due_timestamp_seconds{environment,entry}`.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::api::{ApiError, Caller, require, visible};
use super::auth::Resolved;
use super::{Daemon, Shared};
use crate::manifest::config::Right;

pub fn router() -> axum::Router<Shared> {
    axum::Router::new().route("/metrics", get(metrics))
}

async fn metrics(
    State(daemon): State<Shared>,
    Caller(token): Caller,
) -> Result<impl IntoResponse, ApiError> {
    require(&token, Right::Read)?;
    let envs: Vec<String> = visible(&daemon, &token)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut text = render(&daemon, &envs).await;
    text.push_str(&background(&daemon, &token, jiff::Timestamp::now())?.render());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

type Labels = Vec<(&'static str, String)>;

/// One metric family being written.
#[derive(Default)]
struct Family {
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, Labels, f64)>,
}

#[derive(Default)]
struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

impl Exposition {
    fn family(&mut self, name: &'static str, kind: &'static str, help: &'static str) {
        self.families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            samples: Vec::new(),
        });
    }

    fn sample(&mut self, family: &'static str, suffix: &str, labels: Labels, value: f64) {
        if let Some(f) = self.families.get_mut(family) {
            f.samples.push((format!("{family}{suffix}"), labels, value));
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (sample, labels, value) in &f.samples {
                out.push_str(sample);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition for `envs`.
pub async fn render(daemon: &Daemon, envs: &[String]) -> String {
    let mut x = Exposition::default();
    x.family(
        "rollout_runs_total",
        "counter",
        "Runs recorded in the store, by environment, kind and outcome.",
    );
    x.family(
        "rollout_rollbacks_total",
        "counter",
        "Rollbacks: automatic (a promotion put back) and manual (rollout rollback).",
    );
    x.family(
        "rollout_step_duration_seconds",
        "summary",
        "Time spent in playbook steps over the environment's last 200 runs, by kind of step.",
    );
    x.family(
        "rollout_drift",
        "gauge",
        "1 when what runs differs from the environment's manifest, 0 when it matches.",
    );
    x.family(
        "rollout_drift_services",
        "gauge",
        "Services whose running state differs from the manifest.",
    );
    x.family(
        "rollout_rehearsal_last_passed",
        "gauge",
        "1 when the environment's newest rehearsal passed, 0 when it failed.",
    );
    x.family(
        "rollout_rehearsal_last_timestamp_seconds",
        "gauge",
        "When the environment's newest rehearsal started (Unix time).",
    );
    x.family(
        "rollout_proxy_backend_requests_total",
        "counter",
        "Requests (and TCP connections) the edge proxy sent to a backend since it started.",
    );
    x.family(
        "rollout_proxy_backend_connection_errors_total",
        "counter",
        "Attempts to a backend that got no response (refused, reset, closed early).",
    );
    x.family(
        "rollout_proxy_backend_responses_total",
        "counter",
        "Responses from a backend, by status class.",
    );
    x.family(
        "rollout_proxy_backend_in_flight",
        "gauge",
        "Requests, connections and tunnels open on a backend now.",
    );
    x.family(
        "rollout_scrape_error",
        "gauge",
        "1 when a part of an environment's metrics could not be read on this scrape.",
    );

    let counts = daemon
        .store
        .call(|s| s.run_counts())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "metrics: run counts unreadable");
            Vec::new()
        });
    for env in envs {
        let mut automatic = 0u64;
        let mut manual = 0u64;
        for (e, kind, outcome, n) in counts.iter().filter(|c| &c.0 == env) {
            x.sample(
                "rollout_runs_total",
                "",
                vec![
                    ("environment", e.clone()),
                    ("kind", kind.clone()),
                    ("outcome", outcome.clone()),
                ],
                *n as f64,
            );
            match (kind.as_str(), outcome.as_str()) {
                ("rollback", "failed" | "cancelled" | "running" | "refused") => {}
                ("rollback", _) => manual += n,
                (_, "rolledBack") => automatic += n,
                _ => {}
            }
        }
        for (cause, n) in [("automatic", automatic), ("manual", manual)] {
            x.sample(
                "rollout_rollbacks_total",
                "",
                vec![("environment", env.clone()), ("cause", cause.into())],
                n as f64,
            );
        }
        runs_part(daemon, &mut x, env).await;
        drift_part(daemon, &mut x, env).await;
        proxy_part(daemon, &mut x, env).await;
    }
    x.render()
}

/// The GitOps controller's and the scheduler's metrics for `token` (families only when the
/// loop runs).
fn background(
    daemon: &Daemon,
    token: &Resolved,
    now: jiff::Timestamp,
) -> Result<Exposition, ApiError> {
    use super::gitops::Drift;
    use super::schedule::RunResult;
    let mut x = Exposition::default();
    let client_of = super::api::clients(daemon)?;
    let sees = |name: &str| client_of(name).is_some_and(|c| token.sees(&c));
    if let Some(handle) = daemon.gitops.get() {
        x.family(
            "rollout_gitops_drift",
            "gauge",
            "1 when the GitOps controller last found the environment drifted from its manifest, 0 in sync.",
        );
        x.family(
            "rollout_gitops_failed_commit",
            "gauge",
            "1 while a commit whose promotion failed waits for a new commit or a manual retry.",
        );
        x.family(
            "rollout_gitops_fetch_ok",
            "gauge",
            "1 when the GitOps controller's last fetch of the repository succeeded.",
        );
        x.family(
            "rollout_gitops_fetch_failures_total",
            "counter",
            "Fetches of the repository that failed (unreachable, branch missing, checkout error).",
        );
        x.family(
            "rollout_gitops_last_fetch_success_timestamp_seconds",
            "gauge",
            "When a fetch of the repository last succeeded (Unix time).",
        );
        let status = handle.status();
        for (name, e) in &status.environments {
            if !sees(name) {
                continue;
            }
            let labels = vec![("environment", name.clone())];
            match e.drift {
                Drift::Drifted => x.sample("rollout_gitops_drift", "", labels.clone(), 1.0),
                Drift::InSync => x.sample("rollout_gitops_drift", "", labels.clone(), 0.0),
                Drift::Unknown | Drift::Error { .. } => {}
            }
            let failed = e.failed_at(status.commit.as_deref()).is_some();
            x.sample(
                "rollout_gitops_failed_commit",
                "",
                labels,
                if failed { 1.0 } else { 0.0 },
            );
        }
        let ok = status.fetch == super::gitops::FetchState::Ok;
        x.sample(
            "rollout_gitops_fetch_ok",
            "",
            vec![],
            if ok { 1.0 } else { 0.0 },
        );
        x.sample(
            "rollout_gitops_fetch_failures_total",
            "",
            vec![],
            status.fetch_failures as f64,
        );
        if let Some(t) = status.last_fetch_ok {
            x.sample(
                "rollout_gitops_last_fetch_success_timestamp_seconds",
                "",
                vec![],
                t.as_second() as f64,
            );
        }
    }
    if let Some(handle) = daemon.schedule.get() {
        x.family(
            "rollout_scheduled_rehearsals_total",
            "counter",
            "Due times of scheduled rehearsals by how they ended: the rehearsal's outcome, or missed.",
        );
        x.family(
            "rollout_scheduled_rehearsal_next_due_timestamp_seconds",
            "gauge",
            "When the schedule entry is next due (Unix time).",
        );
        let status = handle.status(now);
        let mut visible = BTreeMap::new();
        for e in &status.entries {
            let shown = sees(&e.environment);
            visible.insert(e.environment.clone(), shown);
            if !shown {
                continue;
            }
            if let Some(due) = e.next_due {
                x.sample(
                    "rollout_scheduled_rehearsal_next_due_timestamp_seconds",
                    "",
                    vec![
                        ("environment", e.environment.clone()),
                        ("entry", e.entry.clone()),
                    ],
                    due.as_second() as f64,
                );
            }
        }
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for r in handle.records() {
            if !visible.get(&r.environment).copied().unwrap_or(false) {
                continue;
            }
            let outcome = match &r.result {
                RunResult::Ran { outcome, .. } => outcome.clone(),
                RunResult::Missed { .. } => "missed".to_string(),
            };
            *counts.entry((r.environment.clone(), outcome)).or_default() += 1;
        }
        for ((env, outcome), n) in counts {
            x.sample(
                "rollout_scheduled_rehearsals_total",
                "",
                vec![("environment", env), ("outcome", outcome)],
                n as f64,
            );
        }
    }
    Ok(x)
}

fn scrape_error(x: &mut Exposition, env: &str, part: &'static str, e: impl std::fmt::Display) {
    tracing::debug!(environment = env, part, error = %e, "metrics: part unreadable");
    x.sample(
        "rollout_scrape_error",
        "",
        vec![("environment", env.to_string()), ("part", part.into())],
        1.0,
    );
}

/// Step durations and the newest rehearsal, from the runs' reports.
async fn runs_part(daemon: &Daemon, x: &mut Exposition, env: &str) {
    let name = env.to_string();
    let runs = match daemon.store.call(move |s| s.runs(&name, 200)).await {
        Ok(r) => r,
        Err(e) => return scrape_error(x, env, "runs", e),
    };
    let mut steps: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for r in &runs {
        for step in r.report["steps"].as_array().into_iter().flatten() {
            if step["status"] == "skipped" {
                continue;
            }
            let kind = step["description"]
                .as_str()
                .and_then(|d| d.split_whitespace().next())
                .unwrap_or("step")
                .trim_end_matches(':')
                .to_lowercase();
            let e = steps.entry(kind).or_default();
            e.0 += step["elapsedMs"].as_f64().unwrap_or(0.0) / 1000.0;
            e.1 += 1;
        }
    }
    for (step, (sum, count)) in steps {
        let labels = vec![("environment", env.to_string()), ("step", step)];
        x.sample("rollout_step_duration_seconds", "_sum", labels.clone(), sum);
        x.sample(
            "rollout_step_duration_seconds",
            "_count",
            labels,
            count as f64,
        );
    }
    if let Some(r) = runs
        .iter()
        .find(|r| r.kind == "rehearsal" && r.finished.is_some())
    {
        let labels = vec![("environment", env.to_string())];
        x.sample(
            "rollout_rehearsal_last_passed",
            "",
            labels.clone(),
            if r.outcome == "passed" { 1.0 } else { 0.0 },
        );
        x.sample(
            "rollout_rehearsal_last_timestamp_seconds",
            "",
            labels,
            r.started.as_second() as f64,
        );
    }
}

/// Whether what runs differs from the manifest: the plan `rollout plan` would print.
async fn drift_part(daemon: &Daemon, x: &mut Exposition, env: &str) {
    let lookup = |var: &str| std::env::var(var).ok();
    let source = daemon.source_of(env);
    let loaded = match source
        .project
        .environment(Some(env), source.manifest.as_deref(), &lookup)
    {
        Ok(l) => l,
        Err(e) => return scrape_error(x, env, "drift", e),
    };
    let playbook = match source
        .project
        .playbook(source.playbook.as_deref(), &loaded.environment)
    {
        Ok(p) => p,
        Err(e) => return scrape_error(x, env, "drift", e),
    };
    let observed = match daemon.engine.observe(env).await {
        Ok(o) => o,
        Err(e) => return scrape_error(x, env, "drift", e),
    };
    let plan = crate::plan::compute(&loaded.environment, &observed, &playbook);
    let differing = plan
        .services
        .iter()
        .filter(|s| s.action != crate::plan::Action::Unchanged)
        .count();
    let labels = vec![("environment", env.to_string())];
    x.sample(
        "rollout_drift",
        "",
        labels.clone(),
        if plan.has_changes() { 1.0 } else { 0.0 },
    );
    x.sample("rollout_drift_services", "", labels, differing as f64);
}

/// Per-backend counters from the environment's edge proxy, when it has one running.
async fn proxy_part(daemon: &Daemon, x: &mut Exposition, env: &str) {
    let admin = match crate::edge::admin(daemon.engine.as_ref(), env).await {
        Ok(a) => a,
        // No proxy container: the environment has no public port, or never ran.
        Err(_) => return,
    };
    let stats = match admin.stats().await {
        Ok(s) => s,
        Err(e) => return scrape_error(x, env, "proxy", e),
    };
    for (backend, b) in &stats.backends {
        let labels = vec![
            ("environment", env.to_string()),
            ("backend", backend.clone()),
        ];
        x.sample(
            "rollout_proxy_backend_requests_total",
            "",
            labels.clone(),
            b.requests as f64,
        );
        x.sample(
            "rollout_proxy_backend_connection_errors_total",
            "",
            labels.clone(),
            b.connection_errors as f64,
        );
        x.sample(
            "rollout_proxy_backend_in_flight",
            "",
            labels.clone(),
            b.in_flight as f64,
        );
        let r = &b.responses;
        for (class, n) in [
            ("1xx", r.informational),
            ("2xx", r.success),
            ("3xx", r.redirect),
            ("4xx", r.client_error),
            ("5xx", r.server_error),
        ] {
            let mut l = labels.clone();
            l.push(("class", class.into()));
            x.sample("rollout_proxy_backend_responses_total", "", l, n as f64);
        }
    }
}
