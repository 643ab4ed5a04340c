//! One IO thread's connection table ([`State`]) and what each completion, inbox message and
//! timer does to a connection. Callbacks run here; they only queue work, which
//! [`State::flush`](super::flush) applies at the end of the loop turn.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::core::{ConnCore, DynConn, Slots, ThreadCtx, Token};
use crate::handle::HandleMsg;
use crate::info::CloseReason;
use crate::machine::{layered, Actions, Event, Life, Tick, TickFacts};
use crate::timers::Due;

use super::server::SharedServer;
use super::{MAX_ACCEPT_BACKOFF, MIN_ACCEPT_BACKOFF};

/// The timers' tick: idle timeouts, flush stalls, lingering closes and the drain deadline are
/// checked this often.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// How soon a held frame is offered again (whatever wakes the IO thread meanwhile: a refused
/// job's end, another connection's input, must not turn the retry into a spin).
pub(super) const HELD_RETRY: Duration = Duration::from_millis(2);

pub(super) struct Entry {
    pub core: ConnCore,
    pub app: Box<dyn DynConn>,
}

/// The entry of connection `token` if it is still generation `gen` and open (not closing):
/// what a deferred callback checks before it runs.
pub(super) fn open_entry<'a>(
    slots: &Slots,
    entries: &'a mut [Option<Entry>],
    token: Token,
    gen: u64,
) -> Option<&'a mut Entry> {
    if slots.gen(token) != Some(gen) {
        return None;
    }
    entries
        .get_mut(token)
        .and_then(Option::as_mut)
        .filter(|e| e.core.m.is_open())
}

pub(super) struct ListenerState {
    pub backoff: Duration,
    pub resume_at: Option<Instant>,
    pub last_warn: Option<Instant>,
}

/// Everything of an IO thread but its backend (split so completions can borrow the backend
/// while callbacks mutate this).
pub(super) struct State {
    pub index: usize,
    /// Indexed by token; a token's generation lives in `ctx.slots`.
    pub entries: Vec<Option<Entry>>,
    pub live: usize,
    pub ctx: ThreadCtx,
    pub servers: Vec<Arc<SharedServer>>,
    pub listeners: Vec<ListenerState>,
    pub held: Vec<Token>,
    /// When the held frames are offered again next (every [`HELD_RETRY`]).
    pub held_retry_at: Instant,
    /// The inbox held more than one batch at the last drain.
    pub inbox_backlog: bool,
    pub drain: Duration,
    pub shutdown_deadline: Option<Instant>,
    pub last_tick: Instant,
    /// Every reading connection was paused when the budget reached its refuse level
    /// (`overload.rs`); cleared when pressure falls below it.
    pub refuse_paused: bool,
    /// Connections whose `on_shutdown` waits for their first input (token, generation, at
    /// the latest): a client that just connected gets its first request answered.
    pub deferred_shutdown: Vec<(Token, u64, Instant)>,
    /// Scratch for plaintext coming out of layers.
    pub plain: Vec<u8>,
}

impl State {
    pub(super) fn entry(&mut self, token: Token) -> Option<&mut Entry> {
        self.entries.get_mut(token).and_then(Option::as_mut)
    }

    /// Puts a new connection into its slot (the token came from `ctx.slots`).
    pub(super) fn insert(&mut self, token: Token, entry: Entry) {
        if self.entries.len() <= token {
            self.entries.resize_with(token + 1, || None);
        }
        self.live += 1;
        self.entries[token] = Some(entry);
    }

    /// The live connection in slot `token`, if it is still generation `gen`.
    fn entry_gen(&mut self, token: Token, gen: u64) -> Option<&mut Entry> {
        if self.ctx.slots.gen(token) != Some(gen) {
            return None;
        }
        self.entry(token)
    }

    pub(super) fn next_timeout(&self) -> Option<Duration> {
        if !self.ctx.dirty.is_empty() || self.inbox_backlog || !self.ctx.connects.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut t: Option<Duration> = None;
        let mut at_most = |d: Duration| t = Some(t.map_or(d, |x| x.min(d)));
        if !self.held.is_empty() {
            at_most(self.held_retry_at.saturating_duration_since(now));
        }
        for l in &self.listeners {
            if let Some(r) = l.resume_at {
                at_most(r.saturating_duration_since(now));
            }
        }
        if let Some(d) = self.ctx.timers.next_deadline() {
            at_most(d.saturating_duration_since(now));
        }
        if self.live > 0 || self.shutdown_deadline.is_some() {
            at_most(TICK.saturating_sub(now.duration_since(self.last_tick)));
        }
        t
    }

    /// Bytes arrived: through the layers if the connection has any, then to the decoder.
    pub(super) fn on_data(&mut self, token: Token, data: &[u8]) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        self.ctx.stats[c.server].threads[self.index]
            .bytes_in
            .add(data.len() as u64);
        c.last_active = self.ctx.now;
        c.on(Event::Received);
        if c.layers.is_some() {
            self.on_layered_data(token, data);
        } else {
            self.deliver(token, data);
        }
    }

    /// Runs received bytes up through the connection's layers: what they send on their own
    /// (handshake, alerts) is queued on the wire, the plaintext goes to the decoder, the
    /// handler is opened once the layers are ready, and a layer's end of stream is an EOF.
    fn on_layered_data(&mut self, token: Token, data: &[u8]) {
        let mut plain = std::mem::take(&mut self.plain);
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        let stack = c.layers.as_deref_mut().expect("layered");
        let Some(r) = layered::receive(&mut c.m, stack, &mut c.info, data, &mut plain) else {
            self.plain = plain;
            return;
        };
        c.apply(r.actions);
        self.ctx.mark_dirty(token, c);
        let server = c.server;
        if let Some(reason) = &r.failed {
            warn!(peer = %c.info.peer, %reason, "closing connection: layer failed");
        } else if r.named && !self.client_named(token) {
            // refused by a per-IP limit
        } else {
            if r.ready {
                self.ctx.stats[server].threads[self.index].handshakes.add(1);
                self.open_conn(token);
            }
            if !plain.is_empty() {
                self.deliver(token, &plain);
            }
            if r.eof {
                self.on_read_closed(token);
            }
        }
        plain.clear();
        self.plain = plain;
    }

    /// A layer named the client (`info.client` is known): counts how the connection began
    /// and applies the server's per-IP limits to the client's address. `false`: refused (the
    /// connection is closing).
    fn client_named(&mut self, token: Token) -> bool {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return false;
        };
        let c = &mut e.core;
        let server = &self.servers[c.server];
        let stats = &self.ctx.stats[c.server].threads[self.index];
        crate::layer::count_origin(stats, &c.info);
        let (Some(peers), Some(ip)) = (&server.peers, c.info.limited_ip()) else {
            return true;
        };
        match peers.admit(ip) {
            Ok(()) => {
                c.m.set_peer_counted(true);
                true
            }
            Err(why) => {
                super::peers::count_refusal(stats, why, c.info.client);
                c.on(Event::LayerFailed(CloseReason::Local));
                false
            }
        }
    }

    /// Runs `on_open` (once): at accept or connect, or once the layers are ready.
    pub(super) fn open_conn(&mut self, token: Token) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        let a = c.on(Event::Ready);
        if !a.has(Actions::FLUSH) {
            return; // opened already
        }
        if let Some(stack) = c.layers.as_deref_mut() {
            layered::opened(stack, &mut c.info);
        }
        if a.has(Actions::RUN_OPEN) {
            e.app.open(&mut e.core, &mut self.ctx, token);
        }
        self.ctx.mark_dirty(token, &mut e.core);
    }

    /// Delivers plaintext input, straight from the receive buffer when nothing is held back
    /// (the common case: no copy), else after appending it to what is.
    fn deliver(&mut self, token: Token, data: &[u8]) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        if !c.m.accepts_input() {
            return; // closing, or past a decode error: input is read and discarded
        }
        if c.rbuf.is_empty() {
            let used = e.app.data(&mut e.core, &mut self.ctx, token, data);
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
    pub(super) fn pump(&mut self, token: Token) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let buf = std::mem::take(&mut e.core.rbuf);
        let used = e.app.data(&mut e.core, &mut self.ctx, token, &buf);
        let mut buf = buf;
        if !e.core.m.is_open() || used == buf.len() {
            // Nothing left to keep: release the memory (idle connections hold no buffer).
        } else {
            buf.drain(..used);
            e.core.rbuf = buf;
        }
        self.after_input(token);
    }

    fn after_input(&mut self, token: Token) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        let limit = self.servers[c.server].limits.max_buffered_input;
        // Held-back input (paused, held frame) is bounded by what the backend had in flight
        // when reading stopped; the limit is for input the decoder could not use.
        if c.rbuf.len() > limit && c.wants_frames() {
            warn!(peer = %c.info.peer, buffered = c.rbuf.len(), limit, "closing connection: too much undecoded input");
            c.rbuf = Vec::new();
            c.on(Event::InputOverflow(CloseReason::Protocol(format!(
                "more than {limit} bytes of undecoded input"
            ))));
        }
        // Only a state change needs a flush (writes, closes and pauses mark the connection
        // themselves): re-marking a connection whose input is just an incomplete frame would
        // spin the loop until the rest of the frame arrives.
        if c.m.held() && !self.held.contains(&token) {
            self.held.push(token);
            self.ctx.mark_dirty(token, c);
        }
        if !c.m.is_open() {
            self.ctx.mark_dirty(token, c);
        }
    }

    pub(super) fn on_read_closed(&mut self, token: Token) {
        let Some(e) = self.entry(token) else {
            return;
        };
        let c = &mut e.core;
        let before = (c.m.read_closed(), c.m.opened(), c.m.life());
        // With layers not ready yet, the EOF ends the connection for a reason of their own.
        let layer_eof = c
            .layers
            .as_deref()
            .and_then(|l| layered::eof_reason(&c.m, l));
        let a = c.on(Event::PeerEof { layer_eof });
        match before {
            (true, ..) => return, // TCP's EOF after the layer's own end of stream
            (false, false, Life::Open | Life::Closing) if a.has(Actions::DROP_OUTPUT) => {
                let reason = c.m.reason().cloned().unwrap_or(CloseReason::PeerClosed);
                if reason == CloseReason::PeerClosed {
                    debug!(peer = %c.info.peer, "connection closed before sending a byte");
                } else {
                    warn!(peer = %c.info.peer, %reason, "closing connection: EOF before the handshake finished");
                }
                self.mark(token);
                return;
            }
            (_, _, Life::Open) if c.layers.as_deref().is_some_and(layered::truncated) => {
                debug!(peer = %c.info.peer, "TLS connection truncated: EOF without close_notify");
            }
            _ => {}
        }
        if before.2 == Life::Open {
            // Frames already received are delivered before the half-close is.
            if a.has(Actions::PUMP) && !e.core.rbuf.is_empty() {
                self.pump(token);
            }
            self.deliver_eof(token);
        }
        if let Some(e) = self.entries[token].as_mut() {
            self.ctx.mark_dirty(token, &mut e.core);
        }
    }

    /// Tells the handler of a half-close once every complete frame before it was delivered
    /// (frames held back by a pause wait, and so does the EOF).
    pub(super) fn deliver_eof(&mut self, token: Token) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        if e.core.on(Event::DeliverEof).has(Actions::RUN_READ_CLOSED) {
            e.app.read_closed(&mut e.core, &mut self.ctx, token);
        }
    }

    pub(super) fn on_io_error(&mut self, token: Token, error: &io::Error) {
        let Some(e) = self.entry(token) else {
            return;
        };
        let reason = CloseReason::from_io(error);
        debug!(peer = %e.core.info.peer, %error, "connection error");
        e.core.on(Event::Reset(reason));
        let Some(e) = self.entries[token].as_mut() else {
            return;
        };
        self.ctx.mark_dirty(token, &mut e.core);
    }

    /// Part of the send in flight was written: progress (the flush-stall and idle clocks
    /// restart), and the queue is that much shorter.
    pub(super) fn on_send_progress(&mut self, token: Token, sent: usize) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        self.ctx.stats[c.server].threads[self.index]
            .bytes_out
            .add(sent as u64);
        c.inflight = c.inflight.saturating_sub(sent);
        c.last_active = self.ctx.now;
        c.unstall();
        self.ctx.mark_dirty(token, c);
    }

    pub(super) fn on_send_done(&mut self, token: Token, buf: Vec<u8>) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        self.ctx.stats[c.server].threads[self.index]
            .bytes_out
            .add(c.inflight as u64);
        c.inflight = 0;
        c.inflight_cap = 0;
        c.on(Event::SendProgress { done: true });
        c.last_active = self.ctx.now;
        c.unstall();
        self.ctx.bufs.put(buf);
        self.ctx.mark_dirty(token, c);
    }

    pub(super) fn on_closed(&mut self, token: Token) {
        let Some(mut e) = self.entries.get_mut(token).and_then(Option::take) else {
            return;
        };
        self.ctx.slots.release(token);
        self.live -= 1;
        self.finish(&mut e, CloseReason::Local);
        self.held.retain(|&t| t != token);
    }

    /// Counts, logs and reports a connection's end.
    pub(super) fn finish(&mut self, e: &mut Entry, default: CloseReason) {
        self.uncharge(&mut e.core);
        let server = &self.servers[e.core.server];
        server.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let (Some(peers), true) = (&server.peers, e.core.m.take_peer_counted()) {
            peers.release(e.core.info.client.ip());
        }
        e.core.kill_handles();
        let reason = e.core.m.take_reason(default);
        self.ctx.stats(e.core.server).closed[reason.index()].add(1);
        if reason.is_local_reset() {
            warn!(peer = %e.core.info.peer, %reason, "connection reset");
        } else {
            debug!(peer = %e.core.info.peer, %reason, "connection closed");
        }
        e.app.closed(&e.core.info, &reason);
    }

    /// A message from a handle, on this thread, for (`token`, `gen`).
    pub(super) fn on_handle_msg(&mut self, msg: HandleMsg) {
        match msg {
            HandleMsg::Write { token, gen, data } => {
                let Some(e) = self.entry_gen(token, gen) else {
                    return;
                };
                let len = data.len();
                let taken = e.core.takes_handle_writes();
                if !taken {
                    // Only a write that raced with the close gets here: handles refuse once
                    // a close is asked.
                    debug!(peer = %e.core.info.peer, len, "handle write after the connection's last bytes; dropped");
                }
                let spent = e.core.take_handle_write(data);
                debug_assert!(spent.is_empty(), "a recycled buffer carries no bytes");
                self.ctx.bufs.put(spent);
                if taken {
                    self.ctx
                        .mark_dirty(token, &mut self.entries[token].as_mut().expect("live").core);
                }
            }
            HandleMsg::Close {
                token,
                gen,
                abort,
                slow,
            } => {
                let Some(e) = self.entry_gen(token, gen) else {
                    return;
                };
                let reason = if slow {
                    CloseReason::SlowConsumer
                } else {
                    CloseReason::Local
                };
                if abort {
                    e.core.on(Event::Abort(reason));
                } else {
                    e.core.on(Event::Close(reason));
                }
                self.mark(token);
            }
            HandleMsg::ShutdownWrite { token, gen } => {
                let Some(e) = self.entry_gen(token, gen) else {
                    return;
                };
                e.core.on(Event::ShutdownWrite);
                self.mark(token);
            }
            HandleMsg::Resume { token, gen } => {
                let Some(e) = self.entry_gen(token, gen) else {
                    return;
                };
                e.core.on(Event::Resume);
                self.mark(token);
            }
            HandleMsg::Notify { token, gen, value } => {
                let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
                    return;
                };
                if self.ctx.slots.gen(token) != Some(gen) {
                    return;
                }
                e.app.notify(&mut e.core, &mut self.ctx, token, value);
                self.ctx.mark_dirty(token, &mut e.core);
            }
            HandleMsg::Writable { token, gen, value } => {
                let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
                    return;
                };
                if self.ctx.slots.gen(token) != Some(gen) {
                    return;
                }
                e.app.writable(&mut e.core, &mut self.ctx, token, value);
                self.ctx.mark_dirty(token, &mut e.core);
            }
            HandleMsg::WatchDrain { token, gen, value } => {
                let Some(e) = self.entry_gen(token, gen) else {
                    return;
                };
                e.core.watch_drain(value);
                self.mark(token);
            }
            HandleMsg::WorkDone { token, gen } => {
                let now = self.ctx.now;
                let Some(e) = self.entry_gen(token, gen) else {
                    return;
                };
                e.core.on(Event::WorkDone);
                e.core.last_active = now;
                e.core.unstall();
                self.mark(token);
            }
        }
    }

    fn mark(&mut self, token: Token) {
        if let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) {
            self.ctx.mark_dirty(token, &mut e.core);
        }
    }

    /// Runs the per-connection timers that are due.
    pub(super) fn fire_timers(&mut self) {
        let now = self.ctx.now;
        loop {
            let entries = &mut self.entries;
            let slots = &self.ctx.slots;
            let due = self.ctx.timers.pop_due(now, |token, gen| {
                if slots.gen(token) != Some(gen) {
                    return None;
                }
                entries
                    .get_mut(token)
                    .and_then(Option::as_mut)
                    .and_then(|e| e.core.rare.as_deref_mut())
                    .map(|r| &mut r.timers)
            });
            match due {
                None => break,
                Some(Due::Nothing) => {}
                Some(Due::Fire { token, id, .. }) => {
                    let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
                        continue;
                    };
                    // A closing connection's timers were disarmed (`Actions::LEFT_OPEN`).
                    if e.core.on(Event::TimerDue).has(Actions::RUN_TIMER) {
                        e.app.timer(&mut e.core, &mut self.ctx, token, id);
                        self.ctx.mark_dirty(token, &mut e.core);
                    }
                }
            }
        }
    }

    /// Every [`TICK`]: idle timeouts, flush stalls, lingering closes, connect timeouts and the
    /// drain deadline.
    pub(super) fn tick(&mut self, backend: &dyn crate::sys::Backend) {
        let now = self.ctx.now;
        if now.duration_since(self.last_tick) < TICK && self.shutdown_deadline.is_none() {
            return;
        }
        self.last_tick = now;
        self.overload_tick();
        let past_deadline = self.shutdown_deadline.is_some_and(|d| now >= d);
        for (token, slot) in self.entries.iter_mut().enumerate() {
            let Some(e) = slot.as_mut() else {
                continue;
            };
            let c = &mut e.core;
            // A layer's own setup deadline (the PROXY header's), or the handshake's, for
            // connections not open yet.
            let layer_expired = c
                .layers
                .as_deref()
                .and_then(|l| layered::expired(&c.m, l, now));
            let facts = TickFacts {
                now,
                layer_expired,
                connect_deadline: c.connect_deadline(),
                idle_timeout: self.servers[c.server].limits.idle_timeout,
                last_active: c.last_active,
                linger_until: c.rare.as_ref().and_then(|r| r.linger_until),
                queued: c.queued(),
                past_drain: past_deadline,
            };
            let (first, drain) = c.m.tick(&facts);
            match first {
                Some(Tick::LayerExpired(reason)) => {
                    warn!(peer = %c.info.peer, %reason, "closing connection: handshake not finished in time");
                    c.on(Event::ForceAbort(reason));
                    self.ctx.mark_dirty(token, c);
                    continue;
                }
                Some(Tick::ConnectTimeout) => {
                    c.on(Event::ConnectTimeout);
                    self.ctx.mark_dirty(token, c);
                    continue;
                }
                Some(Tick::Idle) => {
                    debug!(peer = %c.info.peer, "idle timeout");
                    c.on(Event::Idle);
                    self.ctx.mark_dirty(token, c);
                }
                Some(Tick::CheckStall) => {
                    // The kernel's send buffer may be too full to report writability for a
                    // long time while a slow reader still takes bytes: its unacknowledged
                    // queue shrinking is progress too.
                    let unsent = backend.unsent(token);
                    let r = c.rare_mut();
                    if let (Some(now_q), Some(before)) = (unsent, r.last_unsent) {
                        if now_q < before {
                            r.stalled_since = None;
                        }
                    }
                    r.last_unsent = unsent;
                    let stalled_since = r.stalled_since;
                    match stalled_since {
                        None => r.stalled_since = Some(now),
                        Some(since) if now.duration_since(since) >= super::FLUSH_STALL => {
                            warn!(peer = %c.info.peer, queued = c.queued(), "closing connection's flush moved no byte for the stall limit; resetting");
                            c.on(Event::ForceAbort(CloseReason::FlushStalled));
                            self.ctx.mark_dirty(token, c);
                        }
                        Some(_) => {}
                    }
                }
                Some(Tick::LingerOver) => {
                    c.on(Event::LingerOver); // stop waiting for the peer's EOF
                    self.ctx.mark_dirty(token, c);
                }
                None => {}
            }
            if drain && matches!(c.m.life(), Life::Open | Life::Closing) {
                warn!(peer = %c.info.peer, queued = c.queued(), work = c.m.work(), "drain deadline passed; resetting connection");
                c.on(Event::DrainDeadline);
                self.ctx.mark_dirty(token, c);
            }
        }
    }

    pub(super) fn on_accept_error(&mut self, listener: usize, error: io::Error) {
        self.ctx.stats(listener).accept_errors.add(1);
        let l = &mut self.listeners[listener];
        let now = self.ctx.now;
        let resource = crate::sys::is_resource_exhaustion(&error);
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
