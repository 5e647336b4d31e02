//! The edge proxy: it holds every public port of an environment and forwards to the current
//! backends, so traffic moves between containers without a gap.
//!
//! - [`routes`]: the routing table (what the admin API reads and writes) and the weighted pick.
//! - `table`: the live, compiled form of a listener's routes, swapped atomically.
//! - `http` / `tcp`: one accept loop per public port, by protocol.
//! - `fast` / [`h1`]: the HTTP/1.1 fast path `http` runs first on each client connection (plain
//!   requests on plain pooled sockets), and its wire format as pure functions (public for the
//!   fuzz targets in `fuzz/`).
//! - `upstream`: per backend address, pooled HTTP/1.1 connections and the drain-deadline signal.
//! - [`stats`]: per-backend counters and the pure window arithmetic canary analysis uses.
//! - [`state`]: the table on disk.
//! - `admin` / [`client`]: the JSON admin API, and its typed client for the promotion code.
//!
//! An update ([`ProxyHandle::update`], `PUT /routes`) is validated, its new ports are bound and
//! it is saved before anything changes; only then is it applied, in one step per listener. So an
//! update is either wholly in force and saved, or refused with nothing changed. Requests keep
//! the route they started with; backends that leave the table get no new traffic, finish what
//! they have, and their idle connections close at once (see [`ProxyHandle::backend`] to wait
//! for `inFlight` to reach 0).

mod admin;
pub mod client;
mod fast;
pub mod h1;
mod http;
pub mod routes;
pub mod state;
pub mod stats;
mod table;
mod tcp;
mod upstream;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::{AdminClient, AdminError, Drain};
pub use routes::{Backend, Listener, Protocol, RouteError, Routes, Weight};
pub use state::StateError;
pub use stats::{BackendSnapshot, StatsSnapshot, Window};

use table::{Route, Slot, Target};
use upstream::Upstream;

/// How the proxy is started.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The address public listeners bind (port from the table).
    pub bind: IpAddr,
    /// The admin API address. Any address is accepted: in production the proxy runs in its own
    /// container and binds 0.0.0.0 inside its network namespace, while Docker publishes the
    /// admin port on 127.0.0.1 only; run directly on a host, give it a loopback address.
    pub admin: SocketAddr,
    /// Where `routes.json` is kept.
    pub state_dir: PathBuf,
    /// Tests: bind every listener on a free port instead of its public port;
    /// [`ProxyHandle::listener_addr`] says where.
    pub ephemeral_ports: bool,
    /// At shutdown, how long in-flight requests and connections get before they are cut.
    pub shutdown_drain: Duration,
}

impl ProxyConfig {
    pub fn new(admin: SocketAddr, state_dir: impl Into<PathBuf>) -> ProxyConfig {
        ProxyConfig {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            admin,
            state_dir: state_dir.into(),
            ephemeral_ports: false,
            shutdown_drain: Duration::from_secs(10),
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} for the admin API: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot restore the saved routing table")]
    Restore(#[source] UpdateError),
    #[error("cannot read the saved routing table")]
    State(#[from] StateError),
}

/// Why an update was refused; nothing of it was applied or saved.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("invalid routing table: {0}")]
    Invalid(#[from] RouteError),
    #[error("cannot listen on {addr} for public port {port}: {source}")]
    Bind {
        port: u16,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the routing table could not be saved, so it was not applied: {0}")]
    Save(#[from] StateError),
    #[error("the proxy is shutting down")]
    ShuttingDown,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every request and connection finished within the drain time.
    Drained,
    /// The drain time ran out; these connections were cut.
    Forced { open: usize },
}

/// What listener accept loops and their connections share.
#[derive(Clone)]
pub(crate) struct ListenerCtx {
    pub port: u16,
    pub slot: Arc<Slot>,
    /// Stop accepting; HTTP connections finish their requests and close.
    pub stop: CancellationToken,
    /// Cut everything now (end of the shutdown drain).
    pub kill: CancellationToken,
    pub tracker: TaskTracker,
}

/// The next connection `listener` accepts, or `None` once `stop` is cancelled. A failed accept
/// (out of file descriptors and the like) goes to `failed` and is retried after a short back-off
/// instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    failed: impl Fn(&std::io::Error),
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.cancelled() => return None,
        }
    }
}

struct Running {
    protocol: Protocol,
    addr: SocketAddr,
    slot: Arc<Slot>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Live {
    routes: Routes,
    listeners: BTreeMap<u16, Running>,
    upstreams: HashMap<SocketAddr, Arc<Upstream>>,
}

pub(crate) struct Core {
    config: ProxyConfig,
    stats: stats::Registry,
    /// Serializes updates (held across binding and saving); `live` is only locked briefly.
    updating: tokio::sync::Mutex<()>,
    live: Mutex<Live>,
    tracker: TaskTracker,
    kill: CancellationToken,
    stopping: AtomicBool,
}

/// Starts the proxy in this process.
pub struct Proxy;

impl Proxy {
    /// Binds the admin API, restores the saved table (binding its ports) and starts serving.
    pub async fn start(config: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
        let admin =
            TcpListener::bind(config.admin)
                .await
                .map_err(|source| ProxyError::AdminBind {
                    addr: config.admin,
                    source,
                })?;
        let admin_addr = admin.local_addr().map_err(|source| ProxyError::AdminBind {
            addr: config.admin,
            source,
        })?;
        let dir = config.state_dir.clone();
        let saved = tokio::task::spawn_blocking(move || state::load(&dir))
            .await
            .map_err(|e| {
                ProxyError::State(StateError::Io {
                    action: "read",
                    path: config.state_dir.clone(),
                    source: std::io::Error::other(e),
                })
            })??;
        let core = Arc::new(Core {
            config,
            stats: stats::Registry::default(),
            updating: tokio::sync::Mutex::new(()),
            live: Mutex::new(Live::default()),
            tracker: TaskTracker::new(),
            kill: CancellationToken::new(),
            stopping: AtomicBool::new(false),
        });
        if let Some(routes) = saved {
            core.apply(routes, false)
                .await
                .map_err(ProxyError::Restore)?;
            tracing::info!(
                listeners = core.lock().routes.listeners.len(),
                "restored the saved routing table"
            );
        }
        let admin_stop = CancellationToken::new();
        tokio::spawn(admin::serve(admin, core.clone(), admin_stop.clone()));
        tracing::info!(admin = %admin_addr, "proxy started");
        Ok(ProxyHandle {
            core,
            admin_addr,
            admin_stop,
        })
    }
}

/// A running proxy. Dropping it without [`ProxyHandle::shutdown`] cuts everything at once.
pub struct ProxyHandle {
    core: Arc<Core>,
    admin_addr: SocketAddr,
    admin_stop: CancellationToken,
}

impl ProxyHandle {
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A client of this proxy's admin API.
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.admin_addr)
    }

    /// Where the listener for `public_port` accepts connections (the public port itself unless
    /// the proxy was started with `ephemeral_ports`).
    pub fn listener_addr(&self, public_port: u16) -> Option<SocketAddr> {
        self.core.lock().listeners.get(&public_port).map(|r| r.addr)
    }

    pub fn routes(&self) -> Routes {
        self.core.lock().routes.clone()
    }

    /// Replaces the routing table, as `PUT /routes` does (validated, saved, then applied).
    pub async fn update(&self, routes: Routes) -> Result<(), UpdateError> {
        self.core.apply(routes, true).await
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.core.stats.snapshot()
    }

    /// One backend's counters, `None` if it never had traffic or a route.
    pub fn backend(&self, id: &str) -> Option<BackendSnapshot> {
        self.core.stats.find(id)
    }

    /// Stops accepting on every port and the admin API, lets in-flight requests finish up to the
    /// configured drain time, then cuts what is left.
    pub async fn shutdown(self) -> Shutdown {
        let core = self.core.clone();
        self.admin_stop.cancel();
        core.stopping.store(true, Ordering::SeqCst);
        // Wait for an update in progress, and let no new one start.
        let _updating = core.updating.lock().await;
        for running in core.lock().listeners.values() {
            running.stop.cancel();
        }
        core.tracker.close();
        let drain = core.config.shutdown_drain;
        let outcome = if tokio::time::timeout(drain, core.tracker.wait())
            .await
            .is_ok()
        {
            Shutdown::Drained
        } else {
            let open = core.tracker.len();
            tracing::warn!(open, ?drain, "drain time over, closing what is left");
            core.kill.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), core.tracker.wait()).await;
            Shutdown::Forced { open }
        };
        tracing::info!(?outcome, "proxy stopped");
        outcome
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.admin_stop.cancel();
        for running in self.core.lock().listeners.values() {
            running.stop.cancel();
        }
        self.core.kill.cancel();
    }
}

impl Core {
    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates, binds, saves (when `save`), then applies `routes`.
    async fn apply(self: &Arc<Self>, routes: Routes, save: bool) -> Result<(), UpdateError> {
        let _updating = self.updating.lock().await;
        if self.stopping.load(Ordering::SeqCst) {
            return Err(UpdateError::ShuttingDown);
        }
        let current = self.lock().routes.clone();
        routes.validate(&current)?;

        let mut fresh = Vec::new();
        for &port in routes.listeners.keys() {
            if current.listeners.contains_key(&port) {
                continue;
            }
            let bind_port = if self.config.ephemeral_ports { 0 } else { port };
            let addr = SocketAddr::new(self.config.bind, bind_port);
            let listener = TcpListener::bind(addr)
                .await
                .and_then(|l| l.local_addr().map(|a| (l, a)))
                .map_err(|source| UpdateError::Bind { port, addr, source })?;
            fresh.push((port, listener));
        }

        if save {
            let dir = self.config.state_dir.clone();
            let copy = routes.clone();
            tokio::task::spawn_blocking(move || state::save(&dir, &copy))
                .await
                .map_err(|e| {
                    UpdateError::Save(StateError::Io {
                        action: "write",
                        path: state::path(&self.config.state_dir),
                        source: std::io::Error::other(e),
                    })
                })??;
        }

        self.commit(routes, fresh);
        Ok(())
    }

    /// Puts a validated, bound and saved table in force. Cannot fail.
    fn commit(self: &Arc<Self>, routes: Routes, fresh: Vec<(u16, (TcpListener, SocketAddr))>) {
        let mut live = self.lock();
        let live = &mut *live;

        let wanted: HashSet<SocketAddr> = routes
            .listeners
            .values()
            .flat_map(|l| l.backends.iter().map(|b| b.addr))
            .collect();
        for &addr in &wanted {
            match live.upstreams.get(&addr) {
                Some(up) if up.is_retired() => up.revive(),
                Some(_) => {}
                None => {
                    live.upstreams.insert(addr, Arc::new(Upstream::new(addr)));
                }
            }
        }

        let ids: HashSet<&str> = routes
            .listeners
            .values()
            .flat_map(|l| l.backends.iter().map(|b| b.id.as_str()))
            .collect();
        self.stats.table_changed(&ids, std::time::Instant::now());

        let compile = |l: &Listener| {
            let targets = l
                .backends
                .iter()
                .map(|b| Target {
                    id: b.id.clone(),
                    stats: self.stats.get(&b.id),
                    upstream: live.upstreams[&b.addr].clone(),
                })
                .collect();
            Route::new(targets, l.backends.iter().map(|b| b.weight).collect())
        };

        for (port, running) in &live.listeners {
            if let Some(l) = routes.listeners.get(port) {
                running.slot.set(compile(l));
            }
        }
        let mut started = Vec::new();
        for (port, (listener, addr)) in fresh {
            let l = &routes.listeners[&port];
            let slot = Arc::new(Slot::new(compile(l)));
            let stop = CancellationToken::new();
            let ctx = ListenerCtx {
                port,
                slot: slot.clone(),
                stop: stop.clone(),
                kill: self.kill.clone(),
                tracker: self.tracker.clone(),
            };
            match l.protocol {
                Protocol::Http => self.tracker.spawn(http::serve(listener, ctx)),
                Protocol::Tcp => self.tracker.spawn(tcp::serve(listener, ctx)),
            };
            tracing::info!(port, %addr, protocol = %l.protocol, "listening");
            started.push((
                port,
                Running {
                    protocol: l.protocol,
                    addr,
                    slot,
                    stop,
                },
            ));
        }
        live.listeners.extend(started);
        live.listeners.retain(|port, running| {
            let keep = routes.listeners.contains_key(port);
            if !keep {
                // Stops accepting; connections already open finish.
                running.stop.cancel();
                tracing::info!(port, protocol = %running.protocol, "listener removed");
            }
            keep
        });

        let drain = routes.drain();
        for (addr, up) in &live.upstreams {
            if wanted.contains(addr) || up.is_retired() {
                continue;
            }
            let generation = up.retire();
            tracing::info!(%addr, ?drain, "backend left the table: no new traffic, draining");
            let core = Arc::downgrade(self);
            let up = up.clone();
            let kill = self.kill.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(drain) => {}
                    _ = kill.cancelled() => return,
                }
                evict(core, up, generation);
            });
        }
        live.routes = routes;
    }
}

/// The drain time of a retired backend is over: close its long-lived connections and forget it,
/// unless it came back meanwhile.
fn evict(core: Weak<Core>, up: Arc<Upstream>, generation: u64) {
    let Some(core) = core.upgrade() else { return };
    let mut live = core.lock();
    if up.evict_if(generation) {
        if live
            .upstreams
            .get(&up.addr)
            .is_some_and(|u| Arc::ptr_eq(u, &up))
        {
            live.upstreams.remove(&up.addr);
        }
        tracing::debug!(addr = %up.addr, "drain time over; long-lived connections closed");
    }
}
