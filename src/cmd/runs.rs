//! `rollout runs`: every run of an environment, newest first: promotions, rollbacks, rehearsals
//! and test versions, the failed, refused and parked ones included (`history` lists only the
//! revisions that reached production).

use std::path::Path;

use serde::Serialize;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, ReadArgs};
use crate::project::Project;
use crate::store::{RunRecord, Store};

/// How many runs are listed, newest first.
const LIMIT: usize = 200;

/// One run as `rollout runs` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    run: String,
    kind: String,
    started: jiff::Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished: Option<jiff::Timestamp>,
    user: String,
    outcome: String,
    /// Why it failed, was refused or rolled back; what a parked run waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The playbook it ran (a parked run resumes with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    playbook: Option<String>,
    /// Parked at a gate now: `rollout promote -e ENV -p PLAYBOOK` resumes it once approved.
    waiting: bool,
}

impl Listed {
    fn of(r: RunRecord, parked: Option<&str>) -> Self {
        let reason = r.report["outcome"]["reason"].as_str().map(str::to_string);
        let playbook = r.report["playbook"].as_str().map(str::to_string);
        Listed {
            waiting: parked == Some(r.run.as_str()),
            run: r.run,
            kind: r.kind,
            started: r.started,
            finished: r.finished,
            user: r.user,
            outcome: r.outcome,
            reason,
            playbook,
        }
    }
}

pub async fn run(dir: &Path, args: ReadArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let ReadArgs { env, output } = args;
    let project = Project::open(dir)?;
    let env = super::load_environment(&project, &env, printer)?.environment;
    let store = std::sync::Arc::new(Store::open(&project.state_dir())?);
    let name = env.name.clone();
    let (records, parked) = store
        .call(move |s| Ok((s.runs(&name, LIMIT)?, s.parked(&name)?)))
        .await?;
    let parked = parked.map(|p| p.run);
    let runs: Vec<Listed> = records
        .into_iter()
        .map(|r| Listed::of(r, parked.as_deref()))
        .collect();
    if output == Format::Json {
        printer.json(&serde_json::json!({ "environment": env.name, "runs": runs }))?;
        return Ok(ExitStatus::Success);
    }
    if runs.is_empty() {
        printer.out(&format!("{} has no runs yet", env.name));
        return Ok(ExitStatus::Success);
    }
    printer.out(&table(&env.name, &runs));
    Ok(ExitStatus::Success)
}

/// The runs as a table, a line each, with a second line for why one did not pass.
fn table(env: &str, runs: &[Listed]) -> String {
    let mut out = String::from(
        "RUN        KIND       STARTED                  USER        DURATION  OUTCOME\n",
    );
    for r in runs {
        let duration =
            crate::cli::output::duration_cell(r.finished.map(|f| f.duration_since(r.started)));
        let outcome = if r.waiting { "waiting" } else { &r.outcome };
        out.push_str(&format!(
            "{:<10} {:<10} {:<24} {:<11} {:<9} {outcome}\n",
            r.run,
            r.kind,
            r.started.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
            r.user,
            duration,
        ));
        if let Some(reason) = &r.reason {
            out.push_str(&format!(
                "           {}\n",
                reason.lines().next().unwrap_or_default()
            ));
        }
        if r.waiting {
            out.push_str(&format!(
                "           resume it once approved: {}\n",
                crate::gate::resume_command(env, r.playbook.as_deref().unwrap_or_default())
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(run: &str, outcome: &str, reason: Option<&str>, waiting: bool) -> Listed {
        Listed {
            run: run.into(),
            kind: "promote".into(),
            started: "2026-12-07T10:00:00Z".parse().unwrap(),
            finished: Some("2026-12-07T10:00:12.5Z".parse().unwrap()),
            user: "alice".into(),
            outcome: outcome.into(),
            reason: reason.map(str::to_string),
            playbook: Some("gated".into()),
            waiting,
        }
    }

    #[test]
    fn a_failed_run_says_why_and_a_parked_one_how_to_resume_it_with_its_playbook() {
        let text = table(
            "shop",
            &[
                listed(
                    "r3",
                    "refused",
                    Some("waiting for an approval by `client`"),
                    true,
                ),
                listed(
                    "r2",
                    "failed",
                    Some("1 of 2 smoke checks failed\nmore"),
                    false,
                ),
                listed("r1", "promoted", None, false),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("r3") && lines[1].ends_with("waiting"),
            "{text}"
        );
        assert_eq!(
            lines[3].trim(),
            "resume it once approved: rollout promote -e shop -p gated"
        );
        assert!(
            lines[4].contains("12.5s") && lines[4].ends_with("failed"),
            "{text}"
        );
        assert_eq!(lines[5].trim(), "1 of 2 smoke checks failed");
        assert!(lines[6].ends_with("promoted"), "{text}");
        assert_eq!(lines.len(), 7, "{text}");
    }
}
