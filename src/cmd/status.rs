//! `rollout status`: what runs, which revision, health, and any run in flight.

use std::path::Path;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, ReadArgs};
use crate::project::Project;
use crate::session::status::gather;
use crate::store::Store;

pub async fn run(dir: &Path, args: ReadArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let project = Project::open(dir)?;
    let env = super::load_environment(&project, &args.env, printer)?.environment;
    let store = std::sync::Arc::new(Store::open(&project.state_dir())?);
    let engine = crate::session::connect(&project, "status").await?;
    crate::session::lock::pull_records(engine.as_ref(), &store, &env.name, printer).await?;
    let status = gather(&env.name, &env, &store, engine.as_ref()).await?;
    if args.output == Format::Json {
        printer.json(&status.to_json(&env.client))?;
        return Ok(ExitStatus::Success);
    }
    let mut out = format!("Environment {} (client {})\n", env.name, env.client);
    match &status.current {
        Some(r) => out.push_str(&format!(
            "Revision {} ({}), promoted {} by {}\n",
            r.number,
            r.run,
            r.finished.unwrap_or(r.started),
            r.user
        )),
        None => out.push_str("No promoted revision yet\n"),
    }
    for r in &status.in_flight {
        let [run, started, left_by, last_step] = run_texts(r);
        out.push_str(&format!(
            "In flight: revision {} (run {run}, started {started} by {left_by}), now at `{last_step}`\n",
            r["revision"],
        ));
    }
    for r in &status.interrupted {
        let [run, started, left_by, last_step] = run_texts(r);
        out.push_str(&format!(
            "Interrupted: revision {} (run {run}, started {started}), left by {left_by} after `{last_step}`; the next `rollout promote` or `rollout rollback` settles it\n",
            r["revision"],
        ));
    }
    if let Some(p) = &status.parked {
        out.push_str(&format!(
            "Waiting: run {} (started by {} at {}) waits for {}; `rollout approve {} --by ...`, then `{}` resumes it\n",
            p.run,
            p.user,
            p.at.strftime("%Y-%m-%d %H:%M UTC"),
            crate::session::approve::awaited_text(&p.awaiting),
            p.run,
            crate::gate::resume_command(&p.environment, p.playbook())
        ));
    }
    if let (Some(h), false) = (&status.lock, status.lock_alive) {
        out.push_str(&format!(
            "Stale lock: {} (its holder is gone; the next run takes it over)\n",
            h.describe()
        ));
    }
    if let Some(l) = &status.cluster_lock {
        out.push_str(&format!(
            "Cluster lock: held by {} until {} (Lease {} in {})\n",
            l.holder,
            l.until,
            crate::engine::kube::lease::LEASE_NAME,
            crate::engine::kube::namespace(&env.name)
        ));
    }
    out.push('\n');
    for s in &status.services {
        let containers = s["containers"].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            out.push_str(&format!(
                "  {:<12} not running (wants {})\n",
                s["name"].as_str().unwrap_or(""),
                s["desiredImage"].as_str().unwrap_or("")
            ));
        }
        for c in containers {
            let health = c["health"]
                .as_str()
                .map(|h| format!(", {h}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<12} {} {} ({}{health})\n",
                s["name"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or(""),
                c["image"].as_str().unwrap_or(""),
                c["state"].as_str().unwrap_or("")
            ));
        }
    }
    if !status.tests.is_empty() {
        out.push_str(&format!(
            "\n{} test version(s): {}\n",
            status.tests.len(),
            status
                .tests
                .iter()
                .map(|t| t.run.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    printer.out(&out);
    Ok(ExitStatus::Success)
}

/// The run, its start, who left it and its last step, of a run in flight or interrupted.
fn run_texts(r: &serde_json::Value) -> [&str; 4] {
    ["run", "started", "leftBy", "lastStep"].map(|k| r[k].as_str().unwrap_or_default())
}
