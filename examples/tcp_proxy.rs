//! tcp_proxy: every accepted connection opens one to `--upstream`, and bytes flow both ways
//! unchanged, through the library's [`Relay`]:
//!
//! ```text
//! client ──▶ [Relay] ──▶ upstream conn ──▶ upstream server
//! client ◀── [Relay] ◀── upstream conn ◀── upstream server
//! ```
//! - **Same thread.** The upstream connection is opened from the client's `on_open`, so both
//!   sides live on one IO thread: bytes never cross threads.
//! - **Flow control.** A side whose peer's write queue is above the high watermark stops
//!   reading until the peer drains: a client that never reads stops the upstream being read,
//!   and memory stays bounded by the watermarks.
//! - **Half-close.** A side's EOF is passed on as a FIN after everything queued; the other
//!   direction keeps flowing.
//! - **Failure.** An upstream that refuses, times out or resets closes the client, logged with
//!   the reason; a reset on either side resets the other.
//! - **PROXY out.** `--send-proxy v1|v2` begins each upstream connection with a PROXY header
//!   carrying the client's address (HAProxy's `send-proxy` / `send-proxy-v2`).
//!
//! ```text
//! cargo run --release --example echo_server &
//! cargo run --release --example tcp_proxy -- --upstream 127.0.0.1:5001
//! socat - TCP:127.0.0.1:5006
//! ```
//! With `--upstream-tls --upstream-ca CA.pem` the upstream connection speaks TLS (plaintext in,
//! TLS out), verifying the upstream as `--upstream-name` (default: the upstream's IP address).
//! With `--tls-cert`/`--tls-key` it is a TLS terminator in front of a plaintext upstream.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ringport::cli;
use ringport::codec::Raw;
use ringport::relay::Relay;
use ringport::{ConnectOptions, ProxyVersion, Server};

#[derive(Parser, Debug)]
#[command(about = "ringport TCP proxy: bytes both ways between each client and --upstream")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5006")]
    listen: String,
    /// Where every accepted connection is forwarded
    #[arg(long)]
    upstream: SocketAddr,
    /// Seconds to wait for the upstream to accept before closing the client
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    connect_timeout: u64,
    /// Begin each upstream connection with a PROXY protocol header (v1 or v2) carrying the
    /// client's address [default: none]
    #[arg(long, value_name = "VERSION")]
    send_proxy: Option<ProxyVersion>,
    /// Bytes each receive takes at most (a larger one: fewer receives, writes and sends per
    /// forwarded byte)
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 10)]
    recv_buffer_size: usize,
    #[command(flatten)]
    upstream_tls: cli::UpstreamTlsArgs,
    #[command(flatten)]
    server: cli::ServerArgs,
}

fn main() {
    let args = Args::parse();
    let recv_buffer_size = args.recv_buffer_size;
    let mut engine = args
        .server
        .engine_with(|b| b.recv_buffer_size(recv_buffer_size));
    let tls = args
        .upstream_tls
        .connect_options(&args.upstream.ip().to_string());
    let options =
        ConnectOptions::default().timeout(Some(Duration::from_secs(args.connect_timeout)));
    let options = cli::with_tls(options, &tls);
    let (upstream, send_proxy) = (args.upstream, args.send_proxy);
    let server = Server::listen(cli::listen_addr(&args.listen), Raw, move |_| {
        Relay::to(upstream, options.clone()).send_proxy(send_proxy)
    });
    let server = args.server.add(&mut engine, server);
    cli::run(engine, &[&server]);
}
