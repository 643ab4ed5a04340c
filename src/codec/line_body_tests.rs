//! `LineBody` (header line + announced body) and the typed-decoder contract: unit tests at
//! every bound, and properties over arbitrary splits and arbitrary bytes.

use proptest::prelude::*;

use super::{BadFrame, Bytes, Decode, DecodeError, HeaderParser, ItemDecoder, LineBody, Lines};

/// `PUT <len> [quiet]` announces a body; `NOP` has none; anything else is a bad line.
#[derive(Debug, Clone)]
struct Put {
    skip_oversize: bool,
    skip_bad_end: bool,
}

impl HeaderParser for Put {
    type Header<'a> = (&'a [u8], bool);
    fn parse<'a>(
        &self,
        line: &'a [u8],
    ) -> Result<((&'a [u8], bool), Option<u64>), (&'static [u8], &'static str)> {
        if line == b"NOP" {
            return Ok(((line, false), None));
        }
        let rest = line
            .strip_prefix(b"PUT ")
            .ok_or((&b"ERR\r\n"[..], "not PUT"))?;
        let (num, quiet) = match rest.strip_suffix(b" quiet") {
            Some(n) => (n, true),
            None => (rest, false),
        };
        let n = std::str::from_utf8(num)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        let n = n.ok_or((&b"BADLEN\r\n"[..], "bad length"))?;
        Ok(((line, quiet), Some(n)))
    }
    fn oversize(&self, header: &(&[u8], bool), _len: u64) -> Option<&'static [u8]> {
        self.skip_oversize
            .then_some(if header.1 { &b""[..] } else { b"TOOBIG\r\n" })
    }
    fn bad_body_end(&self, header: &(&[u8], bool)) -> Option<&'static [u8]> {
        self.skip_bad_end
            .then_some(if header.1 { &b""[..] } else { b"BADCHUNK\r\n" })
    }
}

fn codec(max_line: usize, max_body: usize) -> LineBody<Put> {
    let parser = Put {
        skip_oversize: true,
        skip_bad_end: true,
    };
    LineBody::new(parser, max_line, max_body)
}

/// What one decode call gave, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Incomplete,
    Frame {
        consumed: usize,
        line: Vec<u8>,
        body: Option<Vec<u8>>,
    },
    Bad(BadFrame),
    Err(DecodeError),
}

fn decode(c: &mut LineBody<Put>, buf: &[u8]) -> Out {
    match c.decode_item(buf) {
        Ok(Decode::Incomplete) => Out::Incomplete,
        Ok(Decode::Frame { consumed, item }) => Out::Frame {
            consumed,
            line: item.line.to_vec(),
            body: item.body.map(<[u8]>::to_vec),
        },
        Ok(Decode::Bad(b)) => Out::Bad(b),
        Err(e) => Out::Err(e),
    }
}

fn frame(consumed: usize, line: &[u8], body: Option<&[u8]>) -> Out {
    Out::Frame {
        consumed,
        line: line.to_vec(),
        body: body.map(<[u8]>::to_vec),
    }
}

#[test]
fn a_line_and_its_body_are_one_frame_borrowed_from_the_buffer() {
    let mut c = codec(64, 16);
    let buf = b"PUT 5\r\nhello\r\nNOP\r\n";
    let Ok(Decode::Frame { consumed, item }) = c.decode_item(buf) else {
        panic!()
    };
    assert_eq!(consumed, 14);
    assert_eq!(item.header, (&b"PUT 5"[..], false));
    assert_eq!(item.body, Some(&b"hello"[..]));
    assert!(
        std::ptr::eq(item.body.unwrap().as_ptr(), buf[7..].as_ptr()),
        "not copied"
    );
    assert_eq!(decode(&mut c, &buf[14..]), frame(5, b"NOP", None));
    // A bare "\n" ends the line; the body's terminator must be "\r\n".
    assert_eq!(
        decode(&mut c, b"PUT 1\nx\r\n"),
        frame(9, b"PUT 1", Some(b"x"))
    );
    // An empty body.
    assert_eq!(
        decode(&mut c, b"PUT 0\r\n\r\n"),
        frame(9, b"PUT 0", Some(b""))
    );
}

#[test]
fn incomplete_until_the_body_terminator_has_arrived() {
    let mut c = codec(64, 16);
    let whole = b"PUT 5\r\nhello\r\n";
    for end in 0..whole.len() {
        assert_eq!(
            decode(&mut c, &whole[..end]),
            Out::Incomplete,
            "{end} bytes"
        );
    }
    assert_eq!(decode(&mut c, whole), frame(14, b"PUT 5", Some(b"hello")));
}

#[test]
fn bounds_are_exact() {
    let mut c = codec(8, 4);
    // max_body exactly: taken; one more: oversize, skipped with line + body + "\r\n".
    assert_eq!(
        decode(&mut c, b"PUT 4\r\nabcd\r\n"),
        frame(13, b"PUT 4", Some(b"abcd"))
    );
    let Out::Bad(bad) = decode(&mut c, b"PUT 5\r\n") else {
        panic!()
    };
    assert_eq!((bad.skip, bad.reply), (7 + 5 + 2, &b"TOOBIG\r\n"[..]));
    // A hostile length: skipped (saturating), never allocated, never overflowing.
    let mut wide = codec(64, 4);
    let Out::Bad(bad) = decode(&mut wide, b"PUT 18446744073709551615\r\n") else {
        panic!()
    };
    assert_eq!(bad.skip, u64::MAX);
}

#[test]
fn a_line_at_max_line_is_taken_and_one_longer_closes() {
    let mut c = codec(5, 4);
    assert_eq!(
        decode(&mut c, b"PUT 1\r\nx\r\n"),
        frame(10, b"PUT 1", Some(b"x"))
    );
    assert_eq!(
        decode(&mut c, b"PUT 10\r\n"),
        Out::Err(DecodeError::LineTooLong { max: 5 })
    );
}

#[test]
fn bad_lines_and_bad_chunks_are_skipped_with_their_reply() {
    let mut c = codec(64, 16);
    assert_eq!(
        decode(&mut c, b"HELLO\r\nNOP\r\n"),
        Out::Bad(BadFrame::new(7, b"ERR\r\n", "not PUT"))
    );
    assert_eq!(
        decode(&mut c, b"PUT x\r\nabc"),
        Out::Bad(BadFrame::new(7, b"BADLEN\r\n", "bad length"))
    );
    // The announced 3 bytes and 2 more are the frame; they are not "\r\n".
    let Out::Bad(bad) = decode(&mut c, b"PUT 3\r\nabcde\r\n") else {
        panic!()
    };
    assert_eq!((bad.skip, bad.reply), (12, &b"BADCHUNK\r\n"[..]));
    // Quiet (memcached's noreply): skipped, answered with nothing.
    let Out::Bad(bad) = decode(&mut c, b"PUT 3 quiet\r\nabcde\r\n") else {
        panic!()
    };
    assert_eq!((bad.skip, bad.reply), (18, &b""[..]));
}

#[test]
fn by_default_oversize_and_bad_chunks_close() {
    let parser = Put {
        skip_oversize: false,
        skip_bad_end: false,
    };
    let mut c = LineBody::new(parser, 64, 4);
    let Err(DecodeError::FrameTooLong { len: 5, max: 4 }) = c.decode_item(b"PUT 5\r\n") else {
        panic!()
    };
    assert!(matches!(
        c.decode_item(b"PUT 1\r\nxyz"),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn smtp_bdat_has_no_body_terminator() {
    let mut c = codec(64, 16).body_end(b"");
    assert_eq!(
        decode(&mut c, b"PUT 3\r\nabcNOP\r\n"),
        frame(10, b"PUT 3", Some(b"abc"))
    );
    assert_eq!(c.max_frame_input(), Some(64 + 2 + 16));
    assert_eq!(codec(64, 16).max_frame_input(), Some(64 + 2 + 16 + 2));
}

#[test]
fn bytes_serves_a_byte_range_decoder_as_items() {
    let mut c = Bytes(Lines::new(8));
    let Ok(Decode::Frame { consumed: 4, item }) = c.decode_item(b"abc\nd") else {
        panic!()
    };
    assert_eq!(item, b"abc");
    assert!(matches!(c.decode_item(b"abc"), Ok(Decode::Incomplete)));
    assert!(c.decode_item(b"0123456789\n").is_err());
}

/// Runs the decoder over `chunks` as the engine does (bytes appended, frames consumed from the
/// front, skips carried over into bytes not yet received); returns what it saw.
fn drive(c: &mut LineBody<Put>, chunks: &[&[u8]]) -> Vec<Out> {
    let (mut buf, mut out, mut discard) = (Vec::new(), Vec::new(), 0u64);
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            if discard > 0 {
                let n = discard.min(buf.len() as u64) as usize;
                buf.drain(..n);
                discard -= n as u64;
                if buf.is_empty() {
                    break;
                }
            }
            let o = decode(c, &buf);
            match &o {
                Out::Incomplete => break,
                Out::Frame { consumed, .. } => {
                    assert!(*consumed > 0 && *consumed <= buf.len());
                    buf.drain(..*consumed);
                }
                Out::Bad(b) => {
                    assert!(b.skip > 0);
                    let n = b.skip.min(buf.len() as u64) as usize;
                    buf.drain(..n);
                    discard = b.skip - n as u64;
                }
                Out::Err(_) => {
                    out.push(o);
                    return out;
                }
            }
            out.push(o);
        }
    }
    out
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|body| {
            [format!("PUT {}\r\n", body.len()).as_bytes(), &body, b"\r\n"].concat()
        }),
        Just(b"NOP\r\n".to_vec()),
        Just(b"HELLO\r\n".to_vec()),
        Just(b"PUT 2\r\nabcd".to_vec()), // a bad chunk: exactly line + 2 + 2 bytes skipped
        proptest::collection::vec(any::<u8>(), 17..40).prop_map(|body| {
            [format!("PUT {}\r\n", body.len()).as_bytes(), &body, b"\r\n"].concat()
        }),
    ]
}

proptest! {
    /// However the stream is cut, the same frames and bad frames come out, in order.
    #[test]
    fn any_split_gives_the_same_items(
        msgs in proptest::collection::vec(message(), 1..12),
        cuts in proptest::collection::vec(1usize..17, 1..64),
    ) {
        let wire = msgs.concat();
        let whole = drive(&mut codec(32, 16), &[&wire]);
        let mut chunks = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - at);
            chunks.push(&wire[at..at + n]);
            at += n;
            i += 1;
        }
        let split = drive(&mut codec(32, 16), &chunks);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole.len(), msgs.len());
    }

    /// Arbitrary bytes: never a panic, every frame within the buffer, every skip non-zero.
    #[test]
    fn arbitrary_bytes_are_handled(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut c = codec(16, 8);
        let _ = drive(&mut c, &[&bytes]);
        let mut strict = LineBody::new(Put { skip_oversize: false, skip_bad_end: false }, 16, 8);
        let _ = strict.decode_item(&bytes);
    }
}
