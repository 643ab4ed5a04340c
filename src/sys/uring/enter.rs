//! The `io_uring_enter` of each loop turn, shaped by the experiment switches
//! (`RINGPORT_URING_WAIT`, `RINGPORT_URING_RINGFD`; see `tuning.rs`), and the registered ring
//! descriptor.
//!
//! The io-uring crate remembers a registered ring descriptor inside a `Submitter`, which
//! borrows the ring and so cannot live in the backend beside it; with the switch on, the
//! backend registers the descriptor and makes its enter calls itself, by index.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{EnterFlags, IoUring};

use super::tuning::{tuning, Wait};
use super::UringBackend;

const IORING_REGISTER_RING_FDS: libc::c_uint = 20;
const IORING_UNREGISTER_RING_FDS: libc::c_uint = 21;

/// `struct io_uring_rsrc_update` (include/uapi/linux/io_uring.h).
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// `struct io_uring_getevents_arg` (include/uapi/linux/io_uring.h; `min_wait_usec` was `pad`
/// before 6.12).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// Registers the ring's own descriptor in this thread's table of registered rings; its index,
/// or `None` if the kernel refuses (before 5.18, or the table of 16 is full).
pub(super) fn register_ring_fd(ring: &IoUring) -> Option<u32> {
    let mut up = RsrcUpdate {
        offset: u32::MAX, // any free slot
        resv: 0,
        data: ring.as_raw_fd() as u64,
    };
    // SAFETY: passes one live, correctly laid out io_uring_rsrc_update, which the kernel reads
    // and writes (the chosen slot in `offset`) during the call only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1 as libc::c_uint,
        )
    };
    (r == 1).then_some(up.offset)
}

/// Undoes [`register_ring_fd`]; must run on the thread that registered it.
pub(super) fn unregister_ring_fd(ring: &IoUring, index: u32) {
    let mut up = RsrcUpdate {
        offset: index,
        resv: 0,
        data: 0,
    };
    // SAFETY: as in register_ring_fd.
    unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_UNREGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1 as libc::c_uint,
        )
    };
}

/// Chooses each loop turn's wait from the switch and, for `adapt`, from how many completions
/// the turn before reaped.
pub(super) struct WaitRule {
    configured: Wait,
    reaped: u32,
}

impl WaitRule {
    pub(super) fn new(ring: &IoUring) -> WaitRule {
        let mut configured = tuning().wait;
        if matches!(configured, Wait::Min { .. } | Wait::Adapt { .. })
            && !ring.params().is_feature_min_timeout()
        {
            // Loud only when asked for by name: the default falls back quietly on older kernels.
            if std::env::var_os("RINGPORT_URING_WAIT").is_some() {
                tracing::warn!(
                    "RINGPORT_URING_WAIT={configured:?} needs min_wait_usec (Linux 6.12); waiting for one completion"
                );
            } else {
                tracing::debug!(
                    "no min_wait_usec before Linux 6.12: each turn waits for one completion"
                );
            }
            configured = Wait::One;
        }
        WaitRule::with(configured)
    }

    fn with(configured: Wait) -> WaitRule {
        WaitRule {
            configured,
            reaped: 0,
        }
    }

    /// One completion was reaped.
    pub(super) fn reaped(&mut self) {
        self.reaped = self.reaped.saturating_add(1);
    }

    /// The wait of the turn that begins; the count of reaped completions starts again.
    pub(super) fn next_turn(&mut self) -> Wait {
        let reaped = std::mem::take(&mut self.reaped);
        match self.configured {
            Wait::Adapt { want, usec } if reaped >= want => Wait::Min { want, usec },
            Wait::Adapt { .. } => Wait::One,
            wait => wait,
        }
    }
}

impl UringBackend {
    /// Submits what is queued and, unless `ready`, waits for completions (at most `timeout`)
    /// as `wait` says.
    pub(super) fn enter(
        &mut self,
        ready: bool,
        wait: Wait,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let want = match (ready, wait) {
            (true, _) => 0,
            (false, Wait::Min { want, .. }) => want,
            (false, _) => 1,
        };
        if let Some(index) = self.ring_index {
            return self.enter_registered(index, want, wait, timeout);
        }
        if ready {
            return self.ring.submit();
        }
        let ts = timeout.map(Timespec::from);
        let args = match &ts {
            Some(ts) => SubmitArgs::new().timespec(ts),
            None => SubmitArgs::new(),
        };
        // `WaitRule::next_turn` has already turned `Adapt` into `One` or `Min`; it is matched
        // with `One` only to keep the match whole.
        match (wait, &ts) {
            (Wait::One | Wait::Adapt { .. }, None) => self.ring.submit_and_wait(1),
            (Wait::One | Wait::Adapt { .. }, Some(_)) => {
                self.ring.submitter().submit_with_args(1, &args)
            }
            (Wait::NoIowait, _) => {
                self.ring
                    .submitter()
                    .submit_with_args_and_flags(1, &args, EnterFlags::NO_IOWAIT)
            }
            (Wait::Min { want, usec }, _) => self
                .ring
                .submitter()
                .submit_with_args(want as usize, &args.min_wait_usec(usec)),
        }
    }

    /// The same enter through the registered ring index (what the crate's `submit_and_wait`
    /// and `submit_with_args` do, with `IORING_ENTER_REGISTERED_RING`).
    fn enter_registered(
        &mut self,
        index: u32,
        want: u32,
        wait: Wait,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let (to_submit, need_events) = {
            let sq = self.ring.submission();
            (sq.len() as u32, sq.cq_overflow() || sq.taskrun())
        };
        let mut flags = EnterFlags::EXT_ARG.bits() | EnterFlags::REGISTERED_RING.bits();
        if want > 0 || need_events {
            flags |= EnterFlags::GETEVENTS.bits();
        }
        if wait == Wait::NoIowait && want > 0 {
            flags |= EnterFlags::NO_IOWAIT.bits();
        }
        let ts = timeout.map(Timespec::from);
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: match wait {
                Wait::Min { usec, .. } if want > 0 => usec,
                _ => 0,
            },
            ts: ts.as_ref().map_or(0, |ts| ts as *const Timespec as u64),
        };
        // SAFETY: `arg` and the timespec it points at (a repr(transparent)
        // __kernel_timespec) live across the call; the kernel only reads them. Every queued SQE
        // points at backend-owned memory (see the module doc of mod.rs).
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                index as libc::c_uint,
                to_submit as libc::c_uint,
                want as libc::c_uint,
                flags,
                &arg as *const GeteventsArg,
                std::mem::size_of::<GeteventsArg>(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapt_batches_only_after_a_turn_that_reaped_enough() {
        let batch = Wait::Min { want: 4, usec: 50 };
        let mut rule = WaitRule::with(Wait::Adapt { want: 4, usec: 50 });
        assert_eq!(rule.next_turn(), Wait::One, "the first turn reaped nothing");
        for _ in 0..3 {
            rule.reaped();
        }
        assert_eq!(rule.next_turn(), Wait::One, "3 of 4");
        for _ in 0..4 {
            rule.reaped();
        }
        assert_eq!(rule.next_turn(), batch, "4 of 4");
        assert_eq!(
            rule.next_turn(),
            Wait::One,
            "the count starts again each turn"
        );
        for _ in 0..100 {
            rule.reaped();
        }
        assert_eq!(rule.next_turn(), batch);
    }

    #[test]
    fn other_waits_do_not_depend_on_the_count() {
        for wait in [Wait::One, Wait::NoIowait, Wait::Min { want: 8, usec: 50 }] {
            let mut rule = WaitRule::with(wait);
            assert_eq!(rule.next_turn(), wait);
            for _ in 0..10 {
                rule.reaped();
            }
            assert_eq!(rule.next_turn(), wait);
        }
    }
}
