//! The platform layer: everything that talks to the kernel lives here.
//!
//! The engine (`crate::engine`) is completion-shaped: it *submits* operations
//! (accept, recv, send, connect, close) to a [`Backend`] and *reacts* to the
//! [`Event`]s those operations complete with. io_uring does this natively
//! (`sys/uring/`, Linux) and so does the I/O completion port (`sys/iocp/`, Windows); the
//! readiness backend (`sys/epoll.rs`, on `mio`: epoll on Linux, kqueue on macOS, AFD polling on
//! Windows) emulates it by performing the non-blocking syscall when the socket is ready.
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
#[cfg(unix)]
pub(crate) mod inherit;
#[cfg(not(unix))]
#[path = "inherit_none.rs"]
pub(crate) mod inherit;
#[cfg(windows)]
pub(crate) mod iocp;
#[cfg(target_os = "linux")]
mod outq;
pub(crate) mod signals;
#[cfg(unix)]
pub(crate) mod unix_sock;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

use crate::{BackendKind, Error};

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

impl Event<'_> {
    /// The connection this event is about (`None` for listener events and wake-ups). Backends
    /// use it to drop what they queued for a connection being closed.
    pub(crate) fn token(&self) -> Option<Token> {
        match self {
            Event::Data { token, .. }
            | Event::ReadClosed { token }
            | Event::ReadError { token, .. }
            | Event::SendProgress { token, .. }
            | Event::SendDone { token, .. }
            | Event::SendError { token, .. }
            | Event::Connected { token, .. }
            | Event::Closed { token } => Some(*token),
            Event::Accepted { .. } | Event::AcceptError { .. } | Event::Wake => None,
        }
    }
}

/// Lets another thread interrupt an IO thread's [`Backend::wait`].
pub(crate) trait Waker: Send + Sync {
    fn wake(&self);
}

/// One IO thread's instance of a kernel interface. Not shared between threads.
pub(crate) trait Backend {
    /// `"uring"`, `"epoll"`, `"poll"` or `"iocp"`: the name printed in `listening on ... (backend: X)`.
    fn name(&self) -> &'static str;
    /// Starts accepting on `listener` (already bound, listening, non-blocking), reported as `id`.
    fn add_listener(&mut self, id: usize, listener: TcpListener) -> io::Result<()>;
    /// Accepts again on `id` after an [`Event::AcceptError`].
    fn resume_accept(&mut self, id: usize);
    /// Whether this backend's listeners accept for every IO thread: one listening socket that
    /// only one thread's backend can accept on (IOCP: a socket belongs to one completion port).
    /// The engine then hands what that thread accepts round-robin to every IO thread.
    fn accepts_for_all(&self) -> bool {
        false
    }
    /// Stops accepting on every listener and closes them (shutdown).
    fn close_listeners(&mut self);
    /// Takes ownership of an accepted connection and starts reading from it.
    fn register(&mut self, token: Token, stream: TcpStream) -> io::Result<()>;
    /// Starts a non-blocking connect of `socket` (created by the engine) to `addr`.
    fn connect(&mut self, token: Token, socket: socket2::Socket, addr: SocketAddr);
    /// Pauses (`false`) or resumes (`true`) reading. Data already read may still be delivered.
    fn set_reading(&mut self, token: Token, on: bool);
    /// Under memory pressure (`true`) every receive armed from now on takes one buffer at
    /// most, so that a connection the budget pauses has at most one buffer more arriving after
    /// the decision; `false` restores the backend's batch. A backend that reads one buffer per
    /// readable connection per loop turn anyway (epoll, poll, IOCP) has nothing to change.
    fn set_recv_tight(&mut self, _tight: bool) {}
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
    /// Bytes the kernel still holds for the connection that the peer has not acknowledged
    /// (SIOCOUTQ), or `None` where that cannot be read. Lets the engine see a slow flush move
    /// while the kernel's send buffer is too full to report writability.
    fn unsent(&self, token: Token) -> Option<usize> {
        let _ = token;
        None
    }
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
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub recv_buffer_count: u16,
    /// uring only: submission queue entries.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub ring_entries: u32,
}

/// Opens a backend of the given kind (as resolved by [`select`]) for one IO thread.
pub(crate) fn open(kind: BackendKind, config: &BackendConfig) -> io::Result<Box<dyn Backend>> {
    match kind {
        #[cfg(target_os = "linux")]
        BackendKind::Uring => Ok(Box::new(uring::UringBackend::new(config)?)),
        #[cfg(windows)]
        BackendKind::Iocp => Ok(Box::new(iocp::IocpBackend::new(config)?)),
        _ => Ok(Box::new(epoll::EpollBackend::new(config)?)),
    }
}

/// The readiness backend's kind on this OS: `Epoll` on Linux, `Poll` elsewhere (so that the
/// name printed reads naturally).
const READINESS: BackendKind = if cfg!(target_os = "linux") {
    BackendKind::Epoll
} else {
    BackendKind::Poll
};

/// Resolves the backend asked for into the one that will run: `auto` is io_uring when the
/// probe passes (else epoll, with one warning) on Linux, `iocp` on Windows, `poll` elsewhere;
/// a backend this OS does not have is a one-line error.
pub(crate) fn select(asked: BackendKind, config: &BackendConfig) -> Result<BackendKind, Error> {
    let unavailable = |what: &str| {
        Err(Error::Config(format!(
            "backend {asked} is not available on this OS ({what}; available: {})",
            BackendKind::available()
        )))
    };
    match asked {
        BackendKind::Poll => Ok(READINESS),
        BackendKind::Epoll if cfg!(target_os = "linux") => Ok(BackendKind::Epoll),
        BackendKind::Epoll => {
            unavailable("epoll is Linux-only; poll is the readiness backend here")
        }
        BackendKind::Iocp if cfg!(windows) => Ok(BackendKind::Iocp),
        BackendKind::Iocp => unavailable("the I/O completion port is Windows-only"),
        #[cfg(target_os = "linux")]
        BackendKind::Uring => {
            probe_uring(config).map_err(Error::UringUnavailable)?;
            Ok(BackendKind::Uring)
        }
        #[cfg(not(target_os = "linux"))]
        BackendKind::Uring => unavailable("io_uring is Linux-only"),
        #[cfg(target_os = "linux")]
        BackendKind::Auto => match probe_uring(config) {
            Ok(()) => Ok(BackendKind::Uring),
            Err(why) => {
                tracing::warn!("io_uring unavailable ({why}); falling back to epoll");
                Ok(BackendKind::Epoll)
            }
        },
        #[cfg(windows)]
        BackendKind::Auto => {
            let _ = config;
            Ok(BackendKind::Iocp)
        }
        #[cfg(not(any(target_os = "linux", windows)))]
        BackendKind::Auto => {
            let _ = config;
            Ok(BackendKind::Poll)
        }
    }
}

/// Probes io_uring on a short-lived thread of its own: the probe's ring is torn down
/// asynchronously by the kernel, which may then post task work to the thread that created it;
/// that interrupts a blocking socket call with a timeout on that thread (EINTR).
#[cfg(target_os = "linux")]
fn probe_uring(config: &BackendConfig) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| uring::probe(config))
            .join()
            .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
    })
}

/// Whether an accept error means a resource ran out (descriptors, buffers, memory): the
/// engine then backs off instead of retrying at once.
pub(crate) fn is_resource_exhaustion(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::{ERROR_NOT_ENOUGH_MEMORY, ERROR_OUTOFMEMORY};
        use windows_sys::Win32::Networking::WinSock::{WSAEMFILE, WSAENOBUFS};
        matches!(
            error.raw_os_error(),
            Some(c) if c == WSAEMFILE
                || c == WSAENOBUFS
                || c == ERROR_NOT_ENOUGH_MEMORY as i32
                || c == ERROR_OUTOFMEMORY as i32
        )
    }
}

/// Binds `n` listening sockets on `addr`, one per IO thread, non-blocking.
///
/// unix: `n` sockets with SO_REUSEPORT (the kernel spreads connections over them; port 0: the
/// first gets a port, the others bind to it). Windows has no SO_REUSEPORT (its SO_REUSEADDR
/// would let any process steal the port): one socket is bound and the others are handles to
/// it (`try_clone`), so every IO thread accepts from the one backlog. `exclusive`: Windows'
/// SO_EXCLUSIVEADDRUSE (`Server::exclusive_address`; ignored elsewhere).
pub(crate) fn bind_listeners(
    addr: SocketAddr,
    backlog: i32,
    n: usize,
    exclusive: bool,
) -> io::Result<Vec<TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |addr: SocketAddr| -> io::Result<TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        #[cfg(unix)]
        {
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        #[cfg(windows)]
        if exclusive {
            iocp::exclusive_addr_use(&s)?;
        }
        #[cfg(not(windows))]
        let _ = exclusive;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        #[cfg(windows)]
        let backlog = iocp::listen_backlog(backlog);
        s.listen(backlog)?;
        Ok(s.into())
    };
    let first = bind(addr)?;
    let mut all = Vec::with_capacity(n);
    let addr = first.local_addr()?;
    all.push(first);
    for _ in 1..n {
        if cfg!(unix) {
            all.push(bind(addr)?);
        } else {
            all.push(all[0].try_clone()?);
        }
    }
    Ok(all)
}

/// An accepted connection's addresses: `(peer, local, unix)`. A Unix domain socket connection
/// has no IP address: both addresses are then [`crate::UNIX_PLACEHOLDER_ADDR`] and `unix`
/// says who the peer is.
pub(crate) fn accepted_addrs(
    stream: &TcpStream,
) -> io::Result<(SocketAddr, SocketAddr, Option<Box<crate::info::UnixPeer>>)> {
    let local = socket2::SockRef::from(stream).local_addr()?;
    if let Some(local) = local.as_socket() {
        return Ok((stream.peer_addr()?, local, None));
    }
    #[cfg(unix)]
    if local.is_unix() {
        let unix = crate::info::UnixPeer {
            path: local.as_pathname().map(std::path::Path::to_path_buf),
            cred: unix_sock::peer_cred(stream),
        };
        let none = crate::listen::UNIX_PLACEHOLDER_ADDR;
        return Ok((none, none, Some(Box::new(unix))));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "accepted a socket of an unknown address family",
    ))
}

/// Binds `n` listeners on the Unix domain socket `path` (see `unix_sock::bind`).
#[cfg(unix)]
pub(crate) fn bind_unix_listeners(
    path: &std::path::Path,
    backlog: i32,
    n: usize,
) -> io::Result<Vec<TcpListener>> {
    unix_sock::bind(path, backlog, n)
}

/// Windows: AF_UNIX exists since Windows 10 1803, but the IOCP and poll backends do not
/// serve it (see ARCHITECTURE.md, "Unix domain sockets").
#[cfg(not(unix))]
pub(crate) fn bind_unix_listeners(
    path: &std::path::Path,
    backlog: i32,
    n: usize,
) -> io::Result<Vec<TcpListener>> {
    let _ = (path, backlog, n);
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "Unix domain sockets are not supported by ringport on this OS (Linux and other unixes only)",
    ))
}

/// The path a Unix listener is bound to (`None`: not a Unix socket, or an unnamed one).
pub(crate) fn unix_listener_path(l: &TcpListener) -> Option<std::path::PathBuf> {
    #[cfg(unix)]
    return unix_sock::listener_path(l);
    #[cfg(not(unix))]
    {
        let _ = l;
        None
    }
}

/// Removes a Unix socket file this process owned (clean shutdown).
pub(crate) fn remove_socket_file(path: &std::path::Path) {
    #[cfg(unix)]
    unix_sock::remove_socket_file(path);
    #[cfg(not(unix))]
    let _ = path;
}

/// Makes the allocator give large buffers back to the kernel when they are freed (glibc):
/// a fixed `M_MMAP_THRESHOLD` of 128 KiB turns off glibc's dynamic threshold, which after the
/// first large free would serve every later write queue (up to the 1 MiB watermark) from the
/// heap and keep it after a flood, so that RSS stayed far above what the memory budget counts.
pub(crate) fn bound_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; any value is accepted or refused (0).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}
