//! The edge proxy, in process and as `rollout proxy`: weighted routing, zero dropped requests
//! across switches under load, the retry safety net, draining, upgrades, TCP, persistence and
//! counters. Backends are small hyper servers in this process that answer with their own name;
//! all traffic stays on 127.0.0.1, and every test is bounded by a timeout.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rollout::proxy::{
    AdminClient, AdminError, Backend, Drain, Listener, Protocol, Proxy, ProxyConfig, ProxyHandle,
    Routes, Shutdown, Weight, Window,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(90);
pub(crate) const SLOW: Duration = Duration::from_millis(500);
pub(crate) const PORT: u16 = 18080;

pub(crate) async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test took too long")
}

/// An HTTP backend answering `<name> <request body length>`; `/slow` waits 500 ms first,
/// `/status/500` answers 500, an `Upgrade` request gets 101 and its bytes echoed back.
pub(crate) struct HttpBackend {
    pub(crate) addr: SocketAddr,
    pub(crate) served: Arc<AtomicU64>,
    /// Connections open on it now (the proxy's pooled ones included).
    pub(crate) open: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn http_backend(name: &'static str) -> HttpBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicI64::new(0));
    let counter = served.clone();
    let opened = open.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            let opened = opened.clone();
            opened.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(name, counter.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
                opened.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    HttpBackend {
        addr,
        served,
        open,
        task,
    }
}

async fn answer(
    name: &'static str,
    served: Arc<AtomicU64>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    served.fetch_add(1, Ordering::SeqCst);
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("x-backend", name)
            .body(Full::new(Bytes::new()))
            .expect("response");
        return Ok(resp);
    }
    let path = req.uri().path().to_string();
    if path == "/slow" {
        tokio::time::sleep(SLOW).await;
    }
    let len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => usize::MAX,
    };
    let status = if path == "/status/500" { 500 } else { 200 };
    let resp = Response::builder()
        .status(status)
        .header("x-seen-forwarded-for", xff)
        .body(Full::new(Bytes::from(format!("{name} {len}"))))
        .expect("response");
    Ok(resp)
}

/// A TCP backend that greets with its name and a newline, then echoes.
async fn tcp_backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

pub(crate) async fn start_proxy(state: &std::path::Path) -> ProxyHandle {
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"), state.to_path_buf());
    config.bind = "127.0.0.1".parse().expect("ip");
    config.ephemeral_ports = true;
    config.shutdown_drain = Duration::from_secs(5);
    Proxy::start(config).await.expect("proxy starts")
}

/// A proxy whose listener [`PORT`] routes to `backends`, and that listener's address.
pub(crate) async fn proxy_routing(
    state: &std::path::Path,
    protocol: Protocol,
    backends: &[(&str, SocketAddr, u8)],
) -> (ProxyHandle, SocketAddr) {
    let proxy = start_proxy(state).await;
    proxy
        .update(table(protocol, backends))
        .await
        .expect("update");
    let addr = proxy.listener_addr(PORT).expect("listening");
    (proxy, addr)
}

pub(crate) fn table(protocol: Protocol, backends: &[(&str, SocketAddr, u8)]) -> Routes {
    let mut routes = Routes::default();
    routes.listeners.insert(
        PORT,
        Listener {
            protocol,
            backends: backends
                .iter()
                .map(|(id, addr, w)| Backend {
                    id: id.to_string(),
                    addr: *addr,
                    weight: Weight::new(*w).expect("weight"),
                })
                .collect(),
        },
    );
    routes
}

/// A keep-alive HTTP/1.1 client connection.
pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// Status, body, and the `x-seen-forwarded-for` the backend reported.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, String, String), String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("not ready: {e}"))?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "shop.test")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let xff = resp
            .headers()
            .get("x-seen-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {path} body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned(), xff))
    }
}

/// One request on a fresh connection.
pub(crate) async fn once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, String), String> {
    let mut c = Conn::open(addr).await?;
    c.send(method, path, body).await.map(|(s, b, _)| (s, b))
}

pub(crate) fn name(body: &str) -> &str {
    body.split(' ').next().unwrap_or("")
}

async fn count_names(addr: SocketAddr, n: usize) -> (usize, usize) {
    let mut c = Conn::open(addr).await.expect("connect");
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let (status, body, _) = c.send("GET", "/", Bytes::new()).await.expect("request");
        assert_eq!(status, 200, "{body}");
        match name(&body) {
            "A" => a += 1,
            "B" => b += 1,
            other => panic!("unexpected backend {other}"),
        }
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_decide_where_requests_go() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let (a, b) = (http_backend("A").await, http_backend("B").await);
        let (proxy, addr) = proxy_routing(
            state.path(),
            Protocol::Http,
            &[("A", a.addr, 100), ("B", b.addr, 0)],
        )
        .await;
        assert_eq!(count_names(addr, 20).await, (20, 0));

        proxy
            .update(table(
                Protocol::Http,
                &[("A", a.addr, 0), ("B", b.addr, 100)],
            ))
            .await
            .expect("update");
        assert_eq!(count_names(addr, 20).await, (0, 20));

        proxy
            .update(table(
                Protocol::Http,
                &[("A", a.addr, 90), ("B", b.addr, 10)],
            ))
            .await
            .expect("update");
        assert_eq!(count_names(addr, 100).await, (90, 10), "exactly 1 in 10");

        // The backend sees who the client was.
        let mut c = Conn::open(addr).await.expect("connect");
        let (_, _, xff) = c.send("GET", "/", Bytes::new()).await.expect("request");
        assert_eq!(xff, "127.0.0.1");

        // No weight anywhere: 503, not a hang and not a pick of a weight-0 backend.
        proxy
            .update(table(Protocol::Http, &[("A", a.addr, 0), ("B", b.addr, 0)]))
            .await
            .expect("update");
        let (status, _) = once(addr, "GET", "/", Bytes::new()).await.expect("answer");
        assert_eq!(status, 503);
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    slow_across_switch: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, r: Result<(u16, String), String>, expect_len: usize) {
        match r {
            Ok((200, body))
                if matches!(name(&body), "A" | "B")
                    && body.ends_with(&format!(" {expect_len}")) =>
            {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, body)) => self.fail(format!("{what}: {status} {body}")),
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }

    fn fail(&self, text: String) {
        self.failures.lock().expect("lock").push(text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_is_dropped_across_fifty_switches() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let (a, b) = (http_backend("A").await, http_backend("B").await);
        let proxy = start_proxy(state.path()).await;
        let admin = proxy.admin();
        admin
            .put_routes(&table(
                Protocol::Http,
                &[("A", a.addr, 100), ("B", b.addr, 0)],
            ))
            .await
            .expect("routes");
        let addr = proxy.listener_addr(PORT).expect("listening");
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut tasks = Vec::new();

        // Keep-alive clients, GET and POST: on an error they note it and reconnect.
        for (method, body) in [
            ("GET", Bytes::new()),
            ("POST", big.clone()),
            ("GET", Bytes::new()),
        ] {
            let (tally, stop) = (tally.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = None;
                while !stop.load(Ordering::SeqCst) {
                    let c = match conn.take() {
                        Some(c) => c,
                        None => match Conn::open(addr).await {
                            Ok(c) => c,
                            Err(e) => {
                                tally.sent.fetch_add(1, Ordering::SeqCst);
                                tally.fail(format!("keep-alive connect: {e}"));
                                continue;
                            }
                        },
                    };
                    let mut c = c;
                    tally.sent.fetch_add(1, Ordering::SeqCst);
                    let r = c.send(method, "/", body.clone()).await;
                    let ok = r.is_ok();
                    tally.record("keep-alive", r.map(|(s, b, _)| (s, b)), body.len());
                    if ok {
                        conn = Some(c);
                    }
                }
            }));
        }
        // Fresh connection per request, GET and POST.
        for (method, body) in [
            ("GET", Bytes::new()),
            ("POST", Bytes::from_static(b"order=42")),
        ] {
            let (tally, stop) = (tally.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    tally.sent.fetch_add(1, Ordering::SeqCst);
                    let r = once(addr, method, "/", body.clone()).await;
                    tally.record("fresh", r, body.len());
                }
            }));
        }
        // Slow requests, each in flight across several switches.
        for _ in 0..3 {
            let (tally, stop) = (tally.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    tally.sent.fetch_add(1, Ordering::SeqCst);
                    let r = once(addr, "GET", "/slow", Bytes::new()).await;
                    if r.is_ok() {
                        tally.slow_across_switch.fetch_add(1, Ordering::SeqCst);
                    }
                    tally.record("slow", r, 0);
                }
            }));
        }

        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..50 {
            let to_b = i % 2 == 0;
            // Every fifth switch removes the old backend from the table altogether (and the next
            // one adds it back), so retiring and reviving a pool is under load too.
            let remove_old = i % 5 == 4;
            let (wa, wb) = if to_b { (0, 100) } else { (100, 0) };
            let mut backends = vec![("A", a.addr, wa), ("B", b.addr, wb)];
            if remove_old {
                backends.retain(|(_, _, w)| *w > 0);
            }
            admin
                .put_routes(&table(Protocol::Http, &backends))
                .await
                .expect("switch");
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("client task");
        }
        let failures = tally.failures.lock().expect("lock").clone();
        let sent = tally.sent.load(Ordering::SeqCst);
        let ok = tally.ok.load(Ordering::SeqCst);
        assert!(
            failures.is_empty(),
            "{} of {sent} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        assert_eq!(ok, sent, "every request answered 2xx");
        assert!(sent > 300, "the load was real: {sent} requests");
        assert!(
            tally.slow_across_switch.load(Ordering::SeqCst) >= 6,
            "slow requests crossed switches"
        );
        eprintln!(
            "load across 50 switches: {sent} requests, {ok} answered 2xx, A served {}, B served {}, {} slow",
            a.served.load(Ordering::SeqCst),
            b.served.load(Ordering::SeqCst),
            tally.slow_across_switch.load(Ordering::SeqCst)
        );
        let served = a.served.load(Ordering::SeqCst) + b.served.load(Ordering::SeqCst);
        assert_eq!(
            served, sent,
            "each request reached exactly one backend once"
        );
        assert!(a.served.load(Ordering::SeqCst) > 0 && b.served.load(Ordering::SeqCst) > 0);
        let stats = proxy.stats();
        for id in ["A", "B"] {
            let s = &stats.backends[id];
            assert_eq!(s.connection_errors, 0, "{id}: {s:?}");
            assert_eq!(s.in_flight, 0, "{id}: {s:?}");
        }
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

/// The safety net: a backend that refuses connections (here: nothing listens on its port) does
/// not cost a request as long as another backend of the port is in the table, even one at
/// weight 0 (a standby, such as the old version while it drains). Requests are retried once, on
/// connection failure only; a backend that left the table is never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_once_on_another_backend() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let down = closed_port().await;
        let b = http_backend("B").await;
        let (proxy, addr) = proxy_routing(
            state.path(),
            Protocol::Http,
            &[("down", down, 100), ("B", b.addr, 0)],
        )
        .await;
        for i in 0..20 {
            let (method, body) = if i % 2 == 0 {
                ("GET", Bytes::new())
            } else {
                ("POST", Bytes::from(vec![b'y'; 10_000]))
            };
            let (status, text) = once(addr, method, "/", body.clone()).await.expect("answer");
            assert_eq!((status, text), (200, format!("B {}", body.len())));
        }
        let down_stats = proxy.backend("down").expect("down has counters");
        assert_eq!(down_stats.requests, 20);
        assert_eq!(down_stats.connection_errors, 20);
        assert_eq!(proxy.backend("B").expect("B").responses.success, 20);

        // With nowhere else to go, the client gets a 502 at once.
        proxy
            .update(table(Protocol::Http, &[("down", down, 100)]))
            .await
            .expect("update");
        let (status, _) = once(addr, "GET", "/", Bytes::new()).await.expect("answer");
        assert_eq!(status, 502);
        assert_eq!(
            b.served.load(Ordering::SeqCst),
            20,
            "a backend out of the table gets nothing"
        );

        // A backend that answers 5xx is not retried: it answered.
        proxy
            .update(table(
                Protocol::Http,
                &[("B", b.addr, 100), ("down", down, 0)],
            ))
            .await
            .expect("update");
        let (status, _) = once(addr, "GET", "/status/500", Bytes::new())
            .await
            .expect("answer");
        assert_eq!(status, 500);
        assert_eq!(proxy.backend("down").expect("down").requests, 21);
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_finishes_its_requests_then_drains() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let (a, b) = (http_backend("A").await, http_backend("B").await);
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Http, &[("A", a.addr, 100)]).await;
        let slow = tokio::spawn(once(addr, "GET", "/slow", Bytes::new()));
        let admin = proxy.admin();
        for _ in 0..100 {
            if proxy.backend("A").is_some_and(|s| s.in_flight == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            admin
                .backend("A")
                .await
                .expect("stats")
                .expect("A")
                .in_flight,
            1
        );
        // A quick request meanwhile opens a second connection to A, left idle in the pool.
        let (status, _) = once(addr, "GET", "/", Bytes::new()).await.expect("answer");
        assert_eq!(status, 200);
        assert_eq!(a.open.load(Ordering::SeqCst), 2);

        admin
            .put_routes(&table(Protocol::Http, &[("B", b.addr, 100)]))
            .await
            .expect("switch");
        let (status, body) = once(addr, "GET", "/", Bytes::new()).await.expect("answer");
        assert_eq!(
            (status, name(&body)),
            (200, "B"),
            "new requests go to B at once"
        );
        assert_eq!(
            proxy.backend("A").expect("A").in_flight,
            1,
            "A still serves the slow one"
        );
        // Its idle connection is closed at once; the one serving the slow request stays.
        for _ in 0..100 {
            if a.open.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            a.open.load(Ordering::SeqCst),
            1,
            "only the busy connection is left on A"
        );

        let drain = admin
            .wait_drained("A", Duration::from_secs(5))
            .await
            .expect("drain");
        assert_eq!(drain, Drain::Drained);
        let (status, body) = slow.await.expect("task").expect("slow request");
        assert_eq!(
            (status, name(&body)),
            (200, "A"),
            "finished where it started"
        );
        assert_eq!(
            admin
                .wait_drained("B", Duration::from_secs(1))
                .await
                .expect("B"),
            Drain::Drained
        );
        // The proxy kept A's connection for reuse; now that A left the table it is closed.
        for _ in 0..200 {
            if a.open.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            a.open.load(Ordering::SeqCst),
            0,
            "no connection left open on A"
        );
        assert!(
            b.open.load(Ordering::SeqCst) >= 1,
            "B's connection is pooled"
        );
        assert_eq!(admin.backend("nobody").await.expect("lookup"), None);
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read head");
        assert_eq!(
            n,
            1,
            "connection closed during the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Http, &[("A", a.addr, 100)]).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("handshake");
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("upgrade: websocket"),
            "{head}"
        );
        assert!(head.contains("x-backend: A"), "{head}");
        for msg in [&b"hello"[..], b"second frame", &[0u8, 255, 1, 254]] {
            s.write_all(msg).await.expect("write");
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.expect("echo");
            assert_eq!(back, msg);
        }
        assert_eq!(
            proxy.backend("A").expect("A").in_flight,
            1,
            "the tunnel counts as in flight"
        );

        // Removing the backend closes the tunnel once the drain time is over.
        let mut routes = table(Protocol::Http, &[]);
        routes.drain_ms = Some(200);
        proxy.update(routes).await.expect("update");
        s.write_all(b"still here").await.expect("write");
        let mut back = [0u8; 10];
        s.read_exact(&mut back)
            .await
            .expect("still echoed during the drain");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed after the drain time");
        assert!(n.is_ok());
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_forwards_and_switches() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let ((a, _ta), (b, _tb)) = (tcp_backend("A").await, tcp_backend("B").await);
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Tcp, &[("A", a, 100), ("B", b, 0)]).await;
        let greet = |s: TcpStream| async move {
            let mut r = tokio::io::BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.expect("greeting");
            (r, line.trim().to_string())
        };
        let (mut on_a, who) = greet(TcpStream::connect(addr).await.expect("connect")).await;
        assert_eq!(who, "A");

        proxy
            .update(table(Protocol::Tcp, &[("A", a, 0), ("B", b, 100)]))
            .await
            .expect("switch");
        let (on_b, who) = greet(TcpStream::connect(addr).await.expect("connect")).await;
        assert_eq!(who, "B", "new connections go to B");
        // The old connection stays on A: at weight 0, A is still in the table.
        on_a.get_mut().write_all(b"ping\n").await.expect("write");
        let mut line = String::new();
        on_a.read_line(&mut line).await.expect("echo");
        assert_eq!(line, "ping\n");

        // A leaves the table: its connection is closed once drainMs is over.
        let mut routes = table(Protocol::Tcp, &[("B", b, 100)]);
        routes.drain_ms = Some(300);
        proxy.update(routes).await.expect("remove A");
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), on_a.read_to_end(&mut rest))
            .await
            .expect("closed after the drain time");
        assert!(n.is_ok());
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "not before the drain time"
        );
        let s = proxy.backend("A").expect("A");
        assert_eq!((s.requests, s.in_flight), (1, 0));
        drop(on_b);
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_over_h2c() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Http, &[("A", a.addr, 100)]).await;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        for body in [Bytes::new(), Bytes::from_static(b"twelve bytes")] {
            let req = Request::builder()
                .method("POST")
                .uri(format!("http://shop.test:{}/", addr.port()))
                .body(Full::new(body.clone()))
                .expect("request");
            let resp = sender.send_request(req).await.expect("h2 response");
            assert_eq!(resp.status(), 200);
            let text = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(text, format!("A {}", body.len()).as_bytes());
        }
        drop(sender);
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

/// Sends a raw PUT /routes and returns the status.
async fn raw_put(admin: SocketAddr, json: &str) -> u16 {
    let stream = TcpStream::connect(admin).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method("PUT")
        .uri("/routes")
        .header("host", "admin")
        .body(Full::new(Bytes::from(json.to_string())))
        .expect("request");
    sender
        .send_request(req)
        .await
        .expect("response")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_survive_a_restart_and_bad_updates_are_not_saved() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let proxy = start_proxy(state.path()).await;
        let admin = proxy.admin();
        admin.healthz().await.expect("healthy");
        let routes = table(Protocol::Http, &[("A", a.addr, 100)]);
        let served = admin.put_routes(&routes).await.expect("put");
        assert_eq!(served, routes);
        let file = state.path().join("routes.json");
        let saved = std::fs::read(&file).expect("saved");

        let bad = format!(
            r#"{{"listeners":{{"{PORT}":{{"protocol":"http","backends":[{{"id":"A","addr":"{}","weight":150}}]}}}}}}"#,
            a.addr
        );
        assert_eq!(raw_put(proxy.admin_addr(), &bad).await, 400);
        let protocol_change = format!(
            r#"{{"listeners":{{"{PORT}":{{"protocol":"tcp","backends":[]}}}}}}"#
        );
        assert_eq!(raw_put(proxy.admin_addr(), &protocol_change).await, 400);
        assert_eq!(raw_put(proxy.admin_addr(), "not json").await, 400);
        let refused = admin
            .put_routes(&table(Protocol::Tcp, &[]))
            .await
            .expect_err("protocol change refused");
        assert!(
            matches!(&refused, AdminError::Refused { status: 400, message, .. } if message.contains("cannot become tcp")),
            "{refused}"
        );
        assert_eq!(std::fs::read(&file).expect("saved"), saved, "file unchanged");
        assert_eq!(admin.routes().await.expect("routes"), routes, "table unchanged");
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);

        let proxy = start_proxy(state.path()).await;
        assert_eq!(proxy.routes(), routes, "restored");
        assert_eq!(proxy.admin().routes().await.expect("routes"), routes);
        let addr = proxy.listener_addr(PORT).expect("listening again");
        let (status, body) = once(addr, "GET", "/", Bytes::new()).await.expect("answer");
        assert_eq!((status, name(&body)), (200, "A"));
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_give_error_rate_and_p99_over_a_window() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let (proxy, addr) =
            proxy_routing(state.path(), Protocol::Http, &[("A", a.addr, 100)]).await;
        let admin = proxy.admin();
        // Traffic before the window must not count in it.
        count_names(addr, 10).await;
        let before = admin.stats().await.expect("stats");

        let mut c = Conn::open(addr).await.expect("connect");
        for i in 0..100 {
            let path = if i % 20 == 0 { "/status/500" } else { "/" };
            c.send("GET", path, Bytes::new()).await.expect("request");
        }
        let slow: Vec<_> = (0..2)
            .map(|_| tokio::spawn(once(addr, "GET", "/slow", Bytes::new())))
            .collect();
        for s in slow {
            s.await.expect("task").expect("slow");
        }
        let after = admin.stats().await.expect("stats");
        let w = Window::between(before.backends.get("A"), &after.backends["A"]);
        assert_eq!(w.requests, 102);
        assert_eq!(w.responses.success, 97);
        assert_eq!(w.responses.server_error, 5);
        assert_eq!(w.connection_errors, 0);
        let rate = w.error_rate().expect("traffic");
        assert!((rate - 5.0 / 102.0).abs() < 1e-9, "{rate}");
        let p50 = w.p50().expect("p50");
        assert!(p50 < Duration::from_millis(100), "{p50:?}");
        let p99 = w.p99().expect("p99");
        assert!(p99 >= SLOW && p99 < SLOW * 2, "{p99:?}");
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

/// Listeners follow the table: a port added starts accepting, a port removed stops accepting
/// while the requests already on it finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_with_the_table() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let proxy = start_proxy(state.path()).await;
        let mut routes = table(Protocol::Http, &[("A", a.addr, 100)]);
        let second = routes.listeners[&PORT].clone();
        routes.listeners.insert(PORT + 1, second);
        proxy.update(routes).await.expect("two listeners");
        let extra = proxy.listener_addr(PORT + 1).expect("second listener");
        let (status, body) = once(extra, "GET", "/", Bytes::new()).await.expect("answer");
        assert_eq!((status, name(&body)), (200, "A"));

        let slow = tokio::spawn(once(extra, "GET", "/slow", Bytes::new()));
        for _ in 0..100 {
            if proxy.backend("A").is_some_and(|s| s.in_flight == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy
            .update(table(Protocol::Http, &[("A", a.addr, 100)]))
            .await
            .expect("one listener");
        assert_eq!(proxy.listener_addr(PORT + 1), None);
        // The accept loop notices at its next turn; then the socket is closed.
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(extra).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "a removed port accepts no new connection");
        let (status, body) = slow.await.expect("task").expect("slow request finishes");
        assert_eq!((status, name(&body)), (200, "A"));
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

/// busybox httpd (the demo's images) answers HTTP/1.0 and closes: the client's keep-alive
/// connection to the proxy must not be closed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_backend_does_not_close_the_client_connection() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nold 10")
                        .await;
                });
            }
        });
        let state = tempfile::tempdir().expect("tempdir");
        let proxy = start_proxy(state.path()).await;
        proxy
            .update(table(Protocol::Http, &[("old", backend, 100)]))
            .await
            .expect("update");
        let mut c = Conn::open(proxy.listener_addr(PORT).expect("listening"))
            .await
            .expect("connect");
        for _ in 0..5 {
            let (status, body, _) = c
                .send("GET", "/", Bytes::new())
                .await
                .expect("same connection");
            assert_eq!((status, body.as_str()), (200, "old 10"));
        }
        server.abort();
        assert_eq!(proxy.shutdown().await, Shutdown::Drained);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_proxy_runs_until_sigterm() {
    bounded(async {
        let state = tempfile::tempdir().expect("tempdir");
        let a = http_backend("A").await;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
            .args([
                "proxy",
                "--admin",
                "127.0.0.1:0",
                "--bind",
                "127.0.0.1",
                "--drain",
                "5s",
                "--state",
            ])
            .arg(state.path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start rollout proxy");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = lines
            .next_line()
            .await
            .expect("read")
            .expect("a first line");
        let admin: SocketAddr = first
            .strip_prefix("proxy admin API on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        let admin = AdminClient::new(admin);
        admin.healthz().await.expect("healthy");

        let public = crate::support::free_port();
        let mut routes = Routes::default();
        routes.listeners.insert(
            public,
            Listener {
                protocol: Protocol::Http,
                backends: vec![Backend {
                    id: "A".into(),
                    addr: a.addr,
                    weight: Weight::FULL,
                }],
            },
        );
        admin.put_routes(&routes).await.expect("put routes");
        let addr: SocketAddr = ([127, 0, 0, 1], public).into();
        let mut c = Conn::open(addr).await.expect("connect");
        for _ in 0..20 {
            let (status, body, _) = c.send("GET", "/", Bytes::new()).await.expect("request");
            assert_eq!((status, name(&body)), (200, "A"));
        }
        assert_eq!(
            admin.stats().await.expect("stats").backends["A"]
                .responses
                .success,
            20
        );

        // A slow request in flight at SIGTERM still gets its answer.
        let slow = tokio::spawn(once(addr, "GET", "/slow", Bytes::new()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pid = child.id().expect("pid");
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let (status, body) = slow.await.expect("task").expect("slow answered");
        assert_eq!((status, name(&body)), (200, "A"));
        let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("exits after the drain")
            .expect("wait");
        assert_eq!(exit.code(), Some(0));
    })
    .await;
}
