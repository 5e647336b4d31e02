//! The proxy's HTTP/1.1 fast path on the wire: backends that frame their bodies every way
//! HTTP/1.1 allows (and some that break), written in small pieces so every head and body
//! arrives split; pipelined and byte-by-byte clients; bad input; the hand-over to hyper in the
//! middle of a connection; and draining. Raw sockets on 127.0.0.1 on both sides where the bytes
//! matter, the helpers of `proxy.rs` elsewhere.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rollout::proxy::{Protocol, Shutdown};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::proxy::{Conn, bounded, http_backend, name, proxy_routing};

/// A backend that answers each request with canned bytes picked by its path, written 7 bytes at
/// a time with a pause between, so that the proxy reads every head and body in pieces.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    /// The request heads it received, as sent by the proxy.
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the backend writes for `path`, and whether it closes the connection after.
fn script(path: &str) -> (&'static [u8], bool) {
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n\
              5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/length" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello world",
            false,
        ),
        "/early-hints" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/no-content" => (
            b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n",
            false,
        ),
        "/close" => (b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nuntil the close", true),
        "/http10" => (b"HTTP/1.0 200 OK\r\n\r\nten", true),
        "/garbage" => (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", true),
        "/cut" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
            true,
        ),
        "/bad-chunk" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
            true,
        ),
        // "/nothing" and anything else: closes without a word.
        _ => (b"", true),
    }
}

async fn scripted_backend() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (accepted.clone(), heads.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                s.set_nodelay(true).expect("nodelay");
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    seen.lock().expect("lock").push(head);
                    let (answer, close) = script(&path);
                    for piece in answer.chunks(7) {
                        if s.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        addr,
        accepted,
        heads,
        task,
    }
}

/// A raw client connection that reads responses itself.
struct Raw {
    r: BufReader<TcpStream>,
}

/// A response as read off the wire: status, head (lowercased), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Raw {
            r: BufReader::new(s),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.expect("write");
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.r.read_line(&mut line).await.expect("read");
        assert!(n > 0, "connection closed where a line was expected");
        line
    }

    /// Reads one response (to a HEAD when `head_method`).
    async fn answer(&mut self, head_method: bool) -> Answer {
        let mut head = String::new();
        loop {
            let line = self.line().await;
            let end = line == "\r\n";
            head.push_str(&line.to_ascii_lowercase());
            if end {
                break;
            }
        }
        let status: u16 = head[9..12].parse().expect("status");
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(|v| v.trim().to_string())
        };
        let mut body = Vec::new();
        if head_method || status == 204 || status == 304 {
        } else if header("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .expect("chunk size");
                if size == 0 {
                    while self.line().await != "\r\n" {}
                    break;
                }
                let mut data = vec![0u8; size + 2];
                self.r.read_exact(&mut data).await.expect("chunk");
                assert!(data.ends_with(b"\r\n"));
                body.extend_from_slice(&data[..size]);
            }
        } else if let Some(len) = header("content-length") {
            body = vec![0u8; len.parse().expect("length")];
            self.r.read_exact(&mut body).await.expect("body");
        } else {
            self.r
                .read_to_end(&mut body)
                .await
                .expect("body to the close");
        }
        Answer { status, head, body }
    }

    /// Whether the proxy closed the connection (cleanly: no byte, no reset) within a second.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.r.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_framing_reaches_the_client_whole() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let backend = scripted_backend().await;
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Http, &[("S", backend.addr, 100)]).await;

        let mut c = Raw::open(addr).await;
        for (path, status, body, kind) in [
            ("/chunked", 200, &b"hello world"[..], Some("chunked")),
            ("/length", 200, b"hello world", None),
            ("/early-hints", 200, b"ok", None),
            ("/no-content", 204, b"", Some("none")),
            // Delimited by the backend's close: the client gets it chunked, and keeps its
            // connection.
            ("/close", 200, b"until the close", Some("close")),
            ("/http10", 200, b"ten", None),
            ("/chunked", 200, b"hello world", Some("chunked")),
        ] {
            c.write(format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes())
                .await;
            let a = c.answer(false).await;
            assert_eq!((a.status, &a.body[..]), (status, body), "{path}: {a:?}");
            assert!(a.head.starts_with("http/1.1 "), "{path}: {}", a.head);
            assert_eq!(
                a.head.lines().find_map(|l| l.strip_prefix("x-kind: ")),
                kind,
                "{path}"
            );
            for hop in ["keep-alive:", "connection:", "trailer:"] {
                assert!(!a.head.contains(hop), "{path}: {}", a.head);
            }
        }
        // The first five shared one backend connection (the fifth's close ended it); /http10
        // closed its own.
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 3);
        let heads = backend.heads.lock().expect("lock").clone();
        assert!(
            heads[0].starts_with("GET /chunked HTTP/1.1\r\nHost: shop.test\r\n"),
            "{}",
            heads[0]
        );
        assert!(heads[0].contains("X-Forwarded-For: 127.0.0.1\r\n"));
        assert!(heads[0].contains("X-Forwarded-Proto: http\r\n"));

        // A backend that does not speak HTTP, or says nothing: 502, and the client's
        // connection goes on.
        for path in ["/garbage", "/nothing"] {
            c.write(format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes())
                .await;
            let a = c.answer(false).await;
            assert_eq!(a.status, 502, "{path}: {a:?}");
        }
        c.write(b"GET /length HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .await;
        assert_eq!(c.answer(false).await.body, b"hello world");

        // A body cut short, or chunked badly, after the head went out: the client's connection
        // is closed, so it cannot take the part for the whole.
        for path in ["/cut", "/bad-chunk"] {
            let mut c = Raw::open(addr).await;
            c.write(format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes())
                .await;
            let mut got = Vec::new();
            // Closed (cleanly or with a reset): the wait ends either way.
            let _ = tokio::time::timeout(Duration::from_secs(5), c.r.read_to_end(&mut got))
                .await
                .expect("closed");
            let got = String::from_utf8_lossy(&got);
            assert!(got.starts_with("HTTP/1.1 200"), "{path}: {got}");
        }
        let s = proxy.backend("S").expect("S");
        assert_eq!(s.connection_errors, 2, "{s:?}");
        assert_eq!(s.in_flight, 0);
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_byte_by_byte_requests_are_answered_in_order() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Http, &[("A", a.addr, 100)]).await;

        let mut c = Raw::open(addr).await;
        c.write(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              HEAD /three HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /status/500 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        let first = c.answer(false).await;
        assert_eq!((first.status, &first.body[..]), (200, &b"A 0"[..]));
        let second = c.answer(false).await;
        assert_eq!((second.status, &second.body[..]), (200, &b"A 5"[..]));
        let third = c.answer(true).await;
        assert_eq!(third.status, 200);
        assert!(third.head.contains("content-length: 3"), "{}", third.head);
        let fourth = c.answer(false).await;
        assert_eq!((fourth.status, &fourth.body[..]), (500, &b"A 0"[..]));

        // One byte per write, body included.
        let req = b"POST /slowly HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        for b in req {
            c.write(&[*b]).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let a5 = c.answer(false).await;
        assert_eq!((a5.status, &a5.body[..]), (200, &b"A 3"[..]));

        // The client asks to close: it is told so, and the connection ends cleanly.
        c.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        let last = c.answer(false).await;
        assert_eq!(last.status, 200);
        assert!(last.head.contains("connection: close"), "{}", last.head);
        assert!(c.closed().await);
        assert_eq!(a.served.load(Ordering::SeqCst), 6);
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_and_unusual_ones_go_to_hyper_mid_connection() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Http, &[("A", a.addr, 100)]).await;

        for bad in [
            &b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ] {
            let mut c = Raw::open(addr).await;
            c.write(bad).await;
            let a = c.answer(false).await;
            assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(bad));
        }

        // A chunked upload in the middle of a keep-alive connection: hyper takes over from it,
        // with the bytes already read, and serves what follows.
        let mut c = Raw::open(addr).await;
        c.write(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(c.answer(false).await.body, b"A 0");
        c.write(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert_eq!(c.answer(false).await.body, b"A 8");
        assert_eq!(c.answer(false).await.body, b"A 0");
        // A large body is streamed by hyper too.
        let big = vec![b'z'; 200_000];
        let mut req = format!(
            "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .into_bytes();
        req.extend_from_slice(&big);
        c.write(&req).await;
        assert_eq!(c.answer(false).await.body, b"A 200000");

        // A WebSocket handshake after a plain request on the same connection.
        let mut c = Raw::open(addr).await;
        c.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(c.answer(false).await.body, b"A 0");
        c.write(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            head.push_str(&c.line().await);
        }
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        c.write(b"ping").await;
        let mut echo = [0u8; 4];
        c.r.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"ping");
        drop(c);
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_idle_connections_at_once_and_busy_ones_after_their_answer() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Http, &[("A", a.addr, 100)]).await;

        let mut idle = Raw::open(addr).await;
        idle.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(idle.answer(false).await.status, 200);
        let mut busy = Conn::open(addr).await.expect("connect");
        let slow = tokio::spawn(async move {
            let r = busy.send("GET", "/slow", Bytes::new()).await;
            (r, busy)
        });
        // In flight once the backend has it (the first request's counter may still be
        // settling, so `inFlight` would not tell).
        for _ in 0..100 {
            if a.served.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(a.served.load(Ordering::SeqCst), 2);
        let started = tokio::time::Instant::now();
        let shutdown = tokio::spawn(proxy.shutdown());
        assert!(idle.closed().await, "the idle connection is closed cleanly");
        assert!(started.elapsed() < super::proxy::SLOW, "at once");
        let (r, mut busy) = slow.await.expect("task");
        let (status, body, _) = r.expect("the busy request finishes");
        assert_eq!((status, name(&body)), (200, "A"));
        assert!(
            busy.send("GET", "/", Bytes::new()).await.is_err(),
            "then its connection is closed"
        );
        assert_eq!(shutdown.await.expect("task"), Shutdown::Drained);
    })
    .await;
}
