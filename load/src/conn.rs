//! One client connection's state machine: connect (with bounded retries on
//! refusal), optional greeting, then requests with up to K outstanding, each
//! reply verified as it streams in.
//!
//! All I/O is non-blocking and edge-triggered: reads and writes loop until
//! `WouldBlock`, and the caller gets an event again only after that.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::proto::{message_seed, Feed, Proto, ReplyCursor};
use crate::report::{ErrorKind, ThreadStats};
use crate::tls::{Stream, TlsClient};

/// Connect attempts refused by the server are retried this many times.
pub const MAX_CONNECT_RETRIES: u32 = 5;
/// Back-off before retry `n` (1-based) is `BASE * 2^(n-1)`: 20, 40, 80, 160, 320 ms.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet.
    Idle,
    /// Non-blocking connect in progress.
    Connecting { since: Instant, attempt: u32 },
    /// Waiting to retry a refused connect.
    Backoff { until: Instant, attempt: u32 },
    /// Connected, reading the server's greeting (line mode).
    Greeting,
    /// Connected and able to send requests.
    Ready,
    /// Closed after an error (already counted), or never connected.
    Failed,
}

/// Everything a connection needs from its worker while handling an event.
pub struct Ctx<'a> {
    pub proto: &'a Proto,
    /// `--tls`: what connections speak TLS with.
    pub tls: Option<&'a TlsClient>,
    pub registry: &'a Registry,
    /// Read buffer shared by all of the worker's connections.
    pub read_buf: &'a mut [u8],
    /// Scratch buffer for regenerating expected reply bytes.
    pub scratch: &'a mut Vec<u8>,
    pub stats: &'a mut ThreadStats,
    /// Whether completions are recorded (false during the hold phase).
    pub recording: bool,
}

struct Inflight {
    seed: u64,
    /// Scheduled (open loop) or actual (closed loop) send time.
    start: Instant,
}

pub struct Conn {
    /// Global connection number (seeds its payloads).
    pub id: u64,
    token: Token,
    stream: Option<Stream>,
    pub state: State,
    connect_started: Option<Instant>,
    out: Vec<u8>,
    out_pos: usize,
    inflight: VecDeque<Inflight>,
    greeting: ReplyCursor,
    reply: ReplyCursor,
    /// Requests issued so far.
    pub issued: u64,
    /// Replies verified so far.
    pub completed: u64,
    /// Open loop: scheduled time of the next request.
    pub next_due: Instant,
    /// Open loop: whether an entry for this connection is in the timer heap.
    pub in_heap: bool,
    /// Whether the worker already counted this connection as finished.
    pub finished: bool,
    /// `--reconnect-every`: reconnect once this many messages completed.
    pub batch_end: u64,
    /// Re-established, first reply not yet complete.
    fresh: bool,
}

impl Conn {
    pub fn new(id: u64, token: Token, now: Instant) -> Self {
        Conn {
            id,
            token,
            stream: None,
            state: State::Idle,
            connect_started: None,
            out: Vec::new(),
            out_pos: 0,
            inflight: VecDeque::new(),
            greeting: ReplyCursor::default(),
            reply: ReplyCursor::default(),
            issued: 0,
            completed: 0,
            next_due: now,
            in_heap: false,
            finished: false,
            batch_end: u64::MAX,
            fresh: false,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Greeting | State::Ready)
    }

    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. } | State::Backoff { .. })
    }

    pub fn outstanding(&self) -> usize {
        self.inflight.len()
    }

    /// Starts (or retries) a non-blocking connect.
    pub fn start_connect(&mut self, addr: SocketAddr, attempt: u32, ctx: &mut Ctx<'_>) {
        let now = Instant::now();
        if self.connect_started.is_none() {
            self.connect_started = Some(now);
        }
        let result = TcpStream::connect(addr).and_then(|mut s| {
            ctx.registry
                .register(&mut s, self.token, Interest::READABLE | Interest::WRITABLE)?;
            Stream::new(s, ctx.tls)
        });
        match result {
            Ok(s) => {
                self.stream = Some(s);
                self.state = State::Connecting {
                    since: now,
                    attempt,
                };
            }
            Err(e) => self.connect_failed(e, attempt, ctx),
        }
    }

    /// `--reconnect-every`: closes this connection (nothing outstanding) and
    /// opens a new one; a refusal now fails it at once (no retries).
    pub fn reconnect(&mut self, addr: SocketAddr, ctx: &mut Ctx<'_>) {
        self.stream = None;
        self.state = State::Idle;
        self.out.clear();
        self.out_pos = 0;
        self.greeting = ReplyCursor::default();
        self.reply = ReplyCursor::default();
        self.connect_started = None;
        self.fresh = true;
        self.start_connect(addr, MAX_CONNECT_RETRIES, ctx);
    }

    /// Handles an event while connecting: completes or fails the connect.
    pub fn check_connect(&mut self, ctx: &mut Ctx<'_>) {
        let State::Connecting { attempt, .. } = self.state else {
            return;
        };
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        match stream.sock().take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return self.connect_failed(e, attempt, ctx),
        }
        match stream.sock().peer_addr() {
            Ok(_) => {}
            // Spurious wake-up: still connecting.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            #[cfg(unix)]
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => return,
            Err(e) => return self.connect_failed(e, attempt, ctx),
        }
        let _ = stream.sock().set_nodelay(true);
        if let Some(t0) = self.connect_started {
            ctx.stats.record_connect(t0.elapsed());
        }
        ctx.stats.connected += 1;
        self.state = if ctx.proto.greeting().is_empty() {
            State::Ready
        } else {
            State::Greeting
        };
        // TLS: the ClientHello goes out now.
        if let Some(Err(e)) = self.stream.as_mut().map(|s| s.flush_tls()) {
            return self.io_error(e, "write", ctx);
        }
        // Data (a greeting) may already be waiting, and with edge-triggered
        // notification we may not be told again.
        self.on_readable(false, ctx);
    }

    fn connect_failed(&mut self, e: io::Error, attempt: u32, ctx: &mut Ctx<'_>) {
        self.stream = None;
        if e.kind() == io::ErrorKind::ConnectionRefused && attempt < MAX_CONNECT_RETRIES {
            let backoff = RETRY_BACKOFF_BASE * (1 << attempt);
            self.state = State::Backoff {
                until: Instant::now() + backoff,
                attempt: attempt + 1,
            };
            ctx.stats.connect_retries += 1;
            return;
        }
        self.state = State::Failed;
        ctx.stats.error(
            ErrorKind::ConnectFailed,
            format!(
                "conn {}: connect failed after {} attempt(s): {e}",
                self.id,
                attempt + 1
            ),
        );
    }

    /// Fails a connect that has not completed in time.
    pub fn connect_timed_out(&mut self, ctx: &mut Ctx<'_>) {
        self.stream = None;
        self.state = State::Failed;
        ctx.stats.error(
            ErrorKind::ConnectTimeout,
            format!("conn {}: connect timed out", self.id),
        );
    }

    /// Closes the connection after an error of `kind`.
    fn fail(&mut self, kind: ErrorKind, detail: String, ctx: &mut Ctx<'_>) {
        ctx.stats.error(kind, format!("conn {}: {detail}", self.id));
        self.stream = None;
        self.state = State::Failed;
        self.inflight.clear();
        self.out = Vec::new();
        self.out_pos = 0;
    }

    /// `--reconnect-every`: the batch is complete (nothing outstanding, no partial reply), so
    /// the next step is closing this connection anyway.
    fn batch_done(&self) -> bool {
        self.state == State::Ready
            && self.inflight.is_empty()
            && self.reply.offset == 0
            && self.completed >= self.batch_end
    }

    /// The peer closed or reset the connection: a short reply if it was
    /// mid-reply, a dropped connection otherwise.
    fn peer_closed(&mut self, how: &str, ctx: &mut Ctx<'_>) {
        let mid_greeting = self.state == State::Greeting && self.greeting.offset > 0;
        if self.reply.offset > 0 || mid_greeting {
            let (got, of) = if mid_greeting {
                (self.greeting.offset, ctx.proto.greeting().len())
            } else {
                (self.reply.offset, ctx.proto.reply_len())
            };
            self.fail(
                ErrorKind::ShortReply,
                format!("{how} after {got} of {of} reply bytes"),
                ctx,
            );
        } else {
            let outstanding = self.inflight.len();
            self.fail(
                ErrorKind::Dropped,
                format!("{how} with {outstanding} request(s) outstanding"),
                ctx,
            );
        }
    }

    /// Reads until `WouldBlock`, verifying and completing replies.
    ///
    /// `peer_open`: the readiness event did not report the peer's shutdown
    /// (or an error). Then a short read proves the receive queue empty, and
    /// anything arriving later (including a FIN) raises a new edge, so the
    /// final read that would return `WouldBlock` is skipped.
    pub fn on_readable(&mut self, peer_open: bool, ctx: &mut Ctx<'_>) {
        while self.is_open() {
            let batch_done = self.batch_done();
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            match stream.read(ctx.read_buf) {
                Ok(0) if batch_done => {
                    // `--reconnect-every`: every reply of the batch is in and this side was
                    // about to close; the server closing first (a graceful restart draining
                    // idle connections) loses nothing, so reconnect as planned.
                    self.stream = None;
                    return;
                }
                Ok(0) => return self.peer_closed("connection closed by peer", ctx),
                Ok(n) => {
                    let now = Instant::now();
                    if ctx.recording {
                        ctx.stats.add_received(n as u64, now);
                    }
                    // Move the buffer out so `consume` can borrow ctx mutably.
                    let buf = std::mem::take(&mut ctx.read_buf);
                    // Not on Windows: mio re-arms readiness there only after a
                    // `WouldBlock`, so every read goes on until one. With TLS a short read
                    // proves nothing: more records may wait.
                    let drained =
                        peer_open && n < buf.len() && cfg!(not(windows)) && !stream.is_tls();
                    self.consume(&buf[..n], now, ctx);
                    ctx.read_buf = buf;
                    if drained {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.io_error(e, "read", ctx),
            }
        }
    }

    fn io_error(&mut self, e: io::Error, op: &str, ctx: &mut Ctx<'_>) {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => self.peer_closed(&format!("{op}: {e}"), ctx),
            _ => self.fail(ErrorKind::Io, format!("{op}: {e}"), ctx),
        }
    }

    /// Verifies received bytes against the greeting and the outstanding
    /// requests' replies, in order.
    fn consume(&mut self, mut data: &[u8], now: Instant, ctx: &mut Ctx<'_>) {
        let proto = ctx.proto;
        while !data.is_empty() {
            if self.state == State::Greeting {
                let greeting = proto.greeting();
                let want = &greeting[self.greeting.offset..];
                let n = want.len().min(data.len());
                if data[..n] != want[..n] {
                    return self.fail(
                        ErrorKind::Mismatch,
                        format!(
                            "bad greeting: got {:?}, expected {:?}",
                            String::from_utf8_lossy(&data[..n]),
                            String::from_utf8_lossy(&want[..n])
                        ),
                        ctx,
                    );
                }
                self.greeting.offset += n;
                data = &data[n..];
                if self.greeting.offset == greeting.len() {
                    self.state = State::Ready;
                }
                continue;
            }
            let Some(front) = self.inflight.front() else {
                return self.fail(
                    ErrorKind::UnexpectedData,
                    format!(
                        "{} byte(s) received with no request outstanding",
                        data.len()
                    ),
                    ctx,
                );
            };
            match self.reply.feed(proto, front.seed, data, ctx.scratch) {
                Feed::Partial { used } => data = &data[used..],
                Feed::Complete { used } => {
                    data = &data[used..];
                    let m = self.inflight.pop_front().expect("front exists");
                    self.completed += 1;
                    if std::mem::take(&mut self.fresh) && ctx.recording {
                        ctx.stats.handshake(now);
                    }
                    if ctx.recording {
                        ctx.stats.complete(m.start, now);
                    }
                }
                Feed::Mismatch(detail) => {
                    return self.fail(
                        ErrorKind::Mismatch,
                        format!("message {}: {detail}", self.completed),
                        ctx,
                    )
                }
            }
        }
    }

    /// Queues the next request; `start` is its latency origin.
    pub fn issue(&mut self, start: Instant, proto: &Proto) {
        let seed = message_seed(self.id, self.issued);
        self.issued += 1;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        proto.write_request(seed, &mut self.out);
        self.inflight.push_back(Inflight { seed, start });
    }

    /// Writes queued requests until done or `WouldBlock`.
    pub fn flush(&mut self, ctx: &mut Ctx<'_>) {
        while self.is_open() && self.out_pos < self.out.len() {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            match stream.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    return self.fail(ErrorKind::Io, "write returned 0".into(), ctx);
                }
                Ok(n) => {
                    self.out_pos += n;
                    if ctx.recording {
                        ctx.stats.add_sent(n as u64, Instant::now());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.io_error(e, "write", ctx),
            }
        }
        // TLS bytes a full socket refused earlier.
        if let Some(Err(e)) = self.stream.as_mut().map(|s| s.flush_tls()) {
            return self.io_error(e, "write", ctx);
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Closes the socket (end of run).
    pub fn close(&mut self) {
        self.stream = None;
    }
}
