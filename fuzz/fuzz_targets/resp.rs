//! Feeds arbitrary bytes, in arbitrary fragments, to the RESP decoder.
//!
//! Input layout: byte 0 picks the limits (bulk, arguments, inline line), byte 1 the fragment
//! size; the rest is the stream. The target drives the decoder the way the engine does, checks
//! the `Decoded` invariants, reads every command with `Command::parse` (its argument count must
//! match the arguments it yields, and no bulk may exceed the limit), and checks that the
//! fragmented stream decodes exactly like the whole one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringport::codec::resp::{Command, Resp};
use ringport::codec::{DecodeError, Decoder};

/// Each command's arguments, then the error that ended the stream.
type Outcome = (Vec<Vec<Vec<u8>>>, Option<DecodeError>);

fn feed<'a>(mut decoder: Resp, chunks: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let max_bulk = decoder.bulk_limit();
    let mut buf = Vec::new();
    let mut commands = Vec::new();
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
                    let cmd = Command::parse(&buf[d.payload.clone()]);
                    let args: Vec<Vec<u8>> = cmd.args().map(|a| a.into_owned()).collect();
                    assert_eq!(args.len(), cmd.len());
                    if buf.first() == Some(&b'*') {
                        assert!(args.iter().all(|a| a.len() <= max_bulk));
                    }
                    commands.push(args);
                    buf.drain(..d.consumed);
                }
                Ok(None) => break,
                Err(e) => return (commands, Some(e)),
            }
        }
    }
    (commands, None)
}

fuzz_target!(|data: &[u8]| {
    let [limits, chunk, stream @ ..] = data else {
        return;
    };
    let limit = usize::from(limits & 0x3f) * 4;
    let decoder = match limits >> 6 {
        0 => Resp::new(),
        1 => Resp::new().max_bulk(limit),
        2 => Resp::new().max_args(limit),
        _ => Resp::new().max_inline(limit),
    };
    let chunk = usize::from(*chunk).max(1);
    let whole = feed(decoder.clone(), std::iter::once(stream));
    let fragmented = feed(decoder, stream.chunks(chunk));
    assert_eq!(whole, fragmented);
});
