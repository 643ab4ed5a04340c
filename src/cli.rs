//! The standard server flags, for binaries built on ringport (feature `cli`, on by default).
//!
//! Every example server flattens [`ServerArgs`] into its own [clap] flags, so one file is a
//! whole server: its own flags (the listen address with its default, protocol limits), the
//! shared ones (backend, IO threads, connection limits, TLS, PROXY, metrics, reuse-port,
//! drain and restart grace), and three calls:
//!
//! ```
//! # use std::io::{Read, Write};
//! use clap::Parser;
//! use ringport::codec::Raw;
//! use ringport::{cli, Conn, Frame, Handler, Server};
//!
//! #[derive(Parser)]
//! struct Args {
//!     /// IP:PORT (port 0: any free port) or unix:PATH to listen on
//!     #[arg(long, default_value = "127.0.0.1:5001")]
//!     listen: String,
//!     #[command(flatten)]
//!     server: cli::ServerArgs,
//! }
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
//!         conn.write(frame.raw());
//!     }
//! }
//!
//! // A program reads its own command line: `Args::parse()`. Here, a fixed one:
//! let args = Args::parse_from(["echo", "--listen", "127.0.0.1:0", "--io-threads", "1"]);
//! let mut engine = args.server.engine(); // logging, metrics, signals
//! let listen = cli::listen_addr(&args.listen);
//! let server = args.server.add(&mut engine, Server::listen(listen, Raw, |_| Echo));
//! // A program ends with `cli::run(engine, &[&server]);`: it prints `listening on ...`,
//! // then serves until SIGINT/SIGTERM. Here the engine runs in the background instead:
//! let running = engine.start()?;
//! # let mut client = std::net::TcpStream::connect(server.local_addr())?;
//! # client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! # client.write_all(b"hello")?;
//! # let mut reply = [0u8; 5];
//! # client.read_exact(&mut reply)?;
//! # assert_eq!(&reply, b"hello");
//! # drop(client);
//! running.shutdown_handle().shutdown(); // what SIGTERM does
//! running.join();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This module is for programs, not libraries: a flag that cannot be honoured (a bad
//! certificate file, a port in use, `--backend uring` without io_uring) prints one line,
//! `error: ...`, on stderr and exits with status 1 ([`fail`]).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::codec::{Endian, LengthDelimited};
use crate::{BackendKind, Engine, EngineBuilder, ListenAddr, ProxyProtocol, Server, ServerHandle};

#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
pub use tls::{with_tls, TlsArgs, UpstreamTlsArgs};

/// How long a SIGHUP successor has to report ready before the old process keeps serving.
const SUCCESSOR_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags every server shares; `#[command(flatten)]` it into a binary's own flags.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// auto | uring | epoll | iocp | poll (auto: io_uring when available, else epoll with a
    /// warning; iocp on Windows)
    #[arg(long, env = "RINGPORT_BACKEND", default_value = "auto")]
    pub backend: BackendKind,
    /// IO threads [default: available parallelism]
    #[arg(long)]
    pub io_threads: Option<usize>,
    /// Open connections allowed; more are accepted and closed at once
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Close connections idle (nothing received, no send completed) this many seconds [default: off]
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// On SIGINT/SIGTERM, seconds to flush queued replies before resetting what is left
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub drain_timeout: u64,
    /// After a SIGHUP restart, seconds the old process serves its open connections (it
    /// accepts nothing more; it exits once the last closes) before draining what is left
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub restart_grace: u64,
    /// Open connections allowed per client IP address [default: no limit]
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// New connections allowed per client IP address per second [default: no limit]
    #[arg(long, value_name = "N")]
    pub accept_rate_per_ip: Option<u32>,
    /// Burst of new connections per IP above --accept-rate-per-ip [default: the rate]
    #[arg(long, value_name = "N")]
    pub accept_burst_per_ip: Option<u32>,
    /// Let other processes listen on the same port (SO_REUSEPORT: the kernel spreads new
    /// connections over all of them); without it, an address another process listens on fails
    #[arg(long)]
    pub reuse_port: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port; a
    /// `metrics on ADDR` line says which)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Read a PROXY protocol header (v1 or v2, as HAProxy's send-proxy / send-proxy-v2 write
    /// it) before anything else: required (every connection has one) or optional (a header
    /// if the first bytes are one) [default: none]
    #[arg(long, value_name = "MODE")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Seconds a connection has to deliver its PROXY header
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub proxy_header_timeout: u64,
    /// Memory budget in bytes for what the server buffers for its clients; as it fills,
    /// write watermarks shrink, reading pauses, new connections are refused and at the top
    /// the biggest holders are reset [default: 3/8 of the cgroup memory limit, else of RAM]
    #[arg(long, value_name = "BYTES")]
    pub memory_budget: Option<usize>,
    /// The TLS flags (`--tls-cert`, `--tls-key`, ...).
    #[cfg(feature = "tls")]
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ServerArgs {
    /// The engine these flags ask for, with logging on ([`init_logging`]), the metrics
    /// endpoint serving (`metrics on ADDR` printed) and SIGINT/SIGTERM/SIGHUP caught; exits
    /// with a one-line error if it cannot be built.
    pub fn engine(&self) -> Engine {
        self.engine_with(|b| b)
    }

    /// [`engine`](Self::engine), with `customize` applied to the builder last (e.g. a
    /// receive buffer size of the binary's own).
    pub fn engine_with(&self, customize: impl FnOnce(EngineBuilder) -> EngineBuilder) -> Engine {
        init_logging();
        let mut b = Engine::builder()
            .backend(self.backend)
            .drain_timeout(Duration::from_secs(self.drain_timeout))
            // SIGHUP: a successor (same binary and arguments) takes over the listeners.
            .restart_on_sighup(true, SUCCESSOR_READY_TIMEOUT)
            .restart_grace(Duration::from_secs(self.restart_grace));
        if let Some(n) = self.io_threads {
            b = b.io_threads(n);
        }
        if let Some(n) = self.memory_budget {
            b = b.memory_budget(n);
        }
        let mut engine = customize(b).build().unwrap_or_else(|e| fail(e));
        if let Some(addr) = self.metrics {
            let m = engine.serve_metrics(addr).unwrap_or_else(|e| fail(e));
            println!("metrics on {}", m.local_addr());
        }
        // Before the `listening on` line: a signal sent right after it must find the handler.
        engine.catch_signals().unwrap_or_else(|e| fail(e));
        engine
    }

    /// `server` with the connection limits, TLS and PROXY settings of these flags.
    pub fn configure(&self, server: Server) -> Server {
        let server = server
            .max_connections(self.max_connections)
            .idle_timeout(self.idle_timeout.map(Duration::from_secs))
            .max_connections_per_ip(self.max_connections_per_ip)
            .reuse_port(self.reuse_port);
        let server = match self.accept_rate_per_ip {
            Some(rate) => server.accept_rate_per_ip(rate, self.accept_burst_per_ip.unwrap_or(rate)),
            None => server,
        };
        #[cfg(feature = "tls")]
        let server = self.tls.apply(server);
        // The PROXY header is read below TLS, whatever the order of these calls.
        match self.proxy_protocol {
            Some(mode) => server
                .proxy_protocol(mode)
                .proxy_header_timeout(Duration::from_secs(self.proxy_header_timeout)),
            None => server,
        }
    }

    /// [`configure`](Self::configure)s `server` and adds it to `engine` (it listens from
    /// now on); exits with a one-line error if it cannot listen.
    pub fn add(&self, engine: &mut Engine, server: Server) -> ServerHandle {
        engine
            .add_server(self.configure(server))
            .unwrap_or_else(|e| fail(e))
    }
}

/// The address a `--listen` flag names (`IP:PORT`, port 0: any free port; or `unix:PATH`, a
/// Unix domain socket), for [`Server::listen`]; exits with a one-line error for anything else.
pub fn listen_addr(listen: &str) -> ListenAddr {
    listen
        .parse()
        .unwrap_or_else(|e| fail(format!("--listen: {e}")))
}

/// The length-field layout flags of a length-prefixed protocol ([`LengthDelimited`]).
#[derive(Args, Debug)]
pub struct LengthFieldArgs {
    /// Bytes in the length field: 1, 2, 4 or 8
    #[arg(long, default_value_t = 4)]
    pub length_width: u8,
    /// The length field is little-endian (default: big-endian)
    #[arg(long)]
    pub little_endian: bool,
    /// The length counts the header too (default: the payload only)
    #[arg(long)]
    pub length_includes_header: bool,
}

impl LengthFieldArgs {
    /// The codec these flags describe, accepting payloads up to `max_frame` bytes; exits with
    /// a one-line error for an unsupported width.
    pub fn codec(&self, max_frame: usize) -> LengthDelimited {
        let endian = if self.little_endian {
            Endian::Little
        } else {
            Endian::Big
        };
        LengthDelimited::with_layout(self.length_width, endian, self.length_includes_header)
            .unwrap_or_else(|e| fail(e))
            .max_frame(max_frame)
    }
}

/// Prints the line tests and tools wait for, `listening on ADDR (backend: NAME)`, once per
/// server, then runs the engine until SIGINT/SIGTERM (or a SIGHUP successor takes over) and
/// logs each server's final counters.
pub fn run(engine: Engine, servers: &[&ServerHandle]) {
    for s in servers {
        println!(
            "listening on {} (backend: {})",
            s.listen_addr(),
            engine.backend_name()
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Err(e) = engine.run() {
        fail(e);
    }
    for s in servers {
        tracing::info!(addr = %s.listen_addr(), stats = ?s.stats().snapshot(), "stopped");
    }
}

/// Logs on stderr, filtered by `RUST_LOG` (default: `info`), without colour codes unless
/// stderr is a terminal. Does nothing if a subscriber is already installed.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints `error: {e}` on stderr and exits with status 1.
pub fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let f = Flags::try_parse_from(["x"]).unwrap();
        assert_eq!(f.server.max_connections, 10_000);
        assert_eq!(f.server.drain_timeout, 5);
        assert_eq!(f.server.restart_grace, 300);
        assert_eq!(f.server.proxy_header_timeout, 5);
        assert!(!f.server.reuse_port);
        assert!(f.server.proxy_protocol.is_none());
    }

    #[test]
    fn flags_parse_into_their_fields() {
        let f = Flags::try_parse_from([
            "x",
            "--backend",
            "epoll",
            "--io-threads",
            "3",
            "--accept-rate-per-ip",
            "10",
            "--proxy-protocol",
            "required",
        ])
        .unwrap();
        assert_eq!(f.server.backend, BackendKind::Epoll);
        assert_eq!(f.server.io_threads, Some(3));
        assert_eq!(f.server.accept_rate_per_ip, Some(10));
        assert!(f.server.proxy_protocol.is_some());
    }

    #[test]
    fn listen_addr_parses_ip_and_port_or_a_unix_path() {
        assert_eq!(listen_addr("127.0.0.1:0").tcp().map(|a| a.port()), Some(0));
        assert_eq!(
            listen_addr("unix:/run/x.sock").unix_path(),
            Some(std::path::Path::new("/run/x.sock"))
        );
    }
}
