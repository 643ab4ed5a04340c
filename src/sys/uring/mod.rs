//! The io_uring backend: one ring per IO thread, completion-based end to end.
//!
//! # Lifecycle of an operation
//!
//! 1. **Submitted.** A method (`register`, `send`, `close`, ...) builds one SQE with
//!    `user_data = (kind << 56) | token` and pushes it with [`UringBackend::push`], which counts
//!    it in `in_flight`. If the submission queue is full it submits what is there and retries;
//!    if that still fails the SQE waits in `backlog` (in order) until the next `wait`. No SQE is
//!    ever dropped. Everything an SQE points at (send `Vec`, sockaddr, eventfd buffer, the
//!    provided-buffer ring) is owned by the backend and is not touched until its CQE.
//! 2. **In flight.** [`Backend::wait`] hands the queue to the kernel and sleeps in the same
//!    `io_uring_enter` (submit + GETEVENTS + timeout, one syscall per loop turn). Per-token state
//!    in [`Conn`] records which ops the kernel holds (`recv`, `recv_cancel`, `err_poll`, `send`,
//!    `connect`, `cancels`), so a method never arms a second multishot recv while the first (or a
//!    cancel aimed at it) is still in the kernel. A multishot recv takes at most
//!    `RECV_CAP_BUFFERS` buffers and is re-armed at the next `wait`; a connection that is not
//!    read keeps a poll for errors armed (`ops.rs`, `arm_recv` and `arm_err_poll`).
//! 3. **CQE.** [`Backend::next`] pops one CQE, decodes kind and token, updates the per-token
//!    state and turns it into an [`Event`]. A multishot op (accept, recv) stays in flight while
//!    its CQEs carry `IORING_CQE_F_MORE`; the first CQE without it ends the op (`in_flight -= 1`)
//!    and the backend re-arms it if it should still run.
//! 4. **Buffer returned / slot freed.** A recv CQE names a provided buffer (`bid`). It is lent to
//!    the engine as `Event::Data` and goes back to the buffer ring at the next `next()`/`wait()`,
//!    so the backend holds at most one buffer at a time. A send's `Vec` goes back to the engine in
//!    `SendDone`/`SendError` (short sends are resubmitted from the offset reached).
//!    With `RINGPORT_URING_RECV=own` (`ownbuf.rs`) a recv writes into the connection's own
//!    buffer instead (`Conn::own`, lent while the recv is armed): lent to the engine the same
//!    way, re-armed at the next `next()`/`wait()`, back to the free list when not re-armed.
//!
//! # A connection's ops at close
//!
//! `close(token, abort)` marks the connection `Closing` (abort first sets `SO_LINGER {1, 0}` so
//! the close resets) and, if the kernel holds any op on it, submits one cancel-by-fd
//! (`IORING_ASYNC_CANCEL_FD | ALL`, per-op `AsyncCancel` on kernels without it). Every CQE that
//! still arrives for the token is swallowed (data buffers are recycled at once). When no op and
//! no cancel is left, `IORING_OP_CLOSE` closes the fd through the ring, and its CQE produces
//! the one `Event::Closed`; only then is the slot forgotten, so a reused token can never see a
//! stale CQE. The send buffer and sockaddr live in the `Conn` until then.
//!
//! `shutdown` first cancels everything in the ring (`AsyncCancel` with `CancelBuilder::any()`:
//! recvs, sends, accepts, the eventfd read), then closes listeners and every connection this
//! way, and reaps until `in_flight == 0` or the deadline. `Drop` unregisters and unmaps the
//! buffer ring only if nothing is in flight; otherwise it leaks the memory the kernel might
//! still write to rather than free it.
//!
//! The ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN` when the kernel has them, so the
//! backend must be created on the IO thread that uses it (`io_uring_enter(2)`: with
//! DEFER_TASKRUN, GETEVENTS must come from the thread that created the ring).

//!
//! The backend is split by concern: `probe.rs` (ring setup and the kernel probe), `bufring.rs`
//! (the provided-buffer ring and the wake eventfd), `ops.rs` (SQE kinds, one function per
//! kernel operation, and the completions), `ownbuf.rs` (per-connection receive buffers for
//! `RINGPORT_URING_RECV=own`), this file (per-connection state and the [`Backend`]
//! impl), `tuning.rs` (the experiment switches).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd};
use io_uring::{opcode, squeue, IoUring};

use super::{Backend, BackendConfig, Event, Token, Waker};
use bufring::{BufRing, EventFd, Trim};
use ops::{reset_and_close, set_linger_zero, user_data, Kind};
pub(crate) use probe::probe;
use probe::{build_ring, check_features};

mod bufring;
mod enter;
mod ops;
mod ownbuf;
mod probe;
mod trace;
mod tuning;

/// The buffer group id of the (single) provided-buffer ring.
const BGID: u16 = 0;

/// A multishot recv ends after this many receive buffers' worth of bytes and is re-armed at
/// the next loop turn: what a connection receives per loop turn is bounded, so a connection
/// the engine pauses has at most that much more arriving (issue 27; epoll reads one buffer
/// per turn).
const RECV_CAP_BUFFERS: usize = 4;

struct Listener {
    /// `None` once `close_listeners` closed it; accepts the kernel completed before that are
    /// still delivered (the engine decides: a retired process serves them, a drain closes them).
    socket: Option<TcpListener>,
    fd: RawFd,
    /// A multishot accept is in the kernel.
    armed: bool,
    /// An AsyncCancel aimed at it is in the kernel.
    cancel: bool,
    /// After an accept error, until `resume_accept`.
    paused: bool,
}

/// The send in flight: the buffer and how much of it the kernel has taken so far.
struct SendOp {
    buf: Vec<u8>,
    sent: usize,
    /// The kernel holds a POLLOUT wait for this send rather than the send itself.
    polling: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ConnState {
    Open,
    /// `close` was called; waiting for ops and cancels to finish.
    Closing,
    /// `IORING_OP_CLOSE` is in the kernel; its CQE gives `Event::Closed`.
    CloseSubmitted,
}

struct Conn {
    fd: RawFd,
    state: ConnState,
    /// The engine wants data (`set_reading`).
    reading: bool,
    /// Connected and no EOF / read error yet.
    read_open: bool,
    /// A multishot recv is in the kernel.
    recv: bool,
    /// An AsyncCancel aimed at that recv is in the kernel.
    recv_cancel: bool,
    /// A poll for an error or hang-up (`Kind::ErrPoll`) is in the kernel: armed whenever no
    /// recv is wanted (paused, or past EOF), so that a reset is still learned.
    err_poll: bool,
    /// That poll saw a hang-up without an error (both directions shut): not re-armed.
    hup_seen: bool,
    send: Option<SendOp>,
    /// Connect in flight: the address the kernel reads from.
    connect: Option<Box<socket2::SockAddr>>,
    /// Close-path cancels in the kernel.
    cancels: u32,
    /// Its direct descriptor (slot in the ring's file table), if it has one.
    slot: Option<u32>,
    /// Its receive buffer (`RINGPORT_URING_RECV=own`) while a recv on it is armed or its data
    /// is lent; the kernel writes into it while `recv` is set.
    /// Boxed: the mode is a switch, off by default, and every connection pays for the field
    /// (8 bytes instead of 24; the extra allocation is made only in that mode).
    #[allow(clippy::box_collection)]
    own: Option<Box<Vec<u8>>>,
}

impl Conn {
    fn new(fd: RawFd, read_open: bool) -> Conn {
        Conn {
            fd,
            state: ConnState::Open,
            reading: true,
            read_open,
            recv: false,
            recv_cancel: false,
            err_poll: false,
            hup_seen: false,
            send: None,
            connect: None,
            cancels: 0,
            slot: None,
            own: None,
        }
    }

    /// How an SQE names the socket: its direct descriptor if it has one, else its fd.
    fn target(&self) -> (Fd, squeue::Flags) {
        match self.slot {
            Some(slot) => (Fd(slot as RawFd), squeue::Flags::FIXED_FILE),
            None => (Fd(self.fd), squeue::Flags::empty()),
        }
    }

    fn ops_in_flight(&self) -> bool {
        self.recv
            || self.recv_cancel
            || self.err_poll
            || self.send.is_some()
            || self.connect.is_some()
            || self.cancels > 0
    }
}

/// A completion turned into something to report. `Data` names a buffer instead of borrowing it
/// so that `next` can loop over swallowed CQEs without holding a borrow.
enum Out {
    Event(Event<'static>),
    Data { token: Token, buf: Lent, len: usize },
}

/// Which buffer holds the data of an `Out::Data`.
#[derive(Clone, Copy)]
enum Lent {
    /// Buffer `bid` of the provided-buffer ring, from byte `off`; `last`: the kernel is done
    /// with the buffer (recycled once the engine is done with the data).
    Ring { bid: u16, off: u32, last: bool },
    /// The connection's own buffer (`Conn::own`, `RINGPORT_URING_RECV=own`).
    Own,
}

pub(crate) struct UringBackend {
    ring: IoUring,
    bufs: BufRing,
    /// The buffer lent out in the last `Event::Data`.
    held: Option<u16>,
    /// How connections receive (`RINGPORT_URING_RECV`; tests may set it before connecting).
    recv_mode: tuning::Recv,
    /// Per-connection receive buffers (`RINGPORT_URING_RECV=own`).
    own: ownbuf::OwnBufs,
    /// Bytes one multishot recv may take before it ends (`None`: the kernel predates the
    /// limit, 6.16; see `arm_recv`).
    recv_cap: Option<u32>,
    /// Under memory pressure (`set_recv_tight`): a recv is armed single-shot, one buffer at
    /// most, instead of multishot.
    tight: bool,
    /// Connections whose recv ended and is re-armed at the next `wait()` (after the engine's
    /// flush: a connection paused in the meantime is not re-armed at all).
    rearm: Vec<Token>,
    /// The connection whose own buffer was lent out in the last `Event::Data`; its recv is
    /// re-armed at the next `next()`/`wait()`.
    held_own: Option<Token>,
    wake: Arc<EventFd>,
    /// The eventfd read op's target; lives as long as the backend (or is leaked).
    wake_buf: Box<u64>,
    listeners: Vec<Option<Listener>>,
    conns: Vec<Option<Conn>>,
    /// SQEs that did not fit in the submission queue, in order.
    backlog: VecDeque<squeue::Entry>,
    /// SQEs pushed whose final CQE has not been reaped.
    in_flight: usize,
    /// Events made without a CQE (e.g. an empty send).
    pending: VecDeque<Event<'static>>,
    cancel_by_fd: bool,
    shutting_down: bool,
    /// The ring's registered index (`RINGPORT_URING_RINGFD=on`).
    ring_index: Option<u32>,
    /// Slots in the ring's file table (`RINGPORT_URING_FIXED=on`); tokens below it use one.
    fixed_slots: usize,
    /// Loop-turn record (`RINGPORT_URING_TRACE=1`, `trace.rs`).
    trace: Option<Box<trace::Trace>>,
    /// The wait of each loop turn (`RINGPORT_URING_WAIT`, `enter.rs`).
    wait_rule: enter::WaitRule,
    /// When the buffer ring's pages go back to the kernel (`RINGPORT_URING_TRIM`; `None`: off,
    /// or a ring without DEFER_TASKRUN).
    trim: Option<Trim>,
}

/// Direct-descriptor slots per ring with `RINGPORT_URING_FIXED=on` (tokens are per thread, so
/// this covers 4096 connections per IO thread; later ones use their fd). At most the soft
/// RLIMIT_NOFILE, which the kernel enforces on the table.
const FIXED_SLOTS: u32 = 4096;

impl UringBackend {
    pub(crate) fn new(config: &BackendConfig) -> io::Result<Self> {
        let ring = build_ring(config.ring_entries)?;
        check_features(&ring).map_err(io::Error::other)?;
        let mut bufs = BufRing::new(config.recv_buffer_count, config.recv_buffer_size)?;
        bufs.register(&ring, tuning::tuning().incremental)?;
        // Non-blocking is fine: io_uring polls pollable files such as eventfd instead of
        // failing the read with EAGAIN (fixed in 5.7 stable, liburing issue #143).
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            let _ = ring.submitter().unregister_buf_ring(BGID);
            return Err(err);
        }
        let mut backend = UringBackend {
            bufs,
            held: None,
            recv_mode: tuning::tuning().recv,
            own: ownbuf::OwnBufs::new(config.recv_buffer_size),
            recv_cap: u32::try_from(config.recv_buffer_size * RECV_CAP_BUFFERS).ok(),
            tight: false,
            rearm: Vec::new(),
            held_own: None,
            wake: Arc::new(EventFd(fd)),
            wake_buf: Box::new(0),
            listeners: Vec::new(),
            conns: Vec::new(),
            backlog: VecDeque::new(),
            in_flight: 0,
            pending: VecDeque::new(),
            cancel_by_fd: true,
            shutting_down: false,
            ring_index: None,
            fixed_slots: 0,
            trace: trace::enabled().then(|| Box::new(trace::Trace::new())),
            wait_rule: enter::WaitRule::new(&ring),
            // DEFER_TASKRUN (only the `defer` setup asks for it, with SINGLE_ISSUER, which no
            // fallback has): the kernel writes into the buffers only in this thread's enter.
            trim: tuning::tuning()
                .trim
                .filter(|_| {
                    tuning::tuning().setup == tuning::Setup::Defer
                        && ring.params().is_setup_single_issuer()
                })
                .map(Trim::new),
            ring,
        };
        let t = tuning::tuning();
        if t.ring_fd {
            backend.use_registered_ring();
        }
        if t.fixed_files {
            backend.use_fixed_files(FIXED_SLOTS);
        }
        backend.arm_wake();
        Ok(backend)
    }

    /// Enters the ring by its registered index from now on (`RINGPORT_URING_RINGFD=on`).
    fn use_registered_ring(&mut self) {
        self.ring_index = enter::register_ring_fd(&self.ring);
        if self.ring_index.is_none() {
            tracing::warn!("registering the ring fd failed; entering the ring by its fd");
        }
    }

    /// Gives connections registered from now on a direct descriptor, slot = token, for tokens
    /// below `slots` (`RINGPORT_URING_FIXED=on`).
    fn use_fixed_files(&mut self, mut slots: u32) {
        if self.fixed_slots > 0 {
            return; // a ring has one file table
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the live struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            slots = slots.min(limit.rlim_cur.min(u32::MAX as libc::rlim_t) as u32);
        }
        if slots == 0 {
            return;
        }
        match self.ring.submitter().register_files_sparse(slots) {
            Ok(()) => self.fixed_slots = slots as usize,
            Err(e) => tracing::warn!("no file table for direct descriptors: {e}"),
        }
    }

    /// Queues one SQE (see the module doc: never dropped; overflow goes to `backlog`).
    fn push(&mut self, entry: squeue::Entry) {
        self.in_flight += 1;
        if self.backlog.is_empty() && self.try_push(&entry) {
            return;
        }
        self.backlog.push_back(entry);
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        for attempt in 0..2 {
            // SAFETY: every SQE built in this file points only at backend-owned memory that
            // stays alive and unmoved until its CQE (see the lifecycle in the module doc).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            if attempt == 0 && self.ring.submit().is_err() {
                return false;
            }
        }
        false
    }

    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            if !self.try_push(&entry) {
                self.backlog.push_front(entry);
                break;
            }
        }
    }

    /// Gives the buffer ring's pages back to the kernel after a quiet spell (`Trim`), if no
    /// byte the kernel wrote into them can still be unread: no buffer out (`BufRing` checks),
    /// no completion waiting in the queue or in the kernel's overflow list. With DEFER_TASKRUN
    /// the kernel copies received bytes only inside this thread's `io_uring_enter` and posts
    /// their CQE in the same call, so nothing lands between this check and the release.
    fn release_ring_pages(&mut self) {
        debug_assert!(self.trim.is_some(), "only with DEFER_TASKRUN");
        debug_assert!(self.held.is_none(), "wait() recycles the lent buffer first");
        if !self.ring.completion().is_empty() || self.ring.submission().cq_overflow() {
            return;
        }
        self.bufs.release_pages();
    }

    fn recycle_held(&mut self) {
        if let Some(bid) = self.held.take() {
            self.bufs.recycle(bid);
        }
        if let Some(token) = self.held_own.take() {
            // The engine is done with the data: the same buffer takes the next receive.
            self.arm_recv(token);
            self.release_own(token);
        }
    }

    /// Returns a connection's own buffer to the free list unless the kernel holds it (an
    /// armed recv).
    fn release_own(&mut self, token: Token) {
        let Some(Some(c)) = self.conns.get_mut(token) else {
            return;
        };
        if c.recv {
            return;
        }
        if let Some(buf) = c.own.take() {
            self.own.give(*buf);
        }
    }

    fn conn(&mut self, token: Token) -> Option<&mut Conn> {
        self.conns.get_mut(token).and_then(Option::as_mut)
    }

    fn listener(&mut self, id: usize) -> Option<&mut Listener> {
        self.listeners.get_mut(id).and_then(Option::as_mut)
    }

    fn insert_conn(&mut self, token: Token, conn: Conn) {
        if self.conns.len() <= token {
            self.conns.resize_with(token + 1, || None);
        }
        self.conns[token] = Some(conn);
    }
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn shutdown_write(&mut self, token: Token) {
        if let Some(c) = self.conn(token) {
            if c.state == ConnState::Open {
                // SAFETY: `c.fd` is a socket this backend owns and has not closed (state Open);
                // shutdown(2) only changes the connection's state, no memory is shared.
                unsafe { libc::shutdown(c.fd, libc::SHUT_WR) };
            }
        }
    }

    fn add_listener(&mut self, id: usize, listener: TcpListener) -> io::Result<()> {
        if self.listeners.len() <= id {
            self.listeners.resize_with(id + 1, || None);
        }
        let fd = listener.as_raw_fd();
        let l = Listener {
            socket: Some(listener),
            fd,
            armed: false,
            cancel: false,
            paused: false,
        };
        self.listeners[id] = Some(l);
        self.arm_accept(id);
        Ok(())
    }

    /// Only with `RINGPORT_URING_BALANCE=on` (`tuning.rs`): the engine then hands what each
    /// thread's listener accepts to the IO threads round robin.
    fn accepts_for_all(&self) -> bool {
        tuning::tuning().balance
    }

    fn resume_accept(&mut self, id: usize) {
        if let Some(l) = self.listener(id) {
            l.paused = false;
        }
        self.arm_accept(id);
    }

    fn close_listeners(&mut self) {
        for id in 0..self.listeners.len() {
            self.cancel_accept(id);
        }
        // The cancels must reach the kernel before the fds close (the numbers could be reused).
        self.flush_backlog();
        let _ = self.ring.submit();
        for id in 0..self.listeners.len() {
            if let Some(l) = self.listener(id) {
                l.socket = None; // closes the fd; an in-flight accept keeps its own file reference
            }
            self.forget_closed_listener(id);
        }
    }

    fn register(&mut self, token: Token, stream: TcpStream) -> io::Result<()> {
        if self.conn(token).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token still in use",
            ));
        }
        let fd = stream.into_raw_fd();
        let mut conn = Conn::new(fd, true);
        if token < self.fixed_slots {
            let update = self
                .ring
                .submitter()
                .register_files_update(token as u32, &[fd]);
            conn.slot = update.is_ok().then_some(token as u32);
        }
        self.insert_conn(token, conn);
        self.arm_recv(token);
        if let Some(t) = self.trace.as_mut() {
            t.opened();
        }
        Ok(())
    }

    fn connect(&mut self, token: Token, socket: socket2::Socket, addr: SocketAddr) {
        // The only place that submits a connect, so the SQE is built inline. Non-blocking like
        // every socket here: an operation the kernel punts to a worker thread must not block it.
        let _ = socket.set_nonblocking(true);
        let fd = socket.into_raw_fd();
        let addr = Box::new(socket2::SockAddr::from(addr));
        let entry = opcode::Connect::new(Fd(fd), addr.as_ptr().cast(), addr.len())
            .build()
            .user_data(user_data(Kind::Connect, token));
        let mut conn = Conn::new(fd, false);
        conn.connect = Some(addr); // the Box moves, its heap block (read by the kernel) does not
        self.insert_conn(token, conn);
        self.push(entry);
        if let Some(t) = self.trace.as_mut() {
            t.opened();
        }
    }

    fn set_reading(&mut self, token: Token, on: bool) {
        let Some(c) = self.conn(token) else { return };
        if c.state != ConnState::Open {
            return;
        }
        c.reading = on;
        if on {
            self.arm_recv(token);
        } else {
            self.cancel_recv(token);
            // A paused connection must still learn of a reset (issue 27).
            self.arm_err_poll(token);
        }
    }

    fn set_recv_tight(&mut self, tight: bool) {
        self.tight = tight;
    }

    fn send(&mut self, token: Token, buf: Vec<u8>) {
        let Some(c) = self.conn(token) else { return };
        if c.state != ConnState::Open {
            return;
        }
        if buf.is_empty() || c.send.is_some() {
            let event = if buf.is_empty() {
                Event::SendDone { token, buf }
            } else {
                let error = io::Error::other("a send is already in flight for this connection");
                Event::SendError { token, error, buf }
            };
            self.pending.push_back(event);
            return;
        }
        c.send = Some(SendOp {
            buf,
            sent: 0,
            polling: false,
        });
        self.submit_send(token);
    }

    fn close(&mut self, token: Token, abort: bool) {
        let Some(c) = self.conn(token) else { return };
        if c.state != ConnState::Open {
            return;
        }
        if abort {
            set_linger_zero(c.fd);
        }
        c.state = ConnState::Closing;
        c.reading = false;
        if c.recv || c.err_poll || c.send.is_some() || c.connect.is_some() {
            self.cancel_conn_ops(token);
        }
        self.finish_close(token);
        // Nothing queued for this token may be reported any more.
        self.pending.retain(|e| !matches!(e, Event::SendDone { token: t, .. } | Event::SendError { token: t, .. } if *t == token));
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.recycle_held();
        for token in std::mem::take(&mut self.rearm) {
            self.arm_recv(token);
        }
        self.flush_backlog();
        let ready = !self.pending.is_empty()
            || !self.backlog.is_empty()
            || !self.ring.completion().is_empty();
        if let Some(t) = self.trace.as_mut() {
            t.wait_begins();
        }
        let wait = self.wait_rule.next_turn();
        let timeout = match self.trim.as_mut() {
            Some(trim) => trim.timeout(&self.bufs, timeout),
            None => timeout,
        };
        let entered = self.enter(ready, wait, timeout);
        if let Some(t) = self.trace.as_mut() {
            t.wait_ends();
        }
        match entered {
            Ok(_) => Ok(()),
            // Timed out: a quiet ring may give its pages back.
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                if self.trim.as_mut().is_some_and(Trim::timed_out) {
                    self.release_ring_pages();
                }
                Ok(())
            }
            // Timeout, signal, or CQ overflow backpressure (reap and retry next turn).
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn next(&mut self) -> Option<Event<'_>> {
        self.recycle_held();
        if let Some(event) = self.pending.pop_front() {
            return Some(event);
        }
        let out = loop {
            let cqe = self.ring.completion().next()?;
            self.wait_rule.reaped();
            if let Some(out) = self.complete(cqe) {
                break out;
            }
        };
        if let Some(t) = self.trace.as_mut() {
            t.event();
            match &out {
                Out::Data { token, .. } => t.recv(*token),
                Out::Event(Event::Closed { .. }) => t.closed(),
                Out::Event(_) => {}
            }
        }
        Some(match out {
            Out::Event(event) => event,
            Out::Data {
                token,
                buf: Lent::Ring { bid, off, last },
                len,
            } => {
                if last {
                    self.held = Some(bid);
                }
                Event::Data {
                    token,
                    data: self.bufs.data(bid, off as usize, len),
                }
            }
            Out::Data {
                token,
                buf: Lent::Own,
                len,
            } => {
                self.held_own = Some(token);
                let buf = self.conns[token].as_ref().and_then(|c| c.own.as_deref());
                Event::Data {
                    token,
                    data: &buf.expect("own buffer lent with its data")[..len],
                }
            }
        })
    }

    fn unsent(&self, token: Token) -> Option<usize> {
        let c = self.conns.get(token)?.as_ref()?;
        if c.state != ConnState::Open {
            return None;
        }
        super::outq::unsent(c.fd)
    }

    fn waker(&self) -> Arc<dyn Waker> {
        self.wake.clone()
    }

    fn shutdown(&mut self, deadline: Duration) {
        let end = Instant::now() + deadline;
        self.shutting_down = true;
        // Cancel everything the kernel holds in one SQE (5.19), *before* the closes below are
        // queued so that it cannot cancel an IORING_OP_CLOSE. The state changes below stop
        // every completion from re-arming anything.
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(user_data(Kind::CancelAll, 0));
        self.push(entry);
        self.close_listeners();
        for token in 0..self.conns.len() {
            self.close(token, false);
        }
        while self.in_flight > 0 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if self.wait(Some(end - now)).is_err() {
                break;
            }
            while self.next().is_some() {}
        }
        self.recycle_held();
        self.pending.clear();
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        if !self.shutting_down {
            self.shutdown(Duration::from_secs(1));
        }
        // Connections whose close never completed still own their descriptors. The peer must
        // learn the connection is gone (a reset: their data was not all sent) and the process
        // must not leak the descriptor, even when the kernel still holds an operation on it.
        // shutdown(2) acts on the socket itself, at once, whatever file references the kernel
        // holds: pending receives and sends complete; the close then drops our reference.
        for c in self.conns.iter().flatten() {
            if c.state != ConnState::CloseSubmitted {
                reset_and_close(c.fd);
            }
        }
        if self.in_flight > 0 {
            // The kernel may still write to (or read from) these buffers: leak the memory
            // rather than free it. The descriptors are closed above.
            self.bufs.leak = true;
            std::mem::forget(std::mem::take(&mut self.conns));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        } else {
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
        }
        if let Some(index) = self.ring_index.take() {
            enter::unregister_ring_fd(&self.ring, index);
        }
        if let Some(t) = self.trace.take() {
            eprintln!("{}", t.summary());
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod close_tests;

#[cfg(test)]
mod own_tests;

#[cfg(test)]
mod trim_tests;
