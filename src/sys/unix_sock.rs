//! Unix domain sockets (stream): binding a listener on a path, the peer's credentials.
//!
//! A Unix listener travels through the engine and the backends as a `TcpListener` (and each
//! accepted connection as a `TcpStream`): they are only owners of a descriptor there, and every
//! call the backends make on them (accept, recv, send, shutdown, close, SIOCOUTQ) is the same
//! syscall for both families. Addresses are the exception: [`super::accepted_addrs`] asks the
//! socket's family before reading them.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::info::PeerCred;

/// Binds `n` listeners on the Unix socket `path`, one per IO thread: one socket, the others
/// duplicates of it (Unix sockets have no SO_REUSEPORT group), so every IO thread accepts from
/// the one backlog. Non-blocking, close-on-exec.
///
/// A socket file left by a process that died (nobody accepts: connecting is refused) is
/// replaced; one a live server listens on fails with `AddrInUse`; a path that exists and is
/// not a socket is left alone and fails with `AlreadyExists`.
pub(crate) fn bind(path: &Path, backlog: i32, n: usize) -> io::Result<Vec<TcpListener>> {
    use socket2::{Domain, SockAddr, Socket, Type};
    remove_if_stale(path)?;
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::unix(path)?)?;
    s.listen(backlog)?;
    let first: TcpListener = s.into();
    let mut all = Vec::with_capacity(n.max(1));
    for _ in 1..n {
        all.push(first.try_clone()?);
    }
    all.insert(0, first);
    Ok(all)
}

/// Removes `path` when it is a socket nobody listens on (its server died without removing
/// it); fails with `AddrInUse` when a server accepts there.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket (left untouched)",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address in use: a live server listens on this socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale socket file (nobody listens on it)");
            std::fs::remove_file(path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        }
        Err(e) => Err(e),
    }
}

/// The path a Unix listener is bound to (`None`: not a Unix socket, or an unnamed one).
pub(crate) fn listener_path(l: &TcpListener) -> Option<PathBuf> {
    let addr = socket2::SockRef::from(l).local_addr().ok()?;
    addr.as_pathname().map(Path::to_path_buf)
}

/// Removes the socket file of a listener this process owned, on a clean shutdown; only if it
/// is still a socket (never a file someone put there since).
pub(crate) fn remove_socket_file(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::debug!(path = %path.display(), "socket file removed"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket file")
            }
        }
    }
}

/// The peer's credentials as the kernel recorded them at connect (SO_PEERCRED).
#[cfg(target_os = "linux")]
pub(crate) fn peer_cred(fd: &impl AsRawFd) -> Option<PeerCred> {
    peer_cred_raw(fd.as_raw_fd())
}

#[cfg(target_os = "linux")]
fn peer_cred_raw(fd: RawFd) -> Option<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid, correctly sized
    // `ucred`; a descriptor that is not a Unix socket only makes the call fail.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(PeerCred {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Other unixes: not implemented (getpeereid / LOCAL_PEERCRED would be the way).
#[cfg(not(target_os = "linux"))]
pub(crate) fn peer_cred(fd: &impl AsRawFd) -> Option<PeerCred> {
    let _: RawFd = fd.as_raw_fd();
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringport-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_is_address_in_use() {
        let path = tmp("stale.sock");
        // A listener that died without removing its file: connecting is refused.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind(&path, 16, 2).expect("the stale file is replaced");
        assert_eq!(live.len(), 2);
        assert_eq!(listener_path(&live[1]).as_deref(), Some(path.as_path()));
        let e = bind(&path, 16, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(path.exists(), "the live server's file stays");
        drop(live);
        remove_socket_file(&path);
        assert!(!path.exists());
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_left_alone() {
        let path = tmp("plain-file");
        std::fs::write(&path, b"keep me").unwrap();
        let e = bind(&path, 16, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        remove_socket_file(&path);
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        std::fs::remove_file(&path).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn peer_credentials_are_our_own_over_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = peer_cred(&a).expect("SO_PEERCRED on a socket pair");
        assert_eq!(c.pid, std::process::id());
        // SAFETY: geteuid/getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((c.uid, c.gid), (uid, gid));
    }
}
