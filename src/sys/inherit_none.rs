//! Inherited listening sockets (systemd socket activation, a restart's handover) are a unix
//! mechanism; elsewhere there are none.

use std::io;
use std::net::TcpListener;

/// No readiness socket exists on this system.
pub(crate) type ReadySocket = std::convert::Infallible;

pub(crate) fn take_listeners() -> io::Result<Vec<Vec<TcpListener>>> {
    Ok(Vec::new())
}

pub(crate) fn take_ready_socket() -> Option<ReadySocket> {
    None
}
