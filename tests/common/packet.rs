//! Length-prefixed framing (`packet_echo_server`, `large_packet_echo_server`): layouts and
//! test bodies shared by both servers.
//!
//! Default frame: 4-byte big-endian payload length + payload, echoed unchanged (header
//! included). `--length-width 1|2|4|8`, `--little-endian`, `--length-includes-header` select
//! other layouts; `--max-frame BYTES` bounds the payload. A frame announcing more than the
//! maximum closes that connection (and is logged); other connections are unaffected.

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use proptest::prelude::{any, prop, prop_assert, TestCaseError};

use super::*;

/// A frame layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub width: usize,
    pub little_endian: bool,
    pub includes_header: bool,
}

impl Layout {
    pub const DEFAULT: Layout = Layout {
        width: 4,
        little_endian: false,
        includes_header: false,
    };

    pub fn new(width: usize, little_endian: bool, includes_header: bool) -> Layout {
        Layout {
            width,
            little_endian,
            includes_header,
        }
    }

    /// The CLI flags selecting this layout.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--length-width".to_string(), self.width.to_string()];
        if self.little_endian {
            a.push("--little-endian".into());
        }
        if self.includes_header {
            a.push("--length-includes-header".into());
        }
        a
    }

    /// The largest value the length field can hold.
    pub fn max_field(&self) -> u64 {
        if self.width == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * self.width)) - 1
        }
    }

    /// The largest payload this layout can announce.
    pub fn max_payload(&self) -> u64 {
        self.max_field()
            - if self.includes_header {
                self.width as u64
            } else {
                0
            }
    }

    /// A header carrying the raw field `value` (truncated to the width).
    pub fn header_raw(&self, value: u64) -> Vec<u8> {
        if self.little_endian {
            value.to_le_bytes()[..self.width].to_vec()
        } else {
            value.to_be_bytes()[8 - self.width..].to_vec()
        }
    }

    /// The header announcing a payload of `len` bytes.
    pub fn header(&self, len: u64) -> Vec<u8> {
        let v = if self.includes_header {
            len + self.width as u64
        } else {
            len
        };
        assert!(v <= self.max_field(), "{len} does not fit {self:?}");
        self.header_raw(v)
    }

    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = self.header(payload.len() as u64);
        f.extend_from_slice(payload);
        f
    }

    fn read_field(&self, h: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        if self.little_endian {
            b[..self.width].copy_from_slice(h);
            u64::from_le_bytes(b)
        } else {
            b[8 - self.width..].copy_from_slice(h);
            u64::from_be_bytes(b)
        }
    }

    /// Parses `data` as a stream of frames: the length of the prefix made of complete valid
    /// frames, the offsets where frames end, and whether parsing stopped on an invalid header
    /// (payload above `max_payload`, or with the length including the header, a field smaller
    /// than the header).
    pub fn parse(&self, data: &[u8], max_payload: u64) -> Parsed {
        let mut ends = vec![0];
        let mut i = 0;
        loop {
            if data.len() - i < self.width {
                return Parsed {
                    ends,
                    invalid: false,
                };
            }
            let v = self.read_field(&data[i..i + self.width]);
            let payload = if self.includes_header {
                match v.checked_sub(self.width as u64) {
                    Some(p) => p,
                    None => {
                        return Parsed {
                            ends,
                            invalid: true,
                        }
                    }
                }
            } else {
                v
            };
            if payload > max_payload {
                return Parsed {
                    ends,
                    invalid: true,
                };
            }
            let end = i as u64 + self.width as u64 + payload;
            if end > data.len() as u64 {
                return Parsed {
                    ends,
                    invalid: false,
                };
            }
            i = end as usize;
            ends.push(i);
        }
    }
}

/// Result of [`Layout::parse`].
#[derive(Debug)]
pub struct Parsed {
    /// Offsets at which complete frames end (starting with 0).
    pub ends: Vec<usize>,
    /// Parsing stopped on an invalid header.
    pub invalid: bool,
}

impl Parsed {
    pub fn complete_len(&self) -> usize {
        *self.ends.last().unwrap()
    }
}

/// `count` frames with payload sizes in `0..=max_len` (about 1 in 8 empty) and their bytes.
pub fn random_frames(rng: &mut Rng, layout: Layout, count: usize, max_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..count {
        let len = if rng.below(8) == 0 {
            0
        } else {
            rng.range(1, max_len as u64) as usize
        };
        out.extend_from_slice(&layout.frame(&rng.bytes(len)));
    }
    out
}

fn start(server: &str, backend: Backend, args: &[String]) -> Server {
    ServerBuilder::new(server)
        .backend(backend)
        .args(args)
        .start()
}

// ---------------------------------------------------------------------------------------------
// Shared test bodies. `extra` is passed to every server started.
// ---------------------------------------------------------------------------------------------

/// Random frames written in random fragments (proptest, seeded): echoed intact and in order.
pub fn fragmented_round_trip(
    server: &str,
    backend: Backend,
    extra: &[&str],
    max_payload: usize,
    cases: u32,
) {
    let s = ServerBuilder::new(server)
        .backend(backend)
        .args(extra)
        .start();
    let addr = s.addr;
    let mut runner = proptest_runner(cases);
    let strategy = (
        prop::collection::vec(0..=max_payload, 1..24),
        prop::collection::vec(1usize..=1500, 1..32),
        any::<u64>(),
    );
    let result = runner.run(&strategy, |(sizes, chunk_sizes, seed)| {
        let mut rng = Rng::new(seed);
        let mut stream = Vec::new();
        for &n in &sizes {
            stream.extend_from_slice(&Layout::DEFAULT.frame(&rng.bytes(n)));
        }
        let chunks = split_by_sizes(&stream, &chunk_sizes);
        let mut c = connect(addr);
        let back = exchange(&mut c, chunks, stream.len(), IO_TIMEOUT)
            .map_err(|e| TestCaseError::fail(format!("exchange: {e}")))?;
        prop_assert!(back == stream, "echo differs from the frames sent");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// 1000 frames in one write (and a second batch in one write): echoed in order.
pub fn pipelined_frames(server: &str, backend: Backend, extra: &[&str], max_len: usize) {
    let s = ServerBuilder::new(server)
        .backend(backend)
        .args(extra)
        .start();
    let mut rng = Rng::new(test_seed() ^ 0x9199);
    let mut c = s.connect();
    for round in 0..2 {
        let batch = random_frames(&mut rng, Layout::DEFAULT, 1000, max_len);
        let len = batch.len();
        let back = exchange(&mut c, vec![batch.clone()], len, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_bytes_eq(&back, &batch, &format!("pipelined batch {round}"));
    }
}

/// Frames then `shutdown(Write)`: every frame echoed, then a clean EOF.
pub fn half_close(server: &str, backend: Backend, extra: &[&str], max_len: usize) {
    let s = ServerBuilder::new(server)
        .backend(backend)
        .args(extra)
        .start();
    let mut rng = Rng::new(test_seed() ^ 0x4A1F);
    for round in 0..3 {
        let data = random_frames(&mut rng, Layout::DEFAULT, 50, max_len);
        let mut c = s.connect();
        let mut w = c.try_clone().unwrap();
        let sent = data.clone();
        let writer = thread::spawn(move || {
            w.write_all(&sent)?;
            w.shutdown(Shutdown::Write)
        });
        let back = read_until_eof(&mut c, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: expected all frames then EOF: {e}"));
        writer.join().unwrap().expect("writer");
        assert_bytes_eq(&back, &data, &format!("half-close round {round}"));
    }
}

/// Clients send half a frame (header only, or header + part of the payload) then reset; others
/// are still served.
pub fn reset_mid_frame(server: &str, backend: Backend, extra: &[&str]) {
    let mut s = ServerBuilder::new(server)
        .backend(backend)
        .args(extra)
        .start();
    let mut healthy = s.connect();
    echo_round_trip(&mut healthy, &Layout::DEFAULT.frame(b"before"), "healthy");
    for i in 0..30 {
        let mut c = s.connect();
        let frame = Layout::DEFAULT.frame(&vec![i as u8; 1000]);
        let cut = [2, 4, 5, 500, 1003][i % 5];
        c.write_all(&frame[..cut]).unwrap();
        if i % 4 == 0 {
            // A complete frame first, unread.
            c.write_all(&Layout::DEFAULT.frame(b"complete")).unwrap();
        }
        reset_close(c);
    }
    s.assert_alive("after 30 resets mid-frame");
    echo_round_trip(&mut healthy, &Layout::DEFAULT.frame(b"after"), "healthy");
    let mut fresh = s.connect();
    echo_round_trip(&mut fresh, &Layout::DEFAULT.frame(b"fresh"), "fresh client");
}

/// With `--max-frame 1024`: a frame of exactly 1024 is echoed; a header announcing 1025 closes
/// that connection (EOF or reset, nothing echoed for it) and is logged; a concurrent connection
/// keeps working.
pub fn oversized_frame(server: &str, backend: Backend, extra: &[&str]) {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["--max-frame", "1024"]);
    let mut s = ServerBuilder::new(server)
        .backend(backend)
        .args(&args)
        .start();
    let mut healthy = s.connect();
    echo_round_trip(
        &mut healthy,
        &Layout::DEFAULT.frame(b"hello"),
        "healthy before",
    );

    let mut c = s.connect();
    let max = Layout::DEFAULT.frame(&[7u8; 1024]);
    echo_round_trip(&mut c, &max, "a frame of exactly --max-frame");

    let before = s.stderr_len();
    // Only the header: the server must not wait for 1025 payload bytes before refusing.
    c.write_all(&Layout::DEFAULT.header(1025)).unwrap();
    let (rest, _how) = expect_closed(&mut c, IO_TIMEOUT, "header announcing max-frame + 1");
    assert!(
        rest.is_empty(),
        "nothing may be echoed for an oversized frame, got {} bytes",
        rest.len()
    );
    // The engine's warning for a decode error, with the decoder's own message.
    let logged = s.wait_for_stderr(Duration::from_secs(5), |t| {
        t.get(before..).unwrap_or("").lines().any(|l| {
            l.contains("WARN")
                && l.contains("closing connection: protocol error")
                && l.contains("frame of 1025 bytes exceeds the maximum of 1024 bytes")
        })
    });
    assert!(
        logged,
        "the oversized frame was not logged as a protocol error naming 1025 > 1024 on stderr \
         (new stderr: {:?})",
        &s.stderr_text().get(before..).unwrap_or("")
    );

    echo_round_trip(
        &mut healthy,
        &Layout::DEFAULT.frame(b"still"),
        "healthy after",
    );

    // Oversized in the middle of a pipelined batch: earlier frames may be echoed, the connection
    // is closed, nothing from the oversized frame comes back.
    let mut c = s.connect();
    let mut batch = Layout::DEFAULT.frame(b"one");
    batch.extend_from_slice(&Layout::DEFAULT.frame(b"two"));
    let good = batch.len();
    batch.extend_from_slice(&Layout::DEFAULT.header(u32::MAX as u64));
    batch.extend_from_slice(&[0u8; 100]);
    c.write_all(&batch).unwrap();
    let (rest, _how) = expect_closed(&mut c, IO_TIMEOUT, "u32::MAX length after two frames");
    assert!(
        rest.len() <= good && batch[..rest.len()] == rest[..],
        "after an oversized header only (a prefix of) the earlier frames may come back; got {} bytes",
        rest.len()
    );

    s.assert_alive("after oversized frames");
    echo_round_trip(
        &mut healthy,
        &Layout::DEFAULT.frame(b"end"),
        "healthy at end",
    );
    let mut fresh = s.connect();
    echo_round_trip(&mut fresh, &Layout::DEFAULT.frame(b"fresh"), "fresh client");
}

/// The default `--max-frame`: exactly `default_max` is echoed, `default_max + 1` closes.
pub fn default_max_frame(server: &str, backend: Backend, extra: &[&str], default_max: usize) {
    let s = ServerBuilder::new(server)
        .backend(backend)
        .args(extra)
        .start();
    let mut rng = Rng::new(test_seed());
    let mut c = s.connect();
    let frame = Layout::DEFAULT.frame(&rng.bytes(default_max));
    let back = exchange(
        &mut c,
        vec![frame.clone()],
        frame.len(),
        Duration::from_secs(30),
    )
    .expect("a frame of exactly the default max");
    assert_bytes_eq(&back, &frame, "frame of the default max");
    c.write_all(&Layout::DEFAULT.header(default_max as u64 + 1))
        .unwrap();
    let (rest, _) = expect_closed(&mut c, IO_TIMEOUT, "default max + 1");
    assert!(
        rest.is_empty(),
        "{} bytes echoed for an oversized frame",
        rest.len()
    );
    let mut fresh = s.connect();
    echo_round_trip(&mut fresh, &Layout::DEFAULT.frame(b"fresh"), "fresh client");
}

/// Another layout: random frames (pipelined and fragmented) round-trip; the header bytes are
/// echoed unchanged.
pub fn layout_round_trip(server: &str, backend: Backend, extra: &[&str], layout: Layout) {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(layout.args());
    let s = start(server, backend, &args);
    let mut rng = Rng::new(test_seed() ^ layout.width as u64);
    let max_len = layout.max_payload().min(3000) as usize;

    // Frames of the extreme sizes one by one.
    let mut c = s.connect();
    for len in [0, 1, max_len / 2, max_len] {
        let f = layout.frame(&rng.bytes(len));
        echo_round_trip(&mut c, &f, &format!("{layout:?} frame of {len}"));
    }
    // Pipelined, fragmented.
    let data = random_frames(&mut rng, layout, 300, max_len);
    let chunks = split_random(&data, &mut rng, 777);
    let back = exchange(&mut c, chunks, data.len(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{layout:?} pipelined: {e}"));
    assert_bytes_eq(&back, &data, &format!("{layout:?} pipelined"));
    // Half-close.
    c.write_all(&layout.frame(b"last")).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let back = read_until_eof(&mut c, IO_TIMEOUT).expect("last frame then EOF");
    assert_bytes_eq(&back, &layout.frame(b"last"), "last frame");
}

/// With the length including the header, a field smaller than the header is invalid: that
/// connection is closed, the server lives on.
pub fn layout_length_below_header(server: &str, backend: Backend, extra: &[&str]) {
    let layout = Layout::new(2, true, true);
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(layout.args());
    let mut s = start(server, backend, &args);
    for v in [0u64, 1] {
        let mut c = s.connect();
        echo_round_trip(&mut c, &layout.frame(b"ok"), "valid frame first");
        c.write_all(&layout.header_raw(v)).unwrap();
        c.write_all(b"xyz").unwrap();
        let (rest, _) = expect_closed(
            &mut c,
            IO_TIMEOUT,
            &format!("length field {v} < header width 2 with --length-includes-header"),
        );
        assert!(
            rest.is_empty(),
            "got {} bytes back for an invalid frame",
            rest.len()
        );
    }
    s.assert_alive("after invalid lengths");
    let mut c = s.connect();
    echo_round_trip(&mut c, &layout.frame(b"fresh"), "fresh client");
}

/// An 8-byte length announcing ~2^63 / u64::MAX: closed, no huge allocation, server alive.
pub fn huge_length_width8(server: &str, backend: Backend, extra: &[&str]) {
    let layout = Layout::new(8, false, false);
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(layout.args());
    let mut s = start(server, backend, &args);
    let rss0 = s.rss_kib();
    for v in [u64::MAX, 1 << 63, 1 << 40] {
        let mut c = s.connect();
        c.write_all(&layout.header_raw(v)).unwrap();
        c.write_all(&[1u8; 64]).unwrap();
        let (rest, _) = expect_closed(&mut c, IO_TIMEOUT, &format!("8-byte length {v}"));
        assert!(rest.is_empty());
    }
    s.assert_alive("after huge lengths");
    let grown = s.rss_kib().saturating_sub(rss0);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB after huge announced lengths"
    );
    let mut c = s.connect();
    echo_round_trip(&mut c, &layout.frame(b"fresh"), "fresh client");
}

/// Random binary garbage then half-close. Default layout: almost surely an oversized length →
/// closed. `--length-width 2`: parsed as frames → exactly the complete frames echoed. Either
/// way the process survives and serves a new client.
pub fn garbage(server: &str, backend: Backend, extra: &[&str], default_max: u64) {
    let mut rng = Rng::new(test_seed() ^ 0x6A6B);
    for layout in [Layout::DEFAULT, Layout::new(2, false, false)] {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(layout.args());
        let mut s = start(server, backend, &args);
        for round in 0..10 {
            let len = rng.range(1, 200_000) as usize;
            let data = rng.bytes(len);
            let parsed = layout.parse(&data, default_max);
            let mut c = s.connect();
            let mut w = c.try_clone().unwrap();
            let sent = data.clone();
            let writer = thread::spawn(move || {
                // May fail once the server closes on a bad length.
                let _ = w.write_all(&sent);
                let _ = w.shutdown(Shutdown::Write);
            });
            let (back, how) = expect_closed(
                &mut c,
                Duration::from_secs(20),
                &format!("{layout:?} garbage round {round} ({len} bytes) then half-close"),
            );
            writer.join().unwrap();
            let ctx = format!(
                "{layout:?} garbage round {round}: {len} bytes, {} complete frames ({} bytes), \
                 invalid header after them: {}; got {} bytes back ({how:?})",
                parsed.ends.len() - 1,
                parsed.complete_len(),
                parsed.invalid,
                back.len()
            );
            if parsed.invalid {
                assert!(
                    parsed.ends.contains(&back.len()) && back[..] == data[..back.len()],
                    "{ctx}: expected a frame-aligned prefix of the valid frames"
                );
            } else {
                assert_bytes_eq(&back, &data[..parsed.complete_len()], &ctx);
            }
            s.assert_alive(&ctx);
        }
        let mut c = s.connect();
        echo_round_trip(
            &mut c,
            &layout.frame(b"fresh"),
            "fresh client after garbage",
        );
    }
}

/// 16 concurrent clients, each 200 random frames written in random pieces.
pub fn concurrent_clients(server: &str, backend: Backend, extra: &[&str], max_len: usize) {
    let mut s = ServerBuilder::new(server)
        .backend(backend)
        .args(extra)
        .start();
    let addr = s.addr;
    let seed = test_seed();
    let handles: Vec<_> = (0..16u64)
        .map(|k| {
            thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (k << 32));
                let mut c = connect(addr);
                let data = random_frames(&mut rng, Layout::DEFAULT, 200, max_len);
                let chunks = split_random(&data, &mut rng, 4096);
                let back = exchange(&mut c, chunks, data.len(), Duration::from_secs(60))
                    .unwrap_or_else(|e| panic!("client {k}: {e}"));
                assert_bytes_eq(&back, &data, &format!("client {k}"));
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    s.assert_alive("after concurrent clients");
}
