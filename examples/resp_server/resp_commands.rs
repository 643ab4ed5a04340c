//! The commands of `resp_server`: a table of (name, arity, refused-when-out-of-memory, function),
//! the dispatch that checks them the way Redis does, and one short function per command.
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

use ringport::codec::resp::{self, parse_i64, Args, Command, ReplyHeader, NULL, NULL3, OK};
use ringport::{Conn, Pressure};

use super::resp_store::{now_ms, IncrError, SetOptions, Store};

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
    let pressure = c.budget.pressure();
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
    /// Redis's convention: `n` exactly n arguments (the name included), `-n` at least n.
    arity: i32,
    /// Refused with `-OOM` while the keyspace is over `--maxmemory` (Redis's `denyoom` flag).
    deny_oom: bool,
    run: Run,
}

const fn spec(name: &'static str, arity: i32, deny_oom: bool, run: Run) -> Spec {
    Spec {
        name,
        arity,
        deny_oom,
        run,
    }
}

/// Every command, the busiest first (the lookup is a short linear scan).
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
    let mut lower = [0u8; 16];
    let lower = lower.get_mut(..name.len())?;
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    // The length and first letter rule out most of the table before a comparison.
    COMMANDS.iter().find(|s| {
        let n = s.name.as_bytes();
        n.len() == lower.len() && n[0] == lower[0] && n == &lower[..]
    })
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

fn bulk(conn: &mut Conn<'_>, value: &[u8]) {
    conn.write(ReplyHeader::bulk(value.len()).as_bytes());
    conn.write(value);
    conn.write(b"\r\n");
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

// ---------------------------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------------------------

fn get(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    c.store.get(&key, |v| bulk_or_null(conn, v, c.proto));
    Flow::Continue
}

fn set(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key, value] = take(&mut args);
    let mut opts = SetOptions::default();
    // (unit in ms, its argument) of EX / PX.
    let mut expire: Option<(i64, Cow<'_, [u8]>)> = None;
    while let Some(flag) = args.next() {
        let ttl_set = expire.is_some() || opts.keep_ttl;
        let bad = if flag.eq_ignore_ascii_case(b"nx") && !opts.only_existing {
            opts.only_new = true;
            false
        } else if flag.eq_ignore_ascii_case(b"xx") && !opts.only_new {
            opts.only_existing = true;
            false
        } else if flag.eq_ignore_ascii_case(b"keepttl") && !ttl_set {
            opts.keep_ttl = true;
            false
        } else if (flag.eq_ignore_ascii_case(b"ex") || flag.eq_ignore_ascii_case(b"px")) && !ttl_set
        {
            let unit = if flag.eq_ignore_ascii_case(b"ex") {
                1000
            } else {
                1
            };
            match args.next() {
                Some(arg) => {
                    expire = Some((unit, arg));
                    false
                }
                None => true,
            }
        } else {
            true
        };
        if bad {
            error(conn, SYNTAX);
            return Flow::Continue;
        }
    }
    if let Some((unit, arg)) = expire {
        let Some(n) = int_arg(&arg) else {
            error(conn, NOT_INTEGER);
            return Flow::Continue;
        };
        let at = (n > 0)
            .then(|| n.checked_mul(unit))
            .flatten()
            .and_then(|ms| ms.checked_add(now_ms() as i64));
        let Some(at) = at else {
            error(conn, "ERR invalid expire time in 'set' command");
            return Flow::Continue;
        };
        opts.expire_at = Some(at as u64);
    }
    if c.store.set(&key, &value, opts) {
        conn.write(OK);
    } else {
        null(conn, c.proto);
    }
    Flow::Continue
}

fn getset(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key, value] = take(&mut args);
    c.store
        .get_set(&key, &value, |old| bulk_or_null(conn, old, c.proto));
    Flow::Continue
}

/// Answers key after key while the queue is under [`REPLY_QUEUE_HIGH`]; past it, the rest
/// of the keys wait in [`Client::pending`] for [`resume`].
fn mget(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    conn.write(ReplyHeader::array(args.size_hint().1.unwrap_or(0)).as_bytes());
    while let Some(key) = args.next() {
        if !may_build(c, conn, true) {
            let mut rest = PendingKeys::default();
            rest.push(&key);
            args.for_each(|k| rest.push(&k));
            c.pending = Some(rest);
            count_wait(c, conn);
            return Flow::Wait;
        }
        let before = conn.queued_bytes();
        c.store.get(&key, |v| bulk_or_null(conn, v, c.proto));
        c.reserve(conn.queued_bytes().saturating_sub(before));
    }
    Flow::Continue
}

/// Goes on with the reply that returned [`Flow::Wait`]: [`Flow::Wait`] again if the queue
/// filled up before its end.
pub fn resume(c: &mut Client, conn: &mut Conn<'_>) -> Flow {
    let Some(mut keys) = c.pending.take() else {
        return Flow::Continue;
    };
    while keys.next < keys.ends.len() {
        if !may_build(c, conn, true) {
            c.pending = Some(keys);
            count_wait(c, conn);
            return Flow::Wait;
        }
        let before = conn.queued_bytes();
        c.store
            .get(keys.key(keys.next), |v| bulk_or_null(conn, v, c.proto));
        c.reserve(conn.queued_bytes().saturating_sub(before));
        keys.next += 1;
    }
    Flow::Continue
}

fn mset(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    if args.size_hint().1.unwrap_or(0) % 2 != 0 {
        wrong_arity(conn, "mset");
        return Flow::Continue;
    }
    while let (Some(key), Some(value)) = (args.next(), args.next()) {
        c.store.set(&key, &value, SetOptions::default());
    }
    conn.write(OK);
    Flow::Continue
}

fn add(c: &mut Client, conn: &mut Conn<'_>, key: &[u8], delta: i64) -> Flow {
    match c.store.incr_by(key, delta) {
        Ok(n) => integer(conn, n),
        Err(IncrError::NotInteger) => error(conn, NOT_INTEGER),
        Err(IncrError::Overflow) => error(conn, "ERR increment or decrement would overflow"),
    }
    Flow::Continue
}

fn incr(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    add(c, conn, &key, 1)
}

fn decr(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    add(c, conn, &key, -1)
}

fn incrby(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key, delta] = take(&mut args);
    match int_arg(&delta) {
        Some(d) => add(c, conn, &key, d),
        None => {
            error(conn, NOT_INTEGER);
            Flow::Continue
        }
    }
}

fn decrby(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key, delta] = take(&mut args);
    match int_arg(&delta) {
        Some(i64::MIN) => {
            error(conn, "ERR decrement would overflow");
            Flow::Continue
        }
        Some(d) => add(c, conn, &key, -d),
        None => {
            error(conn, NOT_INTEGER);
            Flow::Continue
        }
    }
}

fn append(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key, suffix] = take(&mut args);
    match c.store.append(&key, &suffix, c.max_bulk) {
        Some(len) => count(conn, len),
        None => error(
            conn,
            "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
        ),
    }
    Flow::Continue
}

fn strlen(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    let len = c.store.get(&key, |v| v.map_or(0, <[u8]>::len));
    count(conn, len);
    Flow::Continue
}

// ---------------------------------------------------------------------------------------------
// Keys and expiry
// ---------------------------------------------------------------------------------------------

fn del(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    let n = args.filter(|key| c.store.del(key)).count();
    count(conn, n);
    Flow::Continue
}

fn exists(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    let n = args.filter(|key| c.store.exists(key)).count();
    count(conn, n);
    Flow::Continue
}

/// `EXPIRE`/`PEXPIRE` with the time in units of `unit_ms`.
fn expire_in(conn: &mut Conn<'_>, c: &Client, mut args: Args<'_>, unit_ms: i64, name: &str) {
    let [key, when] = take(&mut args);
    if let Some(option) = args.next() {
        let mut text = b"ERR Unsupported option ".to_vec();
        text.extend_from_slice(&option);
        return error_owned(conn, &text);
    }
    let Some(n) = int_arg(&when) else {
        return error(conn, NOT_INTEGER);
    };
    let Some(at) = n
        .checked_mul(unit_ms)
        .and_then(|ms| ms.checked_add(now_ms() as i64))
    else {
        let text = format!("ERR invalid expire time in '{name}' command");
        return error_owned(conn, text.as_bytes());
    };
    integer(conn, i64::from(c.store.expire_at(&key, at)));
}

fn expire(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    expire_in(conn, c, args, 1000, "expire");
    Flow::Continue
}

fn pexpire(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    expire_in(conn, c, args, 1, "pexpire");
    Flow::Continue
}

fn ttl(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    integer(
        conn,
        match c.store.ttl_ms(&key) {
            None => -2,
            Some(None) => -1,
            Some(Some(ms)) => i64::try_from(ms.saturating_add(500) / 1000).unwrap_or(i64::MAX),
        },
    );
    Flow::Continue
}

fn pttl(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    integer(
        conn,
        match c.store.ttl_ms(&key) {
            None => -2,
            Some(None) => -1,
            Some(Some(ms)) => i64::try_from(ms).unwrap_or(i64::MAX),
        },
    );
    Flow::Continue
}

fn persist(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    integer(conn, i64::from(c.store.persist(&key)));
    Flow::Continue
}

fn dbsize(c: &mut Client, conn: &mut Conn<'_>, _: Args<'_>) -> Flow {
    count(conn, c.store.len().0);
    Flow::Continue
}

fn flushall(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    match args.next() {
        None => {}
        Some(mode)
            if args.next().is_none()
                && (mode.eq_ignore_ascii_case(b"sync") || mode.eq_ignore_ascii_case(b"async")) => {}
        Some(_) => {
            error(conn, SYNTAX);
            return Flow::Continue;
        }
    }
    c.store.flush();
    conn.write(OK);
    Flow::Continue
}

// ---------------------------------------------------------------------------------------------
// Connection and server
// ---------------------------------------------------------------------------------------------

fn ping(_: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    match (args.next(), args.next()) {
        (None, _) => conn.write(resp::PONG),
        (Some(msg), None) => bulk(conn, &msg),
        (Some(_), Some(_)) => wrong_arity(conn, "ping"),
    }
    Flow::Continue
}

fn echo(_: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [msg] = take(&mut args);
    bulk(conn, &msg);
    Flow::Continue
}

fn select(_: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [db] = take(&mut args);
    match int_arg(&db) {
        Some(0) => conn.write(OK),
        Some(_) => error(conn, "ERR DB index is out of range"),
        None => error(conn, NOT_INTEGER),
    }
    Flow::Continue
}

fn quit(_: &mut Client, conn: &mut Conn<'_>, _: Args<'_>) -> Flow {
    conn.write(OK);
    Flow::Close
}

fn unknown_subcommand(conn: &mut Conn<'_>, sub: &[u8], command: &str) {
    let mut text = b"ERR unknown subcommand '".to_vec();
    text.extend_from_slice(&sub[..sub.len().min(128)]);
    text.extend_from_slice(format!("'. Try {command} HELP.").as_bytes());
    error_owned(conn, &text);
}

/// `CONFIG GET` answers the parameters clients ask for at start (redis-benchmark reads `save`
/// and `appendonly`); `CONFIG SET` changes nothing.
fn config(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [sub] = take(&mut args);
    if sub.eq_ignore_ascii_case(b"get") {
        if args.size_hint().1 == Some(0) {
            wrong_arity(conn, "config|get");
            return Flow::Continue;
        }
        let max_memory = c.store.max_memory().to_string();
        let mut pairs: Vec<(String, &str)> = Vec::new();
        for param in args {
            let name = String::from_utf8_lossy(&param).to_ascii_lowercase();
            let value = match name.as_str() {
                "save" => "",
                "appendonly" => "no",
                "databases" => "1",
                "maxmemory" => &max_memory,
                "maxmemory-policy" => "noeviction",
                _ => continue,
            };
            if !pairs.iter().any(|(n, _)| *n == name) {
                pairs.push((name, value));
            }
        }
        pairs_header(conn, pairs.len(), c.proto);
        for (name, value) in pairs {
            bulk(conn, name.as_bytes());
            bulk(conn, value.as_bytes());
        }
    } else if sub.eq_ignore_ascii_case(b"set") {
        let param = args.next().unwrap_or_default();
        let mut text = b"ERR Unknown option or number of arguments for CONFIG SET - '".to_vec();
        text.extend_from_slice(&param);
        text.push(b'\'');
        error_owned(conn, &text);
    } else if sub.eq_ignore_ascii_case(b"resetstat") {
        conn.write(OK);
    } else {
        unknown_subcommand(conn, &sub, "CONFIG");
    }
    Flow::Continue
}

/// `COMMAND`, `COMMAND DOCS`, `COMMAND INFO`: no command table is published (an empty array,
/// which redis-cli accepts: it only loses its hints); `COMMAND COUNT`: 0.
fn command(_: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    match args.next() {
        Some(sub) if sub.eq_ignore_ascii_case(b"count") => integer(conn, 0),
        _ => conn.write(resp::EMPTY_ARRAY),
    }
    Flow::Continue
}

fn client(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [sub] = take(&mut args);
    let rest = args.size_hint().1.unwrap_or(0);
    if sub.eq_ignore_ascii_case(b"setname") {
        if rest != 1 {
            wrong_arity(conn, "client|setname");
        } else {
            let name = args.next().unwrap_or_default();
            if !valid_client_name(&name) {
                error(conn, BAD_CLIENT_NAME);
            } else {
                c.name = (!name.is_empty()).then(|| name.into_owned());
                conn.write(OK);
            }
        }
    } else if sub.eq_ignore_ascii_case(b"getname") {
        bulk_or_null(conn, c.name.as_deref(), c.proto);
    } else if sub.eq_ignore_ascii_case(b"setinfo") {
        conn.write(OK); // library name and version: accepted, not kept
    } else if sub.eq_ignore_ascii_case(b"id") {
        integer(conn, i64::try_from(c.id).unwrap_or(i64::MAX));
    } else {
        unknown_subcommand(conn, &sub, "CLIENT");
    }
    Flow::Continue
}

const BAD_CLIENT_NAME: &str =
    "ERR Client names cannot contain spaces, newlines or special characters.";

/// What Redis allows in a client name (`CLIENT SETNAME`, `HELLO ... SETNAME`): printable
/// ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// `HELLO [2|3 [AUTH user pass] [SETNAME name]]`: switches the connection to RESP2 or RESP3;
/// the password is not checked (there is none, as in a default Redis).
fn hello(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let mut proto = c.proto;
    if let Some(version) = args.next() {
        match int_arg(&version) {
            Some(v @ (2 | 3)) => proto = v as u8,
            Some(_) => {
                error(conn, "NOPROTO unsupported protocol version");
                return Flow::Continue;
            }
            None => {
                error(
                    conn,
                    "ERR Protocol version is not an integer or out of range",
                );
                return Flow::Continue;
            }
        }
        // Redis checks every option before it changes anything: a bad name changes nothing.
        let mut name = None;
        while let Some(opt) = args.next() {
            if opt.eq_ignore_ascii_case(b"auth") && args.size_hint().1 >= Some(2) {
                args.next();
                args.next();
            } else if opt.eq_ignore_ascii_case(b"setname") && args.size_hint().1 >= Some(1) {
                let n = args.next().unwrap_or_default();
                if !valid_client_name(&n) {
                    error(conn, BAD_CLIENT_NAME);
                    return Flow::Continue;
                }
                name = Some(n.into_owned());
            } else {
                let mut text = b"ERR Syntax error in HELLO option '".to_vec();
                text.extend_from_slice(&opt);
                text.push(b'\'');
                error_owned(conn, &text);
                return Flow::Continue;
            }
        }
        if let Some(name) = name {
            c.name = (!name.is_empty()).then_some(name);
        }
    }
    c.proto = proto;
    pairs_header(conn, 7, proto);
    for (k, v) in [
        ("server", "redis"),
        ("version", "7.0.0"),
        ("proto", ""),
        ("id", ""),
        ("mode", "standalone"),
        ("role", "master"),
    ] {
        bulk(conn, k.as_bytes());
        match k {
            "proto" => integer(conn, i64::from(proto)),
            "id" => integer(conn, i64::try_from(c.id).unwrap_or(i64::MAX)),
            _ => bulk(conn, v.as_bytes()),
        }
    }
    bulk(conn, b"modules");
    conn.write(resp::EMPTY_ARRAY);
    Flow::Continue
}

/// A few `INFO` fields in Redis's layout (all sections, whatever is asked).
fn info(c: &mut Client, conn: &mut Conn<'_>, _: Args<'_>) -> Flow {
    let (keys, expires) = c.store.len();
    let s = &c.stats;
    let text = format!(
        "# Server\r\nredis_version:7.0.0\r\nringport_server:resp_server\r\n\r\n\
         # Clients\r\nconnected_clients:{}\r\n\r\n\
         # Memory\r\nused_memory:{}\r\nmem_clients_normal:{}\r\nmaxmemory:{}\r\n\
         maxmemory_policy:noeviction\r\n\r\n\
         # Stats\r\ntotal_connections_received:{}\r\nprotocol_errors:{}\r\nreply_waits:{}\r\nbudget_waits:{}\r\n\r\n\
         # Keyspace\r\ndb0:keys={keys},expires={expires},avg_ttl=0\r\n",
        s.connected.load(Ordering::Relaxed),
        c.store.used_memory(),
        c.store.reply_memory(),
        c.store.max_memory(),
        s.connections.load(Ordering::Relaxed),
        s.protocol_errors.load(Ordering::Relaxed),
        s.reply_waits.load(Ordering::Relaxed),
        s.budget_waits.load(Ordering::Relaxed),
    );
    bulk(conn, text.as_bytes());
    Flow::Continue
}
