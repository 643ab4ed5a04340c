//! The worker pool: blocking work (a database query, a file, a slow service) off the IO threads.
//!
//! The classic argument: with X IO threads all engaged in blocking work, the communications
//! layer stops responding. Complete commands go through a bounded queue to a fixed set of
//! named worker threads instead; the IO threads keep serving everyone else.
//!
//! - [`WorkerPool`]: `workers` threads, at most `queue_capacity` jobs waiting (all connections
//!   together). [`WorkerPool::try_execute`] never blocks and never grows the queue: when it is
//!   full the job comes back as [`PoolFull`], and the handler holds its frame
//!   ([`Conn::hold_frame`](crate::Conn::hold_frame)): that connection stops reading and the
//!   frame is offered again a few milliseconds later. That is the backpressure.
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
//!   [`Work`](crate::Work) (a counted [`ConnectionHandle`](crate::ConnectionHandle)) made only
//!   once the job is accepted, so a refused job costs the IO thread nothing (no `Work` made and
//!   dropped, no inbox message). Its writes travel through the IO thread's FIFO inbox, so they
//!   keep their order; dropping the `Work` at the end of the job tells the engine, after those
//!   writes, that the request is answered, so no close of the connection drops the reply. A job
//!   whose connection is gone (reset, aborted) before it starts is skipped, not run, and counted
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
//!
//! The files: `queue.rs` (the ready queue, lanes and the admission line), `workers.rs`
//! ([`WorkerPool`] and the worker loop), `ordered.rs` ([`Ordered`]), `buffers.rs`
//! ([`BufferPool`]), `tests.rs`.

mod buffers;
mod ordered;
mod queue;
mod workers;

pub use buffers::{BufferPool, PooledBuf};
pub use ordered::{Busy, Ordered};
pub use queue::ADMISSION_HOLD;
pub use workers::{PoolFull, WorkerPool};

#[cfg(test)]
mod tests;
