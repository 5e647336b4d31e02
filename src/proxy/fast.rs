//! The HTTP/1.1 fast path: a client connection's plain requests are parsed here (`h1`) and
//! forwarded on pooled plain sockets, with no hyper machinery, no extra task and no channel in
//! between: one task per client connection reads a head, writes it (with its body, read whole)
//! to a backend in one system call, reads the response head and copies the body through.
//!
//! Everything else (see `h1`) is handed to hyper at a request boundary, with the bytes already
//! read: hyper then serves the rest of the connection exactly as it served all of it before.
//!
//! It keeps the promises of `http.rs`: a request finishes on the backend its route picked; one
//! that provably did not reach its backend (connect failure, a pooled connection found closed,
//! a write that failed) goes once to the route's fallback, with its body, which is why bodies
//! are read whole first (up to [`h1::MAX_BUFFERED_BODY`]); an idempotent bodiless request
//! written to a connection that then closed without an answer is sent again once, on the same
//! terms as there. The same counters are kept (attempt, in flight until the body is through,
//! status class and latency to the response head, connection errors). A stopped listener
//! closes idle connections at once and the others after their current response.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ListenerCtx;
use super::h1::{self, Framing, RequestHead, ResponseHead};
use super::http::STALE_AFTER;
use super::stats::InFlight;
use super::upstream::{RawConn, Upstream};

/// A client that does not complete a request head within this long (and no more than twice
/// it) is closed, idle keep-alive connections included, like hyper's header read timeout.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Read capacity of a client connection's buffer.
const CLIENT_BUF: usize = 16 * 1024;

/// How the fast path left a client connection.
pub(crate) enum End {
    /// Done with: closed by either side, drained, or broken.
    Closed,
    /// Hyper serves the rest; these bytes were read from the client and not used yet.
    HandOff(Vec<u8>),
}

/// Serves `stream` until it closes or holds something for hyper. `client` is the client's
/// address for `X-Forwarded-For`.
pub(crate) async fn serve(stream: &mut TcpStream, ctx: &ListenerCtx, client: &str) -> End {
    let mut buf: Vec<u8> = Vec::with_capacity(CLIENT_BUF);
    // The request as the backend gets it, then the head the client gets.
    let mut req = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    let stopped = ctx.stop.cancelled();
    tokio::pin!(stopped);
    // One timer per connection, not per request: when it rings, a connection that finished no
    // request since the last ring and is waiting for a head is closed.
    let tick = tokio::time::sleep(HEAD_TIMEOUT);
    tokio::pin!(tick);
    let mut served: u64 = 0;
    let mut served_at_tick: u64 = 0;

    loop {
        let head = loop {
            if !buf.is_empty() {
                match h1::parse_request(&buf, client, &mut req) {
                    h1::Request::Partial => {}
                    h1::Request::Forward(head) => break head,
                    h1::Request::HandOff => return End::HandOff(buf),
                }
            } else if ctx.stop.is_cancelled() {
                return End::Closed;
            }
            reserve(&mut buf, CLIENT_BUF);
            let idle = buf.is_empty();
            let n = tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => r,
                _ = &mut stopped, if idle => return End::Closed,
                _ = &mut tick => {
                    if served == served_at_tick {
                        tracing::debug!("closing a client connection that sent no request head in time");
                        return End::Closed;
                    }
                    served_at_tick = served;
                    tick.as_mut().reset(tokio::time::Instant::now() + HEAD_TIMEOUT);
                    continue;
                }
            };
            match n {
                Ok(0) | Err(_) => return End::Closed,
                Ok(_) => {}
            }
        };

        // The body, whole (it is small: larger ones went to hyper).
        let total = head.head_len + head.body_len as usize;
        while buf.len() < total {
            let missing = total - buf.len();
            reserve(&mut buf, missing);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return End::Closed,
                Ok(_) => {}
            }
        }
        req.extend_from_slice(&buf[head.head_len..total]);

        let close = head.close || ctx.stop.is_cancelled();
        let kept = forward(stream, ctx, &head, close, &req, &mut out).await;
        served += 1;
        if !kept || close {
            return End::Closed;
        }
        if buf.len() == total {
            buf.clear();
        } else {
            // Pipelined: the next request is already here.
            buf.drain(..total);
        }
    }
}

fn reserve(buf: &mut Vec<u8>, want: usize) {
    if buf.capacity() - buf.len() < want.min(1024) {
        buf.reserve(want.max(CLIENT_BUF));
    }
}

/// Forwards one request (`req`: head and body as the backend gets them) and relays the answer.
/// Returns whether the client connection can take another request.
async fn forward(
    client: &mut TcpStream,
    ctx: &ListenerCtx,
    head: &RequestHead,
    close: bool,
    req: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let route = ctx.slot.current();
    let (n, first) = route.next();
    let Some(mut idx) = first else {
        h1::message(
            out,
            "503 Service Unavailable",
            "no backend is serving this port\n",
            close,
        );
        return client.write_all(out).await.is_ok();
    };
    let mut retried = false;
    loop {
        let target = &route.targets[idx];
        target.stats.attempt();
        let in_flight = InFlight::enter(&target.stats);
        let started = Instant::now();
        match exchange(&target.upstream, req, head, close, started, out).await {
            Ok((mut conn, resp)) => {
                target.stats.response(resp.status, started.elapsed());
                let relayed = relay(client, &mut conn, &resp, out).await;
                drop(in_flight);
                return match relayed {
                    Ok(clean) => {
                        if clean && resp.keep_alive {
                            target.upstream.checkin_raw(conn);
                        }
                        true
                    }
                    Err(Cut::Backend(error)) => {
                        tracing::warn!(port = ctx.port, backend = %target.id, %error, "backend broke off a response; closing the client connection");
                        false
                    }
                    Err(Cut::Client) => false,
                };
            }
            Err(failure) => {
                target.stats.connection_error();
                drop(in_flight);
                match failure {
                    Failure::NotSent(error) => {
                        let Some(alt) = route.retry(idx, n, &mut retried) else {
                            tracing::warn!(port = ctx.port, backend = %target.id, %error, "backend unreachable, no other backend to retry on");
                            return bad_gateway(client, out, close).await;
                        };
                        tracing::info!(port = ctx.port, backend = %target.id, retry = %route.targets[alt].id, %error, "backend unreachable, retrying on another");
                        idx = alt;
                    }
                    Failure::Sent(error) => {
                        tracing::warn!(port = ctx.port, backend = %target.id, %error, "backend failed the request");
                        return bad_gateway(client, out, close).await;
                    }
                }
            }
        }
    }
}

async fn bad_gateway(client: &mut TcpStream, out: &mut Vec<u8>, close: bool) -> bool {
    h1::message(
        out,
        "502 Bad Gateway",
        "the backend did not answer\n",
        close,
    );
    client.write_all(out).await.is_ok()
}

/// Why an attempt failed, and whether the request can still go elsewhere.
enum Failure {
    /// The backend cannot have acted on the request.
    NotSent(std::io::Error),
    /// It may have.
    Sent(std::io::Error),
}

/// How one send on one connection went wrong.
enum Attempt {
    /// The request was not written whole: no server acts on part of a request.
    NotWritten(std::io::Error),
    /// Written, then the connection closed (or reset) with no byte of answer.
    NoAnswer(std::io::Error),
    /// An answer began and broke, or is not HTTP.
    Broken(std::io::Error),
}

/// Sends the request on a pooled connection of `up`, else on a new one, and reads the response
/// head; the head the client gets is in `out`, the connection's buffer starts with the head
/// read from the backend.
async fn exchange(
    up: &Upstream,
    req: &[u8],
    head: &RequestHead,
    close: bool,
    now: Instant,
    out: &mut Vec<u8>,
) -> Result<(RawConn, ResponseHead), Failure> {
    let mut replayed = false;
    while let Some((mut conn, idle)) = up.checkout_raw(now) {
        match send(&mut conn, req, head.head_method, close, out).await {
            Ok(resp) => return Ok((conn, resp)),
            // The pooled connection was already dead: try the next.
            Err(Attempt::NotWritten(_)) => {}
            // Written on a connection the backend was closing, with no answer.
            Err(Attempt::NoAnswer(error)) if head.replayable && idle >= STALE_AFTER => {
                tracing::debug!(addr = %up.addr, %error, "pooled connection broke, sending again");
                replayed = true;
                break;
            }
            Err(Attempt::NoAnswer(e) | Attempt::Broken(e)) => return Err(Failure::Sent(e)),
        }
    }
    let mut conn = up.connect_raw().await.map_err(Failure::NotSent)?;
    match send(&mut conn, req, head.head_method, close, out).await {
        Ok(resp) => Ok((conn, resp)),
        Err(Attempt::NotWritten(e)) => Err(Failure::NotSent(e)),
        // A backend going away accepts, then resets: elsewhere, if it may be sent twice.
        Err(Attempt::NoAnswer(e)) if head.replayable && !replayed => Err(Failure::NotSent(e)),
        Err(Attempt::NoAnswer(e) | Attempt::Broken(e)) => Err(Failure::Sent(e)),
    }
}

/// Writes `req` on `conn` and reads up to the final response head.
async fn send(
    conn: &mut RawConn,
    req: &[u8],
    head_method: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Attempt> {
    conn.stream
        .write_all(req)
        .await
        .map_err(Attempt::NotWritten)?;
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            match h1::parse_response(&conn.buf, head_method, close, out) {
                h1::Response::Partial => {}
                h1::Response::Interim(n) => {
                    conn.buf.drain(..n);
                    continue;
                }
                h1::Response::Final(resp) => return Ok(resp),
                h1::Response::Invalid => {
                    return Err(Attempt::Broken(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the backend's response head is not valid HTTP/1.1",
                    )));
                }
            }
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(RawConn::BUF);
        }
        let read = conn.stream.read_buf(&mut conn.buf).await;
        let error = match read {
            Ok(0) => std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the backend closed the connection",
            ),
            Ok(_) => continue,
            Err(e) => e,
        };
        return Err(if answered {
            Attempt::Broken(error)
        } else {
            Attempt::NoAnswer(error)
        });
    }
}

/// Why a response could not be relayed to its end.
enum Cut {
    Backend(std::io::Error),
    Client,
}

/// Writes the response head in `out` and copies the body from `conn` (whose buffer starts with
/// the backend's head) to the client. `Ok(true)`: the body ended exactly where the backend's
/// framing said, with nothing after it, so the connection can be pooled.
async fn relay(
    client: &mut TcpStream,
    conn: &mut RawConn,
    resp: &ResponseHead,
    out: &mut Vec<u8>,
) -> Result<bool, Cut> {
    let early = &conn.buf[resp.head_len..];
    match resp.framing {
        Framing::Empty => {
            let clean = early.is_empty();
            client.write_all(out).await.map_err(|_| Cut::Client)?;
            conn.buf.clear();
            Ok(clean)
        }
        Framing::Length(n) => {
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(early.len());
            out.extend_from_slice(&early[..take]);
            let mut clean = take == early.len();
            let mut left = n - take as u64;
            // The head and what came with it in one write.
            client.write_all(out).await.map_err(|_| Cut::Client)?;
            while left > 0 {
                let got = read_more(conn).await?;
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(got);
                client
                    .write_all(&conn.buf[..take])
                    .await
                    .map_err(|_| Cut::Client)?;
                clean = take == got;
                left -= take as u64;
            }
            conn.buf.clear();
            Ok(clean)
        }
        Framing::Chunked => {
            let mut chunked = h1::Chunked::default();
            let used = chunked.advance(early).map_err(chunk_error)?;
            out.extend_from_slice(&early[..used]);
            let mut clean = used == early.len();
            let mut done = chunked.is_done();
            client.write_all(out).await.map_err(|_| Cut::Client)?;
            while !done {
                let got = read_more(conn).await?;
                let used = chunked.advance(&conn.buf[..got]).map_err(chunk_error)?;
                client
                    .write_all(&conn.buf[..used])
                    .await
                    .map_err(|_| Cut::Client)?;
                clean = used == got;
                done = chunked.is_done();
            }
            conn.buf.clear();
            Ok(clean)
        }
        Framing::UntilClose => {
            if !early.is_empty() {
                h1::push_chunk(out, early);
            }
            client.write_all(out).await.map_err(|_| Cut::Client)?;
            let mut chunk = Vec::new();
            loop {
                conn.buf.clear();
                if conn.buf.capacity() < RawConn::BUF {
                    conn.buf.reserve(RawConn::BUF);
                }
                match conn.stream.read_buf(&mut conn.buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(Cut::Backend(e)),
                }
                chunk.clear();
                h1::push_chunk(&mut chunk, &conn.buf);
                client.write_all(&chunk).await.map_err(|_| Cut::Client)?;
            }
            client
                .write_all(b"0\r\n\r\n")
                .await
                .map_err(|_| Cut::Client)?;
            conn.buf.clear();
            // The backend closed it: never pooled.
            Ok(false)
        }
    }
}

/// Reads the next bytes of a body into `conn`'s (emptied) buffer; a close here is a cut.
async fn read_more(conn: &mut RawConn) -> Result<usize, Cut> {
    conn.buf.clear();
    if conn.buf.capacity() < RawConn::BUF {
        conn.buf.reserve(RawConn::BUF);
    }
    match conn.stream.read_buf(&mut conn.buf).await {
        Ok(0) => Err(Cut::Backend(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the backend closed the connection inside a response body",
        ))),
        Ok(n) => Ok(n),
        Err(e) => Err(Cut::Backend(e)),
    }
}

fn chunk_error(e: h1::ChunkError) -> Cut {
    Cut::Backend(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A client connection handed to hyper with the bytes the fast path already read from it, which
/// hyper reads first.
pub(crate) struct Prefixed {
    read: Vec<u8>,
    pos: usize,
    stream: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(read: Vec<u8>, stream: TcpStream) -> Prefixed {
        Prefixed {
            read,
            pos: 0,
            stream,
        }
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.pos);
            buf.put_slice(&this.read[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.read.len() {
                this.read = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
