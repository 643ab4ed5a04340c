//! Loop-turn tracing for tail-latency work (`RINGPORT_URING_TRACE=1`, off by default; read
//! once per process). Each ring records, per loop turn, how long the thread worked between two
//! waits, how long it sat in the wait, and how many completions the turn handled; per
//! connection, how many receive completions it had in one turn. At the ring's end one line
//! per IO thread goes to stderr (`bench/compare.sh` keeps it with `TRACE_DIR=`):
//!
//! ```text
//! ringport-uring trace ringport-io-0: conns 26 (max live 26), turns 81234, completions 250123
//! (per turn p50 2 p99 11 max 25), busy us p50 4 p99 38 p99.9 95 max 612, busy cpu us p99 30
//! p99.9 80 max 140, turns over 1 ms 0 (cpu over 1 ms 0), wait us p50 12 p99 480 p99.9 2100
//! max 5100, run-queue wait 350 ms, recv completions of one conn in one turn: max 3
//! ```
//!
//! "busy" is wall time, so a turn during which the thread was preempted counts the time it
//! waited for a CPU; "busy cpu" is the thread's own CPU time in the turn
//! (`CLOCK_THREAD_CPUTIME_ID`), and "run-queue wait" the thread's total time runnable but not
//! running (`/proc/thread-self/schedstat`). A long turn whose CPU time is short was preempted.
//!
//! Off, the backend pays one branch per call. On, two wall-clock reads and two thread CPU
//! clock reads per turn and one small record per turn (kept in memory; at most `MAX_TURNS`
//! turns, later ones are counted only).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Turns recorded in full per ring (about 16 MB); later turns update the counters only.
const MAX_TURNS: usize = 1 << 20;

/// Whether `RINGPORT_URING_TRACE` is `1` or `on` for this process.
pub(super) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        matches!(
            std::env::var("RINGPORT_URING_TRACE").as_deref(),
            Ok("1" | "on")
        )
    })
}

/// One ring's loop-turn record.
pub(super) struct Trace {
    /// When the last wait returned (the current turn's start).
    turn_start: Option<Instant>,
    /// When the current wait began.
    wait_start: Option<Instant>,
    /// The thread's CPU time when the current turn began.
    turn_cpu: Duration,
    /// Per recorded turn: busy microseconds, wait microseconds, completions, busy CPU
    /// microseconds.
    turns: Vec<(u32, u32, u32, u32)>,
    turn_count: u64,
    /// Completions handed out in the current turn.
    in_turn: u32,
    completions: u64,
    /// Receive completions per connection in the current turn, and which tokens have one.
    recv_in_turn: Vec<u32>,
    touched: Vec<usize>,
    max_recv_in_turn: u32,
    conns: u64,
    live: u64,
    max_live: u64,
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live struct passed.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// This thread's time runnable but not running, in milliseconds (None if unknown).
fn run_queue_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().nth(1)?.parse().ok()?;
    Some(ns / 1_000_000)
}

fn micros(from: Instant, to: Instant) -> u32 {
    to.duration_since(from)
        .as_micros()
        .min(u128::from(u32::MAX)) as u32
}

impl Trace {
    pub(super) fn new() -> Self {
        Trace {
            turn_start: None,
            wait_start: None,
            turn_cpu: Duration::ZERO,
            turns: Vec::new(),
            turn_count: 0,
            in_turn: 0,
            completions: 0,
            recv_in_turn: Vec::new(),
            touched: Vec::new(),
            max_recv_in_turn: 0,
            conns: 0,
            live: 0,
            max_live: 0,
        }
    }

    /// The loop is about to wait: the turn that began when the last wait returned ends.
    pub(super) fn wait_begins(&mut self) {
        let now = Instant::now();
        self.wait_start = Some(now);
        let Some(start) = self.turn_start.take() else {
            return;
        };
        let busy = micros(start, now);
        let cpu = thread_cpu().saturating_sub(self.turn_cpu);
        // The wait time of this turn was stored when it began (see `wait_ends`).
        let recorded = self.turns.len() as u64 == self.turn_count;
        if let (true, Some(last)) = (recorded, self.turns.last_mut()) {
            last.0 = busy;
            last.2 = self.in_turn;
            last.3 = cpu.as_micros().min(u128::from(u32::MAX)) as u32;
        }
        self.completions += u64::from(self.in_turn);
        self.in_turn = 0;
        for t in self.touched.drain(..) {
            if let Some(n) = self.recv_in_turn.get_mut(t) {
                self.max_recv_in_turn = self.max_recv_in_turn.max(*n);
                *n = 0;
            }
        }
    }

    /// The wait returned: a new turn begins.
    pub(super) fn wait_ends(&mut self) {
        let now = Instant::now();
        let waited = self.wait_start.take().map_or(0, |w| micros(w, now));
        self.turn_start = Some(now);
        self.turn_cpu = thread_cpu();
        self.turn_count += 1;
        if self.turns.len() < MAX_TURNS {
            self.turns.push((0, waited, 0, 0));
        }
    }

    /// One completion was handed to the engine.
    pub(super) fn event(&mut self) {
        self.in_turn += 1;
    }

    /// One receive completion with data for `token`.
    pub(super) fn recv(&mut self, token: usize) {
        if self.recv_in_turn.len() <= token {
            self.recv_in_turn.resize(token + 1, 0);
        }
        if self.recv_in_turn[token] == 0 {
            self.touched.push(token);
        }
        self.recv_in_turn[token] += 1;
    }

    pub(super) fn opened(&mut self) {
        self.conns += 1;
        self.live += 1;
        self.max_live = self.max_live.max(self.live);
    }

    pub(super) fn closed(&mut self) {
        self.live = self.live.saturating_sub(1);
    }

    /// The one-line summary printed when the ring goes.
    pub(super) fn summary(&self) -> String {
        let turns = &self.turns[..self.turns.len().saturating_sub(1)]; // the last is unfinished
        let pct = |mut xs: Vec<u32>, p: f64| -> u32 {
            if xs.is_empty() {
                return 0;
            }
            let i = ((xs.len() as f64 * p).ceil() as usize).clamp(1, xs.len()) - 1;
            *xs.select_nth_unstable(i).1
        };
        let col = |f: fn(&(u32, u32, u32, u32)) -> u32| turns.iter().map(f).collect::<Vec<_>>();
        let (busy, wait, cqes, cpu) = (col(|t| t.0), col(|t| t.1), col(|t| t.2), col(|t| t.3));
        let max = |xs: &[u32]| xs.iter().copied().max().unwrap_or(0);
        let over_ms = busy.iter().filter(|&&b| b >= 1000).count();
        let cpu_over_ms = cpu.iter().filter(|&&b| b >= 1000).count();
        let runq = run_queue_ms().map_or("?".to_string(), |ms| ms.to_string());
        let thread = std::thread::current();
        format!(
            "ringport-uring trace {}: conns {} (max live {}), turns {}, completions {} \
             (per turn p50 {} p99 {} max {}), busy us p50 {} p99 {} p99.9 {} max {}, \
             busy cpu us p99 {} p99.9 {} max {}, turns over 1 ms {} (cpu over 1 ms {}), \
             wait us p50 {} p99 {} p99.9 {} max {}, run-queue wait {} ms, \
             recv completions of one conn in one turn: max {}",
            thread.name().unwrap_or("?"),
            self.conns,
            self.max_live,
            self.turn_count,
            self.completions,
            pct(cqes.clone(), 0.5),
            pct(cqes.clone(), 0.99),
            max(&cqes),
            pct(busy.clone(), 0.5),
            pct(busy.clone(), 0.99),
            pct(busy.clone(), 0.999),
            max(&busy),
            pct(cpu.clone(), 0.99),
            pct(cpu.clone(), 0.999),
            max(&cpu),
            over_ms,
            cpu_over_ms,
            pct(wait.clone(), 0.5),
            pct(wait.clone(), 0.99),
            pct(wait.clone(), 0.999),
            max(&wait),
            runq,
            self.max_recv_in_turn,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_completions_and_per_conn_counts_are_recorded() {
        let mut t = Trace::new();
        t.opened();
        t.opened();
        t.closed();
        for turn in 0..3u32 {
            t.wait_begins();
            t.wait_ends();
            for _ in 0..=turn {
                t.event();
                t.recv(5);
            }
            t.event();
            t.recv(1);
        }
        t.wait_begins();
        t.wait_ends(); // an unfinished turn: not in the percentiles
        assert_eq!(t.turn_count, 4);
        assert_eq!(t.completions, 2 + 3 + 4);
        assert_eq!(t.max_recv_in_turn, 3);
        assert_eq!((t.conns, t.max_live, t.live), (2, 2, 1));
        let s = t.summary();
        assert!(
            s.contains("conns 2 (max live 2), turns 4, completions 9"),
            "{s}"
        );
        assert!(s.contains("(per turn p50 3 p99 4 max 4)"), "{s}");
        assert!(s.ends_with("in one turn: max 3"), "{s}");
    }
}
