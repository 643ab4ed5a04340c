//! The line protocol (`line_server`, `line_server_pooled`): a client and test bodies shared by
//! both servers.
//!
//! Contract: greeting `+OK ready\r\n`; lines end in `\r\n` (bare `\n` accepted); verbs are
//! case-insensitive; `PING` → `+PONG`; `ECHO <text>` → `+<text>`; `SLEEP <ms>` (0..=10000) →
//! `+SLEPT <ms>`; `QUIT` → `+BYE` then close; empty line → `-ERR empty command`; anything else
//! (including non-UTF-8) → `-ERR unknown command`; a line longer than `--max-line` →
//! `-ERR line too long` then close. Replies end in `\r\n` and come in request order.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

pub const GREETING: &str = "+OK ready";

/// A line-protocol client: raw writes, CRLF-terminated reply lines.
pub struct LineClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl LineClient {
    /// Connects without reading the greeting.
    pub fn connect_raw(addr: SocketAddr) -> LineClient {
        LineClient {
            stream: connect(addr),
            buf: Vec::new(),
        }
    }

    /// Connects and checks the greeting.
    pub fn connect(addr: SocketAddr) -> LineClient {
        let mut c = LineClient::connect_raw(addr);
        c.expect(GREETING, "greeting");
        c
    }

    /// Sends `cmd` followed by `\r\n`.
    pub fn cmd(&mut self, cmd: &str) {
        self.send_raw(format!("{cmd}\r\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes: {e}", bytes.len()));
    }

    /// Reads one reply line (without its `\r\n`) within `timeout`; `Ok(None)` on a clean EOF
    /// with nothing buffered. Panics if a reply is not terminated by `\r\n`.
    pub fn try_read_line(&mut self, timeout: Duration) -> io::Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                assert_eq!(
                    line.last(),
                    Some(&b'\r'),
                    "reply not terminated by \\r\\n: {:?}",
                    String::from_utf8_lossy(&line)
                );
                line.pop();
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no complete reply line within {timeout:?} (buffered: {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
            self.stream.set_read_timeout(Some(deadline - now))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "EOF inside a reply line: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ),
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one reply line; panics on EOF, error or timeout ([`IO_TIMEOUT`]).
    pub fn read_line(&mut self) -> String {
        self.read_line_within(IO_TIMEOUT)
    }

    pub fn read_line_within(&mut self, timeout: Duration) -> String {
        match self.try_read_line(timeout) {
            Ok(Some(l)) => l,
            Ok(None) => panic!("connection closed while a reply line was expected"),
            Err(e) => panic!("reading a reply line: {e}"),
        }
    }

    /// Reads one reply line and compares it to `want`.
    pub fn expect(&mut self, want: &str, context: &str) {
        let got = match self.try_read_line(IO_TIMEOUT) {
            Ok(Some(l)) => l,
            Ok(None) => panic!("{context}: connection closed while {want:?} was expected"),
            Err(e) => panic!("{context}: reading {want:?}: {e}"),
        };
        assert_eq!(got, want, "{context}: unexpected reply");
    }

    /// Sends `cmd` and expects `want`.
    pub fn roundtrip(&mut self, cmd: &str, want: &str) {
        self.cmd(cmd);
        self.expect(want, &format!("reply to {cmd:?}"));
    }

    /// Asserts that the server closes the connection within `timeout` without sending anything
    /// more; returns how it closed.
    pub fn expect_close(&mut self, timeout: Duration, context: &str) -> Closed {
        let (rest, how) = expect_closed(&mut self.stream, timeout, context);
        self.buf.extend_from_slice(&rest);
        assert!(
            self.buf.is_empty(),
            "{context}: unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        how
    }
}

/// A random command and the reply it must get (no SLEEP above `max_sleep_ms`).
pub fn random_command(rng: &mut Rng, max_sleep_ms: u64) -> (Vec<u8>, String) {
    match rng.below(8) {
        0 => (b"PING".to_vec(), "+PONG".into()),
        1 => (b"ping".to_vec(), "+PONG".into()),
        2 | 3 => {
            let text = random_text(rng, 1, 40);
            let verb = ["ECHO", "echo", "Echo"][rng.below(3) as usize];
            (format!("{verb} {text}").into_bytes(), format!("+{text}"))
        }
        4 => (Vec::new(), "-ERR empty command".into()),
        5 => (b"FROBNICATE 1".to_vec(), "-ERR unknown command".into()),
        _ => {
            let ms = rng.range(0, max_sleep_ms);
            (format!("SLEEP {ms}").into_bytes(), format!("+SLEPT {ms}"))
        }
    }
}

/// Printable ASCII text without leading/trailing spaces and without runs of spaces.
pub fn random_text(rng: &mut Rng, min: usize, max: usize) -> String {
    let len = rng.range(min as u64, max as u64) as usize;
    let mut s = String::with_capacity(len);
    for i in 0..len {
        let space_ok = i > 0 && i + 1 < len && !s.ends_with(' ');
        let c = if space_ok && rng.below(6) == 0 {
            ' '
        } else {
            (b'!' + rng.below(94) as u8) as char
        };
        s.push(c);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Shared test bodies
// ---------------------------------------------------------------------------------------------

pub fn greeting_and_verbs(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    let mut c = LineClient::connect(s.addr);
    c.roundtrip("PING", "+PONG");
    c.roundtrip("ECHO hello", "+hello");
    c.roundtrip("ECHO Hello, World! 42", "+Hello, World! 42");
    c.roundtrip("SLEEP 0", "+SLEPT 0");
    let t = Instant::now();
    c.roundtrip("SLEEP 50", "+SLEPT 50");
    assert!(
        t.elapsed() >= Duration::from_millis(50),
        "SLEEP 50 answered after {:?}",
        t.elapsed()
    );
    c.roundtrip("", "-ERR empty command");
    c.roundtrip("NOPE", "-ERR unknown command");
    c.roundtrip("PING", "+PONG");
    // No PROXY header here: WHO is the client socket's own address.
    let me = c.stream.local_addr().expect("local address");
    c.roundtrip("WHO", &format!("+{me}"));
    c.roundtrip("QUIT", "+BYE");
    let how = c.expect_close(IO_TIMEOUT, "after QUIT");
    assert_eq!(how, Closed::Eof, "QUIT must close cleanly after the flush");
}

pub fn verbs_case_insensitive(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    let mut c = LineClient::connect(s.addr);
    for v in ["PING", "ping", "Ping", "pInG"] {
        c.roundtrip(v, "+PONG");
    }
    for v in ["ECHO", "echo", "Echo", "eChO"] {
        c.roundtrip(&format!("{v} MiXeD case"), "+MiXeD case");
    }
    for v in ["SLEEP", "sleep", "Sleep"] {
        c.roundtrip(&format!("{v} 1"), "+SLEPT 1");
    }
    c.roundtrip("quit", "+BYE");
    c.expect_close(IO_TIMEOUT, "after quit");
}

pub fn bare_lf_accepted(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    let mut c = LineClient::connect(s.addr);
    c.send_raw(b"PING\n");
    c.expect("+PONG", "PING with bare LF");
    c.send_raw(b"ECHO lf only\n");
    c.expect("+lf only", "ECHO with bare LF");
    c.send_raw(b"\n");
    c.expect("-ERR empty command", "empty line with bare LF");
    // Mixed terminators in one write.
    c.send_raw(b"PING\nECHO a\r\nPING\n");
    c.expect("+PONG", "mixed 1");
    c.expect("+a", "mixed 2");
    c.expect("+PONG", "mixed 3");
    c.send_raw(b"QUIT\n");
    c.expect("+BYE", "QUIT with bare LF");
    c.expect_close(IO_TIMEOUT, "after QUIT");
}

pub fn quit_closes_after_flush(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    // QUIT alone.
    let mut c = LineClient::connect(s.addr);
    c.roundtrip("QUIT", "+BYE");
    assert_eq!(c.expect_close(IO_TIMEOUT, "after QUIT"), Closed::Eof);
    // Replies before QUIT in the same write are all flushed; nothing after QUIT is answered.
    let mut c = LineClient::connect(s.addr);
    c.send_raw(b"PING\r\nECHO before\r\nQUIT\r\nPING\r\n");
    c.expect("+PONG", "pipelined before QUIT");
    c.expect("+before", "pipelined before QUIT");
    c.expect("+BYE", "pipelined QUIT");
    c.expect_close(IO_TIMEOUT, "pipelined QUIT then PING: nothing after +BYE");
    // The server is still there.
    let mut c = LineClient::connect(s.addr);
    c.roundtrip("PING", "+PONG");
}

pub fn empty_and_unknown_keep_connection(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    let mut c = LineClient::connect(s.addr);
    c.roundtrip("", "-ERR empty command");
    c.roundtrip("", "-ERR empty command");
    c.roundtrip("HELLO", "-ERR unknown command");
    c.roundtrip("PINGX", "-ERR unknown command");
    c.roundtrip("ECHOX foo", "-ERR unknown command");
    c.roundtrip("123", "-ERR unknown command");
    // Non-UTF-8 lines.
    c.send_raw(b"\xff\xfe\xfd\r\n");
    c.expect("-ERR unknown command", "non-UTF-8 line");
    c.send_raw(b"PI\xc3NG\r\n");
    c.expect("-ERR unknown command", "non-UTF-8 inside a verb");
    c.send_raw(b"ECHO \xc3\x28\r\n");
    c.expect("-ERR unknown command", "ECHO with non-UTF-8 text");
    // Still open and serving.
    c.roundtrip("PING", "+PONG");
    c.roundtrip("ECHO still here", "+still here");
}

pub fn sleep_arguments(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    let mut c = LineClient::connect(s.addr);
    c.roundtrip("SLEEP 0", "+SLEPT 0");
    c.roundtrip("SLEEP 10", "+SLEPT 10");
    for bad in ["SLEEP 10001", "SLEEP -1", "SLEEP abc", "SLEEP"] {
        c.cmd(bad);
        let r = c.read_line();
        assert!(
            r.starts_with("-ERR"),
            "{bad:?} (out of 0..=10000 or not a number) answered {r:?}"
        );
    }
    c.roundtrip("PING", "+PONG");
}

/// Many commands in one write: all answered, in order.
pub fn pipelined_in_order(server: &str, backend: Backend, max_sleep_ms: u64) {
    let s = Server::start(server, backend, &[]);
    let mut rng = Rng::new(test_seed());
    let mut c = LineClient::connect(s.addr);
    for round in 0..3 {
        let mut req = Vec::new();
        let mut want = Vec::new();
        for _ in 0..300 {
            let (cmd, reply) = random_command(&mut rng, max_sleep_ms);
            req.extend_from_slice(&cmd);
            req.extend_from_slice(b"\r\n");
            want.push(reply);
        }
        c.send_raw(&req);
        for (i, w) in want.iter().enumerate() {
            let got = c.read_line();
            assert_eq!(&got, w, "round {round}, reply #{i} of a pipelined batch");
        }
    }
    c.roundtrip("PING", "+PONG");
}

/// Commands written in random fragments (splitting `\r` from `\n`, verbs in two, ...).
pub fn fragmented_commands(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    let mut rng = Rng::new(test_seed() ^ 0xF4A6);
    for conn in 0..20 {
        let mut c = LineClient::connect(s.addr);
        let mut req = Vec::new();
        let mut want = Vec::new();
        for _ in 0..40 {
            let (cmd, reply) = random_command(&mut rng, 2);
            req.extend_from_slice(&cmd);
            req.extend_from_slice(if rng.below(4) == 0 { b"\n" } else { b"\r\n" });
            want.push(reply);
        }
        let max_chunk = [1, 2, 3, 7, 64][conn % 5];
        let chunks = split_random(&req, &mut rng, max_chunk);
        let mut w = c.stream.try_clone().unwrap();
        let writer = thread::spawn(move || {
            for ch in chunks {
                w.write_all(&ch)?;
            }
            io::Result::Ok(())
        });
        for (i, wnt) in want.iter().enumerate() {
            let got = c.read_line();
            assert_eq!(
                &got, wnt,
                "connection {conn} (max chunk {max_chunk}), reply #{i}"
            );
        }
        writer.join().unwrap().expect("writer");
    }
}

/// A line longer than `--max-line`: `-ERR line too long`, then the connection is closed; other
/// connections unaffected.
pub fn line_too_long(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &["--max-line", "64"]);
    let mut healthy = LineClient::connect(s.addr);

    // Terminated long line.
    let mut c = LineClient::connect(s.addr);
    c.roundtrip("ECHO short is fine", "+short is fine");
    let long = format!("ECHO {}\r\n", "x".repeat(200));
    c.send_raw(long.as_bytes());
    c.expect("-ERR line too long", "a 205-byte line with --max-line 64");
    c.expect_close(IO_TIMEOUT, "after -ERR line too long");

    // A long line without any terminator must be detected without waiting for one.
    let mut c = LineClient::connect(s.addr);
    c.send_raw("y".repeat(1000).as_bytes());
    c.expect(
        "-ERR line too long",
        "1000 bytes without a line terminator with --max-line 64",
    );
    c.expect_close(IO_TIMEOUT, "after -ERR line too long (unterminated)");

    // A line comfortably below the limit is fine.
    let mut c = LineClient::connect(s.addr);
    let text = "z".repeat(40);
    c.roundtrip(&format!("ECHO {text}"), &format!("+{text}"));

    healthy.roundtrip("PING", "+PONG");
}

/// The default `--max-line` is 8192.
pub fn line_too_long_default(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    let mut c = LineClient::connect(s.addr);
    let text = "a".repeat(4000);
    c.roundtrip(&format!("ECHO {text}"), &format!("+{text}"));
    let mut w = c.stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = w.write_all(format!("ECHO {}\r\n", "b".repeat(20_000)).as_bytes());
    });
    c.expect(
        "-ERR line too long",
        "a 20005-byte line with the default max",
    );
    c.expect_close(IO_TIMEOUT, "after -ERR line too long");
    writer.join().unwrap();
}

/// Random binary garbage, one "command" per line: each gets `-ERR unknown command`, the
/// connection stays open.
pub fn garbage_lines(server: &str, backend: Backend) {
    let s = Server::start(server, backend, &[]);
    let mut rng = Rng::new(test_seed() ^ 0x6A7B);
    let mut c = LineClient::connect(s.addr);
    let mut req = Vec::new();
    let n = 200;
    for i in 0..n {
        let len = rng.range(1, 120) as usize;
        let mut line = rng.bytes(len);
        for b in line.iter_mut() {
            while *b == b'\r' || *b == b'\n' {
                *b = rng.next_u64() as u8;
            }
        }
        if i % 2 == 0 {
            // Binary: starts with a byte that can't begin any verb (and isn't whitespace).
            line[0] = 0x80 | (rng.next_u64() as u8);
        } else {
            // ASCII-ish junk word.
            line = format!("ZQ{}", random_text(&mut rng, 1, 30)).into_bytes();
        }
        req.extend_from_slice(&line);
        req.extend_from_slice(b"\r\n");
    }
    let chunks = split_random(&req, &mut rng, 97);
    let mut w = c.stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for ch in chunks {
            w.write_all(&ch)?;
        }
        io::Result::Ok(())
    });
    for i in 0..n {
        let got = c.read_line();
        assert_eq!(got, "-ERR unknown command", "garbage line #{i}");
    }
    writer.join().unwrap().expect("writer");
    c.roundtrip("PING", "+PONG");
    let mut other = LineClient::connect(s.addr);
    other.roundtrip("PING", "+PONG");
}

/// 300 clients connect and vanish before reading the greeting (every other one with a reset);
/// then the server still serves, and its descriptors go back to the baseline.
pub fn connect_and_vanish_flood(server: &str, backend: Backend) {
    let mut s = Server::start(server, backend, &[]);
    let mut probe = LineClient::connect(s.addr);
    probe.roundtrip("PING", "+PONG");
    drop(probe);
    // The IO threads set up their descriptors asynchronously after the listening line: take the
    // baseline once the count has been steady for 500 ms.
    let baseline_fds = steady_fd_count(&s);
    let baseline_summary = s.fd_summary();

    for i in 0..300 {
        let c = match TcpStream::connect_timeout(&s.addr, Duration::from_secs(2)) {
            Ok(c) => c,
            Err(e) => panic!("flood connection #{i} failed: {e}"),
        };
        if i % 2 == 0 {
            reset_close(c);
        } else {
            drop(c);
        }
    }
    s.assert_alive("after 300 connect-and-vanish clients");

    let mut c = LineClient::connect(s.addr);
    c.roundtrip("PING", "+PONG");
    c.roundtrip("ECHO after the flood", "+after the flood");

    // Every vanished connection must be released (bounded wait: closing is asynchronous).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fds = s.fd_count();
    while fds > baseline_fds + 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        fds = s.fd_count();
    }
    assert!(
        fds <= baseline_fds + 1,
        "server holds {fds} descriptors after the flood, {baseline_fds} before (one client \
         connected now); vanished connections leaked?\nbefore: {baseline_summary}\nafter:  {}",
        s.fd_summary()
    );
    s.assert_alive("end");
}

/// The server's descriptor count once it has not changed for 500 ms (bounded: 10 s).
pub fn steady_fd_count(s: &Server) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = s.fd_count();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        let n = s.fd_count();
        if n != last {
            last = n;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    last
}

/// A client sends part of a line, then resets; another sends part of a line and half-closes.
/// The server keeps serving.
pub fn reset_mid_line(server: &str, backend: Backend) {
    let mut s = Server::start(server, backend, &[]);
    let mut other = LineClient::connect(s.addr);
    for i in 0..20 {
        let mut c = LineClient::connect(s.addr);
        c.send_raw(format!("ECHO partial line {i} without end").as_bytes());
        if i % 3 == 0 {
            // also one complete command first
            c.send_raw(b"\r\nPI");
        }
        reset_close(c.stream);
    }
    let mut c = LineClient::connect(s.addr);
    c.send_raw(b"ECHO unterminated then FIN");
    c.stream.shutdown(Shutdown::Write).unwrap();
    let (_rest, _how) = expect_closed(
        &mut c.stream,
        IO_TIMEOUT,
        "half-close after an unterminated line",
    );
    s.assert_alive("after resets mid-line");
    other.roundtrip("PING", "+PONG");
    let mut fresh = LineClient::connect(s.addr);
    fresh.roundtrip("ECHO fresh", "+fresh");
}

/// 32 concurrent clients, each 50 ECHOs with unique text, then QUIT.
pub fn many_concurrent_clients(server: &str, backend: Backend) {
    let mut s = Server::start(server, backend, &[]);
    let addr = s.addr;
    let handles: Vec<_> = (0..32)
        .map(|k| {
            thread::spawn(move || {
                let mut c = LineClient::connect(addr);
                for j in 0..50 {
                    c.roundtrip(
                        &format!("ECHO client {k} msg {j}"),
                        &format!("+client {k} msg {j}"),
                    );
                }
                c.roundtrip("QUIT", "+BYE");
                c.expect_close(IO_TIMEOUT, "after QUIT");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    s.assert_alive("after 32 clients");
}

/// SIGTERM while a reply is pending (a SLEEP in progress): the reply is flushed, then the
/// connection closes and the process exits 0 within the drain deadline.
pub fn sigterm_flushes_pending_reply(server: &str, backend: Backend) {
    let mut s = Server::start(server, backend, &["--drain-timeout", "5"]);
    let mut c = LineClient::connect(s.addr);
    let mut idle = LineClient::connect(s.addr);
    // One write, so the server has read the SLEEP when it answers the PING.
    c.send_raw(b"PING\r\nSLEEP 700\r\n");
    c.expect("+PONG", "PING before SLEEP");
    let t = Instant::now();
    s.signal(libc::SIGTERM);
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.expect("+SLEPT 700", "pending SLEEP reply after SIGTERM")
    })) {
        if let Some(st) = s.wait_exit(Duration::from_secs(10)) {
            assert_clean_exit(st, libc::SIGTERM, "after SIGTERM with a pending reply");
        }
        std::panic::resume_unwind(e);
    }
    c.expect_close(Duration::from_secs(10), "after the flushed reply");
    idle.expect_close(Duration::from_secs(10), "idle client at shutdown");
    let st = s
        .wait_exit(Duration::from_secs(5 + 5))
        .expect("process did not exit within drain-timeout + 5 s after SIGTERM");
    assert_clean_exit(st, libc::SIGTERM, "after SIGTERM with a pending reply");
    println!("exited {:?} after SIGTERM", t.elapsed());
}
