//! `rollout proxy`: runs the edge proxy in the foreground until SIGTERM or SIGINT, then stops
//! accepting, lets in-flight requests finish up to `--drain`, and exits 0.
//!
//! Normally the promotion code starts it for you as a container; its one line of output says
//! where the admin API listens (useful with `--admin 127.0.0.1:0`), diagnostics go to `tracing`.

use anyhow::Context;

use crate::cli::output::Printer;
use crate::cli::{ExitStatus, ProxyArgs};
use crate::proxy::{Proxy, ProxyConfig, Shutdown};

pub async fn run(args: ProxyArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let ProxyArgs {
        admin,
        state,
        bind,
        drain,
    } = args;
    let admin = tokio::net::lookup_host(&admin)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| format!("--admin `{admin}` is not an address such as 127.0.0.1:7481"))?;
    let drain =
        crate::manifest::duration::parse(&drain).map_err(|e| anyhow::anyhow!("--drain: {e}"))?;
    // Subscribe before starting, so a signal during start-up is not lost.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut config = ProxyConfig::new(admin, state);
    config.bind = bind;
    config.shutdown_drain = drain;
    let handle = Proxy::start(config)
        .await
        .context("the proxy could not start")?;
    printer.out(&format!("proxy admin API on {}", handle.admin_addr()));
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    match handle.shutdown().await {
        Shutdown::Drained => {}
        Shutdown::Forced { open } => {
            tracing::warn!(open, "drain time over; cut the connections still open")
        }
    }
    Ok(ExitStatus::Success)
}
