//! RESP, the Redis serialization protocol (version 2): commands in, replies out.
//!
//! A Redis client sends each command as an **array of bulk strings**; telnet
//! users (and `redis-cli` in some modes) send **inline commands**, one line of
//! space-separated words. [`Resp`] finds both in the byte stream; a frame is
//! one whole command, handed to the application without a copy, and
//! [`Command::parse`] reads its arguments out of it (borrowed from the frame,
//! except inline words with quotes or escapes).
//!
//! ```text
//!   array of bulk strings (what every client library sends)
//! +------+-----------+-------+-----------+-------+
//! | *2\r\n | $3\r\n    | GET\r\n | $3\r\n    | key\r\n |   -> ["GET", "key"]
//! +------+-----------+-------+-----------+-------+
//!  count   length       bytes   length       bytes
//!
//!   inline command (telnet): words split on spaces, "..." and '...' quote
//! GET "a key"\r\n                                      -> ["GET", "a key"]
//! ```
//!
//! An array of zero (`*0`, `*-1`) elements and an empty line are valid
//! frames with no arguments: Redis ignores them, and so should a server.
//!
//! # Limits and errors
//!
//! Every limit is checked as soon as the bytes that break it arrive, and no
//! announced length is ever allocated (the decoder allocates nothing but the
//! text of the error that ends a stream):
//!
//! | limit | default | error text (Redis's own, after `Protocol error: `) |
//! |---|---|---|
//! | bulk string length ([`Resp::max_bulk`]) | 512 MiB, like Redis | `invalid bulk length` |
//! | elements in an array ([`Resp::max_args`]) | 1 048 576 | `invalid multibulk length` |
//! | inline line length ([`Resp::max_inline`]) | 64 KiB, like Redis | `too big inline request` |
//! | a count or length line | 32 bytes (no valid number is longer) | `too big mbulk count string`, `too big bulk count string` |
//!
//! Grammar errors are `expected '$', got 'X'` (an array element that is not
//! a bulk string), `invalid multibulk length` / `invalid bulk length` (not a
//! number in Redis's strict form: no sign but `-`, no leading zeros),
//! `unbalanced quotes in request` (inline), and `bulk string not terminated
//! by CRLF` (Redis skips those two bytes without looking; this decoder checks
//! them). Each is a [`DecodeError::Malformed`] carrying that text, so a server
//! answers with [`protocol_error_reply`] and closes, as Redis does. The whole
//! command must fit in the engine's undecoded-input limit
//! (`Server::max_buffered_input`), so set that above `max_bulk`.
//!
//! # Cost
//!
//! The decoder remembers how far into a command it has validated, so a
//! command arriving in many pieces is parsed once (a 16 MiB value in 16 KiB
//! receives costs one header parse per receive, never a rescan).
//!
//! # Replies
//!
//! Replies are RESP2, plus the two RESP3 types a server needs to answer a
//! client that asked for RESP3 with `HELLO 3` (as redis-py 8 does by default):
//! the null [`NULL3`] and maps ([`ReplyHeader::map`]); every other RESP2 reply
//! is also valid RESP3. [`ReplyHeader`] formats `$<len>\r\n`, `*<n>\r\n`,
//! `%<n>\r\n` and `:<n>\r\n` on the stack, so a bulk reply is three writes of borrowed bytes with no
//! allocation; `write_*` append whole replies to a `Vec<u8>`.
//!
//! ```
//! use ringport::codec::resp::{Command, Resp, ReplyHeader};
//! use ringport::codec::Decoder;
//!
//! let wire = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nPING\r\n";
//! let mut resp = Resp::new();
//! let d = resp.decode(wire).unwrap().unwrap();
//! let cmd = Command::parse(&wire[d.payload.clone()]);
//! assert_eq!(cmd.len(), 2);
//! assert!(cmd.name().eq_ignore_ascii_case(b"get"));
//! let args: Vec<_> = cmd.args().collect();
//! assert_eq!(&*args[1], b"key");
//!
//! let rest = &wire[d.consumed..];
//! let d = resp.decode(rest).unwrap().unwrap(); // an inline command
//! assert_eq!(&*Command::parse(&rest[d.payload]).name(), b"PING");
//!
//! assert_eq!(ReplyHeader::bulk(5).as_bytes(), b"$5\r\n");
//! ```

use std::borrow::Cow;

use super::{DecodeError, Decoded, Decoder};

/// Default longest bulk string: 512 MiB, Redis's `proto-max-bulk-len`.
pub const DEFAULT_MAX_BULK: usize = 512 * 1024 * 1024;
/// Default most elements in one command array: 1 048 576.
pub const DEFAULT_MAX_ARGS: usize = 1024 * 1024;
/// Default longest inline command line (terminator excluded): 64 KiB, Redis's
/// `PROTO_INLINE_MAX_SIZE`.
pub const DEFAULT_MAX_INLINE: usize = 64 * 1024;

/// Longest content of a `*<count>` or `$<length>` line. The longest valid one
/// is a sign and 19 digits; anything longer is certainly malformed.
const MAX_HEADER: usize = 32;

/// The RESP2 command decoder; see the [module docs](self).
///
/// It keeps per-stream progress, so each connection needs its own value: clone
/// a fresh prototype, don't share one mid-stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    max_bulk: usize,
    max_args: usize,
    max_inline: usize,
    /// Array in progress: offset of the next element (0: no array header read yet).
    next: usize,
    /// Array in progress: elements still to validate.
    left: usize,
    /// Inline line in progress: bytes known to hold no `'\n'`.
    scanned: usize,
}

impl Default for Resp {
    fn default() -> Self {
        Self::new()
    }
}

impl Resp {
    /// A decoder with Redis's default limits ([`DEFAULT_MAX_BULK`],
    /// [`DEFAULT_MAX_ARGS`], [`DEFAULT_MAX_INLINE`]).
    #[must_use]
    pub fn new() -> Self {
        Resp {
            max_bulk: DEFAULT_MAX_BULK,
            max_args: DEFAULT_MAX_ARGS,
            max_inline: DEFAULT_MAX_INLINE,
            next: 0,
            left: 0,
            scanned: 0,
        }
    }

    /// Sets the longest bulk string accepted, in bytes.
    #[must_use]
    pub fn max_bulk(mut self, bytes: usize) -> Self {
        self.max_bulk = bytes;
        self
    }

    /// Sets the most elements accepted in one command array.
    #[must_use]
    pub fn max_args(mut self, n: usize) -> Self {
        self.max_args = n;
        self
    }

    /// Sets the longest inline command line accepted, terminator excluded.
    #[must_use]
    pub fn max_inline(mut self, bytes: usize) -> Self {
        self.max_inline = bytes;
        self
    }

    /// The longest bulk string accepted, in bytes.
    pub fn bulk_limit(&self) -> usize {
        self.max_bulk
    }

    /// The most elements accepted in one command array.
    pub fn args_limit(&self) -> usize {
        self.max_args
    }

    /// The longest inline line accepted, in bytes.
    pub fn inline_limit(&self) -> usize {
        self.max_inline
    }

    fn fail(&mut self, msg: impl Into<String>) -> DecodeError {
        self.reset();
        DecodeError::Malformed(msg.into())
    }

    fn reset(&mut self) {
        self.next = 0;
        self.left = 0;
        self.scanned = 0;
    }

    fn done(&mut self, consumed: usize, payload_end: usize) -> Option<Decoded> {
        self.reset();
        Some(Decoded {
            consumed,
            payload: 0..payload_end,
        })
    }

    fn decode_array(&mut self, buf: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        if self.next == 0 {
            let Some((count, after)) = number_line(buf, 1) else {
                return if buf.len() > 1 + MAX_HEADER + 1 {
                    Err(self.fail("too big mbulk count string"))
                } else {
                    Ok(None)
                };
            };
            let n = match count {
                Some(n) if n <= 0 => return Ok(self.done(after, after)),
                Some(n) if usize::try_from(n).is_ok_and(|n| n <= self.max_args) => n as usize,
                _ => return Err(self.fail("invalid multibulk length")),
            };
            self.next = after;
            self.left = n;
        }
        while self.left > 0 {
            let start = self.next;
            let Some(&first) = buf.get(start) else {
                return Ok(None);
            };
            if first != b'$' {
                let got = if first.is_ascii_graphic() || first == b' ' {
                    char::from(first).to_string()
                } else {
                    char::from(first).escape_default().to_string()
                };
                return Err(self.fail(format!("expected '$', got '{got}'")));
            }
            let Some((length, after)) = number_line(buf, start + 1) else {
                return if buf.len() - start > 1 + MAX_HEADER + 1 {
                    Err(self.fail("too big bulk count string"))
                } else {
                    Ok(None)
                };
            };
            let len = match length {
                Some(n) if n >= 0 && usize::try_from(n).is_ok_and(|n| n <= self.max_bulk) => {
                    n as usize
                }
                _ => return Err(self.fail("invalid bulk length")),
            };
            let Some(end) = after.checked_add(len) else {
                return Err(self.fail("invalid bulk length"));
            };
            // The bytes and their CRLF must all be here.
            if buf.len() < end.saturating_add(2) {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(self.fail("bulk string not terminated by CRLF"));
            }
            self.next = end + 2;
            self.left -= 1;
        }
        let end = self.next;
        Ok(self.done(end, end))
    }

    fn decode_inline(&mut self, buf: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        // As in `Lines`: the longest acceptable line's '\n' lies within max_inline + 2 bytes.
        let window = buf.len().min(self.max_inline.saturating_add(2));
        let start = self.scanned.min(window);
        let Some(offset) = buf[start..window].iter().position(|&b| b == b'\n') else {
            self.scanned = window;
            let certain = match buf.len().checked_sub(self.max_inline) {
                None | Some(0) => false,
                Some(1) => buf.get(self.max_inline) != Some(&b'\r'),
                Some(_) => true,
            };
            return if certain {
                Err(self.fail("too big inline request"))
            } else {
                Ok(None)
            };
        };
        let newline = start + offset;
        let end = if newline > 0 && buf[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        if end > self.max_inline {
            return Err(self.fail("too big inline request"));
        }
        let mut pos = 0;
        loop {
            match next_word(&buf[..end], pos, &mut |_| {}) {
                Ok(Some((_, next))) => pos = next,
                Ok(None) => break,
                Err(()) => return Err(self.fail("unbalanced quotes in request")),
            }
        }
        Ok(self.done(newline + 1, end))
    }
}

impl Decoder for Resp {
    /// Decodes one command; `Ok(None)` until all of it has arrived, or a
    /// [`DecodeError::Malformed`] with Redis's wording as soon as the stream
    /// is certain to be invalid or over a limit.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        match buf.first() {
            None => Ok(None),
            Some(b'*') => self.decode_array(buf),
            Some(_) => self.decode_inline(buf),
        }
    }
}

/// The number on the `\r\n`-terminated line starting at `from` (`None` if it is not one in
/// [`parse_i64`]'s form) and the offset after its terminator; `None` while the line is
/// incomplete. What [`header_line`] and [`parse_i64`] give together, with a fast path for what
/// every client sends (a few digits, then `\r\n`): one pass over the digits, no line search.
/// The fast path is inlined into every caller (the decoder, [`Command::parse`], [`Args`]); the
/// general one is a call.
#[inline(always)]
fn number_line(buf: &[u8], from: usize) -> Option<(Option<i64>, usize)> {
    match quick_number(buf, from) {
        Some((n, after)) => {
            debug_assert_eq!(
                number_line_slow(buf, from),
                Some((Some(n), after)),
                "the fast path agrees"
            );
            Some((Some(n), after))
        }
        None => number_line_slow(buf, from),
    }
}

/// [`number_line`]'s general path: the line found, then [`parse_i64`].
#[inline(never)]
fn number_line_slow(buf: &[u8], from: usize) -> Option<(Option<i64>, usize)> {
    header_line(buf, from).map(|(content, after)| (parse_i64(content), after))
}

/// [`number_line`]'s fast path: a line of 1 to 18 digits without a leading zero (or `0`
/// alone), then `\r\n`; `None` for anything else, which the general path then reads.
#[inline(always)]
fn quick_number(buf: &[u8], from: usize) -> Option<(i64, usize)> {
    let rest = buf.get(from..)?;
    // One or two digits (a command's count, its name, most keys): matched whole.
    match *rest {
        [d @ b'0'..=b'9', b'\r', b'\n', ..] => return Some((i64::from(d - b'0'), from + 3)),
        [a @ b'1'..=b'9', b @ b'0'..=b'9', b'\r', b'\n', ..] => {
            return Some((i64::from((a - b'0') * 10 + (b - b'0')), from + 4));
        }
        _ => {}
    }
    // Up to 18 digits cannot overflow an i64; a longer or signed number takes the general
    // path.
    let mut v: i64 = 0;
    let mut i = 0;
    while let Some(&d) = rest.get(i) {
        if !d.is_ascii_digit() || i == 18 {
            break;
        }
        v = v * 10 + i64::from(d - b'0');
        i += 1;
    }
    let canonical = i == 1 || (i > 1 && rest[0] != b'0');
    (canonical && rest.get(i) == Some(&b'\r') && rest.get(i + 1) == Some(&b'\n'))
        .then_some((v, from + i + 2))
}

/// The content of the `\r\n`-terminated line starting at `from` (at most
/// [`MAX_HEADER`] bytes are looked at) and the offset after its terminator;
/// `None` while it is incomplete. A bare `\n` leaves the `\r`-less content,
/// which then fails to parse as a number.
fn header_line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let window = buf.len().min(from + MAX_HEADER + 2);
    let rest = buf.get(from..window)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let content = match rest[..nl].split_last() {
        Some((b'\r', content)) => content,
        _ => &rest[..=nl], // no '\r': the '\n' makes it no number, which the caller reports
    };
    Some((content, from + nl + 1))
}

/// Parses a decimal integer the way Redis's `string2ll` does: an optional
/// `-`, then digits without leading zeros (`0` alone is allowed), no spaces,
/// no `+`, within `i64`. `None` for anything else.
#[must_use]
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if negative {
            v.checked_sub(digit)?
        } else {
            v.checked_add(digit)?
        };
    }
    Some(v)
}

/// What separates inline words (C's `isspace`).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One inline word as Redis's `sdssplitargs` reads it.
enum Word {
    /// Plain bytes, borrowed as they are.
    Plain(std::ops::Range<usize>),
    /// Quoted or escaped: its bytes were passed to the sink.
    Built,
}

/// Reads the word starting at or after `pos` in `line`; its bytes go to `sink`
/// when it needs unquoting (a plain word is only returned as a range).
/// `Ok(None)` at the end of the line, `Err(())` for unbalanced quotes or a
/// closing quote followed by something other than a space.
fn next_word(
    line: &[u8],
    mut pos: usize,
    sink: &mut dyn FnMut(u8),
) -> Result<Option<(Word, usize)>, ()> {
    while pos < line.len() && is_space(line[pos]) {
        pos += 1;
    }
    if pos == line.len() {
        return Ok(None);
    }
    let start = pos;
    // Fast path: a word without quotes is borrowed.
    while pos < line.len() && !matches!(line[pos], b' ' | b'\n' | b'\r' | b'\t' | b'"' | b'\'') {
        pos += 1;
    }
    if pos == line.len() || !matches!(line[pos], b'"' | b'\'') {
        return Ok(Some((Word::Plain(start..pos), pos)));
    }
    // A quote: the word so far, then quoted sections (sdssplitargs semantics).
    for &b in &line[start..pos] {
        sink(b);
    }
    loop {
        let Some(&b) = line.get(pos) else {
            return Ok(Some((Word::Built, pos)));
        };
        match b {
            b' ' | b'\n' | b'\r' | b'\t' => return Ok(Some((Word::Built, pos))),
            b'"' => {
                pos += 1;
                loop {
                    match line.get(pos) {
                        None => return Err(()),
                        Some(b'\\') if line.get(pos + 1) == Some(&b'x') => {
                            let hi = line.get(pos + 2).copied().and_then(hex_value);
                            let lo = line.get(pos + 3).copied().and_then(hex_value);
                            if let (Some(hi), Some(lo)) = (hi, lo) {
                                sink(hi * 16 + lo);
                                pos += 4;
                            } else {
                                sink(b'x');
                                pos += 2;
                            }
                        }
                        Some(b'\\') if pos + 1 < line.len() => {
                            sink(match line[pos + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => other,
                            });
                            pos += 2;
                        }
                        Some(b'"') => {
                            pos += 1;
                            // The closing quote must end the word.
                            return match line.get(pos) {
                                None => Ok(Some((Word::Built, pos))),
                                Some(&c) if is_space(c) => Ok(Some((Word::Built, pos))),
                                Some(_) => Err(()),
                            };
                        }
                        Some(&c) => {
                            sink(c);
                            pos += 1;
                        }
                    }
                }
            }
            b'\'' => {
                pos += 1;
                loop {
                    match line.get(pos) {
                        None => return Err(()),
                        Some(b'\\') if line.get(pos + 1) == Some(&b'\'') => {
                            sink(b'\'');
                            pos += 2;
                        }
                        Some(b'\'') => {
                            pos += 1;
                            return match line.get(pos) {
                                None => Ok(Some((Word::Built, pos))),
                                Some(&c) if is_space(c) => Ok(Some((Word::Built, pos))),
                                Some(_) => Err(()),
                            };
                        }
                        Some(&c) => {
                            sink(c);
                            pos += 1;
                        }
                    }
                }
            }
            other => {
                sink(other);
                pos += 1;
            }
        }
    }
}

/// A command decoded by [`Resp`]: its arguments, read lazily from the frame.
///
/// Parse the frame's payload (`Frame::payload()`); the name is the first
/// argument. A payload that did not come from [`Resp`] never panics: reading
/// simply stops where it stops making sense.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    frame: &'a [u8],
    argc: usize,
    /// Offset of the first element (arrays), `None` for an inline line.
    first: Option<usize>,
}

impl<'a> Command<'a> {
    /// Reads the command out of a frame payload produced by [`Resp`].
    #[must_use]
    pub fn parse(frame: &'a [u8]) -> Command<'a> {
        if frame.first() == Some(&b'*') {
            let (argc, first) = match number_line(frame, 1) {
                Some((count, after)) => (
                    count.and_then(|n| usize::try_from(n).ok()).unwrap_or(0),
                    after,
                ),
                None => (0, frame.len()),
            };
            Command {
                frame,
                argc,
                first: Some(first),
            }
        } else {
            let mut argc = 0;
            let mut pos = 0;
            while let Ok(Some((_, next))) = next_word(frame, pos, &mut |_| {}) {
                argc += 1;
                pos = next;
            }
            Command {
                frame,
                argc,
                first: None,
            }
        }
    }

    /// Number of arguments, the name included (0 for an empty command).
    pub fn len(&self) -> usize {
        self.argc
    }

    /// Whether the command has no arguments at all (`*0`, an empty line): ignore it.
    pub fn is_empty(&self) -> bool {
        self.argc == 0
    }

    /// The command name (the first argument; empty for an empty command).
    pub fn name(&self) -> Cow<'a, [u8]> {
        self.args().next().unwrap_or(Cow::Borrowed(&[]))
    }

    /// The arguments in order, the name first. Borrowed from the frame, except
    /// inline words that needed unquoting.
    pub fn args(&self) -> Args<'a> {
        Args {
            frame: self.frame,
            pos: self.first.unwrap_or(0),
            left: self.argc,
            inline: self.first.is_none(),
        }
    }
}

/// Iterator over a [`Command`]'s arguments.
#[derive(Debug, Clone)]
pub struct Args<'a> {
    frame: &'a [u8],
    pos: usize,
    left: usize,
    inline: bool,
}

impl<'a> Iterator for Args<'a> {
    type Item = Cow<'a, [u8]>;

    fn next(&mut self) -> Option<Cow<'a, [u8]>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if self.inline {
            let mut built = Vec::new();
            let (word, next) = next_word(self.frame, self.pos, &mut |b| built.push(b)).ok()??;
            self.pos = next;
            return Some(match word {
                Word::Plain(r) => Cow::Borrowed(&self.frame[r]),
                Word::Built => Cow::Owned(built),
            });
        }
        let (length, after) = number_line(self.frame, self.pos + 1)?;
        let len = usize::try_from(length?).ok()?;
        let bytes = self.frame.get(after..after.checked_add(len)?)?;
        self.pos = after + len + 2;
        Some(Cow::Borrowed(bytes))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// A reply header formatted on the stack: `$<len>\r\n`, `*<n>\r\n`, `:<n>\r\n`.
#[derive(Clone, Copy)]
pub struct ReplyHeader {
    buf: [u8; 24],
    len: u8,
}

impl ReplyHeader {
    fn new(prefix: u8, n: i64) -> ReplyHeader {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let mut buf = [0u8; 24];
        buf[0] = prefix;
        let mut len = 1;
        if n < 0 {
            buf[1] = b'-';
            len = 2;
        }
        let d = &digits[i..];
        buf[len..len + d.len()].copy_from_slice(d);
        len += d.len();
        buf[len..len + 2].copy_from_slice(b"\r\n");
        ReplyHeader {
            buf,
            len: (len + 2) as u8,
        }
    }

    /// `$<len>\r\n`: the header of a bulk string of `len` bytes.
    pub fn bulk(len: usize) -> ReplyHeader {
        ReplyHeader::new(b'$', i64::try_from(len).unwrap_or(i64::MAX))
    }

    /// `*<n>\r\n`: the header of an array of `n` elements.
    pub fn array(n: usize) -> ReplyHeader {
        ReplyHeader::new(b'*', i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// `%<n>\r\n`: the header of a RESP3 map of `n` key/value pairs (`2n` elements follow).
    pub fn map(n: usize) -> ReplyHeader {
        ReplyHeader::new(b'%', i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// `:<n>\r\n`: a whole integer reply.
    pub fn integer(n: i64) -> ReplyHeader {
        ReplyHeader::new(b':', n)
    }

    /// The formatted bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for ReplyHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReplyHeader({:?})",
            String::from_utf8_lossy(self.as_bytes())
        )
    }
}

/// `+OK\r\n`.
pub const OK: &[u8] = b"+OK\r\n";
/// `+PONG\r\n`.
pub const PONG: &[u8] = b"+PONG\r\n";
/// `$-1\r\n`: the RESP2 null bulk string (a missing key).
pub const NULL: &[u8] = b"$-1\r\n";
/// `_\r\n`: the RESP3 null, for clients that said `HELLO 3`.
pub const NULL3: &[u8] = b"_\r\n";
/// `*0\r\n`: the empty array.
pub const EMPTY_ARRAY: &[u8] = b"*0\r\n";

/// Appends a bulk string reply: `$<len>\r\n<data>\r\n`.
pub fn write_bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(ReplyHeader::bulk(data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer reply: `:<n>\r\n`.
pub fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(ReplyHeader::integer(n).as_bytes());
}

/// Appends an array header: `*<n>\r\n` (the `n` elements follow).
pub fn write_array_header(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(ReplyHeader::array(n).as_bytes());
}

/// Appends a simple string reply: `+<text>\r\n`. `\r` and `\n` in `text`
/// (which would end the reply early) are written as spaces.
pub fn write_simple(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'+');
    push_line(out, text);
}

/// Appends an error reply: `-<text>\r\n`, where `text` starts with the error
/// code (`ERR`, `WRONGTYPE`, `OOM`...). `\r` and `\n` are written as spaces.
pub fn write_error(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'-');
    push_line(out, text);
}

fn push_line(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// The reply Redis sends before closing a connection whose input broke the
/// protocol: `-ERR Protocol error: <what>\r\n`.
#[must_use]
pub fn protocol_error_reply(error: &DecodeError) -> Vec<u8> {
    let what = match error {
        DecodeError::Malformed(msg) => msg.clone(),
        other => other.to_string(),
    };
    let mut out = Vec::with_capacity(what.len() + 24);
    write_error(&mut out, format!("ERR Protocol error: {what}").as_bytes());
    out
}

#[cfg(test)]
#[path = "resp_tests.rs"]
mod tests;
