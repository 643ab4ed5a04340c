//! # ringport
//!
//! A TCP server framework in the tradition of the asynchronous IOCP socket-server frameworks —
//! a pool of IO threads servicing completions, engine-owned buffers, connection callbacks —
//! rebuilt for Linux on io_uring (the kernel's completion port), with epoll as the fallback.
//!
//! ## The layers
//! ```text
//!  your Handler (callbacks, &mut per-connection state)      examples/*.rs
//!  ─────────────────────────────────────────────────────────
//!  handler    Handler trait, Frame, Conn::connect             src/handler.rs
//!  conn       Conn: the context lent to callbacks             src/conn.rs
//!  core       per-connection state, per-thread context        src/core.rs, src/timers.rs
//!  handle     ConnectionHandle, Work: other threads' access   src/handle.rs
//!  codec      sans-IO framing: Raw, LengthDelimited, Lines    src/codec/
//!  engine     IO threads, connection table, flush, limits,    src/engine/
//!             shutdown, Connector
//!  budget     the process-wide memory budget, overload levels  src/budget.rs
//!  metrics    Prometheus text exposition, /metrics responder   src/metrics/
//!  pool       worker pool for blocking work                   src/pool.rs
//!  sys        Backend trait: io_uring | epoll (mio)           src/sys/  (the only unsafe code)
//! ```
//! Files depend downward only: `info` ← `handle` ← `core` ← `conn` ← `handler` ← `engine`.
//!
//! ## The data path
//! ```text
//! listener ─accept─▶ IO thread k (owns the connection for life)
//!   recv completion ─▶ bytes ─▶ decoder ─▶ Handler::on_frame ─▶ write queue
//!   write queue ─▶ one send per connection per loop turn ─▶ send completion ─▶ more / close
//!   worker job (Work) ─▶ IO thread k's inbox ─▶ write queue; Work dropped ─▶ close may proceed
//! ```
//!
//! ## The no-loss guarantee
//! A request the handler accepted is answered before its connection closes gracefully: a
//! graceful close (by the handler, a handle, the peer's EOF, a decode error, the idle timeout,
//! a shutdown) first waits for every outstanding [`Work`] and flushes everything queued. The
//! exceptions are resets, each counted under its own [`CloseReason`]: the peer reset
//! (`reset`), the peer stopped reading while we flushed (`flush-stalled`), the drain deadline
//! (`drain-timeout`), a handler panic (`handler-panic`), an explicit `abort` (`local`).
//!
//! A minimal echo server:
//! ```no_run
//! use ringport::{codec::Raw, Conn, Engine, Frame, Handler, Server};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
//!         conn.write(frame.raw());
//!     }
//! }
//!
//! let mut engine = Engine::builder().build()?;
//! let server = engine.add_server(Server::new("127.0.0.1:5001".parse()?, Raw, |_| Echo))?;
//! println!("listening on {} (backend: {})", server.local_addr(), engine.backend_name());
//! engine.run()?; // until SIGINT/SIGTERM, then a graceful drain
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod budget;
pub mod codec;
mod conn;
mod core;
mod engine;
mod error;
mod handle;
mod handler;
mod info;
mod layer;
pub mod metrics;
pub mod pool;
mod sockopt;
mod stats;
#[allow(unsafe_code)]
mod sys;
mod timers;

pub use budget::{
    cgroup_limit, default_limit as default_memory_budget, Action as OverloadAction, Budget,
    Pressure, DEFAULT_BUDGET_FRACTION, MIN_SHARE,
};
pub use conn::Conn;
pub use engine::{
    Connector, Engine, EngineBuilder, RunningEngine, Server, ServerHandle, ShutdownHandle,
    DEFAULT_MAX_BUFFERED_INPUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_RESTART_GRACE, DEFAULT_WRITE_HIGH,
    DEFAULT_WRITE_LOW, FLUSH_STALL, LINGER, MAX_ACCEPT_BACKOFF, MAX_RECV_BUFFER_COUNT,
};
pub use error::Error;
pub use handle::{ConnectionHandle, HandleError, Work};
pub use handler::{ConnectOptions, Frame, Handler};
pub use info::{CloseReason, ConnInfo, ProxyInfo, ProxyVersion, TlsInfo};
/// The layer stack under a fuzzer (`fuzz/fuzz_targets/layers.rs`); not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use layer::fuzzing;
pub use layer::{ProxyProtocol, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_PROXY_HEADER_TIMEOUT};
pub use metrics::Metrics;
/// rustls, re-exported: the version ringport's TLS options take.
#[cfg(feature = "tls")]
pub use rustls;
pub use sockopt::SocketOptions;
pub use stats::{LoopSnapshot, ProxyHeaderCounts, ServerStats, StatsSnapshot};

use std::fmt;
use std::str::FromStr;

/// Which kernel interface the IO threads use. Every name exists on every OS; asking for one
/// the OS does not have fails to build the engine with a one-line error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The best one here: on Linux io_uring when the kernel offers it (probed at start), else
    /// epoll with one warning; on Windows the I/O completion port; elsewhere `poll`.
    #[default]
    Auto,
    /// io_uring (Linux); starting fails with a one-line error where it is unavailable.
    Uring,
    /// epoll (Linux, through `mio`).
    Epoll,
    /// The I/O completion port (Windows).
    Iocp,
    /// The readiness backend of this OS through `mio`: epoll on Linux (where it is reported as
    /// `epoll`), kqueue on macOS, AFD polling on Windows.
    Poll,
}

impl BackendKind {
    /// The backend's name as accepted by `--backend` and printed in `listening on`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Uring => "uring",
            BackendKind::Epoll => "epoll",
            BackendKind::Iocp => "iocp",
            BackendKind::Poll => "poll",
        }
    }

    /// The names `--backend` accepts on this OS, for messages: `auto|uring|epoll|poll` on
    /// Linux, `auto|iocp|poll` on Windows, `auto|poll` elsewhere.
    pub fn available() -> &'static str {
        if cfg!(target_os = "linux") {
            "auto|uring|epoll|poll"
        } else if cfg!(windows) {
            "auto|iocp|poll"
        } else {
            "auto|poll"
        }
    }

    /// The backend named by the `RINGPORT_BACKEND` environment variable (`auto`, `uring`,
    /// `epoll`, `iocp`, `poll`), or `None` when it is unset. An unparsable value is an error.
    pub fn from_env() -> Result<Option<BackendKind>, Error> {
        match std::env::var("RINGPORT_BACKEND") {
            Ok(v) if !v.is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendKind::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendKind::Uring),
            "epoll" => Ok(BackendKind::Epoll),
            "iocp" => Ok(BackendKind::Iocp),
            "poll" | "mio" => Ok(BackendKind::Poll),
            other => Err(Error::Config(format!(
                "unknown backend {other:?} (expected {})",
                BackendKind::available()
            ))),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
