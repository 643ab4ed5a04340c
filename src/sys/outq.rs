//! The kernel's unacknowledged send queue of a socket (SIOCOUTQ), shared by the Linux backends.

use std::os::fd::RawFd;

/// Bytes written to `fd` that the peer has not acknowledged yet, or `None` on error.
pub(crate) fn unsent(fd: RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer, which is valid and
    // correctly sized for the call; an invalid fd only makes the call fail.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (r == 0 && n >= 0).then_some(n as usize)
}
