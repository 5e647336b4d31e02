//! `rollout history`: revisions with time, who, what changed and outcome.

use std::path::Path;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, ReadArgs};
use crate::project::Project;
use crate::store::Store;

pub async fn run(dir: &Path, args: ReadArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let project = Project::open(dir)?;
    let env = super::load_environment(&project, &args.env, printer)?.environment;
    let store = std::sync::Arc::new(Store::open(&project.state_dir())?);
    // Where the cluster keeps the run records, every machine's runs are read from it first;
    // without the cluster, what this machine has recorded is still shown, with a warning.
    if project.config.backend == crate::manifest::config::Backend::Kubernetes {
        let pulled = match crate::session::connect(&project, "history").await {
            Ok(engine) => {
                crate::session::lock::pull_records(engine.as_ref(), &store, &env.name, printer)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = pulled {
            printer.warn(&format!(
                "{e:#}; showing only the runs this machine has recorded"
            ));
        }
    }
    let history = store.history(&env.name)?;
    if args.output == Format::Json {
        printer.json(&serde_json::json!({ "environment": env.name, "revisions": history }))?;
        return Ok(ExitStatus::Success);
    }
    if history.is_empty() {
        printer.out(&format!("{} has no revisions yet", env.name));
        return Ok(ExitStatus::Success);
    }
    let mut out =
        String::from("REV  RUN        STARTED                    USER        DURATION  OUTCOME\n");
    for r in &history {
        let duration = crate::cli::output::duration_cell(r.duration());
        let changed: Vec<String> = r
            .changes
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["action"] != "unchanged")
                    .map(|s| {
                        format!(
                            "{} {}",
                            s["name"].as_str().unwrap_or("?"),
                            s["action"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<4} {:<10} {:<26} {:<11} {:<9} {}\n",
            r.number,
            r.run,
            r.started.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
            r.user,
            duration,
            r.outcome
        ));
        if !changed.is_empty() {
            out.push_str(&format!("     changed: {}\n", changed.join(", ")));
        }
        if let Some(reason) = &r.reason {
            out.push_str(&format!("     reason: {reason}\n"));
        }
    }
    printer.out(&out);
    Ok(ExitStatus::Success)
}
