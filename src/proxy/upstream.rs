//! One backend address as the proxy sees it: its pool of idle HTTP/1.1 connections, how to open
//! a new one, and the signal that closes long-lived connections once the address left the table
//! and its drain deadline passed.
//!
//! The pool is ours rather than hyper-util's legacy `Client` because the proxy must know whether
//! a request left the building: a connect failure or a dead pooled connection hands the request
//! back (hyper's `try_send_request`), so it can be retried on another backend with its body
//! untouched. The legacy client drops the request on a connect error.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The body the proxy sends upstream: the client's own, streamed, or nothing for a replayed
/// bodiless request.
pub type UpBody = Either<Incoming, Empty<Bytes>>;

/// A backend on the same Docker host answers a SYN in well under a millisecond; a connect that
/// takes longer than this is a backend that is gone (no route, dropped packets), and the request
/// is better off retried elsewhere.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections older than this are closed rather than reused: many servers close idle
/// keep-alive connections after 5 s (Node, Apache), and reusing one just as the backend closes
/// it is the classic source of spurious 502s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Idle connections kept per backend; more are closed on return.
const MAX_IDLE: usize = 1024;

struct Idle {
    sender: SendRequest<UpBody>,
    since: Instant,
}

pub struct Upstream {
    pub addr: SocketAddr,
    idle: Mutex<VecDeque<Idle>>,
    /// True once the address left the table: returned connections are closed, not pooled.
    retired: AtomicBool,
    /// Bumped on every retire/revive so a stale drain timer knows it lost.
    generation: AtomicU64,
    evict: CancellationToken,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            idle: Mutex::new(VecDeque::new()),
            retired: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            evict: CancellationToken::new(),
        }
    }

    /// A pooled connection that can take a request now. Most recently used first, so that under
    /// light load the older ones age out instead of all staying half-warm.
    pub fn checkout(&self) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // The oldest are at the front: drop the ones past their idle time.
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        // A connection whose last response just ended may not be marked ready yet (its task
        // runs on another thread); leave it for the next request rather than wait for it.
        loop {
            let i = idle
                .iter()
                .rposition(|c| c.sender.is_ready() || c.sender.is_closed())?;
            let c = idle.remove(i)?;
            if !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
    }

    /// Gives a connection back after its response ended.
    pub fn checkin(&self, sender: SendRequest<UpBody>) {
        if self.retired.load(Ordering::Relaxed) || sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// A new TCP connection, with Nagle off: the proxy writes whole heads and bodies and must
    /// not hold the last segment back waiting for an ACK.
    pub async fn connect_tcp(&self) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A new HTTP/1.1 connection, its I/O driven by a task of its own (with upgrades, so a
    /// WebSocket handshake can take the connection over).
    pub async fn connect_http(&self) -> std::io::Result<SendRequest<UpBody>> {
        let stream = self.connect_tcp().await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "backend connection ended");
            }
        });
        Ok(sender)
    }

    /// The address left the table: close idle connections now; in-flight requests finish and
    /// their connections close on return. Returns the generation a drain timer must match.
    pub fn retire(&self) -> u64 {
        self.retired.store(true, Ordering::Relaxed);
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The address came back before its drain deadline.
    pub fn revive(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.retired.store(false, Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The drain deadline of retirement `generation` passed: close its long-lived connections,
    /// unless the address was revived (or retired again) meanwhile. True if it closed them.
    pub fn evict_if(&self, generation: u64) -> bool {
        if self.is_retired() && self.generation.load(Ordering::Relaxed) == generation {
            self.evict.cancel();
            true
        } else {
            false
        }
    }

    /// Resolves when long-lived connections to this address must close.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.evict.cancelled()
    }
}
