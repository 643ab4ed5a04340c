//! A worker thread: one mio `Poll` driving a share of the connections
//! through the connect phase, the load phase and the hold phase.
//!
//! Workers share nothing on the hot path: each has its own statistics and
//! only publishes a progress counter (one relaxed atomic store per loop
//! iteration) and reads the stop flag.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::conn::{Conn, Ctx, State};
use crate::proto::Proto;
use crate::report::{ErrorKind, ThreadStats, WorkerResult};

/// Per-worker read buffer.
const READ_BUF: usize = 64 * 1024;
/// Upper bound on a poll wait, so stop flags and deadlines are noticed.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// How long the load phase runs.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// For this long after the warm-up.
    Duration(Duration),
    /// Until each connection has completed this many messages (or `timeout`).
    Messages { per_conn: u64, timeout: Duration },
}

/// Run parameters shared by all workers.
pub struct Config {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub total_conns: u64,
    pub pipeline: usize,
    /// Open loop: messages/s over all connections.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub limit: Limit,
    pub connect_timeout: Duration,
    /// Connects each worker has in flight at once.
    pub connect_batch: usize,
    /// `--reconnect-every N`: a new connection after every N messages.
    pub reconnect_every: Option<u64>,
    /// `--tls`: connections speak TLS.
    pub tls: Option<crate::tls::TlsClient>,
}

/// Cache-line padded counter, one per worker.
#[repr(align(128))]
#[derive(Default)]
pub struct Padded(pub AtomicU64);

/// Coordination between the main thread and the workers.
pub struct Shared {
    /// Workers and main meet here once every connect has resolved.
    pub connected: Barrier,
    /// Workers that finished their load phase.
    pub done: AtomicUsize,
    /// Set by main when the run (including any hold) is over.
    pub stop: AtomicBool,
    /// Messages completed per worker (for the progress line).
    pub progress: Vec<Padded>,
}

pub struct Worker<'a> {
    index: usize,
    cfg: &'a Config,
    shared: &'a Shared,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    /// Connections touched by the last poll's events.
    touched: Vec<usize>,
    read_buf: Vec<u8>,
    scratch: Vec<u8>,
    stats: ThreadStats,
    recording: bool,
}

/// Borrows the worker's parts as a connection context.
macro_rules! ctx {
    ($w:expr) => {
        Ctx {
            proto: &$w.cfg.proto,
            tls: $w.cfg.tls.as_ref(),
            registry: $w.poll.registry(),
            read_buf: &mut $w.read_buf,
            scratch: &mut $w.scratch,
            stats: &mut $w.stats,
            recording: $w.recording,
        }
    };
}

impl<'a> Worker<'a> {
    pub fn new(
        index: usize,
        cfg: &'a Config,
        shared: &'a Shared,
        conn_ids: Vec<u64>,
    ) -> std::io::Result<Self> {
        let now = Instant::now();
        let conns = conn_ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| Conn::new(id, Token(i), now))
            .collect();
        Ok(Worker {
            index,
            cfg,
            shared,
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns,
            touched: Vec::new(),
            read_buf: vec![0; READ_BUF],
            scratch: Vec::new(),
            stats: ThreadStats::new(now),
            recording: false,
        })
    }

    pub fn run(mut self) -> WorkerResult {
        self.connect_phase();
        self.shared.connected.wait();
        let measured = self.load_phase();
        self.shared.done.fetch_add(1, Ordering::Release);
        self.hold_phase();
        let open_at_end = self.conns.iter().filter(|c| c.is_open()).count() as u64;
        for c in &mut self.conns {
            c.close();
        }
        WorkerResult {
            stats: self.stats,
            measured,
            open_at_end,
        }
    }

    fn poll(&mut self, timeout: Duration) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                panic!("poll failed: {e}");
            }
            self.events.clear();
        }
    }

    /// Dispatches the events of the last poll to their connections and
    /// remembers which connections they touched (in `self.touched`).
    fn dispatch(&mut self) {
        self.touched.clear();
        for ev in self.events.iter() {
            let i = ev.token().0;
            let mut ctx = ctx!(self);
            let conn = &mut self.conns[i];
            if conn.is_connecting() {
                conn.check_connect(&mut ctx);
            } else {
                let peer_gone = ev.is_read_closed() || ev.is_error();
                if ev.is_readable() || peer_gone {
                    conn.on_readable(!peer_gone, &mut ctx);
                }
                if ev.is_writable() || ev.is_write_closed() {
                    conn.flush(&mut ctx);
                }
            }
            self.touched.push(i);
        }
    }

    /// Connects every connection, `connect_batch` at a time, so a big
    /// connect storm does not overflow the server's accept backlog.
    fn connect_phase(&mut self) {
        let n = self.conns.len();
        let batch = self.cfg.connect_batch.max(1);
        let mut next = 0;
        let mut batch_range = 0..0;
        loop {
            // Resolve timeouts and due retries in the current batch.
            let now = Instant::now();
            let mut pending = 0;
            let mut wake = now + MAX_WAIT;
            for i in batch_range.clone() {
                let mut ctx = ctx!(self);
                let conn = &mut self.conns[i];
                match conn.state {
                    State::Connecting { since, .. } => {
                        let deadline = since + self.cfg.connect_timeout;
                        if now >= deadline {
                            conn.connect_timed_out(&mut ctx);
                        } else {
                            pending += 1;
                            wake = wake.min(deadline);
                        }
                    }
                    State::Backoff { until, attempt } => {
                        if now >= until {
                            conn.start_connect(self.cfg.addr, attempt, &mut ctx);
                        } else {
                            wake = wake.min(until);
                        }
                        pending += 1;
                    }
                    _ => {}
                }
            }
            if pending == 0 {
                if next == n {
                    break;
                }
                let end = (next + batch).min(n);
                for i in next..end {
                    let mut ctx = ctx!(self);
                    self.conns[i].start_connect(self.cfg.addr, 0, &mut ctx);
                }
                batch_range = next..end;
                next = end;
                continue;
            }
            let wait = wake.saturating_duration_since(Instant::now());
            self.poll(wait.max(Duration::from_millis(1)));
            self.dispatch();
        }
    }

    /// Sends requests and verifies replies until the limit; returns the
    /// length of the measurement window.
    fn load_phase(&mut self) -> Duration {
        let t0 = Instant::now();
        let warm_end = t0 + self.cfg.warmup;
        let (end, per_conn, hard_deadline) = match self.cfg.limit {
            Limit::Duration(d) => (Some(warm_end + d), u64::MAX, None),
            Limit::Messages { per_conn, timeout } => {
                // Open loop: the schedule itself takes per_conn intervals.
                let schedule = self
                    .cfg
                    .rate
                    .map(|r| {
                        Duration::from_secs_f64(per_conn as f64 * self.cfg.total_conns as f64 / r)
                    })
                    .unwrap_or_default();
                (None, per_conn, Some(t0 + schedule + timeout))
            }
        };
        self.stats.window_start = warm_end;
        self.stats.window_end = end;
        self.recording = true;

        let pipeline = self.cfg.pipeline.max(1);
        // Open loop: per-connection interval, staggered so that the
        // connections' schedules interleave evenly.
        let interval = self
            .cfg
            .rate
            .map(|r| Duration::from_secs_f64(self.cfg.total_conns as f64 / r));
        let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        if let (Some(iv), Some(rate)) = (interval, self.cfg.rate) {
            for (i, c) in self.conns.iter_mut().enumerate() {
                let offset = Duration::from_secs_f64(c.id as f64 / rate);
                c.next_due = t0 + offset.min(iv);
                c.in_heap = true;
                heap.push(Reverse((c.next_due, i)));
            }
        }

        let mut unfinished = 0usize;
        for c in &mut self.conns {
            if let Some(n) = self.cfg.reconnect_every {
                c.batch_end = n;
            }
            if c.is_open() {
                unfinished += 1;
            } else {
                c.finished = true;
            }
        }
        // Closed loop: fill every pipeline to start.
        let all: Vec<usize> = (0..self.conns.len()).collect();
        self.advance(
            &all,
            interval,
            per_conn,
            pipeline,
            &mut heap,
            &mut unfinished,
        );

        let mut last_progress = 0;
        let mut due = Vec::new();
        let load_end = loop {
            let now = Instant::now();
            if end.is_some_and(|e| now >= e) {
                break end.expect("checked");
            }
            if end.is_none() && unfinished == 0 {
                break now;
            }
            if hard_deadline.is_some_and(|d| now >= d) {
                for c in self.conns.iter_mut().filter(|c| !c.finished) {
                    c.finished = true;
                    self.stats.error(
                        ErrorKind::Timeout,
                        format!(
                            "conn {}: {} of {per_conn} messages done at --timeout ({} outstanding)",
                            c.id,
                            c.completed,
                            c.outstanding()
                        ),
                    );
                }
                break now;
            }
            // Open loop: issue what is due.
            due.clear();
            while let Some(Reverse((t, i))) = heap.peek().copied() {
                if t > now {
                    break;
                }
                heap.pop();
                self.conns[i].in_heap = false;
                due.push(i);
            }
            if !due.is_empty() {
                self.advance(
                    &due,
                    interval,
                    per_conn,
                    pipeline,
                    &mut heap,
                    &mut unfinished,
                );
            }

            let mut wake = now + MAX_WAIT;
            if let Some(e) = end {
                wake = wake.min(e);
            }
            if let Some(Reverse((t, _))) = heap.peek() {
                wake = wake.min(*t);
            }
            self.poll(wake.saturating_duration_since(now));
            self.dispatch();
            let touched = std::mem::take(&mut self.touched);
            self.advance(
                &touched,
                interval,
                per_conn,
                pipeline,
                &mut heap,
                &mut unfinished,
            );
            self.touched = touched;

            if self.stats.messages != last_progress {
                last_progress = self.stats.messages;
                self.shared.progress[self.index]
                    .0
                    .store(last_progress, Ordering::Relaxed);
            }
        };
        self.recording = false;
        self.shared.progress[self.index]
            .0
            .store(self.stats.messages, Ordering::Relaxed);
        if end.is_none() {
            // -n: the window ends when the last message completes.
            self.stats.window_end = Some(load_end);
        }
        load_end.saturating_duration_since(warm_end)
    }

    /// After events (or at start / when due): issues new requests on the
    /// given connections and flushes them; tracks finished connections.
    fn advance(
        &mut self,
        idx: &[usize],
        interval: Option<Duration>,
        per_conn: u64,
        pipeline: usize,
        heap: &mut BinaryHeap<Reverse<(Instant, usize)>>,
        unfinished: &mut usize,
    ) {
        for &i in idx {
            let mut ctx = ctx!(self);
            let conn = &mut self.conns[i];
            if let Some(n) = self.cfg.reconnect_every {
                if conn.state == State::Ready
                    && conn.outstanding() == 0
                    && conn.completed >= conn.batch_end
                    && conn.completed < per_conn
                {
                    conn.batch_end = conn.completed + n;
                    conn.reconnect(self.cfg.addr, &mut ctx);
                }
            }
            let per_conn_now = per_conn.min(conn.batch_end);
            if conn.state == State::Ready {
                match interval {
                    None => {
                        let now = Instant::now();
                        while conn.outstanding() < pipeline && conn.issued < per_conn_now {
                            conn.issue(now, ctx.proto);
                        }
                    }
                    Some(iv) => {
                        let now = Instant::now();
                        while conn.next_due <= now
                            && conn.outstanding() < pipeline
                            && conn.issued < per_conn_now
                        {
                            let due = conn.next_due;
                            conn.issue(due, ctx.proto);
                            conn.next_due += iv;
                        }
                        // Wait for the next due time; if the pipeline is
                        // full, a completion brings us back here instead.
                        if !conn.in_heap && conn.issued < per_conn && conn.outstanding() < pipeline
                        {
                            conn.in_heap = true;
                            heap.push(Reverse((conn.next_due, i)));
                        }
                    }
                }
                conn.flush(&mut ctx);
            }
            // (A connection still reading its greeting comes back here when
            // the greeting arrives, and then sends whatever is due.)
            let gone = !conn.is_open() && !conn.is_connecting();
            if !conn.finished && (gone || conn.completed >= per_conn) {
                conn.finished = true;
                *unfinished -= 1;
            }
        }
    }

    /// Keeps the connections open (reading and verifying any late replies,
    /// noticing drops) until main sets the stop flag.
    fn hold_phase(&mut self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            self.poll(MAX_WAIT);
            self.dispatch();
        }
    }
}
