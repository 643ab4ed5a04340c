//! [`BufferPool`]: a bounded set of transfer buffers, charged to the memory budget when made
//! with one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::budget::Budget;

/// A bounded pool of transfer buffers (for frames too large for one IO buffer).
///
/// At most `count` buffers exist at once; [`BufferPool::try_get`] returns `None` when all are
/// out, and the caller applies backpressure (holds its frame) instead of allocating more. A
/// [`PooledBuf`] goes back to the pool when dropped, on whatever thread: a buffer cannot leak
/// out of the count.
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<BufferPoolInner>,
}

struct BufferPoolInner {
    free: Mutex<Vec<Vec<u8>>>,
    out: std::sync::atomic::AtomicUsize,
    count: usize,
    capacity: usize,
    /// Charged `capacity` for every buffer allocated and not yet dropped.
    budget: Option<Budget>,
}

impl Drop for BufferPoolInner {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            let free = self.free.get_mut().unwrap_or_else(|e| e.into_inner()).len();
            b.release(free * self.capacity);
        }
    }
}

impl BufferPool {
    /// Up to `count` buffers of `capacity` bytes each (allocated on first use).
    pub fn new(count: usize, capacity: usize) -> BufferPool {
        BufferPool {
            inner: Arc::new(BufferPoolInner {
                free: Mutex::new(Vec::new()),
                out: std::sync::atomic::AtomicUsize::new(0),
                count,
                capacity,
                budget: None,
            }),
        }
    }

    /// Charges every buffer this pool allocates to `budget` (the engine's:
    /// [`Engine::budget`](crate::Engine::budget)) while it exists; past the budget's refuse
    /// level none is allocated ([`BufferPool::try_get`] says `None`). Call before the first
    /// `try_get`.
    pub fn with_budget(self, budget: Budget) -> BufferPool {
        let inner = BufferPoolInner {
            free: Mutex::new(Vec::new()),
            out: std::sync::atomic::AtomicUsize::new(0),
            count: self.inner.count,
            capacity: self.inner.capacity,
            budget: Some(budget),
        };
        debug_assert_eq!(
            self.inner.out.load(Ordering::Acquire),
            0,
            "buffers already out"
        );
        BufferPool {
            inner: Arc::new(inner),
        }
    }

    /// An empty buffer, or `None` if all `count` are in use.
    pub fn try_get(&self) -> Option<PooledBuf> {
        let i = &self.inner;
        i.out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < i.count).then_some(n + 1)
            })
            .ok()?;
        let free = i.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let buf = match free {
            Some(buf) => buf,
            None => {
                if let Some(b) = &i.budget {
                    if !b.try_charge(i.capacity) {
                        i.out.fetch_sub(1, Ordering::AcqRel);
                        return None;
                    }
                }
                Vec::with_capacity(i.capacity)
            }
        };
        Some(PooledBuf {
            buf,
            pool: self.inner.clone(),
        })
    }

    /// Buffers in use now.
    pub fn in_use(&self) -> usize {
        self.inner.out.load(Ordering::Acquire)
    }
}

/// A buffer from a [`BufferPool`]; returns to it when dropped.
pub struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<BufferPoolInner>,
}

impl std::ops::Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() <= self.pool.capacity {
            buf.clear();
            self.pool
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buf);
        } else if let Some(b) = &self.pool.budget {
            b.release(self.pool.capacity); // grown past the pool's size: freed, not kept
        }
        self.pool.out.fetch_sub(1, Ordering::AcqRel);
    }
}
