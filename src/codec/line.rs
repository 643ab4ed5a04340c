//! Line-delimited frames: text protocols (SMTP, Redis inline commands, chat...).
//!
//! A line ends in `"\r\n"`; a bare `"\n"` is accepted too. The payload is the
//! line without its terminator (and without the `'\r'` before the `'\n'`). A
//! `'\r'` that is not followed by `'\n'` is an ordinary byte of the line. An
//! empty line is a frame with an empty payload. Lines are bytes, not text:
//! no UTF-8 check is made.
//!
//! ```text
//!        BEFORE DECODE (14 bytes)              AFTER DECODE (12 bytes)
//! +----------------+-------+                +----------------+
//! |    Content     | CR LF |   -------->    |    Payload     |
//! | "HELLO, WORLD" | 0D 0A |                | "HELLO, WORLD" |
//! +----------------+-------+                +----------------+
//!
//!        BEFORE DECODE (13 bytes)              AFTER DECODE (12 bytes)
//! +----------------+----+                   +----------------+
//! |    Content     | LF |   -------->       |    Payload     |
//! | "HELLO, WORLD" | 0A |                   | "HELLO, WORLD" |
//! +----------------+----+                   +----------------+
//! ```
//!
//! # Limits
//!
//! **`max_line` is the guard for untrusted input**: without it a peer that
//! never sends `'\n'` makes the engine buffer without bound. A line whose
//! content is longer than `max_line` bytes is [`DecodeError::LineTooLong`] as
//! soon as that is certain (no `'\n'` where the longest allowed line must have
//! ended), without waiting for more input. A line of exactly `max_line` bytes
//! is accepted.
//!
//! # Cost
//!
//! The decoder remembers how far it has searched for `'\n'`, so a line that
//! arrives in many pieces is scanned once: O(n) in total, not O(n²). The
//! search itself is `memchr` (vectorised), never more than `max_line + 2`
//! bytes into the buffer.
//!
//! ```
//! use ringport::codec::{Decoded, Decoder, Lines};
//!
//! let mut lines = Lines::new(64);
//! assert_eq!(lines.decode(b"HELLO"), Ok(None));
//! assert_eq!(
//!     lines.decode(b"HELLO\r\nrest"),
//!     Ok(Some(Decoded { consumed: 7, payload: 0..5 }))
//! );
//! ```

use super::{DecodeError, Decoded, Decoder};

/// Default maximum line length of [`Lines`], terminator excluded: 8 KiB.
pub const DEFAULT_MAX_LINE: usize = 8192;

/// Codec for lines ending in `"\r\n"` or `"\n"`; see the [module docs](self).
///
/// It keeps per-stream state (how far it has searched), so each connection
/// needs its own value: clone a fresh prototype, don't share one mid-stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    max_line: usize,
    /// Bytes at the start of the buffer already known to hold no `'\n'`.
    scanned: usize,
}

impl Default for Lines {
    /// `Lines::new(DEFAULT_MAX_LINE)`.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl Lines {
    /// A line decoder accepting lines of at most `max_line` bytes, terminator
    /// excluded ([`DEFAULT_MAX_LINE`] is a reasonable value for text protocols).
    #[must_use]
    pub fn new(max_line: usize) -> Self {
        Lines {
            max_line,
            scanned: 0,
        }
    }

    /// The maximum line length in bytes, terminator excluded.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    fn too_long(&mut self) -> DecodeError {
        self.scanned = 0;
        DecodeError::LineTooLong { max: self.max_line }
    }
}

impl Decoder for Lines {
    /// Decodes one line; `Ok(None)` until its `'\n'` arrives, or
    /// [`DecodeError::LineTooLong`] as soon as the line is certain to be too long.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        // The longest acceptable line is max_line content bytes + "\r\n", so
        // its '\n' lies within the first max_line + 2 bytes. Look no further.
        let window = buf.len().min(self.max_line.saturating_add(2));
        // `scanned` may exceed the buffer only if the caller broke the contract.
        let start = self.scanned.min(window);

        // memchr: a vectorised search (SSE2/AVX2 on x86_64), as tokio-util's LinesCodec
        // searches with libc's memchr; the byte-by-byte loop was 5 % of line_server's profile.
        let Some(offset) = memchr::memchr(b'\n', &buf[start..window]) else {
            self.scanned = window;
            // The line is certainly too long once its content has max_line + 1
            // bytes: either max_line + 2 bytes without '\n', or max_line + 1
            // bytes whose last is not a '\r' that may start the terminator.
            let certain = match buf.len().checked_sub(self.max_line) {
                None | Some(0) => false,
                Some(1) => buf.get(self.max_line) != Some(&b'\r'),
                Some(_) => true,
            };
            return if certain {
                Err(self.too_long())
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
        if end > self.max_line {
            return Err(self.too_long());
        }
        self.scanned = 0;
        Ok(Some(Decoded {
            consumed: newline + 1,
            payload: 0..end,
        }))
    }

    fn encoder(&self) -> Option<&dyn super::Encoder> {
        Some(self)
    }

    /// `max_line` content bytes and the `"\r\n"` terminator: an incomplete line longer than
    /// that is refused by the decoder itself (`LineTooLong`), never by the server's limit.
    fn max_frame_input(&self) -> Option<usize> {
        Some(self.max_line.saturating_add(2))
    }
}
