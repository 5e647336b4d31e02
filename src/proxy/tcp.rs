//! TCP listeners: each accepted connection goes to a backend picked by weight and bytes are
//! copied both ways until either side closes.
//!
//! A connection keeps its backend for life, so switching moves only new connections. One whose
//! backend leaves the table is closed when the update's drain time is over (`drainMs`), since a
//! raw byte stream has no request boundary to wait for. A backend that refuses the connection
//! gets the same one retry on another backend as an HTTP request (no byte was read from the
//! client yet, so nothing is lost).

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::ListenerCtx;
use super::stats::InFlight;
use super::table::Route;

pub(crate) async fn serve(listener: TcpListener, ctx: ListenerCtx) {
    let failed = |e: &std::io::Error| tracing::warn!(port = ctx.port, error = %e, "accept failed");
    while let Some((stream, peer)) = super::accept(&listener, &ctx.stop, failed).await {
        let _ = stream.set_nodelay(true);
        let route = ctx.slot.current();
        let kill = ctx.kill.clone();
        let port = ctx.port;
        ctx.tracker.spawn(async move {
            if let Err(e) = forward(stream, &route, &kill).await {
                tracing::debug!(port, %peer, error = %e, "TCP connection ended");
            }
        });
    }
    tracing::debug!(port = ctx.port, "TCP listener stopped accepting");
}

async fn forward(
    mut client: TcpStream,
    route: &Arc<Route>,
    kill: &tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let (n, first) = route.next();
    let Some(mut idx) = first else {
        // No backend: close at once, so the client sees a reset rather than a hang.
        return Ok(());
    };
    let mut retried = false;
    let (target, mut backend) = loop {
        let target = &route.targets[idx];
        target.stats.attempt();
        let started = std::time::Instant::now();
        match target.upstream.connect_tcp().await {
            Ok(s) => {
                // Counted as a 2xx with its connect time, so canary analysis reads TCP ports
                // the same way: refused connections are the errors.
                target.stats.response(200, started.elapsed());
                break (target, s);
            }
            Err(e) => {
                target.stats.connection_error();
                let Some(alt) = route.retry(idx, n, &mut retried) else {
                    return Err(e);
                };
                tracing::info!(backend = %target.id, retry = %route.targets[alt].id, error = %e, "backend unreachable, retrying on another");
                idx = alt;
            }
        }
    };
    let _in_flight = InFlight::enter(&target.stats);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => r.map(|_| ()),
        _ = target.upstream.evicted() => {
            tracing::info!(backend = %target.id, "closing a TCP connection: its backend left the table and the drain time is over");
            Ok(())
        }
        _ = kill.cancelled() => Ok(()),
    }
}
