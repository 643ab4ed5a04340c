//! Tests of the codecs, driven the way the engine drives them.
//!
//! [`feed`] simulates the engine: it keeps a receive buffer, appends each
//! chunk, calls `decode` until `Ok(None)`, drops what each frame consumed, and
//! stops at the first error. Every test that splits a stream compares what
//! comes out with what went in.

use super::*;
use proptest::prelude::*;

/// What a decoder made of a whole stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// The payloads, in order.
    frames: Vec<Vec<u8>>,
    /// For each frame, the bytes it consumed after its payload (a line's terminator).
    trailers: Vec<Vec<u8>>,
    /// The error that ended the stream, if any.
    error: Option<DecodeError>,
    /// Bytes left in the buffer (no complete frame) when the stream ended without error.
    leftover: Vec<u8>,
}

/// Feeds `chunks` to `decoder` as the engine would, checking the [`Decoded`]
/// invariants on every frame.
fn feed<'a, D: Decoder>(mut decoder: D, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut buf = Vec::new();
    let mut out = Outcome {
        frames: Vec::new(),
        trailers: Vec::new(),
        error: None,
        leftover: Vec::new(),
    };
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&buf) {
                Ok(Some(d)) => {
                    assert!(d.consumed > 0, "a frame must consume bytes: {d:?}");
                    assert!(d.consumed <= buf.len(), "consumed beyond the buffer: {d:?}");
                    assert!(d.payload.start <= d.payload.end, "inverted payload: {d:?}");
                    assert!(
                        d.payload.end <= d.consumed,
                        "payload beyond the frame: {d:?}"
                    );
                    out.frames.push(buf[d.payload.clone()].to_vec());
                    out.trailers.push(buf[d.payload.end..d.consumed].to_vec());
                    buf.drain(..d.consumed);
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out.leftover = buf;
    out
}

/// `data` cut at the given (sorted, in-range) positions.
fn split_at<'a>(data: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for &p in points {
        chunks.push(&data[start..p]);
        start = p;
    }
    chunks.push(&data[start..]);
    chunks
}

/// `data` cut into chunks of the given sizes, cycled; one chunk if `sizes` is empty.
fn chunked<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![data];
    }
    let mut chunks = Vec::new();
    let mut rest = data;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// Asserts that `decoder` turns `wire` into `expected` however it is fragmented:
/// in one piece, byte by byte, cut at every position, and (if `pairs`) cut at
/// every pair of positions.
fn assert_any_split_decodes_to<D: Decoder>(
    decoder: &D,
    wire: &[u8],
    expected: &Outcome,
    pairs: bool,
) {
    assert_eq!(&feed(decoder.clone(), [wire]), expected, "whole stream");
    assert_eq!(
        &feed(decoder.clone(), wire.chunks(1)),
        expected,
        "byte by byte"
    );
    for i in 0..=wire.len() {
        assert_eq!(
            &feed(decoder.clone(), split_at(wire, &[i])),
            expected,
            "split at {i}"
        );
    }
    if pairs {
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                assert_eq!(
                    &feed(decoder.clone(), split_at(wire, &[i, j])),
                    expected,
                    "split at {i} and {j}"
                );
            }
        }
    }
}

fn frames_outcome(frames: &[&[u8]], trailer: &[u8]) -> Outcome {
    Outcome {
        frames: frames.iter().map(|f| f.to_vec()).collect(),
        trailers: frames.iter().map(|_| trailer.to_vec()).collect(),
        error: None,
        leftover: Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Raw

#[test]
fn raw_needs_more_bytes_on_an_empty_buffer() {
    assert_eq!(Raw.decode(b""), Ok(None));
}

#[test]
fn raw_yields_the_whole_buffer_as_one_frame() {
    assert_eq!(
        Raw.decode(b"hello"),
        Ok(Some(Decoded {
            consumed: 5,
            payload: 0..5
        }))
    );
}

#[test]
fn raw_delivers_every_byte_in_order_whatever_the_fragmentation() {
    let wire = b"GET / HTTP/1.1\r\n\r\n\x00\xff";
    for i in 0..=wire.len() {
        let out = feed(Raw, split_at(wire, &[i]));
        assert_eq!(out.frames.concat(), wire);
        assert!(out.frames.iter().all(|f| !f.is_empty()));
        assert_eq!(out.error, None);
        assert!(out.leftover.is_empty());
    }
}

// ---------------------------------------------------------------------------
// LengthDelimited

const WIDTHS: [u8; 4] = [1, 2, 4, 8];
const ENDIANS: [Endian; 2] = [Endian::Big, Endian::Little];

/// Every layout: widths 1/2/4/8 × endian × includes-header.
fn all_layouts() -> Vec<LengthDelimited> {
    let mut layouts = Vec::new();
    for width in WIDTHS {
        for endian in ENDIANS {
            for includes_header in [false, true] {
                layouts.push(LengthDelimited::with_layout(width, endian, includes_header).unwrap());
            }
        }
    }
    layouts
}

fn encode_all(codec: &LengthDelimited, frames: &[&[u8]]) -> Vec<u8> {
    let mut wire = Vec::new();
    for frame in frames {
        codec.encode(frame, &mut wire).unwrap();
    }
    wire
}

/// The header `codec` puts before a payload of `len` bytes, built independently of `encode`.
fn header_for(codec: &LengthDelimited, len: usize) -> Vec<u8> {
    let n = codec.header_len();
    let field = (len + if codec.includes_header() { n } else { 0 }) as u64;
    let be = field.to_be_bytes();
    let mut header = be[8 - n..].to_vec();
    if codec.byte_order() == Endian::Little {
        header.reverse();
    }
    header
}

/// A few frames every layout can carry (a 1-byte length counting itself allows 254 bytes).
fn sample_frames() -> Vec<Vec<u8>> {
    vec![
        b"HELLO, WORLD".to_vec(),
        Vec::new(),
        b"a".to_vec(),
        (0..=253u8).collect(),
        b"\x00\n\r\xff".to_vec(),
        Vec::new(),
    ]
}

#[test]
fn default_layout_is_a_4_byte_big_endian_payload_length_with_a_1_mib_limit() {
    let codec = LengthDelimited::new();
    assert_eq!(codec.header_len(), 4);
    assert_eq!(codec.byte_order(), Endian::Big);
    assert!(!codec.includes_header());
    assert_eq!(codec.max_frame_len(), 1 << 20);
    assert_eq!(codec.max_frame_len(), DEFAULT_MAX_FRAME);
    assert_eq!(LengthDelimited::default(), codec);
    assert_eq!(
        encode_all(&codec, &[b"HELLO, WORLD"]),
        b"\x00\x00\x00\x0cHELLO, WORLD"
    );
}

#[test]
fn encodes_the_layouts_shown_in_the_module_docs() {
    let payload: &[u8] = b"HELLO, WORLD";
    let cases: [(LengthDelimited, &[u8]); 7] = [
        (LengthDelimited::new(), b"\x00\x00\x00\x0c"),
        (LengthDelimited::new().length_width(2), b"\x00\x0c"),
        (LengthDelimited::new().length_width(1), b"\x0c"),
        (
            LengthDelimited::new().length_width(8),
            b"\x00\x00\x00\x00\x00\x00\x00\x0c",
        ),
        (
            LengthDelimited::new().endian(Endian::Little),
            b"\x0c\x00\x00\x00",
        ),
        (
            LengthDelimited::new().length_includes_header(true),
            b"\x00\x00\x00\x10",
        ),
        (
            LengthDelimited::new()
                .length_width(2)
                .endian(Endian::Little)
                .length_includes_header(true),
            b"\x0e\x00",
        ),
    ];
    for (codec, header) in cases {
        let wire = encode_all(&codec, &[payload]);
        assert_eq!(&wire[..codec.header_len()], header, "{codec:?}");
        assert_eq!(&wire[codec.header_len()..], payload, "{codec:?}");
    }
}

#[test]
fn encodes_the_header_each_layout_describes() {
    for codec in all_layouts() {
        for frame in sample_frames() {
            let mut expected = header_for(&codec, frame.len());
            expected.extend_from_slice(&frame);
            assert_eq!(encode_all(&codec, &[&frame]), expected, "{codec:?}");
        }
    }
}

#[test]
fn decodes_a_complete_frame_and_nothing_beyond_it() {
    let mut codec = LengthDelimited::new();
    let wire = b"\x00\x00\x00\x03abcNEXT";
    assert_eq!(
        codec.decode(wire),
        Ok(Some(Decoded {
            consumed: 7,
            payload: 4..7
        }))
    );
}

#[test]
fn needs_more_bytes_until_the_header_and_then_the_payload_are_complete() {
    for mut codec in all_layouts() {
        let wire = encode_all(&codec, &[b"abc"]);
        for end in 0..wire.len() {
            assert_eq!(codec.decode(&wire[..end]), Ok(None), "{codec:?} {end}");
        }
        let n = codec.header_len();
        assert_eq!(
            codec.decode(&wire),
            Ok(Some(Decoded {
                consumed: n + 3,
                payload: n..n + 3
            }))
        );
    }
}

#[test]
fn decodes_a_zero_length_frame_as_an_empty_payload() {
    for mut codec in all_layouts() {
        let wire = encode_all(&codec, &[b""]);
        let n = codec.header_len();
        assert_eq!(wire.len(), n);
        assert_eq!(
            codec.decode(&wire),
            Ok(Some(Decoded {
                consumed: n,
                payload: n..n
            }))
        );
    }
}

#[test]
fn decodes_frames_split_at_every_position_in_every_layout() {
    let frames = sample_frames();
    let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    for codec in all_layouts() {
        let wire = encode_all(&codec, &frames);
        assert_any_split_decodes_to(&codec, &wire, &frames_outcome(&frames, b""), false);
    }
}

#[test]
fn decodes_frames_split_at_every_pair_of_positions_in_every_layout() {
    let frames: [&[u8]; 4] = [b"HELLO", b"", b"x", b"\x00\xff\n"];
    for codec in all_layouts() {
        let wire = encode_all(&codec, &frames);
        assert_any_split_decodes_to(&codec, &wire, &frames_outcome(&frames, b""), true);
    }
}

#[test]
fn keeps_an_incomplete_trailing_frame_in_the_buffer() {
    for codec in all_layouts() {
        let mut wire = encode_all(&codec, &[b"one", b"two"]);
        let complete = wire.len();
        codec.encode(b"three", &mut wire).unwrap();
        wire.pop();
        let out = feed(codec.clone(), wire.chunks(1));
        assert_eq!(out.frames, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(out.error, None);
        assert_eq!(out.leftover, &wire[complete..]);
    }
}

#[test]
fn rejects_oversized_length_before_payload_arrives() {
    for codec in all_layouts() {
        let mut codec = codec.max_frame(100);
        // A header announcing 101 payload bytes, and not one payload byte.
        let header = header_for(&codec, 101);
        assert_eq!(header.len(), codec.header_len());
        assert_eq!(
            codec.decode(&header),
            Err(DecodeError::FrameTooLong { len: 101, max: 100 }),
            "{codec:?}"
        );
    }
}

#[test]
fn rejects_the_largest_length_each_width_can_announce() {
    for codec in all_layouts() {
        let mut codec = codec.max_frame(10);
        let header = vec![0xff; codec.header_len()];
        let announced = match codec.header_len() {
            1 => u64::from(u8::MAX),
            2 => u64::from(u16::MAX),
            4 => u64::from(u32::MAX),
            _ => u64::MAX,
        };
        let len = announced
            - if codec.includes_header() {
                codec.header_len() as u64
            } else {
                0
            };
        assert_eq!(
            codec.decode(&header),
            Err(DecodeError::FrameTooLong { len, max: 10 }),
            "{codec:?}"
        );
    }
}

#[test]
fn rejects_8_byte_lengths_beyond_usize_without_overflowing() {
    // Even with no limit at all, header + u64::MAX cannot be a frame.
    let mut codec = LengthDelimited::new().length_width(8).max_frame(usize::MAX);
    let header = u64::MAX.to_be_bytes();
    assert!(matches!(
        codec.decode(&header),
        Err(DecodeError::FrameTooLong { len: u64::MAX, .. })
    ));
    // Counting the header, u64::MAX is header + (u64::MAX - 8): not an overflow on
    // 64-bit targets, just a frame that never completes.
    let mut codec = codec.length_includes_header(true);
    let result = codec.decode(&header);
    if usize::BITS == 64 {
        assert_eq!(result, Ok(None));
    } else {
        assert!(matches!(result, Err(DecodeError::FrameTooLong { .. })));
    }
}

#[test]
fn accepts_a_frame_of_exactly_max_frame_bytes() {
    for codec in all_layouts() {
        let codec = codec.max_frame(200);
        let payload = vec![7u8; 200];
        let wire = encode_all(&codec, &[&payload]);
        let out = feed(codec.clone(), wire.chunks(13));
        assert_eq!(out.frames, [payload]);
        assert_eq!(out.error, None);
    }
}

#[test]
fn accepts_empty_frames_with_a_max_frame_of_zero() {
    for codec in all_layouts() {
        let mut codec = codec.max_frame(0);
        let wire = encode_all(&codec, &[b"", b""]);
        assert_eq!(feed(codec.clone(), [&wire[..]]).frames.len(), 2);
        let header = header_for(&codec, 1);
        assert_eq!(
            codec.decode(&header),
            Err(DecodeError::FrameTooLong { len: 1, max: 0 })
        );
    }
}

#[test]
fn rejects_a_header_counting_length_smaller_than_the_header() {
    for width in WIDTHS {
        for endian in ENDIANS {
            let mut codec = LengthDelimited::with_layout(width, endian, true).unwrap();
            for value in 0..u64::from(width) {
                let mut header = value.to_be_bytes()[8 - width as usize..].to_vec();
                if endian == Endian::Little {
                    header.reverse();
                }
                assert_eq!(
                    codec.decode(&header),
                    Err(DecodeError::InvalidLength { len: value }),
                    "{codec:?}"
                );
            }
        }
    }
}

#[test]
fn accepts_a_header_counting_length_equal_to_the_header_as_an_empty_frame() {
    let mut codec = LengthDelimited::new().length_includes_header(true);
    assert_eq!(
        codec.decode(b"\x00\x00\x00\x04rest"),
        Ok(Some(Decoded {
            consumed: 4,
            payload: 4..4
        }))
    );
}

#[test]
fn stops_at_the_first_bad_header_after_the_good_frames() {
    let codec = LengthDelimited::new().max_frame(8);
    let mut wire = encode_all(&codec, &[b"ok", b"fine"]);
    wire.extend_from_slice(b"\x00\x00\x00\x09");
    let expected = Outcome {
        frames: vec![b"ok".to_vec(), b"fine".to_vec()],
        trailers: vec![Vec::new(), Vec::new()],
        error: Some(DecodeError::FrameTooLong { len: 9, max: 8 }),
        leftover: Vec::new(),
    };
    assert_any_split_decodes_to(&codec, &wire, &expected, true);
}

#[test]
fn encode_refuses_a_payload_longer_than_max_frame_and_writes_nothing() {
    let codec = LengthDelimited::new().max_frame(4);
    let mut out = b"kept".to_vec();
    assert_eq!(
        codec.encode(b"12345", &mut out),
        Err(EncodeError::FrameTooLong { len: 5, max: 4 })
    );
    assert_eq!(out, b"kept");
    codec.encode(b"1234", &mut out).unwrap();
    assert_eq!(out, b"kept\x00\x00\x00\x041234");
}

#[test]
fn encode_refuses_a_payload_the_length_field_cannot_express() {
    let one = LengthDelimited::new().length_width(1);
    let mut out = Vec::new();
    assert_eq!(
        one.encode(&[0; 256], &mut out),
        Err(EncodeError::LengthOverflow { len: 256, width: 1 })
    );
    one.encode(&[0; 255], &mut out).unwrap();

    let one_counting_itself = one.length_includes_header(true);
    assert_eq!(
        one_counting_itself.encode(&[0; 255], &mut out),
        Err(EncodeError::LengthOverflow { len: 255, width: 1 })
    );
    one_counting_itself.encode(&[0; 254], &mut out).unwrap();

    let two = LengthDelimited::new().length_width(2);
    assert_eq!(
        two.encode(&vec![0; 65536], &mut out),
        Err(EncodeError::LengthOverflow {
            len: 65536,
            width: 2
        })
    );
    assert_eq!(out.len(), 1 + 255 + 1 + 254);
}

#[test]
fn builds_only_1_2_4_and_8_byte_length_fields() {
    for width in 0..=u8::MAX {
        let supported = WIDTHS.contains(&width);
        let built = LengthDelimited::with_layout(width, Endian::Big, false);
        assert_eq!(built.is_ok(), supported, "{width}");
        assert_eq!(
            LengthDelimited::new().try_length_width(width).is_ok(),
            supported
        );
        if !supported {
            assert_eq!(built, Err(LayoutError::UnsupportedWidth { width }));
        }
    }
    let built = LengthDelimited::with_layout(2, Endian::Little, true).unwrap();
    assert_eq!(built.header_len(), 2);
    assert_eq!(built.byte_order(), Endian::Little);
    assert!(built.includes_header());
    assert_eq!(built.max_frame_len(), DEFAULT_MAX_FRAME);
}

#[test]
#[should_panic(expected = "unsupported length field width 3")]
fn length_width_panics_on_an_unsupported_width() {
    let _ = LengthDelimited::new().length_width(3);
}

// ---------------------------------------------------------------------------
// Lines

#[test]
fn decodes_crlf_and_bare_lf_lines_without_their_terminators() {
    let mut lines = Lines::default();
    assert_eq!(lines.max_line(), DEFAULT_MAX_LINE);
    assert_eq!(
        lines.decode(b"abc\r\ndef"),
        Ok(Some(Decoded {
            consumed: 5,
            payload: 0..3
        }))
    );
    assert_eq!(
        lines.decode(b"abc\ndef"),
        Ok(Some(Decoded {
            consumed: 4,
            payload: 0..3
        }))
    );
}

#[test]
fn treats_a_cr_not_followed_by_lf_as_line_content() {
    let out = feed(Lines::new(16), [&b"a\rb\r\n\r\r\n\r\rc\n"[..]]);
    assert_eq!(
        out.frames,
        [b"a\rb".to_vec(), b"\r".to_vec(), b"\r\rc".to_vec()]
    );
    assert_eq!(
        out.trailers,
        [b"\r\n".to_vec(), b"\r\n".to_vec(), b"\n".to_vec()]
    );
}

#[test]
fn decodes_an_empty_line_as_an_empty_payload() {
    let mut lines = Lines::new(0);
    assert_eq!(
        lines.decode(b"\r\n"),
        Ok(Some(Decoded {
            consumed: 2,
            payload: 0..0
        }))
    );
    assert_eq!(
        lines.decode(b"\n"),
        Ok(Some(Decoded {
            consumed: 1,
            payload: 0..0
        }))
    );
}

#[test]
fn needs_more_bytes_until_the_line_feed_arrives() {
    let mut lines = Lines::new(16);
    assert_eq!(lines.decode(b""), Ok(None));
    assert_eq!(lines.decode(b"ab"), Ok(None));
    assert_eq!(lines.decode(b"ab\r"), Ok(None));
    assert_eq!(
        lines.decode(b"ab\r\n"),
        Ok(Some(Decoded {
            consumed: 4,
            payload: 0..2
        }))
    );
}

#[test]
fn decodes_lines_split_at_every_position() {
    let wire = b"HELLO, WORLD\r\n\r\nbare\nlone\rcr\r\n\n\r\r\n\x00\xff\n";
    let expected = Outcome {
        frames: vec![
            b"HELLO, WORLD".to_vec(),
            b"".to_vec(),
            b"bare".to_vec(),
            b"lone\rcr".to_vec(),
            b"".to_vec(),
            b"\r".to_vec(),
            b"\x00\xff".to_vec(),
        ],
        trailers: vec![
            b"\r\n".to_vec(),
            b"\r\n".to_vec(),
            b"\n".to_vec(),
            b"\r\n".to_vec(),
            b"\n".to_vec(),
            b"\r\n".to_vec(),
            b"\n".to_vec(),
        ],
        error: None,
        leftover: Vec::new(),
    };
    assert_any_split_decodes_to(&Lines::new(12), wire, &expected, true);
}

#[test]
fn keeps_an_unterminated_last_line_in_the_buffer() {
    let out = feed(Lines::new(16), b"one\r\ntwo\r".chunks(1));
    assert_eq!(out.frames, [b"one".to_vec()]);
    assert_eq!(out.error, None);
    assert_eq!(out.leftover, b"two\r");
}

#[test]
fn accepts_a_line_of_exactly_max_line_bytes() {
    for terminator in [&b"\r\n"[..], b"\n"] {
        let mut wire = b"12345".to_vec();
        wire.extend_from_slice(terminator);
        wire.extend_from_slice(b"67890");
        wire.extend_from_slice(terminator);
        let expected = frames_outcome(&[b"12345", b"67890"], terminator);
        assert_any_split_decodes_to(&Lines::new(5), &wire, &expected, true);
    }
}

#[test]
fn rejects_a_line_over_max_without_waiting_for_the_terminator() {
    let too_long = Err(DecodeError::LineTooLong { max: 5 });
    // Six content bytes: certainly too long, whatever comes next.
    assert_eq!(Lines::new(5).decode(b"123456"), too_long);
    // Five bytes and a '\r' may still be a line of exactly five bytes...
    assert_eq!(Lines::new(5).decode(b"12345\r"), Ok(None));
    // ...until the byte after the '\r' is not '\n'.
    assert_eq!(Lines::new(5).decode(b"12345\rx"), too_long);
    assert_eq!(Lines::new(5).decode(b"12345\r\r"), too_long);
    // A terminated line that is too long is rejected too.
    assert_eq!(Lines::new(5).decode(b"123456\n"), too_long);
    assert_eq!(Lines::new(5).decode(b"1234\r6\r\n"), too_long);
    // Everything up to the limit is still delivered first.
    let out = feed(Lines::new(5), b"ok\r\n123456".chunks(1));
    assert_eq!(out.frames, [b"ok".to_vec()]);
    assert_eq!(out.error, Some(DecodeError::LineTooLong { max: 5 }));
}

#[test]
fn rejects_a_long_line_fed_byte_by_byte_as_soon_as_it_is_over_max() {
    let mut lines = Lines::new(100);
    let mut buf = Vec::new();
    for i in 0..100 {
        buf.push(b'x');
        assert_eq!(lines.decode(&buf), Ok(None), "after {} bytes", i + 1);
    }
    buf.push(b'x');
    assert_eq!(
        lines.decode(&buf),
        Err(DecodeError::LineTooLong { max: 100 })
    );
}

#[test]
fn accepts_only_empty_lines_with_a_max_line_of_zero() {
    let out = feed(Lines::new(0), b"\r\n\n\r\n".chunks(1));
    assert_eq!(out.frames, [Vec::new(), Vec::new(), Vec::new()]);
    assert_eq!(Lines::new(0).decode(b"\r"), Ok(None));
    assert_eq!(
        Lines::new(0).decode(b"a"),
        Err(DecodeError::LineTooLong { max: 0 })
    );
    assert_eq!(
        Lines::new(0).decode(b"\r\r"),
        Err(DecodeError::LineTooLong { max: 0 })
    );
}

#[test]
fn accepts_lines_of_any_length_with_an_unbounded_max_line() {
    let mut wire = vec![b'z'; 100_000];
    wire.extend_from_slice(b"\r\n");
    let out = feed(Lines::new(usize::MAX), wire.chunks(997));
    assert_eq!(out.frames, [vec![b'z'; 100_000]]);
}

#[test]
fn does_not_rescan_bytes_already_searched() {
    // White-box: after `Ok(None)` on 4 bytes, the decoder resumes at byte 4.
    // Handing it different bytes breaks the contract, and shows it.
    let mut lines = Lines::new(64);
    assert_eq!(lines.decode(b"abcd"), Ok(None));
    assert_eq!(lines.decode(b"a\ncde"), Ok(None));
    assert_eq!(
        lines.decode(b"a\ncde\n"),
        Ok(Some(Decoded {
            consumed: 6,
            payload: 0..5
        }))
    );
    // After a frame the scan starts over.
    assert_eq!(
        lines.decode(b"\n"),
        Ok(Some(Decoded {
            consumed: 1,
            payload: 0..0
        }))
    );
}

#[test]
fn decodes_a_long_line_fed_byte_by_byte_in_linear_time() {
    // A smoke test: quadratic rescanning would make this crawl (tens of
    // seconds); `does_not_rescan_bytes_already_searched` is the precise check.
    let n = 1 << 17;
    let mut lines = Lines::new(n);
    let mut buf = Vec::with_capacity(n + 2);
    for _ in 0..n {
        buf.push(b'y');
        assert_eq!(lines.decode(&buf), Ok(None));
    }
    buf.extend_from_slice(b"\r\n");
    assert_eq!(
        lines.decode(&buf),
        Ok(Some(Decoded {
            consumed: n + 2,
            payload: 0..n
        }))
    );
}

/// The reference semantics of [`Lines`] on a complete input, written plainly.
fn lines_oracle(input: &[u8], max: usize) -> Outcome {
    let mut out = Outcome {
        frames: Vec::new(),
        trailers: Vec::new(),
        error: None,
        leftover: Vec::new(),
    };
    let mut rest = input;
    loop {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &rest[..i];
                let (content, trailer) = match line.strip_suffix(b"\r") {
                    Some(content) => (content, &b"\r\n"[..]),
                    None => (line, &b"\n"[..]),
                };
                if content.len() > max {
                    out.error = Some(DecodeError::LineTooLong { max });
                    return out;
                }
                out.frames.push(content.to_vec());
                out.trailers.push(trailer.to_vec());
                rest = &rest[i + 1..];
            }
            None => {
                let content = rest.strip_suffix(b"\r").unwrap_or(rest);
                if content.len() > max {
                    out.error = Some(DecodeError::LineTooLong { max });
                } else {
                    out.leftover = rest.to_vec();
                }
                return out;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Properties

fn any_layout() -> impl Strategy<Value = LengthDelimited> {
    (
        prop::sample::select(WIDTHS.to_vec()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(width, little, includes_header)| {
            let endian = if little { Endian::Little } else { Endian::Big };
            LengthDelimited::with_layout(width, endian, includes_header).unwrap()
        })
}

/// Bytes rich in the values the decoders care about.
fn stream_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            1 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => Just(0u8),
            1 => Just(0xffu8),
        ],
        0..max_len,
    )
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..24, 0..32)
}

proptest! {
    #[test]
    fn any_fragmentation_of_encoded_frames_decodes_to_the_same_frames(
        codec in any_layout(),
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 0..8),
        sizes in chunk_sizes(),
    ) {
        let max = frames.iter().map(Vec::len).max().unwrap_or(0);
        let codec = codec.max_frame(max);
        let mut wire = Vec::new();
        for frame in &frames {
            codec.encode(frame, &mut wire).unwrap();
        }
        let whole = feed(codec.clone(), [&wire[..]]);
        prop_assert_eq!(&whole.frames, &frames);
        prop_assert_eq!(&whole.error, &None);
        prop_assert!(whole.leftover.is_empty());
        prop_assert_eq!(feed(codec.clone(), chunked(&wire, &sizes)), whole);
    }

    #[test]
    fn length_delimited_never_panics_nor_yields_a_frame_over_max_on_garbage(
        codec in any_layout(),
        max in 0usize..300,
        input in stream_bytes(600),
        sizes in chunk_sizes(),
    ) {
        let codec = codec.max_frame(max);
        let whole = feed(codec.clone(), [&input[..]]);
        prop_assert!(whole.frames.iter().all(|f| f.len() <= max));
        prop_assert_eq!(feed(codec.clone(), chunked(&input, &sizes)), whole);
    }

    #[test]
    fn length_delimited_survives_any_8_byte_header(
        header in any::<[u8; 8]>(),
        little in any::<bool>(),
        includes_header in any::<bool>(),
        max in prop_oneof![Just(usize::MAX), Just(DEFAULT_MAX_FRAME), any::<usize>()],
    ) {
        let endian = if little { Endian::Little } else { Endian::Big };
        let mut codec = LengthDelimited::with_layout(8, endian, includes_header)
            .unwrap()
            .max_frame(max);
        match codec.decode(&header) {
            Ok(Some(d)) => prop_assert_eq!(d, Decoded { consumed: 8, payload: 8..8 }),
            Ok(None) => {}
            Err(DecodeError::FrameTooLong { max: m, .. }) => prop_assert_eq!(m, max),
            Err(DecodeError::InvalidLength { len }) => {
                prop_assert!(includes_header && len < 8);
            }
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    #[test]
    fn lines_rejoined_with_their_terminators_reproduce_the_input_prefix(
        max in 0usize..24,
        input in stream_bytes(400),
        sizes in chunk_sizes(),
    ) {
        let out = feed(Lines::new(max), chunked(&input, &sizes));
        let mut rejoined = Vec::new();
        for (frame, trailer) in out.frames.iter().zip(&out.trailers) {
            prop_assert!(frame.len() <= max);
            prop_assert!(!frame.contains(&b'\n'));
            prop_assert!(trailer == b"\r\n" || trailer == b"\n", "terminator {:?}", trailer);
            rejoined.extend_from_slice(frame);
            rejoined.extend_from_slice(trailer);
        }
        prop_assert!(input.starts_with(&rejoined));
        if out.error.is_none() {
            rejoined.extend_from_slice(&out.leftover);
            prop_assert_eq!(&rejoined, &input);
            prop_assert!(!out.leftover.contains(&b'\n'));
        }
        prop_assert_eq!(out, lines_oracle(&input, max));
    }

    #[test]
    fn lines_with_a_large_max_never_panic_and_match_the_oracle(
        max in prop_oneof![Just(usize::MAX), Just(usize::MAX - 1), 0usize..1000],
        input in stream_bytes(400),
        sizes in chunk_sizes(),
    ) {
        prop_assert_eq!(feed(Lines::new(max), chunked(&input, &sizes)), lines_oracle(&input, max));
    }

    #[test]
    fn raw_reproduces_any_input_under_any_fragmentation(
        input in stream_bytes(400),
        sizes in chunk_sizes(),
    ) {
        let out = feed(Raw, chunked(&input, &sizes));
        prop_assert!(out.frames.iter().all(|f| !f.is_empty()));
        prop_assert_eq!(out.frames.concat(), input);
        prop_assert_eq!(out.error, None);
    }
}
