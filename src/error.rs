//! The crate's error type.

use std::io;

/// Errors from building and running an engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid (the message says which and why).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `--backend uring` (or `RINGPORT_BACKEND=uring`) where io_uring cannot be used.
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(String),
    /// Binding or configuring a listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// Binding a Unix domain socket failed: another server is listening there ("address in
    /// use"), the path exists and is not a socket, the OS has no Unix domain sockets, ...
    #[error("cannot listen on unix:{}: {source}", path.display())]
    ListenUnix {
        /// The socket path asked for.
        path: std::path::PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Any other IO error while starting or running (thread spawn, backend setup, signals).
    #[error(transparent)]
    Io(#[from] io::Error),
}
