//! Connection and server commands: PING ECHO SELECT QUIT CONFIG COMMAND CLIENT HELLO INFO.

use std::sync::atomic::Ordering;

use ringport::codec::resp::{self, Args, OK};
use ringport::Conn;

use super::{
    bulk, bulk_or_null, error, error_owned, int_arg, integer, pairs_header, take, wrong_arity,
    Client, Flow, NOT_INTEGER,
};

pub(super) fn ping(_: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    match (args.next(), args.next()) {
        (None, _) => conn.write(resp::PONG),
        (Some(msg), None) => bulk(conn, &msg),
        (Some(_), Some(_)) => wrong_arity(conn, "ping"),
    }
    Flow::Continue
}

pub(super) fn echo(_: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [msg] = take(&mut args);
    bulk(conn, &msg);
    Flow::Continue
}

pub(super) fn select(_: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    let [db] = take(&mut args);
    match int_arg(&db) {
        Some(0) => conn.write(OK),
        Some(_) => error(conn, "ERR DB index is out of range"),
        None => error(conn, NOT_INTEGER),
    }
    Flow::Continue
}

pub(super) fn quit(_: &mut Client, conn: &mut Conn<'_>, _: Args<'_>) -> Flow {
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
pub(super) fn config(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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
pub(super) fn command(_: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
    match args.next() {
        Some(sub) if sub.eq_ignore_ascii_case(b"count") => integer(conn, 0),
        _ => conn.write(resp::EMPTY_ARRAY),
    }
    Flow::Continue
}

pub(super) fn client(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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
pub(super) fn hello(c: &mut Client, conn: &mut Conn<'_>, mut args: Args<'_>) -> Flow {
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
pub(super) fn info(c: &mut Client, conn: &mut Conn<'_>, _: Args<'_>) -> Flow {
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
