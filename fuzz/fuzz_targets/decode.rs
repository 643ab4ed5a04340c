//! Feeds arbitrary bytes, in arbitrary fragments, to every decoder.
//!
//! Input layout: byte 0 picks the codec and its layout, byte 1 the limit,
//! byte 2 the fragment size; the rest is the stream. The target drives the
//! decoder the way the engine does and checks the `Decoded` invariants, the
//! limits, and that the fragmented stream decodes exactly like the whole one.
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

fuzz_target!(|data: &[u8]| {
    let [selector, limit, chunk, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) * 4;
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
