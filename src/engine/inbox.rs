//! An IO thread's inbox: what other threads (handles, the connector, shutdown) ask of it, and
//! the wake-up that makes it look.

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
    /// Stop accepting and drain; `ack` hears once this thread's listeners are closed.
    Shutdown {
        ack: Option<crossbeam_channel::Sender<()>>,
    },
}

/// The sending side of one IO thread's inbox.
pub(crate) struct ThreadShared {
    pub tx: Sender<Msg>,
    pub waker: Arc<dyn Waker>,
}

impl ThreadShared {
    /// `false`: the IO thread has stopped.
    pub(crate) fn send(&self, msg: Msg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        self.waker.wake();
        true
    }
}

impl Inbox for ThreadShared {
    fn post(&self, msg: HandleMsg) -> bool {
        self.send(Msg::Handle(msg))
    }
}
