//! An IO thread's inbox: what other threads (handles, the connector, shutdown) ask of it, and
//! the wake-up that makes it look.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::core::DynConn;
use crate::handle::{HandleMsg, Inbox};
use crate::handler::ConnectOptions;
use crate::sys::Waker;

/// One message to an IO thread.
pub(crate) enum Msg {
    Handle(HandleMsg),
    Connect {
        addr: std::net::SocketAddr,
        app: Box<dyn DynConn + Send>,
        options: ConnectOptions,
    },
    /// A connection another IO thread accepted for this one to serve (backends whose one
    /// listening socket accepts for every thread: `Backend::accepts_for_all`).
    Accepted {
        listener: usize,
        stream: std::net::TcpStream,
    },
    /// A restart handed the listeners on: stop accepting, tell the handlers
    /// (`Handler::on_retire`) and serve on; `ack` hears once this thread's listeners are
    /// closed.
    #[cfg_attr(not(unix), allow(dead_code))] // restarts are unix-only
    Retire {
        ack: crossbeam_channel::Sender<()>,
    },
    /// Stop accepting and drain; `ack` hears once this thread's listeners are closed.
    Shutdown {
        ack: Option<crossbeam_channel::Sender<()>>,
    },
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The inbox id of the IO thread running on this OS thread (0: not an IO thread).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The sending side of one IO thread's inbox.
pub(crate) struct ThreadShared {
    pub tx: Sender<Msg>,
    pub waker: Arc<dyn Waker>,
    id: usize,
}

impl ThreadShared {
    pub(crate) fn new(tx: Sender<Msg>, waker: Arc<dyn Waker>) -> ThreadShared {
        ThreadShared {
            tx,
            waker,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Marks the calling OS thread as this inbox's IO thread.
    pub(crate) fn enter(&self) {
        CURRENT.with(|c| c.set(self.id));
    }

    /// `false`: the IO thread has stopped. A message an IO thread sends itself (a proxy's two
    /// sides on one thread) needs no wake-up: the loop looks at its inbox every turn.
    pub(crate) fn send(&self, msg: Msg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        if CURRENT.with(|c| c.get()) != self.id {
            self.waker.wake();
        }
        true
    }
}

impl Inbox for ThreadShared {
    fn post(&self, msg: HandleMsg) -> bool {
        self.send(Msg::Handle(msg))
    }
}
