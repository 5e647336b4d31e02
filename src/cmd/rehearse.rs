//! `rollout rehearse`: the whole playbook against a test version only, then teardown; a report
//! is written to the state directory and the run recorded in the store (for `rollout report`).
//! Exit 0 passed, 1 failed.

use std::path::Path;

use crate::audit;
use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, RehearseArgs};
use crate::exec;
use crate::notify::{self, Notifier};
use crate::plan;
use crate::progress::Console;
use crate::project::Project;
use crate::store::Store;

pub async fn run(dir: &Path, args: RehearseArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let project = Project::open(dir)?;
    let (loaded, playbook) =
        super::load_with_playbook(&project, &args.env, args.playbook.as_deref(), printer)?;
    let environment = loaded.environment;
    if let Some(why) = super::kubernetes_unsupported(&project, &playbook, true) {
        anyhow::bail!("{why}; nothing was done");
    }
    let engine =
        super::connect_and_collect(&project, "rehearse", Some(&environment.name), printer).await?;
    // What the rehearsed version would change in production, for the report.
    let observed = engine.observe(&environment.name).await?;
    let changes = crate::report::run::changes(
        &plan::compute(&environment, &observed, &playbook).services,
        &crate::report::run::snapshots(&environment),
    );
    let store = Store::open(&project.state_dir())?;

    let now = jiff::Timestamp::now();
    let run = crate::run_id::new(now);
    let json = args.output == Format::Json;
    let progress = Console::new(printer.paint(), json);
    let cancel = super::cancel_on_signal(printer);
    if !json {
        printer.out(&format!("run {run}"));
        printer.out(&format!(
            "Rehearsing {} with playbook {} on {}",
            environment.name,
            playbook.name,
            engine.describe()
        ));
    }
    let state = project.state_dir();
    let notifier = Notifier::new(&project.config.notify);
    let audit_warn = |e: crate::audit::AuditError| {
        printer.warn(&format!(
            "the audit trail could not record the rehearsal: {e}"
        ));
    };
    let start = crate::report::run::RunReport::new(
        crate::report::run::RunKind::Rehearsal,
        &run,
        &environment,
        &playbook,
        now,
    );
    if let Err(e) = audit::append(&state, audit::Event::run_started(&start, None)) {
        audit_warn(e);
    }
    let mut report = exec::rehearse(
        engine.as_ref(),
        &environment,
        &playbook,
        &run,
        now,
        &progress,
        &cancel,
    )
    .await;
    report.changes = changes;
    let saved = super::save_run(&project, &store, &report, printer);
    if let Err(e) = audit::append(&state, audit::Event::run_finished(&report)) {
        audit_warn(e);
    }
    notifier.run_finished(&report);
    if json {
        printer.json(&report)?;
    } else {
        let verdict = report.outcome.summary(printer.paint());
        printer.out(&format!(
            "Rehearsal {run} {verdict} in {:.1}s",
            report.elapsed_ms as f64 / 1000.0
        ));
    }
    if let Some(path) = saved
        && !json
    {
        printer.out(&format!(
            "Report: {} (or `rollout report {run} -o html`)",
            path.display()
        ));
    }
    for undelivered in notifier.flush(notify::FLUSH_DEADLINE).await {
        printer.warn(&undelivered.to_string());
    }
    Ok(if report.passed() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
