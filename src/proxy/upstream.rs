//! One backend address as the proxy sees it: its pool of idle HTTP/1.1 connections, how to open
//! a new one, and the signal that closes long-lived connections once the address left the table
//! and its drain deadline passed.
//!
//! Two pools: hyper connections for requests hyper serves (HTTP/2 clients, upgrades, streamed
//! uploads), plain sockets for the HTTP/1.1 fast path (`fast.rs`).
//!
//! The pool is ours rather than hyper-util's legacy `Client` because the proxy must know whether
//! a request left the building: a connect failure or a dead pooled connection hands the request
//! back (hyper's `try_send_request`), so it can be retried on another backend with its body
//! untouched. The legacy client drops the request on a connect error.
//!
//! A pooled connection has no task of its own: the request that checks it out drives its I/O
//! ([`UpConn::drive`]) while it waits for the response and while the response body streams, in
//! the task of the client connection. That saves two task wake-ups per request compared with
//! a spawned connection task (and the cross-thread hand-offs they cause), which is most of the
//! proxy's own overhead next to the system calls. Only upgrades (WebSocket) get a spawned
//! connection, since their tunnel outlives the request.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::{Request, Response};
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

/// An HTTP/1.1 connection to a backend, driven by whoever holds it.
pub struct UpConn {
    sender: SendRequest<UpBody>,
    conn: Connection<TokioIo<TcpStream>, UpBody>,
    /// The connection future completed (closed, or broken): never use it again.
    finished: bool,
}

impl UpConn {
    /// Moves the connection's I/O along (writes the request, reads the response into the body
    /// channel, notices a close), registering this task for its readiness.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if self.finished {
            return;
        }
        if let Poll::Ready(r) = Pin::new(&mut self.conn).poll_without_shutdown(cx) {
            self.finished = true;
            if let Err(e) = r {
                tracing::debug!(error = %e, "backend connection ended");
            }
        }
    }

    pub fn alive(&self) -> bool {
        !self.finished && !self.sender.is_closed()
    }

    /// Sends `req` and drives the connection until the response head arrives. On an error the
    /// request comes back if it was not written.
    pub async fn send(
        &mut self,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpBody>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        std::future::poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Whether it can take a request now, after a first look at its socket.
    async fn usable(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            Poll::Ready(self.alive() && self.sender.is_ready())
        })
        .await
    }
}

/// Idle connections of one kind, the oldest at the front.
struct Pool<C>(Mutex<VecDeque<Idle<C>>>);

struct Idle<C> {
    conn: C,
    since: Instant,
}

impl<C> Pool<C> {
    fn new() -> Self {
        Pool(Mutex::new(VecDeque::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle<C>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned connection that is not past its idle time, and how long it was
    /// idle. Most recently used first, so that under light load the older ones age out instead
    /// of all staying warm.
    fn take(&self, now: Instant) -> Option<(C, Duration)> {
        let mut idle = self.lock();
        // The oldest are at the front: drop the ones past their idle time.
        while idle
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        let Idle { conn, since } = idle.pop_back()?;
        Some((conn, now.saturating_duration_since(since)))
    }

    /// Keeps `conn` for reuse, unless the pool is full (then it is closed).
    fn put(&self, conn: C) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// A plain keep-alive connection for the HTTP/1.1 fast path (`fast.rs`), with the bytes read
/// from it and not yet used.
pub struct RawConn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl RawConn {
    /// Read capacity of a backend connection's buffer: one read takes a small response whole.
    pub const BUF: usize = 16 * 1024;

    /// Whether a pooled connection can take a request: nothing arrived on it while idle (a close
    /// by the backend, or bytes no request asked for). Costs no system call when the reactor saw
    /// no readiness since the last read.
    fn usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    idle: Pool<Box<UpConn>>,
    idle_raw: Pool<RawConn>,
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
            idle: Pool::new(),
            idle_raw: Pool::new(),
            retired: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            evict: CancellationToken::new(),
        }
    }

    /// A pooled connection that can take a request now, and how long it was idle.
    pub async fn checkout(&self, now: Instant) -> Option<(Box<UpConn>, Duration)> {
        loop {
            let (mut conn, idle_for) = self.idle.take(now)?;
            // Nobody polled it while idle: this is where a close by the backend shows.
            if conn.usable().await {
                return Some((conn, idle_for));
            }
        }
    }

    /// Gives a connection back after its response ended.
    pub fn checkin(&self, conn: Box<UpConn>) {
        if self.retired.load(Ordering::Relaxed) || !conn.alive() {
            return;
        }
        self.idle.put(conn);
    }

    /// A pooled fast-path connection that can take a request now, and how long it was idle.
    pub fn checkout_raw(&self, now: Instant) -> Option<(RawConn, Duration)> {
        while let Some((mut conn, idle_for)) = self.idle_raw.take(now) {
            if conn.usable() {
                return Some((conn, idle_for));
            }
        }
        None
    }

    /// Gives a fast-path connection back after a whole response was read from it, and nothing
    /// more.
    pub fn checkin_raw(&self, conn: RawConn) {
        if self.retired.load(Ordering::Relaxed) || !conn.buf.is_empty() {
            return;
        }
        self.idle_raw.put(conn);
    }

    /// A new fast-path connection.
    pub async fn connect_raw(&self) -> std::io::Result<RawConn> {
        Ok(RawConn {
            stream: self.connect_tcp().await?,
            buf: Vec::with_capacity(RawConn::BUF),
        })
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

    /// A new TCP connection with hyper's HTTP/1.1 client handshake done on it.
    async fn handshake(
        &self,
    ) -> std::io::Result<(SendRequest<UpBody>, Connection<TokioIo<TcpStream>, UpBody>)> {
        let stream = self.connect_tcp().await?;
        hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)
    }

    /// A new HTTP/1.1 connection, to be driven by the request that uses it. Boxed: it holds
    /// hyper's buffers and moves between the pool and requests many times.
    pub async fn connect_http(&self) -> std::io::Result<Box<UpConn>> {
        let (sender, conn) = self.handshake().await?;
        Ok(Box::new(UpConn {
            sender,
            conn,
            finished: false,
        }))
    }

    /// A new HTTP/1.1 connection driven by a task of its own, with upgrades, so a WebSocket
    /// handshake can take the connection over and outlive the request.
    pub async fn connect_upgradable(&self) -> std::io::Result<SendRequest<UpBody>> {
        let (sender, conn) = self.handshake().await?;
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
        self.idle.clear();
        self.idle_raw.clear();
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
