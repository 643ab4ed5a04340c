//! String commands: GET SET GETSET MGET (and its [`resume`]) MSET INCR INCRBY DECR DECRBY
//! APPEND STRLEN.

use std::borrow::Cow;

use ringport::codec::resp::{Args, ReplyHeader, OK};
use ringport::Conn;

use super::{
    bulk_or_null, count, count_wait, error, int_arg, integer, may_build, null, take, wrong_arity,
    Client, Flow, PendingKeys, NOT_INTEGER, SYNTAX,
};
use crate::resp_store::{now_ms, IncrError, SetOptions};

pub(super) fn get(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    c.store.get(&key, |v| bulk_or_null(conn, v, c.proto));
    Flow::Continue
}

pub(super) fn set(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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

pub(super) fn getset(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key, value] = take(&mut args);
    c.store
        .get_set(&key, &value, |old| bulk_or_null(conn, old, c.proto));
    Flow::Continue
}

/// Answers key after key while the queue is under [`REPLY_QUEUE_HIGH`]; past it, the rest
/// of the keys wait in [`Client::pending`] for [`resume`].
pub(super) fn mget(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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

pub(super) fn mset(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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

pub(super) fn incr(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    add(c, conn, &key, 1)
}

pub(super) fn decr(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    add(c, conn, &key, -1)
}

pub(super) fn incrby(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key, delta] = take(&mut args);
    match int_arg(&delta) {
        Some(d) => add(c, conn, &key, d),
        None => {
            error(conn, NOT_INTEGER);
            Flow::Continue
        }
    }
}

pub(super) fn decrby(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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

pub(super) fn append(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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

pub(super) fn strlen(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    let len = c.store.get(&key, |v| v.map_or(0, <[u8]>::len));
    count(conn, len);
    Flow::Continue
}
