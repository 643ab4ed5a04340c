//! packet_echo_server: length-prefixed frames, each echoed back unchanged (header included).
//!
//! The default layout is tokio-util's `LengthDelimitedCodec` default: a 4-byte big-endian
//! length of the payload, then the payload. Flags select other layouts, e.g. the classic
//! 2-byte little-endian length that counts its own header:
//! ```text
//! packet_echo_server --length-width 2 --little-endian --length-includes-header
//! printf '\x00\x00\x00\x05hello' | nc -q1 127.0.0.1 5002 | xxd
//! ```
//! A frame announcing more than `--max-frame` is logged and closes its connection only.

use clap::Parser;
use ringport::cli;
use ringport::{Conn, Frame, Handler, Server};

#[derive(Parser, Debug)]
#[command(about = "ringport packet echo server: echoes length-prefixed frames")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5002")]
    listen: String,
    /// Largest payload accepted, in bytes; a bigger announced length closes the connection
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_frame: usize,
    #[command(flatten)]
    layout: cli::LengthFieldArgs,
    #[command(flatten)]
    server: cli::ServerArgs,
}

/// Per-connection state: none; the codec reassembles frames however the bytes arrive.
struct PacketEcho;

impl Handler for PacketEcho {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        // `raw()` is the frame as it came: header and payload. `payload()` is the body alone.
        conn.write(frame.raw());
    }
}

fn main() {
    let args = Args::parse();
    let codec = args.layout.codec(args.max_frame);
    let mut engine = args.server.engine();
    let server = args.server.add(
        &mut engine,
        Server::listen(cli::listen_addr(&args.listen), codec, |_| PacketEcho),
    );
    cli::run(engine, &[&server]);
}
