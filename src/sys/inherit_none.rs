//! Inherited listening sockets (systemd socket activation, a restart's handover) are a unix
//! mechanism; elsewhere there are none.

use std::io;
use std::net::TcpListener;

/// No readiness socket exists on this system.
pub(crate) type ReadySocket = std::convert::Infallible;

/// The listening sockets this process was given: none here.
#[derive(Default)]
pub(crate) struct Inherited {
    pub servers: Vec<Vec<TcpListener>>,
    pub metrics: Option<Vec<TcpListener>>,
    pub handover: bool,
}

pub(crate) fn take_listeners() -> io::Result<Inherited> {
    Ok(Inherited::default())
}

pub(crate) fn take_ready_socket() -> Option<ReadySocket> {
    None
}
