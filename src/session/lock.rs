//! Lock and recovery: before a command changes an environment it takes the environment's lock
//! (and the platform's shared lock, where several machines manage it), brings in the run
//! records the platform keeps, and settles the runs a dead process left behind, so that it
//! starts from a known state. Promote and rollback share it; recovery needs the environment as
//! an earlier revision ran it ([`environment_of`]), which rollback puts back too.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;

use super::Session;
use crate::cli::ExitStatus;
use crate::cli::output::Printer;
use crate::engine::{Engine, ServiceSnapshot};
use crate::manifest::env::{Environment, Service};
use crate::store::{Revision, Store};

impl Session<'_> {
    /// Takes `env`'s lock for `run` (waiting up to `wait` if another run holds it), then
    /// settles the runs of `env` that were interrupted, saying what it did. `Err(status)` when
    /// the command must stop: the lock is held by a live run (exit 3, the holder named), or an
    /// interrupted run could not be settled (exit 1: nothing else is done before it is).
    pub(crate) async fn lock_and_recover(
        &self,
        env: &Environment,
        run: &str,
        command: &str,
        wait: Option<std::time::Duration>,
    ) -> anyhow::Result<Result<crate::exec::lock::LockGuard, ExitStatus>> {
        let store = self.store;
        let printer = self.printer;
        use crate::exec::lock::{self, LockError};
        let refuse = |status: ExitStatus, outcome: &str, reason: String| -> anyhow::Result<_> {
            if self.json {
                printer.json(&serde_json::json!({
                    "environment": env.name,
                    "run": run,
                    "outcome": { "outcome": outcome, "reason": reason },
                }))?;
            } else {
                printer.refusal(&reason);
            }
            Ok(Err(status))
        };
        let acquired = tokio::select! {
            r = lock::acquire(store, &env.name, run, command, wait, self.cancel.clone()) => r,
            () = self.cancel.cancelled() => {
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
                        &self.project.state_dir(),
                        crate::audit::Event::LockTakeover {
                            environment: env.name.clone(),
                            run: run.to_string(),
                            user: crate::report::run::current_user(),
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
            &crate::report::run::current_user(),
            &crate::owner::current(),
            run,
        );
        if let Some(shared) = self.engine.shared_lock(&env.name, &holder) {
            use crate::engine::shared_lock::{Acquired, SharedLockError};
            // The lock lives in the environment's namespace (its production network): it must exist.
            let labels =
                crate::engine::spec::base_labels(env, crate::engine::Role::Production, run);
            self.engine
                .ensure_network(&crate::engine::spec::production_network(&env.name), &labels)
                .await?;
            match lock::acquire_shared(shared, wait, self.cancel.clone()).await {
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
        if let Err(e) = pull_records(self.engine, store, &env.name, printer).await {
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
                .and_then(|r| environment_of(&r, env).ok())
                .unwrap_or_else(|| env.clone());
            let progress = crate::progress::Console::new(printer.paint(), self.json);
            match crate::exec::recover::recover(
                self.engine,
                store,
                &deployed,
                &begin.run,
                run,
                self.project.config.proxy.bind,
                &progress,
            )
            .await
            {
                Ok(done) => {
                    if !self.json {
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
        settle_open_runs(store, &env.name, run, self.json, printer).await?;
        Ok(Ok(guard))
    }
}

/// Closes the run records that promotions and rollbacks killed outside their journal left
/// "running" (before `begin`: only a test version was touched, which the garbage collector
/// removes; after `end`: the journal has the outcome). Called under the lock, where no other
/// such run of `env` can be in flight.
async fn settle_open_runs(
    store: &Arc<Store>,
    env: &str,
    run: &str,
    json: bool,
    printer: Printer,
) -> anyhow::Result<()> {
    use crate::report::run::Outcome;
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

/// Where the platform keeps the environment's run records and gates itself (kubernetes),
/// brings them into the local store first, warning about any record it could not take.
pub(crate) async fn pull_records(
    engine: &dyn Engine,
    store: &Arc<Store>,
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

/// The environment as revision `r` ran it: its recorded settings, with secret values read now
/// from the sources the current manifest names (values are never stored).
pub fn environment_of(r: &Revision, current: &Environment) -> anyhow::Result<Environment> {
    let snapshots: BTreeMap<String, ServiceSnapshot> =
        serde_json::from_value(r.services.clone())
            .with_context(|| format!("revision {} records no usable settings", r.number))?;
    let mut services = Vec::new();
    let mut remaining: Vec<(String, ServiceSnapshot)> = snapshots.into_iter().collect();
    // Dependency order, as a resolved environment has it.
    while !remaining.is_empty() {
        let ready = remaining
            .iter()
            .position(|(_, s)| {
                s.depends_on
                    .iter()
                    .all(|d| services.iter().any(|x: &Service| &x.name == d))
            })
            .context("the revision's services depend on each other in a cycle")?;
        let (name, s) = remaining.remove(ready);
        let mut secrets = BTreeMap::new();
        for key in &s.secret_keys {
            let secret = current
                .service(&name)
                .and_then(|c| c.secrets.get(key))
                .with_context(|| format!("revision {} of {name} uses secret {key}, which the current manifest no longer declares", r.number))?;
            secrets.insert(key.clone(), secret.clone());
        }
        services.push(s.into_service(name, secrets));
    }
    Ok(Environment {
        services,
        ..current.clone()
    })
}
