//! The engine's per-connection state ([`ConnCore`]) and the per-IO-thread state a callback may
//! touch ([`ThreadCtx`]), with the type-erased interface the engine drives a connection's
//! handler and codec through ([`DynConn`]).
//!
//! This is the bottom of the connection stack: [`crate::conn`] (the `Conn` context lent to
//! callbacks) builds on it, [`crate::handler`] (the `Handler` trait) on that, and the engine on
//! all three. Nothing here knows the handler's type.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::Budget;
use crate::handle::{ConnShared, ConnectionHandle, Inbox};
use crate::info::{CloseReason, ConnInfo};
use crate::layer::Stack;
use crate::machine::{Actions, Event, Machine};
use crate::sockopt::SocketOptions;
use crate::stats::{ServerStats, ThreadStats};
use crate::timers::{TimerRecord, Timers};

/// Identifies a connection slot within one IO thread.
pub(crate) type Token = usize;

/// The part of a connection's state that most connections never use (`ConnCore::rare`).
#[derive(Default)]
pub(crate) struct Rare {
    /// When an outgoing connect gives up.
    pub connect_deadline: Option<Instant>,
    /// Bytes to send once the outstanding work has answered, right before a graceful close.
    pub last_words: Vec<u8>,
    /// Since when a closing connection's queued bytes have not moved (`None`: they moved).
    pub stalled_since: Option<Instant>,
    /// The kernel's unacknowledged bytes at the last stall check (SIOCOUTQ).
    pub last_unsent: Option<usize>,
    /// Timer ids armed for this connection (`Conn::set_timer`) with their sequence numbers.
    pub timers: Vec<TimerRecord>,
    /// When a lingering close stops waiting for the peer's EOF.
    pub linger_until: Option<Instant>,
    /// Bytes an outgoing connection sends first once connected, before any layer's (a PROXY
    /// header: `ConnectOptions::send_proxy`).
    pub preamble: Vec<u8>,
    /// Since when the connection has held a large share of the memory budget (the overload
    /// reset picks the biggest, longest holders).
    pub holding_since: Option<Instant>,
    /// The `on_writable` value of the handler's watch on its own queue (`watch_drain`; 0 is
    /// not stored).
    pub drain_value: u64,
}

/// The engine's per-connection state (the handler's own state is the `Handler` value).
pub(crate) struct ConnCore {
    pub server: usize,
    pub gen: u64,
    pub info: ConnInfo,
    /// Bytes queued, not yet handed to the backend.
    pub out: Vec<u8>,
    /// Bytes of the send in flight not yet reported written (0: none in flight).
    pub inflight: usize,
    /// Received bytes not yet consumed by the decoder (a partial frame, or frames held back
    /// while reading is paused). Empty (no allocation) in the common case.
    pub rbuf: Vec<u8>,
    /// The connection's life: every phase and flag of it, as enums ([`crate::machine`]).
    pub m: Machine,
    /// Last input, send progress or finished work (the idle timeout's clock).
    pub last_active: Instant,
    /// Shared with handles (allocated when the first handle is made).
    pub shared: Option<Arc<ConnShared>>,
    /// How much of `shared.backlog` is this thread's own queue (`own_queued`, as last
    /// published plus the handle writes taken since); the rest is what handles posted and
    /// this thread has not taken from its inbox yet.
    pub published: usize,
    /// The write watermarks of the connection's server.
    pub write_low: usize,
    pub write_high: usize,
    /// The connection's layers (TLS, ...), if its server has any.
    pub layers: Option<Box<Stack>>,
    /// Bytes this connection has charged to the memory budget (saturating).
    pub charged: u32,
    /// Capacity of the send buffer in the backend's hands (0: none): all of it is held until
    /// the send is done, however much has gone out already.
    pub inflight_cap: u32,
    /// What only some connections need (outgoing connects, timers, graceful closes), boxed
    /// so that an open connection's entry stays small: allocated by the first
    /// [`ConnCore::rare_mut`], never for a plain connection that is only read and written.
    pub rare: Option<Box<Rare>>,
}

impl ConnCore {
    pub(crate) fn new(server: usize, gen: u64, info: ConnInfo, now: Instant) -> Self {
        ConnCore {
            server,
            gen,
            info,
            out: Vec::new(),
            inflight: 0,
            rbuf: Vec::new(),
            m: Machine::accepted(),
            last_active: now,
            shared: None,
            published: 0,
            write_low: 0,
            write_high: usize::MAX,
            layers: None,
            charged: 0,
            inflight_cap: 0,
            rare: None,
        }
    }

    /// Feeds `event` to the machine and carries out what concerns the connection's own state
    /// (handles, timers, dropped output); returns the actions for the engine.
    pub(crate) fn on(&mut self, event: Event) -> Actions {
        let a = self.m.handle(event);
        self.apply(a);
        a
    }

    /// Carries out the actions that touch only this connection's state: dropping the output
    /// (a layer failed), disarming timers and telling handles.
    pub(crate) fn apply(&mut self, a: Actions) {
        if a.has(Actions::DROP_OUTPUT) {
            self.out.clear();
            if let Some(r) = self.rare.as_deref_mut() {
                r.last_words.clear();
            }
        }
        if a.has(Actions::LEFT_OPEN) {
            if let Some(r) = self.rare.as_deref_mut() {
                r.timers.clear(); // their heap entries find no record: stale, never fired
            }
            if let Some(s) = &self.shared {
                s.mark_closing();
            }
        }
        if a.has(Actions::KILL_HANDLES) {
            self.kill_handles();
        }
    }

    /// Watches the connection's own queue: `on_writable` with `value` once it is at or under
    /// the low watermark as the end-of-turn flush counts it (`Conn::notify_when_drained`, or
    /// a handle's `notify_when_writable` on its own connection).
    pub(crate) fn watch_drain(&mut self, value: u64) -> Actions {
        if value != 0 || self.rare.is_some() {
            self.rare_mut().drain_value = value;
        }
        self.on(Event::WatchDrain)
    }

    /// The value of the drain watch due now.
    pub(crate) fn drain_value(&self) -> u64 {
        self.rare.as_ref().map_or(0, |r| r.drain_value)
    }

    /// The connection's rarely used state, allocated on first use.
    pub(crate) fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Its flush moved: a closing connection is not stalled (allocates nothing).
    pub(crate) fn unstall(&mut self) {
        if let Some(r) = self.rare.as_deref_mut() {
            r.stalled_since = None;
        }
    }

    /// `close_after` bytes are waiting for the outstanding work.
    pub(crate) fn has_last_words(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| !r.last_words.is_empty())
    }

    /// Queues the `close_after` bytes (the machine said so: every outstanding job has
    /// answered): from now on nothing more is taken, so nothing follows them.
    pub(crate) fn queue_last_words(&mut self) {
        debug_assert_eq!(self.m.work(), 0, "last words before the work answered");
        let words = std::mem::take(&mut self.rare_mut().last_words);
        self.out.extend_from_slice(&words);
    }

    /// Whether the handler's own writes (`Conn::write`) are still queued: as
    /// [`ConnCore::writable`], but not after `close_after` (its bytes are the last).
    pub(crate) fn takes_own_writes(&self) -> bool {
        self.m.takes_own_writes()
    }

    /// Whether a handle's write taken from the inbox now is queued: as
    /// [`ConnCore::writable`], but not once the last words are queued.
    pub(crate) fn takes_handle_writes(&self) -> bool {
        self.m.takes_handle_writes()
    }

    /// Bytes the layers produced and not yet handed to the backend.
    pub(crate) fn wire_len(&self) -> usize {
        self.layers.as_ref().map_or(0, |s| s.wire.len())
    }

    pub(crate) fn connect_deadline(&self) -> Option<Instant> {
        self.rare.as_ref().and_then(|r| r.connect_deadline)
    }

    /// Bytes queued or in flight, including what handles posted and this thread has not
    /// taken from its inbox yet.
    pub(crate) fn queued(&self) -> usize {
        let own = self.own_queued();
        match &self.shared {
            Some(s) => {
                own + s
                    .backlog
                    .load(Ordering::Acquire)
                    .saturating_sub(self.published)
            }
            None => own,
        }
    }

    /// What the connection holds in memory for its peer: its queues (with what handles
    /// posted), their spare capacity, held input, the bytes in flight.
    pub(crate) fn footprint(&self) -> usize {
        let handles = self.queued() - self.own_queued();
        self.out.capacity()
            + self
                .layers
                .as_ref()
                .map_or(0, |l| l.wire.capacity() + l.held())
            + (self.inflight_cap as usize).max(self.inflight)
            + self.rbuf.capacity()
            + handles
    }

    /// This thread's own queue: bytes queued (plain and layered) or in flight.
    pub(crate) fn own_queued(&self) -> usize {
        self.out.len() + self.wire_len() + self.inflight
    }

    /// Takes a handle's write from the inbox into the queue (or drops it, no longer
    /// counted, when the connection takes no more bytes). The bytes stay in the handles'
    /// `backlog`, now as this thread's own part: no atomic step. Returns the emptied buffer
    /// to recycle: the queue's own one when the write's buffer became the queue, else the
    /// write's (appended or dropped). A relay forwards every read through here, so a buffer
    /// freed per write would churn the allocator (the heap trimmed and grown again, its pages
    /// faulted in afresh: 12-25 % of `tcp_proxy`'s CPU on 64 KiB echoes).
    pub(crate) fn take_handle_write(&mut self, mut data: Vec<u8>) -> Vec<u8> {
        if !self.takes_handle_writes() {
            if let Some(s) = &self.shared {
                s.backlog.fetch_sub(data.len(), Ordering::AcqRel);
            }
            data.clear();
            return data;
        }
        self.published += data.len();
        if self.out.is_empty() {
            let mut old = std::mem::replace(&mut self.out, data);
            old.clear();
            return old;
        }
        self.out.extend_from_slice(&data);
        data.clear();
        data
    }

    /// Makes the handles' `backlog` count this thread's queue as it is now (one atomic step
    /// by the difference, so that the handles' part is never lost or counted twice).
    pub(crate) fn publish_queued(&mut self) {
        let Some(s) = &self.shared else { return };
        let own = self.own_queued();
        if own > self.published {
            s.backlog.fetch_add(own - self.published, Ordering::AcqRel);
        } else if own < self.published {
            s.backlog.fetch_sub(self.published - own, Ordering::AcqRel);
        }
        self.published = own;
    }

    pub(crate) fn kill_handles(&mut self) {
        if let Some(s) = &self.shared {
            s.mark_dead();
        }
    }

    /// Whether more bytes may be queued.
    pub(crate) fn writable(&self) -> bool {
        self.m.writable()
    }

    /// Frames may be delivered to the handler now.
    pub(crate) fn wants_frames(&self) -> bool {
        self.m.wants_frames()
    }

    /// The cross-thread state, made on first use.
    pub(crate) fn shared(&mut self) -> Arc<ConnShared> {
        if !self.writable() {
            return ConnShared::dead();
        }
        let (low, high) = (self.write_low, self.write_high);
        let closing = !self.m.is_open();
        self.shared
            .get_or_insert_with(|| {
                let s = ConnShared::new(low, high);
                if closing {
                    s.closing.store(true, Ordering::Release); // plain handles: closed
                }
                s
            })
            .clone()
    }
}

/// Reusable send buffers of one IO thread ("pooled buffers").
pub(crate) struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    const KEEP: usize = 256;
    const MAX_CAPACITY: usize = 64 << 10;

    pub(crate) fn new() -> BufPool {
        BufPool { free: Vec::new() }
    }

    /// A pooled buffer, or a new empty one that its first write sizes to fit. Not a fixed
    /// 4 KiB: when thousands of connections each hold a send in flight at once (a burst of
    /// small replies), fixed 4 KiB buffers leave about a page per connection resident after
    /// the burst, in the pool and in the allocator's freed chunks (issue 21: 250 B of RSS per
    /// idle connection at 10k on epoll).
    pub(crate) fn get(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_default()
    }

    pub(crate) fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0
            && buf.capacity() <= Self::MAX_CAPACITY
            && self.free.len() < Self::KEEP
        {
            buf.clear();
            self.free.push(buf);
        }
    }
}

/// Token allocation with generations: a token is reused only after its connection's `Closed`,
/// and then with a new generation, so stale handles never reach the newcomer.
pub(crate) struct Slots {
    gens: Vec<u64>,
    free: Vec<Token>,
}

impl Slots {
    pub(crate) fn new() -> Slots {
        Slots {
            gens: Vec::new(),
            free: Vec::new(),
        }
    }

    /// A free token and its generation.
    pub(crate) fn alloc(&mut self) -> (Token, u64) {
        match self.free.pop() {
            Some(t) => (t, self.gens[t]),
            None => {
                self.gens.push(0);
                (self.gens.len() - 1, 0)
            }
        }
    }

    /// Frees `token`; its next user gets a new generation.
    pub(crate) fn release(&mut self, token: Token) {
        self.gens[token] += 1;
        self.free.push(token);
    }

    pub(crate) fn gen(&self, token: Token) -> Option<u64> {
        self.gens.get(token).copied()
    }
}

/// An outgoing connection a callback asked for (`Conn::connect`): opened by the engine right
/// after the callback returns, on this IO thread.
pub(crate) struct ConnectRequest {
    /// The new connection's layers (a TLS client; `None`: plain), or why they cannot be made.
    pub layers: Result<Option<Stack>, CloseReason>,
    /// Bytes sent first once connected (`ConnectOptions::preamble`).
    pub preamble: Vec<u8>,
    pub token: Token,
    pub gen: u64,
    pub addr: SocketAddr,
    pub timeout: Option<Duration>,
    pub options: SocketOptions,
    pub watermarks: (usize, usize),
    /// The state its handle already shares (`Conn::connect` returns the handle at once).
    pub shared: Option<Arc<ConnShared>>,
    pub app: Box<dyn DynConn>,
}

/// The part of an IO thread's state that callbacks may touch through `Conn`.
pub(crate) struct ThreadCtx {
    pub bufs: BufPool,
    pub dirty: Vec<Token>,
    pub inbox: Arc<dyn Inbox>,
    pub now: Instant,
    pub thread: usize,
    pub stats: Vec<Arc<ServerStats>>,
    pub slots: Slots,
    pub connects: Vec<ConnectRequest>,
    pub timers: Timers,
    pub next_id: u64,
    /// The index of the outgoing-connection pseudo-server.
    pub client_server: usize,
    /// The process-wide memory budget.
    pub budget: Budget,
}

impl ThreadCtx {
    pub(crate) fn mark_dirty(&mut self, token: Token, core: &mut ConnCore) {
        if core.m.mark_dirty() {
            self.dirty.push(token);
        }
    }

    pub(crate) fn stats(&self, server: usize) -> &ThreadStats {
        &self.stats[server].threads[self.thread]
    }

    /// A new connection id, unique within the engine.
    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        ((self.thread as u64) << 48) | self.next_id
    }

    pub(crate) fn handle(&self, token: Token, core: &mut ConnCore) -> ConnectionHandle {
        ConnectionHandle::new(self.inbox.clone(), token, core.gen, core.shared())
    }
}

/// A connection's handler and decoder behind one object-safe interface, so that servers with
/// different handler types share one connection table. Each method lends the connection's
/// state and the thread's context for one callback.
pub(crate) trait DynConn {
    fn open(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token);
    /// Decodes and delivers frames from `data`; returns how many bytes were consumed. On a
    /// decode error the connection is set closing and everything is consumed.
    fn data(
        &mut self,
        core: &mut ConnCore,
        ctx: &mut ThreadCtx,
        token: Token,
        data: &[u8],
    ) -> usize;
    fn read_closed(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token);
    fn notify(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token, value: u64);
    fn writable(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token, value: u64);
    fn timer(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token, id: u64);
    fn shutdown(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token);
    fn retire(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token);
    fn closed(&mut self, info: &ConnInfo, reason: &CloseReason);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> ConnCore {
        let addr = "127.0.0.1:1".parse().unwrap();
        ConnCore::new(0, 1, ConnInfo::new(addr, addr, 0), Instant::now())
    }

    /// What a handle sees (`backlog`) and what the IO thread sees (`queued`) agree at every
    /// step of a write's way: posted, taken into the queue, published, in flight, sent.
    #[test]
    fn a_handle_write_is_counted_once_at_every_step() {
        let mut c = core();
        c.out.extend_from_slice(&[1; 10]); // the handler's own write, not yet published
        let s = c.shared();
        c.publish_queued();
        assert_eq!((s.backlog(), c.queued()), (10, 10));

        s.backlog.fetch_add(100, Ordering::AcqRel); // `ConnectionHandle::write` posts 100
        assert_eq!((s.backlog(), c.queued()), (110, 110));
        let spent = c.take_handle_write(vec![2; 100]);
        assert!(
            spent.is_empty() && spent.capacity() >= 100,
            "appended to the queue; its buffer comes back to recycle"
        );
        assert_eq!(
            (s.backlog(), c.queued()),
            (110, 110),
            "taken: the word is unchanged"
        );
        c.publish_queued();
        assert_eq!((s.backlog(), c.queued()), (110, 110));

        // 60 bytes go in flight, then 60 are sent.
        c.out.drain(..60);
        c.inflight = 60;
        c.publish_queued();
        assert_eq!((s.backlog(), c.queued()), (110, 110));
        c.inflight = 0;
        c.publish_queued();
        assert_eq!((s.backlog(), c.queued()), (50, 50));

        // Into an empty queue the write's own buffer becomes the queue.
        c.out.clear();
        c.publish_queued();
        s.backlog.fetch_add(7, Ordering::AcqRel);
        let old = c.take_handle_write(vec![3; 7]);
        assert!(old.is_empty(), "the emptied queue comes back");
        assert_eq!((s.backlog(), c.queued(), c.out.len()), (7, 7, 7));

        // A closed connection drops what is taken, and stops counting it.
        c.publish_queued();
        c.on(crate::machine::Event::Close(CloseReason::Local));
        c.m.flush_close(true); // drained: FIN, lingering
        s.backlog.fetch_add(5, Ordering::AcqRel);
        assert!(c.take_handle_write(vec![4; 5]).is_empty());
        assert_eq!((s.backlog(), c.out.len()), (7, 7));
    }
}
#[cfg(test)]
mod size_tests {
    /// The connection entry is most of an idle connection's memory (issue 21: at most 512 B
    /// of RSS per idle connection at 10k connections): it must not grow unnoticed. State few
    /// connections need goes in `Rare`, the layers' in their `Stack`.
    #[test]
    fn conn_core_stays_small() {
        let size = std::mem::size_of::<super::ConnCore>();
        // 288 after issue 21's shrink; +8 for `info.unix` (a Box: Unix peers only), +8 for
        // the memory budget's `charged` and `inflight_cap`; -8 for the machine (its eight
        // yes/no flags in one byte).
        assert!(size <= 296, "ConnCore grew to {size} bytes (296 before)");
    }
}
