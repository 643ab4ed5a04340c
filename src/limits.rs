//! The crate's limits and defaults: constants every layer may read (the engine, the handler
//! API, the connection core). A leaf module: it uses nothing from the crate, so configuration
//! never pulls one layer into another.

use std::time::Duration;

/// Default maximum of open connections per server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default write-queue high watermark: above it, the connection stops reading and handle
/// writes to it are refused.
pub const DEFAULT_WRITE_HIGH: usize = 1 << 20;
/// Default write-queue low watermark: at or below it, reading resumes and writability
/// watchers are told.
pub const DEFAULT_WRITE_LOW: usize = 256 << 10;
/// Default limit of received-but-undecoded bytes per connection.
pub const DEFAULT_MAX_BUFFERED_INPUT: usize = 8 << 20;
/// How long a gracefully closed connection keeps reading (and discarding) after shutting down
/// its write side, so that unread input does not turn the last reply into a reset.
pub const LINGER: Duration = Duration::from_secs(2);
/// Longest accept back-off after EMFILE / ENFILE / ENOBUFS / ENOMEM.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
pub(crate) const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// A closing connection whose queued bytes move not one byte for this long (the peer does not
/// read) is reset, counted as [`CloseReason::FlushStalled`](crate::CloseReason::FlushStalled).
/// Any progress, even a few bytes of a large send, restarts the clock.
pub const FLUSH_STALL: Duration = Duration::from_secs(10);
/// Most receive buffers per IO thread on io_uring (the provided-buffer ring's size limit).
pub const MAX_RECV_BUFFER_COUNT: u16 = 1 << 15;

/// Default of [`EngineBuilder::restart_grace`](crate::EngineBuilder::restart_grace).
pub const DEFAULT_RESTART_GRACE: Duration = Duration::from_secs(300);
