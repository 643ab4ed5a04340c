//! [`ConnectionHandle`]: reaching a connection from other threads.
//!
//! A handle names a connection by (IO thread, slot, generation). Its operations travel through
//! the owning IO thread's inbox and wake-up; the IO thread checks the generation before acting,
//! so a handle never reaches a newer connection that reuses the slot. A handle holds neither the
//! connection nor the engine alive: a shutdown never waits for handles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::sys::Waker;

/// What other threads ask of an IO thread.
pub(crate) enum Msg {
    Write {
        token: usize,
        gen: u64,
        data: Vec<u8>,
    },
    Close {
        token: usize,
        gen: u64,
        abort: bool,
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
    Connect {
        addr: std::net::SocketAddr,
        make: ConnMaker,
        timeout: Option<std::time::Duration>,
    },
    /// Stop accepting and drain; `ack` hears once this thread's listeners are closed.
    Shutdown {
        ack: Option<crossbeam_channel::Sender<()>>,
    },
}

/// Makes an outgoing connection's handler on its IO thread.
pub(crate) type ConnMaker =
    Box<dyn FnOnce(&crate::ConnInfo) -> Box<dyn crate::conn::DynConn> + Send>;

/// The sending side of one IO thread's inbox.
pub(crate) struct ThreadShared {
    pub tx: Sender<Msg>,
    pub waker: Arc<dyn Waker>,
}

impl ThreadShared {
    pub(crate) fn send(&self, msg: Msg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        self.waker.wake();
        true
    }
}

/// Why a [`ConnectionHandle`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The connection is closed or closing (or its engine has stopped).
    #[error("connection closed")]
    Closed,
}

/// A `Send + Sync + Clone` reference to one connection, usable from any thread.
#[derive(Clone)]
pub struct ConnectionHandle {
    shared: Arc<ThreadShared>,
    token: usize,
    gen: u64,
    alive: Arc<AtomicBool>,
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
        shared: Arc<ThreadShared>,
        token: usize,
        gen: u64,
        alive: Arc<AtomicBool>,
    ) -> Self {
        ConnectionHandle {
            shared,
            token,
            gen,
            alive,
        }
    }

    /// Whether the connection was still open when last seen (a hint: it may close any time).
    pub fn is_open(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn post(&self, msg: Msg) -> Result<(), HandleError> {
        if !self.is_open() || !self.shared.send(msg) {
            return Err(HandleError::Closed);
        }
        Ok(())
    }

    /// Queues `data` on the connection, after everything written before through this or any
    /// handle of the connection from the same thread. Fails if the connection has closed; bytes
    /// posted just before a close are dropped with it.
    pub fn write(&self, data: impl Into<Vec<u8>>) -> Result<(), HandleError> {
        self.post(Msg::Write {
            token: self.token,
            gen: self.gen,
            data: data.into(),
        })
    }

    /// Closes the connection after flushing what is queued.
    pub fn close(&self) -> Result<(), HandleError> {
        self.post(Msg::Close {
            token: self.token,
            gen: self.gen,
            abort: false,
        })
    }

    /// Resets the connection.
    pub fn abort(&self) -> Result<(), HandleError> {
        self.post(Msg::Close {
            token: self.token,
            gen: self.gen,
            abort: true,
        })
    }

    /// Calls the connection's [`Handler::on_notify`](crate::Handler::on_notify) with `value` on
    /// its IO thread, after everything this thread wrote through the connection's handles
    /// before (one FIFO inbox): e.g. "job done, its reply is queued".
    pub fn notify(&self, value: u64) -> Result<(), HandleError> {
        self.post(Msg::Notify {
            token: self.token,
            gen: self.gen,
            value,
        })
    }

    /// Resumes reading after [`Conn::pause_reading`](crate::Conn::pause_reading).
    pub fn resume_reading(&self) -> Result<(), HandleError> {
        self.post(Msg::Resume {
            token: self.token,
            gen: self.gen,
        })
    }
}
