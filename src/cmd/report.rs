//! `rollout report RUN [-o md|html|json] [--out FILE] [-e ENV]`: the change document of a run,
//! read from the store (it needs no engine and no manifest secrets). Exit 0, or 1 with a clear
//! error for an unknown run.

use std::path::Path;

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, ReportArgs, ReportFormat};
use crate::project::Project;
use crate::report::{self, Selector};
use crate::store::Store;

pub async fn run(dir: &Path, args: ReportArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let ReportArgs {
        run,
        output,
        out,
        env,
    } = args;
    let selector = Selector::parse(&run)?;
    let project = Project::open(dir)?;
    let env = match selector {
        Selector::Latest => Some(project.environment_name(env.as_deref())?),
        Selector::Run(_) => env,
    };
    let state = project.state_dir();
    let store = Store::open(&state)?;
    let found = report::find(&store, &state, env.as_deref(), selector)?;
    let document = match output {
        ReportFormat::Md => report::markdown(&found),
        ReportFormat::Html => report::html(&found),
        ReportFormat::Json => report::json(&found),
    };
    match out {
        Some(path) => {
            std::fs::write(&path, document)
                .with_context(|| format!("cannot write the report to {}", path.display()))?;
            printer.out(&format!(
                "Report of run {} written to {}",
                found.run,
                path.display()
            ));
        }
        None => printer.out(&document),
    }
    Ok(ExitStatus::Success)
}
