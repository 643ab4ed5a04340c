//! Reaching a connection from other threads: [`ConnectionHandle`] and [`Work`].
//!
//! A handle names a connection by (IO thread, slot, generation). Its operations travel through
//! the owning IO thread's inbox ([`Inbox`]) and wake-up; the IO thread checks the generation
//! before acting, so a handle never reaches a newer connection that reuses the slot. A handle
//! holds neither the connection nor the engine alive: a shutdown never waits for handles.
//!
//! Flow control: what handles write counts against the connection's write watermarks
//! ([`ConnShared`] carries the numbers across threads). At or above the high watermark a handle
//! write is refused with [`HandleError::Full`]; [`ConnectionHandle::notify_when_writable`]
//! asks for a callback once the queue is back under the low watermark.
//!
//! This module depends only on [`crate::info`]: the engine implements [`Inbox`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a handle asks of the IO thread that owns its connection.
#[derive(Debug)]
pub(crate) enum HandleMsg {
    Write {
        token: usize,
        gen: u64,
        data: Vec<u8>,
    },
    Close {
        token: usize,
        gen: u64,
        abort: bool,
        /// The close reason counted: `Local`, or `SlowConsumer` (a fan-out eviction).
        slow: bool,
    },
    ShutdownWrite {
        token: usize,
        gen: u64,
    },
    Resume {
        token: usize,
        gen: u64,
    },
    Notify {
        token: usize,
        gen: u64,
        value: u64,
    },
    Writable {
        token: usize,
        gen: u64,
        value: u64,
    },
    /// `notify_when_writable` on the connection's own handle: the owning IO thread watches
    /// its exact queue (`ConnCore::watch_drain`).
    WatchDrain {
        token: usize,
        gen: u64,
        value: u64,
    },
    /// A [`Work`] ended (after every write it made, same FIFO).
    WorkDone {
        token: usize,
        gen: u64,
    },
}

/// The sending side of one IO thread's inbox (with its wake-up). `false`: the IO thread has
/// stopped.
pub(crate) trait Inbox: Send + Sync {
    fn post(&self, msg: HandleMsg) -> bool;
}

/// What the IO thread and the handles of one connection share.
#[derive(Debug)]
pub(crate) struct ConnShared {
    /// Writes are still accepted (the connection is open or flushing for a graceful close).
    pub alive: AtomicBool,
    /// A close was asked (by a handle, or on the IO thread: `Conn::close`, `close_after`, an
    /// idle timeout, ...): plain handles refuse writes and say closed from now on; only the
    /// replies of outstanding [`Work`] are still taken (the graceful close waits for them).
    pub closing: AtomicBool,
    /// Bytes accepted for the connection and not yet sent, in one word so that a handle never
    /// sees a write counted twice or not at all while the IO thread takes it from its inbox:
    /// what handles posted and the IO thread has not taken yet, plus the IO thread's own
    /// queue (queued + in flight) as it last published it (`ConnCore::published`). Handles
    /// add and (on a failed post) remove their own writes; the IO thread moves a taken write
    /// from one part to the other without touching the word, and publishes its queue's
    /// changes as differences.
    pub backlog: AtomicUsize,
    /// The server's write watermarks.
    pub high: usize,
    pub low: usize,
    /// Who asked to hear when the queue is back under `low` (one-shot).
    pub watchers: Mutex<Vec<(ConnectionHandle, u64)>>,
    /// Mirrors `!watchers.is_empty()` so the IO thread checks without locking.
    pub watched: AtomicBool,
}

impl ConnShared {
    pub(crate) fn new(low: usize, high: usize) -> Arc<ConnShared> {
        Arc::new(ConnShared {
            alive: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            backlog: AtomicUsize::new(0),
            high,
            low,
            watchers: Mutex::new(Vec::new()),
            watched: AtomicBool::new(false),
        })
    }

    /// A connection that is already past writing.
    pub(crate) fn dead() -> Arc<ConnShared> {
        let s = ConnShared::new(0, 0);
        s.alive.store(false, Ordering::Release);
        s.closing.store(true, Ordering::Release);
        s
    }

    /// Bytes accepted for the connection and not yet sent.
    pub(crate) fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Acquire)
    }

    /// Called by the IO thread once the queue is at or under `low`: tells every watcher.
    pub(crate) fn wake_watchers(&self) {
        if !self.watched.swap(false, Ordering::AcqRel) {
            return;
        }
        let watchers =
            std::mem::take(&mut *self.watchers.lock().unwrap_or_else(|e| e.into_inner()));
        for (w, value) in watchers {
            let _ = w.inbox.post(HandleMsg::Writable {
                token: w.token,
                gen: w.gen,
                value,
            });
        }
    }

    /// The connection ended: nobody will write to it again, its watchers are told now (they
    /// then see [`HandleError::Closed`] on their next write instead of waiting forever).
    pub(crate) fn mark_dead(&self) {
        self.closing.store(true, Ordering::Release);
        self.alive.store(false, Ordering::Release);
        self.watched.store(true, Ordering::Release);
        self.wake_watchers();
    }

    /// A close was asked: plain handles refuse writes from now on (replies of outstanding
    /// work are still taken); watchers are told now, as for [`ConnShared::mark_dead`].
    pub(crate) fn mark_closing(&self) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.watched.store(true, Ordering::Release);
            self.wake_watchers();
        }
    }

    /// Whether writes of a plain handle (`reply` false) or of a [`Work`] (`reply` true) are
    /// still accepted.
    pub(crate) fn accepts(&self, reply: bool) -> bool {
        self.alive.load(Ordering::Acquire) && (reply || !self.closing.load(Ordering::Acquire))
    }
}

/// Why a [`ConnectionHandle`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The connection is closed (or closing past its flush): nothing more can be written.
    #[error("connection closed")]
    Closed,
    /// The engine that owned the connection has stopped.
    #[error("engine stopped")]
    EngineStopped,
    /// The connection's write queue is at or above its high watermark: the bytes were NOT
    /// queued. Retry after [`ConnectionHandle::notify_when_writable`] fires, drop them, or
    /// disconnect the slow reader: the policy is the caller's.
    #[error("write queue full")]
    Full,
}

/// A `Send + Sync + Clone` reference to one connection, usable from any thread.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(crate) inbox: Arc<dyn Inbox>,
    pub(crate) token: usize,
    pub(crate) gen: u64,
    pub(crate) shared: Arc<ConnShared>,
    /// The handle of a [`Work`]: its writes answer an accepted request and are never refused
    /// for being over the watermark (they still count toward it).
    reply: bool,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("slot", &self.token)
            .field("gen", &self.gen)
            .field("open", &self.is_open())
            .finish()
    }
}

impl ConnectionHandle {
    pub(crate) fn new(
        inbox: Arc<dyn Inbox>,
        token: usize,
        gen: u64,
        shared: Arc<ConnShared>,
    ) -> Self {
        ConnectionHandle {
            inbox,
            token,
            gen,
            shared,
            reply: false,
        }
    }

    /// Whether the connection still takes this handle's writes (a hint: it may close any
    /// time). `false` from the moment a close was asked (through any handle of the connection,
    /// or by its handler), so a loop that closes a connection sees it closed at once; a
    /// [`Work`]'s handle stays open while its connection closes gracefully, because the close
    /// waits for its reply.
    pub fn is_open(&self) -> bool {
        self.shared.accepts(self.reply)
    }

    /// Posts `msg` unless the connection has ended (a closing connection still takes
    /// notifications, closes and aborts).
    fn post(&self, msg: HandleMsg) -> Result<(), HandleError> {
        self.post_if(self.shared.alive.load(Ordering::Acquire), msg)
    }

    /// Posts `msg` if `open`, else says [`HandleError::Closed`].
    fn post_if(&self, open: bool, msg: HandleMsg) -> Result<(), HandleError> {
        if !open {
            return Err(HandleError::Closed);
        }
        if !self.inbox.post(msg) {
            return Err(HandleError::EngineStopped);
        }
        Ok(())
    }

    /// Queues `data` on the connection, after everything written before through this or any
    /// handle of the connection from the same thread.
    ///
    /// Counts against the connection's write watermarks: when the bytes already queued are at
    /// or above the high watermark the write is refused with [`HandleError::Full`] and nothing
    /// is queued (one write may take the queue past the mark by its own size).
    ///
    /// Through a [`Work`] the write is a reply to a request the connection sent, and is never
    /// refused for being full: the connection stops reading above the high watermark, so the
    /// requests it may have outstanding (and their replies) are bounded at the source.
    pub fn write(&self, data: impl Into<Vec<u8>>) -> Result<(), HandleError> {
        if !self.is_open() {
            return Err(HandleError::Closed);
        }
        if !self.reply && self.shared.backlog() >= self.shared.high {
            return Err(HandleError::Full);
        }
        let data = data.into();
        let len = data.len();
        self.shared.backlog.fetch_add(len, Ordering::AcqRel);
        self.post_if(
            self.is_open(),
            HandleMsg::Write {
                token: self.token,
                gen: self.gen,
                data,
            },
        )
        .inspect_err(|_| {
            self.shared.backlog.fetch_sub(len, Ordering::AcqRel);
        })
    }

    /// Bytes accepted for this connection and not yet sent (queued, in flight, or still in
    /// the IO thread's inbox).
    pub fn queued_bytes(&self) -> usize {
        self.shared.backlog()
    }

    /// Whether a [`write`](ConnectionHandle::write) would be accepted now (below the high
    /// watermark and open).
    pub fn is_writable(&self) -> bool {
        self.is_open() && self.shared.backlog() < self.shared.high
    }

    /// Asks for `watcher`'s [`Handler::on_writable`](crate::Handler::on_writable) with `value`
    /// once this connection's queue is at or under its low watermark, or once it closes or a
    /// close is asked (then the watcher's next write says [`HandleError::Closed`]). One-shot;
    /// fires at once (through the watcher's IO thread) if the queue is already low. This is
    /// how a proxy resumes reading the side that feeds a full connection.
    ///
    /// A connection watching itself (`watcher` is a handle of this same connection) is
    /// [`Conn::notify_when_drained`](crate::Conn::notify_when_drained): the owning IO thread
    /// checks its own queue at the end of the loop turn, so the writes of the callback that
    /// asks are counted (a reset drops the watch).
    ///
    /// ```
    /// # use std::io::{Read, Write};
    /// # use ringport::{codec::Raw, ConnectOptions, Engine, Server};
    /// # use ringport::{Conn, ConnectionHandle, Frame, HandleError, Handler};
    /// // Forwards to `peer`; stops reading while the peer is full (netty's autoRead).
    /// struct Forward { peer: ConnectionHandle }
    /// impl Handler for Forward {
    ///     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
    ///         match self.peer.write(frame.raw()) {
    ///             Ok(()) if self.peer.is_writable() => return,
    ///             Ok(()) => {}                      // queued; the peer is now full
    ///             Err(HandleError::Full) => conn.hold_frame(), // not queued: offered again later
    ///             Err(_) => return conn.close(),
    ///         }
    ///         conn.pause_reading();
    ///         self.peer.notify_when_writable(&conn.handle(), 0);
    ///     }
    ///     fn on_writable(&mut self, conn: &mut Conn<'_>, _: u64) {
    ///         conn.resume_reading();
    ///     }
    /// }
    /// # // The test: a client's connection forwards to an upstream connection and back.
    /// # struct Front { upstream: std::net::SocketAddr, fwd: Option<Forward> }
    /// # impl Handler for Front {
    /// #     fn on_open(&mut self, conn: &mut Conn<'_>) {
    /// #         let back = Forward { peer: conn.handle() };
    /// #         let peer = conn.connect(self.upstream, Raw, back, ConnectOptions::default());
    /// #         self.fwd = Some(Forward { peer });
    /// #     }
    /// #     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
    /// #         if let Some(f) = &mut self.fwd { f.on_frame(conn, frame) }
    /// #     }
    /// #     fn on_writable(&mut self, conn: &mut Conn<'_>, v: u64) {
    /// #         if let Some(f) = &mut self.fwd { f.on_writable(conn, v) }
    /// #     }
    /// # }
    /// # let upstream_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let upstream_addr = upstream_listener.local_addr()?;
    /// # let echo = std::thread::spawn(move || -> std::io::Result<()> {
    /// #     let (mut s, _) = upstream_listener.accept()?; // the upstream: an echo server
    /// #     s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    /// #     std::io::copy(&mut s.try_clone()?, &mut s)?;
    /// #     Ok(())
    /// # });
    /// # let server = Server::new("127.0.0.1:0".parse()?, Raw, move |_| Front { upstream: upstream_addr, fwd: None });
    /// # let mut engine = Engine::builder().io_threads(1).handle_signals(false).build()?;
    /// # let addr = engine.add_server(server)?.local_addr();
    /// # let running = engine.start()?;
    /// # let mut client = std::net::TcpStream::connect(addr)?;
    /// # client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    /// # client.write_all(b"hello")?;
    /// # let mut reply = [0u8; 5];
    /// # client.read_exact(&mut reply)?;
    /// # assert_eq!(&reply, b"hello");
    /// # drop(client);
    /// # running.shutdown_handle().shutdown();
    /// # running.join();
    /// # echo.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn notify_when_writable(&self, watcher: &ConnectionHandle, value: u64) {
        // Its own connection: the owning IO thread looks at its exact queue when the loop
        // turn ends (asked from one of its callbacks, the backlog seen here lacks what the
        // callback wrote, and the watch would fire at once).
        if Arc::ptr_eq(&self.shared, &watcher.shared)
            && self.is_open()
            && self
                .post(HandleMsg::WatchDrain {
                    token: self.token,
                    gen: self.gen,
                    value,
                })
                .is_ok()
        {
            return;
        }
        {
            let mut w = self
                .shared
                .watchers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            w.push((watcher.clone(), value));
            self.shared.watched.store(true, Ordering::Release);
        }
        // The queue may have drained (or the connection closed) before we registered.
        if !self.is_open() || self.shared.backlog() <= self.shared.low {
            self.shared.wake_watchers();
        }
    }

    /// Closes the connection after flushing what is queued (and after its outstanding
    /// [`Work`]). Once it returns, every plain handle of the connection (clones too) says
    /// closed ([`is_open`](ConnectionHandle::is_open) `false`) and refuses writes with
    /// [`HandleError::Closed`]; the replies of outstanding `Work` are still sent. `Closed` if
    /// the connection had already ended.
    pub fn close(&self) -> Result<(), HandleError> {
        let r = self.post(HandleMsg::Close {
            token: self.token,
            gen: self.gen,
            abort: false,
            slow: false,
        });
        if r.is_ok() {
            self.shared.mark_closing();
        }
        r
    }

    /// Resets the connection (queued bytes are dropped). Once it returns, every handle of
    /// the connection (clones and `Work` too) says closed and refuses writes with
    /// [`HandleError::Closed`]. `Closed` if the connection had already ended.
    pub fn abort(&self) -> Result<(), HandleError> {
        self.abort_as(false)
    }

    /// [`abort`](ConnectionHandle::abort), counted under
    /// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer) (a fan-out member
    /// evicted for not reading).
    pub(crate) fn abort_slow(&self) -> Result<(), HandleError> {
        self.abort_as(true)
    }

    fn abort_as(&self, slow: bool) -> Result<(), HandleError> {
        let r = self.post(HandleMsg::Close {
            token: self.token,
            gen: self.gen,
            abort: true,
            slow,
        });
        if r.is_ok() {
            self.shared.mark_dead();
        }
        r
    }

    /// Shuts down the write side once everything queued is sent (the peer reads EOF); reading
    /// goes on. See [`Conn::shutdown_write`](crate::Conn::shutdown_write).
    pub fn shutdown_write(&self) -> Result<(), HandleError> {
        self.post(HandleMsg::ShutdownWrite {
            token: self.token,
            gen: self.gen,
        })
    }

    /// Calls the connection's [`Handler::on_notify`](crate::Handler::on_notify) with `value` on
    /// its IO thread, after everything this thread wrote through the connection's handles
    /// before (one FIFO inbox).
    pub fn notify(&self, value: u64) -> Result<(), HandleError> {
        self.post(HandleMsg::Notify {
            token: self.token,
            gen: self.gen,
            value,
        })
    }

    /// Resumes reading after [`Conn::pause_reading`](crate::Conn::pause_reading).
    pub fn resume_reading(&self) -> Result<(), HandleError> {
        self.post(HandleMsg::Resume {
            token: self.token,
            gen: self.gen,
        })
    }
}

/// A request of a connection that is being worked on elsewhere (a worker job), made with
/// [`Conn::work`](crate::Conn::work). It is a [`ConnectionHandle`] (it derefs to one) that the
/// engine counts as outstanding until it is dropped:
///
/// - a graceful close ([`Conn::close`](crate::Conn::close), the default `on_read_closed`,
///   `on_decode_error` and `on_shutdown`, a handle's `close`) waits until every outstanding
///   `Work` has been dropped and everything it wrote is flushed;
/// - a connection with outstanding work is not idle (the idle timeout does not fire);
/// - the drain deadline of a shutdown still resets it (a job may hang forever).
///
/// Drop it when the job is done, after its last write: its end travels through the same FIFO
/// inbox as its writes, so the close never overtakes the reply.
pub struct Work {
    handle: ConnectionHandle,
    counted: bool,
}

impl Work {
    pub(crate) fn new(mut handle: ConnectionHandle, counted: bool) -> Work {
        handle.reply = true;
        Work { handle, counted }
    }

    /// A plain handle to the same connection (not counted as work; its writes are bounded by
    /// the watermarks like any handle's).
    pub fn handle(&self) -> ConnectionHandle {
        let mut h = self.handle.clone();
        h.reply = false;
        h
    }
}

impl std::ops::Deref for Work {
    type Target = ConnectionHandle;
    fn deref(&self) -> &ConnectionHandle {
        &self.handle
    }
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Work").field(&self.handle).finish()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.counted {
            // Sent whatever `alive` says: a closing connection is waiting for exactly this.
            let _ = self.handle.inbox.post(HandleMsg::WorkDone {
                token: self.handle.token,
                gen: self.handle.gen,
            });
        }
    }
}
