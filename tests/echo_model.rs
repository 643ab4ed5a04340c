#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! A stateful randomised test of the echo servers against a model of the echo.
//!
//! Each round runs a few concurrent clients, each with a random script of steps: fragmented
//! sends (one message or frame split over many writes), pipelined frames (many in one write),
//! paused reading (the client stops reading for a while and keeps sending), waiting for the
//! echo, and an ending: a half-close, a reset, or a plain close once everything came back. One
//! event loop (mio, non-blocking sockets, readiness only) drives all clients of a round.
//!
//! The model: what comes back on a connection is exactly the bytes sent on it (for
//! `packet_echo_server` the scripts send whole, valid frames, so the echo is the same bytes).
//! Every read is checked against it byte for byte: what has come back is always a prefix of
//! what was sent; after a half-close all of it comes back, then EOF; after a reset only a
//! prefix is required. At the end the server must have counted no close that loses data
//! (`flush-stalled`, `drain-timeout`, `handler-panic`, `io-error`, `protocol`).
//!
//! The seed is fresh each run and printed; `RINGPORT_TEST_SEED=<seed>` replays the same scripts
//! (timings differ). Each test is bounded to about 8 s of rounds per backend.

#[macro_use]
mod common;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use common::close::stop_and_stats;
use common::deploy::{metrics_addr, wait_closes_counted};
use common::packet::Layout;
use common::*;

backend_tests!("echo_server"; echo_server_matches_the_model);
backend_tests!("packet_echo_server"; packet_echo_server_matches_the_model);

fn echo_server_matches_the_model(b: Backend) {
    run_model("echo_server", Proto::Raw, b);
}

fn packet_echo_server_matches_the_model(b: Backend) {
    run_model("packet_echo_server", Proto::Frames, b);
}

/// Time spent starting new rounds; a round in progress finishes (bounded by `ROUND_LIMIT`).
const BUDGET: Duration = Duration::from_secs(8);
const ROUND_LIMIT: Duration = Duration::from_secs(30);
const CLIENTS_PER_ROUND: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// Any bytes (echo_server).
    Raw,
    /// Length-prefixed frames, 4-byte big-endian length (packet_echo_server's default).
    Frames,
}

#[derive(Debug, Clone)]
enum Step {
    /// Bytes to send, each fragment in a write of its own.
    Send(Vec<Vec<u8>>),
    /// Stop reading for this long; sending goes on.
    PauseReading(Duration),
    /// Wait until everything sent so far has come back.
    AwaitEcho,
    /// `shutdown(Write)` once everything is written: all of it must come back, then EOF.
    HalfClose,
    /// SO_LINGER 0 and close: only a prefix needs to have come back.
    Reset,
    /// Close normally (only after `AwaitEcho`: nothing is in flight).
    Close,
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::Send(f) => format!(
                "Send({} bytes in {} writes)",
                f.iter().map(Vec::len).sum::<usize>(),
                f.len()
            ),
            other => format!("{other:?}"),
        }
    }
}

/// A random script for one connection.
fn script(rng: &mut Rng, proto: Proto) -> VecDeque<Step> {
    let mut steps = VecDeque::new();
    for _ in 0..rng.range(1, 7) {
        let step = match rng.below(10) {
            0..=5 => Step::Send(match proto {
                Proto::Raw => raw_send(rng),
                Proto::Frames => frames_send(rng),
            }),
            6 | 7 => Step::PauseReading(Duration::from_millis(rng.range(20, 800))),
            _ => Step::AwaitEcho,
        };
        steps.push_back(step);
    }
    match rng.below(10) {
        0..=4 => steps.push_back(Step::HalfClose),
        5..=7 => steps.push_back(Step::Reset),
        _ => {
            steps.push_back(Step::AwaitEcho);
            steps.push_back(Step::Close);
        }
    }
    steps
}

/// A size drawn from a mix: mostly small, sometimes up to `max`.
fn mixed_size(rng: &mut Rng, max: u64) -> usize {
    match rng.below(8) {
        0..=3 => rng.range(1, 200) as usize,
        4..=6 => rng.range(200, 8000) as usize,
        _ => rng.range(8000, max) as usize,
    }
}

/// Split into at most ~200 writes, sometimes of a single byte each.
fn fragments(rng: &mut Rng, data: &[u8]) -> Vec<Vec<u8>> {
    let min_chunk = data.len().div_ceil(200).max(1);
    let max_chunk = match rng.below(4) {
        0 => min_chunk,
        1 => min_chunk.max(64),
        2 => min_chunk.max(4096),
        _ => data.len().max(1),
    };
    split_random(data, rng, max_chunk)
}

fn raw_send(rng: &mut Rng) -> Vec<Vec<u8>> {
    // Now and then more than the kernel's buffers hold (~4 MB a side): the server's own queue
    // fills and, while the client pauses, passes its high watermark.
    let n = if rng.below(16) == 0 {
        rng.range(3 << 20, 6 << 20) as usize
    } else {
        mixed_size(rng, 300_000)
    };
    let data = rng.bytes(n);
    fragments(rng, &data)
}

fn frames_send(rng: &mut Rng) -> Vec<Vec<u8>> {
    if rng.below(16) == 0 {
        // A flood of large frames (as in `raw_send`).
        let mut batch = Vec::new();
        for _ in 0..rng.range(3, 6) {
            let len = rng.range(512 << 10, 1 << 20) as usize;
            batch.extend_from_slice(&Layout::DEFAULT.frame(&rng.bytes(len)));
        }
        fragments(rng, &batch)
    } else if rng.below(2) == 0 {
        // One frame, fragmented (its header split too, when the pieces are small).
        let len = mixed_size(rng, 100_000);
        let payload = rng.bytes(len);
        fragments(rng, &Layout::DEFAULT.frame(&payload))
    } else {
        // Pipelined: many frames in one write (or a few).
        let mut batch = Vec::new();
        for _ in 0..rng.range(2, 60) {
            let len = if rng.below(10) == 0 {
                0
            } else {
                mixed_size(rng, 20_000)
            };
            batch.extend_from_slice(&Layout::DEFAULT.frame(&rng.bytes(len)));
        }
        if rng.below(3) == 0 {
            fragments(rng, &batch)
        } else {
            vec![batch]
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Running,
    HalfClosed,
    Done,
}

struct Client {
    id: usize,
    stream: Option<TcpStream>,
    steps: VecDeque<Step>,
    log: String,
    /// Fragments not yet fully written (the front one from `front_off`).
    pending: VecDeque<Vec<u8>>,
    front_off: usize,
    /// Everything handed to `pending`: the model's expected echo.
    sent: Vec<u8>,
    got: Vec<u8>,
    paused_until: Option<Instant>,
    ending: Ending,
    how: &'static str,
}

impl Client {
    fn fail(&self, seed: u64, what: impl std::fmt::Display) -> ! {
        panic!(
            "seed {seed} (RINGPORT_TEST_SEED={seed} replays it), client {}: {what}\n\
             sent {} bytes ({} still unwritten), got {} back\nsteps: {}",
            self.id,
            self.sent.len(),
            self.pending.iter().map(Vec::len).sum::<usize>() - self.front_off,
            self.got.len(),
            self.log
        );
    }

    /// Runs the script as far as it can go now; writes and reads until they would block.
    fn progress(&mut self, seed: u64, now: Instant) {
        if self.ending == Ending::Done {
            return;
        }
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        loop {
            self.write(seed);
            if self.paused_until.is_none() {
                self.read(seed);
            }
            if self.ending != Ending::Running {
                return;
            }
            let Some(step) = self.steps.front() else {
                return;
            };
            let unwritten = !self.pending.is_empty();
            let done = match step {
                Step::Send(frags) => {
                    for f in frags {
                        self.sent.extend_from_slice(f);
                    }
                    self.pending.extend(frags.iter().cloned());
                    true
                }
                Step::PauseReading(d) => {
                    self.paused_until = Some(now + *d);
                    true
                }
                Step::AwaitEcho => !unwritten && self.got.len() == self.sent.len(),
                Step::HalfClose if unwritten => false,
                Step::HalfClose => {
                    let s = self.stream.as_ref().expect("open");
                    if let Err(e) = s.shutdown(Shutdown::Write) {
                        self.fail(seed, format!("shutdown(Write): {e}"));
                    }
                    self.ending = Ending::HalfClosed;
                    self.paused_until = None; // read everything back now
                    true
                }
                Step::Reset => {
                    let s = self.stream.take().expect("open");
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .expect("SO_LINGER 0");
                    drop(s);
                    self.ending = Ending::Done;
                    self.how = "reset";
                    true
                }
                Step::Close => {
                    self.stream = None;
                    self.ending = Ending::Done;
                    self.how = "closed";
                    true
                }
            };
            if !done {
                return;
            }
            let step = self.steps.pop_front().expect("front");
            let _ = write!(self.log, "{} ", step.describe());
        }
    }

    fn write(&mut self, seed: u64) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        while let Some(front) = self.pending.front() {
            match s.write(&front[self.front_off..]) {
                Ok(n) => {
                    self.front_off += n;
                    if self.front_off == front.len() {
                        self.pending.pop_front();
                        self.front_off = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.fail(seed, format!("write: {e}")),
            }
        }
    }

    fn read(&mut self, seed: u64) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let Some(s) = self.stream.as_mut() else {
                return;
            };
            match s.read(&mut buf) {
                Ok(0) => {
                    if self.ending != Ending::HalfClosed {
                        self.fail(seed, "EOF from the server before the client half-closed");
                    }
                    if self.got != self.sent {
                        self.fail(
                            seed,
                            format!(
                                "EOF after a half-close with {} of {} bytes back",
                                self.got.len(),
                                self.sent.len()
                            ),
                        );
                    }
                    self.stream = None;
                    self.ending = Ending::Done;
                    self.how = "half-closed";
                    return;
                }
                Ok(n) => {
                    let at = self.got.len();
                    self.got.extend_from_slice(&buf[..n]);
                    let want = self.sent.get(at..self.got.len());
                    if want != Some(&buf[..n]) {
                        let first = (0..n)
                            .find(|&i| self.sent.get(at + i) != Some(&buf[i]))
                            .unwrap_or(0);
                        self.fail(
                            seed,
                            format!(
                                "the echo differs from what was sent at offset {}",
                                at + first
                            ),
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.fail(seed, format!("read: {e} (the server reset or failed)")),
            }
        }
    }
}

#[derive(Default, Debug)]
struct Totals {
    connections: u64,
    half_closed: u64,
    reset: u64,
    closed: u64,
    bytes_echoed: u64,
}

/// One round: `CLIENTS_PER_ROUND` clients with fresh scripts, driven until every one is done.
fn round(addr: std::net::SocketAddr, proto: Proto, rng: &mut Rng, seed: u64, totals: &mut Totals) {
    let mut poll = Poll::new().expect("poll");
    let mut clients = Vec::new();
    for id in 0..CLIENTS_PER_ROUND {
        let std_stream = connect(addr);
        std_stream.set_nonblocking(true).unwrap();
        let mut stream = TcpStream::from_std(std_stream);
        poll.registry()
            .register(
                &mut stream,
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        clients.push(Client {
            id: totals.connections as usize + id,
            stream: Some(stream),
            steps: script(rng, proto),
            log: String::new(),
            pending: VecDeque::new(),
            front_off: 0,
            sent: Vec::new(),
            got: Vec::new(),
            paused_until: None,
            ending: Ending::Running,
            how: "",
        });
    }
    let start = Instant::now();
    let mut events = Events::with_capacity(64);
    loop {
        let now = Instant::now();
        for c in &mut clients {
            c.progress(seed, now);
        }
        if clients.iter().all(|c| c.ending == Ending::Done) {
            break;
        }
        if now.duration_since(start) > ROUND_LIMIT {
            let stuck = clients
                .iter()
                .find(|c| c.ending != Ending::Done)
                .expect("one");
            stuck.fail(seed, format!("not done within {ROUND_LIMIT:?}"));
        }
        // Wake on readiness, or when the next pause ends (bounded, to re-check the limit).
        let mut timeout = Duration::from_millis(200);
        for c in &clients {
            if let Some(t) = c.paused_until {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
        }
        poll.poll(&mut events, Some(timeout)).expect("poll");
    }
    for c in &clients {
        totals.connections += 1;
        totals.bytes_echoed += c.got.len() as u64;
        match c.how {
            "half-closed" => totals.half_closed += 1,
            "reset" => totals.reset += 1,
            _ => totals.closed += 1,
        }
    }
}

fn run_model(server: &str, proto: Proto, b: Backend) {
    let mut s = Server::start(server, b, &["--metrics", "127.0.0.1:0"]);
    let seed = test_seed();
    let mut rng = Rng::new(seed);
    let mut totals = Totals::default();
    let start = Instant::now();
    while start.elapsed() < BUDGET {
        round(s.addr, proto, &mut rng, seed, &mut totals);
    }
    s.assert_alive("after the model rounds");
    println!("{server} {b}: {totals:?} in {:?}", start.elapsed());
    // The last clients close just before SIGTERM: a FIN the server had not read yet would be
    // overtaken by the shutdown and counted `shutdown`, not `peer-closed`.
    let server = format!("server=\"{}\"", s.addr);
    let maddr = metrics_addr(&s.stdout_text());
    wait_closes_counted(maddr, &server, totals.connections, Duration::from_secs(15));
    let stats = stop_and_stats(&mut s, Duration::from_secs(15));
    println!(
        "{server} {b}: backpressure pauses {}, closes {:?}",
        stats.get("backpressure_pauses"),
        stats.closed
    );
    for reason in [
        "flush-stalled",
        "drain-timeout",
        "handler-panic",
        "protocol",
    ] {
        assert_eq!(
            stats.closed(reason),
            0,
            "seed {seed}: a connection closed as {reason}: {stats:?}"
        );
    }
    assert_eq!(
        stats.closed_total(),
        totals.connections,
        "seed {seed}: every connection is counted once: {stats:?}"
    );
    assert!(
        stats.closed("peer-closed") >= totals.half_closed + totals.closed,
        "seed {seed}: {totals:?} vs {stats:?}"
    );
    // A client that resets right after connecting can be gone before the server asks for its
    // address (ENOTCONN): that one is counted `io-error`. Nothing else may be.
    assert!(
        stats.closed("io-error") <= totals.reset,
        "seed {seed}: io-error closes beyond the clients' resets: {totals:?} vs {stats:?}"
    );
}
