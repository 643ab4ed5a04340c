//! resp_server: a Redis-protocol key-value server, spoken to by redis-cli, redis-py,
//! redis-benchmark and every other Redis client.
//!
//! ```text
//! $ cargo run --release --example resp_server          # 127.0.0.1:6380
//! $ redis-cli -p 6380 SET greeting hello               → OK
//! $ redis-cli -p 6380 GET greeting                     → "hello"
//! ```
//!
//! How it is built (each part is a file you can copy):
//!
//! - **Framing**: the [`Resp`] codec from `ringport::codec` turns the byte stream into whole
//!   commands (arrays of bulk strings, or inline lines typed in telnet) with Redis's limits; a
//!   frame reaches [`Session::on_frame`] only when the whole command has arrived, borrowed
//!   from the receive buffer. Bad input gets `-ERR Protocol error: ...` and that connection
//!   closes (counted in `INFO` as `protocol_errors`); nobody else notices.
//! - **Commands** (`common/resp_commands.rs`): a table of name, arity and function; the
//!   dispatch checks arity and `--maxmemory` the way Redis does and answers with Redis's exact
//!   error texts. Replies go straight into the connection's write queue; pipelined commands
//!   are answered in order (one connection's frames run one after another on its IO thread).
//!   A client that sends `HELLO 3` (redis-py 8 does by default) gets RESP3 nulls and maps.
//! - **Keyspace** (`common/resp_store.rs`): 64 shards, each a `Mutex<HashSet>`, chosen by key
//!   hash, shared by all IO threads: no global lock, a lock held for one map operation.
//!   Expiry is checked lazily on access (an expired key reads as missing); a small thread of
//!   this server sweeps expired keys out of 8 shards every 100 ms. The engine's timers belong
//!   to connections (`Conn::set_timer`), and the keyspace outlives every connection, so the
//!   sweep is not a connection's job.
//! - **Memory**: `--maxmemory BYTES` (0: unlimited) bounds the estimated size of keys and
//!   values; beyond it writes answer `-OOM ...` (Redis's `noeviction` policy), reads and
//!   deletes still work. A client that never reads its replies costs at most about 4 MiB of
//!   queued replies (plus one reply): beyond that its next command is held back
//!   ([`Conn::hold_frame`]) and the engine's write watermarks stop reading from it.
//!
//! Commands: PING ECHO GET SET (EX PX NX XX KEEPTTL) GETSET DEL EXISTS INCR INCRBY DECR DECRBY
//! APPEND STRLEN MGET MSET EXPIRE PEXPIRE TTL PTTL PERSIST DBSIZE FLUSHALL SELECT(0) QUIT, and
//! for clients and tools: CONFIG GET, COMMAND (empty), CLIENT SETNAME/GETNAME/SETINFO/ID,
//! HELLO 2|3, INFO.

mod common;
#[path = "common/resp_commands.rs"]
mod resp_commands;
#[path = "common/resp_store.rs"]
mod resp_store;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ringport::codec::resp::{protocol_error_reply, Command};
use ringport::codec::{DecodeError, Resp};
use ringport::{CloseReason, Conn, ConnInfo, Frame, Handler, Server};

use resp_commands::{execute, Client, Flow, Stats};
use resp_store::Store;

#[derive(Parser, Debug)]
#[command(about = "ringport RESP server: a Redis-protocol key-value store")]
struct Args {
    /// Address to listen on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:6380")]
    listen: SocketAddr,
    /// Longest bulk string (key, value, argument) accepted, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_bulk: usize,
    /// Estimated bytes of keys and values beyond which writes answer -OOM (0: no limit)
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    maxmemory: usize,
    #[command(flatten)]
    common: common::CommonArgs,
}

/// Replies waiting to be sent beyond which the next command waits: the engine's write
/// watermarks stop *reading*, but commands already received (a receive buffer holds hundreds of
/// pipelined `GET`s) would otherwise all run and queue their replies at once.
const REPLY_QUEUE_HIGH: usize = 4 << 20;

/// One connection: the command context, handed each complete command.
struct Session(Client);

impl Handler for Session {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if conn.queued_bytes() > REPLY_QUEUE_HIGH {
            conn.hold_frame(); // offered again once the client has read some replies
            return;
        }
        let cmd = Command::parse(frame.payload());
        if cmd.is_empty() {
            return; // `*0`, an empty line: Redis ignores them
        }
        if execute(&mut self.0, conn, &cmd) == Flow::Close {
            conn.close(); // after the reply is flushed
        }
    }

    // Redis's answer to bad input, then close; the engine logs and counts the close reason.
    fn on_decode_error(&mut self, conn: &mut Conn<'_>, error: &DecodeError) {
        self.0.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        conn.write(&protocol_error_reply(error));
        conn.close();
    }

    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        self.0.stats.connected.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(peer = %info.peer, %reason, "client gone");
    }
}

fn main() {
    let args = Args::parse();
    // Keys are stored with a 32-bit length; nothing longer can be accepted.
    let max_bulk = args.max_bulk.min(u32::MAX as usize);
    let mut engine = args.common.engine(None);
    let store = Arc::new(Store::new(args.maxmemory));
    let stats = Arc::new(Stats::default());

    // Expired keys nobody reads again: 8 of the 64 shards swept every 100 ms.
    let sweeper = Arc::clone(&store);
    std::thread::Builder::new()
        .name("expiry-sweep".into())
        .spawn(move || {
            let mut next = 0;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                next = sweeper.sweep(next, 8).0;
            }
        })
        .unwrap_or_else(|e| common::fail(e));

    let codec = Resp::new().max_bulk(max_bulk);
    let (shared_store, shared_stats) = (Arc::clone(&store), Arc::clone(&stats));
    let server = Server::new(args.listen, codec, move |info: &ConnInfo| {
        shared_stats.connections.fetch_add(1, Ordering::Relaxed);
        shared_stats.connected.fetch_add(1, Ordering::Relaxed);
        Session(Client {
            store: Arc::clone(&shared_store),
            stats: Arc::clone(&shared_stats),
            max_bulk,
            name: None,
            id: info.id,
            proto: 2,
        })
    })
    // A whole command is buffered before it runs: room for the largest bulk string.
    .max_buffered_input(max_bulk.saturating_add(1 << 20));
    let server = args.common.add(&mut engine, server);
    common::run(engine, &[&server]);
}
