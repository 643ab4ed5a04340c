//! The pieces of the IOCP backend: the port, the waker, one overlapped operation, the
//! per-connection and per-listener state, and the small WinSock helpers.

use std::io;
use std::mem;
use std::os::windows::io::AsRawSocket;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, WSAGetLastError, WSAGetOverlappedResult, SOCKADDR_STORAGE, SOCKET, SOCKET_ERROR,
    SOL_SOCKET,
};
use windows_sys::Win32::System::IO::{PostQueuedCompletionStatus, OVERLAPPED};

use super::super::Waker;

/// `AcceptEx` calls kept outstanding per listener.
pub(crate) const ACCEPTS_PER_LISTENER: usize = 8;
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
