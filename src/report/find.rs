//! Finding a run's report: by id or `latest`, in the store's `runs` table, else among the
//! report files of the state directory (rehearsals before they were recorded in the store).
//! Reports written before a field existed are completed from the revision history when it has
//! the data (the reason, the revision number, what changed).

use std::path::{Path, PathBuf};

use crate::plan::ServicePlan;
use crate::report::run::{self as report, RunReport};
use crate::store::{Store, StoreError};

/// Which run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector<'a> {
    /// The newest run of the environment.
    Latest,
    Run(&'a str),
}

impl<'a> Selector<'a> {
    /// `latest`, or a run id; anything else is refused before looking.
    pub fn parse(text: &'a str) -> Result<Self, FindError> {
        if text == "latest" {
            Ok(Selector::Latest)
        } else if crate::run_id::looks_valid(text) {
            Ok(Selector::Run(text))
        } else {
            Err(FindError::NotARunId(text.to_string()))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(
        "`{0}` is not a run id: give the id a run printed first (`run <id>`, also in `rollout history`), or `latest`"
    )]
    NotARunId(String),
    #[error("no run `{run}` is recorded in {}{hint}", state.display())]
    UnknownRun {
        run: String,
        state: PathBuf,
        hint: String,
    },
    #[error("run `{run}` belongs to environment `{found}`, not `{asked}`")]
    OtherEnvironment {
        run: String,
        found: String,
        asked: String,
    },
    #[error("environment `{env}` has no recorded run yet in {}", state.display())]
    NoRuns { env: String, state: PathBuf },
    #[error("the report of run `{run}` in {where_} is unreadable: {detail}")]
    Unreadable {
        run: String,
        where_: String,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The report of the selected run. `env` is required for [`Selector::Latest`] and, with a run
/// id, must match the run's environment when given.
pub fn find(
    store: &Store,
    state_dir: &Path,
    env: Option<&str>,
    selector: Selector<'_>,
) -> Result<RunReport, FindError> {
    let report = match selector {
        Selector::Run(id) => {
            let report = match store.run(id)? {
                Some(record) => decode(id, "the store", record.report)?,
                None => from_files(state_dir, id)?.ok_or_else(|| FindError::UnknownRun {
                    run: id.to_string(),
                    state: state_dir.to_path_buf(),
                    hint: hint(store, env),
                })?,
            };
            if let Some(asked) = env
                && asked != report.environment
            {
                return Err(FindError::OtherEnvironment {
                    run: id.to_string(),
                    found: report.environment,
                    asked: asked.to_string(),
                });
            }
            report
        }
        Selector::Latest => {
            let env = env.expect("the command names the environment for `latest`");
            let from_store = store
                .latest_run(env)?
                .map(|record| decode(&record.run.clone(), "the store", record.report))
                .transpose()?;
            let from_files = newest_file(state_dir, env)?;
            // Rehearsals recorded only as files may be newer than the store's newest run.
            match (from_store, from_files) {
                (Some(s), Some(f)) if started(&f) > started(&s) => f,
                (Some(s), _) => s,
                (None, Some(f)) => f,
                (None, None) => {
                    return Err(FindError::NoRuns {
                        env: env.to_string(),
                        state: state_dir.to_path_buf(),
                    });
                }
            }
        }
    };
    complete(store, report)
}

fn decode(run: &str, where_: &str, json: serde_json::Value) -> Result<RunReport, FindError> {
    serde_json::from_value(json).map_err(|e| FindError::Unreadable {
        run: run.to_string(),
        where_: where_.to_string(),
        detail: e.to_string(),
    })
}

fn read_file(run: &str, path: &Path) -> Result<RunReport, FindError> {
    let unreadable = |detail: String| FindError::Unreadable {
        run: run.to_string(),
        where_: path.display().to_string(),
        detail,
    };
    let text = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| unreadable(e.to_string()))
}

/// `<state>/reports/<any env>/<run>.json`.
fn from_files(state_dir: &Path, run: &str) -> Result<Option<RunReport>, FindError> {
    let Ok(envs) = std::fs::read_dir(state_dir.join("reports")) else {
        return Ok(None);
    };
    for env in envs.flatten() {
        let path = env.path().join(format!("{run}.json"));
        if path.is_file() {
            return read_file(run, &path).map(Some);
        }
    }
    Ok(None)
}

/// The report file of `env` that started last.
fn newest_file(state_dir: &Path, env: &str) -> Result<Option<RunReport>, FindError> {
    let Ok(files) = std::fs::read_dir(state_dir.join("reports").join(env)) else {
        return Ok(None);
    };
    let mut newest: Option<RunReport> = None;
    for f in files.flatten() {
        let path = f.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let run = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let r = read_file(&run, &path)?;
        if newest.as_ref().is_none_or(|n| started(&r) > started(n)) {
            newest = Some(r);
        }
    }
    Ok(newest)
}

fn started(r: &RunReport) -> Option<jiff::Timestamp> {
    r.started.parse().ok()
}

/// Recent runs of the environment (of every environment without `-e`), to help with a
/// mistyped id.
fn hint(store: &Store, env: Option<&str>) -> String {
    let (runs, of) = match env {
        Some(env) => (store.runs(env, 5), format!("of {env}")),
        None => (store.recent_runs(5), String::new()),
    };
    match runs {
        Ok(runs) if !runs.is_empty() => format!(
            "; recent runs{}: {}",
            if of.is_empty() { of } else { format!(" {of}") },
            runs.iter()
                .map(|r| match env {
                    Some(_) => format!("{} ({} {})", r.run, r.kind, r.outcome),
                    None => format!("{} ({} of {} {})", r.run, r.kind, r.environment, r.outcome),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    }
}

/// Fills what an older report lacks from the run's revision, if it has one.
fn complete(store: &Store, mut report: RunReport) -> Result<RunReport, FindError> {
    if report.revision.is_some() && report.reason.is_some() && !report.changes.is_empty() {
        return Ok(report);
    }
    let Some(rev) = store
        .history(&report.environment)?
        .into_iter()
        .find(|r| r.run == report.run)
    else {
        return Ok(report);
    };
    report.revision.get_or_insert(rev.number);
    if report.reason.is_none() {
        report.reason = rev.reason;
    }
    if report.changes.is_empty()
        && let Ok(plan) = serde_json::from_value::<Vec<ServicePlan>>(rev.changes)
    {
        let desired = serde_json::from_value(rev.services).unwrap_or_default();
        report.changes = report::changes(&plan, &desired);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;
    use crate::store::{NewRevision, RunRecord};

    fn record(r: &RunReport) -> RunRecord {
        RunRecord {
            run: r.run.clone(),
            environment: r.environment.clone(),
            kind: "promotion".into(),
            started: r.started.parse().unwrap(),
            finished: None,
            user: r.user.clone(),
            outcome: "rolledBack".into(),
            report: serde_json::to_value(r).unwrap(),
        }
    }

    #[test]
    fn by_id_and_latest_from_the_store_and_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = fixture::report();
        store.record_run(&record(&a)).unwrap();

        let found = find(&store, dir.path(), None, Selector::Run("t1abc2def")).unwrap();
        assert_eq!(found.approvals, a.approvals);
        assert_eq!(
            find(&store, dir.path(), Some("shop"), Selector::Latest)
                .unwrap()
                .run,
            "t1abc2def"
        );

        // A rehearsal kept only as a file, newer than the store's run.
        let mut b = fixture::report();
        b.run = "t1abc9zzz".into();
        b.started = "2026-03-03T08:00:00Z".into();
        let files = dir.path().join("reports/shop");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(
            files.join("t1abc9zzz.json"),
            serde_json::to_vec(&b).unwrap(),
        )
        .unwrap();
        assert_eq!(
            find(&store, dir.path(), None, Selector::Run("t1abc9zzz"))
                .unwrap()
                .run,
            "t1abc9zzz"
        );
        assert_eq!(
            find(&store, dir.path(), Some("shop"), Selector::Latest)
                .unwrap()
                .run,
            "t1abc9zzz"
        );
    }

    #[test]
    fn unknown_runs_wrong_environments_and_bad_ids_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.record_run(&record(&fixture::report())).unwrap();

        let err = find(&store, dir.path(), Some("shop"), Selector::Run("nosuchrun")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no run `nosuchrun` is recorded"), "{text}");
        assert!(
            text.contains("recent runs of shop: t1abc2def (promotion rolledBack)"),
            "{text}"
        );
        // Issue 23: without `-e` the recent runs of every environment are listed.
        let err = find(&store, dir.path(), None, Selector::Run("nosuchrun")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("recent runs: t1abc2def (promotion of shop rolledBack)"),
            "{text}"
        );

        let err = find(&store, dir.path(), Some("blog"), Selector::Run("t1abc2def")).unwrap_err();
        assert!(matches!(err, FindError::OtherEnvironment { .. }), "{err}");

        let err = find(&store, dir.path(), Some("blog"), Selector::Latest).unwrap_err();
        assert!(
            err.to_string().contains("`blog` has no recorded run yet"),
            "{err}"
        );

        assert!(matches!(
            Selector::parse("../etc/passwd"),
            Err(FindError::NotARunId(_))
        ));
        assert_eq!(Selector::parse("latest").unwrap(), Selector::Latest);
    }

    #[test]
    fn an_older_report_is_completed_from_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // As a report stored before the reason, revision and changes fields existed.
        let mut old = serde_json::to_value(fixture::report()).unwrap();
        for field in [
            "reason",
            "revision",
            "changes",
            "approvals",
            "authorizations",
            "emergency",
        ] {
            old.as_object_mut().unwrap().remove(field);
        }
        for step in old["steps"].as_array_mut().unwrap() {
            step.as_object_mut().unwrap().remove("started");
            step.as_object_mut().unwrap().remove("canary");
        }
        let mut rec = record(&fixture::report());
        rec.report = old;
        store.record_run(&rec).unwrap();
        store
            .begin_revision(NewRevision {
                environment: "shop".into(),
                run: "t1abc2def".into(),
                started: "2026-03-02T21:30:00Z".parse().unwrap(),
                user: "marie".into(),
                playbook: "standard".into(),
                reason: Some("commit 4f2a9c1".into()),
                changes: serde_json::json!([
                    { "name": "web", "action": "update", "stateful": false, "managedBy": null,
                      "changes": [ { "change": "image", "from": "shop-web:1", "to": "shop-web:2" },
                                   { "change": "secretChanged", "key": "SESSION_KEY" } ] },
                    { "name": "db", "action": "unchanged", "stateful": true, "managedBy": null, "changes": [] }
                ]),
                services: serde_json::json!({}),
                images: vec![],
            })
            .unwrap();
        let r = find(&store, dir.path(), None, Selector::Run("t1abc2def")).unwrap();
        assert_eq!(r.revision, Some(1));
        assert_eq!(r.reason.as_deref(), Some("commit 4f2a9c1"));
        assert_eq!(r.changes.len(), 1, "unchanged services are left out");
        assert_eq!(r.changes[0].changes[0].after.as_deref(), Some("shop-web:2"));
        assert_eq!(
            r.changes[0].changes[1].after.as_deref(),
            Some("changed (value hidden)")
        );
        assert!(r.approvals.is_empty() && r.emergency.is_none());
        assert!(r.steps.iter().all(|s| s.started.is_none()));
    }
}
