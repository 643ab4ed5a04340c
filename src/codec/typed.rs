//! Typed frames: a decoder that hands the handler what it parsed ([`ItemDecoder`], as
//! tokio-util's `Decoder::Item`), and recoverable bad frames ([`Decode::Bad`]).
//!
//! A byte-range [`Decoder`] says where a frame lies; the handler then parses
//! its bytes itself. An [`ItemDecoder`] parses while it frames and yields an `Item` that may
//! borrow the receive buffer (a key, a body: no copy), delivered to
//! [`ItemHandler::on_item`](crate::ItemHandler::on_item). The byte-range path stays as it
//! is, for codecs that need no parsing (`Raw`, `LengthDelimited`, `Lines`); [`Bytes`]
//! serves any of them through this API.
//!
//! An `ItemDecoder` also tells bad frames apart from lost framing:
//!
//! - `Err(DecodeError)`: framing is lost (a line with no end in sight, a length header
//!   beyond the limit the codec closes on). As with `Decoder`, the connection closes.
//! - `Ok(Decode::Bad(bad))`: this frame is bad but its end is known. The engine drops
//!   `bad.skip` bytes (also bytes not received yet: they are dropped as they arrive, never
//!   buffered), counts it (`bad_frames`), logs it at debug level, and calls
//!   [`ItemHandler::on_bad_frame`](crate::ItemHandler::on_bad_frame), whose default writes
//!   `bad.reply`. The connection goes on with the next frame.
//!
//! ```
//! use ringport::codec::{BadFrame, Decode, DecodeError, ItemDecoder};
//!
//! /// "ADD a b\n" lines, parsed into numbers; a line that is not one is answered and skipped.
//! #[derive(Clone)]
//! struct Add;
//! impl ItemDecoder for Add {
//!     type Item<'a> = (u32, u32);
//!     fn decode_item<'a>(&mut self, buf: &'a [u8]) -> Result<Decode<(u32, u32)>, DecodeError> {
//!         let Some(end) = buf.iter().position(|&b| b == b'\n') else {
//!             return if buf.len() > 64 {
//!                 Err(DecodeError::LineTooLong { max: 64 }) // framing lost: close
//!             } else {
//!                 Ok(Decode::Incomplete)
//!             };
//!         };
//!         let line = std::str::from_utf8(&buf[..end]).unwrap_or("");
//!         let mut words = line.split(' ');
//!         let parsed = match (words.next(), words.next(), words.next()) {
//!             (Some("ADD"), Some(a), Some(b)) => a.parse().ok().zip(b.parse().ok()),
//!             _ => None,
//!         };
//!         Ok(match parsed {
//!             Some(item) => Decode::Frame { consumed: end + 1, item },
//!             None => Decode::Bad(BadFrame::new(end + 1, b"ERR\n", "not ADD a b")),
//!         })
//!     }
//! }
//!
//! let mut add = Add;
//! assert!(matches!(add.decode_item(b"ADD 1 2\nrest"), Ok(Decode::Frame { consumed: 8, item: (1, 2) })));
//! assert!(matches!(add.decode_item(b"ADD 1"), Ok(Decode::Incomplete)));
//! let Ok(Decode::Bad(bad)) = add.decode_item(b"SUB 1 2\n") else { panic!() };
//! assert_eq!((bad.skip, bad.reply), (8, &b"ERR\n"[..]));
//! ```

use std::borrow::Cow;

use super::{DecodeError, Decoder, Encoder};

/// What an [`ItemDecoder`] found at the start of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decode<T> {
    /// No complete frame yet: more bytes are needed (the next call passes the same bytes
    /// with more appended).
    Incomplete,
    /// One frame: the first `consumed` bytes (`0 < consumed <= buf.len()`), parsed into
    /// `item`, which may borrow them.
    Frame {
        /// Bytes the frame occupies at the front of the buffer.
        consumed: usize,
        /// What the decoder parsed.
        item: T,
    },
    /// A bad frame whose end is known: skip it, answer, go on.
    Bad(BadFrame),
}

/// A frame the decoder refused without losing the framing: the connection goes on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// Bytes the bad frame spans from the start of the buffer (`> 0`). May be more than the
    /// buffer holds: the rest is dropped as it arrives, without being buffered.
    pub skip: u64,
    /// What the default [`ItemHandler::on_bad_frame`](crate::ItemHandler::on_bad_frame)
    /// writes (empty: nothing, e.g. for a memcached `noreply` command).
    pub reply: &'static [u8],
    /// Why, for the log and the handler.
    pub reason: Cow<'static, str>,
}

impl BadFrame {
    /// A bad frame of `skip` bytes answered with `reply`.
    pub fn new(
        skip: impl TryInto<u64>,
        reply: &'static [u8],
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        BadFrame {
            skip: skip.try_into().unwrap_or(u64::MAX),
            reply,
            reason: reason.into(),
        }
    }
}

/// Finds a frame and parses it into a typed [`Item`](ItemDecoder::Item); the contract of
/// [`Decoder`] otherwise (no IO, never panics, bounded work, checked lengths, `Clone` per
/// connection).
///
/// One addition: a frame the handler holds back
/// ([`Conn::hold_frame`](crate::Conn::hold_frame)) is decoded again from the same bytes, so
/// a decoder that returned `Frame` must return the same frame when called again with the
/// same buffer (the decoders of this module keep no state across a frame they returned).
pub trait ItemDecoder: Clone + Send + 'static {
    /// What one frame is parsed into; may borrow the buffer.
    type Item<'a>;

    /// Looks for one frame at the start of `buf`.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when framing is lost or a limit that ends the connection is broken:
    /// the connection closes (reason `Protocol`), as for [`Decoder`].
    fn decode_item<'a>(&mut self, buf: &'a [u8]) -> Result<Decode<Self::Item<'a>>, DecodeError>;

    /// The matching encoder, for `Conn::send_frame` (default: none).
    fn encoder(&self) -> Option<&dyn Encoder> {
        None
    }

    /// As [`Decoder::max_frame_input`]: the most undecoded bytes the longest accepted frame
    /// needs, so that the server's default input limit fits it.
    fn max_frame_input(&self) -> Option<usize> {
        None
    }
}

/// Any byte-range [`Decoder`] as an [`ItemDecoder`] whose item is the payload slice (it
/// never reports a bad frame): a handler written against [`ItemHandler`](crate::ItemHandler)
/// can use `Lines`, `LengthDelimited`, `Raw`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes<D>(pub D);

impl<D: Decoder> ItemDecoder for Bytes<D> {
    type Item<'a> = &'a [u8];

    fn decode_item<'a>(&mut self, buf: &'a [u8]) -> Result<Decode<&'a [u8]>, DecodeError> {
        Ok(match self.0.decode(buf)? {
            None => Decode::Incomplete,
            Some(d) => match buf.get(d.payload.clone()) {
                Some(item)
                    if d.consumed > 0 && d.consumed <= buf.len() && d.payload.end <= d.consumed =>
                {
                    Decode::Frame {
                        consumed: d.consumed,
                        item,
                    }
                }
                _ => return Err(DecodeError::Malformed("decoder broke its contract".into())),
            },
        })
    }

    fn encoder(&self) -> Option<&dyn Encoder> {
        self.0.encoder()
    }

    fn max_frame_input(&self) -> Option<usize> {
        self.0.max_frame_input()
    }
}
