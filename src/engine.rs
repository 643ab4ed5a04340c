//! The engine: IO threads, their connection tables, limits, timers and shutdown.
//!
//! Each IO thread owns one [`Backend`] (a ring, or an epoll instance), one listener per server
//! (SO_REUSEPORT: the kernel spreads incoming connections over the threads, no acceptor thread
//! and no hand-off), and every connection accepted on its listeners, for that connection's whole
//! life. One loop turn, read top to bottom in [`IoThread::run`]:
//!
//! 1. `wait`: submit what is queued and wait for completions (one syscall on io_uring);
//! 2. drain the completions, running handler callbacks; callbacks only queue work;
//! 3. drain the inbox (writes and closes from other threads);
//! 4. retry held frames, run timers (idle timeout, linger, accept back-off, shutdown deadline);
//! 5. flush every connection touched this turn: at most one send each, read pause/resume,
//!    closes. This is where batching happens.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tracing::{debug, error, info, warn};

use crate::codec::Decoder;
use crate::conn::{ConnCore, DynConn, Phase, Typed};
use crate::handle::{Msg, ThreadShared};
use crate::stats::{ServerStats, ThreadStats};
use crate::sys::{self, Backend, BackendConfig, Event, Token};
use crate::{BackendKind, CloseReason, Conn, ConnInfo, Error, Handler};

/// Default maximum of open connections per server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default write-queue high watermark: above it, the connection stops reading.
pub const DEFAULT_WRITE_HIGH: usize = 1 << 20;
/// Default write-queue low watermark: below it, reading resumes.
pub const DEFAULT_WRITE_LOW: usize = 256 << 10;
/// Default limit of received-but-undecoded bytes per connection.
pub const DEFAULT_MAX_BUFFERED_INPUT: usize = 8 << 20;
/// How long a gracefully closed connection keeps reading (and discarding) after shutting down
/// its write side, so that unread input does not turn the last reply into a reset.
pub const LINGER: Duration = Duration::from_secs(2);
/// Longest accept back-off after EMFILE / ENFILE / ENOBUFS / ENOMEM.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// A closing connection whose queued bytes make no progress for this long (the peer does not
/// read) is reset instead of waiting forever.
pub const FLUSH_STALL: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(100);
const HELD_RETRY: Duration = Duration::from_millis(2);
/// Inbox messages handled per loop turn (the rest wait for the next turn).
const INBOX_BATCH: usize = 4096;

type Factory = Arc<dyn Fn(&ConnInfo) -> Box<dyn DynConn> + Send + Sync>;

/// One server: an address, a decoder, a handler factory and its limits.
pub struct Server {
    addr: SocketAddr,
    factory: Factory,
    limits: Limits,
}

#[derive(Debug, Clone)]
struct Limits {
    max_connections: usize,
    idle_timeout: Option<Duration>,
    write_high: usize,
    write_low: usize,
    max_buffered_input: usize,
    backlog: i32,
}

impl Server {
    /// A server on `addr` (port 0: any free port) decoding with `codec` (cloned per
    /// connection) and making each connection's handler with `factory`.
    pub fn new<D, H, F>(addr: SocketAddr, codec: D, factory: F) -> Server
    where
        D: Decoder + Sync,
        H: Handler,
        F: Fn(&ConnInfo) -> H + Send + Sync + 'static,
    {
        let factory: Factory =
            Arc::new(move |info| Box::new(Typed::new(factory(info), codec.clone())));
        Server {
            addr,
            factory,
            limits: Limits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                idle_timeout: None,
                write_high: DEFAULT_WRITE_HIGH,
                write_low: DEFAULT_WRITE_LOW,
                max_buffered_input: DEFAULT_MAX_BUFFERED_INPUT,
                backlog: 1024,
            },
        }
    }

    /// Open connections allowed; beyond it a new connection is accepted and closed at once
    /// (counted as `rejected`). Default [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n;
        self
    }

    /// Closes a connection on which nothing was received and no send completed for this long.
    /// Default: off.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// Write-queue watermarks in bytes: above `high` the connection stops reading until the
    /// queue drains to `low`, so a peer that never reads cannot grow server memory.
    pub fn write_watermarks(mut self, low: usize, high: usize) -> Self {
        self.limits.write_low = low.min(high);
        self.limits.write_high = high;
        self
    }

    /// Received-but-undecoded bytes a connection may hold (a partial frame, or input held back
    /// while paused); beyond it the connection closes with a protocol error.
    pub fn max_buffered_input(mut self, bytes: usize) -> Self {
        self.limits.max_buffered_input = bytes;
        self
    }

    /// The listen(2) backlog of each listener.
    pub fn backlog(mut self, n: i32) -> Self {
        self.limits.backlog = n;
        self
    }
}

/// Reads a running server's address and counters.
#[derive(Clone)]
pub struct ServerHandle {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
}

impl ServerHandle {
    /// The address the server listens on (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }
}

/// Builds an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    io_threads: usize,
    backend: Option<BackendKind>,
    drain_timeout: Duration,
    recv_buffer_size: usize,
    recv_buffer_count: u16,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            io_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backend: None,
            drain_timeout: Duration::from_secs(5),
            recv_buffer_size: 16 << 10,
            recv_buffer_count: 512,
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
    /// How long a shutdown waits for queued bytes to flush before resetting what is left.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }
    /// Bytes per receive (each provided buffer on io_uring; the scratch buffer on epoll).
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer_size = bytes;
        self
    }
    /// io_uring: receive buffers per IO thread (rounded up to a power of two).
    pub fn recv_buffer_count(mut self, n: u16) -> Self {
        self.recv_buffer_count = n;
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
        Ok(Engine {
            cfg: self,
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
}

/// IO threads and the servers they run. Add servers, then [`Engine::run`] (or
/// [`Engine::start`] to keep control of the calling thread).
pub struct Engine {
    cfg: EngineBuilder,
    kind: BackendKind,
    bcfg: BackendConfig,
    servers: Vec<ServerSpec>,
    signals: Option<sys::signals::Signals>,
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

    /// Binds a server's listeners (one per IO thread, SO_REUSEPORT). Connections queue in the
    /// kernel's backlog from now on and are accepted once the engine runs.
    pub fn add_server(&mut self, server: Server) -> Result<ServerHandle, Error> {
        let n = self.cfg.io_threads;
        let listeners =
            sys::bind_listeners(server.addr, server.limits.backlog, n).map_err(|source| {
                Error::Listen {
                    addr: server.addr,
                    source,
                }
            })?;
        let addr = listeners[0].local_addr()?; // port 0: the port the first got
        let stats = ServerStats::new(n);
        self.servers.push(ServerSpec {
            factory: server.factory,
            limits: server.limits,
            stats: stats.clone(),
            listeners,
        });
        Ok(ServerHandle { addr, stats })
    }

    /// Registers the SIGINT/SIGTERM handlers that [`Engine::run`] waits on, now rather than
    /// when `run` starts: call it before announcing the server (a signal that arrives after the
    /// announcement must find the handler in place), and before descriptors may run out.
    pub fn catch_signals(&mut self) -> Result<(), Error> {
        if self.signals.is_none() {
            self.signals = Some(sys::signals::Signals::new()?);
        }
        Ok(())
    }

    /// Starts the IO threads; returns at once.
    pub fn start(self) -> Result<RunningEngine, Error> {
        let n = self.cfg.io_threads;
        let mut specs: Vec<Vec<Option<TcpListener>>> = self
            .servers
            .iter()
            .map(|_| (0..n).map(|_| None).collect())
            .collect();
        let mut servers = Vec::new();
        for (si, spec) in self.servers.into_iter().enumerate() {
            for (t, l) in spec.listeners.into_iter().enumerate() {
                specs[si][t] = Some(l);
            }
            servers.push(Arc::new(SharedServer {
                factory: Some(spec.factory),
                limits: spec.limits,
                stats: spec.stats,
            }));
        }
        // Outgoing connections count under one more "server" of their own.
        let client_stats = ServerStats::new(n);
        servers.push(Arc::new(SharedServer {
            factory: None,
            limits: Server::new(([0, 0, 0, 0], 0).into(), crate::codec::Raw, |_| NoHandler).limits,
            stats: client_stats.clone(),
        }));
        let mut inboxes = Vec::new();
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), io::Error>>(n);
        for t in 0..n {
            let (tx, rx) = crossbeam_channel::unbounded();
            let listeners: Vec<TcpListener> = specs
                .iter_mut()
                .map(|per_thread| per_thread[t].take().expect("one listener per thread"))
                .collect();
            let servers = servers.clone();
            let kind = self.kind;
            let bcfg = self.bcfg.clone();
            let drain = self.cfg.drain_timeout;
            let ready = ready_tx.clone();
            let (shared_tx, shared_rx) = crossbeam_channel::bounded(1);
            let tx2 = tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("ringport-io-{t}"))
                .spawn(move || {
                    let backend = match sys::open(kind, &bcfg) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let shared = Arc::new(ThreadShared {
                        tx: tx2,
                        waker: backend.waker(),
                    });
                    let _ = shared_tx.send(shared.clone());
                    match IoThread::new(t, backend, servers, listeners, shared, rx, drain) {
                        Ok(io) => {
                            let _ = ready.send(Ok(()));
                            io.run();
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })?;
            threads.push(h);
            inboxes.push((tx, shared_rx));
        }
        drop(ready_tx);
        let mut shareds = Vec::new();
        let mut failure = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(io::Error::other("an IO thread died while starting")),
            }
        }
        for (_, shared_rx) in &inboxes {
            if let Ok(s) = shared_rx.try_recv() {
                shareds.push(s);
            }
        }
        let running = RunningEngine {
            threads,
            connector: Connector {
                threads: shareds.clone(),
                next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                stats: client_stats,
            },
            shutdown: ShutdownHandle { threads: shareds },
        };
        if let Some(e) = failure {
            running.shutdown.shutdown();
            running.join();
            return Err(Error::Io(e));
        }
        Ok(running)
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully: stops accepting, flushes and
    /// closes connections (resetting what is left at the drain deadline), joins the threads.
    pub fn run(mut self) -> Result<(), Error> {
        self.catch_signals()?;
        let mut signals = self.signals.take().expect("signals registered");
        let running = self.start()?;
        let handle = signals.handle();
        let shutdown = running.shutdown_handle();
        let waiter = std::thread::Builder::new()
            .name("ringport-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.wait() {
                    // Logged once every IO thread has closed its listeners (or after 1 s, if
                    // a handler blocks one): from this line on, nothing new is accepted.
                    let all = shutdown.shutdown_and_wait(Duration::from_secs(1));
                    info!(
                        signal = sig,
                        stopped_accepting = all,
                        "shutting down: draining connections"
                    );
                }
            })?;
        running.join();
        handle.close();
        let _ = waiter.join();
        Ok(())
    }
}

/// The IO threads of a started engine.
pub struct RunningEngine {
    threads: Vec<JoinHandle<()>>,
    shutdown: ShutdownHandle,
    connector: Connector,
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
    /// Waits until every IO thread has exited (after a shutdown).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Opens outgoing connections, served by the engine's IO threads and backend exactly like
/// accepted ones (same handler API, same limits machinery). Cheap to clone, usable from any
/// thread.
#[derive(Clone)]
pub struct Connector {
    threads: Vec<Arc<ThreadShared>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    stats: Arc<ServerStats>,
}

impl Connector {
    /// Connects to `addr` on the next IO thread (round robin). When connected, `handler`'s
    /// `on_open` runs; if the connect fails (refused, unreachable) or `timeout` passes first,
    /// only `on_close` runs, with [`CloseReason::Io`] saying why. Fails only if the engine has
    /// stopped.
    pub fn connect<D, H>(
        &self,
        addr: SocketAddr,
        codec: D,
        handler: H,
        timeout: Option<Duration>,
    ) -> Result<(), crate::HandleError>
    where
        D: Decoder,
        H: Handler + Send,
    {
        let make: crate::handle::ConnMaker =
            Box::new(move |_| Box::new(Typed::new(handler, codec)) as Box<dyn DynConn>);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len().max(1);
        let msg = Msg::Connect {
            addr,
            make,
            timeout,
        };
        match self.threads.get(i) {
            Some(t) if t.send(msg) => Ok(()),
            _ => Err(crate::HandleError::Closed),
        }
    }

    /// Counters of the outgoing connections (`accepted` counts connections opened).
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }
}

/// The handler type of the outgoing-connection pseudo-server's defaults (never called).
struct NoHandler;
impl Handler for NoHandler {
    fn on_frame(&mut self, _: &mut Conn<'_>, _: crate::Frame<'_>) {}
}

/// Starts a graceful shutdown of an engine from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    threads: Vec<Arc<ThreadShared>>,
}

impl ShutdownHandle {
    /// Stops accepting, flushes and closes every connection, then the IO threads exit.
    pub fn shutdown(&self) {
        for t in &self.threads {
            t.send(Msg::Shutdown { ack: None });
        }
    }

    /// [`ShutdownHandle::shutdown`], then waits up to `timeout` until every IO thread has
    /// closed its listeners; `true` if all did (no new connection is accepted from then on).
    pub fn shutdown_and_wait(&self, timeout: Duration) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(self.threads.len());
        let sent = self
            .threads
            .iter()
            .filter(|t| {
                t.send(Msg::Shutdown {
                    ack: Some(tx.clone()),
                })
            })
            .count();
        let deadline = Instant::now() + timeout;
        (0..sent).all(|_| rx.recv_deadline(deadline).is_ok())
    }
}

/// What every IO thread knows of a server.
struct SharedServer {
    /// `None` for the outgoing-connection pseudo-server (its handlers come with each connect).
    factory: Option<Factory>,
    limits: Limits,
    stats: Arc<ServerStats>,
}

/// Reusable send buffers of one IO thread ("pooled buffers").
pub(crate) struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    const KEEP: usize = 256;
    const MAX_CAPACITY: usize = 64 << 10;

    pub(crate) fn get(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(4096))
    }

    pub(crate) fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= Self::MAX_CAPACITY && self.free.len() < Self::KEEP {
            buf.clear();
            self.free.push(buf);
        }
    }
}

/// The part of an IO thread's state that callbacks may touch through [`Conn`].
pub(crate) struct ThreadCtx {
    pub bufs: BufPool,
    pub dirty: Vec<Token>,
    pub shared: Arc<ThreadShared>,
    pub now: Instant,
    thread: usize,
    stats: Vec<Arc<ServerStats>>,
}

impl ThreadCtx {
    pub(crate) fn mark_dirty(&mut self, token: Token, core: &mut ConnCore) {
        if !core.dirty {
            core.dirty = true;
            self.dirty.push(token);
        }
    }

    pub(crate) fn stats(&self, server: usize) -> &ThreadStats {
        &self.stats[server].threads[self.thread]
    }
}

struct Entry {
    core: ConnCore,
    app: Box<dyn DynConn>,
}

struct Slot {
    gen: u64,
    entry: Option<Entry>,
}

struct ListenerState {
    backoff: Duration,
    resume_at: Option<Instant>,
    last_warn: Option<Instant>,
}

/// Everything of an IO thread but its backend (split so completions can borrow the backend
/// while callbacks mutate this).
struct State {
    index: usize,
    slots: Vec<Slot>,
    free: Vec<Token>,
    live: usize,
    next_id: u64,
    ctx: ThreadCtx,
    servers: Vec<Arc<SharedServer>>,
    listeners: Vec<ListenerState>,
    held: Vec<Token>,
    /// The inbox held more than one batch at the last drain.
    inbox_backlog: bool,
    drain: Duration,
    shutdown_deadline: Option<Instant>,
    last_tick: Instant,
}

struct IoThread {
    backend: Box<dyn Backend>,
    st: State,
    rx: Receiver<Msg>,
}

impl IoThread {
    fn new(
        index: usize,
        mut backend: Box<dyn Backend>,
        servers: Vec<Arc<SharedServer>>,
        listeners: Vec<TcpListener>,
        shared: Arc<ThreadShared>,
        rx: Receiver<Msg>,
        drain: Duration,
    ) -> io::Result<Self> {
        let n = listeners.len();
        for (id, l) in listeners.into_iter().enumerate() {
            backend.add_listener(id, l)?;
        }
        let now = Instant::now();
        Ok(IoThread {
            backend,
            rx,
            st: State {
                index,
                slots: Vec::new(),
                free: Vec::new(),
                live: 0,
                next_id: 0,
                ctx: ThreadCtx {
                    bufs: BufPool { free: Vec::new() },
                    dirty: Vec::new(),
                    shared,
                    now,
                    thread: index,
                    stats: servers.iter().map(|s| s.stats.clone()).collect(),
                },
                servers,
                listeners: (0..n)
                    .map(|_| ListenerState {
                        backoff: Duration::ZERO,
                        resume_at: None,
                        last_warn: None,
                    })
                    .collect(),
                held: Vec::new(),
                inbox_backlog: false,
                drain,
                shutdown_deadline: None,
                last_tick: now,
            },
        })
    }

    fn run(mut self) {
        debug!(
            thread = self.st.index,
            backend = self.backend.name(),
            "IO thread started"
        );
        loop {
            let timeout = self.st.next_timeout();
            if let Err(e) = self.backend.wait(timeout) {
                error!(thread = self.st.index, error = %e, "backend wait failed; stopping this IO thread");
                break;
            }
            self.st.ctx.now = Instant::now();
            self.drain_completions();
            self.drain_inbox();
            self.retry_held();
            self.timers();
            self.flush();
            if let Some(deadline) = self.st.shutdown_deadline {
                if self.st.live == 0 || self.st.ctx.now >= deadline + Duration::from_secs(1) {
                    break;
                }
            }
        }
        self.backend.close_listeners();
        self.backend.shutdown(Duration::from_secs(1));
        // Connections the backend could not close in time still get their callback.
        for slot in &mut self.st.slots {
            if let Some(mut e) = slot.entry.take() {
                let reason = e.core.reason.take().unwrap_or(CloseReason::Shutdown);
                self.st.ctx.stats(e.core.server).closed[reason.index()].add(1);
                self.st.servers[e.core.server]
                    .stats
                    .active
                    .fetch_sub(1, Ordering::Relaxed);
                e.app.closed(&e.core.info, &reason);
            }
        }
        debug!(thread = self.st.index, "IO thread stopped");
    }

    fn drain_completions(&mut self) {
        loop {
            match self.backend.next() {
                None => break,
                Some(Event::Data { token, data }) => self.st.on_data(token, data),
                Some(Event::Accepted { listener, stream }) => self.on_accept(listener, stream),
                Some(Event::AcceptError { listener, error }) => {
                    self.st.on_accept_error(listener, error)
                }
                Some(Event::ReadClosed { token }) => self.st.on_read_closed(token),
                Some(Event::ReadError { token, error }) => self.st.on_io_error(token, &error),
                Some(Event::SendDone { token, buf }) => self.st.on_send_done(token, buf),
                Some(Event::SendError { token, error, buf }) => {
                    self.st.ctx.bufs.put(buf);
                    self.st.on_io_error(token, &error);
                }
                Some(Event::Connected { token, result }) => match result {
                    Ok(()) => self.st.on_connected(token),
                    Err(e) => self.st.on_io_error(token, &e),
                },
                Some(Event::Closed { token }) => self.st.on_closed(token),
                Some(Event::Wake) => {}
            }
        }
    }

    fn on_accept(&mut self, listener: usize, stream: TcpStream) {
        let st = &mut self.st;
        let server = st.servers[listener].clone();
        let stats = st.ctx.stats(listener);
        stats.accepted.add(1);
        st.listeners[listener].backoff = Duration::ZERO;
        if st.shutdown_deadline.is_some() {
            return; // dropping the stream closes it
        }
        let active = server.stats.active.fetch_add(1, Ordering::Relaxed);
        if active >= server.limits.max_connections {
            server.stats.active.fetch_sub(1, Ordering::Relaxed);
            stats.rejected.add(1);
            debug!(
                max = server.limits.max_connections,
                "connection limit reached; closing new connection"
            );
            return;
        }
        let _ = stream.set_nodelay(true);
        let (peer, local) = match (stream.peer_addr(), stream.local_addr()) {
            (Ok(p), Ok(l)) => (p, l),
            (Err(e), _) | (_, Err(e)) => {
                // The peer vanished between the kernel's accept and ours: its connection only.
                server.stats.active.fetch_sub(1, Ordering::Relaxed);
                stats.closed[CloseReason::from_io(&e).index()].add(1);
                debug!(error = %e, "accepted connection already gone");
                return;
            }
        };
        st.next_id += 1;
        let info = ConnInfo {
            peer,
            local,
            id: ((st.index as u64) << 48) | st.next_id,
        };
        // The handler first: a factory that panics costs this connection only.
        let Some(factory) = server.factory.as_ref() else {
            return;
        };
        let app = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory(&info))) {
            Ok(app) => app,
            Err(_) => {
                error!(%peer, "handler factory panicked; closing the new connection");
                server.stats.active.fetch_sub(1, Ordering::Relaxed);
                st.ctx.stats(listener).closed[CloseReason::HandlerPanic.index()].add(1);
                return;
            }
        };
        let token = st.alloc_slot();
        if let Err(e) = self.backend.register(token, stream) {
            warn!(%peer, error = %e, "cannot register connection; closing it");
            server.stats.active.fetch_sub(1, Ordering::Relaxed);
            st.ctx.stats(listener).closed[CloseReason::from_io(&e).index()].add(1);
            st.free.push(token);
            return;
        }
        let slot = &mut st.slots[token];
        let core = ConnCore::new(listener, slot.gen, info, st.ctx.now);
        let entry = slot.entry.insert(Entry { core, app });
        st.live += 1;
        let mut conn = Conn {
            core: &mut entry.core,
            ctx: &mut st.ctx,
            token,
        };
        entry.app.open(&mut conn);
        st.ctx.mark_dirty(token, &mut entry.core);
    }

    fn drain_inbox(&mut self) {
        // More than a batch waiting: come back without sleeping (the wake-up was consumed).
        self.st.inbox_backlog = self.rx.len() > INBOX_BATCH;
        for _ in 0..INBOX_BATCH {
            let Ok(msg) = self.rx.try_recv() else { break };
            match msg {
                Msg::Shutdown { ack } => {
                    self.begin_shutdown();
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                Msg::Connect {
                    addr,
                    make,
                    timeout,
                } => self.start_connect(addr, make, timeout),
                Msg::Write { token, gen, data } => {
                    if let Some(e) = entry_gen(&mut self.st.slots, token, gen) {
                        if matches!(e.core.phase, Phase::Open | Phase::Closing) {
                            if e.core.out.is_empty() {
                                e.core.out = data;
                            } else {
                                e.core.out.extend_from_slice(&data);
                            }
                            self.st.ctx.mark_dirty(token, &mut e.core);
                        }
                    }
                }
                Msg::Close { token, gen, abort } => {
                    if let Some(e) = entry_gen(&mut self.st.slots, token, gen) {
                        if abort {
                            e.core.begin_abort(CloseReason::Local);
                        } else {
                            e.core.begin_close(CloseReason::Local);
                        }
                        self.st.ctx.mark_dirty(token, &mut e.core);
                    }
                }
                Msg::Notify { token, gen, value } => {
                    if let Some(e) = entry_gen(&mut self.st.slots, token, gen) {
                        let mut conn = Conn {
                            core: &mut e.core,
                            ctx: &mut self.st.ctx,
                            token,
                        };
                        e.app.notify(&mut conn, value);
                        self.st.ctx.mark_dirty(token, &mut e.core);
                    }
                }
                Msg::Resume { token, gen } => {
                    if let Some(e) = entry_gen(&mut self.st.slots, token, gen) {
                        e.core.user_paused = false;
                        self.st.ctx.mark_dirty(token, &mut e.core);
                    }
                }
            }
        }
    }

    fn start_connect(
        &mut self,
        addr: SocketAddr,
        make: crate::handle::ConnMaker,
        timeout: Option<Duration>,
    ) {
        use socket2::{Domain, Protocol, Socket, Type};
        let st = &mut self.st;
        let server = st.servers.len() - 1;
        st.next_id += 1;
        let info = ConnInfo {
            peer: addr,
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
            id: ((st.index as u64) << 48) | st.next_id,
        };
        let mut app = make(&info);
        st.ctx.stats(server).accepted.add(1);
        if st.shutdown_deadline.is_some() {
            st.ctx.stats(server).closed[CloseReason::Shutdown.index()].add(1);
            app.closed(&info, &CloseReason::Shutdown);
            return;
        }
        let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        {
            Ok(s) => s,
            Err(e) => {
                let reason = CloseReason::from_io(&e);
                st.ctx.stats(server).closed[reason.index()].add(1);
                app.closed(&info, &reason);
                return;
            }
        };
        let _ = socket.set_tcp_nodelay(true);
        st.servers[server]
            .stats
            .active
            .fetch_add(1, Ordering::Relaxed);
        let token = st.alloc_slot();
        let slot = &mut st.slots[token];
        let mut core = ConnCore::new(server, slot.gen, info, st.ctx.now);
        core.connecting = true;
        core.reading = false;
        core.connect_deadline = timeout.map(|t| st.ctx.now + t);
        slot.entry = Some(Entry { core, app });
        st.live += 1;
        self.backend.connect(token, socket, addr);
    }

    fn begin_shutdown(&mut self) {
        if self.st.shutdown_deadline.is_some() {
            return;
        }
        self.st.shutdown_deadline = Some(self.st.ctx.now + self.st.drain);
        self.backend.close_listeners();
        debug!(
            thread = self.st.index,
            connections = self.st.live,
            "stopped accepting; draining"
        );
        for (token, slot) in self.st.slots.iter_mut().enumerate() {
            if let Some(e) = slot.entry.as_mut() {
                e.core.set_reason(CloseReason::Shutdown); // whoever closes it from now on
                if e.core.phase == Phase::Open {
                    let mut conn = Conn {
                        core: &mut e.core,
                        ctx: &mut self.st.ctx,
                        token,
                    };
                    e.app.shutdown(&mut conn);
                }
                self.st.ctx.mark_dirty(token, &mut e.core);
            }
        }
    }

    fn retry_held(&mut self) {
        let held = std::mem::take(&mut self.st.held);
        for token in held {
            if let Some(e) = self.st.slots[token].entry.as_mut() {
                e.core.held = false;
                self.st.ctx.mark_dirty(token, &mut e.core);
            }
        }
    }

    fn timers(&mut self) {
        let now = self.st.ctx.now;
        for (id, l) in self.st.listeners.iter_mut().enumerate() {
            if l.resume_at.is_some_and(|t| t <= now) && self.st.shutdown_deadline.is_none() {
                l.resume_at = None;
                self.backend.resume_accept(id);
            }
        }
        if now.duration_since(self.st.last_tick) < TICK && self.st.shutdown_deadline.is_none() {
            return;
        }
        self.st.last_tick = now;
        let past_deadline = self.st.shutdown_deadline.is_some_and(|d| now >= d);
        for (token, slot) in self.st.slots.iter_mut().enumerate() {
            let Some(e) = slot.entry.as_mut() else {
                continue;
            };
            let c = &mut e.core;
            if c.connecting && c.connect_deadline.is_some_and(|d| d <= now) {
                c.begin_abort(CloseReason::Io(
                    io::ErrorKind::TimedOut,
                    "connect timed out".into(),
                ));
                self.st.ctx.mark_dirty(token, c);
                continue;
            }
            let idle = self.st.servers[c.server].limits.idle_timeout;
            match c.phase {
                Phase::Open if idle.is_some_and(|t| now.duration_since(c.last_active) >= t) => {
                    debug!(peer = %c.info.peer, "idle timeout");
                    c.begin_close(CloseReason::IdleTimeout);
                    self.st.ctx.mark_dirty(token, c);
                }
                Phase::Closing if now.duration_since(c.last_active) >= FLUSH_STALL => {
                    debug!(peer = %c.info.peer, "closing connection made no progress; resetting");
                    c.begin_abort(CloseReason::Local);
                    self.st.ctx.mark_dirty(token, c);
                }
                Phase::Lingering(until) if until <= now => {
                    c.read_closed = true; // stop waiting for the peer's EOF
                    self.st.ctx.mark_dirty(token, c);
                }
                _ => {}
            }
            if past_deadline && !matches!(c.phase, Phase::Closed | Phase::Aborting) {
                c.begin_abort(CloseReason::Shutdown);
                self.st.ctx.mark_dirty(token, c);
            }
        }
    }

    /// Applies what the turn's callbacks asked for: one send per connection, read
    /// pause/resume, closes. Re-delivering held-back input can dirty connections again, so this
    /// runs a few rounds; anything left is picked up next turn.
    fn flush(&mut self) {
        for _ in 0..4 {
            if self.st.ctx.dirty.is_empty() {
                return;
            }
            let dirty = std::mem::take(&mut self.st.ctx.dirty);
            for &token in &dirty {
                self.flush_one(token);
            }
            let mut dirty = dirty;
            dirty.clear();
            if self.st.ctx.dirty.is_empty() {
                self.st.ctx.dirty = dirty; // keep the allocation
            }
        }
    }

    fn flush_one(&mut self, token: Token) {
        let st = &mut self.st;
        let Some(e) = st.slots[token].entry.as_mut() else {
            return;
        };
        e.core.dirty = false;
        // Input held back (paused, held frame) is delivered first once frames are wanted again.
        if e.core.wants_frames() && !e.core.rbuf.is_empty() {
            st.pump(token);
        }
        st.deliver_eof(token);
        let Some(e) = st.slots[token].entry.as_mut() else {
            return;
        };
        let c = &mut e.core;
        if c.held && !st.held.contains(&token) {
            st.held.push(token); // held outside on_frame: still retried, never a silent stall
        }
        if c.phase == Phase::Aborting {
            c.set_phase(Phase::Closed);
            self.backend.close(token, true);
            return;
        }
        if c.phase == Phase::Closed {
            return;
        }
        if c.connecting {
            if c.phase != Phase::Open {
                // Closed before it connected: nothing to flush.
                c.set_phase(Phase::Closed);
                self.backend.close(token, false);
            }
            return; // nothing is sent or read before the connect completes
        }
        // One send in flight per connection; everything queued meanwhile goes in the next.
        if c.inflight == 0 && !c.out.is_empty() && matches!(c.phase, Phase::Open | Phase::Closing) {
            let buf = std::mem::take(&mut c.out);
            c.inflight = buf.len();
            self.backend.send(token, buf);
        }
        if c.phase == Phase::Open {
            let limits = &st.servers[c.server].limits;
            let queued = c.queued();
            if !c.bp_paused && queued > limits.write_high {
                c.bp_paused = true;
                st.ctx.stats(c.server).backpressure_pauses.add(1);
                debug!(peer = %c.info.peer, queued, "write queue above high watermark; pausing reads");
            } else if c.bp_paused && queued <= limits.write_low {
                c.bp_paused = false;
            }
        }
        if c.phase == Phase::Closing && c.inflight == 0 && c.out.is_empty() {
            if c.read_closed {
                c.set_phase(Phase::Closed);
                self.backend.close(token, false);
                return;
            }
            // Flushed: shut our side, then read (and discard) until EOF or the linger ends.
            self.backend.shutdown_write(token);
            let mut until = st.ctx.now + LINGER;
            if let Some(d) = st.shutdown_deadline {
                until = until.min(d);
            }
            c.set_phase(Phase::Lingering(until));
            c.rbuf = Vec::new();
        }
        if matches!(c.phase, Phase::Lingering(_)) && c.read_closed {
            c.set_phase(Phase::Closed);
            self.backend.close(token, false);
            return;
        }
        let want_read = match c.phase {
            Phase::Open => {
                !c.user_paused && !c.bp_paused && !c.held && !c.read_closed && !c.decode_failed
            }
            Phase::Lingering(_) => !c.read_closed,
            _ => false,
        };
        if want_read != c.reading {
            c.reading = want_read;
            self.backend.set_reading(token, want_read);
        }
    }
}

/// The live connection in slot `token`, if it is still generation `gen`.
fn entry_gen(slots: &mut [Slot], token: Token, gen: u64) -> Option<&mut Entry> {
    let slot = slots.get_mut(token)?;
    if slot.gen != gen {
        return None;
    }
    slot.entry.as_mut()
}

impl State {
    fn alloc_slot(&mut self) -> Token {
        match self.free.pop() {
            Some(t) => t,
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    entry: None,
                });
                self.slots.len() - 1
            }
        }
    }

    fn on_connected(&mut self, token: Token) {
        let Some(e) = self.slots.get_mut(token).and_then(|s| s.entry.as_mut()) else {
            return;
        };
        e.core.connecting = false;
        e.core.connect_deadline = None;
        e.core.reading = true; // the backend reads once connected
        if e.core.phase == Phase::Open {
            let mut conn = Conn {
                core: &mut e.core,
                ctx: &mut self.ctx,
                token,
            };
            e.app.open(&mut conn);
        }
        self.ctx.mark_dirty(token, &mut e.core);
    }
    fn next_timeout(&self) -> Option<Duration> {
        if !self.ctx.dirty.is_empty() || self.inbox_backlog {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut t: Option<Duration> = None;
        let mut at_most = |d: Duration| t = Some(t.map_or(d, |x| x.min(d)));
        if !self.held.is_empty() {
            at_most(HELD_RETRY);
        }
        for l in &self.listeners {
            if let Some(r) = l.resume_at {
                at_most(r.saturating_duration_since(now));
            }
        }
        if self.live > 0 || self.shutdown_deadline.is_some() {
            at_most(TICK.saturating_sub(now.duration_since(self.last_tick)));
        }
        t
    }

    /// Delivers input, straight from the backend's buffer when nothing is held back (the
    /// common case: no copy), else after appending it to what is.
    fn on_data(&mut self, token: Token, data: &[u8]) {
        let Some(e) = self.slots.get_mut(token).and_then(|s| s.entry.as_mut()) else {
            return;
        };
        let c = &mut e.core;
        self.ctx.stats[c.server].threads[self.index]
            .bytes_in
            .add(data.len() as u64);
        c.last_active = self.ctx.now;
        if c.phase != Phase::Open || c.decode_failed {
            return; // closing, or past a decode error: input is read and discarded
        }
        if c.rbuf.is_empty() {
            let mut conn = Conn {
                core: c,
                ctx: &mut self.ctx,
                token,
            };
            let used = e.app.data(&mut conn, data);
            if used < data.len() {
                if e.core.rbuf.capacity() == 0 {
                    e.core.rbuf = Vec::with_capacity((data.len() - used).max(512));
                }
                e.core.rbuf.extend_from_slice(&data[used..]);
            }
        } else {
            c.rbuf.extend_from_slice(data);
            self.pump(token);
        }
        self.after_input(token);
    }

    /// Runs the decoder over the held-back input of `token`.
    fn pump(&mut self, token: Token) {
        let Some(e) = self.slots[token].entry.as_mut() else {
            return;
        };
        let buf = std::mem::take(&mut e.core.rbuf);
        let mut conn = Conn {
            core: &mut e.core,
            ctx: &mut self.ctx,
            token,
        };
        let used = e.app.data(&mut conn, &buf);
        let mut buf = buf;
        if e.core.phase != Phase::Open || used == buf.len() {
            // Nothing left to keep: release the memory (idle connections hold no buffer).
        } else {
            buf.drain(..used);
            e.core.rbuf = buf;
        }
        self.after_input(token);
    }

    fn after_input(&mut self, token: Token) {
        let Some(e) = self.slots[token].entry.as_mut() else {
            return;
        };
        let c = &mut e.core;
        let limit = self.servers[c.server].limits.max_buffered_input;
        // Held-back input (paused, held frame) is bounded by what the backend had in flight
        // when reading stopped; the limit is for input the decoder could not use.
        if c.rbuf.len() > limit && c.wants_frames() {
            warn!(peer = %c.info.peer, buffered = c.rbuf.len(), limit, "closing connection: too much undecoded input");
            c.rbuf = Vec::new();
            c.begin_close(CloseReason::Protocol(format!(
                "more than {limit} bytes of undecoded input"
            )));
        }
        // Only a state change needs a flush (writes, closes and pauses mark the connection
        // themselves): re-marking a connection whose input is just an incomplete frame would
        // spin the loop until the rest of the frame arrives.
        if c.held && !self.held.contains(&token) {
            self.held.push(token);
            self.ctx.mark_dirty(token, c);
        }
        if c.phase != Phase::Open {
            self.ctx.mark_dirty(token, c);
        }
    }

    fn on_read_closed(&mut self, token: Token) {
        let Some(e) = self.slots.get_mut(token).and_then(|s| s.entry.as_mut()) else {
            return;
        };
        e.core.read_closed = true;
        e.core.reading = false;
        if e.core.phase == Phase::Open {
            e.core.set_reason(CloseReason::PeerClosed);
            e.core.eof_pending = true;
            // Frames already received are delivered before the half-close is.
            if !e.core.rbuf.is_empty() && e.core.wants_frames() {
                self.pump(token);
            }
            self.deliver_eof(token);
        }
        let Some(e) = self.slots[token].entry.as_mut() else {
            return;
        };
        self.ctx.mark_dirty(token, &mut e.core);
    }

    /// Tells the handler of a half-close once every complete frame before it was delivered
    /// (frames held back by a pause wait, and so does the EOF).
    fn deliver_eof(&mut self, token: Token) {
        let Some(e) = self.slots[token].entry.as_mut() else {
            return;
        };
        if !e.core.eof_pending || !e.core.wants_frames() {
            return;
        }
        e.core.eof_pending = false;
        let mut conn = Conn {
            core: &mut e.core,
            ctx: &mut self.ctx,
            token,
        };
        e.app.read_closed(&mut conn);
    }

    fn on_io_error(&mut self, token: Token, error: &io::Error) {
        let Some(e) = self.slots.get_mut(token).and_then(|s| s.entry.as_mut()) else {
            return;
        };
        let reason = CloseReason::from_io(error);
        debug!(peer = %e.core.info.peer, %error, "connection error");
        e.core.read_closed = true;
        e.core.reading = false;
        e.core.begin_abort(reason);
        self.ctx.mark_dirty(token, &mut e.core);
    }

    fn on_send_done(&mut self, token: Token, buf: Vec<u8>) {
        let Some(e) = self.slots.get_mut(token).and_then(|s| s.entry.as_mut()) else {
            return;
        };
        let c = &mut e.core;
        self.ctx.stats[c.server].threads[self.index]
            .bytes_out
            .add(buf.len() as u64);
        c.inflight = 0;
        c.last_active = self.ctx.now;
        self.ctx.bufs.put(buf);
        self.ctx.mark_dirty(token, c);
    }

    fn on_closed(&mut self, token: Token) {
        let Some(slot) = self.slots.get_mut(token) else {
            return;
        };
        let Some(mut e) = slot.entry.take() else {
            return;
        };
        slot.gen += 1;
        self.free.push(token);
        self.live -= 1;
        let server = &self.servers[e.core.server];
        server.stats.active.fetch_sub(1, Ordering::Relaxed);
        let reason = e.core.reason.take().unwrap_or(CloseReason::Local);
        self.ctx.stats(e.core.server).closed[reason.index()].add(1);
        debug!(peer = %e.core.info.peer, %reason, "connection closed");
        e.app.closed(&e.core.info, &reason);
        self.held.retain(|&t| t != token);
    }

    fn on_accept_error(&mut self, listener: usize, error: io::Error) {
        self.ctx.stats(listener).accept_errors.add(1);
        let l = &mut self.listeners[listener];
        let now = self.ctx.now;
        let resource = sys::is_resource_exhaustion(&error);
        if resource {
            l.backoff = (l.backoff * 2).clamp(MIN_ACCEPT_BACKOFF, MAX_ACCEPT_BACKOFF);
            if l.last_warn
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                l.last_warn = Some(now);
                warn!(%error, backoff_ms = l.backoff.as_millis() as u64, "accept failed; backing off");
            }
            l.resume_at = Some(now + l.backoff);
        } else {
            debug!(%error, "accept failed; retrying");
            l.resume_at = Some(now);
        }
    }
}
