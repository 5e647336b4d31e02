//! One file per command; [`run`] dispatches. Commands return an [`ExitStatus`] or an error that
//! `lib::run` prints once.

pub mod approve;
pub mod audit;
pub mod daemon;
pub mod demo;
pub mod history;
pub mod plan;
pub mod promote;
pub mod proxy;
pub mod rehearse;
pub mod report;
pub mod rollback;
pub mod status;
pub mod test_env;

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{Cli, Command, ExitStatus};
use crate::engine::Engine;
use crate::engine::docker::DockerEngine;
use crate::engine::kube::KubeEngine;
use crate::manifest::config::Backend;
use crate::project::{Loaded, Project};

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

/// The commands the kubernetes backend carries out so far (issue #8). `history` connects to read
/// the run records kept in the cluster, `approve` to read and write the gates kept there;
/// `report` and `audit` read the local store and never connect.
const KUBERNETES_COMMANDS: [&str; 11] = [
    "plan",
    "status",
    "history",
    "daemon",
    "promote",
    "rollback",
    "test-env up",
    "test-env down",
    "test-env list",
    "rehearse",
    "approve",
];

/// The steps of `playbook` the kubernetes backend cannot carry out with these settings, or `None`
/// when it can run the whole playbook: only a canary `analysis` needs something more there (a
/// Prometheus under `kubernetes.prometheus`, with a `p99` query for `maxP99`).
///
/// A rehearsal skips the steps aimed at production (canary, promote, production smoke), so only
/// the others count for it.
pub(crate) fn kubernetes_unsupported(
    playbook: &crate::manifest::playbook::Playbook,
    rehearsal: bool,
    prometheus: Option<&crate::manifest::config::Prometheus>,
) -> Option<String> {
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

/// Connects to the backend named in rollout.yaml for `command` (as the user typed it). On the
/// kubernetes backend a command not built there yet is refused before anything is done.
pub(crate) async fn connect(project: &Project, command: &str) -> anyhow::Result<Box<dyn Engine>> {
    match project.config.backend {
        Backend::Docker => {
            let engine = DockerEngine::connect(project.config.docker_host.as_deref())
                .await
                .context("the docker backend needs a running Docker engine")?;
            Ok(Box::new(crate::engine::retry::Retrying::new(engine)))
        }
        Backend::Kubernetes => {
            if !KUBERNETES_COMMANDS.contains(&command) {
                anyhow::bail!(
                    "not supported on the kubernetes backend yet: `rollout {command}` (issue #8; `plan`, `status`, `promote`, `rollback`, `history`, `test-env`, `rehearse`, `approve` and `daemon` work there so far); nothing was done"
                );
            }
            let engine = KubeEngine::connect()
                .await
                .context("the kubernetes backend needs a reachable cluster")?
                .with_prometheus(project.config.prometheus.clone())
                .with_copy_image(project.config.copy_image.clone());
            Ok(Box::new(crate::engine::retry::Retrying::new(engine)))
        }
    }
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

/// Where the platform keeps the environment's run records and gates itself (kubernetes),
/// brings them into the local store first, warning about any record it could not take.
pub(crate) async fn pull_records(
    engine: &dyn Engine,
    store: &std::sync::Arc<crate::store::Store>,
    env: &str,
    printer: Printer,
) -> anyhow::Result<()> {
    let conflicts = crate::exec::journal::pull_from(engine, store, env)
        .await
        .map_err(anyhow::Error::msg)?;
    for line in conflicts {
        printer.warn(&line);
    }
    Ok(())
}

/// Removes test versions left by dead runs or past their TTL, saying what it removed.
pub(crate) async fn collect_garbage(
    engine: &dyn Engine,
    env: Option<&str>,
    printer: Printer,
) -> anyhow::Result<()> {
    for line in crate::testenv::collect_garbage(engine, env, jiff::Timestamp::now()).await? {
        printer.warn(&line);
    }
    Ok(())
}

/// Takes `env`'s lock for `run` (waiting up to `wait` if another run holds it), then settles the
/// runs of `env` that were interrupted, saying what it did. `Err(status)` when the command must
/// stop: the lock is held by a live run (exit 3, the holder named), or an interrupted run could
/// not be settled (exit 1: nothing else is done before it is).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn lock_and_recover(
    project: &Project,
    engine: &dyn Engine,
    store: &std::sync::Arc<crate::store::Store>,
    env: &crate::manifest::env::Environment,
    run: &str,
    command: &str,
    wait: Option<std::time::Duration>,
    cancel: &tokio_util::sync::CancellationToken,
    json: bool,
    printer: Printer,
) -> anyhow::Result<Result<crate::exec::lock::LockGuard, ExitStatus>> {
    use crate::exec::lock::{self, LockError};
    let refuse = |status: ExitStatus, outcome: &str, reason: String| -> anyhow::Result<_> {
        if json {
            printer.json(&serde_json::json!({
                "environment": env.name,
                "run": run,
                "outcome": { "outcome": outcome, "reason": reason },
            }))?;
        } else {
            printer.warn(&reason);
        }
        Ok(Err(status))
    };
    let acquired = tokio::select! {
        r = lock::acquire(store, &env.name, run, command, wait, cancel.clone()) => r,
        () = cancel.cancelled() => {
            return refuse(ExitStatus::Failure, "cancelled", "stopped by a signal while waiting for the lock".into());
        }
    };
    let mut guard = match acquired {
        Ok((guard, replaced)) => {
            if let Some(old) = replaced {
                let why = if old.expires < jiff::Timestamp::now() {
                    "its lease ran out"
                } else {
                    "its process is gone"
                };
                printer.warn(&format!(
                    "took over the lock of {} from {} ({why})",
                    env.name,
                    old.describe()
                ));
                if let Err(e) = crate::audit::append(
                    &project.state_dir(),
                    crate::audit::Event::LockTakeover {
                        environment: env.name.clone(),
                        run: run.to_string(),
                        user: crate::exec::report::current_user(),
                        previous_holder: old.describe(),
                        reason: why.to_string(),
                    },
                ) {
                    printer.warn(&format!(
                        "the audit trail could not record the takeover: {e}"
                    ));
                }
                let (e, r) = (env.name.clone(), run.to_string());
                let data = serde_json::to_value(&old).unwrap_or_default();
                store
                    .call(move |s| {
                        s.journal_append(&e, &r, "takeover", crate::store::Phase::Done, &data)
                    })
                    .await?;
            }
            guard
        }
        Err(e @ (LockError::Held { .. } | LockError::TimedOut { .. })) => {
            return refuse(ExitStatus::Refused, "refused", e.to_string());
        }
        Err(LockError::Store(e)) => return Err(e.into()),
    };
    // The platform's own lock, where several machines manage the environment (kubernetes).
    let holder = crate::engine::shared_lock::holder(
        &crate::exec::report::current_user(),
        &crate::owner::current(),
        run,
    );
    if let Some(shared) = engine.shared_lock(&env.name, &holder) {
        use crate::engine::shared_lock::{Acquired, SharedLockError};
        // The lock lives in the environment's namespace (its production network): it must exist.
        let labels = crate::engine::spec::base_labels(env, crate::engine::Role::Production, run);
        engine
            .ensure_network(&crate::engine::spec::production_network(&env.name), &labels)
            .await?;
        match lock::acquire_shared(shared, wait, cancel.clone()).await {
            Ok((shared, acquired)) => {
                if let Acquired::TookOver { from } = acquired {
                    printer.warn(&format!(
                        "took over the cluster lock of {} from {} (its Lease ran out, or its process is gone)",
                        env.name,
                        from.as_deref().unwrap_or("a released holder")
                    ));
                }
                guard.share(shared);
            }
            Err(e @ SharedLockError::Held { .. }) => {
                guard.release().await?;
                return refuse(ExitStatus::Refused, "refused", e.to_string());
            }
            Err(e) => {
                guard.release().await?;
                return Err(e.into());
            }
        }
    }
    // Under both locks: the runs of every machine, as the platform records them.
    if let Err(e) = pull_records(engine, store, &env.name, printer).await {
        guard.release().await?;
        return Err(e);
    }
    let name = env.name.clone();
    let unfinished = store.call(move |s| s.unfinished_runs(&name)).await?;
    for begin in unfinished.iter().filter(|b| b.run != run) {
        // The environment as that run deployed it, so its routes and containers are the ones
        // it made; its own manifest may have changed since.
        let number = begin.data["revision"].as_u64().unwrap_or(0);
        let name = env.name.clone();
        let revision = store.call(move |s| s.revision(&name, number)).await?;
        let deployed = revision
            .and_then(|r| rollback::environment_of(&r, env).ok())
            .unwrap_or_else(|| env.clone());
        let progress = crate::progress::Console::new(printer.paint(), json);
        match crate::exec::recover::recover(
            engine,
            store,
            &deployed,
            &begin.run,
            run,
            project.config.proxy.bind,
            &progress,
        )
        .await
        {
            Ok(done) => {
                if !json {
                    printer.out(&format!(
                        "Recovered run {} (revision {}): {} after `{}`, left by {}",
                        done.run, done.revision, done.action, done.last_step, done.left_by
                    ));
                }
                let r = begin.run.clone();
                if let Ok(Some(mut record)) = store.call(move |s| s.run(&r)).await {
                    record.finished = Some(jiff::Timestamp::now());
                    record.outcome = done.outcome.tag().to_string();
                    record.report["outcome"] = serde_json::to_value(&done.outcome)?;
                    record.report["recoveredBy"] = run.into();
                    store.call(move |s| s.record_run(&record)).await?;
                }
            }
            Err(e) => {
                return refuse(
                    ExitStatus::Failure,
                    "failed",
                    format!(
                        "run {} of {} was interrupted and could not be settled: {e}; nothing else was done",
                        begin.run, env.name
                    ),
                );
            }
        }
    }
    settle_open_runs(store, &env.name, run, json, printer).await?;
    Ok(Ok(guard))
}

/// Closes the run records that promotions and rollbacks killed outside their journal left
/// "running" (before `begin`: only a test version was touched, which the garbage collector
/// removes; after `end`: the journal has the outcome). Called under the lock, where no other
/// such run of `env` can be in flight.
async fn settle_open_runs(
    store: &std::sync::Arc<crate::store::Store>,
    env: &str,
    run: &str,
    json: bool,
    printer: Printer,
) -> anyhow::Result<()> {
    use crate::exec::report::Outcome;
    let name = env.to_string();
    let open = store.call(move |s| s.open_runs(&name)).await?;
    for mut record in open.into_iter().filter(|r| r.run != run) {
        let r = record.run.clone();
        let journal = store.call(move |s| s.journal(&r)).await?;
        let end = journal.iter().find(|e| e.step == crate::store::END);
        let (outcome, finished) = match end {
            Some(end) => (
                serde_json::from_value::<Outcome>(end.data.clone()).unwrap_or_else(|e| {
                    Outcome::Failed {
                        reason: format!("its journal's end entry is unreadable ({e})"),
                    }
                }),
                end.at,
            ),
            // An unfinished journal is settled by recovery, which finishes the record too.
            None if journal.iter().any(|e| e.step == crate::store::BEGIN) => continue,
            None => (
                Outcome::Failed {
                    reason: "its process stopped before production was touched".into(),
                },
                jiff::Timestamp::now(),
            ),
        };
        if !json {
            printer.out(&format!(
                "Closed the record of run {}, left open by a process that is gone: {}",
                record.run,
                outcome.summary(printer.paint())
            ));
        }
        record.finished = Some(finished);
        record.outcome = outcome.tag().to_string();
        record.report["outcome"] = serde_json::to_value(&outcome)?;
        record.report["recoveredBy"] = run.into();
        store.call(move |s| s.record_run(&record)).await?;
    }
    Ok(())
}

/// Writes a run's report files and records the run in the store, so `rollout report RUN` and
/// `latest` find it; failures are warnings (the run itself is over).
pub(crate) fn save_run(
    project: &Project,
    store: &crate::store::Store,
    report: &crate::exec::report::RunReport,
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
    report: &crate::exec::report::RunReport,
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
