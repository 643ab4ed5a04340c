//! One client connection: each command arrives parsed (`Command`, with its data block), is
//! run against the shared store, and answered in order; `noreply` silences the answer.

use std::sync::Arc;

use ringport::codec::{BadFrame, HeaderParser, LineBody, WithBody};
use ringport::{Conn, Handler, ItemHandler};

use crate::protocol::{Command, Parser, StoreOp, KEY_MAX};
use crate::store::{Arith, Outcome, Store};

pub type Codec = LineBody<Parser>;

pub struct Session {
    pub store: Arc<Store>,
    pub max_item: usize,
}

impl Handler for Session {}

impl ItemHandler<Codec> for Session {
    fn on_item(&mut self, conn: &mut Conn<'_>, item: WithBody<'_, Command<'_>>) {
        let store = &self.store;
        let (reply, noreply): (&[u8], bool) = match item.header {
            Command::Get { cas, keys } => return self.get(conn, cas, keys),
            Command::Store {
                op,
                key,
                flags,
                exptime,
                noreply,
            } => {
                let data = item.body.unwrap_or_default();
                let reply: &[u8] = match store.store(op, key, flags, exptime, data) {
                    Outcome::Stored => b"STORED\r\n",
                    Outcome::NotStored => b"NOT_STORED\r\n",
                    Outcome::Exists => b"EXISTS\r\n",
                    Outcome::NotFound => b"NOT_FOUND\r\n",
                    Outcome::NoMemory => b"SERVER_ERROR out of memory storing object\r\n",
                };
                (reply, noreply)
            }
            Command::Delete { key, noreply } => {
                let found = store.delete(key);
                (
                    if found {
                        &b"DELETED\r\n"[..]
                    } else {
                        b"NOT_FOUND\r\n"
                    },
                    noreply,
                )
            }
            Command::Arith {
                incr,
                key,
                delta,
                noreply,
            } => match store.arith(key, incr, delta) {
                Arith::Value(v) if !noreply => return conn.write(format!("{v}\r\n").as_bytes()),
                Arith::Value(_) => (&b""[..], true),
                Arith::NotFound => (&b"NOT_FOUND\r\n"[..], noreply),
                Arith::NonNumeric => (
                    &b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"[..],
                    noreply,
                ),
            },
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                let found = store.touch(key, exptime);
                (
                    if found {
                        &b"TOUCHED\r\n"[..]
                    } else {
                        b"NOT_FOUND\r\n"
                    },
                    noreply,
                )
            }
            Command::FlushAll { delay, noreply } => {
                store.flush_all(delay);
                (&b"OK\r\n"[..], noreply)
            }
            Command::Version => (&b"VERSION 1.6.18\r\n"[..], false),
        };
        if !noreply {
            conn.write(reply);
        }
    }

    /// A refused line, a bad data chunk or a value over the item size: answer (the codec
    /// chose the words) and go on, as memcached does. A `set` over the size also drops the
    /// key's old value, as memcached does (no stale data after a failed set).
    fn on_bad_frame(&mut self, conn: &mut Conn<'_>, bad: &BadFrame, raw: &[u8]) {
        conn.write(bad.reply);
        let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Ok((
            Command::Store {
                op: StoreOp::Set,
                key,
                ..
            },
            Some(len),
        )) = Parser.parse(line)
        {
            if len > self.max_item as u64 {
                self.store.delete(key);
            }
        }
    }
}

impl Session {
    fn get(&self, conn: &mut Conn<'_>, cas: bool, keys: &[u8]) {
        let keys = keys.split(|&b| b == b' ').filter(|k| !k.is_empty());
        for key in keys {
            if key.len() > KEY_MAX {
                return conn.write(b"CLIENT_ERROR bad command line format\r\n");
            }
            self.store.with(key, |item| {
                let Some(item) = item else { return };
                conn.write(b"VALUE ");
                conn.write(key);
                let head = match cas {
                    true => format!(" {} {} {}\r\n", item.flags, item.data.len(), item.cas),
                    false => format!(" {} {}\r\n", item.flags, item.data.len()),
                };
                conn.write(head.as_bytes());
                conn.write(&item.data);
                conn.write(b"\r\n");
            });
        }
        conn.write(b"END\r\n");
    }
}
