//! The readiness backend, on `mio` (edge-triggered): emulates completions by performing the
//! non-blocking syscall when a socket is ready. It is epoll on Linux (named `epoll`), and
//! `poll` elsewhere: kqueue on macOS, AFD polling on Windows.
//!
//! On Windows mio re-arms a socket's readiness only after an operation on it returned
//! `WouldBlock` (its emulation of edge triggering), so there every read is repeated until
//! `WouldBlock` instead of trusting a short read to mean "drained", and every socket call goes
//! through mio (`try_io`) so that its `WouldBlock` re-arms the poll.
//!
//! - Receive: one scratch buffer per IO thread. A ready connection is read once per loop turn
//!   (fairness); if the read filled the buffer it is read again next turn. An idle connection
//!   holds no buffer. Data borrowed from the scratch buffer is valid until the next `next()`.
//! - Send: the owned buffer is written at once when `send` is called (the engine calls it once
//!   per connection per turn, after every callback: that is the batching), the rest when the
//!   socket turns writable. `SendDone` comes when all of it is written.
//! - Close: descriptors are closed synchronously; nothing is left in the kernel's hands, so
//!   `Closed` is reported on the next `next()`.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll};

use super::{Backend, BackendConfig, Event, Token, Waker};

const WAKER: mio::Token = mio::Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX / 2;
/// Accepts per listener per loop turn before others get their turn.
const ACCEPT_BATCH: usize = 64;

/// A short read proves the socket drained (true edge triggering); not on Windows (above).
const SHORT_READ_DRAINS: bool = cfg!(not(windows));

struct Conn {
    stream: MioStream,
    reading: bool,
    /// Readiness seen and not yet drained to EAGAIN.
    readable: bool,
    /// In `read_queue` / `read_again`.
    queued: bool,
    /// The peer's FIN (or an error) was reported: read until EOF, a short read proves nothing.
    hup: bool,
    /// A `ReadError` was reported: nothing more is read or reported from this connection.
    failed: bool,
    send: Option<(Vec<u8>, usize)>,
    connecting: bool,
}

struct Listener {
    listener: MioListener,
    paused: bool,
    queued: bool,
}

struct MioWaker(mio::Waker);

impl Waker for MioWaker {
    fn wake(&self) {
        let _ = self.0.wake();
    }
}

pub(crate) struct EpollBackend {
    poll: Poll,
    events: Events,
    waker: Arc<MioWaker>,
    scratch: Vec<u8>,
    conns: Vec<Option<Conn>>,
    listeners: Vec<Option<Listener>>,
    /// Events produced outside `next()` (send results, closes, accept errors, wake-ups).
    done: VecDeque<Event<'static>>,
    read_queue: VecDeque<Token>,
    read_again: Vec<Token>,
    accept_queue: VecDeque<(usize, usize)>,
    accept_again: Vec<usize>,
}

impl EpollBackend {
    pub(crate) fn new(config: &BackendConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(MioWaker(mio::Waker::new(poll.registry(), WAKER)?));
        Ok(EpollBackend {
            poll,
            events: Events::with_capacity(1024),
            waker,
            scratch: vec![0; config.recv_buffer_size],
            conns: Vec::new(),
            listeners: Vec::new(),
            done: VecDeque::new(),
            read_queue: VecDeque::new(),
            read_again: Vec::new(),
            accept_queue: VecDeque::new(),
            accept_again: Vec::new(),
        })
    }

    fn conn(&mut self, token: Token) -> Option<&mut Conn> {
        self.conns.get_mut(token).and_then(Option::as_mut)
    }

    fn queue_read(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(token).and_then(Option::as_mut) {
            if c.reading && c.readable && !c.queued && !c.connecting {
                c.queued = true;
                self.read_queue.push_back(token);
            }
        }
    }

    /// Writes as much of the pending send as the socket takes; reports when done or failed.
    fn try_send(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let Some((buf, off)) = c.send.as_mut() else {
            return;
        };
        let start = *off;
        while *off < buf.len() {
            match c.stream.try_io(|| send_some(&c.stream, &buf[*off..])) {
                Ok(n) => *off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if *off > start {
                        let sent = *off - start;
                        self.done.push_back(Event::SendProgress { token, sent });
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let (buf, _) = c.send.take().expect("send pending");
                    self.done.push_back(Event::SendError { token, error, buf });
                    return;
                }
            }
        }
        let (buf, _) = c.send.take().expect("send pending");
        self.done.push_back(Event::SendDone { token, buf });
    }

    /// An error (a peer's reset) on a connection that is not being read: paused by flow
    /// control, or past its EOF. The read path would report it, but nothing reads a paused
    /// connection, and the error's edge is not reported again: report it now (the bytes still
    /// unread are lost with the connection), so that a peer that resets while paused is not
    /// held open for ever. The registration keeps its read interest (EPOLLIN | EPOLLRDHUP;
    /// EPOLLERR and EPOLLHUP are always reported) while paused, so the edge does arrive.
    fn error_while_not_reading(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        if c.reading || c.connecting || c.failed {
            return; // a read (or the connect's completion) reports it
        }
        let error = match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => io::ErrorKind::ConnectionReset.into(),
        };
        c.failed = true;
        c.queued = false;
        self.done.push_back(Event::ReadError { token, error });
    }

    fn finish_connect(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        let result = match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match c.stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Err(e),
            },
        };
        c.connecting = false;
        if result.is_err() {
            c.reading = false;
        }
        self.done.push_back(Event::Connected { token, result });
        self.queue_read(token);
    }

    fn accept_one(&mut self, id: usize) -> Option<Event<'static>> {
        let l = self.listeners.get_mut(id).and_then(Option::as_mut)?;
        if l.paused {
            l.queued = false;
            return None;
        }
        loop {
            match accept(&l.listener) {
                Ok(stream) => {
                    return Some(Event::Accepted {
                        listener: id,
                        stream,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.queued = false;
                    return None;
                }
                Err(error) => {
                    l.queued = false;
                    l.paused = true;
                    return Some(Event::AcceptError {
                        listener: id,
                        error,
                    });
                }
            }
        }
    }
}

/// One accept. On unix through socket2, whose accept takes a peer of any address family (a
/// Unix domain socket's too; mio's accept closes such a connection and fails). Close-on-exec;
/// `register` makes it non-blocking.
fn accept(listener: &MioListener) -> io::Result<TcpStream> {
    #[cfg(unix)]
    {
        socket2::SockRef::from(listener)
            .accept()
            .map(|(s, _)| s.into())
    }
    #[cfg(not(unix))]
    {
        listener.accept().map(|(s, _)| s.into())
    }
}

/// One non-blocking send (no SIGPIPE on unix: the error comes back as EPIPE instead).
fn send_some(stream: &MioStream, buf: &[u8]) -> io::Result<usize> {
    #[cfg(unix)]
    {
        socket2::SockRef::from(stream).send_with_flags(buf, libc::MSG_NOSIGNAL)
    }
    #[cfg(not(unix))]
    {
        use std::io::Write;
        let mut s = stream;
        s.write(buf)
    }
}

/// `connect` on a non-blocking socket reports "in progress" this way.
fn connect_in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

impl Backend for EpollBackend {
    fn name(&self) -> &'static str {
        if cfg!(target_os = "linux") {
            "epoll"
        } else {
            "poll"
        }
    }

    fn add_listener(&mut self, id: usize, listener: TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let mut listener = MioListener::from_std(listener);
        self.poll.registry().register(
            &mut listener,
            mio::Token(LISTENER_BASE + id),
            Interest::READABLE,
        )?;
        if self.listeners.len() <= id {
            self.listeners.resize_with(id + 1, || None);
        }
        self.listeners[id] = Some(Listener {
            listener,
            paused: false,
            queued: true,
        });
        // Connections may already wait in the backlog: try once.
        self.accept_queue.push_back((id, 0));
        Ok(())
    }

    fn resume_accept(&mut self, id: usize) {
        if let Some(l) = self.listeners.get_mut(id).and_then(Option::as_mut) {
            l.paused = false;
            if !l.queued {
                l.queued = true;
                self.accept_queue.push_back((id, 0));
            }
        }
    }

    fn close_listeners(&mut self) {
        for mut l in self.listeners.iter_mut().filter_map(Option::take) {
            let _ = self.poll.registry().deregister(&mut l.listener);
        }
        self.accept_queue.clear();
        self.accept_again.clear();
    }

    fn register(&mut self, token: Token, stream: TcpStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let mut stream = MioStream::from_std(stream);
        self.poll.registry().register(
            &mut stream,
            mio::Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if self.conns.len() <= token {
            self.conns.resize_with(token + 1, || None);
        }
        self.conns[token] = Some(Conn {
            stream,
            reading: true,
            readable: false,
            queued: false,
            hup: false,
            failed: false,
            send: None,
            connecting: false,
        });
        Ok(())
    }

    fn connect(&mut self, token: Token, socket: socket2::Socket, addr: SocketAddr) {
        let started =
            socket
                .set_nonblocking(true)
                .and_then(|()| match socket.connect(&addr.into()) {
                    Ok(()) => Ok(()),
                    Err(e) if connect_in_progress(&e) => Ok(()),
                    Err(e) => Err(e),
                });
        let stream: TcpStream = socket.into();
        let registered = started.and_then(|()| self.register(token, stream.try_clone()?));
        match registered {
            Ok(()) => {
                if let Some(c) = self.conn(token) {
                    c.connecting = true;
                }
            }
            Err(e) => {
                // Keep a slot so that the engine's `close` finds something to close.
                if self.conns.len() <= token {
                    self.conns.resize_with(token + 1, || None);
                }
                self.conns[token] = Some(Conn {
                    stream: MioStream::from_std(stream),
                    reading: false,
                    readable: false,
                    queued: false,
                    hup: false,
                    failed: true,
                    send: None,
                    connecting: false,
                });
                self.done.push_back(Event::Connected {
                    token,
                    result: Err(e),
                });
            }
        }
    }

    fn set_reading(&mut self, token: Token, on: bool) {
        if let Some(c) = self.conn(token) {
            c.reading = on && !c.failed;
        }
        if on {
            self.queue_read(token);
        }
    }

    fn send(&mut self, token: Token, buf: Vec<u8>) {
        match self.conn(token) {
            Some(c) => {
                debug_assert!(c.send.is_none(), "one send in flight per connection");
                c.send = Some((buf, 0));
                if !c.connecting {
                    self.try_send(token);
                }
            }
            None => self.done.push_back(Event::SendError {
                token,
                error: io::Error::from(io::ErrorKind::NotConnected),
                buf,
            }),
        }
    }

    fn shutdown_write(&mut self, token: Token) {
        if let Some(c) = self.conn(token) {
            let _ = c.stream.shutdown(Shutdown::Write);
        }
    }

    fn close(&mut self, token: Token, abort: bool) {
        if let Some(mut c) = self.conns.get_mut(token).and_then(Option::take) {
            if abort {
                let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
            }
            let _ = self.poll.registry().deregister(&mut c.stream);
            drop(c); // closes the descriptor; nothing of ours is left with the kernel
        }
        // After `close`, nothing but `Closed` is delivered for the token.
        self.done.retain(|ev| ev.token() != Some(token));
        self.done.push_back(Event::Closed { token });
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        for t in std::mem::take(&mut self.read_again) {
            self.read_queue.push_back(t);
        }
        for id in std::mem::take(&mut self.accept_again) {
            self.accept_queue.push_back((id, 0));
        }
        let busy =
            !self.done.is_empty() || !self.read_queue.is_empty() || !self.accept_queue.is_empty();
        let timeout = if busy { Some(Duration::ZERO) } else { timeout };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let ready: Vec<(mio::Token, bool, bool, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                let err = e.is_error();
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || err,
                    e.is_writable() || e.is_write_closed() || err,
                    e.is_read_closed() || err,
                    err,
                )
            })
            .collect();
        for (token, readable, writable, hup, err) in ready {
            if token == WAKER {
                self.done.push_back(Event::Wake);
            } else if token.0 >= LISTENER_BASE {
                let id = token.0 - LISTENER_BASE;
                if let Some(l) = self.listeners.get_mut(id).and_then(Option::as_mut) {
                    if !l.paused && !l.queued {
                        l.queued = true;
                        self.accept_queue.push_back((id, 0));
                    }
                }
            } else if let Some(c) = self.conn(token.0) {
                if writable && c.connecting {
                    self.finish_connect(token.0);
                } else if writable && c.send.is_some() {
                    self.try_send(token.0);
                }
                if readable {
                    if let Some(c) = self.conn(token.0) {
                        c.readable = true;
                        c.hup |= hup;
                    }
                    self.queue_read(token.0);
                }
                if err {
                    self.error_while_not_reading(token.0);
                }
            }
        }
        Ok(())
    }

    fn next(&mut self) -> Option<Event<'_>> {
        if let Some(ev) = self.done.pop_front() {
            return Some(ev);
        }
        while let Some((id, n)) = self.accept_queue.pop_front() {
            if n >= ACCEPT_BATCH {
                self.accept_again.push(id);
                continue;
            }
            if let Some(ev) = self.accept_one(id) {
                if matches!(ev, Event::Accepted { .. }) {
                    self.accept_queue.push_front((id, n + 1));
                }
                return Some(ev);
            }
        }
        while let Some(token) = self.read_queue.pop_front() {
            let cap = self.scratch.len();
            let Some(c) = self.conns.get_mut(token).and_then(Option::as_mut) else {
                continue;
            };
            if !c.queued {
                continue; // stale entry
            }
            if !c.reading || !c.readable {
                c.queued = false;
                continue;
            }
            let result = loop {
                match (&c.stream).read(&mut self.scratch) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r,
                }
            };
            match result {
                Ok(0) => {
                    c.queued = false;
                    c.reading = false;
                    return Some(Event::ReadClosed { token });
                }
                Ok(n) => {
                    if n == cap || c.hup || !SHORT_READ_DRAINS {
                        self.read_again.push(token); // maybe more (or the EOF): next turn
                    } else {
                        // A short read on a stream socket drained it; the next arrival is a
                        // new edge.
                        c.readable = false;
                        c.queued = false;
                    }
                    return Some(Event::Data {
                        token,
                        data: &self.scratch[..n],
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    c.queued = false;
                }
                Err(error) => {
                    c.queued = false;
                    c.reading = false;
                    c.failed = true;
                    return Some(Event::ReadError { token, error });
                }
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    fn unsent(&self, token: Token) -> Option<usize> {
        use std::os::fd::AsRawFd;
        let c = self.conns.get(token)?.as_ref()?;
        super::outq::unsent(c.stream.as_raw_fd())
    }

    fn waker(&self) -> Arc<dyn Waker> {
        self.waker.clone()
    }

    fn shutdown(&mut self, _deadline: Duration) {
        // No operation is in the kernel's hands on epoll: closing the descriptors is enough.
        self.close_listeners();
        self.conns.clear();
        self.done.clear();
        self.read_queue.clear();
        self.read_again.clear();
    }
}
