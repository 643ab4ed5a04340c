//! The pieces of the IOCP backend: the port, the waker, one overlapped operation, the
//! per-connection and per-listener state, and the small WinSock helpers.

use std::io;
use std::mem;
use std::os::windows::io::AsRawSocket;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use socket2::{Domain, SockAddr, Socket};
use windows_sys::Wdk::System::SystemServices::RtlGetVersion;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, WSAGetLastError, WSAGetOverlappedResult, WSAIoctl, INVALID_SOCKET, SIO_BASE_HANDLE,
    SIO_TCP_INITIAL_RTO, SOCKADDR_STORAGE, SOCKET, SOCKET_ERROR, SOL_SOCKET, SO_EXCLUSIVEADDRUSE,
    TCP_INITIAL_RTO_NO_SYN_RETRANSMISSIONS, TCP_INITIAL_RTO_PARAMETERS, WSAECONNABORTED,
    WSAECONNRESET,
};
use windows_sys::Win32::System::SystemInformation::OSVERSIONINFOW;
use windows_sys::Win32::System::IO::{CancelIoEx, PostQueuedCompletionStatus, OVERLAPPED};

use super::super::Waker;

/// `AcceptEx` calls kept outstanding per listener, as libuv (`uv_simultaneous_server_accepts`).
/// Each holds a socket made in advance and 2 × [`ADDR_LEN`] bytes. Windows answers a
/// connection that finds the backlog full with a reset (`WSAECONNREFUSED` at the client),
/// where Linux drops the SYN and the client retries: the outstanding accepts and the backlog
/// ([`listen_backlog`]) are what absorbs a burst while the IO thread is busy.
pub(crate) const ACCEPTS_PER_LISTENER: usize = 32;

/// The `listen` backlog argument on Windows for a requested backlog of `n`: `SOMAXCONN_HINT(n)`
/// (`-n`). A plain value is only a hint Windows caps at about 200; the hint form asks for `n`
/// itself, which Windows clamps to 200..=65535 (Microsoft's `listen` page).
pub(crate) fn listen_backlog(n: i32) -> i32 {
    -n.clamp(1, 65535)
}
/// Bytes one `WSASend` carries at most: each completion short of a buffer's end is reported as
/// send progress (see the module doc). 64 KiB: a reader taking 6.4 KB/s still moves one piece
/// per `FLUSH_STALL`; one completion per 64 KiB costs little next to copying them.
pub(crate) const MAX_SEND: usize = 64 << 10;
/// Completions dequeued per `GetQueuedCompletionStatusEx`.
pub(super) const BATCH: usize = 256;
/// The completion key of wake-up packets (sockets are associated with key 0).
pub(super) const WAKE_KEY: usize = 1;
/// Address space `AcceptEx` needs per address (local and remote): the largest sockaddr + 16.
pub(super) const ADDR_LEN: usize = mem::size_of::<SOCKADDR_STORAGE>() + 16;

/// The completion port handle, closed when the backend and every waker are gone.
pub(super) struct Port(pub(super) HANDLE);

// SAFETY: a completion port handle may be used from any thread (posting and dequeuing are
// thread-safe kernel calls); the handle is only closed in `Drop`, when no user is left.
unsafe impl Send for Port {}
// SAFETY: as above; `&Port` only hands out the handle value.
unsafe impl Sync for Port {}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateIoCompletionPort and is closed exactly once.
        unsafe { CloseHandle(self.0) };
    }
}

pub(super) struct IocpWaker {
    pub(super) port: Arc<Port>,
    /// A wake-up packet is in the port and not yet dequeued.
    pub(super) pending: AtomicBool,
}

impl Waker for IocpWaker {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // SAFETY: a valid port handle (kept alive by the Arc); a null OVERLAPPED is allowed
            // and is how wake-ups are told apart from operations.
            let ok = unsafe { PostQueuedCompletionStatus(self.port.0, 0, WAKE_KEY, ptr::null()) };
            if ok == 0 {
                self.pending.store(false, Ordering::Release);
            }
        }
    }
}

/// One overlapped operation. `ovl` must stay the first field: the kernel hands back a pointer
/// to it, which is a pointer to the `Op`.
#[repr(C)]
pub(super) struct Op {
    pub(super) ovl: OVERLAPPED,
    /// The connection's token, or the listener's id for accepts.
    pub(super) token: usize,
    pub(super) kind: OpKind,
}

pub(super) enum OpKind {
    Accept {
        socket: Option<Socket>,
        addrs: Box<[u8; 2 * ADDR_LEN]>,
    },
    /// The zero-byte receive: no buffer at all.
    Recv,
    Send {
        buf: Vec<u8>,
        off: usize,
    },
    Connect {
        _addr: Box<SockAddr>,
    },
}

impl Op {
    pub(super) fn new(token: usize, kind: OpKind) -> Box<Op> {
        Box::new(Op {
            ovl: OVERLAPPED::default(),
            token,
            kind,
        })
    }
}

pub(super) struct Conn {
    pub(super) sock: Socket,
    /// The engine wants data (not paused).
    pub(super) reading: bool,
    /// The zero-byte receive completed and `recv` has not yet seen `WSAEWOULDBLOCK`.
    pub(super) readable: bool,
    /// In `read_queue` / `read_again`.
    pub(super) queued: bool,
    /// EOF or a read error was reported: never read again.
    pub(super) read_done: bool,
    pub(super) recv_pending: bool,
    pub(super) connecting: bool,
    /// A send the engine gave before the connect completed.
    pub(super) deferred_send: Option<Vec<u8>>,
    /// Operations of this connection the kernel holds.
    pub(super) ops: usize,
    pub(super) closing: bool,
}

pub(super) struct Listener {
    pub(super) sock: Socket,
    pub(super) domain: Domain,
    /// This port took the socket (see the module doc); otherwise the handle stays unused.
    pub(super) active: bool,
    pub(super) pending: usize,
    pub(super) paused: bool,
    pub(super) closing: bool,
}

pub(super) fn raw(sock: &Socket) -> SOCKET {
    sock.as_raw_socket() as SOCKET
}

pub(super) fn wsa_error() -> io::Error {
    // SAFETY: reads this thread's last WinSock error; no preconditions.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// The result of a dequeued operation on `sock`: bytes transferred, or the WinSock error
/// (e.g. `WSAECONNRESET`, `WSAECONNREFUSED`, `WSA_OPERATION_ABORTED` after a cancel).
pub(super) fn op_result(sock: SOCKET, ovl: &OVERLAPPED) -> io::Result<usize> {
    let mut bytes = 0u32;
    let mut flags = 0u32;
    // SAFETY: `ovl` belongs to an operation on `sock` whose completion was dequeued, so it is
    // no longer in the kernel's hands; not waiting (FALSE) just reads its stored status.
    let ok = unsafe { WSAGetOverlappedResult(sock, ovl, &mut bytes, 0, &mut flags) };
    if ok != 0 {
        Ok(bytes as usize)
    } else {
        Err(wsa_error())
    }
}

/// Sets a socket option whose value is the bytes of `val` (or none).
pub(super) fn set_opt(sock: SOCKET, name: i32, val: &[u8]) -> io::Result<()> {
    // SAFETY: `val` is valid for `val.len()` bytes for the duration of the call.
    let rc = unsafe {
        setsockopt(
            sock,
            SOL_SOCKET,
            name,
            if val.is_empty() {
                ptr::null()
            } else {
                val.as_ptr()
            },
            val.len() as i32,
        )
    };
    if rc == SOCKET_ERROR {
        Err(wsa_error())
    } else {
        Ok(())
    }
}

impl Conn {
    pub(super) fn new(sock: Socket) -> Conn {
        Conn {
            sock,
            reading: true,
            readable: false,
            queued: false,
            read_done: false,
            recv_pending: false,
            connecting: false,
            deferred_send: None,
            ops: 0,
            closing: false,
        }
    }

    pub(super) fn sock_ref(&self) -> &Socket {
        &self.sock
    }
}

/// socket2's `recv` takes `MaybeUninit` bytes; initialized bytes are a valid instance.
pub(super) fn socket2_buf(buf: &mut [u8]) -> &mut [mem::MaybeUninit<u8>] {
    // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout, and `recv` only writes bytes.
    unsafe { &mut *(buf as *mut [u8] as *mut [mem::MaybeUninit<u8>]) }
}

/// Windows 10 version 1709 (build 16299) or later: from then on `SIO_TCP_INITIAL_RTO` knows
/// `TCP_INITIAL_RTO_NO_SYN_RETRANSMISSIONS` (libuv's `uv__windows10_version1709`, asked of
/// `RtlGetVersion`, which unlike `GetVersionEx` does not depend on the manifest).
pub(super) fn windows10_1709_or_later() -> bool {
    static AT_LEAST: OnceLock<bool> = OnceLock::new();
    *AT_LEAST.get_or_init(|| {
        let mut v = OSVERSIONINFOW {
            dwOSVersionInfoSize: mem::size_of::<OSVERSIONINFOW>() as u32,
            ..Default::default()
        };
        // SAFETY: `v` is a valid OSVERSIONINFOW with its size set, as RtlGetVersion requires.
        if unsafe { RtlGetVersion(&mut v) } != 0 {
            return false;
        }
        (v.dwMajorVersion, v.dwMinorVersion, v.dwBuildNumber) >= (10, 0, 16299)
    })
}

/// For a connect to a loopback address: no SYN retransmission, so a refused connect fails at
/// once instead of after Windows' retransmissions (about 2 s), as libuv does in
/// `uv__tcp_try_connect`. Only on Windows 10 1709 and later (before, the value would be taken
/// literally); a failure is ignored (an older stack or another provider keeps its default).
pub(super) fn no_syn_retransmissions_to_loopback(sock: SOCKET, addr: &std::net::SocketAddr) {
    if !addr.ip().is_loopback() || !windows10_1709_or_later() {
        return;
    }
    let params = TCP_INITIAL_RTO_PARAMETERS {
        Rtt: TCP_INITIAL_RTO_NO_SYN_RETRANSMISSIONS,
        MaxSynRetransmissions: TCP_INITIAL_RTO_NO_SYN_RETRANSMISSIONS as u8,
    };
    let mut bytes = 0u32;
    // SAFETY: the input is a valid TCP_INITIAL_RTO_PARAMETERS of the stated size, no output;
    // synchronous (no OVERLAPPED).
    let rc = unsafe {
        WSAIoctl(
            sock,
            SIO_TCP_INITIAL_RTO,
            (&params as *const TCP_INITIAL_RTO_PARAMETERS).cast(),
            mem::size_of::<TCP_INITIAL_RTO_PARAMETERS>() as u32,
            ptr::null_mut(),
            0,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    if rc == SOCKET_ERROR {
        tracing::debug!(error = %wsa_error(), "iocp: SIO_TCP_INITIAL_RTO not applied");
    }
}

/// The base service provider's socket under `sock` (`SIO_BASE_HANDLE`): with a non-IFS layered
/// provider installed, `sock` is the layer's handle and `CancelIoEx` on it may not reach the
/// operations the base provider holds (libuv's `uv__tcp_try_cancel_reqs`). `None` when the
/// ioctl fails (then only `sock` itself can be cancelled).
pub(super) fn base_handle(sock: SOCKET) -> Option<SOCKET> {
    let mut base: SOCKET = INVALID_SOCKET;
    let mut bytes = 0u32;
    // SAFETY: no input; the output is one SOCKET of the stated size; synchronous.
    let rc = unsafe {
        WSAIoctl(
            sock,
            SIO_BASE_HANDLE,
            ptr::null(),
            0,
            (&mut base as *mut SOCKET).cast(),
            mem::size_of::<SOCKET>() as u32,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    (rc != SOCKET_ERROR && base != INVALID_SOCKET && base != 0).then_some(base)
}

/// Cancels every operation of this process on `sock` and, when a layered provider sits on
/// top, on the base provider's socket under it (see [`base_handle`]). The completions still
/// arrive (`WSA_OPERATION_ABORTED`), and the caller frees nothing before they have.
pub(super) fn cancel_all(sock: SOCKET) {
    // SAFETY: cancels this process's operations on an open socket; the caller keeps every
    // operation's memory until its completion is dequeued.
    unsafe { CancelIoEx(sock as HANDLE, ptr::null()) };
    if let Some(base) = base_handle(sock).filter(|&b| b != sock) {
        // SAFETY: as above; the base socket is open for as long as `sock` is.
        unsafe { CancelIoEx(base as HANDLE, ptr::null()) };
    }
}

/// Sets `SO_EXCLUSIVEADDRUSE` on a socket not yet bound (`Server::exclusive_address`).
pub(crate) fn exclusive_addr_use(sock: &Socket) -> io::Result<()> {
    set_opt(raw(sock), SO_EXCLUSIVEADDRUSE, &1i32.to_ne_bytes())
}

/// The bytes of the next `WSASend` for `rest` bytes left: at most [`MAX_SEND`], and less than
/// the socket's send buffer (`SO_SNDBUF`, read at each piece that could reach it). One send
/// that fills the whole send buffer completes only when its last segment is acknowledged,
/// which the receiver's delayed ACK holds up to 200 ms: with one send in flight, a stall per
/// piece (Microsoft KB 823764; its method 2 is this one). `SO_SNDBUF` is read, never set:
/// setting it turns off Windows' dynamic send buffering. A send buffer of 0 (no buffering,
/// asked for by the user) keeps `MAX_SEND`.
pub(super) fn send_piece(sock: &Socket, rest: usize) -> usize {
    let piece = rest.min(MAX_SEND);
    if piece < SMALL_SEND {
        return piece;
    }
    match sock.send_buffer_size() {
        Ok(sndbuf) if sndbuf > 1 => piece.min(sndbuf - 1),
        _ => piece,
    }
}

/// Pieces under this many bytes are sent without asking for the send buffer's size (no send
/// buffer is that small in practice; a user-set one under it can still stall).
const SMALL_SEND: usize = 4096;

/// An accept failed because its peer went away first (reset, or aborted before we took it):
/// nothing is wrong with the listener.
pub(super) fn peer_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(WSAECONNRESET | WSAECONNABORTED))
}
