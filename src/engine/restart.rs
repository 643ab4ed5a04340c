//! Zero-downtime restart: on SIGHUP the running process starts its successor (the same
//! executable and arguments) with its listening sockets inherited, waits until the successor
//! says `READY=1` on a socket pair of their own, and only then stops accepting and drains as on
//! SIGTERM. Both processes hold the same listening sockets during the switch, so a connection
//! attempt always finds a listener that accepts: none is refused. If the successor fails to
//! start (exits, or is not ready within the timeout) it is killed and this process serves on.
//!
//! Under systemd (`NOTIFY_SOCKET` set) the old process reports `RELOADING=1`, then the
//! successor's `MAINPID`; the successor reports `READY=1` itself (the unit needs
//! `NotifyAccess=all`).

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::sys::inherit::{spawn_inheriting, HANDOVER_ENV, READY_ENV};

/// What a restart needs: the program, its arguments, and a copy of every listener to hand on.
pub(crate) struct Restart {
    exe: PathBuf,
    args: Vec<OsString>,
    /// One group per server, one listener per IO thread (duplicates of the engine's own).
    groups: Vec<Vec<TcpListener>>,
    ready_timeout: Duration,
}

impl Restart {
    pub(crate) fn new(
        groups: Vec<Vec<TcpListener>>,
        ready_timeout: Duration,
    ) -> io::Result<Restart> {
        // Resolved now: once an upgrade replaces the file, /proc/self/exe names the old one.
        let exe = std::env::current_exe()?;
        Ok(Restart {
            exe,
            args: std::env::args_os().skip(1).collect(),
            groups,
            ready_timeout,
        })
    }

    /// Starts the successor and waits for its readiness; its pid.
    pub(crate) fn start_successor(&self) -> io::Result<u32> {
        let (mine, theirs) = UnixStream::pair()?;
        let mut fds: Vec<_> = self
            .groups
            .iter()
            .flatten()
            .map(|l| l.as_raw_fd())
            .collect();
        fds.push(theirs.as_raw_fd());
        let spec = self
            .groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|l| l.as_raw_fd().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect::<Vec<_>>()
            .join(";");
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .env(HANDOVER_ENV, spec)
            .env(READY_ENV, theirs.as_raw_fd().to_string())
            .stdin(Stdio::null());
        let mut child = spawn_inheriting(&mut cmd, fds)?;
        drop(theirs); // the successor's copy is its own: EOF here if it dies
        let pid = child.id();
        info!(
            successor_pid = pid,
            "restart: successor started; waiting for it to be ready"
        );
        mine.set_read_timeout(Some(self.ready_timeout))?;
        let mut line = String::new();
        let got = BufReader::new(&mine).read_line(&mut line);
        if matches!(got, Ok(n) if n > 0) && line.trim_end() == "READY=1" {
            return Ok(pid);
        }
        let _ = child.kill();
        let status = child.wait()?;
        Err(io::Error::other(format!(
            "successor pid {pid} was not ready ({}; it exited with {status})",
            match got {
                Ok(0) => "it closed the readiness socket".to_string(),
                Ok(_) => format!("it said {:?}", line.trim_end()),
                Err(e) => format!("no word within {:?}: {e}", self.ready_timeout),
            }
        )))
    }
}

impl Restart {
    /// SIGHUP: starts the successor; `true` once it serves (this process must then drain),
    /// `false` if it failed (this process serves on).
    pub(crate) fn hand_over(&self) -> bool {
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify(&reloading);
        match self.start_successor() {
            Ok(pid) => {
                notify(&[sd_notify::NotifyState::MainPid(pid)]);
                info!(
                    successor_pid = pid,
                    "restart: successor ready; handing over and draining"
                );
                true
            }
            Err(e) => {
                error!(error = %e, "restart failed; this process serves on");
                notify(&[sd_notify::NotifyState::Ready]);
                false
            }
        }
    }
}

/// In a successor: tells the process it replaces that this one serves (the engine's IO threads
/// run and own the listeners). Does nothing in a process not started by a restart.
pub(crate) fn report_ready(ready: Option<UnixStream>) {
    if let Some(mut s) = ready {
        if let Err(e) = s.write_all(b"READY=1\n") {
            warn!(error = %e, "could not tell the previous process that this one is ready");
        }
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

/// `sd_notify` where `NOTIFY_SOCKET` is set (systemd `Type=notify`); a failure is logged only.
pub(crate) fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "sd_notify failed");
    }
}
