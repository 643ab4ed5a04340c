//! Controlling a running engine from any thread: [`Connector`] (outgoing connections),
//! [`ShutdownHandle`] (graceful shutdown). The signal waiter that turns SIGINT/SIGTERM into the
//! same shutdown is in `signal_waiter.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::codec::Decoder;
use crate::handle::HandleError;
use crate::handler::{ConnectOptions, Handler, Typed};
use crate::stats::ServerStats;

use super::inbox::{Msg, ThreadShared};

/// Opens outgoing connections from any thread, served by the engine's IO threads and backend
/// exactly like accepted ones (same handler API, same limits machinery). Cheap to clone.
///
/// Available before the engine starts ([`Engine::connector`](crate::Engine::connector)):
/// connects asked for then are queued and made when it starts. From inside a handler, prefer
/// [`Conn::connect`](crate::Conn::connect): same thread, a handle at once.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    threads: OnceLock<Vec<Arc<ThreadShared>>>,
    /// Connects asked for before the engine started.
    early: Mutex<Vec<Msg>>,
    next: AtomicUsize,
    stats: Arc<ServerStats>,
}

impl Connector {
    pub(crate) fn new(stats: Arc<ServerStats>) -> Connector {
        Connector {
            inner: Arc::new(ConnectorInner {
                threads: OnceLock::new(),
                early: Mutex::new(Vec::new()),
                next: AtomicUsize::new(0),
                stats,
            }),
        }
    }

    /// The engine started: hands over what was asked for before.
    pub(crate) fn started(&self, threads: Vec<Arc<ThreadShared>>) {
        let mut early = self.inner.early.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.inner.threads.set(threads);
        for msg in early.drain(..) {
            self.send(msg);
        }
    }

    fn send(&self, msg: Msg) -> bool {
        let threads = self.inner.threads.get().expect("started");
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % threads.len().max(1);
        threads.get(i).is_some_and(|t| t.send(msg))
    }

    /// Connects to `addr` on the next IO thread (round robin) with a timeout. See
    /// [`Connector::connect_with`].
    pub fn connect<D, H>(
        &self,
        addr: SocketAddr,
        codec: D,
        handler: H,
        timeout: Option<Duration>,
    ) -> Result<(), HandleError>
    where
        D: Decoder,
        H: Handler + Send,
    {
        self.connect_with(
            addr,
            codec,
            handler,
            ConnectOptions::default().timeout(timeout),
        )
    }

    /// Connects to `addr` on the next IO thread (round robin). When connected, `handler`'s
    /// `on_open` runs; if the connect fails (refused, unreachable) or its timeout passes first,
    /// only `on_close` runs, with [`CloseReason::Io`](crate::CloseReason::Io) saying why. Fails
    /// only if the engine has stopped.
    pub fn connect_with<D, H>(
        &self,
        addr: SocketAddr,
        codec: D,
        handler: H,
        options: ConnectOptions,
    ) -> Result<(), HandleError>
    where
        D: Decoder,
        H: Handler + Send,
    {
        let msg = Msg::Connect {
            addr,
            app: Box::new(Typed::new(handler, codec)),
            options,
        };
        if self.inner.threads.get().is_none() {
            let mut early = self.inner.early.lock().unwrap_or_else(|e| e.into_inner());
            if self.inner.threads.get().is_none() {
                early.push(msg);
                return Ok(());
            }
        }
        if self.send(msg) {
            Ok(())
        } else {
            Err(HandleError::EngineStopped)
        }
    }

    /// Counters of the outgoing connections (`accepted` counts connections opened).
    pub fn stats(&self) -> &ServerStats {
        &self.inner.stats
    }
}

/// Starts a graceful shutdown of an engine from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    pub(crate) threads: Vec<Arc<ThreadShared>>,
    /// Set by the first shutdown asked for (a retired process's watcher stops looking then).
    pub(crate) begun: Arc<AtomicBool>,
    /// Set once a restart's successor took the listeners over.
    pub(crate) retired: Arc<AtomicBool>,
}

impl ShutdownHandle {
    pub(crate) fn new(threads: Vec<Arc<ThreadShared>>) -> ShutdownHandle {
        ShutdownHandle {
            threads,
            begun: Arc::new(AtomicBool::new(false)),
            retired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops accepting, lets every connection answer its outstanding work and flush, closes
    /// them (resetting what is left at the drain deadline), then the IO threads exit.
    pub fn shutdown(&self) {
        self.begun.store(true, Ordering::Release);
        for t in &self.threads {
            t.send(Msg::Shutdown { ack: None });
        }
    }

    /// [`ShutdownHandle::shutdown`], then waits up to `timeout` until every IO thread has
    /// closed its listeners; `true` if all did (no new connection is accepted from then on).
    pub fn shutdown_and_wait(&self, timeout: Duration) -> bool {
        self.begun.store(true, Ordering::Release);
        self.ask_all(timeout, |ack| Msg::Shutdown { ack: Some(ack) })
    }

    /// A restart's successor serves: every IO thread stops accepting and serves on what it
    /// has (`Handler::on_retire`); waits up to `timeout` until all have closed their listeners.
    #[cfg_attr(not(unix), allow(dead_code))] // restarts are unix-only
    pub(crate) fn retire_and_wait(&self, timeout: Duration) -> bool {
        self.retired.store(true, Ordering::Release);
        self.ask_all(timeout, |ack| Msg::Retire { ack })
    }

    fn ask_all(
        &self,
        timeout: Duration,
        msg: impl Fn(crossbeam_channel::Sender<()>) -> Msg,
    ) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(self.threads.len());
        let sent = self
            .threads
            .iter()
            .filter(|t| t.send(msg(tx.clone())))
            .count();
        let deadline = Instant::now() + timeout;
        (0..sent).all(|_| rx.recv_deadline(deadline).is_ok())
    }

    /// Whether a restart's successor took this engine's listeners over.
    pub(crate) fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Whether a shutdown was asked for.
    #[cfg_attr(not(unix), allow(dead_code))] // read by a retired process's watcher (unix)
    pub(crate) fn begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }
}
