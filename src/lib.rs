//! rollout: staged rollouts for managed-service providers.
//!
//! It builds a test version of a client's environment, checks it, moves production to the new
//! version without dropping a request, and rolls back by itself when anything fails.
//!
//! # Layout
//!
//! The flow: the files a user writes are parsed and resolved ([`manifest`], [`project`]); the
//! engine reports what runs ([`engine`]); [`plan::compute`] compares the two (pure); the executor
//! ([`exec`]) walks the playbook's steps for the changes, journaling each before it acts through
//! the engine, the edge proxy and the checks; the store keeps the journal and history
//! ([`store`]); [`report`] renders the run for the client. The CLI ([`cmd`]) and the daemon
//! ([`daemon`]) are drivers of the same executor, through [`session`]. Drivers use the run, the
//! run uses the seams and state; there is no import cycle between these modules.
//!
//! Drivers:
//! - [`cli`]: clap types (data only), the printer, exit statuses.
//! - [`cmd`]: one file per command, thin drivers over the modules below.
//! - [`daemon`]: `rollout daemon`: the HTTP API with tenants, metrics, the dashboard, the GitOps
//!   controller and scheduled rehearsals (child runs of the CLI).
//! - [`session`]: what the commands and the daemon share: backend choice, lock and recovery of
//!   interrupted runs, status gathering, approval recording.
//!
//! The run:
//! - [`exec`]: the executor: one step loop ([`exec::walk`]) for rehearsals, promotions and
//!   rollbacks; a step per file; traffic moved behind one trait (edge proxy or Services); how a
//!   run ends decided in [`exec::settle`] (pure); recovery of interrupted runs from the journal.
//! - [`gate`]: what must hold before production is touched: change windows, third parties'
//!   authorizations, approvals (pure).
//! - [`testenv`]: test versions: isolated copies brought up in dependency order, torn down always.
//! - [`edge`]: the edge proxy of an environment as a container, found or started, and its admin
//!   client; [`proxy`]: the edge proxy itself: weighted routing, draining, stats, admin API.
//! - [`check`]: smoke checks (http, tcp, exec) and readiness waits, with typed verdicts.
//! - [`plan`]: `compute(desired, observed, playbook) -> Plan`, pure; and its rendering.
//! - [`report`]: a run's report data ([`report::run`]) and its change documents (Markdown,
//!   self-contained HTML, JSON), found by run id.
//! - [`audit`]: the tamper-evident audit trail (`<state>/audit.log`, a hash chain anchored in the
//!   store); [`notify`]: webhook notifications, delivered in the background with retries.
//!
//! Seams and state:
//! - [`engine`]: the seam to the container platform: a core `Engine` (docker through bollard,
//!   kubernetes through kube-rs) and the capabilities a backend may add (service traffic, a
//!   shared lock, a run ledger); a scripted fake behind `cfg(test)` / the `test-support` feature.
//! - [`store`]: the embedded store (SQLite, WAL): journal, revisions, runs, locks, gates.
//! - [`prometheus`]: the canary's figures from a Prometheus, where the platform has one.
//! - [`manifest`]: the files a user writes (manifests, playbooks, rollout.yaml, compose files),
//!   parsed with positions and resolved into types that cannot be invalid.
//! - [`project`]: a project folder: its settings, manifests and playbooks, and choosing among them.
//! - [`progress`]: live progress for people; [`owner`]: who runs a process and whether it is
//!   alive; [`run_id`]: run ids; [`demo`]: the demo client's images, built locally from busybox.

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
