//! resp_server: a Redis-protocol key-value server, spoken to by redis-cli, redis-py,
//! redis-benchmark and every other Redis client.
//!
//! ```text
//! $ cargo run --release --example resp_server          # 127.0.0.1:6380
//! $ redis-cli -p 6380 SET greeting hello               → OK
//! $ redis-cli -p 6380 GET greeting                     → "hello"
//! ```
//!
//! How it is built (a folder example: copy the folder, `main.rs` and its modules):
//!
//! - **Framing**: the [`Resp`] codec from `ringport::codec` turns the byte stream into whole
//!   commands (arrays of bulk strings, or inline lines typed in telnet) with Redis's limits; a
//!   frame reaches [`Session::on_frame`] only when the whole command has arrived, borrowed
//!   from the receive buffer. Bad input gets `-ERR Protocol error: ...` and that connection
//!   closes (counted in `INFO` as `protocol_errors`); nobody else notices. A whole command
//!   may be `--max-bulk` plus 1 MiB ([`CommandLimit`]): beyond that it gets
//!   `-ERR Protocol error: command larger than N bytes` too.
//! - **Commands** (`resp_commands.rs`, the commands by family under `resp_commands/`): a
//!   table of name, arity and function; the
//!   dispatch checks arity and `--maxmemory` the way Redis does and answers with Redis's exact
//!   error texts. Replies go straight into the connection's write queue; pipelined commands
//!   are answered in order (one connection's frames run one after another on its IO thread).
//!   A client that sends `HELLO 3` (redis-py 8 does by default) gets RESP3 nulls and maps.
//! - **Keyspace** (`resp_store.rs`): 64 shards, each a `Mutex<HashTable>`, chosen by key
//!   hash, shared by all IO threads: no global lock, a lock held for one map operation; a
//!   key is hashed once per command (keyed SipHash), for its shard and its slot.
//!   Expiry is checked lazily on access (an expired key reads as missing); a small thread of
//!   this server sweeps expired keys out of 8 shards every 100 ms. The engine's timers belong
//!   to connections (`Conn::set_timer`), and the keyspace outlives every connection, so the
//!   sweep is not a connection's job.
//! - **Memory**: `--maxmemory BYTES` (0: unlimited) bounds the estimated size of keys and
//!   values plus the replies queued for clients (`INFO`: `used_memory`, of which
//!   `mem_clients_normal` are replies); beyond it writes answer `-OOM ...` (Redis's
//!   `noeviction` policy), reads and deletes still work. A client that never reads its replies
//!   costs at most 4 MiB of queued replies plus one value, however large the reply it asked
//!   for: past 4 MiB nothing more is built for it. Its next command is held back
//!   ([`Conn::hold_frame`]), and an `MGET` stops between two values and keeps the keys it has
//!   not answered; the connection stops reading and asks to hear when its queue is back
//!   under the low write watermark ([`Conn::notify_when_drained`]),
//!   then the reply goes on where it stopped (`INFO`: `reply_waits`). The same stop obeys
//!   the process's memory budget ([`Conn::budget`], `--memory-budget`): under its `pause`
//!   level the rest of an `MGET` waits and so does the next command of a connection with
//!   replies queued (one holding nothing is answered), under `refuse` every one waits until the
//!   engine's overload actions bring the pressure down (`INFO`: `budget_waits`); what an
//!   `MGET` writes is charged at once, so 200 clients asking at once cannot all be answered
//!   in one loop turn.
//!
//! Commands: PING ECHO GET SET (EX PX NX XX KEEPTTL) GETSET DEL EXISTS INCR INCRBY DECR DECRBY
//! APPEND STRLEN MGET MSET EXPIRE PEXPIRE TTL PTTL PERSIST DBSIZE FLUSHALL SELECT(0) QUIT, and
//! for clients and tools: CONFIG GET, COMMAND (empty), CLIENT SETNAME/GETNAME/SETINFO/ID,
//! HELLO 2|3, INFO.

mod resp_commands;
mod resp_store;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ringport::cli;
use ringport::codec::resp::{protocol_error_reply, Command};
use ringport::codec::{DecodeError, Decoded, Decoder, Encoder, Resp};
use ringport::{CloseReason, Conn, ConnInfo, Frame, Handler, Pressure, Server};

use resp_commands::{
    count_wait, execute, may_build, resume, Client, Flow, Stats, REPLY_QUEUE_HIGH,
};
use resp_store::Store;

#[derive(Parser, Debug)]
#[command(about = "ringport RESP server: a Redis-protocol key-value store")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:6380")]
    listen: String,
    /// Longest bulk string (key, value, argument) accepted, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_bulk: usize,
    /// Estimated bytes of keys and values beyond which writes answer -OOM (0: no limit)
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    maxmemory: usize,
    #[command(flatten)]
    server: cli::ServerArgs,
}

/// Room a command has beyond its largest bulk string (the other arguments and the headers).
const COMMAND_ROOM: usize = 1 << 20;

/// How often a connection with replies queued re-reads its queue for `--maxmemory`.
const QUEUE_REFRESH: Duration = Duration::from_millis(100);
/// A change of a connection's queued replies smaller than this is published to the store by
/// the refresh timer (within [`QUEUE_REFRESH`]), not after the command: a pipelined command's
/// few-byte reply then costs no atomic add on the counter every IO thread shares. Redis counts
/// a client's output as its 16 KiB reply buffer too, whatever it holds.
const QUEUE_SLACK: usize = 16 << 10;
const REFRESH_TIMER: u64 = 1;
/// A wait for the memory budget looks again (see `Session::watch`).
const WAIT_TIMER: u64 = 2;
/// How soon a connection whose reply waits for the memory budget looks again (then, with
/// replies queued, it waits for them to drain under the low watermark).
const BUDGET_POLL: Duration = Duration::from_millis(1);
/// How often a connection waiting for the memory budget's pressure to fall looks again.
const BUDGET_RETRY: Duration = Duration::from_millis(10);

/// The [`Resp`] decoder with a bound on the whole command: a command still incomplete past
/// `max` bytes (an `MSET` of many values, each under `--max-bulk`) is a protocol error with
/// Redis's reply, not a silent close at the engine's undecoded-input limit.
#[derive(Clone)]
struct CommandLimit {
    resp: Resp,
    max: usize,
}

impl Decoder for CommandLimit {
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        match self.resp.decode(buf)? {
            None if buf.len() > self.max => Err(DecodeError::Malformed(format!(
                "command larger than {} bytes",
                self.max
            ))),
            decoded => Ok(decoded),
        }
    }

    fn encoder(&self) -> Option<&dyn Encoder> {
        self.resp.encoder()
    }
}

/// One connection: the command context, handed each complete command.
struct Session {
    client: Client,
    /// Waiting for the client to read its queue down (reading paused, `on_writable` asked).
    waiting: bool,
    /// The client half-closed while a reply waited: close once it is complete.
    close_when_done: bool,
    /// This connection's queued replies as last counted in the store (`--maxmemory`).
    counted: usize,
    refresh_armed: bool,
}

impl Session {
    /// Stops reading until the queue is back under the low write watermark; then
    /// `on_writable` goes on with the reply (or the held command).
    fn wait_for_reader(&mut self, conn: &mut Conn<'_>) {
        if !self.waiting {
            self.waiting = true;
            conn.pause_reading();
            self.watch(conn);
        }
    }

    /// What ends the wait: the client reading its queue down (`notify_when_drained`, which
    /// counts the replies this callback wrote), or, when the memory budget stopped the reply
    /// (the queue is under `REPLY_QUEUE_HIGH`: a drain watch could fire at once, every
    /// turn), a look again a moment later.
    fn watch(&mut self, conn: &mut Conn<'_>) {
        if conn.queued_bytes() > REPLY_QUEUE_HIGH {
            conn.notify_when_drained(0);
        } else {
            conn.set_timer(WAIT_TIMER, BUDGET_POLL);
        }
    }

    /// Publishes the queue's size to the store (`--maxmemory` counts queued replies): at once
    /// if `exact` or if it moved by [`QUEUE_SLACK`] or more since it was last published, else
    /// from the refresh timer, which looks again soon while anything is queued or unpublished
    /// (the queue drains without a callback).
    fn count_queue(&mut self, conn: &mut Conn<'_>, exact: bool) {
        let now = conn.queued_bytes();
        if exact || now.abs_diff(self.counted) >= QUEUE_SLACK {
            self.client.store.queue_replies(self.counted, now);
            self.counted = now;
        }
        let stale = now != self.counted;
        if (now > 0 || stale || self.client.reserved > 0) && !self.refresh_armed {
            self.refresh_armed = true;
            conn.set_timer(REFRESH_TIMER, QUEUE_REFRESH);
        }
    }
}

impl Handler for Session {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if self.client.pending.is_some() || !may_build(&mut self.client, conn, false) {
            if self.client.pending.is_none() && conn.queued_bytes() <= REPLY_QUEUE_HIGH {
                count_wait(&mut self.client, conn); // a budget wait (counted once)
            }
            conn.hold_frame(); // offered again once the client has read its replies
            self.wait_for_reader(conn);
            return;
        }
        let cmd = Command::parse(frame.payload());
        if cmd.is_empty() {
            return; // `*0`, an empty line: Redis ignores them
        }
        match execute(&mut self.client, conn, &cmd) {
            Flow::Continue => {}
            Flow::Close => conn.close(), // after the reply is flushed
            Flow::Wait => self.wait_for_reader(conn),
        }
        self.count_queue(conn, false);
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, _: u64) {
        self.client.release_reserved(); // a turn later: the engine counts the queue now
        if !self.waiting || !conn.handle().is_open() {
            return; // closing: nothing more is built
        }
        self.waiting = false;
        if resume(&mut self.client, conn) == Flow::Wait {
            self.wait_for_reader(conn);
        } else if self.close_when_done {
            conn.close();
        } else {
            conn.resume_reading(); // the held command, if any, comes again
        }
        self.count_queue(conn, false);
    }

    fn on_timer(&mut self, conn: &mut Conn<'_>, id: u64) {
        self.client.release_reserved(); // a turn later: the engine counts the queue now
        if id == WAIT_TIMER {
            if self.waiting {
                if conn.queued_bytes() == 0 && self.client.budget.pressure() >= Pressure::Refuse {
                    // Nothing of ours to drain: look again in a while.
                    conn.set_timer(WAIT_TIMER, BUDGET_RETRY);
                } else {
                    conn.notify_when_drained(0); // at the end of this turn if already low
                }
            }
        } else {
            self.refresh_armed = false;
            self.count_queue(conn, true);
        }
    }

    // An `MGET` still being answered is finished before the close.
    fn on_read_closed(&mut self, conn: &mut Conn<'_>) {
        if self.client.pending.is_some() {
            self.close_when_done = true;
        } else {
            conn.close();
        }
    }

    // Redis's answer to bad input, then close; the engine logs and counts the close reason.
    fn on_decode_error(&mut self, conn: &mut Conn<'_>, error: &DecodeError) {
        self.client
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        conn.write(&protocol_error_reply(error));
        conn.close();
    }

    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        self.client.release_reserved();
        self.client.store.queue_replies(self.counted, 0);
        self.client.stats.connected.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(peer = %info.peer, %reason, "client gone");
    }
}

fn main() {
    let args = Args::parse();
    // Keys are stored with a 32-bit length; nothing longer can be accepted.
    let max_bulk = args.max_bulk.min(u32::MAX as usize);
    let mut engine = args.server.engine();
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
        .unwrap_or_else(|e| cli::fail(e));

    let max_command = max_bulk.saturating_add(COMMAND_ROOM);
    let codec = CommandLimit {
        resp: Resp::new().max_bulk(max_bulk),
        max: max_command,
    };
    let (shared_store, shared_stats) = (Arc::clone(&store), Arc::clone(&stats));
    let budget = engine.budget();
    let server = Server::listen(
        cli::listen_addr(&args.listen),
        codec,
        move |info: &ConnInfo| {
            shared_stats.connections.fetch_add(1, Ordering::Relaxed);
            shared_stats.connected.fetch_add(1, Ordering::Relaxed);
            Session {
                client: Client {
                    store: Arc::clone(&shared_store),
                    stats: Arc::clone(&shared_stats),
                    max_bulk,
                    name: None,
                    id: info.id,
                    proto: 2,
                    pending: None,
                    reserved: 0,
                    budget: budget.clone(),
                    budget_waiting: false,
                },
                waiting: false,
                close_when_done: false,
                counted: 0,
                refresh_armed: false,
            }
        },
    )
    // A whole command is buffered before it runs; `CommandLimit` refuses a larger one first.
    .max_buffered_input(max_command.saturating_add(64 << 10));
    let server = args.server.add(&mut engine, server);
    cli::run(engine, &[&server]);
}
