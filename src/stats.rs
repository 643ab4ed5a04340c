//! Per-server counters, readable from the running server's [`ServerHandle`](crate::ServerHandle).
//!
//! Each IO thread owns one [`ThreadStats`] per server and is its only writer, so a counter is
//! bumped with a plain load + store (no locked read-modify-write on the data path); readers sum
//! the threads. `active` is the exception: it is shared (the max-connections limit needs one
//! number), updated with atomic read-modify-writes on accept and close only.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use std::collections::BTreeMap;

use crate::info::CloseReason;

/// A counter with a single writer thread.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        // Single writer: load + store is exact and avoids a locked instruction.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// One IO thread's counters for one server (cache-line aligned: no false sharing).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct ThreadStats {
    pub accepted: Counter,
    pub rejected: Counter,
    pub rejected_per_ip: Counter,
    pub rejected_rate: Counter,
    pub accept_errors: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub frames_in: Counter,
    pub decode_errors: Counter,
    pub bad_frames: Counter,
    pub handshakes: Counter,
    pub backpressure_pauses: Counter,
    pub proxy_v1: Counter,
    pub proxy_v2: Counter,
    pub proxy_local: Counter,
    pub proxy_none: Counter,
    pub closed: [Counter; CloseReason::COUNT],
}

impl ThreadStats {
    /// Counts how a connection whose layers named its client began: with which PROXY
    /// header, or none.
    pub(crate) fn count_origin(&self, proxy: Option<&crate::info::ProxyInfo>) {
        match proxy {
            None => self.proxy_none.add(1),
            Some(p) if p.local => self.proxy_local.add(1),
            Some(p) if p.version == crate::info::ProxyVersion::V1 => self.proxy_v1.add(1),
            Some(_) => self.proxy_v2.add(1),
        }
    }
}

/// All counters of one server, shared by its IO threads and its handle.
#[derive(Debug)]
pub struct ServerStats {
    pub(crate) threads: Vec<ThreadStats>,
    pub(crate) active: AtomicUsize,
}

impl ServerStats {
    pub(crate) fn new(threads: usize) -> Arc<Self> {
        Arc::new(ServerStats {
            threads: (0..threads).map(|_| ThreadStats::default()).collect(),
            active: AtomicUsize::new(0),
        })
    }

    /// A consistent-enough copy of every counter (each summed over the IO threads).
    pub fn snapshot(&self) -> StatsSnapshot {
        let sum = |f: &dyn Fn(&ThreadStats) -> &Counter| -> u64 {
            self.threads.iter().map(|t| f(t).get()).sum()
        };
        let closed = CloseReason::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, sum(&|t| &t.closed[i])))
            .collect();
        StatsSnapshot {
            accepted: sum(&|t| &t.accepted),
            active: self.active.load(Relaxed) as u64,
            rejected: sum(&|t| &t.rejected),
            rejected_per_ip: sum(&|t| &t.rejected_per_ip),
            rejected_rate: sum(&|t| &t.rejected_rate),
            accept_errors: sum(&|t| &t.accept_errors),
            bytes_in: sum(&|t| &t.bytes_in),
            bytes_out: sum(&|t| &t.bytes_out),
            frames_in: sum(&|t| &t.frames_in),
            decode_errors: sum(&|t| &t.decode_errors),
            bad_frames: sum(&|t| &t.bad_frames),
            handshakes: sum(&|t| &t.handshakes),
            backpressure_pauses: sum(&|t| &t.backpressure_pauses),
            proxy_headers: ProxyHeaderCounts {
                v1: sum(&|t| &t.proxy_v1),
                v2: sum(&|t| &t.proxy_v2),
                local: sum(&|t| &t.proxy_local),
                none: sum(&|t| &t.proxy_none),
                refused: sum(&|t| &t.closed[CloseReason::ProxyHeader(String::new()).index()])
                    + sum(&|t| &t.closed[CloseReason::ProxyHeaderTimeout.index()]),
            },
            closed,
        }
    }
}

/// A copy of a server's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections accepted (including those then rejected by a connection limit).
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed at once because `max_connections` was reached.
    pub rejected: u64,
    /// Connections closed at once because their address already had
    /// `max_connections_per_ip` open.
    pub rejected_per_ip: u64,
    /// Connections closed at once because their address exceeded its accept rate.
    pub rejected_rate: u64,
    /// Failed accept calls (EMFILE, ENFILE, ...), each followed by a back-off.
    pub accept_errors: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Frames decoded and handed to the handler.
    pub frames_in: u64,
    /// Connections whose input the decoder rejected (frame or line too long, ...).
    pub decode_errors: u64,
    /// Bad frames an `ItemDecoder` skipped and answered, the connection going on
    /// ([`Decode::Bad`](crate::codec::Decode::Bad)).
    pub bad_frames: u64,
    /// Connections whose layers became ready (TLS handshakes completed, PROXY headers read).
    pub handshakes: u64,
    /// Times a connection stopped reading because its write queue passed the high watermark.
    pub backpressure_pauses: u64,
    /// PROXY protocol headers read (servers with [`Server::proxy_protocol`](crate::Server::proxy_protocol)).
    pub proxy_headers: ProxyHeaderCounts,
    /// Connections closed, keyed by [`CloseReason::name`] (every name is present).
    pub closed: BTreeMap<&'static str, u64>,
}

/// How connections to a server with the PROXY protocol began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyHeaderCounts {
    /// v1 headers with a client address.
    pub v1: u64,
    /// v2 `PROXY` headers with a client address.
    pub v2: u64,
    /// Headers without a client address (v2 `LOCAL` health checks, v1 `UNKNOWN`, other
    /// address families): the socket's address is kept.
    pub local: u64,
    /// Connections without a header (`Optional` mode).
    pub none: u64,
    /// Connections closed for their header: missing, malformed, oversized, cut short
    /// (`proxy-header`) or too slow (`proxy-header-timeout`).
    pub refused: u64,
}

impl StatsSnapshot {
    /// Connections closed for this kind of reason.
    pub fn closed_by(&self, reason: &CloseReason) -> u64 {
        self.closed.get(reason.name()).copied().unwrap_or(0)
    }

    /// Connections closed, all reasons together.
    pub fn closed_total(&self) -> u64 {
        self.closed.values().sum()
    }
}

/// One IO thread's loop counters (single writer: the thread itself).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct LoopStats {
    /// Loop turns (one wait for completions each).
    pub turns: Counter,
    /// Completions drained (accepts, receives, sends, closes, ...).
    pub completions: Counter,
    /// Nanoseconds spent between waits: completions, handler callbacks, inbox, timers, flush.
    pub busy_nanos: Counter,
}

/// A copy of one IO thread's loop counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopSnapshot {
    /// Loop turns (one wait for completions each).
    pub turns: u64,
    /// Completions handled.
    pub completions: u64,
    /// Nanoseconds spent working between waits (handler callbacks included).
    pub busy_nanos: u64,
}

impl LoopStats {
    pub(crate) fn snapshot(&self) -> LoopSnapshot {
        LoopSnapshot {
            turns: self.turns.get(),
            completions: self.completions.get(),
            busy_nanos: self.busy_nanos.get(),
        }
    }
}
