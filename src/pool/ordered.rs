//! [`Ordered`]: one connection's jobs in submission order, taking turns with the other
//! connections' on a [`WorkerPool`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::queue::{lock_lane, Entry, Lane, LaneJobs, Task};
use super::workers::WorkerPool;
use crate::conn::Conn;
use crate::handle::Work;

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
