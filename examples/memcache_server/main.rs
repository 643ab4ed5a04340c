//! memcache_server: a memcached text-protocol server (the common commands), the showcase of
//! the typed `LineBody` codec: a command line followed by a data block of the length it
//! announces, parsed once by the codec and handed over as a `Command` with its body.
//!
//! ```text
//! $ nc -C 127.0.0.1 11311
//! set greeting 0 0 5        → (then "hello")  STORED
//! get greeting              → VALUE greeting 0 5 / hello / END
//! incr n 1                  → NOT_FOUND
//! ```
//! Commands: get gets set add replace append prepend cas delete incr decr touch flush_all
//! version, with `noreply`. A bad line or data block is answered (`ERROR`,
//! `CLIENT_ERROR bad data chunk`, `SERVER_ERROR object too large for cache`) and the
//! connection goes on, as memcached's does; a line over --max-line closes it.

mod protocol;
mod session;
mod store;

use std::sync::Arc;

use clap::Parser;
use ringport::cli;
use ringport::codec::LineBody;
use ringport::Server;

#[derive(Parser, Debug)]
#[command(about = "ringport memcache server: memcached's text protocol (get/set/cas/incr/...)")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:11311")]
    listen: String,
    /// Largest value, in bytes (memcached's -I); a larger one is refused and skipped
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    max_item_size: usize,
    /// Longest command line, in bytes; a longer one closes the connection
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    max_line: usize,
    /// Bytes of keys and values stored, in MiB (memcached's -m); beyond it stores are refused
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    memory_limit: usize,
    #[command(flatten)]
    server: cli::ServerArgs,
}

fn main() {
    let args = Args::parse();
    let mut engine = args.server.engine();
    let store = Arc::new(store::Store::new(args.memory_limit.saturating_mul(1 << 20)));
    let codec = LineBody::new(protocol::Parser, args.max_line, args.max_item_size);
    let max_item = args.max_item_size;
    let server = Server::typed(cli::listen_addr(&args.listen), codec, move |_| {
        session::Session {
            store: store.clone(),
            max_item,
        }
    });
    let server = args.server.add(&mut engine, server);
    cli::run(engine, &[&server]);
}
