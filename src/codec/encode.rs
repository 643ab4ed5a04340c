//! Encoders: the writing side of each codec, so a handler sends a frame in the layout its
//! peer's decoder reads without building headers by hand (`Conn::send_frame`).
//!
//! | codec | what [`Encoder::encode`] appends |
//! |---|---|
//! | [`Raw`] | the payload as it is |
//! | [`LengthDelimited`] | the length header in the codec's layout, then the payload |
//! | [`Lines`] | the payload, then `"\r\n"` (refused if it holds `'\n'` or is longer than `max_line`) |

use super::{EncodeError, LengthDelimited, Lines, Raw};

/// Appends one frame to an output buffer. `out` is left untouched on error.
pub trait Encoder {
    /// Appends the frame carrying `payload` to `out`.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] when the payload cannot be one frame of this codec.
    fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError>;
}

impl Encoder for Raw {
    fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.extend_from_slice(payload);
        Ok(())
    }
}

impl Encoder for LengthDelimited {
    fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        LengthDelimited::encode(self, payload, out)
    }
}

impl Encoder for Lines {
    fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if payload.len() > self.max_line() || payload.contains(&b'\n') {
            return Err(EncodeError::BadLine {
                len: payload.len(),
                max: self.max_line(),
            });
        }
        out.reserve(payload.len() + 2);
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Decoder, Endian};

    /// Encodes through `Decoder::encoder`, the encoder `Conn::send_frame` uses.
    fn roundtrip<C: Decoder>(mut c: C, payload: &[u8]) {
        let mut wire = Vec::new();
        c.encoder()
            .expect("every codec of this module has an encoder")
            .encode(payload, &mut wire)
            .unwrap();
        let d = c.decode(&wire).unwrap().expect("one whole frame");
        assert_eq!(d.consumed, wire.len());
        assert_eq!(&wire[d.payload], payload);
    }

    #[test]
    fn every_encoder_writes_what_its_decoder_reads() {
        for width in [1u8, 2, 4, 8] {
            for endian in [Endian::Big, Endian::Little] {
                for incl in [false, true] {
                    let c = LengthDelimited::with_layout(width, endian, incl).unwrap();
                    roundtrip(c, b"hello");
                    roundtrip(
                        LengthDelimited::with_layout(width, endian, incl).unwrap(),
                        b"",
                    );
                }
            }
        }
        roundtrip(Lines::new(16), b"PING");
        roundtrip(Raw, b"x");
    }

    #[test]
    fn lines_refuse_what_would_not_come_back_as_one_line() {
        let mut out = Vec::new();
        assert!(Encoder::encode(&Lines::new(4), b"a\nb", &mut out).is_err());
        assert!(Encoder::encode(&Lines::new(4), b"abcde", &mut out).is_err());
        // The encoder `send_frame` uses is the codec itself, with its own limit.
        let lines = Lines::new(4);
        let enc = lines.encoder().expect("an encoder");
        assert!(enc.encode(b"abcde", &mut out).is_err());
        enc.encode(b"abcd", &mut out).unwrap();
        assert_eq!(out, b"abcd\r\n");
    }
}
