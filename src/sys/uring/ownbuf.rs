//! Per-connection receive buffers for `RINGPORT_URING_RECV=own`: a single-shot `IORING_OP_RECV`
//! into a buffer the backend lends the connection only while a receive is armed (or its data
//! is lent to the engine), the way monoio reads into a connection's own buffer, with no
//! provided-buffer ring.
//!
//! Ownership (see the lifecycle in the module doc of `mod.rs`): a lent buffer lives in the
//! connection's `Conn::own`. While `Conn::recv` is set the kernel holds the SQE that points into
//! it, and nothing frees, moves out or shrinks it (the `Vec` itself may move with the `Conn`;
//! its heap block does not). When the recv completes with data, the buffer is lent to the
//! engine as `Event::Data` until the next `next()`/`wait()`, then re-armed; when the recv ends
//! without re-arming (paused, closing, EOF, error), it goes back to the free list here.

/// Free buffers kept for reuse; beyond this they are freed, so an idle or closing burst does
/// not keep its peak memory.
const FREE_MAX: usize = 64;

pub(super) struct OwnBufs {
    /// Capacity of every buffer: the provided-buffer ring's buffer size, so the engine sees
    /// the same `Event::Data` chunks.
    size: usize,
    free: Vec<Vec<u8>>,
    /// Buffers out of the free list, lent to connections.
    pub(super) lent: usize,
}

impl OwnBufs {
    pub(super) fn new(size: usize) -> OwnBufs {
        OwnBufs {
            size,
            free: Vec::new(),
            lent: 0,
        }
    }

    /// A buffer to lend: empty, with capacity `size` (uninitialised; the kernel fills it).
    pub(super) fn take(&mut self) -> Vec<u8> {
        self.lent += 1;
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// A buffer the kernel no longer holds comes back.
    pub(super) fn give(&mut self, mut buf: Vec<u8>) {
        self.lent -= 1;
        if self.free.len() < FREE_MAX {
            buf.clear();
            self.free.push(buf);
        }
    }

    #[cfg(test)]
    pub(super) fn free_count(&self) -> usize {
        self.free.len()
    }
}

/// Where a recv SQE may write: the start of `buf`'s heap block, and its capacity. Clears `buf`
/// first (the previous data was consumed).
pub(super) fn recv_target(buf: &mut Vec<u8>) -> (*mut u8, u32) {
    buf.clear();
    let len = buf.capacity().min(u32::MAX as usize) as u32;
    (buf.as_mut_ptr(), len)
}

/// The recv armed on `buf` by [`recv_target`] completed having written `n` bytes: they become
/// the buffer's contents.
pub(super) fn filled(buf: &mut Vec<u8>, n: usize) {
    assert!(n <= buf.capacity());
    // SAFETY: only called for the CQE of the recv that `recv_target` armed on this very buffer
    // (it stays in `Conn::own`, unchanged, while `Conn::recv` is set), and a recv CQE's result
    // is the number of bytes the kernel wrote from the start of the given address, at most the
    // length given: the first `n` bytes are initialised.
    unsafe { buf.set_len(n) };
}
