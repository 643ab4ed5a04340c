//! The memcached text protocol's command lines, parsed by the codec (`HeaderParser`): the
//! handler receives a `Command` and, for the storage commands, the data block, both borrowed
//! from the receive buffer. Replies and edge cases follow memcached 1.6's `proto_text.c`.

use ringport::codec::HeaderParser;

/// memcached's longest key.
pub const KEY_MAX: usize = 250;

pub const ERROR: &[u8] = b"ERROR\r\n";
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
pub const BAD_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas(u64),
}

/// One command line, parsed.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    /// `get`/`gets` and the rest of the line (the keys).
    Get {
        cas: bool,
        keys: &'a [u8],
    },
    /// `set`/`add`/`replace`/`append`/`prepend`/`cas`; the data block is the frame's body.
    Store {
        op: StoreOp,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Arith {
        incr: bool,
        key: &'a [u8],
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Version,
}

/// What a refused line answers: nothing under `noreply` (memcached's `out_string`).
fn refuse(reply: &'static [u8], noreply: bool) -> (&'static [u8], &'static str) {
    (if noreply { b"" } else { reply }, "bad command line")
}

/// strtoull as memcached's `safe_strtoull` uses it: leading spaces, a sign, digits, then the
/// end or a space; a negative number is refused.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let s = s.trim_ascii_start();
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0
        || !digits[end..]
            .first()
            .is_none_or(|b| b.is_ascii_whitespace())
    {
        return None;
    }
    let mut v: u64 = 0;
    for &d in &digits[..end] {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    match (neg, v) {
        (false, v) => Some(v),
        (true, v) if v == 0 || (v.wrapping_neg() as i64) >= 0 => Some(v.wrapping_neg()),
        _ => None,
    }
}

/// `safe_strtol` on a 32-bit value (exptime, length).
fn parse_i32(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?;
    s.parse::<i32>().ok().map(i64::from)
}

/// `safe_strtoul` on a 32-bit value (flags).
fn parse_u32(s: &[u8]) -> Option<u32> {
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

#[derive(Debug, Clone, Copy)]
pub struct Parser;

impl HeaderParser for Parser {
    type Header<'a> = Command<'a>;

    fn parse<'a>(
        &self,
        line: &'a [u8],
    ) -> Result<(Command<'a>, Option<u64>), (&'static [u8], &'static str)> {
        let mut words = [&b""[..]; 8];
        let mut n = 0;
        for w in line.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
            if n == words.len() {
                n += 1;
                break;
            }
            words[n] = w;
            n += 1;
        }
        let noreply = n > 1 && words[n.min(words.len()) - 1] == b"noreply";
        let key_ok = |k: &[u8]| k.len() <= KEY_MAX;
        let cmd = match (words[0], n) {
            (b"get" | b"gets", 2..) => {
                let start = line
                    .windows(words[0].len())
                    .position(|w| w == words[0])
                    .unwrap_or(0);
                let keys = &line[start + words[0].len()..];
                return Ok((
                    Command::Get {
                        cas: words[0] == b"gets",
                        keys,
                    },
                    None,
                ));
            }
            (b"set" | b"add" | b"replace" | b"append" | b"prepend", 5 | 6) | (b"cas", 6 | 7) => {
                let key = words[1];
                if !key_ok(key) {
                    return Err(refuse(BAD_FORMAT, noreply));
                }
                let (Some(flags), Some(exptime), Some(len)) = (
                    parse_u32(words[2]),
                    parse_i32(words[3]),
                    parse_i32(words[4]),
                ) else {
                    return Err(refuse(BAD_FORMAT, noreply));
                };
                let op = match words[0] {
                    b"set" => StoreOp::Set,
                    b"add" => StoreOp::Add,
                    b"replace" => StoreOp::Replace,
                    b"append" => StoreOp::Append,
                    b"prepend" => StoreOp::Prepend,
                    _ => StoreOp::Cas(parse_u64(words[5]).ok_or(refuse(BAD_FORMAT, noreply))?),
                };
                let len = u64::try_from(len).map_err(|_| refuse(BAD_FORMAT, noreply))?;
                let cmd = Command::Store {
                    op,
                    key,
                    flags,
                    exptime,
                    noreply,
                };
                return Ok((cmd, Some(len)));
            }
            (b"delete", 2..=4) => {
                let zero = n > 2 && words[2] == b"0";
                if (n == 3 && !(zero || noreply)) || (n == 4 && !(zero && noreply)) {
                    let usage =
                        b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
                    return Err(refuse(usage, noreply));
                }
                if !key_ok(words[1]) {
                    return Err(refuse(BAD_FORMAT, noreply));
                }
                Command::Delete {
                    key: words[1],
                    noreply,
                }
            }
            (b"incr" | b"decr", 3 | 4) => {
                if !key_ok(words[1]) {
                    return Err(refuse(BAD_FORMAT, noreply));
                }
                let Some(delta) = parse_u64(words[2]) else {
                    return Err(refuse(
                        b"CLIENT_ERROR invalid numeric delta argument\r\n",
                        noreply,
                    ));
                };
                Command::Arith {
                    incr: words[0] == b"incr",
                    key: words[1],
                    delta,
                    noreply,
                }
            }
            (b"touch", 3 | 4) => {
                if !key_ok(words[1]) {
                    return Err(refuse(BAD_FORMAT, noreply));
                }
                let Some(exptime) = parse_i32(words[2]) else {
                    return Err(refuse(
                        b"CLIENT_ERROR invalid exptime argument\r\n",
                        noreply,
                    ));
                };
                Command::Touch {
                    key: words[1],
                    exptime,
                    noreply,
                }
            }
            (b"flush_all", 1..=3) => {
                let delay = if n != if noreply { 2 } else { 1 } {
                    let bad = b"CLIENT_ERROR invalid exptime argument\r\n";
                    parse_i32(words[1]).ok_or(refuse(bad, noreply))?
                } else {
                    0
                };
                Command::FlushAll { delay, noreply }
            }
            (b"version", _) => Command::Version,
            _ => return Err((ERROR, "unknown command")),
        };
        Ok((cmd, None))
    }

    /// memcached swallows the data block of a value over its item size and answers so.
    fn oversize(&self, header: &Command<'_>, _len: u64) -> Option<&'static [u8]> {
        let noreply = matches!(header, Command::Store { noreply: true, .. });
        Some(if noreply { b"" } else { TOO_LARGE })
    }

    /// A data block not followed by `\r\n`: `CLIENT_ERROR bad data chunk`, and on.
    fn bad_body_end(&self, header: &Command<'_>) -> Option<&'static [u8]> {
        let noreply = matches!(header, Command::Store { noreply: true, .. });
        Some(if noreply { b"" } else { BAD_CHUNK })
    }
}
