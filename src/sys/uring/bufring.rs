//! The provided-buffer ring the kernel picks receive buffers from, the rule that gives its
//! pages back once it has been quiet for a while (`Trim`), and the eventfd other threads write
//! to when they wake the IO thread.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::IoUring;

use super::{Waker, BGID};

/// The provided-buffer ring: `count` entries (kernel-shared, page-aligned) followed by
/// `count * size` bytes of buffers, in one anonymous mapping. See io_uring_register_buf_ring(3):
/// the ring memory must be page aligned, `ring_entries` a power of two up to 32768, and the
/// tail (a u16 overlaying `bufs[0].resv`) is published with a release store.
pub(super) struct BufRing {
    base: NonNull<u8>,
    map_len: usize,
    ring_len: usize,
    count: u16,
    pub(super) size: usize,
    tail: u16,
    pub(super) leak: bool,
    /// Registered with `IOU_PBUF_RING_INC` (6.12+): the kernel consumes a buffer a receive at
    /// a time, so small receives share one buffer instead of each touching a fresh one (at
    /// 10k connections each receiving 64 B, 4 MiB of buffer pages fewer; issue 21).
    pub(super) incremental: bool,
    /// Per buffer, where the next receive's bytes start (incremental mode; 0 otherwise).
    offsets: Vec<u32>,
    /// Receives so far (wrapping): `Trim` tells a quiet ring by this count standing still.
    pub(super) receives: u32,
    /// Whether the kernel may have written into the buffers since their pages were last
    /// released (`release_pages`).
    pub(super) resident: bool,
    /// How often the buffers' pages were released.
    pub(super) releases: u64,
    /// Buffers the kernel is done with (their last CQE came) and that are not yet recycled:
    /// lent to the engine, or kept. Their pages are never released.
    out: u32,
}

impl BufRing {
    pub(super) fn new(count: u16, size: usize) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffer_count must be a power of two <= 32768 and recv_buffer_size in 1..4GiB",
            ));
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let entry = std::mem::size_of::<io_uring::types::BufRingEntry>();
        let ring_len = (count as usize * entry).div_ceil(page) * page;
        let map_len = ring_len + count as usize * size;
        // SAFETY: an anonymous private mapping aliases no existing memory; the result is
        // checked for MAP_FAILED below. mmap returns page-aligned, zero-filled memory.
        // Not MAP_POPULATE: a buffer's pages become resident only when the kernel first
        // writes into them, so small messages touch one page per buffer, not the whole ring.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).expect("mmap returned null");
        let mut ring = BufRing {
            base,
            map_len,
            ring_len,
            count,
            size,
            tail: 0,
            leak: false,
            incremental: false,
            offsets: vec![0; count as usize],
            receives: 0,
            resident: false,
            releases: 0,
            out: 0,
        };
        for bid in 0..count {
            ring.publish(bid);
        }
        Ok(ring)
    }

    /// Registers the ring, incremental (`IOU_PBUF_RING_INC`) where the kernel has it and
    /// `incremental` asks for it, else whole-buffer.
    pub(super) fn register(&mut self, ring: &IoUring, incremental: bool) -> io::Result<()> {
        const IOU_PBUF_RING_INC: u16 = 2;
        let register = |flags: u16| {
            // SAFETY: the ring memory is a live page-aligned mapping of `count` entries; it
            // stays mapped until Drop, which only unmaps after unregistering (or leaks it).
            unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    self.base.as_ptr() as u64,
                    self.count,
                    BGID,
                    flags,
                )
            }
        };
        if incremental {
            match register(IOU_PBUF_RING_INC) {
                Ok(()) => {
                    self.incremental = true;
                    return Ok(());
                }
                // A kernel before 6.12 refuses the flag: whole buffers.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        self.incremental = false;
        register(0)
    }

    /// A receive of `len` bytes into buffer `bid` completed; `more`: the kernel goes on
    /// filling the buffer (`IORING_CQE_F_BUF_MORE`, incremental mode), so it must not be
    /// recycled. Returns where the bytes start in the buffer.
    pub(super) fn consumed(&mut self, bid: u16, len: usize, more: bool) -> usize {
        let off = self.offsets[bid as usize] as usize;
        debug_assert!(off + len <= self.size, "receive past its buffer's end");
        debug_assert!(
            self.incremental || !more,
            "BUF_MORE without an incremental ring"
        );
        if self.incremental {
            self.offsets[bid as usize] = (off + len) as u32;
        }
        self.receives = self.receives.wrapping_add(1);
        self.resident = true;
        if !more {
            self.out += 1;
            debug_assert!(
                self.out <= u32::from(self.count),
                "more buffers out than exist"
            );
        }
        off
    }

    /// Gives the buffers' pages back to the kernel (`MADV_DONTNEED`): the next receive into a
    /// buffer faults in a fresh zeroed page. The ring entries before the buffers stay (the
    /// kernel has them pinned). Does nothing while a buffer is out (lent or kept, not yet
    /// recycled). The caller makes sure no other byte the kernel wrote is still unread: no
    /// completion unreaped, no receive copied outside this thread's `io_uring_enter`
    /// (DEFER_TASKRUN), no data kept from a buffer the kernel is still filling (incremental
    /// mode); `UringBackend::release_ring_pages` checks the first two, and the backend keeps
    /// no data across a `wait`.
    pub(super) fn release_pages(&mut self) {
        if self.out > 0 {
            return;
        }
        let len = self.map_len - self.ring_len;
        // SAFETY: the range is the buffer part of this struct's own live mapping (from
        // `ring_len`, page aligned, to its end). MADV_DONTNEED on private anonymous memory
        // only makes later reads see zero-filled pages; no Rust reference into the buffers
        // is alive (`data` borrows `self`, and this takes `&mut self`).
        let r = unsafe {
            libc::madvise(
                self.base.as_ptr().add(self.ring_len).cast(),
                len,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            self.resident = false;
            self.releases += 1;
        } else {
            tracing::debug!(error = %io::Error::last_os_error(), "releasing the receive buffers' pages failed");
        }
    }

    /// How many of the buffers' pages are resident (`mincore`).
    #[cfg(test)]
    pub(super) fn resident_pages(&self) -> usize {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = self.map_len - self.ring_len;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: a page-aligned range of our own mapping; `vec` has one byte per page.
        let r = unsafe {
            libc::mincore(
                self.base.as_ptr().add(self.ring_len).cast(),
                len,
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|b| *b & 1 != 0).count()
    }

    fn entries(&self) -> *mut io_uring::types::BufRingEntry {
        self.base.as_ptr().cast()
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < count, so the offset stays inside the mapping.
        unsafe {
            self.base
                .as_ptr()
                .add(self.ring_len + bid as usize * self.size)
        }
    }

    /// Gives buffer `bid`, whose last CQE came, back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
        debug_assert!(self.out > 0, "recycling a buffer that is not out");
        self.out = self.out.saturating_sub(1);
        self.publish(bid);
    }

    /// Gives buffer `bid` to the kernel: fill the entry at the tail, then publish it.
    fn publish(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        self.offsets[bid as usize] = 0;
        let index = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `index < count`; the entry at the tail is owned by userspace until the tail
        // store below publishes it. set_* leave `resv` (the shared tail of entry 0) untouched.
        unsafe {
            let entry = &mut *self.entries().add(index);
            entry.set_addr(self.buf_ptr(bid) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is a naturally aligned u16 inside the mapping that the kernel reads
        // concurrently, hence the atomic; Release orders the entry writes before it.
        unsafe {
            let tail = io_uring::types::BufRingEntry::tail(self.entries()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The `len` bytes the kernel wrote into buffer `bid` at `off`.
    pub(super) fn data(&self, bid: u16, off: usize, len: usize) -> &[u8] {
        assert!(bid < self.count && off + len <= self.size);
        // SAFETY: the CQE that named `bid` handed these bytes to us; the kernel does not write
        // them again until `recycle(bid)`, which needs `&mut self` and so ends this borrow
        // first. In incremental mode it may meanwhile write the buffer's later bytes (past
        // `off + len`), never these.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(bid).add(off), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if !self.leak {
            // SAFETY: the mapping is ours and the kernel no longer uses it (unregistered, or
            // never registered); `leak` is set whenever that cannot be guaranteed.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
        }
    }
}

/// When the buffer ring's pages go back to the kernel (`RINGPORT_URING_TRIM`, issue 21).
///
/// The kernel takes the ring's buffers in turn, so a burst of small receives touches the first
/// page of every buffer (2 IO threads x 512 buffers x 4 KiB: 4 MiB, 420 B per connection at
/// 10k idle connections), and they stay resident after the burst. Once the ring has received
/// nothing for `after`, the pages are released; under steady traffic nothing is done, and the
/// wait of a quiet ring is cut at most once per `after` to notice.
///
/// Quiet time is summed over waits that timed out (the engine's own timers may cut them
/// shorter); any receive starts it again.
#[derive(Debug)]
pub(super) struct Trim {
    after: Duration,
    /// How long the ring has been quiet, over waits that timed out.
    quiet: Duration,
    /// `BufRing::receives` when last looked at.
    seen: u32,
    /// The timeout given to the wait in progress, if the ring had pages to release.
    waiting: Option<Duration>,
}

impl Trim {
    pub(super) fn new(after: Duration) -> Trim {
        debug_assert!(!after.is_zero());
        Trim {
            after,
            quiet: Duration::ZERO,
            seen: 0,
            waiting: None,
        }
    }

    /// The timeout of the wait that begins: the engine's, cut to when the ring's pages are
    /// due for release (unchanged when nothing is resident).
    pub(super) fn timeout(
        &mut self,
        bufs: &BufRing,
        timeout: Option<Duration>,
    ) -> Option<Duration> {
        if bufs.receives != self.seen {
            self.seen = bufs.receives;
            self.quiet = Duration::ZERO;
        }
        if !bufs.resident {
            self.waiting = None;
            return timeout;
        }
        let left = self.after.saturating_sub(self.quiet);
        let cut = timeout.map_or(left, |t| t.min(left));
        self.waiting = Some(cut);
        Some(cut)
    }

    /// The wait timed out with nothing to reap. Returns whether the ring has now been quiet
    /// for `after` (the quiet time starts again).
    pub(super) fn timed_out(&mut self) -> bool {
        let Some(waited) = self.waiting.take() else {
            return false;
        };
        self.quiet += waited;
        if self.quiet < self.after {
            return false;
        }
        self.quiet = Duration::ZERO;
        true
    }
}

/// The eventfd other threads write to; a read op in the ring turns it into `Event::Wake`.
pub(super) struct EventFd(pub(super) RawFd);

impl Waker for EventFd {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd this struct owns.
        unsafe { libc::write(self.0, (&one as *const u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this struct (shared through Arc), closed exactly once.
        unsafe { libc::close(self.0) };
    }
}
