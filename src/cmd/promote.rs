//! `rollout promote`: the plan carried out through the playbook; rolls back by itself on any
//! failure. Exit 0 promoted or nothing to do, 1 failed (and put back), 3 refused by a gate.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, PromoteArgs};
use crate::exec::promote::{self, Options};
use crate::manifest::env::Environment;
use crate::manifest::playbook::Playbook;
use crate::plan::{self, Plan};
use crate::progress::Console;
use crate::project::Project;
use crate::report::run::{Outcome, RunKind, RunReport};
use anyhow::Context;

use crate::session::Session;
use crate::store::{Parked, Store};

pub async fn run(dir: &Path, args: PromoteArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let PromoteArgs {
        env,
        playbook,
        yes,
        emergency,
        reason,
        wait,
        supersede,
        output,
    } = args;
    let project = Project::open(dir)?;
    let (loaded, playbook) =
        super::load_with_playbook(&project, &env, playbook.as_deref(), printer)?;
    let environment = loaded.environment;
    if let Some(why) = super::kubernetes_unsupported(&project, &playbook, false) {
        anyhow::bail!("{why}; nothing was done");
    }
    let engine =
        super::connect_and_collect(&project, "promote", Some(&environment.name), printer).await?;
    let json = output == Format::Json;
    let store = Arc::new(Store::open(&project.state_dir())?);
    let now = jiff::Timestamp::now();
    // A run parked at a gate for this very change resumes under its own id; any other change
    // gets a new run (and the parked one is superseded below).
    let digest = change_digest(&environment, &playbook);
    // Parked, or approved, on another machine: the platform's gates first (kubernetes).
    crate::exec::journal::pull_gates(engine.as_ref(), &store, &environment.name)
        .await
        .map_err(anyhow::Error::msg)?;
    let name = environment.name.clone();
    let parked = store.call(move |s| s.parked(&name)).await?;
    let resuming = parked.filter(|p| p.digest == digest);
    let run = resuming
        .as_ref()
        .map_or_else(|| crate::run_id::new(now), |p| p.run.clone());
    let cancel = super::cancel_on_signal(printer);
    let session = Session::new(&project, engine.as_ref(), &store, &cancel, json, printer);
    let guard = match session
        .lock_and_recover(&environment, &run, "promote", wait)
        .await?
    {
        Ok(g) => g,
        Err(status) => return Ok(status),
    };
    let observed = engine.observe(&environment.name).await?;
    let plan = plan::compute(&environment, &observed, &playbook);
    // Under the lock: the parked run as it is now.
    let name = environment.name.clone();
    if let Some(old) = store.call(move |s| s.parked(&name)).await?
        && (old.run != run || !plan.has_changes())
    {
        // What people recorded for it is lost with it: never silently.
        let r = old.run.clone();
        let granted = store.call(move |s| s.grants(&r)).await?;
        if !granted.is_empty() && !supersede {
            guard.release().await?;
            let reason = format!(
                "run {} waits at its gate with {} recorded; this {} would supersede it and that would be lost: resume it with `{}`, or pass --supersede",
                old.run,
                granted
                    .iter()
                    .map(|g| match g.kind {
                        crate::store::GrantKind::Approval =>
                            format!("an approval by `{}` ({})", g.gate, g.who),
                        crate::store::GrantKind::Authorization =>
                            format!("an authorization by `{}` ({})", g.gate, g.who),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                if plan.has_changes() {
                    "change"
                } else {
                    "state (nothing to do)"
                },
                crate::gate::resume_command(&old.environment, old.playbook())
            );
            if json {
                printer.json(&serde_json::json!({ "environment": environment.name, "run": run, "outcome": { "outcome": "refused", "reason": reason } }))?;
            } else {
                printer.refusal(&reason);
            }
            return Ok(ExitStatus::Refused);
        }
        let (e, r) = (old.environment.clone(), old.run.clone());
        store.call(move |s| s.unpark(&e, &r)).await?;
        if !json {
            printer.out(&format!(
                "Run {} was waiting for {}; it is superseded by this {}.",
                old.run,
                crate::session::approve::awaited_text(&old.awaiting),
                if plan.has_changes() {
                    "change"
                } else {
                    "state (nothing to do)"
                }
            ));
        }
        let r = old.run.clone();
        if let Ok(Some(mut record)) = store.call(move |s| s.run(&r)).await {
            record.outcome = "superseded".into();
            record.finished = Some(jiff::Timestamp::now());
            let _ = store.call(move |s| s.record_run(&record)).await;
        }
    }
    let resume = match &resuming {
        Some(p) if p.run == run => {
            let report: crate::report::run::RunReport =
                serde_json::from_value(p.report.clone()).context("the parked run's report")?;
            // The steps before the gate; the gate itself runs again, approved this time.
            let steps = report
                .steps
                .into_iter()
                .filter(|st| {
                    st.index < p.gate_step
                        || st.description == "emergency override of the change window"
                })
                .collect();
            Some(crate::exec::promote::Resume {
                gate_step: p.gate_step,
                steps,
                user: p.user.clone(),
                started: report.started,
            })
        }
        _ => None,
    };
    let r = run.clone();
    let grants = store.call(move |s| s.grants(&r)).await?;
    if !plan.has_changes() {
        // A run superseded above is off its gate for every machine.
        crate::exec::journal::push_gates(engine.as_ref(), &store, &environment.name)
            .await
            .map_err(anyhow::Error::msg)?;
        guard.release().await?;
        if json {
            printer.json(&serde_json::json!({ "environment": environment.name, "outcome": { "outcome": "nothingToDo" } }))?;
        } else {
            printer.out(&format!(
                "Nothing to do: {} is up to date.",
                environment.name
            ));
        }
        return Ok(ExitStatus::Success);
    }
    if !yes {
        confirm(&plan, printer)?;
    }
    let opts = Options {
        bind: project.config.proxy.bind,
        emergency: if emergency { reason.clone() } else { None },
        reason,
        kind: RunKind::Promotion,
        grants,
        resume,
    };
    let status = execute(&session, &run, &environment, &playbook, &plan, &opts).await;
    // Parked at a gate: kept for `rollout approve` and the next promote; else off its gate.
    let name = environment.name.clone();
    let r = run.clone();
    match &status {
        Ok(Executed { report, .. }) if !report.awaiting.is_empty() => {
            let parked = Parked {
                environment: environment.name.clone(),
                run: run.clone(),
                digest,
                user: report.user.clone(),
                two_person: playbook.two_person_rule,
                awaiting: report.awaiting.clone(),
                gate_step: report.gate_step.unwrap_or(0),
                report: serde_json::to_value(report)?,
                at: jiff::Timestamp::now(),
            };
            store.call(move |s| s.park(&parked)).await?;
        }
        _ => store.call(move |s| s.unpark(&name, &r)).await?,
    }
    // Where the platform keeps the gates, every machine sees the run parked (for `rollout
    // approve` anywhere) or off its gate.
    let pushed = crate::exec::journal::push_gates(engine.as_ref(), &store, &environment.name).await;
    guard.release().await?;
    if let Err(e) = pushed {
        printer.warn(&format!(
            "{e}: other machines do not see this gate yet (a promote there starts the change from its first step)"
        ));
    }
    status.map(|e| e.status)
}

/// Identifies the change a run asks for: every service's settings and image (secret values
/// excluded) and the playbook's name and steps, hashed.
fn change_digest(env: &Environment, playbook: &Playbook) -> String {
    use sha2::Digest;
    let steps: Vec<String> = playbook
        .steps
        .iter()
        .map(crate::manifest::playbook::describe)
        .collect();
    let text = serde_json::json!({
        "environment": env.name,
        "services": crate::report::run::snapshots(env),
        "playbook": playbook.name,
        "steps": steps,
    })
    .to_string();
    format!("sha256:{:x}", sha2::Sha256::digest(text.as_bytes()))
}

/// What `execute` did: the exit status and the run's report.
pub(crate) struct Executed {
    pub status: ExitStatus,
    pub report: RunReport,
}

/// Asks on a terminal; refuses without one, since nobody could have read the plan.
fn confirm(plan: &Plan, printer: Printer) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to change production without a confirmation: run `rollout plan` to review, then pass --yes"
        );
    }
    printer.out(&plan::render::text(plan, printer.paint()));
    print!("Carry out this plan on {}? [y/N] ", plan.environment);
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        anyhow::bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

/// Runs a promotion or rollback and reports it: first line `run <id>`, progress, outcome.
pub(crate) async fn execute(
    session: &Session<'_>,
    run: &str,
    environment: &Environment,
    playbook: &Playbook,
    plan: &Plan,
    opts: &Options,
) -> anyhow::Result<Executed> {
    let printer = session.printer;
    let rollback = opts.kind == RunKind::Rollback;
    let now = jiff::Timestamp::now();
    // Recorded as running from the start, so `status` and `report` see it from any process.
    let mut started = RunReport::new(opts.kind, run, environment, playbook, now);
    started.outcome = Outcome::Running;
    super::record_run(session.store, &started, None, printer);
    let state = session.project.state_dir();
    let audit = |event: crate::audit::Event| {
        if let Err(e) = crate::audit::append(&state, event) {
            printer.warn(&format!("the audit trail could not record run {run}: {e}"));
        }
    };
    audit(crate::audit::Event::run_started(
        &started,
        opts.reason.as_deref(),
    ));
    if let Some(reason) = &opts.emergency {
        audit(crate::audit::Event::EmergencyOverride {
            run: run.to_string(),
            environment: environment.name.clone(),
            user: started.user.clone(),
            reason: reason.clone(),
        });
    }
    let notifier = crate::notify::Notifier::new(&session.project.config.notify);
    if !session.json {
        printer.out(&format!("run {run}"));
        // A rollback's playbook is only its switch, named after the revision it puts back.
        let how = if rollback {
            format!("Rolling back {}: {}", environment.name, playbook.name)
        } else {
            format!(
                "Promoting {} with playbook {}",
                environment.name, playbook.name
            )
        };
        printer.out(&format!("{how} on {}", session.engine.describe()));
    }
    let progress = Console::new(printer.paint(), session.json);
    let journal = crate::exec::journal::Journal::new(session.store.clone(), &environment.name, run)
        .with_ledger(session.engine.ledger());
    let report = promote::promote(
        session.engine,
        &journal,
        environment,
        playbook,
        plan,
        run,
        now,
        opts,
        &progress,
        session.cancel,
    )
    .await;
    super::save_run(session.project, session.store, &report, printer);
    audit(crate::audit::Event::run_finished(&report));
    notifier.run_finished(&report);
    if session.json {
        printer.json(&report)?;
    } else {
        let what = if rollback { "Rollback" } else { "Promotion" };
        printer.out(&format!(
            "{what} {run} {} in {:.1}s",
            report.outcome.summary(printer.paint()),
            report.elapsed_ms as f64 / 1000.0
        ));
    }
    if !report.awaiting.is_empty() {
        notifier.send(&crate::notify::Notification::new(
            crate::notify::Event::AwaitingApproval,
            &environment.name,
            run,
            Some(&format!(
                "waiting for {}",
                crate::session::approve::awaited_text(&report.awaiting)
            )),
            jiff::Timestamp::now(),
        ));
    }
    for undelivered in notifier.flush(crate::notify::FLUSH_DEADLINE).await {
        printer.warn(&undelivered.to_string());
    }
    let status = match report.outcome {
        Outcome::Promoted | Outcome::Restored => ExitStatus::Success,
        Outcome::Refused { .. } => ExitStatus::Refused,
        _ => ExitStatus::Failure,
    };
    Ok(Executed { status, report })
}
