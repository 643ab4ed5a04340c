//! Typed frames and recoverable bad frames, library-level (an `Engine` in this process, one IO
//! thread, on every backend): a `LineBody` server's handler receives parsed items; a bad line,
//! a bad data chunk and a body over `max_body` are answered and skipped while the connection
//! goes on (counted as `bad_frames`; an oversize body is dropped as it arrives, never
//! buffered: the server's input limit here is far below it); a line over `max_line` loses the
//! framing and closes (counted as `decode_errors`), and no other connection notices.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use ringport::codec::{HeaderParser, LineBody, WithBody};
use ringport::{BackendKind, Conn, Handler, ItemHandler, RunningEngine, Server, ServerHandle};
use support::limits::{any_port, connect, stop, wait_stats};

/// `PUT <len>` carries a body; `NOP` has none; any other line is a bad one.
#[derive(Clone)]
struct Put;

impl HeaderParser for Put {
    type Header<'a> = Option<u64>;
    fn parse(
        &self,
        line: &[u8],
    ) -> Result<(Option<u64>, Option<u64>), (&'static [u8], &'static str)> {
        if line == b"NOP" {
            return Ok((None, None));
        }
        let n = line
            .strip_prefix(b"PUT ")
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
            .ok_or((&b"ERR\r\n"[..], "not PUT <len>"))?;
        Ok((Some(n), Some(n)))
    }
    fn oversize(&self, _: &Option<u64>, _: u64) -> Option<&'static [u8]> {
        Some(b"TOOBIG\r\n")
    }
    fn bad_body_end(&self, _: &Option<u64>) -> Option<&'static [u8]> {
        Some(b"BADCHUNK\r\n")
    }
}

struct Session;
impl Handler for Session {}
impl ItemHandler<LineBody<Put>> for Session {
    fn on_item(&mut self, conn: &mut Conn<'_>, item: WithBody<'_, Option<u64>>) {
        match (item.header, item.body) {
            (Some(n), Some(body)) => {
                assert_eq!(n as usize, body.len(), "the header and the body agree");
                conn.write(format!("GOT {n} ").as_bytes());
                conn.write(body);
                conn.write(b"\r\n");
            }
            _ => conn.write(b"NOPPED\r\n"),
        }
    }
}

const MAX_LINE: usize = 64;
const MAX_BODY: usize = 1024;
/// Far below the oversize body sent: had it been buffered, the connection would close.
const INPUT_LIMIT: usize = 16 << 10;

fn start(kind: BackendKind) -> Option<(RunningEngine, ServerHandle)> {
    let builder = ringport::Engine::builder().backend(kind).io_threads(1);
    let mut engine = support::build(builder)?;
    let codec = LineBody::new(Put, MAX_LINE, MAX_BODY);
    let server = Server::typed(any_port(), codec, |_| Session).max_buffered_input(INPUT_LIMIT);
    let handle = engine.add_server(server).unwrap();
    Some((engine.start().unwrap(), handle))
}

/// Reads until exactly `want` has arrived (fails on EOF, a timeout, or different bytes).
fn expect(s: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading {:?}: {e}", String::from_utf8_lossy(want)));
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

fn bad_frames_are_answered_and_the_connection_goes_on(kind: BackendKind) {
    let Some((running, server)) = start(kind) else {
        return;
    };
    let mut c = connect(server.local_addr());
    // Items, byte by byte and whole.
    for b in b"PUT 3\r\nabc\r\n" {
        c.write_all(&[*b]).unwrap();
    }
    expect(&mut c, b"GOT 3 abc\r\n");
    c.write_all(b"NOP\r\nPUT 0\r\n\r\n").unwrap();
    expect(&mut c, b"NOPPED\r\nGOT 0 \r\n");
    // A bad line, a bad data chunk: answered in order with the items around them.
    c.write_all(b"HELLO\r\nPUT 3\r\nabcde\r\nNOP\r\n").unwrap();
    // "abcde": the 3 announced bytes and "de" (not "\r\n") are the bad frame; its "\r\n"
    // is then an empty line: a bad line.
    expect(&mut c, b"ERR\r\nBADCHUNK\r\nERR\r\nNOPPED\r\n");
    // A body 16 times the input limit, over max_body: dropped as it arrives.
    let big = 256 << 10;
    c.write_all(format!("PUT {big}\r\n").as_bytes()).unwrap();
    let chunk = vec![b'x'; 8 << 10];
    for _ in 0..big / chunk.len() {
        c.write_all(&chunk).unwrap();
    }
    c.write_all(b"\r\nPUT 2\r\nok\r\n").unwrap();
    expect(&mut c, b"TOOBIG\r\nGOT 2 ok\r\n");
    let s = wait_stats(&server, "counted", |s| s.bad_frames == 4);
    assert_eq!(
        (s.frames_in, s.bad_frames, s.decode_errors),
        (5, 4, 0),
        "{s:?}"
    );
    assert_eq!(s.active, 1, "still open: {s:?}");
    drop(c);
    stop(running);
}

fn a_line_over_max_line_closes_only_its_connection(kind: BackendKind) {
    let Some((running, server)) = start(kind) else {
        return;
    };
    let mut other = connect(server.local_addr());
    let mut c = connect(server.local_addr());
    c.write_all(&[b'A'; MAX_LINE + 3]).unwrap();
    let mut rest = Vec::new();
    match c.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let s = wait_stats(&server, "the decode error counted", |s| {
        s.closed["protocol"] == 1
    });
    assert_eq!((s.decode_errors, s.bad_frames), (1, 0), "{s:?}");
    other.write_all(b"PUT 1\r\nz\r\n").unwrap();
    expect(&mut other, b"GOT 1 z\r\n");
    drop(other);
    stop(running);
}

on_every_backend!(
    bad_frames_are_answered_and_the_connection_goes_on,
    a_line_over_max_line_closes_only_its_connection,
);
