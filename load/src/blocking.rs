//! The blocking client (`--client blocking`): one thread per connection, a
//! blocking socket, one message in flight, in the style of the community's
//! echo benchmarks (rust_echo_bench and its descendants). Each message is
//! written whole, then its reply is read and verified before the next one
//! leaves, so the server sees completions arrive one at a time per
//! connection, with a thread wake-up on the client side between them.
//!
//! Statistics go to a few shards (one mutex each) rather than one histogram
//! per thread, so thousands of connections stay cheap: each thread keeps
//! its samples locally and hands them to its shard in batches.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crate::conn::MAX_CONNECT_RETRIES;
use crate::proto::{message_seed, Feed, Proto, ReplyCursor};
use crate::report::{ErrorKind, ThreadStats, WorkerResult};
use crate::worker::{Config, Limit, Shared};

/// Statistics shards (at most this many, one per connection below that).
const MAX_SHARDS: usize = 16;
/// Samples a thread keeps before handing them to its shard.
const BATCH: usize = 256;
/// Stack of each connection thread (buffers live on the heap).
const STACK: usize = 256 * 1024;
/// With `-d`: how long a reply may take before the connection counts a
/// `timeout` error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off before connect retry `n` (1-based) is `BASE * 2^(n-1)`.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(20);

/// How many statistics shards (and progress counters) `conns` connections use.
pub fn shard_count(conns: u64) -> usize {
    (conns as usize).clamp(1, MAX_SHARDS)
}

struct Shard {
    stats: ThreadStats,
    /// Longest measurement window of the shard's connections.
    measured: Duration,
    open_at_end: u64,
}

/// A counting gate: at most `limit` connects in flight at once, so a big
/// connect storm does not overflow the server's accept backlog.
struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Gate {
    fn enter(&self) {
        let mut free = self.free.lock().expect("gate lock");
        while *free == 0 {
            free = self.cv.wait(free).expect("gate lock");
        }
        *free -= 1;
    }

    fn leave(&self) {
        *self.free.lock().expect("gate lock") += 1;
        self.cv.notify_one();
    }
}

/// The connection threads' shared state.
pub struct Pool {
    shards: Vec<Mutex<Shard>>,
    gate: Gate,
    /// The load phase's start, the same for every thread (set by the first
    /// thread past the barrier).
    start: OnceLock<Instant>,
}

/// One message's outcome, kept locally until the next batch hand-over.
struct Sample {
    start: Instant,
    end: Instant,
}

impl Pool {
    pub fn new(cfg: &Config) -> Pool {
        let now = Instant::now();
        Pool {
            shards: (0..shard_count(cfg.total_conns))
                .map(|_| {
                    Mutex::new(Shard {
                        stats: ThreadStats::new(now),
                        measured: Duration::ZERO,
                        open_at_end: 0,
                    })
                })
                .collect(),
            gate: Gate {
                free: Mutex::new(cfg.connect_batch.max(1)),
                cv: Condvar::new(),
            },
            start: OnceLock::new(),
        }
    }

    /// Starts one thread per connection. Each meets the others at
    /// `shared.connected` once its connect resolved, runs the load, bumps
    /// `shared.done`, then keeps its connection until `shared.stop`.
    pub fn spawn<'scope, 'env>(
        &'env self,
        s: &'scope Scope<'scope, 'env>,
        cfg: &'env Config,
        shared: &'env Shared,
    ) -> io::Result<Vec<ScopedJoinHandle<'scope, ()>>> {
        (0..cfg.total_conns)
            .map(|id| {
                std::thread::Builder::new()
                    .name(format!("conn-{id}"))
                    .stack_size(STACK)
                    .spawn_scoped(s, move || self.conn_thread(id, cfg, shared))
            })
            .collect()
    }

    /// The per-shard results, once every thread has finished.
    pub fn into_results(self) -> Vec<WorkerResult> {
        self.shards
            .into_iter()
            .map(|m| {
                let shard = m.into_inner().expect("shard lock");
                WorkerResult {
                    stats: shard.stats,
                    measured: shard.measured,
                    open_at_end: shard.open_at_end,
                }
            })
            .collect()
    }

    fn shard(&self, id: u64) -> &Mutex<Shard> {
        &self.shards[id as usize % self.shards.len()]
    }

    fn error(&self, id: u64, kind: ErrorKind, detail: String) {
        let mut shard = self.shard(id).lock().expect("shard lock");
        shard.stats.error(kind, format!("conn {id}: {detail}"));
    }

    fn conn_thread(&self, id: u64, cfg: &Config, shared: &Shared) {
        let mut stream = self.connect(id, cfg);
        shared.connected.wait();
        let t0 = *self.start.get_or_init(Instant::now);
        let mut run = Run::new(id, cfg, t0);
        if let Some(s) = stream.as_mut() {
            if let Err((kind, detail)) = run.messages(s, cfg, shared, self) {
                self.error(id, kind, detail);
                stream = None;
            }
        }
        self.hand_over(id, &mut run);
        {
            let mut shard = self.shard(id).lock().expect("shard lock");
            shard.measured = shard.measured.max(run.measured());
        }
        shared.done.fetch_add(1, Ordering::Release);
        while !shared.stop.load(Ordering::Acquire) {
            std::thread::park_timeout(Duration::from_millis(50));
        }
        if stream.is_some() {
            self.shard(id).lock().expect("shard lock").open_at_end += 1;
        }
    }

    /// Connects (retrying refusals with back-off), records the outcome.
    fn connect(&self, id: u64, cfg: &Config) -> Option<TcpStream> {
        let t0 = Instant::now();
        self.gate.enter();
        let mut attempt = 0;
        let mut retries = 0;
        let result = loop {
            match TcpStream::connect_timeout(&cfg.addr, cfg.connect_timeout) {
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && attempt < MAX_CONNECT_RETRIES =>
                {
                    std::thread::sleep(RETRY_BACKOFF_BASE * (1 << attempt));
                    attempt += 1;
                    retries += 1;
                }
                other => break other,
            }
        };
        self.gate.leave();
        let mut shard = self.shard(id).lock().expect("shard lock");
        shard.stats.connect_retries += retries;
        match result {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                shard.stats.record_connect(t0.elapsed());
                shard.stats.connected += 1;
                Some(s)
            }
            Err(e) => {
                let kind = if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) {
                    ErrorKind::ConnectTimeout
                } else {
                    ErrorKind::ConnectFailed
                };
                let detail = format!(
                    "conn {id}: connect failed after {} attempt(s): {e}",
                    attempt + 1
                );
                shard.stats.error(kind, detail);
                None
            }
        }
    }

    /// Hands the thread's buffered samples to its shard.
    fn hand_over(&self, id: u64, run: &mut Run) {
        if run.samples.is_empty() {
            return;
        }
        let (req, rep) = (run.request_len, run.reply_len);
        let mut shard = self.shard(id).lock().expect("shard lock");
        let stats = &mut shard.stats;
        stats.window_start = run.warm_end;
        stats.window_end = run.end;
        for s in run.samples.drain(..) {
            stats.add_sent(req, s.start);
            stats.add_received(rep, s.end);
            stats.complete(s.start, s.end);
        }
    }
}

/// One connection's load phase.
struct Run {
    id: u64,
    warm_end: Instant,
    /// `-d`: end of the window; `-n`: none.
    end: Option<Instant>,
    per_conn: u64,
    /// `-n`: give up at this time.
    deadline: Option<Instant>,
    samples: Vec<Sample>,
    /// Replies verified (all, in the window or not).
    completed: u64,
    last_completion: Option<Instant>,
    request_len: u64,
    reply_len: u64,
}

/// An error that ends the connection: its kind and a description.
type Failure = (ErrorKind, String);

impl Run {
    fn new(id: u64, cfg: &Config, t0: Instant) -> Run {
        let warm_end = t0 + cfg.warmup;
        let (end, per_conn, deadline) = match cfg.limit {
            Limit::Duration(d) => (Some(warm_end + d), u64::MAX, None),
            Limit::Messages { per_conn, timeout } => (None, per_conn, Some(t0 + timeout)),
        };
        Run {
            id,
            warm_end,
            end,
            per_conn,
            deadline,
            samples: Vec::with_capacity(BATCH),
            completed: 0,
            last_completion: None,
            request_len: cfg.proto.request_len() as u64,
            reply_len: cfg.proto.reply_len() as u64,
        }
    }

    /// Length of this connection's measurement window.
    fn measured(&self) -> Duration {
        match self.end {
            Some(end) => end.saturating_duration_since(self.warm_end),
            None => self
                .last_completion
                .map(|t| t.saturating_duration_since(self.warm_end))
                .unwrap_or_default(),
        }
    }

    /// Sends messages one at a time until the limit.
    fn messages(
        &mut self,
        s: &mut TcpStream,
        cfg: &Config,
        shared: &Shared,
        pool: &Pool,
    ) -> Result<(), Failure> {
        let proto = &cfg.proto;
        let mut out = Vec::with_capacity(proto.request_len());
        let mut buf = vec![0u8; proto.reply_len().clamp(proto.greeting().len(), 64 * 1024)];
        let mut scratch = Vec::new();
        let progress = &shared.progress[self.id as usize % shared.progress.len()].0;
        if !proto.greeting().is_empty() {
            self.greeting(s, proto, &mut buf)?;
        }
        loop {
            let now = Instant::now();
            if self.end.is_some_and(|e| now >= e) || self.completed >= self.per_conn {
                return Ok(());
            }
            if self.deadline.is_some_and(|d| now >= d) {
                return Err(self.timed_out());
            }
            let seed = message_seed(self.id, self.completed);
            out.clear();
            proto.write_request(seed, &mut out);
            let start = Instant::now();
            s.write_all(&out)
                .map_err(|e| classify(e, "write", 0, proto))?;
            let mut cursor = ReplyCursor::default();
            loop {
                self.set_timeout(s)?;
                let want = (proto.reply_len() - cursor.offset).min(buf.len());
                let n = match s.read(&mut buf[..want]) {
                    Ok(0) => return Err(closed("connection closed by peer", cursor.offset, proto)),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if is_timeout(&e) => {
                        if self.end.is_some_and(|end| Instant::now() >= end) {
                            return Ok(()); // the window closed while waiting
                        }
                        return Err(self.timed_out());
                    }
                    Err(e) => return Err(classify(e, "read", cursor.offset, proto)),
                };
                match cursor.feed(proto, seed, &buf[..n], &mut scratch) {
                    Feed::Partial { .. } => {}
                    Feed::Complete { .. } => break,
                    Feed::Mismatch(detail) => {
                        return Err((
                            ErrorKind::Mismatch,
                            format!("message {}: {detail}", self.completed),
                        ))
                    }
                }
            }
            let end = Instant::now();
            self.completed += 1;
            self.last_completion = Some(end);
            self.samples.push(Sample { start, end });
            if self.samples.len() == BATCH {
                pool.hand_over(self.id, self);
                progress.fetch_add(BATCH as u64, Ordering::Relaxed);
            }
        }
    }

    fn greeting(&self, s: &mut TcpStream, proto: &Proto, buf: &mut [u8]) -> Result<(), Failure> {
        let want = proto.greeting();
        let mut got = 0;
        while got < want.len() {
            self.set_timeout(s)?;
            let n = match s.read(&mut buf[..want.len() - got]) {
                Ok(0) => return Err(closed("closed during the greeting", got, proto)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    return Err((ErrorKind::Timeout, "no greeting in time".into()))
                }
                Err(e) => return Err(classify(e, "read", got, proto)),
            };
            if buf[..n] != want[got..got + n] {
                return Err((
                    ErrorKind::Mismatch,
                    format!(
                        "bad greeting: got {:?}, expected {:?}",
                        String::from_utf8_lossy(&buf[..n]),
                        String::from_utf8_lossy(&want[got..got + n])
                    ),
                ));
            }
            got += n;
        }
        Ok(())
    }

    /// Bounds the next read: by the `-n` deadline, or by [`REPLY_TIMEOUT`].
    fn set_timeout(&self, s: &TcpStream) -> Result<(), Failure> {
        let limit = match self.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => REPLY_TIMEOUT,
        };
        if limit.is_zero() {
            return Err(self.timed_out());
        }
        s.set_read_timeout(Some(limit))
            .map_err(|e| (ErrorKind::Io, format!("set_read_timeout: {e}")))
    }

    fn timed_out(&self) -> Failure {
        let of = if self.per_conn == u64::MAX {
            String::new()
        } else {
            format!(" of {}", self.per_conn)
        };
        (
            ErrorKind::Timeout,
            format!(
                "{}{of} messages done at the time limit (1 outstanding)",
                self.completed
            ),
        )
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The peer closed: a short reply if it was mid-reply, a drop otherwise.
fn closed(how: &str, offset: usize, proto: &Proto) -> Failure {
    if offset > 0 {
        (
            ErrorKind::ShortReply,
            format!("{how} after {offset} of {} reply bytes", proto.reply_len()),
        )
    } else {
        (
            ErrorKind::Dropped,
            format!("{how} with 1 request outstanding"),
        )
    }
}

fn classify(e: io::Error, op: &str, offset: usize, proto: &Proto) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => closed(&format!("{op}: {e}"), offset, proto),
        _ => (ErrorKind::Io, format!("{op}: {e}")),
    }
}
