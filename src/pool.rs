//! The worker pool: blocking work (a database query, a file, a slow service) off the IO threads.
//!
//! The classic argument: with X IO threads all engaged in blocking work, the communications
//! layer stops responding. Complete commands go through a bounded FIFO queue to a fixed set of
//! named worker threads instead; the IO threads keep serving everyone else.
//!
//! - [`WorkerPool`]: `workers` threads, a queue of at most `queue_capacity` jobs.
//!   [`WorkerPool::try_execute`] never blocks and never grows the queue: when it is full the job
//!   comes back as [`PoolFull`], and the handler holds its frame
//!   ([`Conn::hold_frame`](crate::Conn::hold_frame)): that connection stops reading and the
//!   frame is offered again a few milliseconds later. That is the backpressure.
//! - [`Ordered`]: one connection's jobs run one after another, in submission order, so its
//!   replies go out in request order even when its requests are pipelined and the pool has many
//!   workers. (Chosen over sequencing completions: no reorder buffer, no sequence numbers that
//!   could wrap, and a connection cannot occupy more than one worker.) Writes a job makes through
//!   a [`Work`](crate::Work) (a counted [`ConnectionHandle`](crate::ConnectionHandle)) travel
//!   through the IO thread's FIFO inbox, so they keep that order; dropping the `Work` at the
//!   end of the job tells the engine, after those writes, that the request is answered, so no
//!   close of the connection drops the reply.
//! - Shutdown ([`WorkerPool::shutdown`]): jobs not yet started are dropped, running jobs may
//!   finish until the deadline; the pool never waits for connection handles, which keep nothing
//!   alive.

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool's queue is full; the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker queue full")]
pub struct PoolFull;

struct Shared {
    tx: Sender<Option<Job>>,
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    workers: usize,
    /// Workers running a job now.
    busy: std::sync::atomic::AtomicUsize,
}

/// A fixed number of named worker threads fed by a bounded FIFO queue. Cheap to clone.
#[derive(Clone)]
pub struct WorkerPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.shared.workers)
            .field("queued", &self.shared.tx.len())
            .finish()
    }
}

impl WorkerPool {
    /// Starts `workers` threads named `{name}-{i}` sharing a queue of `queue_capacity` jobs.
    pub fn new(name: &str, workers: usize, queue_capacity: usize) -> io::Result<WorkerPool> {
        let workers = workers.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Option<Job>>(queue_capacity.max(1));
        let shared = Arc::new(Shared {
            tx,
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            workers,
            busy: std::sync::atomic::AtomicUsize::new(0),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx = rx.clone();
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || worker(rx, s))?,
            );
        }
        *shared.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        Ok(WorkerPool { shared })
    }

    /// Queues `job` unless the queue is full. Never blocks.
    pub fn try_execute(&self, job: impl FnOnce() + Send + 'static) -> Result<(), PoolFull> {
        if self.is_stopping() {
            return Err(PoolFull);
        }
        match self.shared.tx.try_send(Some(Box::new(job))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(PoolFull),
        }
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.shared.tx.len()
    }

    /// Workers running a job now.
    pub fn busy(&self) -> usize {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Worker threads in the pool.
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Whether [`WorkerPool::shutdown`] has begun.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Drops queued jobs, lets running ones finish until `deadline` passes, and joins the
    /// workers that finished (a worker still blocked at the deadline is left behind, detached).
    pub fn shutdown(&self, deadline: Duration) {
        let end = Instant::now() + deadline;
        self.shared.stopping.store(true, Ordering::Release);
        for _ in 0..self.shared.workers {
            let left = end.saturating_duration_since(Instant::now());
            if self.shared.tx.send_timeout(None, left).is_err() {
                break;
            }
        }
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in threads {
            while !t.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("a worker is still busy at the drain deadline; leaving it");
            }
        }
    }
}

fn worker(rx: Receiver<Option<Job>>, shared: Arc<Shared>) {
    while let Ok(Some(job)) = rx.recv() {
        if shared.stopping.load(Ordering::Acquire) {
            continue; // drop jobs not yet started
        }
        shared.busy.fetch_add(1, Ordering::Relaxed);
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a worker job panicked; the worker goes on");
        }
        shared.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why [`Ordered::submit`] refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// This connection already has its maximum of jobs waiting.
    #[error("too many jobs pending for this connection")]
    ConnectionFull,
    /// The pool's queue is full.
    #[error("worker queue full")]
    PoolFull,
}

struct OrderedState {
    jobs: VecDeque<Job>,
    running: bool,
}

/// One connection's jobs, run one at a time in submission order on a [`WorkerPool`].
///
/// At most `max_pending` jobs wait per connection and the connection occupies at most one pool
/// slot (one drain job runs its jobs back to back). Keep one in the connection's handler.
pub struct Ordered {
    state: Arc<Mutex<OrderedState>>,
    max_pending: usize,
}

impl Ordered {
    /// A sequencer allowing `max_pending` jobs to wait.
    pub fn new(max_pending: usize) -> Ordered {
        Ordered {
            state: Arc::new(Mutex::new(OrderedState {
                jobs: VecDeque::new(),
                running: false,
            })),
            max_pending: max_pending.max(1),
        }
    }

    /// Queues `job` after this connection's earlier jobs. On `Err` nothing was queued: hold the
    /// frame and offer it again later.
    pub fn submit(
        &self,
        pool: &WorkerPool,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), Busy> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.jobs.len() >= self.max_pending {
            return Err(Busy::ConnectionFull);
        }
        if st.running {
            st.jobs.push_back(Box::new(job));
            return Ok(());
        }
        let state = self.state.clone();
        let stopping = pool.clone();
        let first: Job = Box::new(job);
        pool.try_execute(move || drain(first, &state, &stopping))
            .map_err(|PoolFull| Busy::PoolFull)?;
        st.running = true;
        Ok(())
    }
}

/// Runs `first`, then the connection's queued jobs until none is left.
fn drain(first: Job, state: &Mutex<OrderedState>, pool: &WorkerPool) {
    let mut job = first;
    loop {
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a connection job panicked; its later jobs still run");
        }
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if pool.is_stopping() {
            st.jobs.clear(); // shutdown: drop what has not started
        }
        match st.jobs.pop_front() {
            Some(next) => job = next,
            None => {
                st.running = false;
                return;
            }
        }
    }
}

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
            }),
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
        let buf = i
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(i.capacity));
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
        }
        self.pool.out.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn buffer_pool_never_hands_out_more_than_its_count_and_reuses_returns() {
        let pool = BufferPool::new(2, 1024);
        let mut a = pool.try_get().unwrap();
        a.extend_from_slice(b"hello");
        let b = pool.try_get().unwrap();
        assert!(pool.try_get().is_none());
        assert_eq!(pool.in_use(), 2);
        drop(a);
        let c = pool.try_get().unwrap();
        assert!(c.is_empty(), "a returned buffer comes back cleared");
        assert!(c.capacity() >= 5);
        drop((b, c));
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn ordered_jobs_of_one_connection_run_in_submission_order() {
        let pool = WorkerPool::new("t", 4, 16).unwrap();
        let (tx, rx) = mpsc::channel();
        let ordered = Ordered::new(1000);
        for i in 0..200u32 {
            let tx = tx.clone();
            ordered
                .submit(&pool, move || {
                    if i % 7 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    tx.send(i).unwrap();
                })
                .unwrap();
        }
        let got: Vec<u32> = (0..200)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn a_full_queue_refuses_instead_of_growing() {
        let pool = WorkerPool::new("t", 1, 2).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate_rx));
        let g = gate.clone();
        pool.try_execute(move || {
            let _ = g.lock().unwrap().recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
        // The worker may or may not have taken the first job yet: at most 3 fit.
        let accepted = (0..10).filter(|_| pool.try_execute(|| {}).is_ok()).count();
        assert!(accepted <= 2, "queue grew past its capacity: {accepted}");
        assert_eq!(pool.try_execute(|| {}), Err(PoolFull));
        gate_tx.send(()).unwrap();
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn queued_and_busy_count_what_waits_and_what_runs() {
        let pool = WorkerPool::new("t", 1, 8).unwrap();
        assert_eq!((pool.queued(), pool.busy(), pool.workers()), (0, 0, 1));
        let (started_tx, started_rx) = mpsc::channel();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        pool.try_execute(move || {
            started_tx.send(()).unwrap();
            let _ = gate_rx.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        for i in 0..3 {
            let done_tx = done_tx.clone();
            pool.try_execute(move || done_tx.send(i).unwrap()).unwrap();
        }
        assert_eq!(pool.busy(), 1, "the blocked job runs");
        assert_eq!(pool.queued(), 3, "three jobs wait behind it");
        gate_tx.send(()).unwrap();
        for i in 0..3 {
            assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)).unwrap(), i);
        }
        assert_eq!(pool.queued(), 0);
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn per_connection_limit_refuses_extra_jobs() {
        let pool = WorkerPool::new("t", 1, 4).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let ordered = Ordered::new(2);
        ordered
            .submit(&pool, move || {
                let _ = gate_rx.recv_timeout(Duration::from_secs(10));
            })
            .unwrap();
        assert!(ordered.submit(&pool, || {}).is_ok());
        assert!(ordered.submit(&pool, || {}).is_ok());
        assert_eq!(ordered.submit(&pool, || {}), Err(Busy::ConnectionFull));
        gate_tx.send(()).unwrap();
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn shutdown_drops_queued_jobs_and_returns_by_the_deadline() {
        let pool = WorkerPool::new("t", 1, 64).unwrap();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (started_tx, started_rx) = mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        pool.try_execute(move || {
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            f.store(true, Ordering::SeqCst);
        })
        .unwrap();
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        for _ in 0..50 {
            let ran = ran.clone();
            pool.try_execute(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        }
        let t = Instant::now();
        pool.shutdown(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            finished.load(Ordering::SeqCst),
            "shutdown returned before the running job finished (well within its deadline)"
        );
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "queued jobs ran after shutdown began"
        );
    }
}
