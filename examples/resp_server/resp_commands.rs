//! The commands of `resp_server`: a table of (name, arity, refused-when-out-of-memory, function),
//! the dispatch that checks them the way Redis does, and one short function per command, by
//! family in the modules under `resp_commands/` (`strings`, `keys`, `server`).
//!
//! Replies are written straight into the connection's write queue: headers formatted on the
//! stack ([`ReplyHeader`]), values copied once from the keyspace under the shard lock. Error
//! texts are Redis 7's, byte for byte, so clients that match on them keep working.
//!
//! A reply is bounded while it is built: `MGET` (the one command whose reply can be many times
//! its request) checks the connection's queue before each value, and past
//! [`REPLY_QUEUE_HIGH`] it stops, keeps the keys it has not answered ([`Client::pending`]) and
//! returns [`Flow::Wait`]; the server calls [`resume`] once the client has read its queue down.
//! Every other reply is at most one value (`--max-bulk`) or a few fixed lines.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use ringport::codec::resp::{self, parse_i64, Args, Command, ReplyHeader, NULL, NULL3};
use ringport::{Conn, Pressure};

use super::resp_store::Store;

mod keys;
mod server;
mod strings;

use keys::{dbsize, del, exists, expire, flushall, persist, pexpire, pttl, ttl};
use server::{client, command, config, echo, hello, info, ping, quit, select};
pub use strings::resume;
use strings::{append, decr, decrby, get, getset, incr, incrby, mget, mset, set, strlen};

/// Counters shown by `INFO`.
#[derive(Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub connected: AtomicU64,
    /// Connections closed for breaking the protocol (`-ERR Protocol error: ...`).
    pub protocol_errors: AtomicU64,
    /// Times a reply stopped being built until its client read the queue down
    /// ([`REPLY_QUEUE_HIGH`]).
    pub reply_waits: AtomicU64,
    /// Times a command or a reply waited because the process's memory budget was under
    /// pressure ([`may_build`]).
    pub budget_waits: AtomicU64,
}

/// Replies waiting to be sent beyond which nothing more is built for a connection: the next
/// command waits, and so does the rest of an `MGET`. One value may take the queue past it, so a
/// client that never reads holds at most this plus one value (`--max-bulk`).
pub const REPLY_QUEUE_HIGH: usize = 4 << 20;

/// One connection's view of the server: the shared keyspace and counters, and its own state.
pub struct Client {
    pub store: std::sync::Arc<Store>,
    pub stats: std::sync::Arc<Stats>,
    /// Longest value `APPEND` may build (the codec's bulk limit).
    pub max_bulk: usize,
    /// Set by `CLIENT SETNAME` / `HELLO ... SETNAME`.
    pub name: Option<Vec<u8>>,
    /// `CLIENT ID`.
    pub id: u64,
    /// 2, or 3 after `HELLO 3`: then nulls are `_` and `HELLO`/`CONFIG GET` answer maps.
    pub proto: u8,
    /// The keys of an `MGET` whose reply waits for the client to read ([`Flow::Wait`]).
    pub pending: Option<PendingKeys>,
    /// Reply bytes charged to the memory budget as they were written, before the engine
    /// counts them in the connection's queue (it does at the end of the loop turn): so that
    /// the next connection's reply in the same turn sees them. Released a turn later
    /// ([`Client::release_reserved`]).
    pub reserved: usize,
    /// The engine's memory budget.
    pub budget: ringport::Budget,
    /// Waiting for the budget since the last reply built (one wait counted per episode).
    pub budget_waiting: bool,
}

impl Client {
    /// Charges `bytes` just written to the budget until the engine has counted them.
    fn reserve(&mut self, bytes: usize) {
        self.budget.charge(bytes);
        self.reserved += bytes;
    }

    /// Releases what [`Client::reserve`] charged (call a loop turn after the writes, or at
    /// close).
    pub fn release_reserved(&mut self) {
        self.budget.release(std::mem::take(&mut self.reserved));
    }
}

/// Whether a reply may be built for `conn` now: its queue is under [`REPLY_QUEUE_HIGH`], and
/// the process's memory budget is not under pressure. From the budget's `pause` level the
/// rest of an `MGET` (`more`: a value of a multi-value reply) waits, and so does a new command
/// of a connection with replies queued: only a connection holding nothing gets an answer (a
/// newcomer's `PING` is not starved by the flooders' `MGET`s, each of which would take the
/// room back at once); from `refuse`, every connection waits until the engine's actions
/// bring the pressure down (a reply is many times its request: 200 clients asking each for
/// 16 MiB must not all be answered in the same loop turn). The callers count the waits this
/// starts (`INFO`: `reply_waits` for a full queue, `budget_waits` for the budget:
/// [`count_wait`]).
pub fn may_build(c: &mut Client, conn: &Conn<'_>, more: bool) -> bool {
    let queued = conn.queued_bytes();
    if queued > REPLY_QUEUE_HIGH {
        return false;
    }
    // Under half the budget the level is `Normal`: known without `Pressure::of`'s division.
    let pressure = if c.budget.used() < c.budget.limit() / 2 {
        Pressure::Normal
    } else {
        c.budget.pressure()
    };
    let ok = match pressure {
        Pressure::Normal | Pressure::Shrink => true,
        Pressure::Pause => queued == 0 && !more,
        Pressure::Refuse | Pressure::Reset => false,
    };
    if ok {
        c.budget_waiting = false;
    }
    ok
}

/// Counts a wait that [`may_build`] started: for the client's full queue or for the budget.
pub fn count_wait(c: &mut Client, conn: &Conn<'_>) {
    if conn.queued_bytes() > REPLY_QUEUE_HIGH {
        c.stats.reply_waits.fetch_add(1, Ordering::Relaxed);
    } else if !c.budget_waiting {
        c.budget_waiting = true; // the retries of this wait are not counted again
        c.stats.budget_waits.fetch_add(1, Ordering::Relaxed);
    }
}

/// The keys an `MGET` has not answered yet, copied out of the request (at most its size).
#[derive(Default)]
pub struct PendingKeys {
    bytes: Vec<u8>,
    /// End of each key in `bytes`.
    ends: Vec<usize>,
    /// Keys answered so far.
    next: usize,
}

impl PendingKeys {
    fn push(&mut self, key: &[u8]) {
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
    }

    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Close once the reply is flushed (`QUIT`).
    Close,
    /// The reply is unfinished ([`Client::pending`]): read no further command, and call
    /// [`resume`] once the queue is back under the write watermark.
    Wait,
}

type Run = fn(&mut Client, &mut Conn<'_>, Args<'_>) -> Flow;

struct Spec {
    /// Lowercase, as in Redis's error texts.
    name: &'static str,
    /// `name` as [`fold`] gives it.
    folded: u64,
    /// Redis's convention: `n` exactly n arguments (the name included), `-n` at least n.
    arity: i32,
    /// Refused with `-OOM` while the keyspace is over `--maxmemory` (Redis's `denyoom` flag).
    deny_oom: bool,
    run: Run,
}

const fn spec(name: &'static str, arity: i32, deny_oom: bool, run: Run) -> Spec {
    let Some(folded) = fold(name.as_bytes()) else {
        panic!("a command name is at most 8 bytes");
    };
    Spec {
        name,
        folded,
        arity,
        deny_oom,
        run,
    }
}

/// Every command, the busiest first (the lookup is a short linear scan of [`fold`]ed names).
const COMMANDS: &[Spec] = &[
    spec("get", 2, false, get),
    spec("set", -3, true, set),
    spec("ping", -1, false, ping),
    spec("incr", 2, true, incr),
    spec("mget", -2, false, mget),
    spec("mset", -3, true, mset),
    spec("del", -2, false, del),
    spec("exists", -2, false, exists),
    spec("incrby", 3, true, incrby),
    spec("decr", 2, true, decr),
    spec("decrby", 3, true, decrby),
    spec("getset", 3, true, getset),
    spec("append", 3, true, append),
    spec("strlen", 2, false, strlen),
    spec("echo", 2, false, echo),
    spec("expire", -3, false, expire),
    spec("pexpire", -3, false, pexpire),
    spec("ttl", 2, false, ttl),
    spec("pttl", 2, false, pttl),
    spec("persist", 2, false, persist),
    spec("dbsize", 1, false, dbsize),
    spec("flushall", -1, false, flushall),
    spec("select", 2, false, select),
    spec("quit", -1, false, quit),
    spec("config", -2, false, config),
    spec("command", -1, false, command),
    spec("client", -2, false, client),
    spec("hello", -1, false, hello),
    spec("info", -1, false, info),
];

/// Runs one command and writes its reply.
pub fn execute(client: &mut Client, conn: &mut Conn<'_>, cmd: &Command<'_>) -> Flow {
    let mut args = cmd.args();
    let name = args.next().unwrap_or_default(); // the arguments follow it
    let spec = lookup(&name);
    let Some(spec) = spec else {
        unknown_command(conn, cmd);
        return Flow::Continue;
    };
    let argc = i64::try_from(cmd.len()).unwrap_or(i64::MAX);
    let arity = i64::from(spec.arity);
    if (arity > 0 && argc != arity) || argc < -arity {
        wrong_arity(conn, spec.name);
        return Flow::Continue;
    }
    if spec.deny_oom && client.store.over_limit() {
        conn.write(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n");
        return Flow::Continue;
    }
    (spec.run)(client, conn, args)
}

/// The command called `name` (any case), if there is one.
fn lookup(name: &[u8]) -> Option<&'static Spec> {
    let folded = fold(name)?;
    COMMANDS.iter().find(|s| s.folded == folded)
}

/// A name of at most 8 bytes as one number, each byte with its `0x20` bit set (lower case
/// for a letter), the rest zero: two names of letters fold alike exactly when they are the
/// same word in any case (every command name is at most 8 letters). One comparison per
/// command in [`lookup`], where a copy, a lower-casing and a byte comparison were.
const fn fold(name: &[u8]) -> Option<u64> {
    if name.len() > 8 {
        return None;
    }
    let mut folded = 0;
    let mut i = 0;
    while i < name.len() {
        folded |= ((name[i] | 0x20) as u64) << (8 * i);
        i += 1;
    }
    Some(folded)
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// Values up to this many bytes (a header of at most two digits) are answered with one
/// `conn.write` of the whole reply, assembled on the stack; longer ones with three (header,
/// the value borrowed, CRLF).
const SMALL_BULK: usize = 99;

fn bulk(conn: &mut Conn<'_>, value: &[u8]) {
    let n = value.len();
    if n <= SMALL_BULK {
        // `$<one or two digits>\r\n<value>\r\n`, the header written in place.
        let mut reply = [0u8; 5 + SMALL_BULK + 2];
        let mut at = 1;
        reply[0] = b'$';
        if n >= 10 {
            reply[1] = b'0' + (n / 10) as u8;
            at = 2;
        }
        reply[at] = b'0' + (n % 10) as u8;
        reply[at + 1..at + 3].copy_from_slice(b"\r\n");
        at += 3;
        reply[at..at + n].copy_from_slice(value);
        reply[at + n..at + n + 2].copy_from_slice(b"\r\n");
        conn.write(&reply[..at + n + 2]);
    } else {
        conn.write(ReplyHeader::bulk(n).as_bytes());
        conn.write(value);
        conn.write(b"\r\n");
    }
}

fn null(conn: &mut Conn<'_>, proto: u8) {
    conn.write(if proto >= 3 { NULL3 } else { NULL });
}

fn bulk_or_null(conn: &mut Conn<'_>, value: Option<&[u8]>, proto: u8) {
    match value {
        Some(v) => bulk(conn, v),
        None => null(conn, proto),
    }
}

/// The header of `n` key/value pairs: a map in RESP3, a flat array of `2n` in RESP2.
fn pairs_header(conn: &mut Conn<'_>, n: usize, proto: u8) {
    if proto >= 3 {
        conn.write(ReplyHeader::map(n).as_bytes());
    } else {
        conn.write(ReplyHeader::array(2 * n).as_bytes());
    }
}

fn integer(conn: &mut Conn<'_>, n: i64) {
    conn.write(ReplyHeader::integer(n).as_bytes());
}

fn count(conn: &mut Conn<'_>, n: usize) {
    integer(conn, i64::try_from(n).unwrap_or(i64::MAX));
}

/// `-<text>\r\n` for a fixed text.
fn error(conn: &mut Conn<'_>, text: &str) {
    conn.write(b"-");
    conn.write(text.as_bytes());
    conn.write(b"\r\n");
}

/// An error text built at run time (`\r`, `\n` become spaces, as Redis does).
fn error_owned(conn: &mut Conn<'_>, text: &[u8]) {
    let mut out = Vec::with_capacity(text.len() + 3);
    resp::write_error(&mut out, text);
    conn.write(&out);
}

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

/// `-ERR unknown command 'foo', with args beginning with: 'a' 'b' ` (Redis 7: the name and the
/// arguments quoted up to 128 bytes in all).
fn unknown_command(conn: &mut Conn<'_>, cmd: &Command<'_>) {
    let mut args = cmd.args();
    let name = args.next().unwrap_or_default();
    let mut text = b"ERR unknown command '".to_vec();
    text.extend_from_slice(&name[..name.len().min(128)]);
    text.extend_from_slice(b"', with args beginning with: ");
    let mut listed = 0;
    for arg in args {
        if listed >= 128 {
            break;
        }
        let take = arg.len().min(128 - listed);
        text.push(b'\'');
        text.extend_from_slice(&arg[..take]);
        text.extend_from_slice(b"' ");
        listed += take + 3;
    }
    error_owned(conn, &text);
}

fn wrong_arity(conn: &mut Conn<'_>, name: &str) {
    error_owned(
        conn,
        format!("ERR wrong number of arguments for '{name}' command").as_bytes(),
    );
}

/// The next `N` arguments (the arity check guarantees they are there).
fn take<'a, const N: usize>(args: &mut Args<'a>) -> [Cow<'a, [u8]>; N] {
    std::array::from_fn(|_| args.next().unwrap_or_default())
}

fn int_arg(arg: &[u8]) -> Option<i64> {
    parse_i64(arg)
}
