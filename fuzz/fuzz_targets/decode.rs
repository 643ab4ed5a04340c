//! Feeds arbitrary bytes, in arbitrary fragments, to every decoder.
//!
//! Input layout: byte 0 picks the codec and its layout, byte 1 the limit,
//! byte 2 the fragment size; the rest is the stream. The target drives the
//! decoder the way the engine does and checks the `Decoded` invariants, the
//! limits, and that the fragmented stream decodes exactly like the whole one.
//!
//! The limit covers the whole range of `usize`, from 0 through every power of
//! two to `usize::MAX` (see [`limit`]), so that lengths near the limit, and
//! arithmetic on very large limits and announced lengths, are exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringport::codec::{DecodeError, Decoder, Endian, LengthDelimited, Lines, Raw};

/// What a decoder made of a stream: the payloads, then the error that ended it.
type Outcome = (Vec<Vec<u8>>, Option<DecodeError>);

/// The engine's loop: append each chunk, decode until `Ok(None)`, drop what was consumed.
fn feed<'a, D: Decoder>(
    mut decoder: D,
    chunks: impl Iterator<Item = &'a [u8]>,
    max: usize,
) -> Outcome {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&buf) {
                Ok(Some(d)) => {
                    assert!(d.consumed > 0 && d.consumed <= buf.len(), "{d:?}");
                    assert!(
                        d.payload.start <= d.payload.end && d.payload.end <= d.consumed,
                        "{d:?}"
                    );
                    assert!(d.payload.len() <= max, "frame over the limit: {d:?}");
                    frames.push(buf[d.payload.clone()].to_vec());
                    buf.drain(..d.consumed);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn check<D: Decoder>(decoder: D, stream: &[u8], chunk: usize, max: usize) {
    let whole = feed(decoder.clone(), std::iter::once(stream), max);
    let fragmented = feed(decoder, stream.chunks(chunk), max);
    assert_eq!(whole, fragmented);
}

/// `Raw` frames are the chunks as they arrive: only their concatenation is fixed.
fn check_raw(stream: &[u8], chunk: usize) {
    let (frames, error) = feed(Raw, stream.chunks(chunk), usize::MAX);
    assert!(frames.iter().all(|f| !f.is_empty()));
    assert_eq!(frames.concat(), stream);
    assert_eq!(error, None);
}

/// A decoder limit from one byte, spread over all of `usize` on a log scale:
/// 0 for 0..=3, then four steps per power of two (`(4 + b % 4) << (b / 4) >> 2`,
/// minus one) up to about 2^62, and `usize::MAX` for 255.
fn limit(b: u8) -> usize {
    if b == u8::MAX {
        return usize::MAX;
    }
    let (exp, mantissa) = (u32::from(b >> 2), u128::from(b & 3));
    let v = (((4 + mantissa) << exp) >> 2).saturating_sub(1);
    usize::try_from(v).unwrap_or(usize::MAX)
}

fuzz_target!(|data: &[u8]| {
    let [selector, limit_byte, chunk, stream @ ..] = data else {
        return;
    };
    let max = limit(*limit_byte);
    let chunk = usize::from(*chunk).max(1);
    match selector % 4 {
        0 => check_raw(stream, chunk),
        1 => check(Lines::new(max), stream, chunk, max),
        _ => {
            let width = [1, 2, 4, 8][usize::from(selector >> 2) % 4];
            let endian = if selector & 0x10 == 0 {
                Endian::Big
            } else {
                Endian::Little
            };
            let includes_header = selector & 0x20 != 0;
            let codec = LengthDelimited::with_layout(width, endian, includes_header)
                .expect("1, 2, 4 and 8 are valid widths")
                .max_frame(max);
            check(codec, stream, chunk, max);
        }
    }
});
