//! Admission for the metrics server: a scrape always gets through, whatever slow clients do.
//!
//! A metrics request is a request line and a few headers, sent at once by every real scraper.
//! Three rules keep clients that send slowly (or not at all) from holding the port:
//!
//! - **A deadline for the whole request** ([`REQUEST_DEADLINE`]), armed when the connection
//!   opens and not pushed back by bytes (the idle timeout is; a trickle of one byte a second
//!   would hold a connection for ever). A request not complete by then is closed.
//! - **A cap on incomplete requests per address** ([`MAX_PENDING_PER_IP`]) and in all
//!   ([`MAX_PENDING`], well under the server's connection limit): when a new connection passes
//!   either, the **oldest** incomplete request (of that address, else of all) is reset to make
//!   room. The newcomer is never the victim, so a scraper that sends its request at once is
//!   served even from the address of an attacker.
//!
//! Each outcome is counted (`ringport_metrics_requests_total{outcome}`) and logged at debug.
//! The table is shared by the IO threads; it holds at most `MAX_PENDING + 1` entries, so its
//! linear scans are short and bounded.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tracing::debug;

use crate::handle::ConnectionHandle;

/// Time a metrics client has to send its whole request, from the connection's open.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Incomplete requests one address may hold; a newcomer past it resets that address's oldest.
pub const MAX_PENDING_PER_IP: usize = 16;
/// Incomplete requests all addresses together may hold (the server admits 1,024 connections);
/// a newcomer past it resets the oldest of all.
pub const MAX_PENDING: usize = 256;

/// How metrics connections ended, for the `outcome` label.
#[derive(Debug, Default)]
pub(crate) struct GateCounts {
    /// Answered (any status).
    pub answered: AtomicU64,
    /// Closed because the request was not complete by [`REQUEST_DEADLINE`].
    pub deadline: AtomicU64,
    /// Reset to make room for a newer connection.
    pub evicted: AtomicU64,
}

struct Pending {
    id: u64,
    ip: IpAddr,
    handle: ConnectionHandle,
}

/// Incomplete metrics requests, oldest first.
#[derive(Default)]
pub(crate) struct Gate {
    pending: Mutex<Vec<Pending>>,
    pub counts: GateCounts,
}

impl Gate {
    /// A connection opened: it is pending until [`Gate::done`]. Resets the oldest incomplete
    /// request if the newcomer passes a cap.
    pub(crate) fn open(&self, id: u64, ip: IpAddr, handle: ConnectionHandle) {
        let victim = {
            let mut pending = lock(&self.pending);
            pending.push(Pending { id, ip, handle });
            let same_ip = pending.iter().filter(|p| p.ip == ip).count();
            let at = if same_ip > MAX_PENDING_PER_IP {
                pending.iter().position(|p| p.ip == ip)
            } else if pending.len() > MAX_PENDING {
                Some(0)
            } else {
                None
            };
            let victim = at.map(|i| pending.remove(i));
            debug_assert!(pending.len() <= MAX_PENDING, "the pending table is bounded");
            victim
        };
        if let Some(v) = victim {
            debug_assert!(v.id != id, "the newcomer is never the one evicted");
            self.counts.evicted.fetch_add(1, Ordering::Relaxed);
            debug!(peer = %v.ip, "metrics: oldest incomplete request reset to admit a new one");
            // `Closed`: it ended meanwhile; nothing to do.
            let _ = v.handle.abort();
        }
    }

    /// The connection answered or closed: no longer pending. Idempotent.
    pub(crate) fn done(&self, id: u64) {
        let mut pending = lock(&self.pending);
        if let Some(i) = pending.iter().position(|p| p.id == id) {
            pending.remove(i);
        }
    }

    /// Incomplete requests now.
    pub(crate) fn pending(&self) -> usize {
        lock(&self.pending).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
