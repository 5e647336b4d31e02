//! TCP checks: does the service accept connections on a published 127.0.0.1 port?
//!
//! Docker's userland proxy accepts every connection on a published port and closes it at once
//! when nothing listens on the container port, so a bare connect proves nothing. After
//! connecting, the check waits a moment: a connection closed or reset at once is a failure;
//! one that stays open (or greets us) passes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{Verdict, human};

/// How long a fresh connection must survive. Docker's proxy closes within a millisecond or two
/// of failing to reach the container; a real server keeps the connection for far longer.
const SETTLE: Duration = Duration::from_millis(150);

/// One attempt: connect to 127.0.0.1:`port` within `timeout`.
pub(super) async fn attempt(port: u16, timeout: Duration) -> Verdict {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = tokio::time::Instant::now();
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Verdict::fail(format!("no connection to {addr} within {}", human(timeout)));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Here refusal is the answer to the question asked, not a reason to abstain.
            return Verdict::fail(format!("connection refused on {addr}"));
        }
        Ok(Err(e)) => return Verdict::fail(format!("cannot connect to {addr}: {e}")),
        Ok(Ok(stream)) => stream,
    };
    let settle = SETTLE.min(timeout.saturating_sub(start.elapsed()));
    let mut byte = [0u8; 1];
    match tokio::time::timeout(settle, stream.read(&mut byte)).await {
        Err(_) => Verdict::pass(format!("{addr} accepts connections")),
        Ok(Ok(n)) if n > 0 => Verdict::pass(format!("{addr} accepts connections and speaks first")),
        Ok(Ok(_)) | Ok(Err(_)) => Verdict::fail(format!(
            "{addr} accepted the connection but closed it at once (nothing listens on the container port?)"
        )),
    }
}
