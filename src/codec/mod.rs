//! Sans-IO framing: turning a byte stream into frames.
//!
//! TCP delivers a stream of bytes, not messages. A *codec* finds the message
//! boundaries in that stream. The codecs here do no IO, own no buffer and
//! never allocate while decoding: the engine keeps the connection's receive
//! buffer and asks a [`Decoder`] where the next frame lies inside it. The
//! answer is a [`Decoded`]: how many bytes the frame occupies at the front of
//! the buffer and which range of them is the payload, so the payload is handed
//! to the application as a borrowed slice, without a copy.
//!
//! # Map
//!
//! | Item | File | Frames |
//! |------|------|--------|
//! | [`Raw`] | `mod.rs` | every available byte is one frame (echo, proxies) |
//! | [`LengthDelimited`] | `length.rs` | a 1/2/4/8-byte length header, big or little endian, then the payload |
//! | [`Lines`] | `line.rs` | lines ending in `"\r\n"` (a bare `"\n"` is accepted too) |
//! | [`Resp`] | `resp.rs` | Redis commands (RESP2 arrays of bulk strings, inline commands); replies encoded without allocation |
//! | [`LineBody`] | `line_body.rs` | a header line, then a body of the length it announces (memcached, SMTP `BDAT`); typed |
//!
//! Typed frames (`typed.rs`): an [`ItemDecoder`] parses while it frames and hands the
//! handler a typed item ([`ItemHandler`](crate::ItemHandler)); it can also report a bad
//! frame that is skipped and answered while the connection goes on ([`Decode::Bad`]).
//! [`Bytes`] serves any byte-range [`Decoder`] through that API.
//!
//! [`Decoder`] is the contract between the engine and every codec;
//! [`DecodeError`] says why a stream was rejected. [`LengthDelimited::encode`]
//! writes frames in the same layout its decoder reads ([`EncodeError`] when it
//! cannot). Tests live in `tests.rs`.
//!
//! # Untrusted input
//!
//! Every byte a decoder looks at comes from the network. The decoders never
//! panic, never allocate, never overflow, and reject a frame as soon as it is
//! certain it breaks a limit: [`LengthDelimited::max_frame`] and
//! [`Lines::new`]'s `max_line` are what bound the memory a peer can make the
//! engine hold, so set them to the largest frame the protocol really needs.
//!
//! # Driving a decoder
//!
//! This is the loop the engine runs on every connection (here with a
//! `Vec<u8>` as the receive buffer):
//!
//! ```
//! use ringport::codec::{Decoder, LengthDelimited};
//!
//! let codec = LengthDelimited::new();
//! let mut wire = Vec::new();
//! codec.encode(b"hello", &mut wire).unwrap();
//! codec.encode(b"world", &mut wire).unwrap();
//!
//! let mut decoder = codec.clone();
//! let mut buf = Vec::new();
//! let mut frames = Vec::new();
//! for chunk in wire.chunks(3) {
//!     buf.extend_from_slice(chunk); // bytes arrive
//!     loop {
//!         match decoder.decode(&buf) {
//!             Ok(Some(d)) => {
//!                 frames.push(buf[d.payload].to_vec()); // on_frame(&buf[d.payload])
//!                 buf.drain(..d.consumed);
//!             }
//!             Ok(None) => break,                      // wait for more bytes
//!             Err(e) => panic!("close the connection: {e}"),
//!         }
//!     }
//! }
//! assert_eq!(frames, [b"hello".to_vec(), b"world".to_vec()]);
//! ```
#![forbid(unsafe_code)]

mod encode;
pub mod length;
pub mod line;
pub mod line_body;
#[cfg(test)]
mod line_body_tests;
pub mod resp;
#[cfg(test)]
mod tests;
pub mod typed;

use std::ops::Range;

pub use encode::Encoder;
pub use length::{EncodeError, Endian, LayoutError, LengthDelimited, DEFAULT_MAX_FRAME};
pub use line::{Lines, DEFAULT_MAX_LINE};
pub use line_body::{HeaderParser, LineBody, WithBody, DEFAULT_MAX_BODY};
pub use resp::Resp;
pub use typed::{BadFrame, Bytes, Decode, ItemDecoder};

/// One decoded frame's position inside the buffer handed to [`Decoder::decode`].
///
/// Invariants (every decoder in this module upholds them):
/// `0 < consumed <= buf.len()` and `payload.start <= payload.end <= consumed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes to drop from the front of the buffer (header + payload + terminator).
    pub consumed: usize,
    /// Where the payload lies inside the buffer (for [`Lines`]: the line without
    /// `"\r\n"` / `"\n"`).
    pub payload: Range<usize>,
}

/// Finds frames in a byte stream, without doing IO and without allocating.
///
/// A decoder is called with the bytes received so far that no frame has
/// consumed yet, always starting at a frame boundary. It answers:
///
/// - `Ok(None)`: the buffer does not hold a complete frame yet; more bytes are
///   needed. The next call passes **the same bytes with more appended** (a
///   decoder may remember how far it has already looked, as [`Lines`] does).
/// - `Ok(Some(d))`: the first `d.consumed` bytes of the buffer are one frame
///   whose payload is `buf[d.payload]`. The caller hands the payload on, drops
///   `d.consumed` bytes from the front of the buffer and calls again with the
///   rest (which may hold further frames, or be empty). `d.consumed` is never
///   zero, so this loop always makes progress.
/// - `Err(e)`: the stream is corrupt or a limit was exceeded. There is no way to
///   resynchronise; the caller closes the connection and never calls this
///   decoder again. (A codec that can skip a bad frame and go on implements
///   [`ItemDecoder`] and returns [`Decode::Bad`].)
///
/// A decoder never panics on any input, never allocates (certainly not the
/// length a peer announces), and uses checked arithmetic on every length read
/// from the stream.
///
/// Each connection gets its own decoder, cloned from a prototype the server was
/// configured with; that is why decoders are `Clone + Send + 'static`.
pub trait Decoder: Clone + Send + 'static {
    /// Looks for one frame at the start of `buf`; see the trait docs for the contract.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when the stream is corrupt or breaks a limit; the
    /// connection must then be closed.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, DecodeError>;

    /// The matching encoder, for `Conn::send_frame` (default: none; the codecs of this
    /// module return themselves).
    fn encoder(&self) -> Option<&dyn Encoder> {
        None
    }

    /// The most undecoded bytes the longest frame this decoder accepts can need before it
    /// decodes (header and terminator included), if the decoder has such a bound. A server
    /// built on it raises its default input limit
    /// ([`Server::max_buffered_input`](crate::Server::max_buffered_input)) to fit, so that
    /// every frame the decoder's own limit accepts is taken. Default: `None` (no bound known:
    /// the server's default limit applies).
    fn max_frame_input(&self) -> Option<usize> {
        None
    }
}

/// Why a decoder rejected a stream. Every variant means: close the connection.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A length header announced a payload of `len` bytes, more than the
    /// configured maximum of `max` bytes. Reported as soon as the header is
    /// complete, before any payload byte has arrived.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLong {
        /// The announced payload length (the header excluded).
        len: u64,
        /// The configured maximum payload length.
        max: usize,
    },
    /// A line's content (its terminator excluded) is longer than `max` bytes:
    /// no `'\n'` appeared where the longest allowed line would have ended.
    /// Reported as soon as that is certain, without waiting for the terminator.
    #[error("no line terminator within {max} bytes")]
    LineTooLong {
        /// The configured maximum line length (terminator excluded).
        max: usize,
    },
    /// A length header holds a value that no frame can have: with a length
    /// that counts the header, a value smaller than the header itself.
    #[error("invalid frame length {len}")]
    InvalidLength {
        /// The raw value of the length field.
        len: u64,
    },
    /// The bytes break the protocol's grammar or one of its limits, as the
    /// text says (for [`Resp`]: Redis's own wording, e.g. `invalid bulk length`).
    #[error("{0}")]
    Malformed(String),
}

/// Every available byte is one frame: the echo server's codec.
///
/// `decode` returns `Ok(None)` on an empty buffer and otherwise one frame
/// spanning the whole buffer (`consumed == buf.len()`, `payload == 0..buf.len()`),
/// so each received chunk is delivered as it arrived. It never fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Decoder for Raw {
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        if buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(Decoded {
            consumed: buf.len(),
            payload: 0..buf.len(),
        }))
    }
    fn encoder(&self) -> Option<&dyn Encoder> {
        Some(self)
    }
}
