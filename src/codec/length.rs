//! Length-delimited frames: a fixed-width length header, then the payload.
//!
//! The header is an unsigned integer of 1, 2, 4 or 8 bytes, big or little
//! endian, holding either the payload length or the whole frame's length
//! (header included). The payload follows the header directly. Decoding
//! yields the payload's range; the header is consumed along with it.
//!
//! # Layouts
//!
//! Each diagram shows the 12-byte payload `"HELLO, WORLD"` on the wire
//! (before decode) and what the decoder hands on (after decode: the
//! [`Decoded::payload`] range of the buffer).
//!
//! ## 4-byte big-endian length of the payload ([`LengthDelimited::new`], the default)
//!
//! Same layout as tokio-util's `LengthDelimitedCodec` default.
//!
//! ```text
//!          BEFORE DECODE (16 bytes)                   AFTER DECODE (12 bytes)
//! +---------------+----------------+               +----------------+
//! |    Length     |    Payload     |   -------->   |    Payload     |
//! | 00 00 00 0C   | "HELLO, WORLD" |               | "HELLO, WORLD" |
//! +---------------+----------------+               +----------------+
//! ```
//!
//! ## 2-byte big-endian length of the payload (`.length_width(2)`)
//!
//! ```text
//!          BEFORE DECODE (14 bytes)                   AFTER DECODE (12 bytes)
//! +---------+----------------+                     +----------------+
//! | Length  |    Payload     |   -------->         |    Payload     |
//! | 00 0C   | "HELLO, WORLD" |                     | "HELLO, WORLD" |
//! +---------+----------------+                     +----------------+
//! ```
//!
//! ## 1-byte length (`.length_width(1)`, payloads up to 255 bytes)
//!
//! ```text
//!          BEFORE DECODE (13 bytes)                   AFTER DECODE (12 bytes)
//! +--------+----------------+                      +----------------+
//! | Length |    Payload     |   -------->          |    Payload     |
//! |   0C   | "HELLO, WORLD" |                      | "HELLO, WORLD" |
//! +--------+----------------+                      +----------------+
//! ```
//!
//! ## 8-byte big-endian length (`.length_width(8)`)
//!
//! ```text
//!          BEFORE DECODE (20 bytes)                   AFTER DECODE (12 bytes)
//! +-------------------------+----------------+     +----------------+
//! |         Length          |    Payload     | --> |    Payload     |
//! | 00 00 00 00 00 00 00 0C | "HELLO, WORLD" |     | "HELLO, WORLD" |
//! +-------------------------+----------------+     +----------------+
//! ```
//!
//! ## Little-endian length (`.endian(Endian::Little)`)
//!
//! ```text
//!          BEFORE DECODE (16 bytes)                   AFTER DECODE (12 bytes)
//! +---------------+----------------+               +----------------+
//! |    Length     |    Payload     |   -------->   |    Payload     |
//! | 0C 00 00 00   | "HELLO, WORLD" |               | "HELLO, WORLD" |
//! +---------------+----------------+               +----------------+
//! ```
//!
//! ## Length counts the header (`.length_includes_header(true)`)
//!
//! The field holds header + payload = 4 + 12 = 16 (`0x10`). A value smaller
//! than the header is [`DecodeError::InvalidLength`].
//!
//! ```text
//!          BEFORE DECODE (16 bytes)                   AFTER DECODE (12 bytes)
//! +---------------+----------------+               +----------------+
//! |    Length     |    Payload     |   -------->   |    Payload     |
//! | 00 00 00 10   | "HELLO, WORLD" |               | "HELLO, WORLD" |
//! +---------------+----------------+               +----------------+
//! ```
//!
//! Width, byte order and header counting combine freely: e.g. a 2-byte
//! little-endian length counting the header puts `0E 00` before the payload.
//!
//! # Limits
//!
//! **`max_frame` is the guard for untrusted input.** A peer chooses the length
//! it announces; the decoder never allocates it, but the engine buffers a frame
//! until it is complete, so a peer may make a connection hold up to
//! `max_frame` + header bytes. The default is [`DEFAULT_MAX_FRAME`] (1 MiB,
//! where tokio-util defaults to 8 MiB). The limit applies to the *payload*
//! length whatever the layout, and it is checked as soon as the header is
//! complete, before any payload byte arrives: an oversized announcement is
//! [`DecodeError::FrameTooLong`] right away. All length arithmetic is checked,
//! so 8-byte lengths beyond `usize` or `max_frame` are `FrameTooLong` too,
//! never an overflow.
//!
//! # Example
//!
//! ```
//! use ringport::codec::{Decoded, Decoder, Endian, LengthDelimited};
//!
//! let mut codec = LengthDelimited::new()
//!     .length_width(2)
//!     .endian(Endian::Little)
//!     .length_includes_header(true)
//!     .max_frame(65536);
//! assert_eq!(codec.header_len(), 2);
//!
//! let mut wire = Vec::new();
//! codec.encode(b"HELLO, WORLD", &mut wire).unwrap();
//! assert_eq!(&wire[..2], &[0x0E, 0x00]);
//!
//! assert_eq!(codec.decode(&wire[..5]), Ok(None));
//! assert_eq!(codec.decode(&wire), Ok(Some(Decoded { consumed: 14, payload: 2..14 })));
//! ```

use super::{DecodeError, Decoded, Decoder};

/// Default maximum payload length of [`LengthDelimited`]: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Byte order of the length field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Endian {
    /// Most significant byte first ("network byte order"), the default.
    #[default]
    Big,
    /// Least significant byte first.
    Little,
}

/// A length-field layout that cannot be built.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The length field must be 1, 2, 4 or 8 bytes wide.
    #[error("unsupported length field width {width} (expected 1, 2, 4 or 8)")]
    UnsupportedWidth {
        /// The width that was asked for.
        width: u8,
    },
}

/// Why an encoder ([`LengthDelimited::encode`], [`Encoder`](super::Encoder)) refused a payload. Nothing is written to
/// the output in that case.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The payload is longer than the codec's `max_frame` (the peer's decoder,
    /// configured alike, would reject it).
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLong {
        /// The payload length.
        len: usize,
        /// The configured maximum payload length.
        max: usize,
    },
    /// The length field is too narrow to express the frame's length (for
    /// instance a 300-byte payload with a 1-byte length field).
    #[error("payload of {len} bytes does not fit a {width}-byte length field")]
    LengthOverflow {
        /// The payload length.
        len: usize,
        /// The width of the length field in bytes.
        width: u8,
    },
    /// A line payload holds a line terminator (`'\n'`), or is longer than the
    /// codec's `max_line`.
    #[error("line payload of {len} bytes cannot be sent as one line (max {max}, no '\\n')")]
    BadLine {
        /// The payload length.
        len: usize,
        /// The configured maximum line length.
        max: usize,
    },
    /// The codec has no encoder (a custom decoder that did not provide one).
    #[error("this codec cannot encode frames")]
    Unsupported,
}

/// Width of the length field; an enum so that no other width can exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    W1,
    W2,
    W4,
    W8,
}

impl Width {
    fn new(width: u8) -> Result<Self, LayoutError> {
        match width {
            1 => Ok(Width::W1),
            2 => Ok(Width::W2),
            4 => Ok(Width::W4),
            8 => Ok(Width::W8),
            _ => Err(LayoutError::UnsupportedWidth { width }),
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Width::W1 => 1,
            Width::W2 => 2,
            Width::W4 => 4,
            Width::W8 => 8,
        }
    }

    fn bytes(self) -> usize {
        self.as_u8().into()
    }

    /// The largest value the field can hold.
    fn max_value(self) -> u64 {
        match self {
            Width::W1 => u8::MAX.into(),
            Width::W2 => u16::MAX.into(),
            Width::W4 => u32::MAX.into(),
            Width::W8 => u64::MAX,
        }
    }
}

/// Codec for frames made of a fixed-width length header and a payload.
///
/// See the [module docs](self) for the layouts. Built with [`new`](Self::new)
/// (4-byte big-endian payload length, 1 MiB maximum) or
/// [`with_layout`](Self::with_layout), then adjusted with the chainable
/// setters. It keeps no per-stream state: one value can decode any number of
/// streams and encode at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LengthDelimited {
    width: Width,
    endian: Endian,
    includes_header: bool,
    max_frame: usize,
}

impl Default for LengthDelimited {
    fn default() -> Self {
        Self::new()
    }
}

impl LengthDelimited {
    /// The default layout: 4-byte big-endian length of the payload only, at
    /// most [`DEFAULT_MAX_FRAME`] (1 MiB) of payload.
    #[must_use]
    pub fn new() -> Self {
        LengthDelimited {
            width: Width::W4,
            endian: Endian::Big,
            includes_header: false,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// A layout from its three parameters, with the default maximum; the
    /// fallible constructor to use with widths that come from configuration.
    ///
    /// # Errors
    ///
    /// [`LayoutError::UnsupportedWidth`] unless `width` is 1, 2, 4 or 8.
    pub fn with_layout(
        width: u8,
        endian: Endian,
        includes_header: bool,
    ) -> Result<Self, LayoutError> {
        Ok(LengthDelimited {
            width: Width::new(width)?,
            endian,
            includes_header,
            max_frame: DEFAULT_MAX_FRAME,
        })
    }

    /// Sets the width of the length field in bytes, failing on anything but 1, 2, 4 or 8.
    ///
    /// # Errors
    ///
    /// [`LayoutError::UnsupportedWidth`] for any other width.
    pub fn try_length_width(mut self, width: u8) -> Result<Self, LayoutError> {
        self.width = Width::new(width)?;
        Ok(self)
    }

    /// Sets the width of the length field in bytes: 1, 2, 4 or 8.
    ///
    /// # Panics
    ///
    /// On any other width. That is a programmer error, for widths written in
    /// the code; use [`try_length_width`](Self::try_length_width) or
    /// [`with_layout`](Self::with_layout) for widths that come from outside.
    #[track_caller]
    #[must_use]
    pub fn length_width(self, width: u8) -> Self {
        match self.try_length_width(width) {
            Ok(codec) => codec,
            Err(e) => panic!("LengthDelimited::length_width: {e}"),
        }
    }

    /// Sets the byte order of the length field (default [`Endian::Big`]).
    #[must_use]
    pub fn endian(mut self, endian: Endian) -> Self {
        self.endian = endian;
        self
    }

    /// Sets whether the length field counts the header as well as the payload
    /// (default `false`: it counts the payload only).
    #[must_use]
    pub fn length_includes_header(mut self, includes_header: bool) -> Self {
        self.includes_header = includes_header;
        self
    }

    /// Sets the maximum payload length in bytes, header excluded whatever the
    /// layout (default [`DEFAULT_MAX_FRAME`]). This is the guard against a
    /// peer announcing huge frames; see the [module docs](self#limits).
    #[must_use]
    pub fn max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Length of the header in bytes: the width of the length field.
    pub fn header_len(&self) -> usize {
        self.width.bytes()
    }

    /// The byte order of the length field.
    pub fn byte_order(&self) -> Endian {
        self.endian
    }

    /// Whether the length field counts the header.
    pub fn includes_header(&self) -> bool {
        self.includes_header
    }

    /// The maximum payload length in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame
    }

    /// Appends one frame (header, then `payload`) to `out`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::FrameTooLong`] if the payload is longer than
    /// `max_frame`; [`EncodeError::LengthOverflow`] if the length field is too
    /// narrow for it. `out` is left untouched on error.
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = payload.len();
        if len > self.max_frame {
            return Err(EncodeError::FrameTooLong {
                len,
                max: self.max_frame,
            });
        }
        let overflow = EncodeError::LengthOverflow {
            len,
            width: self.width.as_u8(),
        };
        let field = if self.includes_header {
            len.checked_add(self.header_len())
        } else {
            Some(len)
        };
        let field = field
            .and_then(|f| u64::try_from(f).ok())
            .filter(|&f| f <= self.width.max_value())
            .ok_or(overflow)?;

        let n = self.header_len();
        out.reserve(n.saturating_add(len));
        match self.endian {
            Endian::Big => out.extend_from_slice(&field.to_be_bytes()[8 - n..]),
            Endian::Little => out.extend_from_slice(&field.to_le_bytes()[..n]),
        }
        out.extend_from_slice(payload);
        Ok(())
    }

    /// Reads the length field from `header`, which holds exactly `header_len()` bytes.
    fn read_field(&self, header: &[u8]) -> u64 {
        let push = |acc: u64, &b: &u8| (acc << 8) | u64::from(b);
        match self.endian {
            Endian::Big => header.iter().fold(0, push),
            Endian::Little => header.iter().rev().fold(0, push),
        }
    }
}

impl Decoder for LengthDelimited {
    /// Decodes one frame; `Ok(None)` until the header and then the whole
    /// payload have arrived. The length is validated as soon as the header is
    /// complete.
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        let header_len = self.header_len();
        let Some(header) = buf.get(..header_len) else {
            return Ok(None);
        };
        let field = self.read_field(header);

        let payload_len = if self.includes_header {
            // header_len <= 8, so the cast is lossless.
            field
                .checked_sub(header_len as u64)
                .ok_or(DecodeError::InvalidLength { len: field })?
        } else {
            field
        };

        let too_long = DecodeError::FrameTooLong {
            len: payload_len,
            max: self.max_frame,
        };
        // A max_frame beyond u64 (only on >64-bit targets) cannot be exceeded.
        if payload_len > u64::try_from(self.max_frame).unwrap_or(u64::MAX) {
            return Err(too_long);
        }
        // Both conversions succeed given the check above; kept checked anyway.
        let payload_len = usize::try_from(payload_len).map_err(|_| too_long.clone())?;
        let frame_len = header_len.checked_add(payload_len).ok_or(too_long)?;

        if buf.len() < frame_len {
            return Ok(None);
        }
        Ok(Some(Decoded {
            consumed: frame_len,
            payload: header_len..frame_len,
        }))
    }

    fn encoder(&self) -> Option<&dyn super::Encoder> {
        Some(self)
    }

    /// The header plus `max_frame` payload bytes.
    fn max_frame_input(&self) -> Option<usize> {
        Some(self.header_len().saturating_add(self.max_frame))
    }
}
