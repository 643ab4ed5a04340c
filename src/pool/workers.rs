//! The worker threads and [`WorkerPool`], the handle that feeds them: admission of plain jobs
//! and reply jobs, the worker loop (one job of a connection, then the back of the line), the
//! counters, and shutdown.

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::queue::{lock_lane, Entry, Lane, Queue, Task};
use crate::budget::Pressure;
use crate::conn::Conn;
use crate::handle::Work;

/// The pool's queue is full; the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker queue full")]
pub struct PoolFull;

pub(super) struct Shared {
    queue: Mutex<Queue>,
    pub(super) wake: Condvar,
    pub(super) capacity: usize,
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    workers: usize,
    /// Workers running a job now.
    busy: AtomicUsize,
    /// Jobs skipped because their connection was gone before they started.
    cancelled: AtomicU64,
    /// Jobs refused because the memory budget was at its refuse level.
    budget_refusals: AtomicU64,
}

impl Shared {
    /// Whether a job for `conn` is refused for the memory budget (counted).
    pub(super) fn refused_for_budget(&self, conn: &Conn<'_>) -> bool {
        let refused = conn.budget().pressure() >= Pressure::Refuse;
        if refused {
            self.budget_refusals.fetch_add(1, Ordering::Relaxed);
        }
        refused
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fixed number of named worker threads fed by a bounded, fair queue. Cheap to clone.
#[derive(Clone)]
pub struct WorkerPool {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.shared.workers)
            .field("queued", &self.queued())
            .finish()
    }
}

impl WorkerPool {
    /// Starts `workers` threads named `{name}-{i}`; at most `queue_capacity` jobs wait.
    pub fn new(name: &str, workers: usize, queue_capacity: usize) -> io::Result<WorkerPool> {
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                ready: VecDeque::new(),
                waiting: 0,
                stopping: false,
                line: VecDeque::new(),
            }),
            wake: Condvar::new(),
            capacity: queue_capacity.max(1),
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            workers,
            busy: AtomicUsize::new(0),
            cancelled: AtomicU64::new(0),
            budget_refusals: AtomicU64::new(0),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&s));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The threads already started stop (they hold the pool alive).
                    *shared.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
                    WorkerPool { shared }.shutdown(Duration::ZERO);
                    return Err(e);
                }
            }
        }
        *shared.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        Ok(WorkerPool { shared })
    }

    /// Queues `job` unless the queue is full. Never blocks.
    pub fn try_execute(&self, job: impl FnOnce() + Send + 'static) -> Result<(), PoolFull> {
        let mut q = self.shared.lock();
        if q.stopping || !q.admit(None, self.shared.capacity, Instant::now()) {
            return Err(PoolFull);
        }
        self.push(&mut q, Entry::Job(Task::Plain(Box::new(job))));
        Ok(())
    }

    /// Queues `job` to answer a request of `conn`, unless the queue is full. The job gets the
    /// connection's [`Work`], made only if the job is accepted: on `Err` nothing was made or
    /// queued, and the handler holds its frame ([`Conn::hold_frame`]). A job whose connection
    /// is gone (reset) before it starts is skipped. For several requests of one connection,
    /// use [`Ordered::submit_work`](super::Ordered::submit_work) (replies in request order).
    pub fn try_execute_work(
        &self,
        conn: &mut Conn<'_>,
        job: impl FnOnce(Work) + Send + 'static,
    ) -> Result<(), PoolFull> {
        if self.shared.refused_for_budget(conn) {
            return Err(PoolFull);
        }
        let mut q = self.shared.lock();
        if q.stopping || !q.admit(None, self.shared.capacity, Instant::now()) {
            return Err(PoolFull);
        }
        let task = Task::Reply(Box::new(job), conn.work());
        self.push(&mut q, Entry::Job(task));
        Ok(())
    }

    /// Adds one waiting job (`entry` is a plain job or a connection not yet scheduled).
    fn push(&self, q: &mut Queue, entry: Entry) {
        q.waiting += 1;
        debug_assert!(
            q.waiting <= self.shared.capacity,
            "queue grew past its capacity"
        );
        q.ready.push_back(entry);
        self.shared.wake.notify_one();
    }

    /// Jobs refused so far because the memory budget was at its refuse level (the handler
    /// held its frame, as for a full queue).
    pub fn budget_refusals(&self) -> u64 {
        self.shared.budget_refusals.load(Ordering::Relaxed)
    }

    /// Jobs waiting (every connection's together).
    pub fn queued(&self) -> usize {
        self.shared.lock().waiting
    }

    /// Workers running a job now.
    pub fn busy(&self) -> usize {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Worker threads in the pool.
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Jobs skipped because their connection was gone (reset, aborted) before they started.
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::Relaxed)
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
        let dropped = {
            let mut q = self.shared.lock();
            q.stopping = true;
            q.waiting = 0;
            let ready = std::mem::take(&mut q.ready);
            // A connection's jobs go too; one running now finds its lane empty.
            let lanes: Vec<VecDeque<Task>> = ready
                .iter()
                .filter_map(|e| match e {
                    Entry::Lane(l) => Some(std::mem::take(&mut lock_lane(l).jobs)),
                    Entry::Job(_) => None,
                })
                .collect();
            self.shared.wake.notify_all();
            (ready, lanes)
        };
        drop(dropped); // outside the lock: dropping a `Work` posts to its IO thread
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

/// Takes the next runnable job: a plain one, or the next job of the connection first in line
/// (skipping, and counting, the jobs of a connection that is gone). `None`: the pool stops.
fn next_task(shared: &Shared) -> Option<(Task, Option<Lane>, Vec<Task>)> {
    let mut q = shared.lock();
    loop {
        if q.stopping {
            return None;
        }
        let Some(entry) = q.ready.pop_front() else {
            q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        match entry {
            Entry::Job(task) => {
                q.waiting -= 1;
                if task.is_orphan() {
                    shared.cancelled.fetch_add(1, Ordering::Relaxed);
                    drop(q);
                    drop(task);
                    q = shared.lock();
                    continue;
                }
                return Some((task, None, Vec::new()));
            }
            Entry::Lane(lane) => {
                let mut l = lock_lane(&lane);
                debug_assert!(l.scheduled, "a lane in the ready queue is scheduled");
                let mut orphans = Vec::new();
                while let Some(task) = l.jobs.pop_front() {
                    q.waiting -= 1;
                    if task.is_orphan() {
                        orphans.push(task);
                        continue;
                    }
                    l.running = true;
                    drop(l);
                    return Some((task, Some(lane), orphans));
                }
                l.scheduled = false; // nothing left but orphans
                drop(l);
                shared
                    .cancelled
                    .fetch_add(orphans.len() as u64, Ordering::Relaxed);
                if !orphans.is_empty() {
                    tracing::debug!(
                        skipped = orphans.len(),
                        "jobs of a closed connection skipped"
                    );
                }
                drop(q);
                drop(orphans);
                q = shared.lock();
            }
        }
    }
}

fn worker(shared: &Shared) {
    while let Some((task, lane, orphans)) = next_task(shared) {
        if !orphans.is_empty() {
            shared
                .cancelled
                .fetch_add(orphans.len() as u64, Ordering::Relaxed);
            tracing::debug!(
                skipped = orphans.len(),
                "jobs of a closed connection skipped"
            );
            drop(orphans);
        }
        shared.busy.fetch_add(1, Ordering::Relaxed);
        if catch_unwind(AssertUnwindSafe(|| task.run())).is_err() {
            tracing::error!("a worker job panicked; the worker goes on");
        }
        shared.busy.fetch_sub(1, Ordering::Relaxed);
        let Some(lane) = lane else { continue };
        // Round robin: the connection goes to the back of the line if it has more jobs.
        let mut q = shared.lock();
        let mut l = lock_lane(&lane);
        l.running = false;
        if q.stopping {
            let left = std::mem::take(&mut l.jobs);
            l.scheduled = false;
            drop((l, q));
            drop(left);
            continue;
        }
        if l.jobs.is_empty() {
            l.scheduled = false;
        } else {
            drop(l);
            q.ready.push_back(Entry::Lane(lane));
            shared.wake.notify_one();
        }
    }
}
