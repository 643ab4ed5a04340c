//! The op lifecycle: what each SQE is for (its `user_data`), one small function per kernel
//! operation, and the completions that turn CQEs into events (see the module doc of
//! `mod.rs` for the lifecycle).

use std::io;
use std::net::TcpStream;
use std::os::fd::{FromRawFd, RawFd};

use io_uring::types::{CancelBuilder, Fd};
use io_uring::{cqueue, opcode, squeue};

use super::ownbuf::{filled, recv_target};
use super::tuning::Recv;
use super::{ConnState, Event, Lent, Out, Token, UringBackend, BGID};

/// What an SQE is for; the top byte of its `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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
    /// A connection that is not read (paused, or past EOF) waits for an error or hang-up.
    ErrPoll,
}

const KINDS: [Kind; 13] = [
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
    Kind::ErrPoll,
];

pub(super) fn user_data(kind: Kind, index: usize) -> u64 {
    ((kind as u64) << 56) | (index as u64 & ((1 << 56) - 1))
}

fn decode(user_data: u64) -> Option<(Kind, usize)> {
    let tag = (user_data >> 56) as u8;
    let kind = KINDS.iter().copied().find(|k| *k as u8 == tag)?;
    Some((kind, (user_data & ((1 << 56) - 1)) as usize))
}

impl UringBackend {
    // ---- one small function per kernel operation ----

    pub(super) fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(Fd(self.wake.0), buf.cast(), 8)
            .build()
            .user_data(user_data(Kind::Wake, 0));
        self.push(entry);
    }

    pub(super) fn arm_accept(&mut self, id: usize) {
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

    pub(super) fn cancel_accept(&mut self, id: usize) {
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

    /// Arms the connection's recv (as `RINGPORT_URING_RECV` says: multishot or single-shot
    /// from the buffer ring, or single-shot into its own buffer) if reading is wanted and no
    /// recv (or cancel of one) is in flight.
    pub(super) fn arm_recv(&mut self, token: Token) {
        let Some(Some(c)) = self.conns.get_mut(token) else {
            return;
        };
        if c.state != ConnState::Open || !c.reading || !c.read_open || c.recv || c.recv_cancel {
            return;
        }
        c.recv = true;
        let (fd, fixed) = c.target();
        // Under memory pressure a multishot recv, which could land RECV_CAP_BUFFERS buffers
        // (or, before 6.16, any number) before a pause takes effect, is one buffer instead: a
        // connection paused for the budget then has at most that one more arriving (issue 25).
        let mode = match self.recv_mode {
            Recv::Multishot if self.tight => Recv::Single,
            mode => mode,
        };
        let entry = match mode {
            Recv::Multishot => {
                let mut entry = opcode::RecvMulti::new(fd, BGID).build();
                if let Some(cap) = self.recv_cap {
                    set_recv_limit(&mut entry, cap);
                }
                entry
            }
            Recv::Own => {
                // Single-shot into the connection's own buffer (kept if it still has one, i.e.
                // re-armed after its data was consumed). The heap block stays put in `c.own`
                // until the CQE: `release_own` skips a connection whose `recv` is set.
                let buf = c.own.get_or_insert_with(|| Box::new(self.own.take()));
                let (ptr, len) = recv_target(buf);
                opcode::Recv::new(fd, ptr, len).build()
            }
            Recv::Single => {
                // Single-shot: the kernel picks a buffer from the ring (no address given); the
                // CQE ends the op and complete_recv re-arms it.
                let len = self.bufs.size.min(u32::MAX as usize) as u32;
                opcode::Recv::new(fd, std::ptr::null_mut(), len)
                    .buf_group(BGID)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
        };
        self.push(entry.flags(fixed).user_data(user_data(Kind::Recv, token)));
    }

    pub(super) fn cancel_recv(&mut self, token: Token) {
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

    /// Arms a one-shot poll for `POLLERR | POLLHUP` on a connection whose recv is not wanted
    /// (reading paused, or past EOF): the recv would report a peer's reset, but nothing else
    /// does while it is not armed, so a client that resets while paused would hold its
    /// descriptor and buffers for ever. Data and the peer's FIN do not complete it (the poll
    /// asks for neither). Left armed when reading resumes (the recv reports errors then, and
    /// this CQE is ignored); cancelled with the connection's other ops at close.
    pub(super) fn arm_err_poll(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        let wanted = c.state == ConnState::Open
            && c.connect.is_none()
            && !(c.reading && c.read_open)
            && !c.err_poll
            && !c.hup_seen;
        if !wanted {
            return;
        }
        c.err_poll = true;
        let (fd, fixed) = c.target();
        let entry = opcode::PollAdd::new(fd, (libc::POLLERR | libc::POLLHUP) as u32)
            .build()
            .flags(fixed)
            .user_data(user_data(Kind::ErrPoll, token));
        self.push(entry);
    }

    /// Submits (the rest of) the send held in the connection.
    pub(super) fn submit_send(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        let Some(op) = &c.send else { return };
        let rest = &op.buf[op.sent..];
        let len = rest.len().min(u32::MAX as usize) as u32;
        // MSG_DONTWAIT: a send the kernel hands to an io-wq worker must not block there until
        // the whole buffer is out (the worker calls sendmsg without the socket's O_NONBLOCK):
        // it completes short, reported as progress, or with -EAGAIN, and then waits for
        // POLLOUT in the ring (`Kind::SendPoll`). A slow reader is seen moving; no kernel
        // thread is tied up per slow connection.
        let (fd, fixed) = c.target();
        let entry = opcode::Send::new(fd, rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build()
            .flags(fixed)
            .user_data(user_data(Kind::Send, token));
        self.push(entry);
    }

    /// Cancels every op the kernel holds for a closing connection.
    pub(super) fn cancel_conn_ops(&mut self, token: Token) {
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
                (c.err_poll, Kind::ErrPoll),
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
    pub(super) fn finish_close(&mut self, token: Token) {
        let Some(c) = self.conn(token) else { return };
        if c.state != ConnState::Closing || c.ops_in_flight() {
            return;
        }
        c.state = ConnState::CloseSubmitted;
        let (fd, slot) = (c.fd, c.slot.take());
        if let Some(slot) = slot {
            // Nothing is in flight on it: empty the slot, so that the close below drops the
            // last reference to the socket.
            let _ = self.ring.submitter().register_files_update(slot, &[-1]);
        }
        let entry = opcode::Close::new(Fd(fd))
            .build()
            .user_data(user_data(Kind::Close, token));
        self.push(entry);
    }

    // ---- completions ----

    /// Turns one CQE into an event, or `None` when it is internal or stale.
    pub(super) fn complete(&mut self, cqe: cqueue::Entry) -> Option<Out> {
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
            Kind::ErrPoll => self.complete_err_poll(index, res),
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
                let c = self.conns.get_mut(index)?.take()?;
                if let Some(buf) = c.own {
                    self.own.give(*buf); // nothing of it is in the kernel any more
                }
                Some(Out::Event(Event::Closed { token: index }))
            }
            Kind::CancelAll => None,
        }
    }

    /// Drops a closed listener's entry once the kernel holds nothing for it.
    pub(super) fn forget_closed_listener(&mut self, id: usize) {
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
            // Also after `close_listeners`: the kernel accepted this connection before the
            // cancel took effect (its CQE was still unreaped). The engine serves it (a process
            // retired by a restart serves what it accepted) or closes it (a drain).
            // SAFETY: a successful accept CQE hands us a new fd that nothing else owns.
            let stream = unsafe { TcpStream::from_raw_fd(res) };
            Some(Out::Event(Event::Accepted {
                listener: id,
                stream,
            }))
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
        // Whether the kernel is done with the buffer. Incremental ring: only after a receive
        // that filled it (no IORING_CQE_F_BUF_MORE); a CQE of no bytes (EOF, an error) names
        // the buffer at the ring's head without consuming it, so it must not be given back
        // (it would then sit in the ring twice). Whole-buffer ring: after every CQE.
        let buf_more = cqueue::buffer_more(flags);
        let done_with = !buf_more && (res > 0 || !self.bufs.incremental);
        let off = match bid {
            Some(b) if res > 0 => self.bufs.consumed(b, res as usize, buf_more),
            _ => 0,
        };
        let Some(Some(c)) = self.conns.get_mut(token) else {
            // Cannot happen (the slot outlives its ops), but never lose a buffer.
            if let (Some(bid), true) = (bid, done_with) {
                self.bufs.recycle(bid);
            }
            return None;
        };
        if !more {
            c.recv = false;
        }
        let open = c.state == ConnState::Open;
        let out = match (res, bid) {
            (n, Some(bid)) if n > 0 && open && c.read_open => Some(Out::Data {
                token,
                buf: Lent::Ring {
                    bid,
                    off: off as u32,
                    last: done_with,
                },
                len: n as usize,
            }),
            // RINGPORT_URING_RECV=own: the kernel wrote into the connection's own buffer.
            (n, None) if n > 0 && open && c.read_open && c.own.is_some() => {
                let len = n as usize;
                filled(c.own.as_mut()?, len);
                Some(Out::Data {
                    token,
                    buf: Lent::Own,
                    len,
                })
            }
            (0, _) if open && c.read_open => {
                c.read_open = false;
                Some(Out::Event(Event::ReadClosed { token }))
            }
            // A kernel before 6.16 refuses the multishot's byte limit: recv without it.
            (e, _) if e == -libc::EINVAL && !more && self.recv_cap.is_some() => {
                self.recv_cap = None;
                tracing::debug!(
                    "multishot recv byte limit refused (kernel before 6.16); unlimited"
                );
                None
            }
            // -ENOBUFS: the buffer ring ran dry and the multishot ended; it is re-armed at the
            // next wait(). Buffers come back on every next(), so this cannot spin forever.
            (e, _) if e == -libc::ENOBUFS => {
                #[cfg(test)]
                super::tests::ENOBUFS_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
            (e, _) if e == -libc::ECANCELED || !open || e >= 0 => None,
            (_, _) if !c.read_open => None, // already reported (EOF, or the error poll)
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
            (Some(bid), _) if done_with => self.bufs.recycle(bid),
            (Some(_), _) => {}
        }
        let own_lent = matches!(out, Some(Out::Data { buf: Lent::Own, .. }));
        if !more && !own_lent {
            // Re-armed at the next wait(), after the engine's flush: a connection paused by
            // what this turn delivered takes nothing more.
            if !self.rearm.contains(&token) {
                self.rearm.push(token);
            }
            self.arm_err_poll(token); // past EOF: a reset is still learned
            self.release_own(token);
            self.finish_close(token);
        }
        // Own data lent: `recycle_held` re-arms (or releases) at the next next()/wait().
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
            let (fd, fixed) = c.target();
            let entry = opcode::PollAdd::new(fd, libc::POLLOUT as u32)
                .build()
                .flags(fixed)
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

    /// The error poll of a connection that is not read fired: a reset (or another error) is
    /// reported as `ReadError`, unless a recv is armed again and reports it itself; a hang-up
    /// without an error (both directions shut) is not an error and ends the poll.
    fn complete_err_poll(&mut self, token: Token, res: i32) -> Option<Out> {
        let c = self.conn(token)?;
        c.err_poll = false;
        if c.state != ConnState::Open {
            self.finish_close(token);
            return None;
        }
        if res < 0 {
            return None; // cancelled (or the poll itself failed): nothing learned
        }
        let mask = res as i16;
        if c.reading && c.read_open {
            return None; // reading again: the recv reports the error with the data before it
        }
        if mask & libc::POLLERR == 0 {
            c.hup_seen = true;
            return None;
        }
        let error = take_socket_error(c.fd)
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::ConnectionReset));
        c.read_open = false;
        c.hup_seen = true; // nothing more to learn
        Some(Out::Event(Event::ReadError { token, error }))
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
pub(super) fn reset_and_close(fd: RawFd) {
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

/// Sets a multishot recv's total byte limit (`IORING_RECV_MSHOT_LIM`, Linux 6.16): the SQE's
/// `optlen` field, shared with `file_index` at byte 44, which the io-uring crate does not set
/// for `RecvMulti`. Older kernels fail the recv with `-EINVAL` (`complete_recv` then stops
/// asking).
fn set_recv_limit(entry: &mut squeue::Entry, bytes: u32) {
    const OPTLEN: usize = 44;
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    let sqe: *mut u8 = (entry as *mut squeue::Entry).cast();
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`
    // (size checked above), whose bytes 44..48 are the `optlen` / `file_index` union; the
    // write is in bounds and unaligned-safe.
    unsafe { sqe.add(OPTLEN).cast::<u32>().write_unaligned(bytes) };
}

/// The socket's pending error (`SO_ERROR`, which reading clears), if it has one.
fn take_socket_error(fd: RawFd) -> Option<io::Error> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live `err`, and `len` back.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0 && err != 0).then(|| io::Error::from_raw_os_error(err))
}

/// `SO_LINGER {on, 0}`: the close that follows sends a reset.
pub(super) fn set_linger_zero(fd: RawFd) {
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
