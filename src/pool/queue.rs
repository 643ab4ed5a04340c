//! The queue the workers take from: plain jobs and connections' lanes in round-robin order,
//! the count of waiting jobs (every connection's together) against the capacity, and the fair
//! admission line for a full queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::handle::Work;

/// How long a connection keeps its place in the line for a full queue without offering its job
/// again (a held frame is offered every 2 ms): after it, the place is given up.
pub const ADMISSION_HOLD: Duration = Duration::from_millis(50);

type Job = Box<dyn FnOnce() + Send + 'static>;
type ReplyJob = Box<dyn FnOnce(Work) + Send + 'static>;

/// One job as the pool keeps it.
pub(super) enum Task {
    /// Runs whatever happens to its connection (if it has one).
    Plain(Job),
    /// Answers a request of a connection: skipped if the connection is gone before it starts.
    Reply(ReplyJob, Work),
}

impl Task {
    /// Its connection is gone: nobody can read the reply.
    pub(super) fn is_orphan(&self) -> bool {
        matches!(self, Task::Reply(_, work) if !work.is_open())
    }

    pub(super) fn run(self) {
        match self {
            Task::Plain(job) => job(),
            Task::Reply(job, work) => job(work),
        }
    }
}

/// One connection's jobs (an [`Ordered`](super::Ordered)).
#[derive(Default)]
pub(super) struct LaneJobs {
    pub(super) jobs: VecDeque<Task>,
    /// In the ready queue or running on a worker (never both, never twice).
    pub(super) scheduled: bool,
    /// One of its jobs runs now.
    pub(super) running: bool,
}

/// Locked only under [`Queue`]'s lock (so its own lock is never contended).
pub(super) type Lane = Arc<Mutex<LaneJobs>>;

pub(super) enum Entry {
    Job(Task),
    Lane(Lane),
}

pub(super) struct Queue {
    /// What the workers take next, in round-robin order: a plain job, or a connection with
    /// jobs waiting (at most once).
    pub(super) ready: VecDeque<Entry>,
    /// Jobs waiting, every connection's together: never above `capacity`.
    pub(super) waiting: usize,
    pub(super) stopping: bool,
    /// Connections refused for a full queue, in the order they were refused (their lane's
    /// address, when last offered): freed room goes to them first, in order.
    pub(super) line: VecDeque<(usize, Instant)>,
}

impl Queue {
    /// Whether a job of the connection `who` (`None`: a job with no connection identity) may
    /// take a place now, given `capacity`. Fair: room goes to the connections waiting in line,
    /// in order; a refused connection joins the line (or keeps its place).
    pub(super) fn admit(&mut self, who: Option<usize>, capacity: usize, now: Instant) -> bool {
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

pub(super) fn lock_lane(lane: &Lane) -> MutexGuard<'_, LaneJobs> {
    lane.lock().unwrap_or_else(|e| e.into_inner())
}
