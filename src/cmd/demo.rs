//! `rollout demo`: builds the demo client's images on the local engine, shows the plan for the
//! demo environment (this repository's `manifests/` and `playbooks/`), then rehearses it: a test
//! version comes up, is checked, and is torn down.

use std::path::Path;

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{DemoArgs, EnvArgs, ExitStatus, Format, PlanArgs, RehearseArgs};
use crate::demo;
use crate::project::Project;

pub async fn run(dir: &Path, args: DemoArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let project = Project::open(dir)?;
    let engine = super::connect(&project).await?;
    printer.out(&format!(
        "Building the demo images on {}",
        engine.describe()
    ));
    for image in demo::images().context("preparing the demo images")? {
        engine.build_image(&image.tag, &image.context).await?;
        printer.out(&format!("  built {}", image.tag));
    }
    if args.build_only {
        return Ok(ExitStatus::Success);
    }
    printer.out("\n$ rollout plan");
    let plan = PlanArgs {
        env: EnvArgs::default(),
        playbook: None,
        output: Format::Text,
    };
    let status = super::plan::run(dir, plan, printer).await?;
    if status == ExitStatus::Changes {
        printer.out("(`rollout plan` exits 2: there are changes to carry out.)");
    }
    printer.out("\n$ rollout rehearse");
    let rehearse = RehearseArgs {
        env: EnvArgs::default(),
        playbook: None,
        output: Format::Text,
    };
    super::rehearse::run(dir, rehearse, printer).await
}
