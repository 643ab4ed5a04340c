//! `ringport-load`: an event-driven TCP load client for ringport's example
//! servers (echo, length-prefixed packets, line protocol). Every reply is
//! verified byte for byte; errors are counted by kind and make the exit
//! status non-zero.
//!
//! Layout: this file has the CLI, the run orchestration and the output;
//! `proto` builds and verifies messages, `conn` is one connection's state
//! machine, `worker` is one thread's event loop, `report` the statistics.

mod blocking;
mod conn;
mod proto;
mod report;
mod tls;
mod worker;

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};

use proto::{FrameLayout, Mode, Proto};
use report::{RunInfo, Summary};
use worker::{Config, Limit, Padded, Shared, Worker};

#[derive(Parser, Debug)]
#[command(
    name = "ringport-load",
    version,
    about = "Load client for ringport's echo / packet / line servers; verifies every reply"
)]
struct Cli {
    #[command(subcommand)]
    mode: ModeCmd,
}

#[derive(Subcommand, Debug)]
enum ModeCmd {
    /// Raw payloads; the server echoes the same bytes back.
    Echo(Common),
    /// Length-prefixed frames; the server echoes each frame unchanged.
    Packet {
        #[command(flatten)]
        common: Common,
        /// Length header width in bytes.
        #[arg(long, default_value_t = 4, value_parser = parse_width)]
        length_width: u8,
        /// Little-endian length header (default big-endian).
        #[arg(long)]
        little_endian: bool,
        /// The length value counts the header too (default: payload only).
        #[arg(long)]
        length_includes_header: bool,
    },
    /// Line protocol: greeting `+OK ready`, then `ECHO <payload>` -> `+<payload>`.
    Line(Common),
}

/// How the client drives its connections.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ClientStyle {
    /// A few threads, each running an event loop (mio) over many
    /// non-blocking connections.
    Event,
    /// One thread per connection, a blocking socket, one message in flight
    /// (the rust_echo_bench style).
    Blocking,
}

impl ClientStyle {
    fn name(self) -> &'static str {
        match self {
            ClientStyle::Event => "event",
            ClientStyle::Blocking => "blocking",
        }
    }
}

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("limit").required(true).args(["duration", "messages"])))]
struct Common {
    /// Server address (host:port).
    #[arg(long)]
    target: String,
    /// Client style: `event` (event loops, any pipeline or rate) or
    /// `blocking` (a thread per connection, one message in flight).
    #[arg(long, value_enum, default_value_t = ClientStyle::Event)]
    client: ClientStyle,
    /// Number of connections.
    #[arg(short = 'c', long = "connections", default_value_t = 1)]
    connections: u64,
    /// Payload size in bytes (packet: excluding the length header).
    #[arg(short = 'l', long = "length")]
    length: usize,
    /// Run for this many seconds (after the warm-up).
    #[arg(short = 'd', long = "duration")]
    duration: Option<f64>,
    /// Send this many messages per connection, then stop.
    #[arg(short = 'n', long = "messages")]
    messages: Option<u64>,
    /// Messages outstanding per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pipeline: u32,
    /// Open loop: total messages per second over all connections; latency
    /// counts from each message's scheduled send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of warm-up whose samples are discarded.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long)]
    json: bool,
    /// Per-attempt connect timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Worker threads (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// Connects in flight at once over all threads.
    #[arg(long, default_value_t = 256)]
    connect_batch: usize,
    /// With -n: give up this many seconds after the start (open loop: after
    /// the schedule's end); unfinished connections count as `timeout` errors.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Keep the connections open this many seconds after the load ends
    /// (e.g. to measure the server's memory); a line on stderr says when
    /// the hold starts.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Close each connection and open a new one after every N messages (with
    /// --tls, a full handshake each time); the report gives handshakes/s.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    reconnect_every: Option<u64>,
    /// Speak TLS (rustls); needs --ca PEM or --insecure.
    #[arg(long)]
    tls: bool,
    /// With --tls: trust the server's certificate if a CA in this PEM file signed it.
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls",
        conflicts_with = "insecure"
    )]
    ca: Option<std::path::PathBuf>,
    /// With --tls: accept any server certificate (benchmarks only).
    #[arg(long, requires = "tls")]
    insecure: bool,
    /// With --tls: the name the certificate must carry, also sent as SNI
    /// [default: the host of --target].
    #[arg(long, requires = "tls")]
    server_name: Option<String>,
}

fn parse_width(s: &str) -> Result<u8, String> {
    match s {
        "1" | "2" | "4" | "8" => Ok(s.parse().expect("digit")),
        _ => Err("must be 1, 2, 4 or 8".into()),
    }
}

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("--{name} must be a non-negative number of seconds"))
}

/// Raises the open-files soft limit to the hard limit; returns the new limit.
#[cfg(unix)]
fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok(lim.rlim_cur as u64)
}

/// Windows has no open-files limit of that kind: sockets are limited by memory only.
#[cfg(not(unix))]
fn raise_nofile_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

fn build_config(cli: Cli) -> Result<(Config, Common, usize), String> {
    let (common, mode) = match cli.mode {
        ModeCmd::Echo(c) => (c, Mode::Echo),
        ModeCmd::Line(c) => (c, Mode::Line),
        ModeCmd::Packet {
            common,
            length_width,
            little_endian,
            length_includes_header,
        } => (
            common,
            Mode::Packet(FrameLayout::new(
                length_width,
                little_endian,
                length_includes_header,
            )?),
        ),
    };
    if common.connections == 0 {
        return Err("-c must be at least 1".into());
    }
    let proto = Proto::new(mode, common.length)?;
    let addr: SocketAddr = common
        .target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", common.target))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", common.target))?;
    let limit = match (common.duration, common.messages) {
        (Some(d), None) => Limit::Duration(secs("duration", d)?),
        (None, Some(n)) => Limit::Messages {
            per_conn: n,
            timeout: secs("timeout", common.timeout)?,
        },
        _ => return Err("give exactly one of -d and -n".into()),
    };
    if let Some(r) = common.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err("--rate must be a positive number".into());
        }
    }
    if common.client == ClientStyle::Blocking {
        if common.pipeline != 1 {
            return Err(
                "--client blocking keeps one message in flight: --pipeline must be 1".into(),
            );
        }
        if common.rate.is_some() {
            return Err("--client blocking is closed loop: --rate is not supported".into());
        }
    }
    let threads = match common.client {
        ClientStyle::Event => common.threads,
        ClientStyle::Blocking => Some(common.connections as usize),
    };
    let threads = threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, common.connections as usize);
    let cfg = Config {
        addr,
        proto,
        total_conns: common.connections,
        pipeline: common.pipeline as usize,
        rate: common.rate,
        warmup: secs("warmup", common.warmup)?,
        limit,
        connect_timeout: secs("connect-timeout", common.connect_timeout)?,
        connect_batch: match common.client {
            // Event: each worker connects its share in batches.
            ClientStyle::Event => common.connect_batch.div_ceil(threads).max(1),
            // Blocking: one gate over all connection threads.
            ClientStyle::Blocking => common.connect_batch.max(1),
        },
        reconnect_every: common.reconnect_every,
        tls: match common.tls {
            true => {
                let host = common.target.rsplit_once(':').map_or("", |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = common.server_name.as_deref().unwrap_or(host);
                Some(tls::TlsClient::new(
                    common.ca.as_deref(),
                    common.insecure,
                    name,
                )?)
            }
            false => None,
        },
    };
    secs("hold", common.hold)?;
    Ok((cfg, common, threads))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (cfg, common, threads) = match build_config(cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ringport-load: {e}");
            return ExitCode::from(2);
        }
    };
    match raise_nofile_limit() {
        Ok(limit) if limit < common.connections + 64 => eprintln!(
            "ringport-load: warning: open-files limit {limit} is too low for {} connections",
            common.connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("ringport-load: warning: cannot raise open-files limit: {e}"),
    }
    let summary = run(&cfg, &common, threads);
    if common.json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("summary serializes")
        );
    } else {
        report::print_text(&summary);
    }
    if summary.errors > 0 || summary.connections < common.connections {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A thread to join: an event-loop worker (with its results) or a
/// connection thread of the blocking client (results in its pool).
enum Joined<'scope> {
    Worker(std::thread::ScopedJoinHandle<'scope, report::WorkerResult>),
    Conn(std::thread::ScopedJoinHandle<'scope, ()>),
}

fn run(cfg: &Config, common: &Common, threads: usize) -> Summary {
    let blocking = common.client == ClientStyle::Blocking;
    let counters = if blocking {
        blocking::shard_count(cfg.total_conns)
    } else {
        threads
    };
    let shared = Shared {
        connected: Barrier::new(threads + 1),
        done: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        progress: (0..counters).map(|_| Padded::default()).collect(),
    };
    let pool = blocking.then(|| blocking::Pool::new(cfg));
    let tty = std::io::stderr().is_terminal();
    let connect_start = Instant::now();
    let mut connect_phase = Duration::ZERO;
    let mut results = std::thread::scope(|s| {
        let handles: Vec<_> = match &pool {
            Some(pool) => match pool.spawn(s, cfg, &shared) {
                Ok(h) => h.into_iter().map(Joined::Conn).collect(),
                Err(e) => {
                    // The threads already started wait at the barrier forever.
                    eprintln!("ringport-load: cannot start a thread per connection: {e}");
                    std::process::exit(2);
                }
            },
            None => (0..threads)
                .map(|t| {
                    // Connections are dealt round-robin over the threads.
                    let ids: Vec<u64> = (t as u64..cfg.total_conns).step_by(threads).collect();
                    let shared = &shared;
                    std::thread::Builder::new()
                        .name(format!("load-{t}"))
                        .spawn_scoped(s, move || {
                            Worker::new(t, cfg, shared, ids).expect("create poll").run()
                        })
                        .expect("spawn worker")
                })
                .map(Joined::Worker)
                .collect(),
        };

        if tty {
            eprint!("connecting {} connection(s)...", cfg.total_conns);
        }
        shared.connected.wait();
        connect_phase = connect_start.elapsed();
        let load_start = Instant::now();
        let mut last_print = load_start;
        let mut last_count = 0u64;
        while shared.done.load(Ordering::Acquire) < threads {
            std::thread::sleep(Duration::from_millis(20));
            if tty && last_print.elapsed() >= Duration::from_secs(1) {
                let count: u64 = shared
                    .progress
                    .iter()
                    .map(|p| p.0.load(Ordering::Relaxed))
                    .sum();
                let dt = last_print.elapsed().as_secs_f64();
                eprint!(
                    "\r\x1b[K[{:>5.1} s] {} messages, {:.0} msg/s",
                    load_start.elapsed().as_secs_f64(),
                    count,
                    (count.saturating_sub(last_count)) as f64 / dt
                );
                let _ = std::io::stderr().flush();
                last_print = Instant::now();
                last_count = count;
            }
        }
        if tty {
            eprint!("\r\x1b[K");
        }
        if common.hold > 0.0 {
            eprintln!(
                "ringport-load: holding connections open for {} s",
                common.hold
            );
            std::thread::sleep(Duration::from_secs_f64(common.hold));
        }
        shared.stop.store(true, Ordering::Release);
        handles
            .into_iter()
            .filter_map(|h| match h {
                Joined::Worker(h) => Some(h.join().expect("worker panicked")),
                Joined::Conn(h) => {
                    h.join().expect("connection thread panicked");
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    if let Some(pool) = pool {
        results.extend(pool.into_results());
    }
    let info = RunInfo {
        client: common.client.name().to_string(),
        mode: cfg.proto.mode().name().to_string(),
        target: cfg.addr.to_string(),
        threads,
        connections_requested: cfg.total_conns,
        payload_bytes: cfg.proto.payload_len(),
        pipeline: cfg.pipeline,
        rate: cfg.rate,
        warmup: cfg.warmup,
        connect_phase,
    };
    report::summarize(info, results)
}
