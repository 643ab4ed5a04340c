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
//!    in [`Conn`] records which ops the kernel holds (`recv`, `recv_cancel`, `send`, `connect`,
//!    `cancels`), so a method never arms a second multishot recv while the first (or a cancel
//!    aimed at it) is still in the kernel.
//! 3. **CQE.** [`Backend::next`] pops one CQE, decodes kind and token, updates the per-token
//!    state and turns it into an [`Event`]. A multishot op (accept, recv) stays in flight while
//!    its CQEs carry `IORING_CQE_F_MORE`; the first CQE without it ends the op (`in_flight -= 1`)
//!    and the backend re-arms it if it should still run.
//! 4. **Buffer returned / slot freed.** A recv CQE names a provided buffer (`bid`). It is lent to
//!    the engine as `Event::Data` and goes back to the buffer ring at the next `next()`/`wait()`,
//!    so the backend holds at most one buffer at a time. A send's `Vec` goes back to the engine in
//!    `SendDone`/`SendError` (short sends are resubmitted from the offset reached).
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

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use super::{Backend, BackendConfig, Event, Token, Waker};
use tuning::{tuning, Setup};

#[path = "uring_tuning.rs"]
mod tuning;

/// The buffer group id of the (single) provided-buffer ring.
const BGID: u16 = 0;

/// What an SQE is for; the top byte of its `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Wake = 1,
    Accept,
    AcceptCancel,
    Recv,
    RecvCancel,
    Send,
    Connect,
    /// A close-path cancel of a connection's ops (by fd, or per op on old kernels).
    CancelFd,
    CancelOp,
    Close,
    /// `CancelBuilder::any()` at shutdown.
    CancelAll,
    /// A send found the socket full (`-EAGAIN`): wait for POLLOUT, then send the rest.
    SendPoll,
}

const KINDS: [Kind; 12] = [
    Kind::Wake,
    Kind::Accept,
    Kind::AcceptCancel,
    Kind::Recv,
    Kind::RecvCancel,
    Kind::Send,
    Kind::Connect,
    Kind::CancelFd,
    Kind::CancelOp,
    Kind::Close,
    Kind::CancelAll,
    Kind::SendPoll,
];

fn user_data(kind: Kind, index: usize) -> u64 {
    ((kind as u64) << 56) | (index as u64 & ((1 << 56) - 1))
}

fn decode(user_data: u64) -> Option<(Kind, usize)> {
    let tag = (user_data >> 56) as u8;
    let kind = KINDS.iter().copied().find(|k| *k as u8 == tag)?;
    Some((kind, (user_data & ((1 << 56) - 1)) as usize))
}

/// Sets up a ring, best flags first (see [`Setup`]); falls back to fewer flags on older kernels.
fn build_ring(entries: u32) -> io::Result<IoUring> {
    let t = tuning();
    let cq = entries.saturating_mul(t.cq_factor).max(entries);
    let mut best = IoUring::builder();
    best.setup_cqsize(cq);
    match t.setup {
        Setup::Defer => best.setup_single_issuer().setup_defer_taskrun(),
        Setup::Coop => best.setup_coop_taskrun().setup_taskrun_flag(),
        Setup::Single => best.setup_single_issuer(),
        Setup::Plain => &mut best,
    };
    let mut coop = IoUring::builder();
    coop.setup_coop_taskrun().setup_cqsize(cq);
    let mut plain = IoUring::builder();
    plain.setup_cqsize(cq);
    let first = best.build(entries);
    match t.setup {
        Setup::Defer => first
            .or_else(|_| coop.build(entries))
            .or_else(|_| plain.build(entries)),
        _ => first.or_else(|_| plain.build(entries)),
    }
}

/// Whether the kernel can run this backend; `Err` holds a short human reason.
pub(crate) fn probe(config: &BackendConfig) -> Result<(), String> {
    let ring = build_ring(config.ring_entries).map_err(|e| {
        format!("io_uring_setup failed: {e} (seccomp or kernel.io_uring_disabled?)")
    })?;
    check_features(&ring)?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let ops = [
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
        (opcode::Connect::CODE, "IORING_OP_CONNECT"),
        (opcode::Close::CODE, "IORING_OP_CLOSE"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Read::CODE, "IORING_OP_READ"),
        // Multishot recv (6.0) has no opcode of its own; SEND_ZC arrived in the same release,
        // so its presence is the cheapest marker that RecvMulti works.
        (
            opcode::SendZc::CODE,
            "IORING_OP_SEND_ZC (marker for multishot recv, 6.0+)",
        ),
    ];
    for (code, name) in ops {
        if !probe.is_supported(code) {
            return Err(format!("kernel lacks {name}"));
        }
    }
    let bufs = BufRing::new(config.recv_buffer_count, config.recv_buffer_size)
        .map_err(|e| format!("provided-buffer ring: {e}"))?;
    bufs.register(&ring)
        .map_err(|e| format!("registering a provided-buffer ring failed: {e} (needs 5.19+)"))?;
    let _ = ring.submitter().unregister_buf_ring(BGID);
    Ok(())
}

fn check_features(ring: &IoUring) -> Result<(), String> {
    if !ring.params().is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (wait with timeout, 5.11+)".into());
    }
    if !ring.params().is_feature_nodrop() {
        return Err("kernel lacks IORING_FEAT_NODROP (5.5+)".into());
    }
    Ok(())
}

/// The provided-buffer ring: `count` entries (kernel-shared, page-aligned) followed by
/// `count * size` bytes of buffers, in one anonymous mapping. See io_uring_register_buf_ring(3):
/// the ring memory must be page aligned, `ring_entries` a power of two up to 32768, and the
/// tail (a u16 overlaying `bufs[0].resv`) is published with a release store.
struct BufRing {
    base: NonNull<u8>,
    map_len: usize,
    ring_len: usize,
    count: u16,
    size: usize,
    tail: u16,
    leak: bool,
}

impl BufRing {
    fn new(count: u16, size: usize) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffer_count must be a power of two <= 32768 and recv_buffer_size in 1..4GiB",
            ));
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let entry = std::mem::size_of::<io_uring::types::BufRingEntry>();
        let ring_len = (count as usize * entry).div_ceil(page) * page;
        let map_len = ring_len + count as usize * size;
        // SAFETY: an anonymous private mapping aliases no existing memory; the result is
        // checked for MAP_FAILED below. mmap returns page-aligned, zero-filled memory.
        // Not MAP_POPULATE: a buffer's pages become resident only when the kernel first
        // writes into them, so small messages touch one page per buffer, not the whole ring.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).expect("mmap returned null");
        let mut ring = BufRing {
            base,
            map_len,
            ring_len,
            count,
            size,
            tail: 0,
            leak: false,
        };
        for bid in 0..count {
            ring.recycle(bid);
        }
        Ok(ring)
    }

    fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the ring memory is a live page-aligned mapping of `count` entries; it stays
        // mapped until Drop, which only unmaps after unregistering (or leaks it).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.base.as_ptr() as u64,
                self.count,
                BGID,
                0,
            )
        }
    }

    fn entries(&self) -> *mut io_uring::types::BufRingEntry {
        self.base.as_ptr().cast()
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < count, so the offset stays inside the mapping.
        unsafe {
            self.base
                .as_ptr()
                .add(self.ring_len + bid as usize * self.size)
        }
    }

    /// Gives buffer `bid` (back) to the kernel: fill the entry at the tail, then publish it.
    fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let index = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `index < count`; the entry at the tail is owned by userspace until the tail
        // store below publishes it. set_* leave `resv` (the shared tail of entry 0) untouched.
        unsafe {
            let entry = &mut *self.entries().add(index);
            entry.set_addr(self.buf_ptr(bid) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is a naturally aligned u16 inside the mapping that the kernel reads
        // concurrently, hence the atomic; Release orders the entry writes before it.
        unsafe {
            let tail = io_uring::types::BufRingEntry::tail(self.entries()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes the kernel wrote into buffer `bid`.
    fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.size);
        // SAFETY: the CQE that named `bid` handed the buffer to us; the kernel does not write it
        // again until `recycle(bid)`, which needs `&mut self` and so ends this borrow first.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(bid), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if !self.leak {
            // SAFETY: the mapping is ours and the kernel no longer uses it (unregistered, or
            // never registered); `leak` is set whenever that cannot be guaranteed.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
        }
    }
}

/// The eventfd other threads write to; a read op in the ring turns it into `Event::Wake`.
struct EventFd(RawFd);

impl Waker for EventFd {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd this struct owns.
        unsafe { libc::write(self.0, (&one as *const u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this struct (shared through Arc), closed exactly once.
        unsafe { libc::close(self.0) };
    }
}

struct Listener {
    /// `None` once `close_listeners` closed it; late accepts are then closed, not delivered.
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
    send: Option<SendOp>,
    /// Connect in flight: the address the kernel reads from.
    connect: Option<Box<socket2::SockAddr>>,
    /// Close-path cancels in the kernel.
    cancels: u32,
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
            send: None,
            connect: None,
            cancels: 0,
        }
    }

    fn ops_in_flight(&self) -> bool {
        self.recv
            || self.recv_cancel
            || self.send.is_some()
            || self.connect.is_some()
            || self.cancels > 0
    }
}

/// A completion turned into something to report. `Data` names a buffer instead of borrowing it
/// so that `next` can loop over swallowed CQEs without holding a borrow.
enum Out {
    Event(Event<'static>),
    Data { token: Token, bid: u16, len: usize },
}

pub(crate) struct UringBackend {
    ring: IoUring,
    bufs: BufRing,
    /// The buffer lent out in the last `Event::Data`.
    held: Option<u16>,
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
}

impl UringBackend {
    pub(crate) fn new(config: &BackendConfig) -> io::Result<Self> {
        let ring = build_ring(config.ring_entries)?;
        check_features(&ring).map_err(io::Error::other)?;
        let bufs = BufRing::new(config.recv_buffer_count, config.recv_buffer_size)?;
        bufs.register(&ring)?;
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
            ring,
            bufs,
            held: None,
            wake: Arc::new(EventFd(fd)),
            wake_buf: Box::new(0),
            listeners: Vec::new(),
            conns: Vec::new(),
            backlog: VecDeque::new(),
            in_flight: 0,
            pending: VecDeque::new(),
            cancel_by_fd: true,
            shutting_down: false,
        };
        backend.arm_wake();
        Ok(backend)
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

    fn recycle_held(&mut self) {
        if let Some(bid) = self.held.take() {
            self.bufs.recycle(bid);
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

    // ---- one small function per kernel operation ----

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(Fd(self.wake.0), buf.cast(), 8)
            .build()
            .user_data(user_data(Kind::Wake, 0));
        self.push(entry);
    }

    fn arm_accept(&mut self, id: usize) {
        let Some(l) = self.listener(id) else { return };
        if l.armed || l.cancel || l.paused || l.socket.is_none() {
            return;
        }
        l.armed = true;
        let entry = opcode::AcceptMulti::new(Fd(l.fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Kind::Accept, id));
        self.push(entry);
    }

    fn cancel_accept(&mut self, id: usize) {
        let Some(l) = self.listener(id) else { return };
        if !l.armed || l.cancel {
            return;
        }
        l.cancel = true;
        let entry = opcode::AsyncCancel::new(user_data(Kind::Accept, id))
            .build()
            .user_data(user_data(Kind::AcceptCancel, id));
        self.push(entry);
    }

    /// Arms the multishot recv if reading is wanted and no recv (or cancel of one) is in flight.
    fn arm_recv(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        if c.state != ConnState::Open || !c.reading || !c.read_open || c.recv || c.recv_cancel {
            return;
        }
        c.recv = true;
        let fd = Fd(c.fd);
        let entry = if tuning().multishot_recv {
            opcode::RecvMulti::new(fd, BGID).build()
        } else {
            // Single-shot: the kernel picks a buffer from the ring (no address given); the CQE
            // ends the op and complete_recv re-arms it.
            let len = self.bufs.size.min(u32::MAX as usize) as u32;
            opcode::Recv::new(fd, std::ptr::null_mut(), len)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        self.push(entry.user_data(user_data(Kind::Recv, token)));
    }

    fn cancel_recv(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        if !c.recv || c.recv_cancel {
            return;
        }
        c.recv_cancel = true;
        let entry = opcode::AsyncCancel::new(user_data(Kind::Recv, token))
            .build()
            .user_data(user_data(Kind::RecvCancel, token));
        self.push(entry);
    }

    /// Submits (the rest of) the send held in the connection.
    fn submit_send(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        let Some(op) = &c.send else { return };
        let rest = &op.buf[op.sent..];
        let len = rest.len().min(u32::MAX as usize) as u32;
        // MSG_DONTWAIT: a send the kernel hands to an io-wq worker must not block there until
        // the whole buffer is out (the worker calls sendmsg without the socket's O_NONBLOCK):
        // it completes short, reported as progress, or with -EAGAIN, and then waits for
        // POLLOUT in the ring (`Kind::SendPoll`). A slow reader is seen moving; no kernel
        // thread is tied up per slow connection.
        let entry = opcode::Send::new(Fd(c.fd), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build()
            .user_data(user_data(Kind::Send, token));
        self.push(entry);
    }

    /// Cancels every op the kernel holds for a closing connection.
    fn cancel_conn_ops(&mut self, token: Token) {
        let by_fd = self.cancel_by_fd;
        let Some(c) = self.conn(token) else { return };
        let mut entries = Vec::new();
        if by_fd {
            // IORING_ASYNC_CANCEL_FD | ALL (5.19): one SQE for recv, send and connect alike.
            let builder = CancelBuilder::fd(Fd(c.fd)).all();
            entries.push(
                opcode::AsyncCancel2::new(builder)
                    .build()
                    .user_data(user_data(Kind::CancelFd, token)),
            );
        } else {
            let kinds = [
                (c.recv, Kind::Recv),
                (c.send.as_ref().is_some_and(|o| !o.polling), Kind::Send),
                (c.send.as_ref().is_some_and(|o| o.polling), Kind::SendPoll),
                (c.connect.is_some(), Kind::Connect),
            ];
            for (_, kind) in kinds.iter().filter(|(on, _)| *on) {
                entries.push(
                    opcode::AsyncCancel::new(user_data(*kind, token))
                        .build()
                        .user_data(user_data(Kind::CancelOp, token)),
                );
            }
        }
        c.cancels += entries.len() as u32;
        for entry in entries {
            self.push(entry);
        }
    }

    /// Submits the close once a closing connection has nothing left in the kernel.
    fn finish_close(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        if c.state != ConnState::Closing || c.ops_in_flight() {
            return;
        }
        c.state = ConnState::CloseSubmitted;
        let entry = opcode::Close::new(Fd(c.fd))
            .build()
            .user_data(user_data(Kind::Close, token));
        self.push(entry);
    }

    // ---- completions ----

    /// Turns one CQE into an event, or `None` when it is internal or stale.
    fn complete(&mut self, cqe: cqueue::Entry) -> Option<Out> {
        let (res, flags) = (cqe.result(), cqe.flags());
        let more = cqueue::more(flags);
        if !more {
            self.in_flight -= 1;
        }
        let (kind, index) = decode(cqe.user_data())?;
        match kind {
            Kind::Wake => {
                if res == -libc::ECANCELED || self.shutting_down {
                    return None;
                }
                self.arm_wake();
                Some(Out::Event(Event::Wake))
            }
            Kind::Accept => self.complete_accept(index, res, more),
            Kind::AcceptCancel => {
                if let Some(l) = self.listener(index) {
                    l.cancel = false;
                }
                self.forget_closed_listener(index);
                self.arm_accept(index);
                None
            }
            Kind::Recv => self.complete_recv(index, res, flags, more),
            Kind::RecvCancel => {
                let c = self.conn(index)?;
                c.recv_cancel = false;
                self.arm_recv(index);
                self.finish_close(index);
                None
            }
            Kind::Send => self.complete_send(index, res),
            Kind::SendPoll => self.complete_send_poll(index),
            Kind::Connect => self.complete_connect(index, res),
            Kind::CancelFd | Kind::CancelOp => {
                let c = self.conn(index)?;
                c.cancels -= 1;
                if kind == Kind::CancelFd && res == -libc::EINVAL {
                    // The kernel predates cancel-by-fd: cancel op by op from now on.
                    self.cancel_by_fd = false;
                    self.cancel_conn_ops(index);
                }
                self.finish_close(index);
                None
            }
            Kind::Close => {
                self.conns.get_mut(index)?.take()?;
                Some(Out::Event(Event::Closed { token: index }))
            }
            Kind::CancelAll => None,
        }
    }

    /// Drops a closed listener's entry once the kernel holds nothing for it.
    fn forget_closed_listener(&mut self, id: usize) {
        if let Some(slot) = self.listeners.get_mut(id) {
            if slot
                .as_ref()
                .is_some_and(|l| l.socket.is_none() && !l.armed && !l.cancel)
            {
                *slot = None;
            }
        }
    }

    fn complete_accept(&mut self, id: usize, res: i32, more: bool) -> Option<Out> {
        let Some(Some(l)) = self.listeners.get_mut(id) else {
            close_fd_if(res);
            return None;
        };
        if !more {
            l.armed = false;
        }
        let out = if res >= 0 {
            if l.socket.is_none() {
                close_fd_if(res);
                None
            } else {
                // SAFETY: a successful accept CQE hands us a new fd that nothing else owns.
                let stream = unsafe { TcpStream::from_raw_fd(res) };
                Some(Out::Event(Event::Accepted {
                    listener: id,
                    stream,
                }))
            }
        } else if res == -libc::ECANCELED || l.socket.is_none() {
            None
        } else {
            // The engine backs off; accept nothing more until resume_accept.
            l.paused = true;
            if more {
                self.cancel_accept(id);
            }
            Some(Out::Event(Event::AcceptError {
                listener: id,
                error: io::Error::from_raw_os_error(-res),
            }))
        };
        self.forget_closed_listener(id);
        if !more {
            // A multishot accept that simply ended (no error) is re-armed.
            self.arm_accept(id);
        }
        out
    }

    fn complete_recv(&mut self, token: Token, res: i32, flags: u32, more: bool) -> Option<Out> {
        let bid = cqueue::buffer_select(flags);
        let Some(c) = self.conn(token) else {
            // Cannot happen (the slot outlives its ops), but never lose a buffer.
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return None;
        };
        if !more {
            c.recv = false;
        }
        let open = c.state == ConnState::Open;
        let out = match (res, bid) {
            (n, Some(bid)) if n > 0 && open => Some(Out::Data {
                token,
                bid,
                len: n as usize,
            }),
            (0, _) if open => {
                c.read_open = false;
                Some(Out::Event(Event::ReadClosed { token }))
            }
            // -ENOBUFS: the buffer ring ran dry and the multishot ended; arm_recv re-arms it
            // below. Buffers come back on every next(), so this cannot spin forever.
            (e, _) if e == -libc::ENOBUFS => {
                #[cfg(test)]
                tests::ENOBUFS_SEEN.fetch_add(1, Ordering::Relaxed);
                None
            }
            (e, _) if e == -libc::ECANCELED || !open || e >= 0 => None,
            (e, _) => {
                c.read_open = false;
                Some(Out::Event(Event::ReadError {
                    token,
                    error: io::Error::from_raw_os_error(-e),
                }))
            }
        };
        // Any buffer not lent out as Data (EOF, closing, errors) goes straight back.
        match (bid, &out) {
            (_, Some(Out::Data { .. })) | (None, _) => {}
            (Some(bid), _) => self.bufs.recycle(bid),
        }
        if !more {
            self.arm_recv(token);
            self.finish_close(token);
        }
        out
    }

    fn complete_send(&mut self, token: Token, res: i32) -> Option<Out> {
        let c = self.conn(token)?;
        let mut op = c.send.take()?;
        if c.state != ConnState::Open {
            drop(op); // the kernel is done with it
            self.finish_close(token);
            return None;
        }
        if res == -libc::EAGAIN {
            // The socket is full: wait for room in the ring, then send the rest.
            op.polling = true;
            let entry = opcode::PollAdd::new(Fd(c.fd), libc::POLLOUT as u32)
                .build()
                .user_data(user_data(Kind::SendPoll, token));
            c.send = Some(op);
            self.push(entry);
            return None;
        }
        let event = match res {
            e if e < 0 => Event::SendError {
                token,
                error: io::Error::from_raw_os_error(-e),
                buf: op.buf,
            },
            0 => Event::SendError {
                token,
                error: io::ErrorKind::WriteZero.into(),
                buf: op.buf,
            },
            n => {
                op.sent += n as usize;
                if op.sent < op.buf.len() {
                    c.send = Some(op); // short send: the rest goes out from where it stopped
                    self.submit_send(token);
                    // Progress all the same: a slow reader is not a stalled one.
                    let sent = n as usize;
                    return Some(Out::Event(Event::SendProgress { token, sent }));
                }
                Event::SendDone { token, buf: op.buf }
            }
        };
        Some(Out::Event(event))
    }

    /// The socket of a waiting send is writable (or the wait failed: the send tells why).
    fn complete_send_poll(&mut self, token: Token) -> Option<Out> {
        let c = self.conn(token)?;
        let op = c.send.as_mut()?;
        op.polling = false;
        if c.state != ConnState::Open {
            c.send = None; // the kernel holds nothing of it any more
            self.finish_close(token);
            return None;
        }
        self.submit_send(token);
        None
    }

    fn complete_connect(&mut self, token: Token, res: i32) -> Option<Out> {
        let c = self.conn(token)?;
        c.connect = None;
        if c.state != ConnState::Open {
            self.finish_close(token);
            return None;
        }
        let result = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(())
        };
        if result.is_ok() {
            c.read_open = true;
            self.arm_recv(token);
        }
        Some(Out::Event(Event::Connected { token, result }))
    }
}

fn close_fd_if(fd: i32) {
    if fd >= 0 {
        // SAFETY: `fd` came from an accept CQE and is owned by nobody else.
        unsafe { libc::close(fd) };
    }
}

/// Resets and closes a connection the ring could not close in time: `SO_LINGER {1, 0}`, then
/// `shutdown(SHUT_RDWR)` (acts at once even while an in-flight operation holds a reference to
/// the file), then `close`.
fn reset_and_close(fd: RawFd) {
    if fd < 0 {
        return;
    }
    set_linger_zero(fd);
    // SAFETY: `fd` is a socket this backend owns and has not closed; shutdown(2) and close(2)
    // share no memory with the caller.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
        libc::close(fd);
    }
}

/// `SO_LINGER {on, 0}`: the close that follows sends a reset.
fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a live, correctly sized `linger` to setsockopt on an fd we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
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
        self.insert_conn(token, Conn::new(stream.into_raw_fd(), true));
        self.arm_recv(token);
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
        }
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
        if c.recv || c.send.is_some() || c.connect.is_some() {
            self.cancel_conn_ops(token);
        }
        self.finish_close(token);
        // Nothing queued for this token may be reported any more.
        self.pending.retain(|e| !matches!(e, Event::SendDone { token: t, .. } | Event::SendError { token: t, .. } if *t == token));
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.recycle_held();
        self.flush_backlog();
        let ready = !self.pending.is_empty()
            || !self.backlog.is_empty()
            || !self.ring.completion().is_empty();
        let result = match timeout {
            _ if ready => self.ring.submit(),
            None => self.ring.submit_and_wait(1),
            Some(timeout) => {
                let ts = Timespec::from(timeout);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
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
            if let Some(out) = self.complete(cqe) {
                break out;
            }
        };
        Some(match out {
            Out::Event(event) => event,
            Out::Data { token, bid, len } => {
                self.held = Some(bid);
                Event::Data {
                    token,
                    data: self.bufs.data(bid, len),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::thread;

    /// How often a recv ended with -ENOBUFS (proves the dry-ring path ran).
    pub(super) static ENOBUFS_SEEN: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    const LIMIT: Duration = Duration::from_secs(20);

    /// An owned copy of an event, so the test can call the backend while looking at it.
    #[derive(Debug)]
    enum Ev {
        Accepted(TcpStream),
        Data(Token, Vec<u8>),
        ReadClosed(Token),
        SendDone(Token, usize),
        Connected(Token, Option<io::ErrorKind>),
        Closed(Token),
        Wake,
    }

    fn owned(event: Event<'_>) -> Ev {
        match event {
            Event::Accepted { stream, .. } => Ev::Accepted(stream),
            Event::Data { token, data } => Ev::Data(token, data.to_vec()),
            Event::ReadClosed { token } => Ev::ReadClosed(token),
            Event::SendDone { token, buf } => Ev::SendDone(token, buf.len()),
            Event::Connected { token, result } => {
                Ev::Connected(token, result.err().map(|e| e.kind()))
            }
            Event::Closed { token } => Ev::Closed(token),
            Event::Wake => Ev::Wake,
            other => panic!("unexpected event {other:?}"),
        }
    }

    fn backend(count: u16, size: usize) -> Option<UringBackend> {
        backend_with(64, count, size)
    }

    fn backend_with(entries: u32, count: u16, size: usize) -> Option<UringBackend> {
        let config = BackendConfig {
            recv_buffer_size: size,
            recv_buffer_count: count,
            ring_entries: entries,
        };
        if let Err(reason) = probe(&config) {
            // Only the kernel's refusal is a skip, and not even that where CI requires io_uring.
            if std::env::var_os("RINGPORT_TEST_REQUIRE_URING").is_some_and(|v| v != "0") {
                panic!("io_uring required (RINGPORT_TEST_REQUIRE_URING) but unavailable: {reason}");
            }
            println!("skipped: io_uring unavailable: {reason}");
            return None;
        }
        Some(UringBackend::new(&config).expect("probe passed but new failed"))
    }

    /// One loop turn: wait (bounded) and collect this turn's events.
    fn turn(b: &mut UringBackend) -> Vec<Ev> {
        b.wait(Some(Duration::from_millis(20))).unwrap();
        let mut events = Vec::new();
        while let Some(event) = b.next() {
            if !matches!(event, Event::SendProgress { .. }) {
                events.push(owned(event)); // partial sends: see `short_sends_report_progress`
            }
        }
        events
    }

    fn listen(b: &mut UringBackend) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        b.add_listener(0, listener).unwrap();
        addr
    }

    /// Turns until an accepted stream arrives; registers it as `token`.
    fn accept_as(b: &mut UringBackend, token: Token) {
        let end = Instant::now() + LIMIT;
        loop {
            let mut events = turn(b).into_iter();
            match events.next() {
                Some(Ev::Accepted(stream)) => {
                    assert!(events.next().is_none());
                    return b.register(token, stream).unwrap();
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => assert!(Instant::now() < end, "no accept"),
            }
        }
    }

    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| ((seed * 31 + i) % 251) as u8).collect()
    }

    #[test]
    fn echo_then_half_close_then_one_closed() {
        let Some(mut b) = backend(64, 4096) else {
            return;
        };
        let addr = listen(&mut b);
        let payload = pattern(1, 48 * 1024);
        let expected = payload.clone();
        let client = thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(LIMIT)).unwrap();
            s.write_all(&payload).unwrap();
            let mut back = vec![0; payload.len()];
            s.read_exact(&mut back).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            (back, rest)
        });
        accept_as(&mut b, 7);
        let (mut queue, mut in_flight, mut read_closed, mut close_called, mut closed) =
            (Vec::new(), false, false, false, 0);
        let end = Instant::now() + LIMIT;
        while !(closed == 1 && client.is_finished()) {
            for ev in turn(&mut b) {
                match ev {
                    Ev::Data(7, data) => queue.extend(data),
                    Ev::SendDone(7, _) => in_flight = false,
                    Ev::ReadClosed(7) => read_closed = true,
                    Ev::Closed(7) => closed += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            if !in_flight && !queue.is_empty() {
                b.send(7, std::mem::take(&mut queue));
                in_flight = true;
            }
            if read_closed && !in_flight && queue.is_empty() && !close_called {
                b.close(7, false);
                close_called = true;
            }
            assert!(Instant::now() < end, "timed out");
        }
        for _ in 0..3 {
            assert!(turn(&mut b).is_empty(), "events after Closed");
        }
        let (back, rest) = client.join().unwrap();
        assert!(back == expected && rest.is_empty());
        b.shutdown(LIMIT);
        assert_eq!(b.in_flight, 0);
    }

    #[test]
    fn abort_with_send_in_flight_gives_one_closed_and_a_reset() {
        let Some(mut b) = backend(16, 4096) else {
            return;
        };
        let addr = listen(&mut b);
        let mut client = TcpStream::connect(addr).unwrap(); // never reads until the end
        accept_as(&mut b, 1);
        b.send(1, vec![7; 32 << 20]);
        assert!(turn(&mut b).is_empty());
        assert!(
            b.conn(1).unwrap().send.is_some(),
            "32 MiB cannot have been taken yet"
        );
        b.close(1, true);
        let (mut closed, end) = (0, Instant::now() + LIMIT);
        while closed == 0 {
            for ev in turn(&mut b) {
                match ev {
                    Ev::Closed(1) => closed += 1,
                    other => panic!("only Closed may follow close, got {other:?}"),
                }
            }
            assert!(Instant::now() < end, "timed out");
        }
        for _ in 0..3 {
            assert!(turn(&mut b).is_empty(), "events after Closed");
        }
        client.set_read_timeout(Some(LIMIT)).unwrap();
        let mut sink = vec![0; 1 << 20];
        let err = loop {
            match client.read(&mut sink) {
                Ok(0) => panic!("graceful EOF, expected a reset"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn pause_and_resume_reading() {
        let Some(mut b) = backend(16, 1024) else {
            return;
        };
        let addr = listen(&mut b);
        let mut client = TcpStream::connect(addr).unwrap();
        accept_as(&mut b, 2);
        // Toggle quickly: the re-arm must wait for the cancel's CQE, never arm a second recv.
        b.set_reading(2, false);
        b.set_reading(2, true);
        b.set_reading(2, false);
        let end = Instant::now() + LIMIT;
        loop {
            assert!(turn(&mut b).is_empty());
            let c = b.conn(2).unwrap();
            if !c.recv && !c.recv_cancel {
                break;
            }
            assert!(Instant::now() < end, "cancel never completed");
        }
        client.write_all(b"hello").unwrap();
        for _ in 0..5 {
            assert!(turn(&mut b).is_empty(), "data while paused");
        }
        b.set_reading(2, true);
        let payload = pattern(2, 64 * 1024);
        let writer = {
            let (mut client, payload) = (client.try_clone().unwrap(), payload.clone());
            thread::spawn(move || client.write_all(&payload).unwrap())
        };
        let (mut got, mut flips) = (Vec::new(), 0u32);
        while got.len() < 5 + payload.len() {
            for ev in turn(&mut b) {
                match ev {
                    Ev::Data(2, data) => got.extend(data),
                    other => panic!("unexpected {other:?}"),
                }
            }
            flips += 1;
            b.set_reading(2, flips % 3 != 0); // pause every third turn, resume on the next
            assert!(Instant::now() < end, "timed out with {} bytes", got.len());
        }
        writer.join().unwrap();
        assert_eq!(&got[..5], b"hello");
        assert!(got[5..] == payload[..], "data reordered or duplicated");
        b.shutdown(LIMIT);
        assert_eq!(b.in_flight, 0);
    }

    #[test]
    fn enobufs_rearms_and_all_data_arrives() {
        // Two 64-byte buffers for eight connections sending at once: the ring runs dry often.
        // A 2-entry SQ (8-entry CQ) also drives the SQ-full backlog and CQ-overflow paths.
        let Some(mut b) = backend_with(2, 2, 64) else {
            return;
        };
        let addr = listen(&mut b);
        let clients: Vec<_> = (0..8)
            .map(|id| {
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(&pattern(id, 16 * 1024)).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                })
            })
            .collect();
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); 8];
        let (mut accepted, mut eof, end) = (0, 0, Instant::now() + LIMIT);
        while eof < 8 {
            for ev in turn(&mut b) {
                match ev {
                    Ev::Accepted(stream) => {
                        b.register(accepted, stream).unwrap();
                        accepted += 1;
                    }
                    Ev::Data(token, data) => got[token].extend(data),
                    Ev::ReadClosed(_) => eof += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(Instant::now() < end, "timed out");
        }
        let mut ids: Vec<usize> = got
            .iter()
            .map(|data| {
                let id = (0..8)
                    .find(|id| data.first() == Some(&pattern(*id, 1)[0]))
                    .unwrap();
                assert!(
                    *data == pattern(id, 16 * 1024),
                    "stream of client {id} damaged"
                );
                id
            })
            .collect();
        ids.sort();
        assert_eq!(ids, (0..8).collect::<Vec<_>>());
        clients.into_iter().for_each(|c| c.join().unwrap());
        assert!(
            ENOBUFS_SEEN.load(Ordering::Relaxed) > 0,
            "the ring never ran dry"
        );
        b.shutdown(LIMIT);
        assert_eq!(b.in_flight, 0);
    }

    #[test]
    fn wake_from_another_thread() {
        let Some(mut b) = backend(4, 256) else { return };
        for _ in 0..2 {
            let waker = b.waker();
            let t = thread::spawn(move || waker.wake());
            let end = Instant::now() + LIMIT;
            loop {
                b.wait(Some(LIMIT)).unwrap();
                let events: Vec<Ev> = std::iter::from_fn(|| b.next().map(owned)).collect();
                if events.iter().any(|e| matches!(e, Ev::Wake)) {
                    break;
                }
                assert!(Instant::now() < end, "no wake");
            }
            t.join().unwrap();
        }
    }

    #[test]
    fn connect_succeeds_and_fails() {
        let Some(mut b) = backend(16, 1024) else {
            return;
        };
        let addr = listen(&mut b);
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_nonblocking(true).unwrap();
        b.connect(1, socket, addr);
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        b.connect(5, socket, refused);
        let (mut got, mut closed, mut sent, end) = (Vec::new(), 0, false, Instant::now() + LIMIT);
        while got.len() < 4 || closed == 0 {
            for ev in turn(&mut b) {
                match ev {
                    Ev::Connected(1, None) => {}
                    Ev::Accepted(stream) => b.register(2, stream).unwrap(),
                    Ev::Connected(5, Some(kind)) => {
                        assert_eq!(kind, io::ErrorKind::ConnectionRefused);
                        b.close(5, false);
                    }
                    Ev::Closed(5) => closed += 1,
                    Ev::SendDone(1, 4) => {}
                    Ev::Data(2, data) => got.extend(data),
                    other => panic!("unexpected {other:?}"),
                }
            }
            if !sent && b.conn(1).is_some_and(|c| c.read_open) && b.conn(2).is_some() {
                b.send(1, b"ping".to_vec());
                sent = true;
            }
            assert!(Instant::now() < end, "timed out");
        }
        assert_eq!(got, b"ping");
        assert!(turn(&mut b).iter().all(|e| !matches!(e, Ev::Closed(5))));
        b.shutdown(LIMIT);
        assert_eq!(b.in_flight, 0);
    }

    #[test]
    fn close_listeners_then_shutdown_with_ops_in_flight() {
        let Some(mut b) = backend(16, 1024) else {
            return;
        };
        let addr = listen(&mut b);
        let _client = TcpStream::connect(addr).unwrap();
        accept_as(&mut b, 0);
        b.send(0, vec![1; 32 << 20]); // stays in flight: the client never reads
        let peer = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        b.connect(1, socket, peer.local_addr().unwrap());
        turn(&mut b);
        b.close_listeners();
        let end = Instant::now() + LIMIT;
        while b.listeners.iter().any(Option::is_some) {
            for ev in turn(&mut b) {
                assert!(
                    !matches!(ev, Ev::Accepted(_)),
                    "accepted after close_listeners"
                );
            }
            assert!(Instant::now() < end, "accept cancel never completed");
        }
        assert!(TcpStream::connect(addr).is_err(), "listener fd still open");
        assert!(b.in_flight > 0);
        b.shutdown(LIMIT);
        assert_eq!(b.in_flight, 0, "shutdown left ops in the kernel");
        assert!(b.conns.iter().all(Option::is_none), "fds left open");
    }
}

#[cfg(test)]
#[path = "uring_close_tests.rs"]
mod close_tests;
