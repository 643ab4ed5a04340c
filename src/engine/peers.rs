//! Per-client-address limits of one server: open connections per IP (a sharded table shared
//! by the server's IO threads) and an accept rate per IP (`governor`'s keyed GCRA limiter).
//! One address opening thousands of connections is refused on its own; others are not.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tracing::debug;

const SHARDS: usize = 16;
/// Every this many rate checks, addresses whose budget is full again are forgotten.
const RATE_SWEEP: u64 = 4096;

/// Why a new connection was refused by a per-IP limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerRefusal {
    /// The address already has `max_connections_per_ip` connections open.
    Connections,
    /// The address opened connections faster than its accept rate allows.
    Rate,
}

/// Counts a connection refused by a per-IP limit (at accept, or once its PROXY header named
/// the client).
pub(super) fn count_refusal(stats: &crate::stats::ThreadStats, why: PeerRefusal, peer: SocketAddr) {
    let (counter, what) = match why {
        PeerRefusal::Connections => (&stats.rejected_per_ip, "per-IP connection limit"),
        PeerRefusal::Rate => (&stats.rejected_rate, "per-IP accept rate"),
    };
    counter.add(1);
    debug!(%peer, "{what} reached; closing new connection");
}

/// The per-IP state of one server.
pub(crate) struct PeerLimits {
    max_per_ip: Option<usize>,
    shards: Vec<Mutex<HashMap<IpAddr, usize>>>,
    hasher: RandomState,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
}

impl PeerLimits {
    /// `None` when neither limit is set (nothing to track).
    pub(crate) fn new(max_per_ip: Option<usize>, rate: Option<(u32, u32)>) -> Option<PeerLimits> {
        if max_per_ip.is_none() && rate.is_none() {
            return None;
        }
        let rate = rate.and_then(|(per_second, burst)| {
            let q = Quota::per_second(NonZeroU32::new(per_second)?)
                .allow_burst(NonZeroU32::new(burst.max(1))?);
            Some(RateLimiter::keyed(q))
        });
        Some(PeerLimits {
            max_per_ip,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            rate,
            checks: AtomicU64::new(0),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// Admits one more connection from `ip`, or says why not. An admitted connection must be
    /// [`release`](PeerLimits::release)d when it closes.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<(), PeerRefusal> {
        if let Some(rate) = &self.rate {
            if self.checks.fetch_add(1, Ordering::Relaxed) % RATE_SWEEP == RATE_SWEEP - 1 {
                rate.retain_recent();
            }
            if rate.check_key(&ip).is_err() {
                return Err(PeerRefusal::Rate);
            }
        }
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let n = shard.entry(ip).or_insert(0);
        if self.max_per_ip.is_some_and(|max| *n >= max) {
            if *n == 0 {
                shard.remove(&ip);
            }
            return Err(PeerRefusal::Connections);
        }
        *n += 1;
        Ok(())
    }

    /// A connection admitted by [`admit`](PeerLimits::admit) closed.
    pub(crate) fn release(&self, ip: IpAddr) {
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = shard.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&ip);
            }
        }
    }

    /// Addresses with at least one open connection.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_count_is_per_address_and_released() {
        let p = PeerLimits::new(Some(2), None).expect("limits");
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(p.admit(a), Ok(()));
        assert_eq!(p.admit(a), Ok(()));
        assert_eq!(p.admit(a), Err(PeerRefusal::Connections));
        // A refusal changes nothing: the two open connections still count.
        assert_eq!(p.admit(a), Err(PeerRefusal::Connections));
        assert_eq!(p.tracked(), 1);
        assert_eq!(p.admit(b), Ok(()));
        p.release(a);
        assert_eq!(p.admit(a), Ok(()));
        p.release(a);
        p.release(a);
        p.release(b);
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn rate_limit_refuses_a_burst_beyond_its_budget() {
        let p = PeerLimits::new(None, Some((1, 3))).expect("limits");
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(p.admit(a), Ok(()));
        }
        assert_eq!(p.admit(a), Err(PeerRefusal::Rate));
        assert_eq!(p.admit(b), Ok(()));
    }

    #[test]
    fn a_limit_of_zero_refuses_and_tracks_nothing() {
        let p = PeerLimits::new(Some(0), None).expect("limits");
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(p.admit(a), Err(PeerRefusal::Connections));
        assert_eq!(p.admit(a), Err(PeerRefusal::Connections));
        assert_eq!(p.tracked(), 0, "a refused address left an entry behind");
    }

    #[test]
    fn no_limits_track_nothing() {
        assert!(PeerLimits::new(None, None).is_none());
    }
}
