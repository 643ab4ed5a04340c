//! Listening sockets handed to this process, and handed on to a successor.
//!
//! Two ways in: systemd socket activation (`LISTEN_FDS` / `LISTEN_PID`, read with the
//! `sd-notify` crate: each descriptor is one server, in the order of the socket unit), and a
//! restart handover from the process this one replaces ([`HANDOVER_ENV`]: `3,4;5,6` is two
//! servers of two listeners each, one per IO thread; a group written `metrics=7,8` is the
//! metrics server's, taken by `Engine::serve_metrics` rather than the next `add_server`). Each descriptor is checked to be a
//! listening TCP socket before it is owned. The variables are removed once read, so that
//! processes this one starts do not take them for their own.
//!
//! One way out: [`spawn_inheriting`] starts a process that inherits the given descriptors
//! (close-on-exec cleared in the child only, between fork and exec).

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Names the descriptors a restarted process inherits from the one it replaces.
pub(crate) const HANDOVER_ENV: &str = "RINGPORT_LISTEN_FDS";
/// Names the descriptor on which a restarted process says `READY=1` to the one it replaces.
pub(crate) const READY_ENV: &str = "RINGPORT_READY_FD";

/// Marks the metrics server's group in [`HANDOVER_ENV`].
pub(crate) const METRICS_GROUP: &str = "metrics=";

/// The listening sockets this process was given.
#[derive(Default)]
pub(crate) struct Inherited {
    /// One group per server, in the order the servers are added.
    pub servers: Vec<Vec<TcpListener>>,
    /// The metrics server's group (a restart's handover only).
    pub metrics: Option<Vec<TcpListener>>,
    /// They come from a restart's handover (not systemd): this process then owns their Unix
    /// socket files, and removes them on a clean shutdown as their first owner would have.
    pub handover: bool,
}

/// The listener groups this process was given, or none.
pub(crate) fn take_listeners() -> io::Result<Inherited> {
    let handover = std::env::var_os(HANDOVER_ENV).is_some();
    let (groups, metrics): (Vec<Vec<RawFd>>, Option<Vec<RawFd>>) =
        if let Ok(spec) = std::env::var(HANDOVER_ENV) {
            std::env::remove_var(HANDOVER_ENV);
            parse_groups(&spec)?
        } else {
            let fds: Vec<RawFd> = sd_notify::listen_fds()?.collect();
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDNAMES");
            (fds.into_iter().map(|fd| vec![fd]).collect(), None)
        };
    let own = |g: Vec<RawFd>| {
        g.into_iter()
            .map(own_listener)
            .collect::<io::Result<Vec<_>>>()
    };
    Ok(Inherited {
        servers: groups.into_iter().map(own).collect::<io::Result<_>>()?,
        metrics: metrics.map(own).transpose()?,
        handover,
    })
}

/// The server groups and the metrics group of a [`HANDOVER_ENV`] value.
#[allow(clippy::type_complexity)]
fn parse_groups(spec: &str) -> io::Result<(Vec<Vec<RawFd>>, Option<Vec<RawFd>>)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad {HANDOVER_ENV} {spec:?}"),
        )
    };
    let fds = |g: &str| {
        g.split(',')
            .map(|fd| fd.trim().parse::<RawFd>().ok().filter(|&fd| fd > 2))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)
    };
    let (mut servers, mut metrics) = (Vec::new(), None);
    for g in spec.split(';').filter(|g| !g.is_empty()) {
        match g.strip_prefix(METRICS_GROUP) {
            Some(_) if metrics.is_some() => return Err(bad()),
            Some(m) => metrics = Some(fds(m)?),
            None => servers.push(fds(g)?),
        }
    }
    Ok((servers, metrics))
}

/// SO_ACCEPTCONN: whether `fd` is a socket in the listening state (socket2 offers it only on
/// some systems; every unix has the option).
fn is_listening(fd: RawFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `on`, which is a valid, correctly sized
    // int; an fd that is not a socket only makes the call fail.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && on != 0
}

/// Takes ownership of `fd` once it is known to be a listening stream socket, TCP or Unix
/// domain; non-blocking and close-on-exec like the engine's own listeners.
fn own_listener(fd: RawFd) -> io::Result<TcpListener> {
    // SAFETY: fcntl(F_GETFD) on any number is harmless; it tells whether `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited descriptor {fd} is not open"),
        ));
    }
    // SAFETY: `fd` is open, was handed to this process to own (LISTEN_FDS or the handover
    // variable, both removed above so nothing else takes it), and is owned only here.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let sock = socket2::SockRef::from(&listener);
    let is_stream_listener = sock.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
        && is_listening(fd)
        && sock
            .local_addr()
            .is_ok_and(|a| a.as_socket().is_some() || a.is_unix());
    if !is_stream_listener {
        // Not ours to close either: give the descriptor back untouched.
        std::mem::forget(listener);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited descriptor {fd} is not a listening TCP or Unix stream socket"),
        ));
    }
    sock.set_cloexec(true)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The readiness socket a restarted process was given ([`READY_ENV`]), if any.
/// The socket a restart's successor reports readiness on.
pub(crate) type ReadySocket = std::os::unix::net::UnixStream;

pub(crate) fn take_ready_socket() -> Option<ReadySocket> {
    let fd: RawFd = std::env::var(READY_ENV).ok()?.parse().ok()?;
    std::env::remove_var(READY_ENV);
    // SAFETY: as in `own_listener`: is `fd` open at all?
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `fd` is open and was handed to this process to own (the variable is removed).
    let s = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    let _ = socket2::SockRef::from(&s).set_cloexec(true);
    Some(s)
}

/// Spawns `cmd` with `fds` inherited (open across exec, same numbers).
pub(crate) fn spawn_inheriting(cmd: &mut Command, fds: Vec<RawFd>) -> io::Result<Child> {
    // SAFETY: between fork and exec only fcntl(2), which is async-signal-safe, on descriptors
    // that are open in the parent (and so in the child).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_groups_parse() {
        assert_eq!(
            parse_groups("3,4;5,6").unwrap(),
            (vec![vec![3, 4], vec![5, 6]], None)
        );
        assert_eq!(parse_groups("7").unwrap(), (vec![vec![7]], None));
        assert_eq!(
            parse_groups("3;metrics=4,5;6").unwrap(),
            (vec![vec![3], vec![6]], Some(vec![4, 5]))
        );
        assert!(
            parse_groups("metrics=3;metrics=4").is_err(),
            "one metrics group"
        );
        assert!(parse_groups("3,x").is_err());
        assert!(parse_groups("1").is_err(), "stdio is never a listener");
    }

    #[test]
    fn only_listening_tcp_sockets_are_owned() {
        use std::os::fd::IntoRawFd;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let owned = own_listener(l.into_raw_fd()).expect("a listener is owned");
        assert_eq!(owned.local_addr().unwrap(), addr);

        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = owned.accept().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        assert!(own_listener(fd).is_err(), "a connected socket is refused");
        drop((c, s));
    }

    #[test]
    fn a_listening_unix_socket_is_owned_too() {
        use std::os::fd::IntoRawFd;
        let dir = std::env::temp_dir().join(format!("ringport-inherit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inherit.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let owned = own_listener(l.into_raw_fd()).expect("a Unix listener is owned");
        assert_eq!(
            crate::sys::unix_sock::listener_path(&owned).as_deref(),
            Some(path.as_path())
        );
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(
            own_listener(a.into_raw_fd()).is_err(),
            "a connected Unix socket is refused"
        );
        drop(owned);
        let _ = std::fs::remove_file(&path);
    }
}
