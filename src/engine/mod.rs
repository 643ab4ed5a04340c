//! The engine: IO threads, their connection tables, limits, timers and shutdown.
//!
//! Each IO thread owns one [`Backend`](crate::sys::Backend) (a ring, or an epoll instance), one
//! listener per server (SO_REUSEPORT: the kernel spreads incoming connections over the
//! threads, no acceptor thread and no hand-off), and every connection accepted on its
//! listeners or opened from it, for that connection's whole life.
//!
//! | file | what it owns |
//! |---|---|
//! | `mod.rs` | [`EngineBuilder`], [`Engine`], [`RunningEngine`]: configuration and start-up |
//! | `server.rs` | [`Server`] and its limits, [`ServerHandle`] |
//! | `control.rs` | [`Connector`], [`ShutdownHandle`] |
//! | `signal_waiter.rs` | the thread turning SIGINT/SIGTERM/SIGHUP into shutdown or restart |
//! | `inbox.rs` | the messages other threads send an IO thread |
//! | `thread.rs` | the IO thread's loop, read top to bottom in `IoThread::run` |
//! | `table.rs` | the connection table and what each completion does to a connection |
//! | `flush.rs` | the end of a loop turn: sends, half-closes, watermarks, closes |
//! | `peers.rs` | per-IP connection counts and accept rates |
//! | `restart.rs` | the SIGHUP restart: a successor inherits the listeners |
//!
//! Dependencies point down: `thread` uses `flush` and `table`; `table` uses the connection
//! layers (`core`, `conn`, `handler`); nothing below knows the engine.

mod control;
mod flush;
mod inbox;
mod overload;
mod peers;
#[cfg(unix)]
mod restart;
#[cfg(not(unix))]
#[path = "restart_none.rs"]
mod restart;
mod server;
mod signal_waiter;
mod table;
mod thread;

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

pub use control::{Connector, ShutdownHandle};
pub use server::{Server, ServerHandle};

use crate::budget::Budget;
use crate::codec::Lines;
use crate::listen::ListenAddr;
use crate::metrics::{Metrics, MetricsHttp};
use crate::stats::ServerStats;
use crate::sys::{self, BackendConfig};
use crate::{BackendKind, Error};
use peers::PeerLimits;
use restart::Restart;
use server::{check_port_free, Factory, Limits, SharedServer};
use signal_waiter::SignalWaiter;

pub(crate) use crate::limits::MIN_ACCEPT_BACKOFF;
pub use crate::limits::{
    DEFAULT_MAX_BUFFERED_INPUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_RESTART_GRACE, DEFAULT_WRITE_HIGH,
    DEFAULT_WRITE_LOW, FLUSH_STALL, LINGER, MAX_ACCEPT_BACKOFF, MAX_RECV_BUFFER_COUNT,
};

/// Builds an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    io_threads: usize,
    backend: Option<BackendKind>,
    drain_timeout: Duration,
    recv_buffer_size: usize,
    recv_buffer_count: u16,
    handle_signals: bool,
    inherit_listeners: bool,
    restart_on_sighup: bool,
    restart_ready_timeout: Duration,
    restart_grace: Duration,
    memory_budget: Option<usize>,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            io_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backend: None,
            drain_timeout: Duration::from_secs(5),
            recv_buffer_size: 16 << 10,
            recv_buffer_count: 512,
            handle_signals: true,
            inherit_listeners: true,
            restart_on_sighup: false,
            restart_ready_timeout: Duration::from_secs(30),
            restart_grace: DEFAULT_RESTART_GRACE,
            memory_budget: None,
        }
    }
}

impl EngineBuilder {
    /// IO threads (default: available parallelism).
    pub fn io_threads(mut self, n: usize) -> Self {
        self.io_threads = n;
        self
    }
    /// The backend; default: `RINGPORT_BACKEND` if set, else [`BackendKind::Auto`].
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.backend = Some(kind);
        self
    }
    /// How long a shutdown lets connections answer outstanding work and flush before
    /// resetting what is left (counted as `drain-timeout`).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }
    /// Bytes per receive (each provided buffer on io_uring; the scratch buffer on epoll).
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer_size = bytes;
        self
    }
    /// io_uring: receive buffers per IO thread (rounded up to a power of two; at most
    /// [`MAX_RECV_BUFFER_COUNT`]).
    pub fn recv_buffer_count(mut self, n: u16) -> Self {
        self.recv_buffer_count = n;
        self
    }
    /// Whether a started engine drains gracefully on SIGINT/SIGTERM (default on, for
    /// [`Engine::run`] and [`Engine::start`] alike). Off: the embedding program handles
    /// signals and calls [`ShutdownHandle::shutdown`] itself.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Whether [`Engine::add_server`] takes listening sockets handed to this process instead
    /// of binding (default on): systemd socket activation (`LISTEN_FDS`/`LISTEN_PID`, one
    /// socket per server in the unit's order) or a restart handover. The i-th server added
    /// takes the i-th inherited socket, whatever its configured address.
    pub fn inherit_listeners(mut self, on: bool) -> Self {
        self.inherit_listeners = on;
        self
    }

    /// On SIGHUP, start a successor (this executable, same arguments) that inherits the
    /// listening sockets (the metrics server's too); once it reports ready (within
    /// `ready_timeout`), stop accepting and *retire*: every handler hears
    /// [`Handler::on_retire`](crate::Handler::on_retire), the open connections are served on
    /// until each closes (the process exits after the last), and once
    /// [`restart_grace`](EngineBuilder::restart_grace) has passed what is left drains as on
    /// SIGTERM. SIGTERM to a retired process drains it at once. A successor that fails to
    /// start is killed and this process serves on. Needs
    /// [`handle_signals`](EngineBuilder::handle_signals) (the default). Default off.
    pub fn restart_on_sighup(mut self, on: bool, ready_timeout: Duration) -> Self {
        self.restart_on_sighup = on;
        self.restart_ready_timeout = ready_timeout;
        self
    }

    /// How long a process retired by a restart serves its open connections before draining
    /// them as on SIGTERM (default [`DEFAULT_RESTART_GRACE`], 300 s).
    pub fn restart_grace(mut self, grace: Duration) -> Self {
        self.restart_grace = grace;
        self
    }

    /// The process-wide memory budget in bytes (default: [`default_memory_budget`](crate::default_memory_budget):
    /// 3/8 of the cgroup's memory limit, else of physical memory). What the engine buffers
    /// for its peers is charged to it, and as it fills, watermarks shrink, reading pauses, new
    /// connections are refused and at the top the biggest holders are reset (see
    /// [`Pressure`](crate::Pressure)). At least 1 MiB.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Resolves the backend (probing io_uring for `auto`) and makes the engine.
    pub fn build(self) -> Result<Engine, Error> {
        if self.io_threads == 0 || self.io_threads > 1024 {
            return Err(Error::Config(
                "io threads must be between 1 and 1024".into(),
            ));
        }
        if self.recv_buffer_size < 64 || self.recv_buffer_size > (1 << 24) {
            return Err(Error::Config(
                "receive buffer size must be between 64 bytes and 16 MiB".into(),
            ));
        }
        if self.recv_buffer_count > MAX_RECV_BUFFER_COUNT {
            return Err(Error::Config(format!(
                "receive buffer count must be at most {MAX_RECV_BUFFER_COUNT} (got {})",
                self.recv_buffer_count
            )));
        }
        let bcfg = BackendConfig {
            recv_buffer_size: self.recv_buffer_size,
            recv_buffer_count: self.recv_buffer_count.max(2).next_power_of_two(),
            ring_entries: 1024,
        };
        let asked = match self.backend {
            Some(k) => k,
            None => BackendKind::from_env()?.unwrap_or_default(),
        };
        // Probes io_uring for `auto`/`uring` on Linux; an unavailable backend is an error.
        let kind = sys::select(asked, &bcfg)?;
        sys::bound_allocator();
        let budget = Budget::new(
            self.memory_budget
                .unwrap_or_else(crate::budget::default_limit),
        );
        let (inherited, ready) = if self.inherit_listeners {
            let groups = sys::inherit::take_listeners()
                .map_err(|e| Error::Config(format!("inherited listening sockets: {e}")))?;
            (groups, sys::inherit::take_ready_socket())
        } else {
            (Default::default(), None)
        };
        let mut cfg = self;
        // A restart's predecessor may have run more IO threads (the available parallelism
        // dropped): one IO thread per inherited listener, so that none closes, which would
        // reset the connections waiting in its backlog.
        let most = inherited
            .servers
            .iter()
            .chain(&inherited.metrics)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        if most > cfg.io_threads {
            warn!(
                configured = cfg.io_threads,
                inherited = most,
                "more inherited listening sockets than IO threads; running one IO thread per socket"
            );
            cfg.io_threads = most;
        }
        // io_uring's provided-buffer ring is memory the peers fill: it is charged to the
        // budget, and shrunk to an eighth of it at most.
        let mut bcfg = bcfg;
        let mut ring_bytes = 0;
        if kind == BackendKind::Uring {
            let per_buffer_set = bcfg.recv_buffer_size * cfg.io_threads;
            let most = (budget.limit() / 8 / per_buffer_set.max(1)).max(16);
            if usize::from(bcfg.recv_buffer_count) > most {
                let fit = (most + 1).next_power_of_two() / 2;
                info!(
                    from = bcfg.recv_buffer_count,
                    to = fit,
                    budget = budget.limit(),
                    "io_uring receive buffers cut to fit an eighth of the memory budget"
                );
                bcfg.recv_buffer_count = u16::try_from(fit).unwrap_or(u16::MAX);
            }
            ring_bytes = usize::from(bcfg.recv_buffer_count) * per_buffer_set;
            budget.charge(ring_bytes);
        }
        let _ = ring_bytes;
        let client_stats = ServerStats::new(cfg.io_threads);
        let metrics = Metrics::new(cfg.io_threads, budget.clone());
        metrics.add_server("outgoing".into(), client_stats.clone());
        Ok(Engine {
            metrics,
            inherited: inherited.servers.into(),
            inherited_metrics: inherited.metrics,
            handover: inherited.handover,
            unix_paths: Vec::new(),
            ready,
            connector: Connector::new(client_stats.clone()),
            client_stats,
            cfg,
            kind,
            bcfg,
            servers: Vec::new(),
            signals: None,
        })
    }
}

struct ServerSpec {
    factory: Factory,
    limits: Limits,
    stats: Arc<ServerStats>,
    listeners: Vec<TcpListener>,
    /// The metrics server (`serve_metrics`): named as such to a restart's successor.
    metrics: bool,
}

/// IO threads and the servers they run. Add servers, then [`Engine::run`] (or
/// [`Engine::start`] to keep control of the calling thread).
pub struct Engine {
    cfg: EngineBuilder,
    kind: BackendKind,
    bcfg: BackendConfig,
    servers: Vec<ServerSpec>,
    signals: Option<sys::signals::Signals>,
    connector: Connector,
    client_stats: Arc<ServerStats>,
    metrics: Metrics,
    /// Listener groups handed to this process, for the next servers added.
    inherited: VecDeque<Vec<TcpListener>>,
    /// The metrics server's listeners handed over by a restart, for `serve_metrics`.
    inherited_metrics: Option<Vec<TcpListener>>,
    /// A restart's successor tells its predecessor here when it serves.
    ready: Option<sys::inherit::ReadySocket>,
    /// The inherited listeners came from a restart's handover (not systemd).
    handover: bool,
    /// Unix socket files this process owns (bound here, or handed over by a restart): removed
    /// on a clean shutdown.
    unix_paths: Vec<PathBuf>,
}

impl Engine {
    /// Starts building an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The backend really in use: `"uring"`, `"epoll"`, `"iocp"` or `"poll"`.
    pub fn backend_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Opens outgoing connections through this engine; usable before it starts (connects are
    /// then made at start).
    pub fn connector(&self) -> Connector {
        self.connector.clone()
    }

    /// Binds a server's listeners (one per IO thread, SO_REUSEPORT). Connections queue in the
    /// kernel's backlog from now on and are accepted once the engine runs.
    ///
    /// Where this process was handed listening sockets (systemd socket activation, or a
    /// restart; see [`EngineBuilder::inherit_listeners`]) the server takes the next of those
    /// instead of binding its address.
    pub fn add_server(&mut self, server: Server) -> Result<ServerHandle, Error> {
        if let Some(group) = self.inherited.pop_front() {
            let addr = group.first().and_then(listen_addr_of);
            info!(
                configured = %server.listen_addr(),
                inherited = %addr.as_ref().map_or("?".into(), ToString::to_string),
                listeners = group.len(),
                "using inherited listening socket"
            );
            if self.handover {
                // A restart handed it over: its socket file is ours to remove, as it was the
                // predecessor's. systemd's sockets stay systemd's.
                if let Some(ListenAddr::Unix(p)) = addr {
                    self.unix_paths.push(p);
                }
            }
            return self.add_server_with_listeners(server, group);
        }
        self.bind_server(server, false)
    }

    fn bind_server(&mut self, server: Server, metrics: bool) -> Result<ServerHandle, Error> {
        let n = self.cfg.io_threads;
        if let Some(path) = server.unix.clone() {
            let listeners =
                sys::bind_unix_listeners(&path, server.limits.backlog, n).map_err(|source| {
                    Error::ListenUnix {
                        path: path.clone(),
                        source,
                    }
                })?;
            self.unix_paths.push(path);
            return Ok(self.push_server(server, listeners, metrics));
        }
        let addr = server.addr;
        if !server.limits.reuse_port && addr.port() != 0 {
            check_port_free(addr).map_err(|source| Error::Listen { addr, source })?;
        }
        let listeners = sys::bind_listeners(
            addr,
            server.limits.backlog,
            n,
            server.limits.exclusive_address,
        )
        .map_err(|source| Error::Listen { addr, source })?;
        Ok(self.push_server(server, listeners, metrics))
    }

    /// Adds a server on listening sockets made elsewhere (systemd, a supervisor, a test):
    /// one per IO thread is used; fewer are shared by several IO threads (each accepts from
    /// the same queue), more are closed with a warning.
    pub fn add_server_with_listeners(
        &mut self,
        server: Server,
        listeners: Vec<TcpListener>,
    ) -> Result<ServerHandle, Error> {
        self.add_given_listeners(server, listeners, false)
    }

    fn add_given_listeners(
        &mut self,
        server: Server,
        mut listeners: Vec<TcpListener>,
        metrics: bool,
    ) -> Result<ServerHandle, Error> {
        let n = self.cfg.io_threads;
        if listeners.is_empty() {
            return Err(Error::Config("no listening socket given".into()));
        }
        for l in &listeners {
            l.set_nonblocking(true)?;
        }
        if listeners.len() > n {
            warn!(
                given = listeners.len(),
                io_threads = n,
                "more listening sockets than IO threads; closing the rest"
            );
            listeners.truncate(n);
        }
        let given = listeners.len();
        for i in given..n {
            let l = listeners[i % given].try_clone()?;
            listeners.push(l);
        }
        Ok(self.push_server(server, listeners, metrics))
    }

    fn push_server(
        &mut self,
        server: Server,
        listeners: Vec<TcpListener>,
        metrics: bool,
    ) -> ServerHandle {
        let listen = listeners
            .first()
            .and_then(listen_addr_of)
            .unwrap_or_else(|| server.listen_addr());
        let stats = ServerStats::new(self.cfg.io_threads);
        self.metrics.add_server(listen.to_string(), stats.clone());
        self.servers.push(ServerSpec {
            factory: server.factory,
            limits: server.limits,
            stats: stats.clone(),
            listeners,
            metrics,
        });
        let (addr, unix) = match listen {
            ListenAddr::Tcp(a) => (a, None),
            ListenAddr::Unix(p) => (crate::listen::UNIX_PLACEHOLDER_ADDR, Some(p)),
        };
        ServerHandle { addr, unix, stats }
    }

    /// The process-wide memory budget (shared by every clone): handlers and worker pools
    /// charge what they hold for clients to it.
    pub fn budget(&self) -> Budget {
        self.metrics.budget().clone()
    }

    /// The engine's metrics (every server added, the IO threads, worker pools added with
    /// [`Metrics::add_pool`]).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Serves the engine's [`Metrics`] at `GET /metrics` on `addr` (HTTP/1.1, one answer per
    /// connection, `Connection: close`): one more server of this engine, on its IO threads.
    ///
    /// In a restart's successor it takes the metrics listener its predecessor handed over
    /// (whatever `addr` says), so that scrapes waiting in its backlog during the switch are
    /// answered by the successor.
    pub fn serve_metrics(&mut self, addr: SocketAddr) -> Result<ServerHandle, Error> {
        let metrics = self.metrics.clone();
        let mut server = Server::new(addr, Lines::new(8192), move |_| {
            MetricsHttp::new(metrics.clone())
        })
        .max_connections(1024)
        .idle_timeout(Some(Duration::from_secs(10)))
        .reuse_port(true); // a successor of a version that did not hand it over binds it too
        server.limits.overload_exempt = true;
        if let Some(group) = self.inherited_metrics.take() {
            info!(
                configured = %addr,
                inherited = ?group.first().and_then(|l| l.local_addr().ok()),
                "metrics: using the inherited listening socket"
            );
            return self.add_given_listeners(server, group, true);
        }
        self.bind_server(server, true)
    }

    /// Registers the SIGINT/SIGTERM handlers now rather than when the engine starts: call it
    /// before announcing the server (a signal that arrives after the announcement must find
    /// the handler in place), and before descriptors may run out. [`Engine::run`] and
    /// [`Engine::start`] (then [`RunningEngine::join`]) both drain gracefully on them.
    pub fn catch_signals(&mut self) -> Result<(), Error> {
        if self.signals.is_none() {
            self.signals = Some(sys::signals::Signals::new(self.cfg.restart_on_sighup)?);
        }
        Ok(())
    }

    /// Starts the IO threads and returns at once. Unless the builder turned
    /// [`handle_signals`](EngineBuilder::handle_signals) off, SIGINT and SIGTERM start the
    /// same graceful drain as [`ShutdownHandle::shutdown`].
    pub fn start(mut self) -> Result<RunningEngine, Error> {
        if self.cfg.handle_signals {
            self.catch_signals()?;
        }
        let n = self.cfg.io_threads;
        let restart = if self.cfg.restart_on_sighup {
            let mut groups = Vec::new();
            for spec in &self.servers {
                groups.push(restart::Group {
                    listeners: spec
                        .listeners
                        .iter()
                        .map(TcpListener::try_clone)
                        .collect::<io::Result<Vec<_>>>()?,
                    metrics: spec.metrics,
                });
            }
            let mut stats: Vec<_> = self.servers.iter().map(|s| s.stats.clone()).collect();
            stats.push(self.client_stats.clone());
            Some(Restart::new(
                groups,
                self.cfg.restart_ready_timeout,
                self.cfg.restart_grace,
                stats,
            )?)
        } else {
            None
        };
        // A restart's successor starts accepting only once its predecessor has stopped.
        restart::await_go(self.ready.take(), self.cfg.restart_ready_timeout);
        let mut per_thread: Vec<Vec<TcpListener>> = (0..n).map(|_| Vec::new()).collect();
        let mut servers = Vec::new();
        for spec in self.servers {
            for (t, l) in spec.listeners.into_iter().enumerate() {
                per_thread[t].push(l);
            }
            servers.push(Arc::new(SharedServer {
                factory: Some(spec.factory),
                peers: PeerLimits::new(
                    spec.limits.max_connections_per_ip,
                    spec.limits.accept_rate_per_ip,
                ),
                limits: spec.limits,
                stats: spec.stats,
            }));
        }
        // Outgoing connections count under one more "server" of their own.
        servers.push(Arc::new(SharedServer {
            factory: None,
            peers: None,
            limits: Limits::default(),
            stats: self.client_stats.clone(),
        }));
        let (threads, shareds, failure) = thread::spawn_all(
            self.kind,
            &self.bcfg,
            servers,
            per_thread,
            self.cfg.drain_timeout,
            self.metrics.loops(),
            self.metrics.budget().clone(),
        )?;
        let inboxes = shareds.clone();
        self.metrics.set_inbox_depths(Box::new(move || {
            inboxes.iter().map(|t| t.tx.len()).collect()
        }));
        let shutdown = ShutdownHandle::new(shareds.clone());
        self.connector.started(shareds);
        let mut running = RunningEngine {
            threads,
            connector: self.connector,
            shutdown,
            signals: None,
            backend: self.kind.name(),
            unix_paths: std::mem::take(&mut self.unix_paths),
        };
        if let Some(e) = failure {
            running.shutdown.shutdown();
            running.join();
            return Err(Error::Io(e));
        }
        if let Some(signals) = self.signals.take() {
            running.signals = Some(SignalWaiter::spawn(
                signals,
                running.shutdown.clone(),
                restart,
            )?);
        }
        restart::notify_ready();
        Ok(running)
    }

    /// Runs until SIGINT or SIGTERM (or a [`ShutdownHandle`]), then shuts down gracefully:
    /// stops accepting, lets connections answer and flush, closes them (resetting what is left
    /// at the drain deadline), joins the threads. The same as [`Engine::start`] then
    /// [`RunningEngine::join`].
    pub fn run(mut self) -> Result<(), Error> {
        self.catch_signals()?;
        self.start()?.join();
        Ok(())
    }
}

/// The IO threads of a started engine.
pub struct RunningEngine {
    threads: Vec<JoinHandle<()>>,
    shutdown: ShutdownHandle,
    connector: Connector,
    signals: Option<SignalWaiter>,
    backend: &'static str,
    /// Unix socket files to remove once the IO threads have exited (unless a restart's
    /// successor took the sockets over).
    unix_paths: Vec<PathBuf>,
}

impl RunningEngine {
    /// Opens outgoing connections through the engine's IO threads.
    pub fn connector(&self) -> Connector {
        self.connector.clone()
    }
    /// A handle that shuts the engine down from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }
    /// The backend in use: `"uring"`, `"epoll"`, `"iocp"` or `"poll"`.
    pub fn backend_name(&self) -> &'static str {
        self.backend
    }
    /// Waits until every IO thread has exited (after a shutdown, from a handle or a signal).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(s) = self.signals {
            s.stop();
        }
        // A retired process's successor serves on the same sockets: their files stay.
        if !self.shutdown.retired() {
            for p in &self.unix_paths {
                sys::remove_socket_file(p);
            }
        }
    }
}

/// Where a listener listens: its TCP address or its Unix socket path (`None`: neither can be
/// read).
fn listen_addr_of(l: &TcpListener) -> Option<ListenAddr> {
    match l.local_addr() {
        Ok(a) => Some(ListenAddr::Tcp(a)),
        Err(_) => sys::unix_listener_path(l).map(ListenAddr::Unix),
    }
}

/// The result of starting the IO threads.
type Spawned = (
    Vec<JoinHandle<()>>,
    Vec<Arc<inbox::ThreadShared>>,
    Option<io::Error>,
);
