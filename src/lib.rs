//! # ringport
//!
//! A TCP server framework in the tradition of the asynchronous IOCP socket-server frameworks:
//! a pool of IO threads servicing completions, engine-owned pooled buffers, and connection
//! callbacks. You write a [`Handler`] (one per connection, `&mut self` state, no locks), pick a
//! codec, and hand both to a [`Server`] on an [`Engine`]. Every resource has a limit, bad input
//! costs only the connection that sent it, and no accepted request is silently lost when a
//! connection closes. The example servers in the repository (`examples/`) are templates to
//! copy; `ringport-load` (`load/`) drives them.
//!
//! ```
//! use std::io::{Read, Write};
//! use ringport::{codec::Raw, Conn, Engine, Frame, Handler, Server};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
//!         conn.write(frame.raw()); // queued; one send per connection per loop turn
//!     }
//! }
//!
//! let mut engine = Engine::builder().io_threads(1).handle_signals(false).build()?;
//! let server = engine.add_server(Server::new("127.0.0.1:0".parse()?, Raw, |_| Echo))?;
//! let addr = server.local_addr(); // port 0 asked: the port the system chose
//! let running = engine.start()?; // engine.run() instead blocks until SIGINT/SIGTERM
//!
//! let mut client = std::net::TcpStream::connect(addr)?;
//! client.write_all(b"hello")?;
//! let mut reply = [0u8; 5];
//! client.read_exact(&mut reply)?;
//! assert_eq!(&reply, b"hello");
//!
//! running.shutdown_handle().shutdown(); // the graceful drain SIGTERM starts
//! running.join();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Backends
//!
//! Each IO thread owns its connections for life and waits on one kernel interface, chosen
//! with [`EngineBuilder::backend`] (or `RINGPORT_BACKEND`, see [`BackendKind::from_env`]):
//!
//! | OS | [`BackendKind::Auto`] picks | also available |
//! |---|---|---|
//! | Linux | io_uring ([`BackendKind::Uring`]; kernel 6.0 or later: multishot receive into provided-buffer rings, one `io_uring_enter` per loop turn) when the kernel allows it, else epoll with one warning saying why | [`BackendKind::Epoll`] (through mio) |
//! | Windows | the I/O completion port ([`BackendKind::Iocp`]: `AcceptEx`, zero-byte `WSARecv` so an idle connection pins no buffer, `WSASend`, `ConnectEx`) | [`BackendKind::Poll`] (mio's AFD polling) |
//! | others (macOS: compile-checked only) | [`BackendKind::Poll`] (kqueue) | |
//!
//! [`Engine::backend_name`] says which one runs. The API and the guarantees below are the
//! same on every backend. Windows is tested under Wine 8, not yet on a Windows machine.
//!
//! ## The layer stack
//!
//! A connection's bytes pass through layers before the codec, and back the other way:
//!
//! ```text
//! socket ─▶ [PROXY header] ─▶ [TLS] ─▶ codec (decoder) ─▶ Handler::on_frame
//! Handler ─▶ conn.write / send_frame ─▶ [TLS] ─▶ socket
//! ```
//!
//! - **PROXY protocol** ([`Server::proxy_protocol`], [`ProxyProtocol::Required`] or
//!   [`Optional`](ProxyProtocol::Optional)): the v1 or v2 header a balancer such as HAProxy
//!   writes is read first, in plaintext; the handler sees the client in
//!   [`ConnInfo::client`] and the header in [`ConnInfo::proxy`].
//! - **TLS** ([`Server::tls`] with a [`rustls`]`::ServerConfig`; outgoing:
//!   [`ConnectOptions::tls`]; the `tls` cargo feature, on by default): the handshake completes
//!   before [`Handler::on_open`], so [`ConnInfo::tls`] is known in every callback.
//! - **Codec** ([`codec`]): sans-IO framing. [`codec::Raw`] hands over whatever arrived,
//!   [`codec::LengthDelimited`] length-prefixed frames (any width, endianness and offset),
//!   [`codec::Lines`] `\n`-terminated lines, [`codec::Resp`] Redis protocol commands,
//!   [`codec::LineBody`] a header line then the body it announces (memcached, SMTP `BDAT`). A
//!   frame longer than the codec's limit is a decode error as soon as its header shows it, never
//!   an allocation of the announced size.
//!
//! ## The handler API
//!
//! [`Handler::on_frame`] is the one callback you must write; the others have defaults:
//! [`on_open`](Handler::on_open), [`on_read_closed`](Handler::on_read_closed) (the peer's EOF),
//! [`on_timer`](Handler::on_timer), [`on_notify`](Handler::on_notify),
//! [`on_writable`](Handler::on_writable), [`on_decode_error`](Handler::on_decode_error)
//! (default: close), [`on_shutdown`](Handler::on_shutdown), [`on_retire`](Handler::on_retire)
//! (a restart handed the port on) and [`on_close`](Handler::on_close) with its
//! [`CloseReason`]. Each gets a [`Conn`], the connection lent for the call:
//!
//! | you want | call |
//! |---|---|
//! | reply | [`Conn::write`], or [`Conn::send_frame`] (the codec adds header or terminator) |
//! | close after the replies / with a last word / reset / half-close | [`Conn::close`], [`Conn::close_after`], [`Conn::abort`], [`Conn::shutdown_write`] |
//! | run a request on a worker without losing its reply | [`Conn::work`] gives a [`Work`] (a [`ConnectionHandle`] counted until dropped): `work.write(reply)` from the job; [`pool::WorkerPool`] runs jobs |
//! | reach the connection from another thread | [`Conn::handle`] gives a [`ConnectionHandle`]: bounded writes ([`HandleError::Full`] above the high watermark), [`notify_when_writable`](ConnectionHandle::notify_when_writable), `close`, `notify` |
//! | a heartbeat, a deadline | [`Conn::set_timer`], [`Conn::cancel_timer`], [`Handler::on_timer`] |
//! | stop reading for a while | [`Conn::pause_reading`], [`Conn::resume_reading`] |
//! | open a connection | [`Conn::connect`] (same IO thread, a handle at once), [`Connector::connect`] from anywhere ([`Engine::connector`]) |
//! | who is connected | [`Conn::info`]: [`ConnInfo`] (peer, client, TLS, PROXY) |
//! | counters | [`ServerHandle::stats`] ([`StatsSnapshot`]); Prometheus: [`Engine::serve_metrics`] ([`metrics`]) |
//!
//! Callbacks run on the connection's IO thread: a handler that blocks stalls every connection
//! of that thread, so blocking work goes to a [`pool::WorkerPool`] through [`Work`].
//!
//! Beyond one handler per connection:
//!
//! - **Typed frames** ([`Server::typed`]): an [`ItemDecoder`](codec::ItemDecoder) yields parsed
//!   items (they may borrow the receive buffer) to an [`ItemHandler`]. A bad frame whose end is
//!   known ([`Decode::Bad`](codec::Decode::Bad)) is skipped, answered
//!   ([`ItemHandler::on_bad_frame`]) and counted, and the connection goes on; a decode error
//!   still closes. [`codec::LineBody`] is such a decoder.
//! - **Relay** ([`relay::Relay`]): one handler joins two connections both ways (a proxy), with
//!   flow control by watermark, half-close passed on and resets passed on; it can begin the
//!   upstream connection with a PROXY header ([`ConnectOptions::send_proxy`]).
//! - **Fan-out** ([`fanout::Room`]): one message to many connections at the pace of the slowest
//!   reader that keeps up; a member that holds a publisher up for the stall timeout is reset.
//! - **Unix sockets** ([`ListenAddr`]: `IP:PORT` or `unix:PATH`; [`Server::listen`],
//!   [`Server::unix`]): the same API; [`ConnInfo::unix`] has the peer's credentials.
//! - **Memory budget** ([`EngineBuilder::memory_budget`], [`Budget`]; default: a share of the
//!   cgroup memory limit, else of RAM): as what the server buffers for its clients grows, write
//!   watermarks shrink, reading pauses, new connections are refused, and at last the largest
//!   holders are reset ([`CloseReason::Overload`]); each step reverses as use falls. Handlers
//!   charge what they hold through [`Conn::budget`].
//!
//! ## Limits and close guarantees
//!
//! | limit | default | at the limit |
//! |---|---|---|
//! | open connections per server ([`Server::max_connections`]) | [`DEFAULT_MAX_CONNECTIONS`] | accepted and closed at once, counted; others unaffected |
//! | per client address ([`Server::max_connections_per_ip`], [`Server::accept_rate_per_ip`]) | off | accepted and closed at once, counted |
//! | frame / line length ([`codec::DEFAULT_MAX_FRAME`], [`codec::DEFAULT_MAX_LINE`]) | 1 MiB / 8 KiB | decode error: [`Handler::on_decode_error`], by default a close as [`CloseReason::Protocol`] |
//! | undecoded input ([`Server::max_buffered_input`]) | [`DEFAULT_MAX_BUFFERED_INPUT`], or the codec's longest frame | closed, [`CloseReason::Protocol`] |
//! | write queue ([`Server::write_watermarks`]) | [`DEFAULT_WRITE_LOW`] / [`DEFAULT_WRITE_HIGH`] | above high the connection stops being read until below low; handle writes get [`HandleError::Full`] |
//! | idle time ([`Server::idle_timeout`]) | off | graceful close, [`CloseReason::IdleTimeout`] |
//! | TLS handshake ([`Server::handshake_timeout`]) | [`DEFAULT_HANDSHAKE_TIMEOUT`] | reset, [`CloseReason::TlsHandshakeTimeout`] |
//! | PROXY header ([`Server::proxy_header_timeout`]) | v1 107 bytes, v2 4 KiB; [`DEFAULT_PROXY_HEADER_TIMEOUT`] | closed, [`CloseReason::ProxyHeader`] / [`CloseReason::ProxyHeaderTimeout`] |
//! | a closing connection's flush with no byte moving | [`FLUSH_STALL`] | reset, [`CloseReason::FlushStalled`] |
//! | drain at shutdown ([`EngineBuilder::drain_timeout`]) | 5 s | what is left is reset, [`CloseReason::DrainTimeout`] |
//! | accept errors (EMFILE, ...) | back-off doubling to [`MAX_ACCEPT_BACKOFF`] | accepting resumes by itself |
//! | a retired generation after a restart ([`EngineBuilder::restart_grace`]) | [`DEFAULT_RESTART_GRACE`] | drained as on shutdown |
//!
//! **No accepted request is silently lost.** A graceful close (by the handler, a handle, the
//! peer's EOF, a decode error, the idle timeout, a shutdown) first waits for every outstanding
//! [`Work`] and flushes everything queued, then lingers up to [`LINGER`] for the peer's EOF.
//! The exceptions are resets, each counted under its own [`CloseReason`]: the peer reset
//! ([`Reset`](CloseReason::Reset)), the peer stopped reading while we flushed
//! ([`FlushStalled`](CloseReason::FlushStalled)), the drain deadline
//! ([`DrainTimeout`](CloseReason::DrainTimeout)), a handler panic
//! ([`HandlerPanic`](CloseReason::HandlerPanic): only that connection, its handler is not
//! called again), an explicit [`Conn::abort`] ([`Local`](CloseReason::Local)). Once a close
//! has begun, timers stop and later writes are dropped; a handle answers
//! [`HandleError::Closed`]. Every limit, and how it is enforced, is in the repository's
//! `ARCHITECTURE.md`.
//!
//! ## Logging
//!
//! ringport logs through [`tracing`](https://docs.rs/tracing): a refused connection, a
//! protocol error, a TLS failure, the io_uring fallback, each is one line at `warn` or `debug`.
//! **Nothing shows until the program that embeds ringport installs a subscriber**; without
//! one, those lines are dropped. The example servers do it first thing in `main`, with
//! `tracing-subscriber` (and its `env-filter` feature, so `RUST_LOG=debug` works):
//!
//! ```
//! // In main(), before building the engine:
//! tracing_subscriber::fmt()
//!     .with_env_filter(
//!         tracing_subscriber::EnvFilter::try_from_default_env()
//!             .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
//!     )
//!     .init();
//! tracing::info!("logging is on");
//! ```
//!
//! `tracing_subscriber::fmt::init()` is the one-line version (`RUST_LOG` filters it too).
//!
//! ## Programs: the standard flags
//!
#![cfg_attr(
    feature = "cli",
    doc = "[`cli`] (cargo feature `cli`, on by default) gives a server binary the example servers'"
)]
#![cfg_attr(
    not(feature = "cli"),
    doc = "`ringport::cli` (cargo feature `cli`, on by default) gives a server binary the example servers'"
)]
//! flags (backend, IO threads, limits, TLS, PROXY, metrics, `--listen IP:PORT|unix:PATH`,
//! `--memory-budget`) and logging, in three calls. A library that depends on ringport turns it
//! off: `default-features = false, features = ["tls"]`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod budget;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
mod conn;
mod core;
mod engine;
mod error;
pub mod fanout;
mod handle;
mod handler;
mod info;
mod layer;
mod limits;
mod listen;
/// The connection's life as a sans-IO state machine (public only for the fuzz targets).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod machine;
#[cfg(not(feature = "fuzzing"))]
mod machine;
pub mod metrics;
pub mod pool;
pub mod relay;
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
pub use handler::{ConnectOptions, Frame, Handler, ItemHandler};
pub use info::{CloseReason, ConnInfo, PeerCred, ProxyInfo, ProxyVersion, TlsInfo, UnixPeer};
/// The layer stack under a fuzzer (`fuzz/fuzz_targets/layers.rs`); not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use layer::fuzzing;
pub use layer::{ProxyProtocol, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_PROXY_HEADER_TIMEOUT};
pub use listen::{ListenAddr, UNIX_PLACEHOLDER_ADDR};
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
