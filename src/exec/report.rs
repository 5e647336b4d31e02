//! What a run did, step by step: kept as JSON and Markdown in the state directory so the client
//! can read it (`rollout report` renders richer documents from the accountability issue on).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::check::CheckResult;
use crate::manifest::env::Environment;
use crate::manifest::playbook::Playbook;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunKind {
    Rehearsal,
    Promotion,
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

impl Outcome {
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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StepStatus {
    Ok,
    Failed,
    Skipped,
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub index: usize,
    pub description: String,
    pub status: StepStatus,
    pub detail: String,
    pub elapsed_ms: u64,
    pub checks: Vec<CheckResult>,
}

impl StepReport {
    pub fn new(index: usize, description: &str, status: StepStatus, detail: String) -> Self {
        StepReport {
            index,
            description: description.to_string(),
            status,
            detail,
            elapsed_ms: 0,
            checks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Teardown {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_ms: Option<u64>,
    /// Failed promotions: from "failure seen" to "all traffic back", in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_ms: Option<u64>,
}

impl RunReport {
    pub fn new(
        kind: RunKind,
        run: &str,
        env: &Environment,
        playbook: &Playbook,
        now: jiff::Timestamp,
    ) -> Self {
        RunReport {
            run: run.to_string(),
            kind,
            environment: env.name.clone(),
            client: env.client.clone(),
            playbook: playbook.name.clone(),
            started: now.to_string(),
            user: current_user(),
            outcome: Outcome::Running,
            elapsed_ms: 0,
            steps: Vec::new(),
            teardown: None,
            switch_ms: None,
            rollback_ms: None,
        }
    }

    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Passed | Outcome::Promoted)
    }

    /// The report as Markdown, for a person.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# {} {} of {} (client {})\n\n- playbook: {}\n- started: {} by {}\n- outcome: **{}**\n- duration: {:.1}s\n\n## Steps\n\n| # | step | status | detail | time |\n| --- | --- | --- | --- | --- |\n",
            match self.kind {
                RunKind::Rehearsal => "Rehearsal",
                RunKind::Promotion => "Promotion",
                RunKind::Rollback => "Rollback",
            },
            self.run,
            self.environment,
            self.client,
            self.playbook,
            self.started,
            self.user,
            match &self.outcome {
                Outcome::Running => "running".to_string(),
                Outcome::Passed => "passed".to_string(),
                Outcome::Failed { reason } => format!("failed: {reason}"),
                Outcome::Cancelled { reason } => format!("cancelled: {reason}"),
                Outcome::Promoted => "promoted".to_string(),
                Outcome::RolledBack { reason } => format!("rolled back: {reason}"),
                Outcome::Refused { reason } => format!("refused: {reason}"),
            },
            self.elapsed_ms as f64 / 1000.0
        );
        for s in &self.steps {
            let detail = s
                .detail
                .lines()
                .next()
                .unwrap_or_default()
                .replace('|', "\\|");
            out.push_str(&format!(
                "| {} | {} | {:?} | {} | {:.1}s |\n",
                s.index + 1,
                s.description.replace('|', "\\|"),
                s.status,
                detail,
                s.elapsed_ms as f64 / 1000.0
            ));
        }
        let checks: Vec<&CheckResult> = self.steps.iter().flat_map(|s| &s.checks).collect();
        if !checks.is_empty() {
            out.push_str(
                "\n## Checks\n\n| check | result | attempts | time |\n| --- | --- | --- | --- |\n",
            );
            for c in checks {
                let result = match &c.verdict {
                    crate::check::Verdict::Pass { detail } => format!("pass: {detail}"),
                    crate::check::Verdict::Fail { reason } => format!("FAIL: {reason}"),
                    crate::check::Verdict::Inconclusive { reason } => {
                        format!("FAIL (inconclusive): {reason}")
                    }
                };
                out.push_str(&format!(
                    "| {} | {} | {} | {:.1}s |\n",
                    c.description.replace('|', "\\|"),
                    result.replace('|', "\\|"),
                    c.attempts,
                    c.elapsed.as_secs_f64()
                ));
            }
        }
        if let Some(t) = &self.teardown {
            out.push_str(&format!(
                "\n## Teardown\n\nRemoved {} containers, {} networks, {} volumes{}.\n",
                t.containers,
                t.networks,
                t.volumes,
                t.error
                    .as_ref()
                    .map(|e| format!(" (error: {e})"))
                    .unwrap_or_default()
            ));
        }
        out
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
