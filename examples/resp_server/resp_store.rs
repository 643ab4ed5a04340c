//! The keyspace of `resp_server`: byte-string keys and values, optional expiry, shared by every
//! IO thread.
//!
//! - **Shards.** 64 `Mutex<Table>`s chosen by a hash of the key: two commands contend only when
//!   their keys land in the same shard, and a lock is held for one map operation (plus, for a
//!   `GET`, the copy of the value into the connection's write queue). There is no global lock.
//! - **One hash per command.** The key is hashed once, with SipHash-1-3 under a random key
//!   ([`KeyHasher`]: std's algorithm in one pass, keyed from a `RandomState`; Redis uses SipHash
//!   too: a peer choosing keys cannot degrade a table); bits
//!   32..38 of that hash choose the shard, and the whole hash finds the slot in the shard's
//!   `hashbrown::HashTable` (which looks at the low bits and the top 7). A `SET` is one probe:
//!   its conditions are checked on the slot it then fills.
//! - **Compact entries.** One allocation per key holds `[expiry (8 bytes, only if set)] key
//!   value`; the table slot is that pointer, the key length and a flag (24 bytes). Lookups
//!   compare the key part, so no key is copied to look it up. A `SET` of a value as long as
//!   the old one (and an expiry as before, or none) is copied over it: no allocation.
//! - **Expiry** is an absolute time in Unix milliseconds. It is checked lazily on every access
//!   (an expired key reads as missing; a write or delete of it removes it), and [`Store::sweep`]
//!   removes expired keys from a few shards at a time, called every 100 ms by a small thread of
//!   the server's own.
//! - **Memory** is estimated per entry (bytes of key and value plus a fixed overhead for the slot
//!   and the allocation), plus the replies queued for clients ([`Store::queue_replies`]: each
//!   connection publishes its queue's size when it moved by 16 KiB, or within 100 ms);
//!   [`Store::over_limit`] compares the
//!   sum with `--maxmemory`, as Redis counts its client output buffers.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use hashbrown::hash_table::{Entry as Slot, HashTable};

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

    /// Puts `value` and `expire_at` in place of this entry's when they take the same room (a
    /// `SET` of a value as long as the old one: no allocation, no free, the cost unchanged);
    /// `false`, nothing changed, otherwise.
    fn overwrite(&mut self, value: &[u8], expire_at: Option<u64>) -> bool {
        if expire_at.is_some() != self.has_expire || value.len() != self.value().len() {
            return false;
        }
        let start = self.head() + self.key_len as usize;
        self.data[start..].copy_from_slice(value);
        if let Some(t) = expire_at {
            self.data[..8].copy_from_slice(&t.to_le_bytes());
        }
        true
    }
}

/// Whether `e` has expired; reads the clock (once, into `now`) only for a key with an expiry.
fn expired(e: &Entry, now: &mut Option<u64>) -> bool {
    e.has_expire && e.expired(*now.get_or_insert_with(now_ms))
}

/// One shard: its entries and the counters kept with them.
#[derive(Default)]
struct Table {
    set: HashTable<Entry>,
    /// Estimated bytes held.
    used: usize,
    /// Entries with an expiry.
    volatile: usize,
}

impl Table {
    /// The live entry for `key` (one lookup): an expired entry reads as missing; it is removed
    /// when the key is written, deleted or swept.
    fn live(&self, k: Key<'_>, now: &mut Option<u64>) -> Option<&Entry> {
        self.set
            .find(k.hash, |e| e.key() == k.bytes)
            .filter(|e| !expired(e, now))
    }

    /// Stores `entry` (its key is `k`'s), replacing the key's entry if there is one.
    fn insert(&mut self, k: Key<'_>, entry: Entry) {
        debug_assert_eq!(entry.key(), k.bytes);
        self.used += entry.cost();
        self.volatile += usize::from(entry.has_expire);
        let rehash = |e: &Entry| k.hasher.hash(e.key());
        match self.set.entry(k.hash, |e| e.key() == k.bytes, rehash) {
            Slot::Occupied(mut slot) => {
                let old = std::mem::replace(slot.get_mut(), entry);
                self.forget(&old);
            }
            Slot::Vacant(slot) => {
                slot.insert(entry);
            }
        }
    }

    fn remove(&mut self, k: Key<'_>) -> Option<Entry> {
        let slot = self.set.find_entry(k.hash, |e| e.key() == k.bytes).ok()?;
        let (old, _) = slot.remove();
        self.forget(&old);
        Some(old)
    }

    fn forget(&mut self, old: &Entry) {
        self.used -= old.cost();
        self.volatile -= usize::from(old.has_expire);
    }
}

/// A key with its hash (computed once per command) and the hasher that made it (for a table
/// that grows).
#[derive(Clone, Copy)]
struct Key<'a> {
    bytes: &'a [u8],
    hash: u64,
    hasher: &'a KeyHasher,
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

/// SipHash-1-3 (the algorithm of std's `RandomState`) of a key under a random 128-bit key, in
/// one pass over the bytes: `RandomState::hash_one` hashes a length prefix first and feeds the
/// bytes through the streaming `Hasher`, which costs about twice as much for a short key.
struct KeyHasher {
    k0: u64,
    k1: u64,
}

impl KeyHasher {
    /// A random key: two outputs of a `RandomState` (itself seeded from the OS), which no
    /// peer can learn.
    fn new() -> KeyHasher {
        let state = RandomState::new();
        KeyHasher {
            k0: state.hash_one(0u64),
            k1: state.hash_one(1u64),
        }
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        let mut v = [
            self.k0 ^ 0x736f_6d65_7073_6575,
            self.k1 ^ 0x646f_7261_6e64_6f6d,
            self.k0 ^ 0x6c79_6765_6e65_7261,
            self.k1 ^ 0x7465_6462_7974_6573,
        ];
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let m = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            v[3] ^= m;
            sip_round(&mut v);
            v[0] ^= m;
        }
        // The last 0-7 bytes, and the length's low byte on top.
        let mut last = (bytes.len() as u64) << 56;
        for (i, &b) in words.remainder().iter().enumerate() {
            last |= u64::from(b) << (8 * i);
        }
        v[3] ^= last;
        sip_round(&mut v);
        v[0] ^= last;
        v[2] ^= 0xff;
        for _ in 0..3 {
            sip_round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// The sharded keyspace; see the module docs.
pub struct Store {
    shards: Box<[Shard]>,
    max_memory: usize,
    /// Bytes of replies queued for clients and not yet sent, as the connections last saw them.
    replies: AtomicUsize,
    /// The keyed SipHash of every key (shard and slot).
    hasher: KeyHasher,
}

/// The shard of a key hash: bits 32..38, which a table's slot index (the low bits of a table
/// under 2^32 slots) and tag (the top 7 bits) do not use, so a shard's keys still spread
/// over its whole table.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
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
            hasher: KeyHasher::new(),
        }
    }

    /// Runs `f` on the shard of `key` under its lock, then publishes the shard's memory use.
    fn with<R>(&self, key: &[u8], f: impl FnOnce(&mut Table, Key<'_>) -> R) -> R {
        let hash = self.hasher.hash(key);
        let k = Key {
            bytes: key,
            hash,
            hasher: &self.hasher,
        };
        let shard = &self.shards[shard_of(hash)];
        let mut table = lock(&shard.table);
        let r = f(&mut table, k);
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
        self.with(key, |t, k| f(t.live(k, &mut None).map(Entry::value)))
    }

    /// `SET`: stores `value` unless a condition fails; `true` if it was stored. One probe of
    /// the table: the conditions are checked on the slot the value then goes to, and a value
    /// as long as the one it replaces (with an expiry, or none, as before) is copied over it.
    pub fn set(&self, key: &[u8], value: &[u8], opts: SetOptions) -> bool {
        self.with(key, |t, k| {
            let rehash = |e: &Entry| k.hasher.hash(e.key());
            match t.set.entry(k.hash, |e| e.key() == key, rehash) {
                Slot::Occupied(mut slot) => {
                    let live = !expired(slot.get(), &mut None);
                    if (opts.only_new && live) || (opts.only_existing && !live) {
                        return false;
                    }
                    let expire_at = match opts.keep_ttl {
                        true if live => slot.get().expire_at(),
                        true => None,
                        false => opts.expire_at,
                    };
                    if slot.get_mut().overwrite(value, expire_at) {
                        return true;
                    }
                    let entry = Entry::new(key, value, expire_at);
                    t.used += entry.cost();
                    t.volatile += usize::from(entry.has_expire);
                    let old = std::mem::replace(slot.get_mut(), entry);
                    t.used -= old.cost();
                    t.volatile -= usize::from(old.has_expire);
                }
                Slot::Vacant(slot) => {
                    if opts.only_existing {
                        return false;
                    }
                    let expire_at = if opts.keep_ttl { None } else { opts.expire_at };
                    let entry = Entry::new(key, value, expire_at);
                    t.used += entry.cost();
                    t.volatile += usize::from(entry.has_expire);
                    slot.insert(entry);
                }
            }
            true
        })
    }

    /// `GETSET`: stores `value` (without expiry) and calls `f` with the old value.
    pub fn get_set<R>(&self, key: &[u8], value: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        self.with(key, |t, k| {
            let old = t.remove(k).filter(|e| !expired(e, &mut None));
            let r = f(old.as_ref().map(Entry::value));
            t.insert(k, Entry::new(key, value, None));
            r
        })
    }

    /// `DEL` of one key: whether it existed.
    pub fn del(&self, key: &[u8]) -> bool {
        self.with(key, |t, k| {
            t.remove(k).is_some_and(|e| !expired(&e, &mut None))
        })
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &[u8]) -> bool {
        self.with(key, |t, k| t.live(k, &mut None).is_some())
    }

    /// `INCRBY`: adds `delta` to the integer value of `key` (missing: 0); its expiry is kept.
    pub fn incr_by(&self, key: &[u8], delta: i64) -> Result<i64, IncrError> {
        self.with(key, |t, k| {
            let (old, expire_at) = match t.live(k, &mut None) {
                None => (0, None),
                Some(e) => (
                    ringport::codec::resp::parse_i64(e.value()).ok_or(IncrError::NotInteger)?,
                    e.expire_at(),
                ),
            };
            let new = old.checked_add(delta).ok_or(IncrError::Overflow)?;
            let text = ringport::codec::resp::ReplyHeader::integer(new);
            let digits = &text.as_bytes()[1..text.as_bytes().len() - 2]; // ":<n>\r\n"
            t.insert(k, Entry::new(key, digits, expire_at));
            Ok(new)
        })
    }

    /// `APPEND`: the new length, or `None` (nothing changed) if it would exceed `max_len`; the
    /// expiry is kept.
    pub fn append(&self, key: &[u8], suffix: &[u8], max_len: usize) -> Option<usize> {
        self.with(key, |t, k| {
            let entry = match t.live(k, &mut None) {
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
            t.insert(k, entry);
            Some(len)
        })
    }

    /// `EXPIRE`/`PEXPIRE` to an absolute time (Unix ms; at or before now deletes the key):
    /// whether the key existed.
    pub fn expire_at(&self, key: &[u8], at_ms: i64) -> bool {
        self.with(key, |t, k| {
            let mut now = None;
            let Some(e) = t.live(k, &mut now) else {
                return false;
            };
            let now = *now.get_or_insert_with(now_ms);
            match u64::try_from(at_ms) {
                Ok(at) if at > now => {
                    let entry = Entry::new(key, e.value(), Some(at));
                    t.insert(k, entry);
                }
                _ => {
                    t.remove(k);
                }
            }
            true
        })
    }

    /// `TTL`/`PTTL` in ms: `None` if the key is missing, `Some(None)` if it never expires.
    pub fn ttl_ms(&self, key: &[u8]) -> Option<Option<u64>> {
        self.with(key, |t, k| {
            let mut now = None;
            let e = t.live(k, &mut now)?;
            let now = *now.get_or_insert_with(now_ms);
            Some(e.expire_at().map(|at| at.saturating_sub(now)))
        })
    }

    /// `PERSIST`: whether an expiry was removed.
    pub fn persist(&self, key: &[u8]) -> bool {
        self.with(key, |t, k| {
            let Some(e) = t.live(k, &mut None) else {
                return false;
            };
            if !e.has_expire {
                return false;
            }
            let entry = Entry::new(key, e.value(), None);
            t.insert(k, entry);
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
