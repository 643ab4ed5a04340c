//! The SIGHUP restart handover needs inherited descriptors and systemd's notify socket: unix
//! only. Elsewhere there is no SIGHUP; this keeps the engine's calls in place as no-ops.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use crate::stats::ServerStats;

use super::ShutdownHandle;

/// One server's listeners (never handed on here).
#[allow(dead_code)] // built by the engine, read only by the unix restart
pub(crate) struct Group {
    pub listeners: Vec<TcpListener>,
    pub metrics: bool,
}

/// Nothing to hand over: no signal ever asks for it on this system.
pub(crate) struct Restart;

impl Restart {
    pub(crate) fn new(
        _groups: Vec<Group>,
        _timeout: Duration,
        _grace: Duration,
        _stats: Vec<Arc<ServerStats>>,
    ) -> io::Result<Restart> {
        Ok(Restart)
    }

    pub(crate) fn hand_over(&self, _shutdown: &ShutdownHandle) -> bool {
        false
    }

    pub(crate) fn watch_retired(self, _shutdown: ShutdownHandle) {}
}

pub(crate) fn await_go(_ready: Option<crate::sys::inherit::ReadySocket>, _timeout: Duration) {}

pub(crate) fn notify_ready() {}

pub(crate) fn notify_stopping() {}
