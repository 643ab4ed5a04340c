//! The keyspace of `resp_server`: byte-string keys and values, optional expiry, shared by every
//! IO thread.
//!
//! - **Shards.** 64 `Mutex<Table>`s chosen by a hash of the key: two commands contend only when
//!   their keys land in the same shard, and a lock is held for one map operation (plus, for a
//!   `GET`, the copy of the value into the connection's write queue). There is no global lock.
//! - **Compact entries.** One allocation per key holds `[expiry (8 bytes, only if set)] key
//!   value`; the table slot is that pointer, the key length and a flag (24 bytes). Lookups
//!   borrow the key part (`Borrow<[u8]>`), so no key is copied to look it up.
//! - **Expiry** is an absolute time in Unix milliseconds. It is checked lazily on every access
//!   (an expired key reads as missing; a write or delete of it removes it), and [`Store::sweep`]
//!   removes expired keys from a few shards at a time, called every 100 ms by a small thread of
//!   the server's own.
//! - **Memory** is estimated per entry (bytes of key and value plus a fixed overhead for the slot
//!   and the allocation), plus the replies queued for clients ([`Store::queue_replies`]: each
//!   connection publishes its queue's size as it changes); [`Store::over_limit`] compares the
//!   sum with `--maxmemory`, as Redis counts its client output buffers.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Number of shards (a power of two).
const SHARDS: usize = 64;
/// Estimated bytes per entry beyond its key and value: the slot (24), the control byte and the
/// table's spare capacity (~16), the allocator's header (16).
pub const ENTRY_OVERHEAD: usize = 56;

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One key, its value and its expiry, in one allocation.
struct Entry {
    /// `[expire_at_ms as 8 LE bytes, if has_expire] ++ key ++ value`.
    data: Box<[u8]>,
    key_len: u32,
    has_expire: bool,
}

impl Entry {
    fn new(key: &[u8], value: &[u8], expire_at: Option<u64>) -> Entry {
        let head = if expire_at.is_some() { 8 } else { 0 };
        let mut data = Vec::with_capacity(head + key.len() + value.len());
        if let Some(t) = expire_at {
            data.extend_from_slice(&t.to_le_bytes());
        }
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        Entry {
            data: data.into_boxed_slice(),
            key_len: u32::try_from(key.len()).expect("keys are limited to 4 GiB"),
            has_expire: expire_at.is_some(),
        }
    }

    fn head(&self) -> usize {
        if self.has_expire {
            8
        } else {
            0
        }
    }

    fn key(&self) -> &[u8] {
        &self.data[self.head()..self.head() + self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.data[self.head() + self.key_len as usize..]
    }

    fn expire_at(&self) -> Option<u64> {
        let t: [u8; 8] = self.data.get(..8)?.try_into().ok()?;
        self.has_expire.then(|| u64::from_le_bytes(t))
    }

    fn expired(&self, now: u64) -> bool {
        self.expire_at().is_some_and(|t| t <= now)
    }

    fn cost(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// Whether `e` has expired; reads the clock (once, into `now`) only for a key with an expiry.
fn expired(e: &Entry, now: &mut Option<u64>) -> bool {
    e.has_expire && e.expired(*now.get_or_insert_with(now_ms))
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Entry {}
impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state); // the same bytes `<[u8]>::hash` feeds: lookups by `&[u8]` work
    }
}
impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

/// One shard: its entries and the counters kept with them.
#[derive(Default)]
struct Table {
    set: HashSet<Entry>,
    /// Estimated bytes held.
    used: usize,
    /// Entries with an expiry.
    volatile: usize,
}

impl Table {
    /// The live entry for `key` (one lookup): an expired entry reads as missing; it is removed
    /// when the key is written, deleted or swept.
    fn live(&self, key: &[u8], now: &mut Option<u64>) -> Option<&Entry> {
        self.set.get(key).filter(|e| !expired(e, now))
    }

    fn insert(&mut self, entry: Entry) {
        self.used += entry.cost();
        self.volatile += usize::from(entry.has_expire);
        if let Some(old) = self.set.replace(entry) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let old = self.set.take(key)?;
        self.forget(&old);
        Some(old)
    }

    fn forget(&mut self, old: &Entry) {
        self.used -= old.cost();
        self.volatile -= usize::from(old.has_expire);
    }
}

struct Shard {
    table: Mutex<Table>,
    /// `table.used`, readable without the lock (for the memory limit).
    used: AtomicUsize,
}

/// Why `INCR` and friends refused.
#[derive(Debug, PartialEq, Eq)]
pub enum IncrError {
    /// The value is not a 64-bit decimal integer.
    NotInteger,
    /// The result would not fit in 64 bits.
    Overflow,
}

/// `SET`'s conditions and expiry.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetOptions {
    /// Absolute expiry in Unix ms (`EX`, `PX`).
    pub expire_at: Option<u64>,
    /// Keep the key's current expiry (`KEEPTTL`).
    pub keep_ttl: bool,
    /// Only if the key does not exist (`NX`).
    pub only_new: bool,
    /// Only if the key exists (`XX`).
    pub only_existing: bool,
}

/// The sharded keyspace; see the module docs.
pub struct Store {
    shards: Box<[Shard]>,
    max_memory: usize,
    /// Bytes of replies queued for clients and not yet sent, as the connections last saw them.
    replies: AtomicUsize,
}

/// A cheap hash of the key for choosing its shard (the tables use SipHash with a random key
/// themselves, so a peer choosing keys can skew the shards but not degrade a table).
fn shard_hash(key: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in key.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x5851_f42d_4c95_7f2d);
    }
    (h >> 58) as usize % SHARDS
}

impl Store {
    /// An empty keyspace; `max_memory` 0 means no limit.
    pub fn new(max_memory: usize) -> Store {
        Store {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    table: Mutex::new(Table::default()),
                    used: AtomicUsize::new(0),
                })
                .collect(),
            max_memory,
            replies: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the shard of `key` under its lock, then publishes the shard's memory use.
    fn with<R>(&self, key: &[u8], f: impl FnOnce(&mut Table) -> R) -> R {
        let shard = &self.shards[shard_hash(key)];
        let mut table = lock(&shard.table);
        let r = f(&mut table);
        shard.used.store(table.used, Ordering::Relaxed);
        r
    }

    /// Estimated bytes held by keys and values.
    pub fn data_memory(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.used.load(Ordering::Relaxed))
            .sum()
    }

    /// Bytes of replies queued for clients (Redis's `mem_clients_normal`).
    pub fn reply_memory(&self) -> usize {
        self.replies.load(Ordering::Relaxed)
    }

    /// What `--maxmemory` counts: keys and values, and the replies queued for clients.
    pub fn used_memory(&self) -> usize {
        self.data_memory().saturating_add(self.reply_memory())
    }

    /// A connection's queued replies went from `before` to `now` bytes.
    pub fn queue_replies(&self, before: usize, now: usize) {
        if now > before {
            self.replies.fetch_add(now - before, Ordering::Relaxed);
        } else {
            let gone = before - now;
            let prev = self.replies.fetch_sub(gone, Ordering::Relaxed);
            debug_assert!(prev >= gone, "more replies unqueued than queued");
        }
    }

    /// Whether a command that adds data must be refused (`--maxmemory` set and exceeded).
    pub fn over_limit(&self) -> bool {
        self.max_memory != 0 && self.used_memory() > self.max_memory
    }

    /// The configured limit (0: none).
    pub fn max_memory(&self) -> usize {
        self.max_memory
    }

    /// Calls `f` with the value of `key` (`None` if missing), under the shard lock: copy what
    /// you need and return quickly.
    pub fn get<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        self.with(key, |t| f(t.live(key, &mut None).map(Entry::value)))
    }

    /// `SET`: stores `value` unless a condition fails; `true` if it was stored.
    pub fn set(&self, key: &[u8], value: &[u8], opts: SetOptions) -> bool {
        self.with(key, |t| {
            let mut now = None;
            let current = t.live(key, &mut now);
            if (opts.only_new && current.is_some()) || (opts.only_existing && current.is_none()) {
                return false;
            }
            let expire_at = if opts.keep_ttl {
                current.and_then(Entry::expire_at)
            } else {
                opts.expire_at
            };
            t.insert(Entry::new(key, value, expire_at));
            true
        })
    }

    /// `GETSET`: stores `value` (without expiry) and calls `f` with the old value.
    pub fn get_set<R>(&self, key: &[u8], value: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        self.with(key, |t| {
            let old = t.remove(key).filter(|e| !expired(e, &mut None));
            let r = f(old.as_ref().map(Entry::value));
            t.insert(Entry::new(key, value, None));
            r
        })
    }

    /// `DEL` of one key: whether it existed.
    pub fn del(&self, key: &[u8]) -> bool {
        self.with(key, |t| {
            t.remove(key).is_some_and(|e| !expired(&e, &mut None))
        })
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &[u8]) -> bool {
        self.with(key, |t| t.live(key, &mut None).is_some())
    }

    /// `INCRBY`: adds `delta` to the integer value of `key` (missing: 0); its expiry is kept.
    pub fn incr_by(&self, key: &[u8], delta: i64) -> Result<i64, IncrError> {
        self.with(key, |t| {
            let (old, expire_at) = match t.live(key, &mut None) {
                None => (0, None),
                Some(e) => (
                    ringport::codec::resp::parse_i64(e.value()).ok_or(IncrError::NotInteger)?,
                    e.expire_at(),
                ),
            };
            let new = old.checked_add(delta).ok_or(IncrError::Overflow)?;
            let text = ringport::codec::resp::ReplyHeader::integer(new);
            let digits = &text.as_bytes()[1..text.as_bytes().len() - 2]; // ":<n>\r\n"
            t.insert(Entry::new(key, digits, expire_at));
            Ok(new)
        })
    }

    /// `APPEND`: the new length, or `None` (nothing changed) if it would exceed `max_len`; the
    /// expiry is kept.
    pub fn append(&self, key: &[u8], suffix: &[u8], max_len: usize) -> Option<usize> {
        self.with(key, |t| {
            let entry = match t.live(key, &mut None) {
                None => Entry::new(key, suffix, None),
                Some(e) if e.value().len() + suffix.len() > max_len => return None,
                Some(e) => {
                    let mut value = Vec::with_capacity(e.value().len() + suffix.len());
                    value.extend_from_slice(e.value());
                    value.extend_from_slice(suffix);
                    Entry::new(key, &value, e.expire_at())
                }
            };
            let len = entry.value().len();
            t.insert(entry);
            Some(len)
        })
    }

    /// `EXPIRE`/`PEXPIRE` to an absolute time (Unix ms; at or before now deletes the key):
    /// whether the key existed.
    pub fn expire_at(&self, key: &[u8], at_ms: i64) -> bool {
        self.with(key, |t| {
            let mut now = None;
            let Some(e) = t.live(key, &mut now) else {
                return false;
            };
            let now = *now.get_or_insert_with(now_ms);
            match u64::try_from(at_ms) {
                Ok(at) if at > now => {
                    let entry = Entry::new(key, e.value(), Some(at));
                    t.insert(entry);
                }
                _ => {
                    t.remove(key);
                }
            }
            true
        })
    }

    /// `TTL`/`PTTL` in ms: `None` if the key is missing, `Some(None)` if it never expires.
    pub fn ttl_ms(&self, key: &[u8]) -> Option<Option<u64>> {
        self.with(key, |t| {
            let mut now = None;
            let e = t.live(key, &mut now)?;
            let now = *now.get_or_insert_with(now_ms);
            Some(e.expire_at().map(|at| at.saturating_sub(now)))
        })
    }

    /// `PERSIST`: whether an expiry was removed.
    pub fn persist(&self, key: &[u8]) -> bool {
        self.with(key, |t| {
            let Some(e) = t.live(key, &mut None) else {
                return false;
            };
            if !e.has_expire {
                return false;
            }
            let entry = Entry::new(key, e.value(), None);
            t.insert(entry);
            true
        })
    }

    /// Keys stored (keys expired but not yet removed included, as in Redis's `DBSIZE`) and how
    /// many of them have an expiry.
    pub fn len(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(keys, volatile), s| {
            let t = lock(&s.table);
            (keys + t.set.len(), volatile + t.volatile)
        })
    }

    /// `FLUSHALL`: removes every key (tables shrink back).
    pub fn flush(&self) {
        for s in self.shards.iter() {
            let mut t = lock(&s.table);
            *t = Table::default();
            s.used.store(0, Ordering::Relaxed);
        }
    }

    /// Removes the expired keys of `count` shards, starting at shard `from` (wrapping); returns
    /// the shard to start from next time and the keys removed. Shards without expiring keys are
    /// skipped without a scan; each scan holds one shard's lock for one pass over it.
    pub fn sweep(&self, from: usize, count: usize) -> (usize, usize) {
        let now = now_ms();
        let mut removed = 0;
        for i in 0..count {
            let shard = &self.shards[(from + i) % SHARDS];
            let mut t = lock(&shard.table);
            if t.volatile == 0 {
                continue;
            }
            let before = t.set.len();
            let (mut freed, mut expiring) = (0, 0);
            t.set.retain(|e| {
                if e.expired(now) {
                    freed += e.cost();
                    expiring += 1;
                    false
                } else {
                    true
                }
            });
            t.used -= freed;
            t.volatile -= expiring;
            removed += before - t.set.len();
            shard.used.store(t.used, Ordering::Relaxed);
        }
        ((from + count) % SHARDS, removed)
    }
}

/// Locks a shard; a panic in another thread while it held the lock does not poison the keyspace
/// (every update leaves the table consistent before anything that can panic).
fn lock(m: &Mutex<Table>) -> MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
