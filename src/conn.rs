//! Connections as the handler sees them: the [`Handler`] callbacks, the [`Conn`] context lent to
//! them, [`Frame`], [`CloseReason`]; and the engine's per-connection state ([`ConnCore`]).
//!
//! A connection lives on one IO thread for its whole life. Its state is owned by that thread's
//! connection table and lent `&mut` to each callback, so handler code needs no locks.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{DecodeError, Decoder};
use crate::engine::ThreadCtx;
use crate::handle::ConnectionHandle;

/// Per-connection callbacks, run on the connection's IO thread.
///
/// One value per connection, made by the server's factory when the connection is accepted; it
/// *is* the connection's state. Callbacks must not block for long: everything else on the same
/// IO thread waits meanwhile (hand blocking work to a [`WorkerPool`](crate::pool::WorkerPool)).
pub trait Handler: 'static {
    /// The connection is established. May write a greeting.
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = conn;
    }

    /// A complete frame arrived (for [`Raw`](crate::codec::Raw): whatever bytes arrived).
    /// Frames of one connection arrive in order; the borrowed bytes live only for this call.
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>);

    /// The peer half-closed: it will send nothing more. Default: flush what is queued, then
    /// close.
    fn on_read_closed(&mut self, conn: &mut Conn<'_>) {
        conn.close();
    }

    /// A [`ConnectionHandle::notify`] arrived (e.g. a worker finished a job; its writes, made
    /// before the notify, are already queued).
    fn on_notify(&mut self, conn: &mut Conn<'_>, value: u64) {
        let _ = (conn, value);
    }

    /// The engine is shutting down. Default: flush what is queued, then close. Override to
    /// wait for work in progress (e.g. close once the last job has answered); connections still
    /// open at the drain deadline are reset.
    fn on_shutdown(&mut self, conn: &mut Conn<'_>) {
        conn.close_with(CloseReason::Shutdown);
    }

    /// The decoder rejected the input (frame or line too long, bad length). The stream cannot
    /// be decoded further: no more frames come and reading stops. Default: flush what is
    /// queued, then close. Override to send a last reply first (e.g. `-ERR line too long`), or
    /// to close later, once work in progress has answered; the close reason stays
    /// [`CloseReason::Protocol`].
    fn on_decode_error(&mut self, conn: &mut Conn<'_>, error: &DecodeError) {
        let _ = error;
        conn.close();
    }

    /// The connection is closed; called exactly once per connection, after every operation on
    /// it has completed.
    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        let _ = (info, reason);
    }
}

/// One decoded frame, borrowed from the engine's receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    raw: &'a [u8],
    payload: (usize, usize),
}

impl<'a> Frame<'a> {
    /// The frame as it was on the wire: header, payload and terminator.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    /// The payload: without the length header, or the line without its `\r\n` / `\n`.
    pub fn payload(&self) -> &'a [u8] {
        &self.raw[self.payload.0..self.payload.1]
    }
}

/// Why a connection closed; passed to [`Handler::on_close`] and counted per server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (EOF), and the connection then closed.
    PeerClosed,
    /// The peer reset the connection (ECONNRESET, EPIPE).
    Reset,
    /// The handler called [`Conn::close`] or [`Conn::abort`] (or a [`ConnectionHandle`] did).
    Local,
    /// No data arrived within the server's idle timeout.
    IdleTimeout,
    /// The peer broke the protocol or a limit (frame or line too long, read buffer full, ...).
    Protocol(String),
    /// The engine shut down.
    Shutdown,
    /// Another IO error.
    Io(io::ErrorKind, String),
    /// A handler callback panicked; the connection was reset and its handler is not called
    /// again (not even `on_close`).
    HandlerPanic,
}

impl CloseReason {
    /// Number of distinct reasons (the size of [`StatsSnapshot::closed`](crate::StatsSnapshot)).
    pub const COUNT: usize = 8;

    /// A stable index per kind of reason, for counters.
    pub fn index(&self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Reset => 1,
            CloseReason::Local => 2,
            CloseReason::IdleTimeout => 3,
            CloseReason::Protocol(_) => 4,
            CloseReason::Shutdown => 5,
            CloseReason::Io(..) => 6,
            CloseReason::HandlerPanic => 7,
        }
    }

    /// A short name for the kind of reason: `peer-closed`, `reset`, `local`, `idle-timeout`,
    /// `protocol`, `shutdown`, `io-error`.
    pub fn name(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer-closed",
            CloseReason::Reset => "reset",
            CloseReason::Local => "local",
            CloseReason::IdleTimeout => "idle-timeout",
            CloseReason::Protocol(_) => "protocol",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Io(..) => "io-error",
            CloseReason::HandlerPanic => "handler-panic",
        }
    }

    pub(crate) fn from_io(e: &io::Error) -> CloseReason {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => CloseReason::Reset,
            kind => CloseReason::Io(kind, e.to_string()),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Protocol(m) => write!(f, "protocol: {m}"),
            CloseReason::Io(_, m) => write!(f, "io-error: {m}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Addresses and identity of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The remote end.
    pub peer: SocketAddr,
    /// The local end (the server's address as the client reached it).
    pub local: SocketAddr,
    /// Unique within the engine for its lifetime (IO thread index in the top 16 bits).
    pub id: u64,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading and writing.
    Open,
    /// Closing gracefully: no more frames are delivered; queued bytes are flushed first.
    Closing,
    /// Flushed and write side shut down; reading (and discarding) until EOF or the linger
    /// deadline, so unread input does not turn our last reply into a reset.
    Lingering(Instant),
    /// Reset requested: close with SO_LINGER 0 at the next flush.
    Aborting,
    /// `Backend::close` was called; waiting for its `Closed` event.
    Closed,
}

/// The engine's per-connection state (the handler's own state is the `Handler` value).
pub(crate) struct ConnCore {
    pub server: usize,
    pub gen: u64,
    pub info: ConnInfo,
    /// Bytes queued by the handler, not yet handed to the backend.
    pub out: Vec<u8>,
    /// Bytes of the send in flight (0: none).
    pub inflight: usize,
    /// Received bytes not yet consumed by the decoder (a partial frame, or frames held back
    /// while reading is paused). Empty (no allocation) in the common case.
    pub rbuf: Vec<u8>,
    pub phase: Phase,
    pub reason: Option<CloseReason>,
    pub user_paused: bool,
    pub bp_paused: bool,
    pub read_closed: bool,
    /// Whether the backend is currently asked to read.
    pub reading: bool,
    /// The handler held the current frame back ([`Conn::hold_frame`]).
    pub held: bool,
    /// Outgoing connection not yet established: nothing is sent or read.
    pub connecting: bool,
    /// When an outgoing connect gives up.
    pub connect_deadline: Option<Instant>,
    /// The decoder failed: no more frames, no more reading (until a lingering close).
    pub decode_failed: bool,
    /// EOF arrived while frames were held back; `on_read_closed` waits until they are delivered.
    pub eof_pending: bool,
    pub dirty: bool,
    pub last_active: Instant,
    pub alive: Option<Arc<AtomicBool>>,
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
            phase: Phase::Open,
            reason: None,
            user_paused: false,
            bp_paused: false,
            read_closed: false,
            reading: true,
            held: false,
            eof_pending: false,
            decode_failed: false,
            connecting: false,
            connect_deadline: None,
            dirty: false,
            last_active: now,
            alive: None,
        }
    }

    /// Bytes queued or in flight.
    pub(crate) fn queued(&self) -> usize {
        self.out.len() + self.inflight
    }

    /// Starts a graceful close for `reason` unless one is under way.
    pub(crate) fn begin_close(&mut self, reason: CloseReason) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
            self.set_reason(reason);
        }
    }

    /// Requests a reset for `reason` unless the connection is already closed.
    pub(crate) fn begin_abort(&mut self, reason: CloseReason) {
        if !matches!(self.phase, Phase::Closed | Phase::Aborting) {
            self.set_phase(Phase::Aborting);
            self.set_reason(reason);
        }
    }

    pub(crate) fn set_reason(&mut self, reason: CloseReason) {
        if self.reason.is_none() {
            self.reason = Some(reason);
        }
    }

    /// Moves to `phase`; once nothing more can be written, handles start failing.
    pub(crate) fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        if !matches!(phase, Phase::Open | Phase::Closing) {
            if let Some(a) = self.alive.take() {
                a.store(false, std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// Frames may be delivered to the handler now.
    pub(crate) fn wants_frames(&self) -> bool {
        self.phase == Phase::Open && !self.user_paused && !self.held && !self.decode_failed
    }
}

/// The context lent to a [`Handler`] callback: write to, close, pause the connection.
pub struct Conn<'a> {
    pub(crate) core: &'a mut ConnCore,
    pub(crate) ctx: &'a mut ThreadCtx,
    pub(crate) token: usize,
}

impl Conn<'_> {
    /// Queues `data`. Bytes are sent in order, batched: one send per connection per loop turn
    /// whatever the number of `write` calls. Ignored once the connection is being reset or
    /// its write side is shut.
    pub fn write(&mut self, data: &[u8]) {
        if !matches!(self.core.phase, Phase::Open | Phase::Closing) || data.is_empty() {
            return;
        }
        if self.core.out.capacity() == 0 {
            self.core.out = self.ctx.bufs.get();
        }
        self.core.out.extend_from_slice(data);
        self.ctx.mark_dirty(self.token, self.core);
    }

    /// Closes after everything queued is flushed (reason: [`CloseReason::Local`]).
    pub fn close(&mut self) {
        self.core.begin_close(CloseReason::Local);
        self.ctx.mark_dirty(self.token, self.core);
    }

    /// Closes after flushing, recording `reason` (e.g. a protocol violation) for `on_close`
    /// and the counters.
    pub fn close_with(&mut self, reason: CloseReason) {
        self.core.begin_close(reason);
        self.ctx.mark_dirty(self.token, self.core);
    }

    /// Resets the connection (SO_LINGER 0): queued bytes are dropped.
    pub fn abort(&mut self) {
        self.core.begin_abort(CloseReason::Local);
        self.ctx.mark_dirty(self.token, self.core);
    }

    /// Stops delivering frames (and reading) until [`Conn::resume_reading`] or
    /// [`ConnectionHandle::resume_reading`]. Bytes already received are kept, in order.
    pub fn pause_reading(&mut self) {
        self.core.user_paused = true;
        self.ctx.mark_dirty(self.token, self.core);
    }

    /// Resumes reading after [`Conn::pause_reading`].
    pub fn resume_reading(&mut self) {
        self.core.user_paused = false;
        self.ctx.mark_dirty(self.token, self.core);
    }

    /// Only in `on_frame`: this frame was not consumed (e.g. a worker queue is full). The engine
    /// keeps it, stops reading, and delivers it again on a later loop turn (within a few ms, or
    /// sooner when the IO thread is woken).
    pub fn hold_frame(&mut self) {
        self.core.held = true;
    }

    /// A `Send + Sync` handle for writing to / closing this connection from other threads.
    pub fn handle(&mut self) -> ConnectionHandle {
        let writable = matches!(self.core.phase, Phase::Open | Phase::Closing);
        let alive = match &self.core.alive {
            Some(a) => a.clone(),
            None if writable => self
                .core
                .alive
                .insert(Arc::new(AtomicBool::new(true)))
                .clone(),
            None => Arc::new(AtomicBool::new(false)), // already past writing: born closed
        };
        ConnectionHandle::new(self.ctx.shared.clone(), self.token, self.core.gen, alive)
    }

    /// Bytes queued for sending and not yet acknowledged by the backend.
    pub fn queued_bytes(&self) -> usize {
        self.core.queued()
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.info.peer
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.core.info.local
    }

    /// Addresses and id.
    pub fn info(&self) -> &ConnInfo {
        &self.core.info
    }
}

/// A handler and its decoder behind one object-safe interface, so that servers with different
/// handler types share one connection table.
pub(crate) trait DynConn {
    fn open(&mut self, conn: &mut Conn<'_>);
    /// Decodes and delivers frames from `data`; returns how many bytes were consumed. On a
    /// decode error the connection is set closing and everything is consumed.
    fn data(&mut self, conn: &mut Conn<'_>, data: &[u8]) -> usize;
    fn read_closed(&mut self, conn: &mut Conn<'_>);
    fn notify(&mut self, conn: &mut Conn<'_>, value: u64);
    fn shutdown(&mut self, conn: &mut Conn<'_>);
    fn closed(&mut self, info: &ConnInfo, reason: &CloseReason);
}

pub(crate) struct Typed<H, D> {
    handler: H,
    codec: D,
    /// A callback panicked: the handler's state is suspect, it is not called again.
    poisoned: bool,
}

impl<H: Handler, D: Decoder> Typed<H, D> {
    pub(crate) fn new(handler: H, codec: D) -> Self {
        Typed {
            handler,
            codec,
            poisoned: false,
        }
    }

    /// Runs one callback; a panic in it costs only this connection (reset, reason
    /// [`CloseReason::HandlerPanic`]), never the IO thread and its other connections.
    fn guard(&mut self, conn: &mut Conn<'_>, f: impl FnOnce(&mut H, &mut Conn<'_>)) {
        if self.poisoned {
            return;
        }
        let handler = &mut self.handler;
        if catch_unwind(AssertUnwindSafe(|| f(handler, conn))).is_err() {
            self.poisoned = true;
            tracing::error!(peer = %conn.core.info.peer, "handler panicked; resetting its connection");
            conn.core.reason = Some(CloseReason::HandlerPanic);
            conn.core.begin_abort(CloseReason::HandlerPanic);
            conn.ctx.mark_dirty(conn.token, conn.core);
        }
    }
}

impl<H: Handler, D: Decoder> DynConn for Typed<H, D> {
    fn open(&mut self, conn: &mut Conn<'_>) {
        self.guard(conn, |h, c| h.on_open(c));
    }

    fn data(&mut self, conn: &mut Conn<'_>, data: &[u8]) -> usize {
        let mut pos = 0;
        while pos < data.len() && conn.core.wants_frames() {
            let d = match self.codec.decode(&data[pos..]) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(peer = %conn.core.info.peer, %error, "closing connection: protocol error");
                    conn.core.decode_failed = true;
                    conn.core
                        .set_reason(CloseReason::Protocol(error.to_string()));
                    self.guard(conn, |h, c| h.on_decode_error(c, &error));
                    return data.len();
                }
            };
            if d.consumed == 0
                || d.consumed > data.len() - pos
                || d.payload.start > d.payload.end
                || d.payload.end > d.consumed
            {
                break; // a decoder bug; never loop or index out of bounds on it
            }
            let frame = Frame {
                raw: &data[pos..pos + d.consumed],
                payload: (d.payload.start, d.payload.end),
            };
            conn.ctx.stats(conn.core.server).frames_in.add(1);
            self.guard(conn, |h, c| h.on_frame(c, frame));
            if conn.core.held || self.poisoned {
                break;
            }
            pos += d.consumed;
        }
        pos
    }

    fn read_closed(&mut self, conn: &mut Conn<'_>) {
        self.guard(conn, |h, c| h.on_read_closed(c));
    }

    fn notify(&mut self, conn: &mut Conn<'_>, value: u64) {
        self.guard(conn, |h, c| h.on_notify(c, value));
    }

    fn shutdown(&mut self, conn: &mut Conn<'_>) {
        self.guard(conn, |h, c| h.on_shutdown(c));
    }

    fn closed(&mut self, info: &ConnInfo, reason: &CloseReason) {
        if self.poisoned {
            return;
        }
        let handler = &mut self.handler;
        if catch_unwind(AssertUnwindSafe(|| handler.on_close(info, reason))).is_err() {
            tracing::error!(peer = %info.peer, "handler panicked in on_close");
        }
    }
}
