//! Scheduled rehearsals: a schedule a few seconds out fires `rollout rehearse` against the real
//! engine and leaves a report; due times missed while the daemon was down are recorded as missed
//! once, and survive a restart.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use rollout::daemon::schedule::{Entry, RunResult, Scheduler, Settings};
use tokio_util::sync::CancellationToken;

use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{Project, unique, webhook_receiver};

fn entry(env: &str, cron: &str, tz: &str) -> Entry {
    Entry {
        environment: env.into(),
        playbook: Some("nightly".into()),
        cron: cron.parse().expect("cron"),
        schedule: cron.into(),
        tz: TimeZone::get(tz).expect("tz"),
        tz_name: tz.into(),
    }
}

const NIGHTLY: &str = "apiVersion: rollout/v1\nkind: Playbook\nname: nightly\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: web, path: /healthz } } ] }\n  - promote: { drain: 1s }\n";

#[test]
fn a_rehearsal_scheduled_a_few_seconds_out_fires_and_leaves_a_report() {
    let name = unique("sch");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let project = Project::new()
        .manifest(
            &name,
            &format!(
                "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices:\n  web:\n    image: shop-web:2.4.0\n    ports: [ {{ container: 8080 }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }}, interval: 200ms, startPeriod: 3s }}\n"
            ),
        )
        .playbook("nightly", NIGHTLY);
    // A six-field (with seconds) schedule, four seconds from now, in UTC.
    let due = Timestamp::from_second(Timestamp::now().as_second() + 4)
        .expect("time")
        .to_zoned(TimeZone::UTC);
    let cron = format!("{} {} {} * * *", due.second(), due.minute(), due.hour());
    let settings = Settings {
        project_dir: project.path().to_path_buf(),
        state_dir: project.path().join(".rollout"),
        rollout_bin: env!("CARGO_BIN_EXE_rollout").into(),
        child_env: Vec::new(),
        hide_env: Vec::new(),
        entries: vec![entry(&name, &cron, "UTC")],
    };
    let scheduler = Scheduler::new(settings.clone());
    let handle = scheduler.handle();
    let cancel = CancellationToken::new();
    let rt = runtime();
    let records = rt.block_on(async {
        let task = tokio::spawn(scheduler.run(cancel.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while handle.records().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cancel.cancel();
        task.await.expect("scheduler");
        handle.records()
    });
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.environment, name);
    assert_eq!(r.due, due.timestamp());
    let RunResult::Ran {
        run,
        outcome,
        exit,
        started,
        ..
    } = &r.result
    else {
        panic!("expected a run, got {r:?}");
    };
    assert_eq!(outcome, "passed", "{r:?}");
    assert_eq!(*exit, Some(0));
    assert!(*started >= r.due, "started before it was due: {r:?}");
    let run = run.clone().expect("run id");

    // The rehearsal left its report, found as the environment's latest run.
    let report = project
        .run(&["report", "latest", "-e", &name, "-o", "json"])
        .code(0)
        .json();
    assert_eq!(report["run"], run.as_str());
    assert_eq!(report["kind"], "rehearsal");
    // Nothing of the test version is left, and production was never touched.
    let leftovers = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=rollout.environment={name}"),
        ])
        .output()
        .expect("docker ps");
    assert!(leftovers.stdout.is_empty(), "the rehearsal left containers");

    // The result is durable: a restarted scheduler knows it.
    let again = Scheduler::new(settings);
    let status = again.handle().status(Timestamp::now());
    assert_eq!(status.entries[0].last.as_ref(), Some(r));
    assert_eq!(status.entries[0].missed, 0);
}

#[test]
fn runs_missed_while_the_daemon_was_down_are_recorded_once_not_run() {
    let dir = tempfile::tempdir().expect("state");
    let e = entry("shop", "0 2 * * *", "Europe/Paris");
    let last: Timestamp = "2026-06-10T00:00:00Z".parse().expect("time"); // 02:00 CEST
    let log = format!(
        "{}\n",
        serde_json::json!({
            "entry": e.key(), "environment": "shop", "due": last.to_string(),
            "result": "ran", "run": "r-1", "outcome": "passed", "exit": 0,
            "started": last.to_string(), "finished": last.to_string()
        })
    );
    std::fs::write(dir.path().join("rehearsals.jsonl"), log).expect("write");
    let settings = Settings {
        project_dir: dir.path().to_path_buf(),
        state_dir: dir.path().to_path_buf(),
        // Never run: a missed due time is recorded, not rehearsed late.
        rollout_bin: "/nonexistent/rollout".into(),
        child_env: Vec::new(),
        hide_env: Vec::new(),
        entries: vec![e.clone()],
    };
    let now: Timestamp = "2026-06-13T06:00:00Z".parse().expect("time");
    let scheduler = Scheduler::new(settings.clone());
    let missed = scheduler.record_missed(now).expect("record");
    let dues: Vec<String> = missed.iter().map(|r| r.due.to_string()).collect();
    assert_eq!(
        dues,
        [
            "2026-06-11T00:00:00Z",
            "2026-06-12T00:00:00Z",
            "2026-06-13T00:00:00Z"
        ]
    );
    assert!(
        missed
            .iter()
            .all(|r| r.result == RunResult::Missed { noticed: now })
    );
    // Recorded durably and once: a restart at the same time finds nothing new.
    let restarted = Scheduler::new(settings);
    assert!(restarted.record_missed(now).expect("record").is_empty());
    let status = restarted.handle().status(now);
    assert_eq!(status.entries[0].missed, 3);
    assert_eq!(
        status.entries[0].next_due.map(|t| t.to_string()),
        Some("2026-06-14T00:00:00Z".to_string())
    );
    let lines = std::fs::read_to_string(dir.path().join("rehearsals.jsonl")).expect("log");
    assert_eq!(lines.lines().count(), 4);
}

#[test]
fn a_failed_scheduled_rehearsal_is_recorded_and_notifies_once() {
    let name = unique("shf");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    runtime().block_on(async { demo_images(&engine().await).await });
    let (url, hits) = webhook_receiver();
    let project = Project::new()
        .file(
            "rollout.yaml",
            format!("notify:\n  - {{ webhook: \"{url}\", on: [rehearsalFailed] }}\n"),
        )
        .manifest(
            &name,
            &format!(
                "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices:\n  web:\n    image: shop-web:2.4.0\n    ports: [ {{ container: 8080 }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }} }}\n"
            ),
        )
        .playbook(
            "nightly",
            "apiVersion: rollout/v1\nkind: Playbook\nname: nightly\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: web, path: /, expectBody: \"shop web 9.9\", retries: 0 } } ] }\n",
        );
    let due = Timestamp::from_second(Timestamp::now().as_second() + 3)
        .expect("time")
        .to_zoned(TimeZone::UTC);
    let cron = format!("{} {} {} * * *", due.second(), due.minute(), due.hour());
    let scheduler = Scheduler::new(Settings {
        project_dir: project.path().to_path_buf(),
        state_dir: project.path().join(".rollout"),
        rollout_bin: env!("CARGO_BIN_EXE_rollout").into(),
        child_env: Vec::new(),
        hide_env: Vec::new(),
        entries: vec![entry(&name, &cron, "UTC")],
    });
    let handle = scheduler.handle();
    let cancel = CancellationToken::new();
    let records = runtime().block_on(async {
        let task = tokio::spawn(scheduler.run(cancel.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while handle.records().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cancel.cancel();
        task.await.expect("scheduler");
        handle.records()
    });
    assert_eq!(records.len(), 1, "{records:?}");
    let RunResult::Ran {
        run, outcome, exit, ..
    } = &records[0].result
    else {
        panic!("expected a run: {records:?}");
    };
    assert_eq!(outcome, "failed");
    assert_eq!(*exit, Some(1));
    assert!(!records[0].result.passed());
    // `rollout rehearse` delivered the webhook itself (it flushes before exiting); the
    // scheduler sent nothing more.
    std::thread::sleep(Duration::from_secs(1));
    let hits = hits.lock().expect("hits");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["event"], "rehearsalFailed");
    assert_eq!(hits[0]["run"], run.as_deref().expect("run id"));
}
