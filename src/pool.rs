//! The worker pool: blocking work (a database query, a file, a slow service) off the IO threads.
//!
//! The classic argument: with X IO threads all engaged in blocking work, the communications
//! layer stops responding. Complete commands go through a bounded queue to a fixed set of
//! named worker threads instead; the IO threads keep serving everyone else.
//!
//! - [`WorkerPool`]: `workers` threads, at most `queue_capacity` jobs waiting (all connections
//!   together). [`WorkerPool::try_execute`] never blocks and never grows the queue: when it is
//!   full the job comes back as [`PoolFull`], and the handler holds its frame
//!   ([`Conn::hold_frame`]): that connection stops reading and the frame is offered again a few
//!   milliseconds later. That is the backpressure.
//! - [`Ordered`]: one connection's jobs run one after another, in submission order, so its
//!   replies go out in request order even when its requests are pipelined and the pool has many
//!   workers. (Chosen over sequencing completions: no reorder buffer, no sequence numbers that
//!   could wrap, and a connection cannot occupy more than one worker.)
//! - Fairness: the shared queue holds at most one entry per connection (its next job), served
//!   round robin. A worker runs ONE job of a connection, then puts the connection back at the
//!   end of the queue if it has more: a connection's backlog (64 pipelined `SLEEP`s) never holds
//!   a worker, and with every worker busy, another connection's command waits for at most one
//!   job of each connection ahead of it, not for their backlogs.
//! - Fair admission to a full queue: a connection refused because the queue is full takes a
//!   place in a FIFO waiting line, and freed room goes to that line in order (a connection not
//!   in it is admitted only while there is room beyond everyone in it). Without it, the
//!   connections that retry first win every freed slot: with `--queue 16` and 40 connections
//!   pipelining `SLEEP 200`, a `PING` waited 14-17 s (the whole backlog); with it, a round of
//!   the line. A place not claimed again within [`ADMISSION_HOLD`] (its connection closed or
//!   stopped retrying) is given up, so the line never stalls on a connection that left.
//! - Replies: [`Ordered::submit_work`] and [`WorkerPool::try_execute_work`] hand the job a
//!   [`Work`] (a counted [`ConnectionHandle`](crate::ConnectionHandle)) made only once the job
//!   is accepted, so a refused job costs the IO thread nothing (no `Work` made and dropped, no
//!   inbox message). Its writes travel through the IO thread's FIFO inbox, so they keep their
//!   order; dropping the `Work` at the end of the job tells the engine, after those writes, that
//!   the request is answered, so no close of the connection drops the reply. A job whose
//!   connection is gone (reset, aborted) before it starts is skipped, not run, and counted
//!   ([`WorkerPool::cancelled`]).
//! - Under the memory budget: from the budget's [`Refuse`](crate::budget::Pressure::Refuse)
//!   level [`WorkerPool::try_execute_work`] and [`Ordered::submit_work`] refuse new jobs as a
//!   full queue does (the handler holds its frame and stops reading), counted by
//!   [`WorkerPool::budget_refusals`]: a job's reply would be charged only once written, too
//!   late. A [`BufferPool`] made [`with_budget`](BufferPool::with_budget) charges each buffer
//!   it allocates (`try_charge`: none past the refuse level; `try_get` says `None`, the same
//!   backpressure) until the buffer is dropped, the pool's free ones with the pool.
//! - Shutdown ([`WorkerPool::shutdown`]): jobs not yet started are dropped, running jobs may
//!   finish until the deadline; the pool never waits for connection handles, which keep nothing
//!   alive.

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::budget::{Budget, Pressure};
use crate::conn::Conn;
use crate::handle::Work;

/// How long a connection keeps its place in the line for a full queue without offering its job
/// again (a held frame is offered every 2 ms): after it, the place is given up.
pub const ADMISSION_HOLD: Duration = Duration::from_millis(50);

type Job = Box<dyn FnOnce() + Send + 'static>;
type ReplyJob = Box<dyn FnOnce(Work) + Send + 'static>;

/// One job as the pool keeps it.
enum Task {
    /// Runs whatever happens to its connection (if it has one).
    Plain(Job),
    /// Answers a request of a connection: skipped if the connection is gone before it starts.
    Reply(ReplyJob, Work),
}

impl Task {
    /// Its connection is gone: nobody can read the reply.
    fn is_orphan(&self) -> bool {
        matches!(self, Task::Reply(_, work) if !work.is_open())
    }

    fn run(self) {
        match self {
            Task::Plain(job) => job(),
            Task::Reply(job, work) => job(work),
        }
    }
}

/// The pool's queue is full; the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker queue full")]
pub struct PoolFull;

/// One connection's jobs (an [`Ordered`]).
#[derive(Default)]
struct LaneJobs {
    jobs: VecDeque<Task>,
    /// In the ready queue or running on a worker (never both, never twice).
    scheduled: bool,
    /// One of its jobs runs now.
    running: bool,
}

/// Locked only under [`Queue`]'s lock (so its own lock is never contended).
type Lane = Arc<Mutex<LaneJobs>>;

enum Entry {
    Job(Task),
    Lane(Lane),
}

struct Queue {
    /// What the workers take next, in round-robin order: a plain job, or a connection with
    /// jobs waiting (at most once).
    ready: VecDeque<Entry>,
    /// Jobs waiting, every connection's together: never above `capacity`.
    waiting: usize,
    stopping: bool,
    /// Connections refused for a full queue, in the order they were refused (their lane's
    /// address, when last offered): freed room goes to them first, in order.
    line: VecDeque<(usize, Instant)>,
}

impl Queue {
    /// Whether a job of the connection `who` (`None`: a job with no connection identity) may
    /// take a place now, given `capacity`. Fair: room goes to the connections waiting in line,
    /// in order; a refused connection joins the line (or keeps its place).
    fn admit(&mut self, who: Option<usize>, capacity: usize, now: Instant) -> bool {
        self.line
            .retain(|&(_, seen)| now.duration_since(seen) < ADMISSION_HOLD);
        let free = capacity.saturating_sub(self.waiting);
        let place = who.and_then(|w| self.line.iter().position(|&(id, _)| id == w));
        match (place, who) {
            (Some(p), _) if free > p => {
                self.line.remove(p);
                true
            }
            (Some(p), _) => {
                self.line[p].1 = now;
                false
            }
            (None, _) if free > self.line.len() => true,
            (None, Some(w)) => {
                self.line.push_back((w, now));
                false
            }
            (None, None) => false,
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
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
    fn refused_for_budget(&self, conn: &Conn<'_>) -> bool {
        let refused = conn.budget().pressure() >= Pressure::Refuse;
        if refused {
            self.budget_refusals.fetch_add(1, Ordering::Relaxed);
        }
        refused
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock_lane(lane: &Lane) -> MutexGuard<'_, LaneJobs> {
    lane.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fixed number of named worker threads fed by a bounded, fair queue. Cheap to clone.
#[derive(Clone)]
pub struct WorkerPool {
    shared: Arc<Shared>,
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
    /// use [`Ordered::submit_work`] (replies in request order).
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

/// One connection's jobs, run one at a time in submission order on a [`WorkerPool`], taking
/// turns with the other connections' (round robin: one job, then the back of the line).
///
/// At most `max_pending` jobs wait per connection beside the one running or next, and they
/// count toward the pool's queue capacity. Keep one in the connection's handler.
pub struct Ordered {
    lane: Lane,
    max_pending: usize,
}

impl Ordered {
    /// A sequencer allowing `max_pending` jobs to wait.
    pub fn new(max_pending: usize) -> Ordered {
        Ordered {
            lane: Arc::new(Mutex::new(LaneJobs::default())),
            max_pending: max_pending.max(1),
        }
    }

    /// Queues `job` after this connection's earlier jobs. On `Err` nothing was queued: hold the
    /// frame and offer it again later. The job runs even if its connection has gone; to answer
    /// a request, use [`Ordered::submit_work`].
    pub fn submit(
        &self,
        pool: &WorkerPool,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), Busy> {
        self.enqueue(pool, || Task::Plain(Box::new(job)))
    }

    /// Queues `job` after this connection's earlier jobs, to answer a request of `conn`: the
    /// job gets the connection's [`Work`] (its writes are the reply; dropping it ends the
    /// request), made only if the job is accepted. On `Err` nothing was made or queued: hold
    /// the frame ([`Conn::hold_frame`]) and it is offered again a few ms later. A job whose
    /// connection is gone (reset, aborted) before it starts is skipped, not run.
    ///
    /// ```
    /// # use std::io::{Read, Write};
    /// # use ringport::{codec::Raw, Engine, Server};
    /// # use ringport::{Conn, Frame, Handler, pool::{Ordered, WorkerPool}};
    /// struct Pooled { pool: WorkerPool, jobs: Ordered }
    /// impl Handler for Pooled {
    ///     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
    ///         let request = frame.payload().to_vec();
    ///         let job = move |work: ringport::Work| { let _ = work.write(request); };
    ///         if self.jobs.submit_work(&self.pool, conn, job).is_err() {
    ///             conn.hold_frame(); // nothing queued: this frame comes again later
    ///         }
    ///     }
    /// }
    ///
    /// let pool = WorkerPool::new("work", 2, 64)?;
    /// let p = pool.clone();
    /// let server = Server::new("127.0.0.1:0".parse()?, Raw, move |_| Pooled {
    ///     pool: p.clone(),
    ///     jobs: Ordered::new(8), // at most 8 of this connection's jobs wait
    /// });
    /// # let mut engine = Engine::builder().io_threads(1).handle_signals(false).build()?;
    /// # let addr = engine.add_server(server)?.local_addr();
    /// # let running = engine.start()?;
    /// # let mut client = std::net::TcpStream::connect(addr)?;
    /// # client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    /// # client.write_all(b"ping")?;
    /// # let mut reply = [0u8; 4];
    /// # client.read_exact(&mut reply)?;
    /// # assert_eq!(&reply, b"ping");
    /// # drop(client);
    /// # running.shutdown_handle().shutdown();
    /// # running.join();
    /// # pool.shutdown(std::time::Duration::from_secs(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_work(
        &self,
        pool: &WorkerPool,
        conn: &mut Conn<'_>,
        job: impl FnOnce(Work) + Send + 'static,
    ) -> Result<(), Busy> {
        if pool.shared.refused_for_budget(conn) {
            return Err(Busy::PoolFull);
        }
        self.enqueue(pool, || Task::Reply(Box::new(job), conn.work()))
    }

    /// Queues the task `make` builds, once it is sure to be accepted.
    fn enqueue(&self, pool: &WorkerPool, make: impl FnOnce() -> Task) -> Result<(), Busy> {
        let mut q = pool.shared.lock();
        let mut l = lock_lane(&self.lane);
        // `max_pending` wait behind the job that runs (or is next).
        if l.jobs.len() + usize::from(l.running) > self.max_pending {
            return Err(Busy::ConnectionFull);
        }
        let who = Arc::as_ptr(&self.lane) as usize;
        if q.stopping || !q.admit(Some(who), pool.shared.capacity, Instant::now()) {
            return Err(Busy::PoolFull);
        }
        l.jobs.push_back(make());
        q.waiting += 1;
        debug_assert!(
            q.waiting <= pool.shared.capacity,
            "queue grew past its capacity"
        );
        if !l.scheduled {
            l.scheduled = true;
            drop(l);
            q.ready.push_back(Entry::Lane(self.lane.clone()));
            pool.shared.wake.notify_one();
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_budgeted_buffer_pool_charges_what_it_allocates_and_stops_at_the_refuse_level() {
        let budget = Budget::new(1 << 20);
        let pool = BufferPool::new(8, 256 << 10).with_budget(budget.clone());
        let a = pool.try_get().expect("first buffer");
        let b = pool.try_get().expect("second buffer");
        let c = pool.try_get().expect("third buffer (75%)");
        assert_eq!(budget.used(), 768 << 10);
        assert!(pool.try_get().is_none(), "a fourth would pass 85%");
        assert_eq!(pool.in_use(), 3, "the refused one is not counted out");
        drop(c);
        assert_eq!(budget.used(), 768 << 10, "a free buffer stays charged");
        let c = pool.try_get().expect("the free one comes back");
        assert_eq!(budget.used(), 768 << 10, "reused: no new charge");
        drop((a, b, c));
        drop(pool);
        assert_eq!(budget.used(), 0, "the pool's free buffers go with it");
    }

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
        let pool = WorkerPool::new("t", 4, 256).unwrap();
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

    /// One worker, blocked on connection A's first job while A queues four more and B one:
    /// B's job runs right after A's first, not after A's backlog (round robin).
    #[test]
    fn connections_take_turns_one_job_each() {
        let pool = WorkerPool::new("t", 1, 64).unwrap();
        let (a, b) = (Ordered::new(64), Ordered::new(64));
        let (tx, rx) = mpsc::channel();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let t = tx.clone();
        a.submit(&pool, move || {
            let _ = gate_rx.recv_timeout(Duration::from_secs(10));
            t.send("a1").unwrap();
        })
        .unwrap();
        for name in ["a2", "a3", "a4", "a5"] {
            let t = tx.clone();
            a.submit(&pool, move || t.send(name).unwrap()).unwrap();
        }
        let t = tx.clone();
        b.submit(&pool, move || t.send("b1").unwrap()).unwrap();
        gate_tx.send(()).unwrap();
        let order: Vec<&str> = (0..6)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(order, ["a1", "b1", "a2", "a3", "a4", "a5"]);
        assert_eq!(pool.queued(), 0);
        pool.shutdown(Duration::from_secs(5));
    }

    /// Every connection's waiting jobs count toward the pool's capacity (memory stays bounded
    /// whatever the number of connections).
    #[test]
    fn connections_share_the_queue_capacity() {
        let pool = WorkerPool::new("t", 1, 4).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        pool.try_execute(move || {
            let _ = gate_rx.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
        let lanes: Vec<Ordered> = (0..4).map(|_| Ordered::new(64)).collect();
        let accepted = lanes
            .iter()
            .flat_map(|l| (0..4).map(move |_| l))
            .filter(|l| l.submit(&pool, || {}).is_ok())
            .count();
        // The gate job may still wait too: 3 or 4 places were left.
        assert!((3..=4).contains(&accepted), "accepted {accepted} of 16");
        assert_eq!(lanes[3].submit(&pool, || {}), Err(Busy::PoolFull));
        assert!(pool.queued() <= 4);
        gate_tx.send(()).unwrap();
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn freed_room_goes_to_the_line_in_order() {
        let t0 = Instant::now();
        let mut q = Queue {
            ready: VecDeque::new(),
            waiting: 2,
            stopping: false,
            line: VecDeque::new(),
        };
        // Full (capacity 2): 1, 2, 3 are refused, in that order, and queue up.
        for who in [1, 2, 3] {
            assert!(!q.admit(Some(who), 2, t0));
        }
        // One place frees: only the first in line takes it; 2 and 3 keep their places, and a
        // newcomer (or a job with no identity) goes behind them.
        q.waiting = 1;
        assert!(!q.admit(Some(3), 2, t0));
        assert!(!q.admit(Some(9), 2, t0));
        assert!(!q.admit(None, 2, t0));
        assert!(q.admit(Some(1), 2, t0));
        // 1's job was taken by a worker meanwhile: one place free again.
        assert!(q.admit(Some(2), 2, t0));
        // 3 stops asking: after ADMISSION_HOLD its place (and 9's) is given up.
        let later = t0 + ADMISSION_HOLD + Duration::from_millis(1);
        assert!(q.admit(None, 2, later));
        assert!(q.line.is_empty());
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
