//! `rollout status`: what runs, which revision, health, and any run in flight.

use std::path::Path;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, Format, ReadArgs};
use crate::project::Project;
use crate::store::{RevisionOutcome, Store};

pub async fn run(dir: &Path, args: ReadArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let project = Project::open(dir)?;
    let env = super::load_environment(&project, &args.env, printer)?.environment;
    let store = Store::open(&project.state_dir())?;
    let history = store.history(&env.name)?;
    let current = history
        .iter()
        .find(|r| r.outcome == RevisionOutcome::Promoted)
        .cloned();
    let in_flight: Vec<_> = history
        .iter()
        .filter(|r| r.outcome == RevisionOutcome::InProgress)
        .cloned()
        .collect();
    let engine = super::connect(&project).await?;
    let observed = engine.observe(&env.name).await?;
    let tests = crate::testenv::list(engine.as_ref(), Some(&env.name)).await?;
    let services: Vec<serde_json::Value> = env
        .services
        .iter()
        .map(|s| {
            let running = observed.services.get(&s.name);
            let containers: Vec<serde_json::Value> = running
                .map(|o| {
                    o.containers
                        .iter()
                        .map(|c| serde_json::json!({ "name": c.name, "image": c.image, "state": c.state.to_string(), "health": c.health }))
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({ "name": s.name, "desiredImage": s.image, "containers": containers })
        })
        .collect();
    if args.output == Format::Json {
        printer.json(&serde_json::json!({
            "environment": env.name, "client": env.client,
            "revision": current, "inFlight": in_flight, "services": services, "testVersions": tests,
        }))?;
        return Ok(ExitStatus::Success);
    }
    let mut out = format!("Environment {} (client {})\n", env.name, env.client);
    match &current {
        Some(r) => out.push_str(&format!(
            "Revision {} ({}), promoted {} by {}\n",
            r.number,
            r.run,
            r.finished.unwrap_or(r.started),
            r.user
        )),
        None => out.push_str("No promoted revision yet\n"),
    }
    for r in &in_flight {
        out.push_str(&format!(
            "In flight: revision {} (run {}, started {} by {})\n",
            r.number, r.run, r.started, r.user
        ));
    }
    out.push('\n');
    for s in &services {
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
    if !tests.is_empty() {
        out.push_str(&format!(
            "\n{} test version(s): {}\n",
            tests.len(),
            tests
                .iter()
                .map(|t| t.run.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    printer.out(&out);
    Ok(ExitStatus::Success)
}
