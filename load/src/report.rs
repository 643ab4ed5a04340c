//! Per-thread statistics (recorded lock-free by each worker), merged at the
//! end into a [`Summary`] printed as text or JSON.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Error kinds, counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connect refused (after retries) or failed otherwise.
    ConnectFailed,
    /// Connect did not complete within --connect-timeout.
    ConnectTimeout,
    /// A reply (or the greeting) differs from what was expected.
    Mismatch,
    /// The connection closed or was reset in the middle of a reply.
    ShortReply,
    /// The connection closed or was reset between replies.
    Dropped,
    /// Bytes arrived while no request was outstanding.
    UnexpectedData,
    /// Another I/O error.
    Io,
    /// -n mode: a connection had not finished its messages by --timeout.
    Timeout,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::ConnectFailed,
        ErrorKind::ConnectTimeout,
        ErrorKind::Mismatch,
        ErrorKind::ShortReply,
        ErrorKind::Dropped,
        ErrorKind::UnexpectedData,
        ErrorKind::Io,
        ErrorKind::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::ShortReply => "short_reply",
            ErrorKind::Dropped => "dropped",
            ErrorKind::UnexpectedData => "unexpected_data",
            ErrorKind::Io => "io_error",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// How many error descriptions each thread keeps for the report.
const KEEP_ERROR_DETAILS: usize = 5;
/// Latencies are recorded in nanoseconds, up to this many.
const MAX_LATENCY_NS: u64 = 600_000_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// One worker thread's statistics. Only that thread touches it.
pub struct ThreadStats {
    /// Reply latency (ns) of messages completed inside the window.
    pub latency: Histogram<u64>,
    /// Time to connect (ns), including retries.
    pub connect: Histogram<u64>,
    pub messages: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    pub error_details: Vec<String>,
    pub connected: u64,
    pub connect_retries: u64,
    /// `--reconnect-every`: new connections (with --tls, handshakes) whose
    /// first reply completed inside the window.
    pub handshakes: u64,
    /// Measurement window: [start, end). `end` is None for -n runs.
    pub window_start: Instant,
    pub window_end: Option<Instant>,
}

impl ThreadStats {
    pub fn new(now: Instant) -> Self {
        ThreadStats {
            latency: new_histogram(),
            connect: new_histogram(),
            messages: 0,
            bytes_sent: 0,
            bytes_received: 0,
            errors: [0; ErrorKind::ALL.len()],
            error_details: Vec::new(),
            connected: 0,
            connect_retries: 0,
            handshakes: 0,
            window_start: now,
            window_end: None,
        }
    }

    #[inline]
    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && self.window_end.is_none_or(|end| t < end)
    }

    #[inline]
    pub fn complete(&mut self, start: Instant, now: Instant) {
        if self.in_window(now) {
            self.messages += 1;
            let ns = now.saturating_duration_since(start).as_nanos() as u64;
            self.latency.saturating_record(ns.max(1));
        }
    }

    #[inline]
    pub fn add_sent(&mut self, n: u64, now: Instant) {
        if self.in_window(now) {
            self.bytes_sent += n;
        }
    }

    #[inline]
    pub fn add_received(&mut self, n: u64, now: Instant) {
        if self.in_window(now) {
            self.bytes_received += n;
        }
    }

    /// A re-established connection completed its first reply at `now`.
    pub fn handshake(&mut self, now: Instant) {
        if self.in_window(now) {
            self.handshakes += 1;
        }
    }

    pub fn record_connect(&mut self, d: Duration) {
        self.connect.saturating_record((d.as_nanos() as u64).max(1));
    }

    pub fn error(&mut self, kind: ErrorKind, detail: String) {
        let i = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("kind in ALL");
        self.errors[i] += 1;
        if self.error_details.len() < KEEP_ERROR_DETAILS {
            self.error_details
                .push(format!("{}: {detail}", kind.name()));
        }
    }
}

/// What a worker hands back when it is done.
pub struct WorkerResult {
    pub stats: ThreadStats,
    /// Length of this worker's measurement window.
    pub measured: Duration,
    /// Connections still open when the run ended (after any hold).
    pub open_at_end: u64,
}

#[derive(Serialize, Debug)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
}

#[derive(Serialize, Debug)]
pub struct ConnectStats {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
    /// Wall time of the whole connect phase.
    pub phase_secs: f64,
    pub retries: u64,
}

/// The run's result. Field names are the `--json` schema.
#[derive(Serialize, Debug)]
pub struct Summary {
    /// `event` or `blocking` (`--client`).
    pub client: String,
    pub mode: String,
    pub target: String,
    pub threads: usize,
    pub connections_requested: u64,
    /// Connections that were established.
    pub connections: u64,
    pub connections_open_at_end: u64,
    pub payload_bytes: usize,
    pub pipeline: usize,
    /// Open-loop target rate (messages/s), if any.
    pub rate: Option<f64>,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub messages: u64,
    pub messages_per_sec: f64,
    /// `--reconnect-every`: connections re-established (and, with --tls,
    /// handshakes completed) in the window, and their rate.
    pub handshakes: u64,
    pub handshakes_per_sec: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// MB = 10^6 bytes.
    pub mb_per_sec_sent: f64,
    pub mb_per_sec_received: f64,
    pub latency_us: Latency,
    pub connect_us: ConnectStats,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
}

/// Run parameters the summary echoes back.
pub struct RunInfo {
    pub client: String,
    pub mode: String,
    pub target: String,
    pub threads: usize,
    pub connections_requested: u64,
    pub payload_bytes: usize,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub connect_phase: Duration,
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 1000.0 * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn summarize(info: RunInfo, results: Vec<WorkerResult>) -> Summary {
    let mut latency = new_histogram();
    let mut connect = new_histogram();
    let mut errors = [0u64; ErrorKind::ALL.len()];
    let (mut messages, mut sent, mut received, mut connected, mut retries, mut open) =
        (0, 0, 0, 0, 0, 0);
    let mut samples = Vec::new();
    let mut handshakes = 0;
    let mut measured = Duration::ZERO;
    for r in results {
        let s = r.stats;
        latency.add(&s.latency).expect("same histogram bounds");
        connect.add(&s.connect).expect("same histogram bounds");
        for (t, e) in errors.iter_mut().zip(s.errors) {
            *t += e;
        }
        messages += s.messages;
        sent += s.bytes_sent;
        received += s.bytes_received;
        connected += s.connected;
        retries += s.connect_retries;
        handshakes += s.handshakes;
        open += r.open_at_end;
        samples.extend(s.error_details);
        measured = measured.max(r.measured);
    }
    samples.truncate(10);
    let secs = measured.as_secs_f64();
    let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
    let q = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            us(h.value_at_quantile(q))
        }
    };
    Summary {
        client: info.client,
        mode: info.mode,
        target: info.target,
        threads: info.threads,
        connections_requested: info.connections_requested,
        connections: connected,
        connections_open_at_end: open,
        payload_bytes: info.payload_bytes,
        pipeline: info.pipeline,
        rate: info.rate,
        warmup_secs: info.warmup.as_secs_f64(),
        duration_secs: (secs * 1000.0).round() / 1000.0,
        messages,
        messages_per_sec: round2(per_sec(messages as f64)),
        handshakes,
        handshakes_per_sec: round2(per_sec(handshakes as f64)),
        bytes_sent: sent,
        bytes_received: received,
        mb_per_sec_sent: round2(per_sec(sent as f64) / 1e6),
        mb_per_sec_received: round2(per_sec(received as f64) / 1e6),
        latency_us: Latency {
            p50: q(&latency, 0.5),
            p90: q(&latency, 0.9),
            p99: q(&latency, 0.99),
            p999: q(&latency, 0.999),
            max: if latency.is_empty() {
                0.0
            } else {
                us(latency.max())
            },
            min: if latency.is_empty() {
                0.0
            } else {
                us(latency.min())
            },
            mean: if latency.is_empty() {
                0.0
            } else {
                us(latency.mean() as u64)
            },
        },
        connect_us: ConnectStats {
            p50: q(&connect, 0.5),
            p99: q(&connect, 0.99),
            max: if connect.is_empty() {
                0.0
            } else {
                us(connect.max())
            },
            mean: if connect.is_empty() {
                0.0
            } else {
                us(connect.mean() as u64)
            },
            phase_secs: (info.connect_phase.as_secs_f64() * 1000.0).round() / 1000.0,
            retries,
        },
        errors: errors.iter().sum(),
        error_kinds: ErrorKind::ALL
            .iter()
            .zip(errors)
            .map(|(k, n)| (k.name().to_string(), n))
            .collect(),
        error_samples: samples,
    }
}

/// Human-readable report.
pub fn print_text(s: &Summary) {
    let rate = match s.rate {
        Some(r) => format!("open loop at {r} msg/s"),
        None => "closed loop".to_string(),
    };
    println!(
        "{} -> {}: {} payload bytes, {} connection(s), pipeline {}, {}, {} client, {} thread(s)",
        s.mode,
        s.target,
        s.payload_bytes,
        s.connections_requested,
        s.pipeline,
        rate,
        s.client,
        s.threads
    );
    println!(
        "connections: {} established, {} open at end; connect time (us): mean {} p50 {} p99 {} max {} ({} retries, phase {:.3} s)",
        s.connections,
        s.connections_open_at_end,
        s.connect_us.mean,
        s.connect_us.p50,
        s.connect_us.p99,
        s.connect_us.max,
        s.connect_us.retries,
        s.connect_us.phase_secs
    );
    println!(
        "messages:    {} in {:.3} s (after {} s warm-up) = {:.0} msg/s",
        s.messages, s.duration_secs, s.warmup_secs, s.messages_per_sec
    );
    if s.handshakes > 0 {
        println!(
            "handshakes:  {} = {:.0}/s (a new connection every --reconnect-every messages)",
            s.handshakes, s.handshakes_per_sec
        );
    }
    println!(
        "throughput:  {:.2} MB/s sent, {:.2} MB/s received (MB = 10^6 bytes)",
        s.mb_per_sec_sent, s.mb_per_sec_received
    );
    let l = &s.latency_us;
    println!(
        "latency (us): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (min {}, mean {})",
        l.p50, l.p90, l.p99, l.p999, l.max, l.min, l.mean
    );
    if s.errors == 0 {
        println!("errors:      none");
    } else {
        let kinds: Vec<String> = s
            .error_kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!("errors:      {} ({})", s.errors, kinds.join(", "));
        for e in &s.error_samples {
            println!("  {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_excludes_warmup_and_after_end() {
        let t0 = Instant::now();
        let mut s = ThreadStats::new(t0 + Duration::from_secs(1));
        s.window_end = Some(t0 + Duration::from_secs(2));
        s.complete(t0, t0 + Duration::from_millis(500));
        s.complete(t0, t0 + Duration::from_millis(1500));
        s.complete(t0, t0 + Duration::from_millis(2500));
        assert_eq!(s.messages, 1);
        assert_eq!(s.latency.len(), 1);
    }

    #[test]
    fn summary_counts_errors_by_kind() {
        let now = Instant::now();
        let mut a = ThreadStats::new(now);
        a.error(ErrorKind::Mismatch, "x".into());
        a.error(ErrorKind::Dropped, "y".into());
        let mut b = ThreadStats::new(now);
        b.error(ErrorKind::Mismatch, "z".into());
        let info = RunInfo {
            client: "event".into(),
            mode: "echo".into(),
            target: "t".into(),
            threads: 2,
            connections_requested: 2,
            payload_bytes: 1,
            pipeline: 1,
            rate: None,
            warmup: Duration::ZERO,
            connect_phase: Duration::ZERO,
        };
        let r = |stats| WorkerResult {
            stats,
            measured: Duration::from_secs(1),
            open_at_end: 0,
        };
        let s = summarize(info, vec![r(a), r(b)]);
        assert_eq!(s.errors, 3);
        assert_eq!(s.error_kinds["mismatch"], 2);
        assert_eq!(s.error_kinds["dropped"], 1);
        assert_eq!(s.error_kinds["short_reply"], 0);
        let json = serde_json::to_value(&s).unwrap();
        for key in [
            "messages_per_sec",
            "mb_per_sec_sent",
            "mb_per_sec_received",
            "errors",
            "error_kinds",
            "connections",
            "messages",
            "duration_secs",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(json["latency_us"].get(key).is_some(), "{key}");
        }
    }
}
