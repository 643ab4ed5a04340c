//! echo_server: the engine alone. Every byte received is sent back.
//!
//! ```text
//! cargo run --release --example echo_server -- --listen 127.0.0.1:5001
//! nc 127.0.0.1 5001
//! ```
//! Start here when your protocol has no framing of its own, or to see the engine's cost.

use clap::Parser;
use ringport::cli;
use ringport::codec::Raw;
use ringport::{Conn, Frame, Handler, Server};

#[derive(Parser, Debug)]
#[command(about = "ringport echo server: echoes every byte back")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5001")]
    listen: String,
    #[command(flatten)]
    server: cli::ServerArgs,
}

/// Per-connection state: none is needed to echo.
struct Echo;

impl Handler for Echo {
    // With the `Raw` codec a "frame" is whatever bytes arrived. `write` only queues: the engine
    // sends once per connection per loop turn, however many frames were echoed.
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
    // The default `on_read_closed` flushes what is queued, then closes: a client that
    // half-closes gets all its echo, then EOF.
}

fn main() {
    let args = Args::parse();
    let mut engine = args.server.engine();
    let server = args.server.add(
        &mut engine,
        Server::listen(cli::listen_addr(&args.listen), Raw, |_| Echo),
    );
    cli::run(engine, &[&server]);
}
