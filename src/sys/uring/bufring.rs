//! The provided-buffer ring the kernel picks receive buffers from, and the eventfd other
//! threads write to when they wake the IO thread.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

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
        };
        for bid in 0..count {
            ring.recycle(bid);
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
        off
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

    /// Gives buffer `bid` (back) to the kernel: fill the entry at the tail, then publish it.
    pub(super) fn recycle(&mut self, bid: u16) {
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
