//! `rollout daemon [--listen ADDR]`: serves the HTTP API, metrics and dashboard for the project
//! (see `crate::daemon`) until SIGTERM or SIGINT, then shuts down gracefully and exits 0.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{DaemonArgs, ExitStatus};
use crate::daemon::{self, Daemon};

pub async fn run(dir: &Path, args: DaemonArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let DaemonArgs { listen } = args;
    let bin =
        std::env::current_exe().context("cannot find the rollout binary to start runs with")?;
    let lookup = |var: &str| std::env::var(var).ok();
    let d = Daemon::open(dir, bin, &lookup).await?;
    let addr = d.listen(listen.as_deref())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    printer.out(&format!(
        "rollout daemon on http://{local}/ (API /api/v1, metrics /metrics); SIGTERM or Ctrl-C stops it"
    ));
    let d = Arc::new(d);
    let watched = d.clone();
    // The first signal drains (see `daemon::serve`); a second one ends the runs at once, as a
    // second Ctrl-C by hand would (the journal leaves them to the next command), and the daemon
    // exits 130 without waiting. They are killed rather than sent SIGTERM again: the draining
    // may not have forwarded the first signal yet, and one SIGTERM only asks for a safe point.
    let stop = async move {
        daemon::signal().await;
        tokio::spawn(async move {
            daemon::signal().await;
            tracing::warn!("second signal: ending the runs and exiting at once");
            watched.runs.kill_all().await;
            std::process::exit(130);
        });
    };
    daemon::serve(d, listener, stop).await?;
    printer.out("rollout daemon stopped");
    Ok(ExitStatus::Success)
}
