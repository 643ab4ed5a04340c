//! The IO thread. One loop turn, read top to bottom in [`IoThread::run`]:
//!
//! 1. `wait`: submit what is queued and wait for completions (one syscall on io_uring);
//! 2. drain the completions, running handler callbacks; callbacks only queue work;
//! 3. open the connections callbacks asked for; drain the inbox (writes, closes, notifies,
//!    work done, connects from other threads);
//! 4. retry held frames, run due timers, and every tick the idle, stall, linger and drain
//!    checks;
//! 5. flush every connection touched this turn (`flush.rs`): at most one send each, read
//!    pause/resume, closes. This is where batching happens.

use crate::budget::Budget;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tracing::{debug, error, warn};

use crate::core::{BufPool, ConnCore, ConnectRequest, DynConn, Slots, ThreadCtx};
use crate::handle::Inbox;
use crate::handler::ConnectOptions;
use crate::info::{CloseReason, ConnInfo};
use crate::machine::{layered, Actions, Event as M, Machine};
use crate::stats::LoopStats;
use crate::sys::{self, Backend, BackendConfig, Event};
use crate::timers::Timers;
use crate::BackendKind;

use super::inbox::{Msg, ThreadShared};
use super::peers::count_refusal;
use super::server::SharedServer;
use super::table::{open_entry, Entry, ListenerState, State, HELD_RETRY};
use super::Spawned;

/// How long a shutdown waits for the first input of a connection that has sent nothing yet
/// before it tells its handler (at most half the drain time).
const FRESH_GRACE: Duration = Duration::from_secs(1);

/// Inbox messages handled per loop turn (the rest wait for the next turn).
const INBOX_BATCH: usize = 4096;

/// Starts one IO thread per listener set and waits until each has its backend (or failed).
pub(super) fn spawn_all(
    kind: BackendKind,
    bcfg: &BackendConfig,
    servers: Vec<Arc<SharedServer>>,
    per_thread: Vec<Vec<TcpListener>>,
    drain: Duration,
    loops: Arc<[LoopStats]>,
    budget: Budget,
) -> io::Result<Spawned> {
    let n = per_thread.len();
    let mut threads = Vec::new();
    let mut shared_rxs = Vec::new();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), io::Error>>(n);
    // Every IO thread's inbox, known once all have started (for the accept hand-off).
    let peers: Peers = Arc::new(OnceLock::new());
    for (t, listeners) in per_thread.into_iter().enumerate() {
        let peers = peers.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let servers = servers.clone();
        let bcfg = bcfg.clone();
        let ready = ready_tx.clone();
        let loops = loops.clone();
        let budget = budget.clone();
        let (shared_tx, shared_rx) = crossbeam_channel::bounded(1);
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
                let shared = Arc::new(ThreadShared::new(tx, backend.waker()));
                shared.enter();
                let _ = shared_tx.send(shared.clone());
                match IoThread::new(
                    t, backend, servers, listeners, shared, rx, drain, loops, budget,
                ) {
                    Ok(mut io) => {
                        io.peers = peers;
                        let _ = ready.send(Ok(()));
                        io.run();
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })?;
        threads.push(h);
        shared_rxs.push(shared_rx);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(io::Error::other("an IO thread died while starting")),
        }
    }
    let shareds: Vec<_> = shared_rxs
        .iter()
        .filter_map(|rx| rx.try_recv().ok())
        .collect();
    if shareds.len() == n {
        let _ = peers.set(shareds.clone());
    }
    Ok((threads, shareds, failure))
}

/// Every IO thread's inbox, in thread order; set once all of them have started.
type Peers = Arc<OnceLock<Vec<Arc<ThreadShared>>>>;

struct IoThread {
    backend: Box<dyn Backend>,
    st: State,
    rx: Receiver<Msg>,
    /// Every IO thread's loop counters; this thread writes `loops[st.index]` only.
    loops: Arc<[LoopStats]>,
    /// Every IO thread's inbox (this one's too): where accepted connections are handed when
    /// the backend accepts for every thread (`Backend::accepts_for_all`).
    peers: Peers,
    /// The IO thread the next hand-off goes to (round robin).
    next_peer: usize,
    /// Whether a restart retired this thread (`Msg::Retire`), and the connections that were
    /// still in their handshake then, told once they open (token, generation).
    retired: bool,
    retire_pending: Vec<(crate::core::Token, u64)>,
}

impl IoThread {
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: usize,
        mut backend: Box<dyn Backend>,
        servers: Vec<Arc<SharedServer>>,
        listeners: Vec<TcpListener>,
        shared: Arc<ThreadShared>,
        rx: Receiver<Msg>,
        drain: Duration,
        loops: Arc<[LoopStats]>,
        budget: Budget,
    ) -> io::Result<Self> {
        let n = listeners.len();
        for (id, l) in listeners.into_iter().enumerate() {
            backend.add_listener(id, l)?;
        }
        let now = Instant::now();
        let inbox: Arc<dyn Inbox> = shared;
        Ok(IoThread {
            backend,
            rx,
            loops,
            peers: Arc::new(OnceLock::new()),
            next_peer: index,
            retired: false,
            retire_pending: Vec::new(),
            st: State {
                index,
                entries: Vec::new(),
                live: 0,
                ctx: ThreadCtx {
                    bufs: BufPool::new(),
                    dirty: Vec::new(),
                    inbox,
                    now,
                    thread: index,
                    stats: servers.iter().map(|s| s.stats.clone()).collect(),
                    slots: Slots::new(),
                    connects: Vec::new(),
                    timers: Timers::default(),
                    next_id: 0,
                    client_server: servers.len() - 1,
                    budget,
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
                held_retry_at: now,
                inbox_backlog: false,
                drain,
                shutdown_deadline: None,
                last_tick: now,
                refuse_paused: false,
                deferred_shutdown: Vec::new(),
                plain: Vec::new(),
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
            // Messages this thread sent itself during the last turn come without a wake-up.
            let timeout = if self.rx.is_empty() {
                self.st.next_timeout()
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.backend.wait(timeout) {
                error!(thread = self.st.index, error = %e, "backend wait failed; stopping this IO thread");
                break;
            }
            self.st.ctx.now = Instant::now();
            let turn_start = self.st.ctx.now;
            let completions = self.drain_completions();
            self.open_requested();
            self.drain_inbox();
            self.retry_held();
            self.resume_accepts();
            self.st.fire_timers();
            self.deferred_shutdowns();
            self.pending_retires();
            self.st.tick(self.backend.as_ref());
            self.open_requested();
            self.st.flush(self.backend.as_mut());
            self.open_requested();
            let loop_stats = &self.loops[self.st.index];
            loop_stats.turns.add(1);
            loop_stats.completions.add(completions);
            loop_stats
                .busy_nanos
                .add(turn_start.elapsed().as_nanos() as u64);
            if let Some(deadline) = self.st.shutdown_deadline {
                if self.st.live == 0 || self.st.ctx.now >= deadline + Duration::from_secs(1) {
                    break;
                }
            }
        }
        self.backend.close_listeners();
        self.backend.shutdown(Duration::from_secs(1));
        // Connections the backend could not close in time still get their callback.
        for token in 0..self.st.entries.len() {
            if let Some(mut e) = self.st.entries[token].take() {
                self.st.finish(&mut e, CloseReason::DrainTimeout);
            }
        }
        debug!(thread = self.st.index, "IO thread stopped");
    }

    /// Handles every completion the backend has; returns how many.
    fn drain_completions(&mut self) -> u64 {
        let mut n = 0;
        loop {
            n += 1;
            match self.backend.next() {
                None => return n - 1,
                Some(Event::Data { token, data }) => {
                    if self.st.late_input_over_budget(token, data.len()) {
                        continue; // reset for the budget; its bytes are not taken
                    }
                    self.st.on_data(token, data);
                    // The budget moves with each receive, not only at the turn's end: a turn
                    // can bring thousands of receives (io_uring's multishot ones).
                    self.st.budget_after_input(token, self.backend.as_mut());
                }
                Some(Event::Accepted { listener, stream }) => self.accepted(listener, stream),
                Some(Event::AcceptError { listener, error }) => {
                    self.st.on_accept_error(listener, error)
                }
                Some(Event::ReadClosed { token }) => self.st.on_read_closed(token),
                Some(Event::ReadError { token, error }) => self.st.on_io_error(token, &error),
                Some(Event::SendProgress { token, sent }) => self.st.on_send_progress(token, sent),
                Some(Event::SendDone { token, buf }) => self.st.on_send_done(token, buf),
                Some(Event::SendError { token, error, buf }) => {
                    self.st.ctx.bufs.put(buf);
                    if let Some(e) = self.st.entry(token) {
                        e.core.on(M::SendProgress { done: true });
                        e.core.inflight_cap = 0;
                    }
                    self.st.on_io_error(token, &error);
                }
                Some(Event::Connected { token, result }) => match result {
                    Ok(()) => self.on_connected(token),
                    Err(e) => self.st.on_io_error(token, &e),
                },
                Some(Event::Closed { token }) => self.st.on_closed(token),
                Some(Event::Wake) => {}
            }
        }
    }

    /// A connection this thread's backend accepted: served here, or, when the backend accepts
    /// for every IO thread (IOCP: one listening socket, one completion port), handed round
    /// robin to the next IO thread, which registers it with its own backend.
    fn accepted(&mut self, listener: usize, stream: TcpStream) {
        self.st.listeners[listener].backoff = Duration::ZERO;
        if self.backend.accepts_for_all() && self.st.shutdown_deadline.is_none() {
            if let Some(peers) = self.peers.get() {
                let target = self.next_peer % peers.len();
                self.next_peer = (target + 1) % peers.len();
                if target != self.st.index {
                    // `false`: that thread has stopped (the stream closes with the message).
                    peers[target].send(Msg::Accepted { listener, stream });
                    return;
                }
            }
        }
        self.on_accept(listener, stream);
    }

    fn on_accept(&mut self, listener: usize, stream: TcpStream) {
        let st = &mut self.st;
        let server = st.servers[listener].clone();
        let stats = st.ctx.stats(listener);
        stats.accepted.add(1);
        if st.shutdown_deadline.is_some() {
            // Only a connection another IO thread accepted and handed here (IOCP) can arrive
            // after this thread's drain began (the backends drop what their closed listeners
            // still held). Counted, so that every accepted connection has a close reason.
            stats.closed[CloseReason::Shutdown.index()].add(1);
            debug!(peer = ?stream.peer_addr().ok(), "connection accepted after the drain began; closed");
            return; // dropping the stream closes it
        }
        if !server.limits.overload_exempt && st.refuse_for_budget(stats) {
            return; // closed at once, counted under `overload`
        }
        let (peer, local, unix) = match sys::accepted_addrs(&stream) {
            Ok(addrs) => addrs,
            Err(e) => {
                // The peer vanished between the kernel's accept and ours: its connection only.
                stats.closed[CloseReason::from_io(&e).index()].add(1);
                debug!(error = %e, "accepted connection already gone");
                return;
            }
        };
        // When a layer names the client (a PROXY header), per-IP limits wait for its address
        // (table.rs, `client_named`). A Unix peer has no IP address: no per-IP limit applies.
        let admitted = match &server.peers {
            Some(peers) if !server.limits.layers.names_client() && unix.is_none() => {
                if let Err(why) = peers.admit(peer.ip()) {
                    count_refusal(stats, why, peer);
                    return;
                }
                Some(peer.ip())
            }
            _ => None,
        };
        // From here on, every early return undoes what `admit` and `active` counted.
        let release = |server: &SharedServer| {
            server.stats.active.fetch_sub(1, Ordering::Relaxed);
            if let (Some(peers), Some(ip)) = (&server.peers, admitted) {
                peers.release(ip);
            }
        };
        let active = server.stats.active.fetch_add(1, Ordering::Relaxed);
        if active >= server.limits.max_connections {
            release(&server);
            stats.rejected.add(1);
            debug!(
                max = server.limits.max_connections,
                "connection limit reached; closing new connection"
            );
            return;
        }
        if unix.is_none() {
            // TCP options (TCP_NODELAY, keepalive, ...): none apply to a Unix socket.
            let _ = server.limits.socket.apply(socket2::SockRef::from(&stream));
        }
        let mut info = ConnInfo::new(peer, local, st.ctx.new_id());
        info.unix = unix;
        // The handler first: a factory that panics costs this connection only.
        let Some(factory) = server.factory.as_ref() else {
            release(&server);
            return;
        };
        let app = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory(&info))) {
            Ok(app) => app,
            Err(_) => {
                error!(%peer, "handler factory panicked; closing the new connection");
                release(&server);
                st.ctx.stats(listener).closed[CloseReason::HandlerPanic.index()].add(1);
                return;
            }
        };
        let (token, gen) = st.ctx.slots.alloc();
        if let Err(e) = self.backend.register(token, stream) {
            warn!(%peer, error = %e, "cannot register connection; closing it");
            release(&server);
            st.ctx.stats(listener).closed[CloseReason::from_io(&e).index()].add(1);
            st.ctx.slots.release(token);
            return;
        }
        let mut core = ConnCore::new(listener, gen, info, st.ctx.now);
        core.write_low = server.limits.write_low;
        core.write_high = server.limits.write_high;
        debug_assert!(admitted.is_none_or(|ip| ip == core.info.client.ip()));
        core.m.set_peer_counted(admitted.is_some());
        // With layers, `on_open` waits until they are ready (the PROXY header is read, the
        // TLS handshake is done).
        let layers = server.limits.layers.stack();
        let layered = !matches!(layers, Ok(None));
        match layers {
            Ok(None) => {}
            Ok(Some(mut stack)) => {
                let a = layered::start(&mut core.m, &mut stack, &[], st.ctx.now);
                core.apply(a);
                core.layers = Some(Box::new(stack));
            }
            Err(reason) => {
                core.on(M::LayerFailed(reason));
            }
        }
        st.insert(token, Entry { core, app });
        if !layered {
            st.open_conn(token);
        }
        if let Some(entry) = st.entries[token].as_mut() {
            st.ctx.mark_dirty(token, &mut entry.core);
        }
    }

    fn on_connected(&mut self, token: usize) {
        let st = &mut self.st;
        let Some(e) = st.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        e.core.on(M::Connected); // the backend reads once connected
        if let Some(r) = e.core.rare.as_deref_mut() {
            r.connect_deadline = None;
        }
        let c = &mut e.core;
        // A PROXY header goes before everything: the layers' first bytes (ClientHello) and
        // the handler's writes queued while connecting.
        let preamble = c
            .rare
            .as_deref_mut()
            .map(|r| std::mem::take(&mut r.preamble))
            .unwrap_or_default();
        if let Some(stack) = c.layers.as_deref_mut() {
            // The preamble first, then the TLS client speaks; `on_open` waits for the
            // handshake.
            let a = layered::start(&mut c.m, stack, &preamble, st.ctx.now);
            c.apply(a);
            st.ctx.mark_dirty(token, c);
            return;
        }
        if !preamble.is_empty() {
            c.out.splice(0..0, preamble);
        }
        st.open_conn(token);
    }

    /// Opens the outgoing connections callbacks asked for with `Conn::connect`.
    fn open_requested(&mut self) {
        while !self.st.ctx.connects.is_empty() {
            let reqs = std::mem::take(&mut self.st.ctx.connects);
            for req in reqs {
                self.open_outgoing(req);
            }
        }
    }

    /// A connect from another thread ([`Connector`](super::Connector)).
    fn connect_from_inbox(
        &mut self,
        addr: SocketAddr,
        app: Box<dyn DynConn + Send>,
        options: ConnectOptions,
    ) {
        let slot = self.st.ctx.slots.alloc();
        self.open_outgoing(options.request(slot, addr, None, app));
    }

    fn open_outgoing(&mut self, req: ConnectRequest) {
        use socket2::{Domain, Protocol, Socket, Type};
        let st = &mut self.st;
        let server = st.ctx.client_server;
        let info = ConnInfo::new(
            req.addr,
            SocketAddr::from(([0, 0, 0, 0], 0)),
            st.ctx.new_id(),
        );
        let mut app = req.app;
        st.ctx.stats(server).accepted.add(1);
        let fail = |st: &mut State, app: &mut Box<dyn DynConn>, reason: CloseReason| {
            st.ctx.slots.release(req.token);
            if let Some(s) = &req.shared {
                s.mark_dead();
            }
            st.ctx.stats(server).closed[reason.index()].add(1);
            app.closed(&info, &reason);
        };
        if st.shutdown_deadline.is_some() {
            fail(st, &mut app, CloseReason::Shutdown);
            return;
        }
        let layers = match req.layers {
            Ok(l) => l,
            Err(reason) => {
                fail(st, &mut app, reason);
                return;
            }
        };
        let socket = Socket::new(
            Domain::for_address(req.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .and_then(|s| {
            s.set_nonblocking(true)?;
            req.options.apply(socket2::SockRef::from(&s))?;
            Ok(s)
        });
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                fail(st, &mut app, CloseReason::from_io(&e));
                return;
            }
        };
        st.servers[server]
            .stats
            .active
            .fetch_add(1, Ordering::Relaxed);
        let mut core = ConnCore::new(server, req.gen, info, st.ctx.now);
        core.m = Machine::connecting(); // nothing is sent or read before the connect completes
        if let Some(t) = req.timeout {
            core.rare_mut().connect_deadline = Some(st.ctx.now + t);
        }
        if !req.preamble.is_empty() {
            core.rare_mut().preamble = req.preamble;
        }
        core.write_low = req.watermarks.0.min(req.watermarks.1);
        core.write_high = req.watermarks.1;
        core.shared = req.shared;
        core.layers = layers.map(Box::new);
        st.insert(req.token, Entry { core, app });
        self.backend.connect(req.token, socket, req.addr);
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
                Msg::Retire { ack } => {
                    self.retire();
                    let _ = ack.send(());
                }
                Msg::Connect { addr, app, options } => self.connect_from_inbox(addr, app, options),
                Msg::Accepted { listener, stream } => self.on_accept(listener, stream),
                Msg::Handle(m) => self.st.on_handle_msg(m),
            }
            // A callback run for this message may have asked for a connection; it exists
            // before the next message (which may be a write to it) is looked at.
            self.open_requested();
        }
    }

    fn begin_shutdown(&mut self) {
        let st = &mut self.st;
        if st.shutdown_deadline.is_some() {
            return;
        }
        st.shutdown_deadline = Some(st.ctx.now + st.drain);
        self.backend.close_listeners();
        debug!(
            thread = st.index,
            connections = st.live,
            "stopped accepting; draining"
        );
        let spare_until = (st.ctx.now + FRESH_GRACE).min(st.ctx.now + st.drain / 2);
        for (token, slot) in st.entries.iter_mut().enumerate() {
            if let Some(e) = slot.as_mut() {
                // The reason of whoever closes it from now on; one never opened just closes.
                if e.core.on(M::ShutdownBegun).has(Actions::RUN_SHUTDOWN) {
                    let fresh = !e.core.m.received() && e.core.server != st.ctx.client_server;
                    match st.ctx.slots.gen(token) {
                        Some(gen) if fresh => st.deferred_shutdown.push((token, gen, spare_until)),
                        _ => e.app.shutdown(&mut e.core, &mut st.ctx, token),
                    }
                }
                st.ctx.mark_dirty(token, &mut e.core);
            }
        }
    }

    /// The deferred `on_shutdown` of connections that had sent nothing when the shutdown
    /// began: once their first input has been handled, or at the latest after the grace.
    fn deferred_shutdowns(&mut self) {
        let st = &mut self.st;
        if st.deferred_shutdown.is_empty() {
            return;
        }
        let now = st.ctx.now;
        let mut waiting = std::mem::take(&mut st.deferred_shutdown);
        waiting.retain(|&(token, gen, until)| {
            let Some(e) = open_entry(&st.ctx.slots, &mut st.entries, token, gen) else {
                return false;
            };
            if !e.core.m.received() && now < until {
                return true;
            }
            e.app.shutdown(&mut e.core, &mut st.ctx, token);
            st.ctx.mark_dirty(token, &mut e.core);
            false
        });
        st.deferred_shutdown = waiting;
    }

    /// A restart's successor serves the listeners now: stop accepting (the listeners close;
    /// the successor holds the same sockets, so nothing waiting in them is lost) and tell every
    /// open connection, which this thread goes on serving until it closes or a shutdown comes.
    fn retire(&mut self) {
        if self.retired || self.st.shutdown_deadline.is_some() {
            return;
        }
        self.retired = true;
        self.backend.close_listeners();
        let st = &mut self.st;
        debug!(
            thread = st.index,
            connections = st.live,
            "retired: serving on, accepting nothing"
        );
        for token in 0..st.entries.len() {
            let Some(e) = st.entries[token].as_mut() else {
                continue;
            };
            if e.core.m.is_open() && e.core.m.opened() {
                e.app.retire(&mut e.core, &mut st.ctx, token);
                st.ctx.mark_dirty(token, &mut e.core);
            } else if let Some(gen) = st.ctx.slots.gen(token) {
                self.retire_pending.push((token, gen));
            }
        }
    }

    /// `on_retire` for connections that were in their handshake at the retirement, once they
    /// have opened (those that closed first are forgotten).
    fn pending_retires(&mut self) {
        if self.retire_pending.is_empty() {
            return;
        }
        let st = &mut self.st;
        if st.shutdown_deadline.is_some() {
            self.retire_pending.clear(); // on_shutdown has taken over
            return;
        }
        self.retire_pending.retain(|&(token, gen)| {
            let Some(e) = open_entry(&st.ctx.slots, &mut st.entries, token, gen) else {
                return false;
            };
            if !e.core.m.opened() {
                return true;
            }
            e.app.retire(&mut e.core, &mut st.ctx, token);
            st.ctx.mark_dirty(token, &mut e.core);
            false
        });
    }

    /// Accepting again once an accept error's back-off has passed.
    fn resume_accepts(&mut self) {
        let now = self.st.ctx.now;
        if self.st.shutdown_deadline.is_some() {
            return;
        }
        for (id, l) in self.st.listeners.iter_mut().enumerate() {
            if l.resume_at.is_some_and(|t| t <= now) {
                l.resume_at = None;
                self.backend.resume_accept(id);
            }
        }
    }

    /// Offers the held frames again, at most every [`HELD_RETRY`].
    fn retry_held(&mut self) {
        let now = self.st.ctx.now;
        if self.st.held.is_empty() || now < self.st.held_retry_at {
            return;
        }
        self.st.held_retry_at = now + HELD_RETRY;
        let held = std::mem::take(&mut self.st.held);
        for token in held {
            if let Some(e) = self.st.entries.get_mut(token).and_then(Option::as_mut) {
                e.core.on(M::RetryHeld);
                self.st.ctx.mark_dirty(token, &mut e.core);
            }
        }
    }
}
