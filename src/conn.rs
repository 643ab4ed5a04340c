//! [`Conn`]: the context lent to every [`Handler`](crate::Handler) callback: write to, close,
//! pause, time, and hand off the connection.
//!
//! A connection lives on one IO thread for its whole life. Its state is owned by that thread's
//! connection table and lent `&mut` for one callback, so handler code needs no locks. Nothing
//! a method does here happens at once: it is queued and applied when the callback returns (one
//! send per connection per loop turn: that is the batching).

use std::net::SocketAddr;
use std::time::Duration;

use crate::codec::{EncodeError, Encoder};
use crate::core::{ConnCore, ThreadCtx, Token};
use crate::handle::{ConnectionHandle, Work};
use crate::info::{CloseReason, ConnInfo};
use crate::machine::Event;
use crate::timers::Timers;

/// The context lent to a [`Handler`](crate::Handler) callback.
pub struct Conn<'a> {
    pub(crate) core: &'a mut ConnCore,
    pub(crate) ctx: &'a mut ThreadCtx,
    pub(crate) token: Token,
    pub(crate) encoder: Option<&'a dyn Encoder>,
}

impl<'a> Conn<'a> {
    pub(crate) fn new(
        core: &'a mut ConnCore,
        ctx: &'a mut ThreadCtx,
        token: Token,
        encoder: Option<&'a dyn Encoder>,
    ) -> Self {
        Conn {
            core,
            ctx,
            token,
            encoder,
        }
    }

    fn dirty(&mut self) {
        self.ctx.mark_dirty(self.token, self.core);
    }

    /// Queues `data`. Bytes are sent in order, batched: one send per connection per loop turn
    /// whatever the number of `write` calls. Ignored once the connection is being reset, its
    /// write side is shut (the FIN of [`Conn::shutdown_write`] is sent; until then writes
    /// still go out before it), or [`Conn::close_after`] was called (its bytes are the last);
    /// [`Conn::is_writable`] says `false` then.
    ///
    /// Not bounded by the write watermarks (the handler sees [`Conn::queued_bytes`] and the
    /// engine stops reading this connection above the high mark); writes from other
    /// connections go through a [`ConnectionHandle`], which is bounded.
    pub fn write(&mut self, data: &[u8]) {
        if !self.core.takes_own_writes() || data.is_empty() {
            return;
        }
        if self.core.out.capacity() == 0 {
            self.core.out = self.ctx.bufs.get();
        }
        self.core.out.extend_from_slice(data);
        self.dirty();
    }

    /// An empty buffer from this IO thread's pool, for a [`ConnectionHandle::write`] that
    /// lands on this thread (the relay's): the write's buffer comes back to the pool when
    /// the peer has taken it, instead of a new allocation per write.
    pub(crate) fn pooled_buf(&mut self) -> Vec<u8> {
        self.ctx.bufs.get()
    }

    /// Encodes `payload` with the server's codec (length header, or line terminator) and
    /// queues the frame in one write.
    ///
    /// ```
    /// # use ringport::{Conn, Frame, Handler};
    /// struct Upper;
    /// impl Handler for Upper {
    ///     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
    ///         let reply = frame.payload().to_ascii_uppercase();
    ///         conn.send_frame(&reply).expect("fits one frame");
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EncodeError`] when the payload cannot be one frame (nothing is queued). A frame
    /// the connection no longer takes is ignored as [`Conn::write`] ignores it.
    pub fn send_frame(&mut self, payload: &[u8]) -> Result<(), EncodeError> {
        let Some(enc) = self.encoder else {
            return Err(EncodeError::Unsupported);
        };
        if !self.core.takes_own_writes() {
            return Ok(());
        }
        if self.core.out.capacity() == 0 {
            self.core.out = self.ctx.bufs.get();
        }
        enc.encode(payload, &mut self.core.out)?;
        self.dirty();
        Ok(())
    }

    /// Closes gracefully (reason [`CloseReason::Local`]): no more frames are delivered and no
    /// more timers fire; every outstanding [`Work`] answers and everything queued is flushed,
    /// then the write side is shut and the connection closes. From now on the connection's
    /// plain [`ConnectionHandle`]s say closed and refuse writes.
    pub fn close(&mut self) {
        self.close_with(CloseReason::Local);
    }

    /// [`Conn::close`], recording `reason` (e.g. a protocol violation) for `on_close` and the
    /// counters.
    pub fn close_with(&mut self, reason: CloseReason) {
        self.core.on(Event::Close(reason));
        self.dirty();
    }

    /// Closes gracefully with `data` as the very last bytes: sent after every reply that
    /// outstanding [`Work`] is still computing. This is how a pooled server answers a request
    /// it cannot take (`-ERR line too long`) without overtaking or dropping earlier replies.
    ///
    /// Nothing follows them: the connection's timers stop (as with any close), later
    /// [`Conn::write`]s are ignored ([`Conn::is_writable`] says `false`), and its plain
    /// [`ConnectionHandle`]s refuse writes with
    /// [`HandleError::Closed`](crate::HandleError::Closed); only outstanding `Work` still
    /// answers, before them.
    pub fn close_after(&mut self, data: &[u8]) {
        // Also during a close that has not sent its last bytes yet (e.g. after the default
        // `on_shutdown`'s `close`): these become them.
        if self.core.takes_own_writes() {
            self.core.rare_mut().last_words.extend_from_slice(data);
        }
        self.core.on(Event::CloseAfter); // seals (if it took the words), then closes
        self.dirty();
    }

    /// Resets the connection (SO_LINGER 0): queued bytes are dropped.
    pub fn abort(&mut self) {
        self.core.on(Event::Abort(CloseReason::Local));
        self.dirty();
    }

    /// Half-closes: once everything queued (and outstanding [`Work`]) has been sent, the peer
    /// reads EOF. Reading goes on; writes made before the FIN is sent go out before it, later
    /// ones are ignored. The connection closes when the
    /// peer closes its side too (then `on_read_closed` runs as usual; its default closes) or
    /// when the handler closes it. With `on_read_closed`, this makes a bidirectional proxy:
    /// each side passes its peer's EOF on with `shutdown_write`.
    ///
    /// ```
    /// # use ringport::{Conn, ConnectionHandle, Frame, Handler};
    /// // One side of a proxy: the client's EOF becomes the upstream's EOF; the upstream's
    /// // answer keeps flowing back until it closes too.
    /// struct ClientSide { upstream: ConnectionHandle }
    /// impl Handler for ClientSide {
    ///     fn on_frame(&mut self, _: &mut Conn<'_>, frame: Frame<'_>) {
    ///         let _ = self.upstream.write(frame.raw());
    ///     }
    ///     fn on_read_closed(&mut self, _conn: &mut Conn<'_>) {
    ///         let _ = self.upstream.shutdown_write(); // FIN after what is queued; no close
    ///     }
    /// }
    /// ```
    pub fn shutdown_write(&mut self) {
        if self.core.m.is_open() {
            self.core.on(Event::ShutdownWrite);
            self.dirty();
        }
    }

    /// Stops delivering frames (and reading) until [`Conn::resume_reading`] or
    /// [`ConnectionHandle::resume_reading`]. Bytes already received are kept, in order.
    pub fn pause_reading(&mut self) {
        self.core.on(Event::Pause);
        self.dirty();
    }

    /// Resumes reading after [`Conn::pause_reading`].
    pub fn resume_reading(&mut self) {
        self.core.on(Event::Resume);
        self.dirty();
    }

    /// Whether reading is paused by [`Conn::pause_reading`].
    pub fn is_reading_paused(&self) -> bool {
        self.core.m.user_paused()
    }

    /// Only in `on_frame`: this frame was not consumed (e.g. a worker queue is full). The engine
    /// keeps it, stops reading, and delivers it again 2 ms later (and every 2 ms while it is
    /// held, whatever wakes the IO thread meanwhile), without decoding or counting it again.
    pub fn hold_frame(&mut self) {
        self.core.on(Event::Hold);
    }

    /// A `Send + Sync` handle for writing to / closing this connection from other threads.
    pub fn handle(&mut self) -> ConnectionHandle {
        self.ctx.handle(self.token, self.core)
    }

    /// A handle counted as outstanding work until it is dropped (see [`Work`]): give one to
    /// each job that will answer a request, so that no close (graceful, idle, decode error,
    /// shutdown) drops the reply.
    ///
    /// With a [`WorkerPool`](crate::pool::WorkerPool), let the pool make it:
    /// [`Ordered::submit_work`](crate::pool::Ordered::submit_work) (several requests per
    /// connection, replies in order) or
    /// [`WorkerPool::try_execute_work`](crate::pool::WorkerPool::try_execute_work) create the
    /// `Work` only once the job is accepted, so a refused job (queue full: the frame is held
    /// and offered again) leaves nothing behind:
    ///
    /// ```
    /// # use std::io::{Read, Write};
    /// # use ringport::{codec::Raw, Engine, Server};
    /// # use ringport::{Conn, Frame, Handler, Work, pool::WorkerPool};
    /// struct Pooled { pool: WorkerPool }
    /// impl Handler for Pooled {
    ///     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
    ///         let request = frame.payload().to_vec();
    ///         let job = move |work: Work| { let _ = work.write(request); };
    ///         if self.pool.try_execute_work(conn, job).is_err() {
    ///             conn.hold_frame(); // nothing was queued: offered again a few ms later
    ///         }
    ///     }
    /// }
    ///
    /// let pool = WorkerPool::new("work", 2, 64)?;
    /// let p = pool.clone();
    /// let server = Server::new("127.0.0.1:0".parse()?, Raw, move |_| Pooled { pool: p.clone() });
    /// # let mut engine = Engine::builder().io_threads(1).handle_signals(false).build()?;
    /// # let addr = engine.add_server(server)?.local_addr();
    /// # let running = engine.start()?;
    /// # let mut client = std::net::TcpStream::connect(addr)?;
    /// # client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    /// # client.write_all(b"ping")?;
    /// # let mut reply = [0u8; 4];
    /// # client.read_exact(&mut reply)?;
    /// # assert_eq!(&reply, b"ping");
    /// # drop(client);
    /// # running.shutdown_handle().shutdown();
    /// # running.join();
    /// # pool.shutdown(std::time::Duration::from_secs(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A `Work` made here and dropped unused (a job refused by another queue) ends through
    /// the IO thread's inbox like any other: correct, but a message per refusal.
    pub fn work(&mut self) -> Work {
        let handle = self.handle();
        // A closing connection still waits for work (plain handles already say closed).
        let counted = handle
            .shared
            .alive
            .load(std::sync::atomic::Ordering::Acquire);
        if counted {
            self.core.on(Event::WorkStarted);
        }
        Work::new(handle, counted)
    }

    /// [`Work`] outstanding on this connection.
    pub fn outstanding_work(&self) -> u64 {
        self.core.m.work()
    }

    /// Bytes queued for sending and not yet written to the socket (including what handles
    /// posted and the IO thread has not taken yet).
    pub fn queued_bytes(&self) -> usize {
        self.core.queued()
    }

    /// Asks for [`Handler::on_writable`](crate::Handler::on_writable) with `value` once this
    /// connection's own write queue ([`Conn::queued_bytes`]: queued, in flight, and what
    /// handles posted) is at or under its low write watermark, counting what this callback
    /// wrote. A handler that stops producing for a slow reader (pauses reading, holds a
    /// frame, leaves a long reply half built) goes on here.
    ///
    /// - One-shot; asked again before it fires, it keeps the last `value`.
    /// - Checked at the end of each loop turn in which the connection has anything to flush
    ///   or a send completes: if the queue is already low, `on_writable` runs at the end of
    ///   this turn. So ask after writing, not in a loop that writes nothing (that would run
    ///   `on_writable` every turn).
    /// - A close asked meanwhile (by the handler, a handle, a timeout, the shutdown) fires it
    ///   too, as it tells a handle's watchers: the connection then takes no more writes
    ///   ([`Conn::is_writable`] is `false`). A reset drops it; only `on_close` follows.
    ///
    /// [`ConnectionHandle::notify_when_writable`] on this connection's own handle does the
    /// same (from any thread). A handle sees a callback's writes only once the loop turn
    /// ends, so watching another connection is where handles are for.
    ///
    /// ```
    /// # use ringport::{Conn, Frame, Handler};
    /// // Streams a large reply without holding more than the high watermark of it.
    /// struct Stream { left: usize }
    /// impl Handler for Stream {
    ///     fn on_frame(&mut self, conn: &mut Conn<'_>, _frame: Frame<'_>) {
    ///         self.left = 64 << 20;
    ///         conn.pause_reading();
    ///         self.on_writable(conn, 0);
    ///     }
    ///     fn on_writable(&mut self, conn: &mut Conn<'_>, _: u64) {
    ///         while self.left > 0 && conn.is_writable() {
    ///             let n = self.left.min(64 << 10);
    ///             conn.write(&vec![b'x'; n]);
    ///             self.left -= n;
    ///         }
    ///         if self.left > 0 {
    ///             conn.notify_when_drained(0); // the reader has to catch up first
    ///         } else {
    ///             conn.resume_reading();
    ///         }
    ///     }
    /// }
    /// ```
    pub fn notify_when_drained(&mut self, value: u64) {
        self.core.watch_drain(value);
        self.dirty();
    }

    /// Whether the connection is open and its queue below the server's high write watermark
    /// (what a [`ConnectionHandle::write`] would need to be accepted). `false` once a close
    /// has begun or the write side is shut.
    pub fn is_writable(&self) -> bool {
        self.core.m.is_open()
            && self.core.takes_own_writes()
            && self.core.queued() < self.core.write_high
    }

    /// Arms timer `id` of this connection to fire [`Handler::on_timer`](crate::Handler::on_timer)
    /// after `after`; re-arming an armed id moves its deadline (a heartbeat pushed back on
    /// every frame costs O(1)). Timers stop when the connection starts closing (a graceful
    /// close, `close_after`, a reset, an idle timeout, a peer's EOF the handler closes on):
    /// none fires after that, and arming one then does nothing.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use ringport::{Conn, Frame, Handler};
    /// struct Heartbeat;
    /// impl Handler for Heartbeat {
    ///     fn on_open(&mut self, conn: &mut Conn<'_>) {
    ///         conn.set_timer(1, Duration::from_secs(5));
    ///     }
    ///     fn on_frame(&mut self, conn: &mut Conn<'_>, _frame: Frame<'_>) {
    ///         conn.set_timer(1, Duration::from_secs(5)); // still alive: push it back
    ///     }
    ///     fn on_timer(&mut self, conn: &mut Conn<'_>, _id: u64) {
    ///         conn.write(b"PING\r\n");
    ///         conn.set_timer(1, Duration::from_secs(5));
    ///     }
    /// }
    /// ```
    pub fn set_timer(&mut self, id: u64, after: Duration) {
        if !self.core.m.is_open() {
            return;
        }
        let deadline = self.ctx.now + after;
        let (token, gen) = (self.token, self.core.gen);
        let records = &mut self.core.rare_mut().timers;
        self.ctx.timers.set(records, token, gen, id, deadline);
    }

    /// Disarms timer `id`; `false` if it was not armed.
    pub fn cancel_timer(&mut self, id: u64) -> bool {
        self.core
            .rare
            .as_deref_mut()
            .is_some_and(|r| Timers::cancel(&mut r.timers, id))
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.info.peer
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.core.info.local
    }

    /// The process-wide memory budget: charge what the handler holds for its client (a
    /// reply being built, a backlog) with [`Budget::try_charge`](crate::Budget::try_charge),
    /// and refuse or shed work when it says no.
    pub fn budget(&self) -> &crate::Budget {
        &self.ctx.budget
    }

    /// Addresses and id.
    pub fn info(&self) -> &ConnInfo {
        &self.core.info
    }
}
