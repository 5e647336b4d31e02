//! rollout: staged rollouts for managed-service providers.
//!
//! It builds a test version of a client's environment, checks it, moves production to the new
//! version without dropping a request, and rolls back by itself when anything fails.
//!
//! # Layout
//! - [`cli`]: clap types, the printer, exit statuses.
//! - [`cmd`]: one file per command; thin drivers over the modules below.
//! - [`session`]: what commands and the daemon share: backend choice, lock and recovery, status, approvals.
//! - [`project`]: a project folder: settings, manifests, playbooks, and choosing among them.
//! - [`manifest`]: the files a user writes, parsed with positions and resolved into valid types.
//! - [`plan`]: `compute(desired, observed, playbook) -> Plan`, pure; and its rendering.
//! - [`engine`]: the seam to the container platform: a core `Engine` (docker through bollard,
//!   kubernetes through kube-rs) and the capabilities a backend may add (service traffic, a shared
//!   lock, a run ledger); a scripted fake behind `cfg(test)` / the `test-support` feature.
//! - [`owner`]: who runs a process (`host:pid:start`) and whether it is still alive.
//! - [`testenv`]: test versions: isolated copies brought up in dependency order, torn down always.
//! - [`check`]: smoke checks (http, tcp, exec) from the host, with typed verdicts.
//! - [`gate`]: what must hold before production is touched (change windows).
//! - [`exec`]: the executor: rehearsals and promotions walking a playbook, with their reports.
//! - [`report`]: change documents of runs (Markdown, self-contained HTML, JSON), found by run id.
//! - [`proxy`]: the edge proxy: weighted routing, draining, stats, admin API.
//! - [`edge`]: the proxy of an environment as a container, and its admin client.
//! - [`daemon`]: the daemon's background loops: the GitOps controller and scheduled rehearsals.
//! - [`store`]: the embedded store (SQLite, WAL): revisions and runs.
//! - [`audit`]: the tamper-evident audit trail (`<state>/audit.log`, a hash chain anchored in the store).
//! - [`notify`]: webhook notifications, delivered in the background with retries.
//! - [`progress`]: live progress for people; [`run_id`]: run ids.
//! - [`daemon`]: `rollout daemon`: the HTTP API with tenants, metrics, the dashboard, child runs.
//! - [`demo`]: the demo client's images, built locally from busybox.

pub mod audit;
pub mod check;
pub mod cli;
pub mod cmd;
pub mod daemon;
pub mod demo;
pub mod edge;
pub mod engine;
pub mod exec;
pub mod gate;
pub mod manifest;
pub mod notify;
pub mod owner;
pub mod plan;
pub mod progress;
pub mod project;
pub mod prometheus;
pub mod proxy;
pub mod report;
pub mod run_id;
pub mod session;
pub mod store;
pub mod testenv;

use std::process::ExitCode;

use clap::Parser;

use cli::output::Printer;
use cli::{Cli, ExitStatus};

/// Parses the command line, runs the command, and turns the result into an exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let printer = Printer::detect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            printer.error(&anyhow::Error::new(e).context("cannot start the async runtime"));
            return ExitCode::from(ExitStatus::Failure.code());
        }
    };
    let status = match runtime.block_on(cmd::run(cli, printer)) {
        Ok(status) => status,
        Err(err) => {
            printer.error(&err);
            ExitStatus::Failure
        }
    };
    ExitCode::from(status.code())
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        // kube-client logs the failures it returns; rollout reports them once, with their causes.
        0 => "warn,kube_client=off",
        1 => "rollout=info",
        _ => "rollout=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
