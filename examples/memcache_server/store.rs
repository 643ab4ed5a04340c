//! The cache: keys to items in shards behind mutexes, shared by every IO thread. Expiry and
//! `flush_all` are checked lazily (an expired item is dropped when it is next touched), and
//! the stored bytes are bounded (`--memory-limit`): a store over it answers
//! `SERVER_ERROR out of memory storing object` (memcached evicts the least recently used
//! items instead).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::protocol::{parse_u64, StoreOp};

const SHARDS: usize = 16;
/// An exptime above 30 days is a Unix time (memcached's `REALTIME_MAXDELTA`).
const MAX_DELTA: i64 = 60 * 60 * 24 * 30;

pub struct Item {
    pub flags: u32,
    pub data: Vec<u8>,
    pub cas: u64,
    expires: Option<Instant>,
    stored: Instant,
}

pub enum Outcome {
    Stored,
    NotStored,
    Exists,
    NotFound,
    NoMemory,
}

pub enum Arith {
    Value(u64),
    NotFound,
    NonNumeric,
}

pub struct Store {
    shards: Vec<Mutex<HashMap<Vec<u8>, Item>>>,
    next_cas: AtomicU64,
    bytes: AtomicUsize,
    limit: usize,
    /// A delayed `flush_all`: items stored before it are gone once it has passed.
    flush_at: Mutex<Option<Instant>>,
}

/// When an item with memcached's `exptime` expires (`None`: never).
fn expiry(exptime: i64, now: Instant) -> Option<Instant> {
    match exptime {
        0 => None,
        e if e < 0 => Some(now),
        e if e <= MAX_DELTA => Some(now + Duration::from_secs(e as u64)),
        e => {
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let left = (e as u64).saturating_sub(unix.as_secs());
            Some(now + Duration::from_secs(left))
        }
    }
}

impl Store {
    pub fn new(limit: usize) -> Self {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_cas: AtomicU64::new(1),
            bytes: AtomicUsize::new(0),
            limit,
            flush_at: Mutex::new(None),
        }
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Item>> {
        let h = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.shards[h as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self, item: &Item, now: Instant) -> bool {
        let flushed = self
            .flush_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| now >= t && item.stored <= t);
        !flushed && item.expires.is_none_or(|t| now < t)
    }

    /// Runs `f` on the live item under `key` (dropping it if it has expired).
    pub fn with<R>(&self, key: &[u8], f: impl FnOnce(Option<&mut Item>) -> R) -> R {
        let now = Instant::now();
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|i| !self.live(i, now)) {
            if let Some(old) = shard.remove(key) {
                self.bytes.fetch_sub(old.data.len() + key.len(), Relaxed);
            }
        }
        f(shard.get_mut(key))
    }

    pub fn store(&self, op: StoreOp, key: &[u8], flags: u32, exptime: i64, data: &[u8]) -> Outcome {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let current = shard.get(key).filter(|i| self.live(i, now));
        let data = match (op, current) {
            (StoreOp::Add, Some(_)) => return Outcome::NotStored,
            (StoreOp::Replace | StoreOp::Append | StoreOp::Prepend, None) => {
                return Outcome::NotStored
            }
            (StoreOp::Cas(_), None) => return Outcome::NotFound,
            (StoreOp::Cas(cas), Some(i)) if i.cas != cas => return Outcome::Exists,
            (StoreOp::Append, Some(i)) => [&i.data[..], data].concat(),
            (StoreOp::Prepend, Some(i)) => [data, &i.data[..]].concat(),
            _ => data.to_vec(),
        };
        let (flags, expires) = match (op, current) {
            // append/prepend keep the item's flags and expiry.
            (StoreOp::Append | StoreOp::Prepend, Some(i)) => (i.flags, i.expires),
            _ => (flags, expiry(exptime, now)),
        };
        let old = shard.get(key).map_or(0, |i| i.data.len() + key.len());
        let new = data.len() + key.len();
        if self.bytes.load(Relaxed) + new > self.limit + old {
            return Outcome::NoMemory;
        }
        self.bytes.fetch_add(new, Relaxed);
        self.bytes.fetch_sub(old, Relaxed);
        let cas = self.next_cas.fetch_add(1, Relaxed);
        let item = Item {
            flags,
            data,
            cas,
            expires,
            stored: now,
        };
        shard.insert(key.to_vec(), item);
        Outcome::Stored
    }

    pub fn delete(&self, key: &[u8]) -> bool {
        let found = self.with(key, |i| i.is_some());
        if let Some(old) = self.shard(key).remove(key) {
            self.bytes.fetch_sub(old.data.len() + key.len(), Relaxed);
        }
        found
    }

    /// incr/decr as memcached does them: wrapping up, stopping at 0 down; a shorter result
    /// is padded with spaces in place, a longer one replaces the value. Either takes a new cas.
    pub fn arith(&self, key: &[u8], incr: bool, delta: u64) -> Arith {
        self.with(key, |item| {
            let Some(item) = item else {
                return Arith::NotFound;
            };
            let Some(v) = Some(&item.data)
                .filter(|d| !d.is_empty())
                .and_then(|d| parse_u64(d))
            else {
                return Arith::NonNumeric;
            };
            let v = if incr {
                v.wrapping_add(delta)
            } else {
                v.saturating_sub(delta)
            };
            let digits = v.to_string().into_bytes();
            if digits.len() <= item.data.len() {
                item.data.fill(b' ');
                item.data[..digits.len()].copy_from_slice(&digits);
            } else {
                self.bytes
                    .fetch_add(digits.len() - item.data.len(), Relaxed);
                item.data = digits;
            }
            item.cas = self.next_cas.fetch_add(1, Relaxed);
            Arith::Value(v)
        })
    }

    pub fn touch(&self, key: &[u8], exptime: i64) -> bool {
        self.with(key, |item| {
            item.map(|i| i.expires = expiry(exptime, Instant::now()))
                .is_some()
        })
    }

    /// `flush_all [delay]`: everything now (taking a cas id, as memcached does), or what is
    /// stored until `delay` seconds from now, once they have passed.
    pub fn flush_all(&self, delay: i64) {
        if delay > 0 {
            let at = expiry(delay, Instant::now());
            *self.flush_at.lock().unwrap_or_else(|e| e.into_inner()) = at;
            return;
        }
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        self.bytes.store(0, Relaxed);
        self.next_cas.fetch_add(1, Relaxed);
    }
}
