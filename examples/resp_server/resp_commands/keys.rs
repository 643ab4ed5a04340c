//! Key and expiry commands: DEL EXISTS EXPIRE PEXPIRE TTL PTTL PERSIST DBSIZE FLUSHALL.

use ringport::codec::resp::{Args, OK};
use ringport::Conn;

use super::{count, error, error_owned, int_arg, integer, take, Client, Flow, NOT_INTEGER, SYNTAX};
use crate::resp_store::now_ms;

pub(super) fn del(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    let n = args.filter(|key| c.store.del(key)).count();
    count(conn, n);
    Flow::Continue
}

pub(super) fn exists(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
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

pub(super) fn expire(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    expire_in(conn, c, args, 1000, "expire");
    Flow::Continue
}

pub(super) fn pexpire(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    expire_in(conn, c, args, 1, "pexpire");
    Flow::Continue
}

pub(super) fn ttl(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    ttl_in(c, conn, args, 1000)
}

pub(super) fn pttl(c: &mut Client, conn: &mut Conn<'_>, args: Args<'_>) -> Flow {
    ttl_in(c, conn, args, 1)
}

/// `TTL` / `PTTL`: the time left in units of `unit_ms`, rounded to the nearest; -2 for no
/// key, -1 for no expiry.
fn ttl_in(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>, unit_ms: u64) -> Flow {
    let [key] = take(&mut args);
    integer(
        conn,
        match c.store.ttl_ms(&key) {
            None => -2,
            Some(None) => -1,
            Some(Some(ms)) => {
                i64::try_from(ms.saturating_add(unit_ms / 2) / unit_ms).unwrap_or(i64::MAX)
            }
        },
    );
    Flow::Continue
}

pub(super) fn persist(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [key] = take(&mut args);
    integer(conn, i64::from(c.store.persist(&key)));
    Flow::Continue
}

pub(super) fn dbsize(c: &mut Client, conn: &mut Conn<'_>, _: Args<'_>) -> Flow {
    count(conn, c.store.len().0);
    Flow::Continue
}

pub(super) fn flushall(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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
