//! The SIGHUP restart handover needs inherited descriptors and systemd's notify socket: unix
//! only. Elsewhere there is no SIGHUP; this keeps the engine's calls in place as no-ops.

use std::io;
use std::net::TcpListener;
use std::time::Duration;

use super::ShutdownHandle;

/// Nothing to hand over: no signal ever asks for it on this system.
pub(crate) struct Restart;

impl Restart {
    pub(crate) fn new(_groups: Vec<Vec<TcpListener>>, _timeout: Duration) -> io::Result<Restart> {
        Ok(Restart)
    }

    pub(crate) fn hand_over(&self, _shutdown: &ShutdownHandle) -> bool {
        false
    }
}

pub(crate) fn await_go(_ready: Option<crate::sys::inherit::ReadySocket>, _timeout: Duration) {}

pub(crate) fn notify_ready() {}

pub(crate) fn notify_stopping() {}
