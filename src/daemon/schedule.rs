//! Scheduled rehearsals: when each `daemon.rehearsals` entry is due (pure functions of cron,
//! time zone and a time), and the [`Scheduler`] loop that runs `rollout rehearse` at those times.
//!
//! # Time zones and DST
//! Schedules are wall-clock times in the entry's `tz`, resolved by croner:
//! - **spring forward** (a wall-clock time that does not exist that day, e.g. 02:30 in
//!   Europe/Paris on the last Sunday of March): the rehearsal runs **once**, at the first real
//!   instant after the gap (03:00 CEST). A nightly rehearsal is never skipped.
//! - **fall back** (a wall-clock time that happens twice, e.g. 02:30 on the last Sunday of
//!   October): a fixed-time schedule runs **once**, at the first of the two instants (02:30
//!   CEST). Interval schedules (`*/15 * * * *`) run at every instant, both halves included.
//!
//! # Results
//! `rollout rehearse` itself records each run in the store and writes its report (and sends the
//! `rehearsalFailed` webhook: the scheduler sends nothing). The scheduler keeps its own log in
//! `<state>/rehearsals.jsonl`, one JSON line per due time: which run it started and how it ended,
//! or that it was missed. An append-only file because the daemon is its only writer, a line is
//! written whole or (after a crash) left torn and skipped, and it needs no schema change in the
//! shared store. On startup the due times between the last line of an entry and now are
//! appended as `missed`: reported, never run all at once, never silently skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::manifest::config::Rehearsal;

/// How many missed due times one startup reports at most per entry (a schedule every second
/// and a daemon down for a month must not write millions of lines).
pub const MISSED_LIMIT: usize = 1000;

/// The first due time strictly after `after`, or `None` if the schedule never fires again.
pub fn next_due(cron: &Cron, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
    let start = after.to_zoned(tz.clone());
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(|z| z.timestamp())
}

/// The due times strictly after `last_run` and at or before `now`, oldest first, at most
/// [`MISSED_LIMIT`]: what a daemon that was down between the two did not run.
pub fn missed(cron: &Cron, tz: &TimeZone, last_run: Timestamp, now: Timestamp) -> Vec<Timestamp> {
    let mut out = Vec::new();
    let mut at = last_run;
    while let Some(due) = next_due(cron, tz, at) {
        if due > now || out.len() >= MISSED_LIMIT {
            break;
        }
        out.push(due);
        at = due;
    }
    out
}

/// One line of `<state>/rehearsals.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The entry: `ENV/PLAYBOOK@SCHEDULE TZ`.
    pub entry: String,
    pub environment: String,
    pub due: Timestamp,
    #[serde(flatten)]
    pub result: RunResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum RunResult {
    /// `rollout rehearse` ran: its run id (for `rollout report RUN`), outcome and exit status.
    Ran {
        run: Option<String>,
        outcome: String,
        exit: Option<i32>,
        started: Timestamp,
        finished: Timestamp,
        /// The end of stderr when the rehearsal did not pass.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The daemon was not running (or was busy) at the due time.
    Missed { noticed: Timestamp },
}

impl RunResult {
    pub fn passed(&self) -> bool {
        matches!(self, RunResult::Ran { exit: Some(0), .. })
    }
}

/// One scheduled entry, resolved.
#[derive(Debug, Clone)]
pub struct Entry {
    pub environment: String,
    pub playbook: Option<String>,
    pub cron: Cron,
    pub schedule: String,
    pub tz: TimeZone,
    pub tz_name: String,
}

impl Entry {
    pub fn from_config(r: &Rehearsal) -> Result<Entry, jiff::Error> {
        Ok(Entry {
            environment: r.environment.clone(),
            playbook: r.playbook.clone(),
            cron: r.schedule.clone(),
            schedule: r.schedule_text.clone(),
            tz: TimeZone::get(&r.tz)?,
            tz_name: r.tz.clone(),
        })
    }

    pub fn key(&self) -> String {
        format!(
            "{}/{}@{} {}",
            self.environment,
            self.playbook.as_deref().unwrap_or("-"),
            self.schedule,
            self.tz_name
        )
    }
}

/// What the scheduler shows of one entry (for the API and dashboard).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryStatus {
    pub entry: String,
    pub environment: String,
    pub playbook: Option<String>,
    pub schedule: String,
    pub tz: String,
    pub next_due: Option<Timestamp>,
    pub last: Option<Record>,
    /// Missed due times recorded so far for this entry.
    pub missed: usize,
}

/// The scheduler's state, serializable for the API.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    pub entries: Vec<EntryStatus>,
}

/// How the scheduler runs rehearsals.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The project folder passed to the child as `-C`.
    pub project_dir: PathBuf,
    /// Where `rehearsals.jsonl` lives (the project's state directory).
    pub state_dir: PathBuf,
    /// The rollout binary to run (normally `std::env::current_exe()`).
    pub rollout_bin: PathBuf,
    /// Extra environment variables for the children.
    pub child_env: Vec<(String, String)>,
    /// Variables the children must not inherit: the daemon's token variables.
    pub hide_env: Vec<String>,
    pub entries: Vec<Entry>,
}

impl Settings {
    /// Settings from a project's `daemon.rehearsals`, running this very binary. With
    /// `daemon.gitops` set, rehearsals run on the GitOps checkout (the manifests of the followed
    /// commit) with the project's state directory, like the controller's promotions.
    pub fn from_project(project: &crate::project::Project) -> anyhow::Result<Settings> {
        let entries = project
            .config
            .daemon
            .iter()
            .flat_map(|d| d.rehearsals.iter())
            .map(Entry::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        let state_dir = project.state_dir();
        let gitops = project
            .config
            .daemon
            .as_ref()
            .and_then(|d| d.gitops.as_ref());
        let (project_dir, child_env) = match gitops {
            Some(g) => {
                let mut env = vec![(
                    super::gitops::STATE_ENV.to_string(),
                    state_dir.display().to_string(),
                )];
                if let Some(f) = super::gitops::settings_file(project) {
                    env.push((
                        super::gitops::SETTINGS_ENV.to_string(),
                        f.display().to_string(),
                    ));
                }
                (super::gitops::checkout_dir(&state_dir).join(&g.path), env)
            }
            None => (project.dir.clone(), Vec::new()),
        };
        Ok(Settings {
            project_dir,
            state_dir,
            rollout_bin: std::env::current_exe()?,
            child_env,
            hide_env: super::token_vars(project),
            entries,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cannot record the rehearsal in {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start `{bin} rehearse`: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the scheduled rehearsals. Clone a [`ScheduleHandle`] (via [`Scheduler::handle`]) before
/// `run` to read the status from elsewhere.
pub struct Scheduler {
    settings: Settings,
    log: PathBuf,
    records: Arc<Mutex<Vec<Record>>>,
}

/// A shared view of the scheduler's records.
#[derive(Clone)]
pub struct ScheduleHandle {
    entries: Vec<Entry>,
    records: Arc<Mutex<Vec<Record>>>,
}

impl ScheduleHandle {
    /// Every record, oldest first.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn status(&self, now: Timestamp) -> ScheduleStatus {
        let records = self.records();
        ScheduleStatus {
            entries: self
                .entries
                .iter()
                .map(|e| {
                    let key = e.key();
                    let mine = records.iter().filter(|r| r.entry == key);
                    EntryStatus {
                        entry: key.clone(),
                        environment: e.environment.clone(),
                        playbook: e.playbook.clone(),
                        schedule: e.schedule.clone(),
                        tz: e.tz_name.clone(),
                        next_due: next_due(&e.cron, &e.tz, now),
                        last: mine.clone().next_back().cloned(),
                        missed: mine
                            .filter(|r| matches!(r.result, RunResult::Missed { .. }))
                            .count(),
                    }
                })
                .collect(),
        }
    }
}

impl Scheduler {
    /// Opens the scheduler, reading what `<state>/rehearsals.jsonl` recorded so far.
    pub fn new(settings: Settings) -> Scheduler {
        let log = settings.state_dir.join("rehearsals.jsonl");
        let records = read_log(&log);
        Scheduler {
            settings,
            log,
            records: Arc::new(Mutex::new(records)),
        }
    }

    pub fn handle(&self) -> ScheduleHandle {
        ScheduleHandle {
            entries: self.settings.entries.clone(),
            records: self.records.clone(),
        }
    }

    fn last_due(&self, key: &str) -> Option<Timestamp> {
        let records = self.records.lock().ok()?;
        records
            .iter()
            .filter(|r| r.entry == key)
            .map(|r| r.due)
            .max()
    }

    fn append(&self, record: Record) -> Result<(), ScheduleError> {
        let err = |source| ScheduleError::Log {
            path: self.log.clone(),
            source,
        };
        std::fs::create_dir_all(&self.settings.state_dir).map_err(err)?;
        let mut line = serde_json::to_string(&record).map_err(|e| err(e.into()))?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(err)?;
        f.write_all(line.as_bytes()).map_err(err)?;
        f.sync_data().map_err(err)?;
        if let Ok(mut r) = self.records.lock() {
            r.push(record);
        }
        Ok(())
    }

    /// Records the due times each entry missed since its last record, up to `now` (entries
    /// with no record yet start fresh: nothing was scheduled before). Returns them.
    pub fn record_missed(&self, now: Timestamp) -> Result<Vec<Record>, ScheduleError> {
        let mut out = Vec::new();
        for e in &self.settings.entries {
            let key = e.key();
            let Some(last) = self.last_due(&key) else {
                continue;
            };
            for due in missed(&e.cron, &e.tz, last, now) {
                let record = Record {
                    entry: key.clone(),
                    environment: e.environment.clone(),
                    due,
                    result: RunResult::Missed { noticed: now },
                };
                tracing::warn!(entry = %key, %due, "scheduled rehearsal missed");
                self.append(record.clone())?;
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Runs `rollout rehearse` for `entry` (due at `due`) and records the result.
    pub async fn fire(
        &self,
        entry: &Entry,
        due: Timestamp,
        cancel: &CancellationToken,
    ) -> Result<Record, ScheduleError> {
        let mut args: Vec<String> = vec![
            "-C".into(),
            self.settings.project_dir.display().to_string(),
            "rehearse".into(),
            "-e".into(),
            entry.environment.clone(),
            "-o".into(),
            "json".into(),
        ];
        if let Some(p) = &entry.playbook {
            args.extend(["-p".into(), p.clone()]);
        }
        // The environment's own manifest file: another one that does not load (another
        // client's typo, in a GitOps repository) must not stop this rehearsal.
        if let Some(m) = super::gitops::manifest_of(&self.settings.project_dir, &entry.environment)
        {
            args.extend(["-m".into(), m]);
        }
        let started = Timestamp::now();
        let out = super::gitops::run_child(
            &self.settings.rollout_bin,
            &args,
            &self.settings.child_env,
            &self.settings.hide_env,
            cancel,
        )
        .await
        .map_err(|source| ScheduleError::Spawn {
            bin: self.settings.rollout_bin.clone(),
            source,
        })?;
        let json: Option<serde_json::Value> = serde_json::from_str(&out.stdout).ok();
        let run = json
            .as_ref()
            .and_then(|v| v["run"].as_str())
            .map(str::to_string);
        let outcome = json
            .as_ref()
            .and_then(|v| {
                v["outcome"]["outcome"]
                    .as_str()
                    .or_else(|| v["outcome"].as_str())
            })
            .unwrap_or(if out.code == Some(0) {
                "passed"
            } else {
                "failed"
            })
            .to_string();
        let record = Record {
            entry: entry.key(),
            environment: entry.environment.clone(),
            due,
            result: RunResult::Ran {
                run,
                outcome,
                exit: out.code,
                started,
                finished: Timestamp::now(),
                error: (out.code != Some(0)).then(|| super::gitops::tail(&out.stderr)),
            },
        };
        self.append(record.clone())?;
        Ok(record)
    }

    /// Reports missed runs, then runs each entry at its due times until `cancel`. Rehearsals run
    /// one at a time; a due time that passes while another rehearsal runs is recorded as missed.
    pub async fn run(self, cancel: CancellationToken) {
        match self.record_missed(Timestamp::now()) {
            Ok(m) if !m.is_empty() => {
                tracing::warn!(count = m.len(), "scheduled rehearsals missed while down")
            }
            Ok(_) => {}
            Err(e) => tracing::error!("{e}"),
        }
        let mut after: Vec<Timestamp> = self
            .settings
            .entries
            .iter()
            .map(|_| Timestamp::now())
            .collect();
        loop {
            let now = Timestamp::now();
            let dues: Vec<Option<Timestamp>> = self
                .settings
                .entries
                .iter()
                .zip(&after)
                .map(|(e, a)| next_due(&e.cron, &e.tz, *a))
                .collect();
            let Some(earliest) = dues.iter().flatten().min().copied() else {
                cancel.cancelled().await;
                return;
            };
            let wait = earliest
                .duration_since(now)
                .try_into()
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            for (i, e) in self.settings.entries.iter().enumerate() {
                if dues[i] != Some(earliest) {
                    continue;
                }
                if cancel.is_cancelled() {
                    return;
                }
                match self.fire(e, earliest, &cancel).await {
                    Ok(r) => {
                        tracing::info!(entry = %r.entry, result = ?r.result, "scheduled rehearsal")
                    }
                    Err(err) => tracing::error!("{err}"),
                }
                after[i] = earliest;
            }
            // Due times that passed while rehearsals ran are missed, not run late in a burst.
            let now = Timestamp::now();
            for (i, e) in self.settings.entries.iter().enumerate() {
                for due in missed(&e.cron, &e.tz, after[i], now) {
                    let record = Record {
                        entry: e.key(),
                        environment: e.environment.clone(),
                        due,
                        result: RunResult::Missed { noticed: now },
                    };
                    if let Err(err) = self.append(record) {
                        tracing::error!("{err}");
                    }
                    after[i] = due;
                }
            }
        }
    }
}

/// Reads the log, skipping lines that do not parse (a torn last line after a crash).
fn read_log(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paris() -> TimeZone {
        TimeZone::get("Europe/Paris").unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_nightly_schedule_is_due_at_its_wall_clock_time() {
        let cron: Cron = "0 2 * * *".parse().unwrap();
        // 2026-06-10 12:00 UTC; 02:00 CEST is 00:00 UTC.
        let next = next_due(&cron, &paris(), at("2026-06-10T12:00:00Z")).unwrap();
        assert_eq!(next, at("2026-06-11T00:00:00Z"));
        // Strictly after: the due time itself gives the next day.
        assert_eq!(
            next_due(&cron, &paris(), next).unwrap(),
            at("2026-06-12T00:00:00Z")
        );
    }

    #[test]
    fn spring_forward_runs_a_0230_schedule_once_right_after_the_gap() {
        // 2026-03-29: Paris clocks go from 02:00 CET to 03:00 CEST; 02:30 does not exist.
        let cron: Cron = "30 2 * * *".parse().unwrap();
        let next = next_due(&cron, &paris(), at("2026-03-28T12:00:00Z")).unwrap();
        // The first instant after the gap: 03:00 CEST = 01:00 UTC.
        assert_eq!(next, at("2026-03-29T01:00:00Z"));
        // And once only: the next is 02:30 CEST the day after (00:30 UTC).
        let after = next_due(&cron, &paris(), next).unwrap();
        assert_eq!(after, at("2026-03-30T00:30:00Z"));
        assert_eq!(
            missed(
                &cron,
                &paris(),
                at("2026-03-28T12:00:00Z"),
                at("2026-03-30T12:00:00Z")
            ),
            vec![next, after]
        );
    }

    #[test]
    fn fall_back_runs_a_0230_schedule_once_at_the_first_instant() {
        // 2026-10-25: Paris clocks go from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
        let cron: Cron = "30 2 * * *".parse().unwrap();
        let next = next_due(&cron, &paris(), at("2026-10-24T12:00:00Z")).unwrap();
        // 02:30 CEST = 00:30 UTC (the second 02:30, CET, would be 01:30 UTC).
        assert_eq!(next, at("2026-10-25T00:30:00Z"));
        let after = next_due(&cron, &paris(), next).unwrap();
        // Not 01:30 UTC the same night: the next run is 02:30 CET the day after.
        assert_eq!(after, at("2026-10-26T01:30:00Z"));
    }

    #[test]
    fn an_interval_schedule_runs_in_both_halves_of_the_repeated_hour() {
        let cron: Cron = "0,30 * * * *".parse().unwrap();
        let got = missed(
            &cron,
            &paris(),
            at("2026-10-25T00:00:00Z"),
            at("2026-10-25T01:30:00Z"),
        );
        // 02:30 CEST, 02:00 CET, 02:30 CET.
        assert_eq!(
            got,
            vec![
                at("2026-10-25T00:30:00Z"),
                at("2026-10-25T01:00:00Z"),
                at("2026-10-25T01:30:00Z")
            ]
        );
    }

    #[test]
    fn missed_lists_the_due_times_between_the_last_run_and_now_and_is_bounded() {
        let cron: Cron = "0 2 * * *".parse().unwrap();
        let got = missed(
            &cron,
            &paris(),
            at("2026-06-10T00:00:00Z"),
            at("2026-06-13T01:00:00Z"),
        );
        assert_eq!(
            got,
            vec![
                at("2026-06-11T00:00:00Z"),
                at("2026-06-12T00:00:00Z"),
                at("2026-06-13T00:00:00Z")
            ]
        );
        assert!(
            missed(
                &cron,
                &paris(),
                at("2026-06-10T00:00:00Z"),
                at("2026-06-10T23:59:59Z")
            )
            .is_empty()
        );
        let every_second: Cron = "* * * * * *".parse().unwrap();
        let many = missed(
            &every_second,
            &TimeZone::UTC,
            at("2026-06-10T00:00:00Z"),
            at("2026-06-11T00:00:00Z"),
        );
        assert_eq!(many.len(), MISSED_LIMIT);
    }

    #[test]
    fn with_gitops_rehearsals_run_on_the_checkout_with_the_project_state() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "daemon:\n  rehearsals:\n    - { environment: shop, schedule: \"0 2 * * *\", tz: Europe/Paris }\n";
        std::fs::write(dir.path().join("rollout.yaml"), yaml).unwrap();
        let project = crate::project::Project::open(dir.path()).unwrap();
        let s = Settings::from_project(&project).unwrap();
        assert_eq!(s.project_dir, dir.path());
        assert!(s.child_env.is_empty());
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].key(), "shop/-@0 2 * * * Europe/Paris");

        let yaml = format!(
            "{yaml}  gitops: {{ repo: \"https://git.example/acme/infra.git\", branch: main, path: envs/prod }}\n"
        );
        std::fs::write(dir.path().join("rollout.yaml"), yaml).unwrap();
        let project = crate::project::Project::open(dir.path()).unwrap();
        let s = Settings::from_project(&project).unwrap();
        let state = project.state_dir();
        assert_eq!(s.project_dir, state.join("gitops/checkout/envs/prod"));
        assert_eq!(
            s.child_env,
            [
                ("ROLLOUT_STATE".to_string(), state.display().to_string()),
                (
                    "ROLLOUT_SETTINGS".to_string(),
                    dir.path().join("rollout.yaml").display().to_string()
                )
            ]
        );
    }

    #[test]
    fn the_log_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rehearsals.jsonl");
        let r = Record {
            entry: "shop/-@0 2 * * * UTC".into(),
            environment: "shop".into(),
            due: at("2026-06-10T00:00:00Z"),
            result: RunResult::Missed {
                noticed: at("2026-06-10T01:00:00Z"),
            },
        };
        let line = serde_json::to_string(&r).unwrap();
        std::fs::write(&path, format!("{line}\n{{\"entry\":\"sh")).unwrap();
        assert_eq!(read_log(&path), vec![r]);
    }
}
