//! One file per command; [`run`] dispatches. Commands return an [`ExitStatus`] or an error that
//! `lib::run` prints once. What they share with the daemon (backend choice, lock and recovery,
//! status, approvals) is in [`crate::session`]; the printing stays here.

pub mod approve;
pub mod audit;
pub mod daemon;
pub mod demo;
pub mod down;
pub mod history;
pub mod plan;
pub mod promote;
pub mod proxy;
pub mod rehearse;
pub mod report;
pub mod rollback;
pub mod runs;
pub mod status;
pub mod test_env;

use crate::cli::output::Printer;
use crate::cli::{Cli, Command, ExitStatus};
use crate::engine::Engine;
use crate::project::{Loaded, Project};
use crate::session;

pub async fn run(cli: Cli, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Cli {
        dir,
        verbose: _,
        command,
    } = cli;
    match command {
        Command::Plan(args) => plan::run(&dir, args, printer).await,
        Command::Demo(args) => demo::run(&dir, args, printer).await,
        Command::Promote(args) => promote::run(&dir, args, printer).await,
        Command::Rollback(args) => rollback::run(&dir, args, printer).await,
        Command::Status(args) => status::run(&dir, args, printer).await,
        Command::History(args) => history::run(&dir, args, printer).await,
        Command::Runs(args) => runs::run(&dir, args, printer).await,
        Command::Down(args) => down::run(&dir, args, printer).await,
        Command::TestEnv(args) => test_env::run(&dir, args, printer).await,
        Command::Rehearse(args) => rehearse::run(&dir, args, printer).await,
        Command::Approve(args) => approve::run(&dir, args, printer).await,
        Command::Report(args) => report::run(&dir, args, printer).await,
        Command::Proxy(args) => proxy::run(args, printer).await,
        Command::Daemon(args) => daemon::run(&dir, args, printer).await,
        Command::Audit(args) => audit::run(&dir, args, printer),
    }
}

/// Loads the environment a command is about, printing what loading warned about.
pub(crate) fn load_environment(
    project: &Project,
    env: &crate::cli::EnvArgs,
    printer: Printer,
) -> anyhow::Result<Loaded> {
    let lookup = |var: &str| std::env::var(var).ok();
    let loaded = project.environment(env.env.as_deref(), env.manifest.as_deref(), &lookup)?;
    for w in &loaded.warnings {
        printer.warn(&w.to_string());
    }
    Ok(loaded)
}

/// The environment a command is about (see [`load_environment`]) and the playbook it runs
/// there (`-p`, else the project's choice), both read and checked before the engine is asked
/// anything.
pub(crate) fn load_with_playbook(
    project: &Project,
    env: &crate::cli::EnvArgs,
    playbook: Option<&str>,
    printer: Printer,
) -> anyhow::Result<(Loaded, crate::manifest::playbook::Playbook)> {
    let loaded = load_environment(project, env, printer)?;
    let playbook = project.playbook(playbook, &loaded.environment)?;
    Ok((loaded, playbook))
}

/// On the kubernetes backend, why it cannot carry out `playbook` with these settings; `None`
/// on docker, or when it can run the whole playbook: only a canary `analysis` needs something
/// more there (a Prometheus under `kubernetes.prometheus`, with a `p99` query for `maxP99`).
///
/// A rehearsal skips the steps aimed at production (canary, promote, production smoke), so only
/// the others count for it.
pub(crate) fn kubernetes_unsupported(
    project: &Project,
    playbook: &crate::manifest::playbook::Playbook,
    rehearsal: bool,
) -> Option<String> {
    if project.config.backend != crate::manifest::config::Backend::Kubernetes {
        return None;
    }
    let prometheus = project.config.prometheus.as_ref();
    use crate::manifest::playbook::{Step, Target};
    let steps: Vec<String> = playbook
        .steps
        .iter()
        .enumerate()
        .filter(|(_, step)| {
            !rehearsal
                || !matches!(
                    step,
                    Step::Canary { .. }
                        | Step::Smoke {
                            target: Target::Production,
                            ..
                        }
                )
        })
        .filter_map(|(i, step)| {
            let why = match step {
                Step::Canary {
                    analysis: Some(_), ..
                } if prometheus.is_none() => {
                    "a canary analysis needs the candidates' request figures: name a Prometheus and its queries under `kubernetes.prometheus` in rollout.yaml"
                }
                Step::Canary {
                    analysis: Some(a), ..
                } if a.max_p99.is_some() && prometheus.is_some_and(|p| p.p99.is_none()) => {
                    "its analysis has `maxP99`, and `kubernetes.prometheus` in rollout.yaml has no `p99` query"
                }
                _ => return None,
            };
            Some(format!(
                "step {} `{}`: {why}",
                i + 1,
                crate::manifest::playbook::describe(step)
            ))
        })
        .collect();
    if steps.is_empty() {
        return None;
    }
    let file = playbook
        .source
        .as_ref()
        .map(|p| format!(" ({})", p.display()))
        .unwrap_or_default();
    Some(format!(
        "the kubernetes backend cannot carry out playbook `{}`{file} with these settings:\n  {}\nit runs every other step there: `testEnv` (copyData through VolumeSnapshots), `smoke` (http and tcp checks through a port-forward, exec checks through the pod's exec), `approve`, `canary` and `promote`",
        playbook.name,
        steps.join("\n  ")
    ))
}

/// Stops runs at their next safe point on the first SIGINT or SIGTERM; a second one exits at
/// once (what was created carries its owner and TTL, so the next command cleans it up).
pub(crate) fn cancel_on_signal(printer: Printer) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                printer.warn("stopping at the next safe point and cleaning up (press Ctrl-C again to abort at once)");
                t.cancel();
            } else {
                printer.warn("aborted; the next rollout command cleans up what is left");
                std::process::exit(130);
            }
        }
    });
    token
}

/// Connects for `command` (see [`session::connect`]), then removes the test versions (of `env`,
/// or all) left by dead runs or past their TTL, saying what it removed.
pub(crate) async fn connect_and_collect(
    project: &Project,
    command: &str,
    env: Option<&str>,
    printer: Printer,
) -> anyhow::Result<Box<dyn Engine>> {
    let engine = session::connect(project, command).await?;
    for line in
        crate::testenv::collect_garbage(engine.as_ref(), env, jiff::Timestamp::now()).await?
    {
        printer.warn(&line);
    }
    Ok(engine)
}

/// Writes a run's report files and records the run in the store, so `rollout report RUN` and
/// `latest` find it; failures are warnings (the run itself is over).
pub(crate) fn save_run(
    project: &Project,
    store: &crate::store::Store,
    report: &crate::report::run::RunReport,
    printer: Printer,
) -> Option<std::path::PathBuf> {
    let saved = report
        .save(&project.state_dir())
        .map_err(|e| printer.warn(&format!("the report could not be written: {e}")))
        .ok();
    record_run(store, report, Some(jiff::Timestamp::now()), printer);
    saved
}

/// Records a run in the store (`finished` unset while it runs); a failure is a warning.
pub(crate) fn record_run(
    store: &crate::store::Store,
    report: &crate::report::run::RunReport,
    finished: Option<jiff::Timestamp>,
    printer: Printer,
) {
    let record = crate::store::RunRecord {
        run: report.run.clone(),
        environment: report.environment.clone(),
        kind: format!("{:?}", report.kind).to_lowercase(),
        started: report
            .started
            .parse()
            .unwrap_or_else(|_| jiff::Timestamp::now()),
        finished,
        user: report.user.clone(),
        outcome: report.outcome.tag().to_string(),
        report: serde_json::to_value(report).unwrap_or_default(),
    };
    if let Err(e) = store.record_run(&record) {
        printer.warn(&format!("the run could not be recorded: {e}"));
    }
}
