//! What a run did, step by step: the data of a run's change document, kept as JSON and
//! Markdown in the state directory and in the store's `runs` table, and rendered by
//! [`crate::report`] (`rollout report RUN -o md|html|json`).
//!
//! # Compatibility
//! Reports of runs already stored are read back with this type, so every field added after the
//! first release carries `#[serde(default)]`: an old report reads with the field empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::check::CheckResult;
use crate::engine::ServiceSnapshot;
use crate::manifest::env::Environment;
use crate::manifest::playbook::Playbook;
use crate::plan::{Action, Change, ServicePlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunKind {
    Rehearsal,
    Promotion,
    Rollback,
    /// `rollout down`: production removed.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Outcome {
    Running,
    Passed,
    Failed {
        reason: String,
    },
    Cancelled {
        reason: String,
    },
    /// Production changed to the new version.
    Promoted,
    /// Something failed after production was touched; it was put back.
    RolledBack {
        reason: String,
    },
    /// A gate was closed (window, approval, authorization): nothing was touched.
    Refused {
        reason: String,
    },
    /// A rollback put an earlier revision back: it serves production.
    Restored,
}

impl Outcome {
    /// The name the JSON form tags it with (`promoted`, `rolledBack`…), as the store keeps it.
    pub fn tag(&self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Passed => "passed",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled { .. } => "cancelled",
            Outcome::Promoted => "promoted",
            Outcome::RolledBack { .. } => "rolledBack",
            Outcome::Refused { .. } => "refused",
            Outcome::Restored => "restored",
        }
    }

    /// One line for a person, coloured by how it went.
    pub fn summary(&self, paint: crate::plan::render::Paint) -> String {
        match self {
            Outcome::Running => "still running".into(),
            Outcome::Passed => paint.green("passed"),
            Outcome::Promoted => paint.green("promoted"),
            Outcome::Failed { reason } => paint.red(&format!("failed: {reason}")),
            Outcome::Cancelled { reason } => paint.red(&format!("cancelled: {reason}")),
            Outcome::RolledBack { reason } => paint.red(&format!("rolled back: {reason}")),
            Outcome::Refused { reason } => paint.yellow(&format!("refused: {reason}")),
            Outcome::Restored => paint.green("restored"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepStatus {
    Ok,
    Failed,
    Skipped,
    NotRun,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub index: usize,
    pub description: String,
    pub status: StepStatus,
    pub detail: String,
    /// When the step began (or was passed over): for the timeline. Absent in older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    pub elapsed_ms: u64,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    /// Canary steps: what the proxy counted on each candidate during the hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary: Vec<CanaryFigures>,
}

impl StepReport {
    /// A step's report is made when the executor reaches the step, so it takes the wall clock
    /// then as the step's start (elapsed times are measured by the executor, monotonically).
    pub fn new(index: usize, description: &str, status: StepStatus, detail: String) -> Self {
        StepReport {
            index,
            description: description.to_string(),
            status,
            detail,
            started: Some(Timestamp::now()),
            elapsed_ms: 0,
            checks: Vec::new(),
            canary: Vec::new(),
        }
    }
}

/// One candidate's figures over a canary step's hold, and what the analysis made of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryFigures {
    pub service: String,
    /// Percent of the service's requests sent to the new version.
    pub weight: u8,
    pub hold_ms: u64,
    /// Requests that completed on the new version (responses and connection errors).
    pub requests: u64,
    /// 5xx responses and connection errors among them.
    pub errors: u64,
    /// `errors / requests`; `None` without traffic.
    pub error_rate: Option<f64>,
    /// 99th percentile latency (the upper bound of its bucket); `None` without responses.
    pub p99_ms: Option<u64>,
    /// The playbook's thresholds, when the step has an analysis.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    #[serde(default)]
    pub max_p99_ms: Option<u64>,
    #[serde(default)]
    pub min_requests: Option<u64>,
    pub analysis: Analysis,
}

/// What a canary's analysis concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "verdict")]
pub enum Analysis {
    /// The step has no `analysis`: figures only.
    NotAnalysed,
    Pass,
    Fail {
        reason: String,
    },
}

/// Per changed service: what it was and what it became. Secret values are never here: a
/// secret is only named, with `added`, `removed` or `changed (value hidden)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceChange {
    pub service: String,
    pub action: Action,
    #[serde(default)]
    pub stateful: bool,
    #[serde(default)]
    pub managed_by: Option<String>,
    pub changes: Vec<FieldChange>,
}

/// One setting of a service before and after (`None`: it was not set, or is not any more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// `image`, `env API_URL`, `secret SESSION_KEY`, `port http`...
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A recorded approval of a run (`rollout approve RUN --by ROLE --note TEXT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Who approved.
    pub by: String,
    /// The role the playbook's `approve: { by: ROLE }` asked for.
    pub role: String,
    pub at: Timestamp,
    #[serde(default)]
    pub note: Option<String>,
}

/// A third party's recorded authorization to change the services it manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The third party (`managedBy: { thirdParty: NAME }`).
    pub party: String,
    /// Its own reference for the authorization (a ticket, a change number).
    pub reference: String,
    /// Who recorded it.
    pub by: String,
    #[serde(default)]
    pub note: Option<String>,
    /// After this it no longer counts.
    #[serde(default)]
    pub expires: Option<Timestamp>,
}

/// `--emergency --reason TEXT`: the change window was overridden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Emergency {
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Teardown {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub run: String,
    pub kind: RunKind,
    pub environment: String,
    pub client: String,
    pub playbook: String,
    pub started: String,
    pub user: String,
    pub outcome: Outcome,
    pub elapsed_ms: u64,
    pub steps: Vec<StepReport>,
    pub teardown: Option<Teardown>,
    /// Promotions: from "candidate healthy" to "all traffic on it", in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_ms: Option<u64>,
    /// Failed promotions: from "failure seen" to "all traffic back", in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_ms: Option<u64>,
    /// Why: the commit or note given with `--reason`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The revision a promotion or rollback recorded.
    #[serde(default)]
    pub revision: Option<u64>,
    /// What changed, per service (before and after). For a rehearsal: what the rehearsed
    /// version changes compared with production when it ran.
    #[serde(default)]
    pub changes: Vec<ServiceChange>,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
    #[serde(default)]
    pub emergency: Option<Emergency>,
    /// A run parked at a gate: what it waits for (`rollout approve`), and the step it resumes
    /// from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub awaiting: Vec<crate::store::Awaited>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_step: Option<usize>,
}

impl RunReport {
    pub fn new(
        kind: RunKind,
        run: &str,
        env: &Environment,
        playbook: &Playbook,
        now: jiff::Timestamp,
    ) -> Self {
        Self::begun(kind, run, env, &playbook.name, now)
    }

    /// A run's report as it starts, nothing done yet; `playbook` names what it follows (`-`
    /// for a run that follows none, such as `rollout down`).
    pub fn begun(
        kind: RunKind,
        run: &str,
        env: &Environment,
        playbook: &str,
        now: jiff::Timestamp,
    ) -> Self {
        RunReport {
            run: run.to_string(),
            kind,
            environment: env.name.clone(),
            client: env.client.clone(),
            playbook: playbook.to_string(),
            started: now.to_string(),
            user: current_user(),
            outcome: Outcome::Running,
            elapsed_ms: 0,
            steps: Vec::new(),
            teardown: None,
            switch_ms: None,
            rollback_ms: None,
            reason: None,
            revision: None,
            changes: Vec::new(),
            approvals: Vec::new(),
            authorizations: Vec::new(),
            emergency: None,
            awaiting: Vec::new(),
            gate_step: None,
        }
    }

    pub fn passed(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Passed | Outcome::Promoted | Outcome::Restored
        )
    }

    /// The report as Markdown, for a person (the document `rollout report -o md` prints).
    pub fn markdown(&self) -> String {
        crate::report::markdown(self)
    }

    /// Writes `<dir>/reports/<env>/<run>.json` and `.md`, each through a temporary file and a
    /// rename, so a crash never leaves half a report. Returns the Markdown file's path.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<PathBuf> {
        let dir = state_dir.join("reports").join(&self.environment);
        std::fs::create_dir_all(&dir)?;
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&dir.join(format!("{}.json", self.run)), &json)?;
        let md = dir.join(format!("{}.md", self.run));
        write_atomic(&md, self.markdown().as_bytes())?;
        Ok(md)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Who runs rollout: `$USER`, else `$LOGNAME`, else the numeric uid.
pub fn current_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        });
    format!("uid {}", uid.unwrap_or_else(|| "unknown".into()))
}

/// The settings each service of `env` runs with (secret names, never values): what a created
/// service's "after" column shows.
pub fn snapshots(env: &Environment) -> BTreeMap<String, ServiceSnapshot> {
    env.services
        .iter()
        .map(|s| (s.name.clone(), ServiceSnapshot::from(s)))
        .collect()
}

/// What the plan changes, per service, as before/after pairs; unchanged services are left out.
/// A created service lists its settings from `desired`. Plans and snapshots never hold secret
/// values, and neither does the result.
pub fn changes(
    plan: &[ServicePlan],
    desired: &BTreeMap<String, ServiceSnapshot>,
) -> Vec<ServiceChange> {
    plan.iter()
        .filter(|s| s.action != Action::Unchanged)
        .map(|s| ServiceChange {
            service: s.name.clone(),
            action: s.action,
            stateful: s.stateful,
            managed_by: s.managed_by.clone(),
            changes: match (s.action, desired.get(&s.name)) {
                (Action::Create, Some(snapshot)) if s.changes.is_empty() => created(snapshot),
                _ => s.changes.iter().map(field_change).collect(),
            },
        })
        .collect()
}

fn created(s: &ServiceSnapshot) -> Vec<FieldChange> {
    let ServiceSnapshot {
        image,
        command,
        env,
        secret_keys,
        ports,
        depends_on,
        health,
        stateful: _,
        volumes,
        managed_by: _,
    } = s;
    let new = |field: String, after: String| FieldChange {
        field,
        before: None,
        after: Some(after),
    };
    let mut out = vec![new("image".into(), image.clone())];
    if let Some(c) = command {
        out.push(new("command".into(), c.join(" ")));
    }
    out.extend(env.iter().map(|(k, v)| new(format!("env {k}"), v.clone())));
    out.extend(
        secret_keys
            .iter()
            .map(|k| new(format!("secret {k}"), "set (value hidden)".into())),
    );
    out.extend(ports.iter().map(|p| {
        new(
            format!("port {}", p.name),
            crate::plan::render::port_text(p),
        )
    }));
    out.extend(
        volumes
            .iter()
            .map(|v| new(format!("volume {}", v.name), v.path.clone())),
    );
    if let Some(h) = health {
        out.push(new("health".into(), h.probe.to_string()));
    }
    if !depends_on.is_empty() {
        out.push(new("dependsOn".into(), depends_on.join(", ")));
    }
    out
}

fn field_change(c: &Change) -> FieldChange {
    use crate::plan::render::port_text;
    let f = |field: String, before: Option<String>, after: Option<String>| FieldChange {
        field,
        before,
        after,
    };
    let command = |c: &Option<Vec<String>>| {
        Some(c.as_ref().map_or("(image default)".into(), |c| c.join(" ")))
    };
    let hidden = || Some("set (value hidden)".to_string());
    match c {
        Change::Image { from, to } => f("image".into(), Some(from.clone()), Some(to.clone())),
        Change::Command { from, to } => f("command".into(), command(from), command(to)),
        Change::EnvAdded { key, value } => f(format!("env {key}"), None, Some(value.clone())),
        Change::EnvRemoved { key } => f(format!("env {key}"), Some("set".into()), None),
        Change::EnvChanged { key, from, to } => {
            f(format!("env {key}"), Some(from.clone()), Some(to.clone()))
        }
        Change::SecretAdded { key } => f(format!("secret {key}"), None, hidden()),
        Change::SecretRemoved { key } => f(format!("secret {key}"), hidden(), None),
        Change::SecretChanged { key } => f(
            format!("secret {key}"),
            hidden(),
            Some("changed (value hidden)".into()),
        ),
        Change::PortAdded { port } => f(format!("port {}", port.name), None, Some(port_text(port))),
        Change::PortRemoved { port } => {
            f(format!("port {}", port.name), Some(port_text(port)), None)
        }
        Change::PortChanged { from, to } => f(
            format!("port {}", to.name),
            Some(port_text(from)),
            Some(port_text(to)),
        ),
        Change::VolumeAdded { volume } => f(
            format!("volume {}", volume.name),
            None,
            Some(volume.path.clone()),
        ),
        Change::VolumeRemoved { volume } => f(
            format!("volume {}", volume.name),
            Some(volume.path.clone()),
            Some("detached (its data is kept)".into()),
        ),
        Change::Health { from, to } if from == to => f(
            "health".into(),
            from.clone(),
            Some("timing settings changed".into()),
        ),
        Change::Health { from, to } => f("health".into(), from.clone(), to.clone()),
        Change::DependsOn { from, to } => f(
            "dependsOn".into(),
            Some(from.join(", ")),
            Some(to.join(", ")),
        ),
        Change::Stateful { from, to } => f(
            "stateful".into(),
            Some(from.to_string()),
            Some(to.to_string()),
        ),
        Change::ManagedBy { from, to } => f(
            "managed by".into(),
            Some(from.clone().unwrap_or_else(|| "(the provider)".into())),
            Some(to.clone().unwrap_or_else(|| "(the provider)".into())),
        ),
        Change::NotRunning { state } => f(
            "state".into(),
            Some(format!("not running ({state})")),
            Some("started again".into()),
        ),
        Change::Unhealthy => f(
            "state".into(),
            Some("running, unhealthy".into()),
            Some("started again".into()),
        ),
        Change::Unrecorded => f(
            "settings".into(),
            Some("not recorded on its containers".into()),
            Some("replaced".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcomes_tag_is_its_json_tag() {
        let r = || "why".to_string();
        for o in [
            Outcome::Running,
            Outcome::Passed,
            Outcome::Failed { reason: r() },
            Outcome::Cancelled { reason: r() },
            Outcome::Promoted,
            Outcome::RolledBack { reason: r() },
            Outcome::Refused { reason: r() },
        ] {
            assert_eq!(serde_json::to_value(&o).unwrap()["outcome"], o.tag());
        }
    }
    use crate::engine::Engine;
    use crate::engine::fake::FakeEngine;
    use crate::manifest::source::Source;
    use crate::manifest::{env, yaml};

    const SHOP: &str = "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\nservices:\n  web:\n    image: web:1\n    env: { MODE: fast }\n    secrets: { KEY: { fromEnv: K } }\n    ports: [ { name: http, container: 8080, public: 18080 } ]\n    health: { http: { port: 8080, path: /healthz } }\n";

    fn environment(yaml_text: &str, secret: &str) -> Environment {
        let src = Source::new("shop.yaml", yaml_text);
        let raw = yaml::parse(&src, "a manifest").expect("parses");
        env::resolve(&src, raw, &|_| Some(secret.to_string())).expect("resolves")
    }

    #[tokio::test]
    async fn changes_pair_before_and_after_and_only_name_secrets() {
        let old = environment(SHOP, "old-secret-value");
        let engine = FakeEngine::new();
        engine
            .ensure_network(
                &crate::engine::spec::production_network(&old.name),
                &crate::engine::spec::base_labels(&old, crate::engine::Role::Production, "r1"),
            )
            .await
            .unwrap();
        for s in &old.services {
            engine
                .run_container(&crate::engine::spec::production_container(&old, s, "r1"))
                .await
                .unwrap();
        }
        let new = environment(
            &SHOP.replace("web:1", "web:2").replace("fast", "safe"),
            "new-secret-value",
        );
        let plan = crate::plan::compute(
            &new,
            &engine.observe("shop").await.unwrap(),
            &Playbook::builtin_default(),
        );
        let changes = changes(&plan.services, &snapshots(&new));
        let pair = |field: &str, before: &str, after: &str| FieldChange {
            field: field.into(),
            before: Some(before.into()),
            after: Some(after.into()),
        };
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].action, Action::Update);
        assert_eq!(
            changes[0].changes,
            [
                pair("image", "web:1", "web:2"),
                pair("env MODE", "fast", "safe"),
                pair("secret KEY", "set (value hidden)", "changed (value hidden)"),
            ]
        );
        let json = serde_json::to_string(&changes).unwrap();
        assert!(!json.contains("secret-value"), "{json}");
    }

    #[tokio::test]
    async fn a_created_service_lists_its_settings() {
        let env = environment(SHOP, "a-secret-value");
        let plan = crate::plan::compute(
            &env,
            &FakeEngine::new().observe("shop").await.unwrap(),
            &Playbook::builtin_default(),
        );
        let changes = changes(&plan.services, &snapshots(&env));
        assert_eq!(changes[0].action, Action::Create);
        let after: Vec<(&str, Option<&str>)> = changes[0]
            .changes
            .iter()
            .map(|c| (c.field.as_str(), c.after.as_deref()))
            .collect();
        assert_eq!(
            after,
            [
                ("image", Some("web:1")),
                ("env MODE", Some("fast")),
                ("secret KEY", Some("set (value hidden)")),
                ("port http", Some("http 8080/http (public 18080)")),
                ("health", Some("http :8080/healthz")),
            ]
        );
        assert!(changes[0].changes.iter().all(|c| c.before.is_none()));
    }

    #[test]
    fn a_report_stored_before_the_accountability_fields_reads_back() {
        // The shape promotions stored until now.
        let old = serde_json::json!({
            "run": "t1", "kind": "promotion", "environment": "shop", "client": "acme",
            "playbook": "standard", "started": "2026-03-01T10:00:00Z", "user": "ops",
            "outcome": { "outcome": "rolledBack", "reason": "canary" }, "elapsedMs": 900,
            "steps": [ { "index": 0, "description": "promote", "status": "failed",
                         "detail": "x", "elapsedMs": 5, "checks": [] } ],
            "teardown": null, "rollbackMs": 12
        });
        let r: RunReport = serde_json::from_value(old).unwrap();
        assert_eq!(r.rollback_ms, Some(12));
        assert!(r.approvals.is_empty() && r.authorizations.is_empty());
        assert!(r.emergency.is_none() && r.reason.is_none() && r.changes.is_empty());
        assert_eq!(r.steps[0].started, None);
    }
}
