//! The I/O completion port backend (Windows): one port per IO thread, every socket associated
//! with it, every operation an overlapped call whose completion is reaped in batches with
//! `GetQueuedCompletionStatusEx`.
//!
//! - **Accept**: [`ACCEPTS_PER_LISTENER`] `AcceptEx` calls outstanding per listener, each with
//!   a socket made in advance; on completion `SO_UPDATE_ACCEPT_CONTEXT` makes the socket a
//!   normal connected one, and the accept is re-posted. An accept whose peer went away first
//!   (`WSAECONNRESET`, `WSAECONNABORTED`) is re-posted quietly; after any other accept error
//!   no accept is re-posted until [`Backend::resume_accept`] (the engine backs off). The
//!   listen backlog is passed as `SOMAXCONN_HINT` ([`listen_backlog`]).
//! - **Receive: idle connections hold no buffer.** Each connection keeps one *zero-byte*
//!   `WSARecv` outstanding: it lends the kernel no memory and completes when data (or the FIN, or
//!   an error) is there. An error (a peer's reset) is reported from that completion itself: the
//!   `recv` after it may no longer see it (under Wine it then read a clean EOF). On success a
//!   non-blocking `recv` fills this thread's one receive buffer, which
//!   is lent to the engine as [`Event::Data`] until the next `next()` (the same contract and the
//!   same fairness as the epoll backend: a full read is repeated on the next turn; a short read
//!   or `WSAEWOULDBLOCK` re-posts the zero-byte receive). A receive posted with a real buffer
//!   would pin that buffer per idle connection for as long as it stays idle: 16 KiB × 10 000
//!   connections is 160 MiB doing nothing. This is the classic IOCP server technique.
//!   A zero-byte receive that fails at once (no completion will come: `WSAENOBUFS`, or
//!   `WSAEWOULDBLOCK` for too many outstanding requests) is that connection's read error.
//! - **Send**: `WSASend` straight from the engine-owned `Vec`, which this backend owns (inside
//!   the operation) until the completion arrives, whatever happens to the connection meanwhile.
//!   A `WSASend` completes only once the kernel has taken all of its bytes, and nothing tells
//!   how far an outstanding one got, so each `WSASend` carries at most
//!   [`MAX_SEND`](op::MAX_SEND) bytes, and less than the socket's `SO_SNDBUF` (`send_piece`:
//!   KB 823764's delayed-ACK stall): every
//!   completion short of the end is reported as [`Event::SendProgress`] and the rest posted
//!   from where it stopped. The engine's flush-stall check then sees a slow reader move (a
//!   reader slower than `MAX_SEND` per `FLUSH_STALL`, 6.4 KB/s, would still count as stalled).
//! - **Connect**: `ConnectEx` (the socket is bound first, as it requires), then
//!   `SO_UPDATE_CONNECT_CONTEXT`. To a loopback address, no SYN retransmission
//!   (`SIO_TCP_INITIAL_RTO`, Windows 10 1709+), so a refused connect fails at once.
//! - **Close**: `CancelIoEx` on the socket, and on its base provider's socket when a layered
//!   provider sits on top (`SIO_BASE_HANDLE`, as libuv); the socket is closed (`closesocket`) and
//!   [`Event::Closed`] reported only when every completion of that connection has arrived, so no
//!   `OVERLAPPED` or buffer is ever freed while the kernel may still write to it. Listeners close
//!   the same way.
//! - **Wake**: `PostQueuedCompletionStatus` with a completion key of its own (coalesced: one
//!   packet in the port at most).
//!
//! Every operation is one heap [`Op`] whose first field is its `OVERLAPPED`: the pointer
//! given to the kernel is the pointer to the `Op`, turned back into its `Box` exactly once, when
//! its completion is dequeued (or at once when the call failed synchronously, in which case no
//! completion is queued). This follows compio's IOCP driver (an overlapped struct at the head of
//! each operation, its status read back from the `OVERLAPPED` when dequeued) and mio's Windows
//! selector (a cancelled operation's state is kept alive until its completion arrives, its
//! `delete_pending` state). Operations that never complete before [`Backend::shutdown`]'s
//! deadline are leaked on purpose rather than freed under the kernel.
//!
//! Listeners: Windows has no SO_REUSEPORT, so the engine's per-thread listeners are handles of
//! one socket (`sys::bind_listeners`). A socket can be associated with one completion port
//! only, and an `AcceptEx` completes on the listening socket's port: the IO thread whose port
//! takes the socket first keeps the accepts outstanding, the others hold their handle unused
//! (logged at debug). The accepted socket belongs to no port yet, so the engine hands it round
//! robin to every IO thread ([`Backend::accepts_for_all`]), whose backend associates it with
//! its own port in `register`.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use windows_sys::Win32::Foundation::{GetLastError, HANDLE, WAIT_TIMEOUT};
#[cfg(test)]
use windows_sys::Win32::Networking::WinSock::WSASetLastError;
use windows_sys::Win32::Networking::WinSock::{
    AcceptEx, WSARecv, WSASend, LPFN_CONNECTEX, SO_UPDATE_ACCEPT_CONTEXT,
    SO_UPDATE_CONNECT_CONTEXT, WSABUF, WSA_IO_PENDING,
};
use windows_sys::Win32::System::Threading::INFINITE;
use windows_sys::Win32::System::IO::{
    CreateIoCompletionPort, GetQueuedCompletionStatusEx, OVERLAPPED_ENTRY,
};

use super::{Backend, BackendConfig, Event, Token, Waker};

mod connect;
#[cfg(test)]
mod fault;
mod op;
#[cfg(test)]
mod tests;

use op::{
    cancel_all, op_result, peer_gone, raw, send_piece, set_opt, socket2_buf, wsa_error, Conn,
    IocpWaker, Listener, Op, OpKind, Port, ADDR_LEN, BATCH, WAKE_KEY,
};
pub(crate) use op::{exclusive_addr_use, listen_backlog, ACCEPTS_PER_LISTENER};

pub(crate) struct IocpBackend {
    port: Arc<Port>,
    waker: Arc<IocpWaker>,
    entries: Vec<OVERLAPPED_ENTRY>,
    scratch: Vec<u8>,
    conns: Vec<Option<Conn>>,
    listeners: Vec<Option<Listener>>,
    /// Events produced outside `next()` (completions, closes, wake-ups).
    done: VecDeque<Event<'static>>,
    read_queue: VecDeque<Token>,
    read_again: Vec<Token>,
    /// Operations the kernel holds, all kinds.
    in_flight: usize,
    connect_ex: LPFN_CONNECTEX,
}

impl IocpBackend {
    pub(crate) fn new(config: &BackendConfig) -> io::Result<Self> {
        // SAFETY: creating a new port (no file handle, no existing port); one concurrent thread,
        // since only this IO thread dequeues from it.
        let handle = unsafe { CreateIoCompletionPort(-1isize as HANDLE, ptr::null_mut(), 0, 1) };
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        let port = Arc::new(Port(handle));
        Ok(IocpBackend {
            waker: Arc::new(IocpWaker {
                port: port.clone(),
                pending: AtomicBool::new(false),
            }),
            port,
            entries: vec![OVERLAPPED_ENTRY::default(); BATCH],
            scratch: vec![0; config.recv_buffer_size],
            conns: Vec::new(),
            listeners: Vec::new(),
            done: VecDeque::new(),
            read_queue: VecDeque::new(),
            read_again: Vec::new(),
            in_flight: 0,
            connect_ex: None,
        })
    }

    /// Associates `sock` with this thread's port.
    fn associate(&self, sock: &Socket) -> io::Result<()> {
        // SAFETY: `sock` is an open overlapped socket; associating it with our open port.
        let h = unsafe { CreateIoCompletionPort(raw(sock) as HANDLE, self.port.0, 0, 0) };
        if h.is_null() {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Hands `op` to the kernel through `call`, which returns the WinSock call's result
    /// (`true`: completed at once or pending). On a synchronous failure the `Op` comes back
    /// (no completion will be queued for it).
    fn submit(
        &mut self,
        op: Box<Op>,
        call: impl FnOnce(*mut Op) -> bool,
    ) -> Result<(), (io::Error, Box<Op>)> {
        let p = Box::into_raw(op);
        if call(p) {
            self.in_flight += 1;
            return Ok(());
        }
        let err = wsa_error();
        if err.raw_os_error() == Some(WSA_IO_PENDING) {
            self.in_flight += 1;
            return Ok(());
        }
        // SAFETY: the call failed synchronously: the kernel kept no reference to `p`, which
        // came from `Box::into_raw` just above.
        Err((err, unsafe { Box::from_raw(p) }))
    }

    fn conn(&mut self, token: Token) -> Option<&mut Conn> {
        self.conns.get_mut(token).and_then(Option::as_mut)
    }

    fn queue_read(&mut self, token: Token) {
        if let Some(c) = self.conn(token) {
            if c.reading && c.readable && !c.queued && !c.closing && !c.read_done {
                c.queued = true;
                self.read_queue.push_back(token);
            }
        }
    }

    /// Posts the zero-byte receive that tells when `token` has something to read.
    fn post_recv(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        if c.recv_pending || c.closing || c.connecting || c.read_done || !c.reading {
            return;
        }
        let sock = raw(&c.sock);
        let op = Op::new(token, OpKind::Recv);
        let r = self.submit(op, |p| {
            let mut flags = 0u32;
            let buf = WSABUF {
                len: 0,
                buf: ptr::NonNull::<u8>::dangling().as_ptr(),
            };
            #[cfg(test)]
            if let Some(e) = fault::take(fault::Call::Recv) {
                // SAFETY: sets this thread's last WinSock error; no preconditions.
                unsafe { WSASetLastError(e) };
                return false;
            }
            // SAFETY: `p` is a live Op (owned by the kernel until its completion); the WSABUF
            // array is copied by the call and describes zero bytes, so no memory is lent.
            unsafe {
                WSARecv(
                    sock,
                    &buf,
                    1,
                    ptr::null_mut(),
                    &mut flags,
                    &mut (*p).ovl,
                    None,
                ) == 0
            }
        });
        let c = self.conn(token).expect("checked above");
        match r {
            Ok(()) => {
                c.recv_pending = true;
                c.ops += 1;
            }
            // Failed at once (no completion will come): `WSAENOBUFS`, or `WSAEWOULDBLOCK`,
            // which on an overlapped socket means too many outstanding requests. Retrying
            // through `recv` would spin: it says `WSAEWOULDBLOCK` (nothing to read), which
            // posts this receive again, which fails again. Like libuv (`uv__tcp_queue_read`:
            // "make this req pending reporting an error"), it is the connection's read error.
            Err((error, _)) => {
                tracing::debug!(token, error = %error, "iocp: zero-byte WSARecv failed at once");
                c.reading = false;
                c.read_done = true;
                self.done.push_back(Event::ReadError { token, error });
            }
        }
    }

    fn post_send(&mut self, token: Token, buf: Vec<u8>, off: usize) {
        let Some(c) = self.conn(token) else {
            self.done.push_back(Event::SendError {
                token,
                error: io::Error::from(io::ErrorKind::NotConnected),
                buf,
            });
            return;
        };
        let sock = raw(&c.sock);
        let piece = send_piece(&c.sock, buf.len() - off);
        debug_assert!(piece > 0 || buf.len() == off);
        let op = Op::new(token, OpKind::Send { buf, off });
        let r = self.submit(op, |p| {
            // SAFETY: `p` is a live Op; its `buf` (moved into it, never touched until the
            // completion) stays allocated and unmoved until then; the WSABUF itself is copied.
            unsafe {
                let OpKind::Send { buf, off } = &(*p).kind else {
                    unreachable!()
                };
                let rest = &buf[*off..];
                let wsabuf = WSABUF {
                    len: piece as u32,
                    buf: rest.as_ptr().cast_mut(),
                };
                WSASend(sock, &wsabuf, 1, ptr::null_mut(), 0, &mut (*p).ovl, None) == 0
            }
        });
        match r {
            Ok(()) => {
                if let Some(c) = self.conn(token) {
                    c.ops += 1;
                }
            }
            Err((error, op)) => {
                let OpKind::Send { buf, .. } = op.kind else {
                    unreachable!()
                };
                self.done.push_back(Event::SendError { token, error, buf });
            }
        }
    }

    /// Keeps [`ACCEPTS_PER_LISTENER`] accepts outstanding on listener `id`.
    fn fill_accepts(&mut self, id: usize) {
        loop {
            let Some(l) = self.listeners.get_mut(id).and_then(Option::as_mut) else {
                return;
            };
            if !l.active || l.paused || l.closing || l.pending >= ACCEPTS_PER_LISTENER {
                return;
            }
            let lsock = raw(&l.sock);
            let socket = match Socket::new(l.domain, Type::STREAM, Some(Protocol::TCP)) {
                Ok(s) => s,
                Err(error) => {
                    l.paused = true;
                    self.done.push_back(Event::AcceptError {
                        listener: id,
                        error,
                    });
                    return;
                }
            };
            let asock = raw(&socket);
            let op = Op::new(
                id,
                OpKind::Accept {
                    socket: Some(socket),
                    addrs: Box::new([0; 2 * ADDR_LEN]),
                },
            );
            let r = self.submit(op, |p| {
                let mut bytes = 0u32;
                // SAFETY: `p` is a live Op; its address buffer (boxed, 2 × ADDR_LEN bytes) and
                // its accept socket stay alive and unmoved until the completion.
                unsafe {
                    let OpKind::Accept { addrs, .. } = &mut (*p).kind else {
                        unreachable!()
                    };
                    AcceptEx(
                        lsock,
                        asock,
                        addrs.as_mut_ptr().cast(),
                        0,
                        ADDR_LEN as u32,
                        ADDR_LEN as u32,
                        &mut bytes,
                        &mut (*p).ovl,
                    ) != 0
                }
            });
            let l = self.listeners[id].as_mut().expect("listener present");
            match r {
                Ok(()) => l.pending += 1,
                // The peer reset or aborted before we took it: try the next one.
                Err((e, _)) if peer_gone(&e) => {}
                Err((error, _)) => {
                    l.paused = true;
                    self.done.push_back(Event::AcceptError {
                        listener: id,
                        error,
                    });
                    return;
                }
            }
        }
    }

    /// Closes the socket of a closing connection once the kernel holds nothing of it.
    fn maybe_finish_close(&mut self, token: Token) {
        if let Some(c) = self.conn(token) {
            if c.closing && c.ops == 0 {
                self.conns[token] = None; // closesocket
                self.done.push_back(Event::Closed { token });
            }
        }
    }

    // The Box is the very allocation the kernel completed: its status is read in place.
    #[allow(clippy::boxed_local)]
    fn complete(&mut self, mut op: Box<Op>) {
        let token = op.token;
        if let OpKind::Accept { socket, .. } = &mut op.kind {
            let Some(l) = self.listeners.get_mut(token).and_then(Option::as_mut) else {
                return; // cannot happen: a listener stays until its accepts completed
            };
            l.pending -= 1;
            let result = op_result(raw(&l.sock), &op.ovl);
            #[cfg(test)]
            let result = match fault::take(fault::Call::AcceptDone) {
                Some(e) => Err(io::Error::from_raw_os_error(e)),
                None => result,
            };
            if l.closing {
                if l.pending == 0 {
                    self.listeners[token] = None;
                }
                return; // the accepted socket, if any, is closed with the op
            }
            let socket = socket.take().expect("accept socket");
            let stream = result.and_then(|_| {
                let listener = raw(&l.sock).to_ne_bytes();
                set_opt(raw(&socket), SO_UPDATE_ACCEPT_CONTEXT, &listener)?;
                Ok(TcpStream::from(socket))
            });
            match stream {
                Ok(stream) => self.done.push_back(Event::Accepted {
                    listener: token,
                    stream,
                }),
                // The peer reset or gave up before we took it (`WSAECONNRESET`,
                // `WSAECONNABORTED`): the listener is fine, only that connection is gone. Re-post
                // quietly, as libuv (`uv__process_tcp_accept_req`) and Asio do; counting it as
                // an accept error would pause accepting for everyone.
                Err(e) if peer_gone(&e) => {
                    tracing::debug!(listener = token, error = %e, "iocp: accepted peer gone");
                }
                Err(error) => {
                    l.paused = true;
                    self.done.push_back(Event::AcceptError {
                        listener: token,
                        error,
                    });
                }
            }
            self.fill_accepts(token);
            return;
        }
        let Some(c) = self.conn(token) else {
            return; // cannot happen: a connection stays until its operations completed
        };
        c.ops -= 1;
        let result = op_result(raw(&c.sock), &op.ovl);
        if c.closing {
            self.maybe_finish_close(token);
            return; // a send's buffer is dropped with the op
        }
        match op.kind {
            OpKind::Accept { .. } => unreachable!(),
            OpKind::Recv => {
                c.recv_pending = false;
                match result {
                    // Data or the FIN is there: `recv` tells which.
                    Ok(_) => {
                        c.readable = true;
                        self.queue_read(token);
                    }
                    // The error (a reset) is reported here: the `recv` after it may no longer
                    // see it (under Wine it then reads a clean EOF).
                    Err(error) => {
                        c.reading = false;
                        c.read_done = true;
                        self.done.push_back(Event::ReadError { token, error });
                    }
                }
            }
            OpKind::Send { buf, off } => match result {
                Ok(n) if off + n < buf.len() && n > 0 => {
                    // Short of the end (a `MAX_SEND` piece): progress, then the next piece.
                    self.done.push_back(Event::SendProgress { token, sent: n });
                    self.post_send(token, buf, off + n);
                }
                Ok(n) if off + n >= buf.len() => {
                    self.done.push_back(Event::SendDone { token, buf })
                }
                Ok(_) => self.done.push_back(Event::SendError {
                    token,
                    error: io::Error::from(io::ErrorKind::WriteZero),
                    buf,
                }),
                Err(error) => self.done.push_back(Event::SendError { token, error, buf }),
            },
            OpKind::Connect { .. } => {
                c.connecting = false;
                let result =
                    result.and_then(|_| set_opt(raw(&c.sock), SO_UPDATE_CONNECT_CONTEXT, &[]));
                let deferred = c.deferred_send.take();
                if result.is_err() {
                    c.reading = false;
                    c.read_done = true;
                }
                let ok = result.is_ok();
                self.done.push_back(Event::Connected { token, result });
                if ok {
                    self.post_recv(token);
                }
                if let Some(buf) = deferred {
                    if ok {
                        self.post_send(token, buf, 0);
                    } else {
                        self.done.push_back(Event::SendError {
                            token,
                            error: io::Error::from(io::ErrorKind::NotConnected),
                            buf,
                        });
                    }
                }
            }
        }
    }
}

impl Backend for IocpBackend {
    fn name(&self) -> &'static str {
        "iocp"
    }

    fn add_listener(&mut self, id: usize, listener: TcpListener) -> io::Result<()> {
        let domain = Domain::for_address(listener.local_addr()?);
        let sock = Socket::from(listener);
        let active = match self.associate(&sock) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(
                    listener = id,
                    error = %e,
                    "listening socket served by another IO thread's completion port"
                );
                false
            }
        };
        if self.listeners.len() <= id {
            self.listeners.resize_with(id + 1, || None);
        }
        self.listeners[id] = Some(Listener {
            sock,
            domain,
            active,
            pending: 0,
            paused: false,
            closing: false,
        });
        self.fill_accepts(id);
        Ok(())
    }

    fn accepts_for_all(&self) -> bool {
        true
    }

    fn resume_accept(&mut self, id: usize) {
        if let Some(l) = self.listeners.get_mut(id).and_then(Option::as_mut) {
            l.paused = false;
        }
        self.fill_accepts(id);
    }

    fn close_listeners(&mut self) {
        for id in 0..self.listeners.len() {
            let Some(l) = self.listeners[id].as_mut() else {
                continue;
            };
            if l.closing {
                continue;
            }
            l.closing = true;
            if l.pending == 0 {
                self.listeners[id] = None;
            } else {
                // Their completions still arrive (and free the ops) before the socket closes.
                cancel_all(raw(&l.sock));
            }
        }
    }

    fn register(&mut self, token: Token, stream: TcpStream) -> io::Result<()> {
        let sock = Socket::from(stream);
        // For the `recv` after the zero-byte receive; overlapped calls are not affected.
        sock.set_nonblocking(true)?;
        self.associate(&sock)?;
        if self.conns.len() <= token {
            self.conns.resize_with(token + 1, || None);
        }
        self.conns[token] = Some(Conn::new(sock));
        self.post_recv(token);
        Ok(())
    }

    fn connect(&mut self, token: Token, socket: Socket, addr: SocketAddr) {
        if self.conns.len() <= token {
            self.conns.resize_with(token + 1, || None);
        }
        let mut c = Conn::new(socket);
        c.connecting = true;
        self.conns[token] = Some(c);
        let started = self.conns[token]
            .as_ref()
            .expect("inserted")
            .sock
            .set_nonblocking(true)
            .and_then(|()| self.start_connect(token, addr));
        if let Err(e) = started {
            let c = self.conns[token].as_mut().expect("inserted");
            c.connecting = false;
            c.reading = false;
            c.read_done = true;
            self.done.push_back(Event::Connected {
                token,
                result: Err(e),
            });
        }
    }

    fn set_reading(&mut self, token: Token, on: bool) {
        let Some(c) = self.conn(token) else { return };
        c.reading = on;
        if on {
            if c.readable {
                self.queue_read(token);
            } else {
                self.post_recv(token);
            }
        }
    }

    fn send(&mut self, token: Token, buf: Vec<u8>) {
        match self.conn(token) {
            Some(c) if c.connecting => {
                debug_assert!(
                    c.deferred_send.is_none(),
                    "one send in flight per connection"
                );
                c.deferred_send = Some(buf);
            }
            Some(_) => self.post_send(token, buf, 0),
            None => self.done.push_back(Event::SendError {
                token,
                error: io::Error::from(io::ErrorKind::NotConnected),
                buf,
            }),
        }
    }

    fn shutdown_write(&mut self, token: Token) {
        if let Some(c) = self.conn(token) {
            let _ = c.sock.shutdown(Shutdown::Write);
        }
    }

    fn close(&mut self, token: Token, abort: bool) {
        // After `close`, nothing but `Closed` is delivered for the token.
        self.done.retain(|ev| ev.token() != Some(token));
        let Some(c) = self.conn(token) else {
            self.done.push_back(Event::Closed { token });
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
        c.queued = false;
        c.deferred_send = None;
        if abort {
            let _ = c.sock.set_linger(Some(Duration::ZERO));
        }
        if c.ops > 0 {
            // The socket is closed only when all their completions have arrived
            // (`maybe_finish_close`), or by `shutdown` after its bounded wait.
            cancel_all(raw(&c.sock));
        }
        self.maybe_finish_close(token);
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        for t in std::mem::take(&mut self.read_again) {
            self.read_queue.push_back(t);
        }
        let busy = !self.done.is_empty() || !self.read_queue.is_empty();
        let ms = match (busy, timeout) {
            (true, _) => 0,
            (false, None) => INFINITE,
            // Rounded up: a sub-millisecond timeout must not turn into a busy loop.
            (false, Some(d)) => d.as_micros().div_ceil(1000).min(u128::from(INFINITE - 1)) as u32,
        };
        let mut n = 0u32;
        // SAFETY: `entries` has room for BATCH entries; the port is open.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.port.0,
                self.entries.as_mut_ptr(),
                BATCH as u32,
                &mut n,
                ms,
                0,
            )
        };
        if ok == 0 {
            // SAFETY: reads this thread's last error; no preconditions.
            let err = unsafe { GetLastError() };
            return if err == WAIT_TIMEOUT {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(err as i32))
            };
        }
        for i in 0..n as usize {
            let e = self.entries[i];
            if e.lpOverlapped.is_null() {
                if e.lpCompletionKey == WAKE_KEY {
                    self.waker.pending.store(false, Ordering::Release);
                    self.done.push_back(Event::Wake);
                }
                continue;
            }
            self.in_flight -= 1;
            // SAFETY: every non-null OVERLAPPED in this port is the head of an `Op` we leaked
            // with `Box::into_raw` in `submit`; its completion is dequeued exactly once, so the
            // Box is taken back exactly once, and the kernel no longer refers to it.
            let op = unsafe { Box::from_raw(e.lpOverlapped.cast::<Op>()) };
            self.complete(op);
        }
        Ok(())
    }

    fn next(&mut self) -> Option<Event<'_>> {
        if let Some(ev) = self.done.pop_front() {
            return Some(ev);
        }
        while let Some(token) = self.read_queue.pop_front() {
            let cap = self.scratch.len();
            let Some(c) = self.conns.get_mut(token).and_then(Option::as_mut) else {
                continue;
            };
            if !c.queued {
                continue; // stale entry
            }
            if !c.reading || !c.readable || c.closing || c.read_done {
                c.queued = false;
                continue;
            }
            let result = loop {
                match c.sock.recv(socket2_buf(&mut self.scratch)) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r,
                }
            };
            match result {
                Ok(0) => {
                    c.queued = false;
                    c.reading = false;
                    c.read_done = true;
                    return Some(Event::ReadClosed { token });
                }
                Ok(n) => {
                    if n == cap {
                        self.read_again.push(token); // maybe more: next turn
                    } else {
                        c.readable = false;
                        c.queued = false;
                        self.post_recv(token);
                    }
                    return Some(Event::Data {
                        token,
                        data: &self.scratch[..n],
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    c.queued = false;
                    self.post_recv(token);
                    // A receive that failed at once reported a read error: deliver it now.
                    if let Some(ev) = self.done.pop_front() {
                        return Some(ev);
                    }
                }
                Err(error) => {
                    c.queued = false;
                    c.reading = false;
                    c.read_done = true;
                    return Some(Event::ReadError { token, error });
                }
            }
        }
        None
    }

    fn waker(&self) -> Arc<dyn Waker> {
        self.waker.clone()
    }

    fn shutdown(&mut self, deadline: Duration) {
        self.close_listeners();
        for token in 0..self.conns.len() {
            if self.conns[token].as_ref().is_some_and(|c| !c.closing) {
                self.close(token, true);
            }
        }
        let end = Instant::now() + deadline;
        while self.in_flight > 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.wait(Some(left)).is_err() {
                break;
            }
            self.done.clear();
        }
        if self.in_flight > 0 {
            // Their `Op`s stay allocated (leaked), so the kernel never writes into freed memory.
            tracing::warn!(
                in_flight = self.in_flight,
                "iocp: operations still pending at shutdown; their memory is leaked"
            );
        }
        self.done.clear();
        self.read_queue.clear();
        self.read_again.clear();
        self.conns.clear();
        self.listeners.clear();
    }
}
