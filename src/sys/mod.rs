//! The platform layer: everything that talks to the kernel lives here.
//!
//! The engine (`crate::engine`) is completion-shaped: it *submits* operations
//! (accept, recv, send, connect, close) to a [`Backend`] and *reacts* to the
//! [`Event`]s those operations complete with. io_uring does this natively
//! (`sys/uring.rs`); the epoll backend (`sys/epoll.rs`, on `mio`) emulates it
//! by performing the non-blocking syscall when the socket is ready.
//!
//! Every backend must provide:
//! - accepting on any number of listeners (one per server per IO thread), stopping after an
//!   accept error until [`Backend::resume_accept`] (the engine backs off, never busy-loops);
//! - reading from each registered connection into *backend-owned* memory, delivered as
//!   [`Event::Data`] borrowing that memory until the next call to [`Backend::next`] (an idle
//!   connection holds no receive buffer);
//! - pausing and resuming reads per connection (backpressure);
//! - sending a whole owned buffer per connection, at most one send in flight per connection,
//!   the buffer owned by the backend until [`Event::SendDone`] / [`Event::SendError`] gives it back,
//!   with [`Event::SendProgress`] for each partial write before that (a short send that the
//!   backend continues by itself must still be reported as progress);
//! - closing a connection: once [`Backend::close`] is called, no further event is delivered for
//!   that token except exactly one [`Event::Closed`], which comes only when every operation the
//!   kernel held for it has completed and the descriptor is closed (buffers stay alive until then);
//! - outgoing connects, delivered as [`Event::Connected`];
//! - a [`Waker`] other threads use to interrupt [`Backend::wait`], delivered as [`Event::Wake`];
//! - [`Backend::shutdown`]: cancel everything and wait for the kernel to give every buffer back.
//!
//! This module and its children are the only place `unsafe` is allowed.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod epoll;
pub(crate) mod inherit;
pub(crate) mod uring;

/// Identifies one connection within one IO thread: the index of its slot in the engine's table.
/// A slot is not reused before the backend has delivered [`Event::Closed`] for it.
pub(crate) type Token = usize;

/// What a completed operation reports. Borrowed data lives until the next [`Backend::next`].
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A connection was accepted on listener `listener` (non-blocking already set).
    Accepted { listener: usize, stream: TcpStream },
    /// Accepting on `listener` failed; the backend accepts no more on it until `resume_accept`.
    AcceptError { listener: usize, error: io::Error },
    /// Bytes arrived on a connection. `data` is never empty.
    Data { token: Token, data: &'a [u8] },
    /// The peer half-closed (EOF); the backend reads no more from this connection.
    ReadClosed { token: Token },
    /// Reading failed (reset, ...); the backend reads no more from this connection.
    ReadError { token: Token, error: io::Error },
    /// Part of the buffer given to `send` was written (`sent` more bytes); the rest is still in
    /// flight. Lets the engine tell a slow but moving flush from a stalled one.
    SendProgress { token: Token, sent: usize },
    /// The whole buffer given to `send` was written. The buffer comes back for reuse.
    SendDone { token: Token, buf: Vec<u8> },
    /// Writing failed; the buffer comes back.
    SendError {
        token: Token,
        error: io::Error,
        buf: Vec<u8>,
    },
    /// An outgoing connect finished. On success the connection is registered and reading.
    Connected {
        token: Token,
        result: io::Result<()>,
    },
    /// Every operation for `token` is finished and its descriptor closed; the slot is free.
    Closed { token: Token },
    /// Another thread called [`Waker::wake`].
    Wake,
}

/// Lets another thread interrupt an IO thread's [`Backend::wait`].
pub(crate) trait Waker: Send + Sync {
    fn wake(&self);
}

/// One IO thread's instance of a kernel interface. Not shared between threads.
pub(crate) trait Backend {
    /// `"uring"` or `"epoll"`: the name printed in `listening on ... (backend: X)`.
    fn name(&self) -> &'static str;
    /// Starts accepting on `listener` (already bound, listening, non-blocking), reported as `id`.
    fn add_listener(&mut self, id: usize, listener: TcpListener) -> io::Result<()>;
    /// Accepts again on `id` after an [`Event::AcceptError`].
    fn resume_accept(&mut self, id: usize);
    /// Stops accepting on every listener and closes them (shutdown).
    fn close_listeners(&mut self);
    /// Takes ownership of an accepted connection and starts reading from it.
    fn register(&mut self, token: Token, stream: TcpStream) -> io::Result<()>;
    /// Starts a non-blocking connect of `socket` (created by the engine) to `addr`.
    fn connect(&mut self, token: Token, socket: socket2::Socket, addr: SocketAddr);
    /// Pauses (`false`) or resumes (`true`) reading. Data already read may still be delivered.
    fn set_reading(&mut self, token: Token, on: bool);
    /// Sends all of `buf`. The caller keeps at most one send in flight per token.
    fn send(&mut self, token: Token, buf: Vec<u8>);
    /// Shuts down the write side (shutdown(2), `SHUT_WR`): the peer reads EOF after the bytes
    /// already sent. Synchronous; reading goes on.
    fn shutdown_write(&mut self, token: Token);
    /// Closes the connection: cancels its operations; `abort` resets it (SO_LINGER 0).
    /// Exactly one [`Event::Closed`] follows, after every in-flight operation has completed.
    fn close(&mut self, token: Token, abort: bool);
    /// Submits what is queued and waits until at least one event is ready, `timeout` passes
    /// (`None`: no limit), or a waker fires.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// The next ready event, or `None` when this turn's events are drained.
    fn next(&mut self) -> Option<Event<'_>>;
    /// A handle other threads use to wake this backend.
    fn waker(&self) -> Arc<dyn Waker>;
    /// Cancels every operation and waits (bounded by `deadline`) until the kernel has
    /// completed all of them, so no buffer is freed while the kernel may still write to it.
    fn shutdown(&mut self, deadline: Duration);
}

/// Sizes a backend is built with (from the engine's configuration).
#[derive(Debug, Clone)]
pub(crate) struct BackendConfig {
    /// Bytes per receive buffer (epoll: the per-thread scratch buffer; uring: each provided buffer).
    pub recv_buffer_size: usize,
    /// uring only: buffers in the provided-buffer ring (a power of two).
    pub recv_buffer_count: u16,
    /// uring only: submission queue entries.
    pub ring_entries: u32,
}

/// Opens a backend of the given kind for one IO thread.
pub(crate) fn open(
    kind: crate::BackendKind,
    config: &BackendConfig,
) -> io::Result<Box<dyn Backend>> {
    match kind {
        crate::BackendKind::Uring => Ok(Box::new(uring::UringBackend::new(config)?)),
        crate::BackendKind::Epoll | crate::BackendKind::Auto => {
            Ok(Box::new(epoll::EpollBackend::new(config)?))
        }
    }
}
