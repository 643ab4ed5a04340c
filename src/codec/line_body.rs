//! A header line followed by a body of the length it announces: memcached's `set k 0 0 5\r\n`,
//! then 5 bytes and `"\r\n"`; SMTP's `BDAT 1000 LAST\r\n`, then 1000 bytes; an HTTP/1 request
//! line with its `Content-Length` body.
//!
//! ```text
//!   "set k 0 0 5\r\n"  "hello"  "\r\n"          header line, body, body terminator
//!   |-- line --------| |body-| |end-|
//!   `HeaderParser::parse` reads the line: the typed header and the body length (None: no body)
//! ```
//!
//! The protocol's part is a [`HeaderParser`]: it turns the line into a typed header and
//! the announced body length, and says what to answer when something is wrong. The codec
//! frames: [`Lines`] finds the line, then it waits for the body and checks its terminator.
//! The item, a [`WithBody`], borrows both from the receive buffer: nothing is parsed twice
//! and nothing is copied.
//!
//! # Limits and outcomes
//!
//! | input | outcome |
//! |---|---|
//! | a line longer than `max_line` | framing lost: [`DecodeError::LineTooLong`], the connection closes |
//! | a line [`HeaderParser::parse`] refuses | [`Decode::Bad`]: the line is skipped and its reply written |
//! | an announced body longer than `max_body` | [`HeaderParser::oversize`]: `Some(reply)` skips line + body + terminator (the body is dropped as it arrives, never buffered); `None` (default) closes with [`DecodeError::FrameTooLong`] |
//! | a body not followed by the terminator | [`HeaderParser::bad_body_end`]: `Some(reply)` skips line + announced body + terminator length (memcached's `CLIENT_ERROR bad data chunk`); `None` (default) closes |
//!
//! Memory per connection is bounded by `max_line + 2 + max_body + terminator` (what
//! [`ItemDecoder::max_frame_input`] reports, so the server's input limit fits it).
//!
//! ```
//! use ringport::codec::{Decode, HeaderParser, ItemDecoder, LineBody};
//!
//! /// "PUT <len>" carries a body; any other line is a command without one.
//! #[derive(Clone)]
//! struct Put;
//! impl HeaderParser for Put {
//!     type Header<'a> = &'a [u8];
//!     fn parse<'a>(&self, line: &'a [u8]) -> Result<(&'a [u8], Option<u64>), (&'static [u8], &'static str)> {
//!         match line.strip_prefix(b"PUT ") {
//!             Some(len) => {
//!                 let len = std::str::from_utf8(len).ok().and_then(|s| s.parse().ok());
//!                 len.map(|n| (line, Some(n))).ok_or((b"-ERR bad length\r\n", "bad PUT length"))
//!             }
//!             None => Ok((line, None)),
//!         }
//!     }
//! }
//!
//! let mut codec = LineBody::new(Put, 64, 1024);
//! let Ok(Decode::Frame { consumed, item }) = codec.decode_item(b"PUT 5\r\nhello\r\nNEXT") else { panic!() };
//! assert_eq!((consumed, item.header, item.body), (14, &b"PUT 5"[..], Some(&b"hello"[..])));
//! assert!(matches!(codec.decode_item(b"PUT 5\r\nhel"), Ok(Decode::Incomplete)));
//! assert!(matches!(codec.decode_item(b"PUT x\r\n"), Ok(Decode::Bad(_))));
//! assert!(codec.decode_item(b"PUT 4096\r\n").is_err()); // over max_body: closes by default
//! ```

use super::typed::{BadFrame, Decode, ItemDecoder};
use super::{DecodeError, Decoder, Lines};

/// The protocol's half of [`LineBody`]: reads a header line; see the [module docs](self).
pub trait HeaderParser: Clone + Send + 'static {
    /// The parsed line (may borrow it).
    type Header<'a>;

    /// Parses one header line (its `"\r\n"` / `"\n"` excluded) into the header and the
    /// length of the body that follows it (`None`: no body, the frame is the line alone).
    ///
    /// # Errors
    ///
    /// `(reply, reason)` for a line that is no valid header: the line alone is skipped,
    /// `reply` written (by the default `on_bad_frame`), and decoding goes on after it.
    #[allow(clippy::type_complexity)]
    fn parse<'a>(
        &self,
        line: &'a [u8],
    ) -> Result<(Self::Header<'a>, Option<u64>), (&'static [u8], &'static str)>;

    /// A header announced a body of `len` bytes, more than the codec's `max_body`.
    /// `Some(reply)`: skip the line, the `len` body bytes and the terminator (dropped as
    /// they arrive, never buffered) and answer `reply`. `None` (the default): close the
    /// connection ([`DecodeError::FrameTooLong`]).
    fn oversize(&self, header: &Self::Header<'_>, len: u64) -> Option<&'static [u8]> {
        let _ = (header, len);
        None
    }

    /// The body is not followed by the codec's body terminator. `Some(reply)`: skip what the
    /// frame should have spanned (line, body, terminator length) and answer `reply`. `None`
    /// (the default): close the connection ([`DecodeError::Malformed`]).
    fn bad_body_end(&self, header: &Self::Header<'_>) -> Option<&'static [u8]> {
        let _ = header;
        None
    }
}

/// One frame of a [`LineBody`] codec: the parsed header, its line, and the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithBody<'a, H> {
    /// What [`HeaderParser::parse`] made of the line.
    pub header: H,
    /// The header line, its terminator excluded.
    pub line: &'a [u8],
    /// The body (its terminator excluded), if the header announced one.
    pub body: Option<&'a [u8]>,
}

/// Codec for a header line followed by a body of announced length; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct LineBody<P> {
    lines: Lines,
    max_body: usize,
    body_end: &'static [u8],
    parser: P,
}

/// Default longest body of [`LineBody`]: 1 MiB (memcached's default item size).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

impl<P: HeaderParser> LineBody<P> {
    /// Header lines of at most `max_line` bytes (terminator excluded), bodies of at most
    /// `max_body` bytes, each body followed by `"\r\n"` (see [`LineBody::body_end`]).
    #[must_use]
    pub fn new(parser: P, max_line: usize, max_body: usize) -> Self {
        LineBody {
            lines: Lines::new(max_line),
            max_body,
            body_end: b"\r\n",
            parser,
        }
    }

    /// The bytes that must follow each body (default `"\r\n"`; `b""` for none, as SMTP BDAT).
    #[must_use]
    pub fn body_end(mut self, end: &'static [u8]) -> Self {
        self.body_end = end;
        self
    }

    /// The longest body accepted, in bytes.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The longest header line accepted, in bytes (terminator excluded).
    pub fn max_line(&self) -> usize {
        self.lines.max_line()
    }
}

impl<P: HeaderParser> ItemDecoder for LineBody<P> {
    type Item<'a> = WithBody<'a, P::Header<'a>>;

    fn decode_item<'a>(&mut self, buf: &'a [u8]) -> Result<Decode<Self::Item<'a>>, DecodeError> {
        let Some(d) = self.lines.decode(buf)? else {
            return Ok(Decode::Incomplete);
        };
        let line_len = d.consumed;
        let line = &buf[d.payload];
        let (header, len) = match self.parser.parse(line) {
            Ok(parsed) => parsed,
            Err((reply, reason)) => return Ok(Decode::Bad(BadFrame::new(line_len, reply, reason))),
        };
        let Some(len) = len else {
            return Ok(Decode::Frame {
                consumed: line_len,
                item: WithBody {
                    header,
                    line,
                    body: None,
                },
            });
        };
        let end_len = self.body_end.len();
        let body_len = match usize::try_from(len) {
            Ok(n) if n <= self.max_body => n,
            _ => {
                return match self.parser.oversize(&header, len) {
                    Some(reply) => {
                        let skip = (line_len as u64)
                            .saturating_add(len)
                            .saturating_add(end_len as u64);
                        Ok(Decode::Bad(BadFrame::new(
                            skip,
                            reply,
                            "body over max_body",
                        )))
                    }
                    None => Err(DecodeError::FrameTooLong {
                        len,
                        max: self.max_body,
                    }),
                };
            }
        };
        // No overflow: line_len <= max_line + 2 <= buf.len(), body_len <= max_body.
        let body_stop = line_len.saturating_add(body_len);
        let total = body_stop.saturating_add(end_len);
        if buf.len() < total {
            return Ok(Decode::Incomplete);
        }
        if &buf[body_stop..total] != self.body_end {
            return match self.parser.bad_body_end(&header) {
                Some(reply) => Ok(Decode::Bad(BadFrame::new(total, reply, "bad data chunk"))),
                None => Err(DecodeError::Malformed(
                    "body not followed by its terminator".into(),
                )),
            };
        }
        debug_assert!(total > 0 && total <= buf.len());
        Ok(Decode::Frame {
            consumed: total,
            item: WithBody {
                header,
                line,
                body: Some(&buf[line_len..body_stop]),
            },
        })
    }

    /// The longest header line with its terminator, the longest body and its terminator.
    fn max_frame_input(&self) -> Option<usize> {
        Some(
            self.lines
                .max_line()
                .saturating_add(2)
                .saturating_add(self.max_body)
                .saturating_add(self.body_end.len()),
        )
    }
}
