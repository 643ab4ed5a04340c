//! What every example server shares: the common flags, logging, and the start-up line.
//! Copy this file along with the example you start from.
#![allow(dead_code)]

use std::time::Duration;

pub mod line_protocol;
pub mod tls;

use clap::Args;
use ringport::codec::{Endian, LengthDelimited};
use ringport::{BackendKind, Engine, ProxyProtocol, Server, ServerHandle};

/// The flags every example server takes.
#[derive(Args, Debug)]
pub struct CommonArgs {
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
    pub metrics: Option<std::net::SocketAddr>,
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
    #[command(flatten)]
    pub tls: tls::TlsArgs,
}

impl CommonArgs {
    /// The engine these flags ask for; exits with a one-line error if it cannot be built
    /// (e.g. `--backend uring` where io_uring is unavailable).
    pub fn engine(&self, recv_buffer_size: Option<usize>) -> Engine {
        init_logging();
        let mut b = Engine::builder()
            .backend(self.backend)
            .drain_timeout(Duration::from_secs(self.drain_timeout))
            // SIGHUP: a successor (same binary and arguments) takes over the listeners.
            .restart_on_sighup(true, Duration::from_secs(30))
            .restart_grace(Duration::from_secs(self.restart_grace));
        if let Some(n) = self.io_threads {
            b = b.io_threads(n);
        }
        if let Some(n) = recv_buffer_size {
            b = b.recv_buffer_size(n);
        }
        if let Some(n) = self.memory_budget {
            b = b.memory_budget(n);
        }
        let mut engine = b.build().unwrap_or_else(|e| fail(e));
        if let Some(addr) = self.metrics {
            let m = engine.serve_metrics(addr).unwrap_or_else(|e| fail(e));
            println!("metrics on {}", m.local_addr());
        }
        // Before the `listening on` line: a signal sent right after it must find the handler.
        engine.catch_signals().unwrap_or_else(|e| fail(e));
        engine
    }

    /// Applies the connection limits to `server` and adds it to `engine`.
    pub fn add(&self, engine: &mut Engine, server: Server) -> ServerHandle {
        let server = server
            .max_connections(self.max_connections)
            .idle_timeout(self.idle_timeout.map(Duration::from_secs))
            .max_connections_per_ip(self.max_connections_per_ip)
            .reuse_port(self.reuse_port);
        let server = match self.accept_rate_per_ip {
            Some(rate) => server.accept_rate_per_ip(rate, self.accept_burst_per_ip.unwrap_or(rate)),
            None => server,
        };
        let server = self.tls.apply(server);
        // The PROXY header is read below TLS, whatever the order of these calls.
        let server = match self.proxy_protocol {
            Some(mode) => server
                .proxy_protocol(mode)
                .proxy_header_timeout(Duration::from_secs(self.proxy_header_timeout)),
            None => server,
        };
        engine.add_server(server).unwrap_or_else(|e| fail(e))
    }
}

/// The length-field layout flags of the packet servers.
#[derive(Args, Debug)]
pub struct LayoutArgs {
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

impl LayoutArgs {
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

/// Prints the one line tests and tools wait for, then runs until SIGINT/SIGTERM.
pub fn run(engine: Engine, servers: &[&ServerHandle]) {
    for s in servers {
        println!(
            "listening on {} (backend: {})",
            s.local_addr(),
            engine.backend_name()
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Err(e) = engine.run() {
        fail(e);
    }
    for s in servers {
        tracing::info!(addr = %s.local_addr(), stats = ?s.stats().snapshot(), "stopped");
    }
}

/// `RUST_LOG`-filtered logs on stderr (default: info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal()) // no colour codes in log files
        .with_writer(std::io::stderr)
        .try_init();
}

/// Exits with a one-line error.
pub fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1);
}
