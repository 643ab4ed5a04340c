//! Zero-downtime restart: on SIGHUP the running process starts its successor (the same
//! executable and arguments) with its listening sockets inherited, and they talk over a socket
//! pair of their own:
//!
//! 1. the successor builds its engine on the inherited listeners (io_uring probed, servers
//!    added, `listening on` printed) and says `READY=1`;
//! 2. the old process stops accepting (every IO thread has cancelled its accepts and closed
//!    its copies of the listeners) and says `GO`; it is *retired* from then on: every handler
//!    hears `on_retire`, and it serves the connections it has until each closes;
//! 3. the successor starts its IO threads, whose first accepts take whatever queued meanwhile.
//!
//! A retired process exits as soon as its last connection has closed; once the restart grace
//! (`EngineBuilder::restart_grace`) has passed, or on SIGTERM/SIGINT, it drains what is left as
//! on SIGTERM. A further SIGHUP to it is ignored (it has no listeners to hand on). Quick
//! successive restarts therefore leave several generations running side by side, each serving
//! its own connections, only the newest accepting.
//!
//! The listening sockets never close, so no connection attempt is refused: between 2 and 3
//! they wait in the kernel's backlog. The two processes never accept from the same socket at
//! the same time, which matters on io_uring: an accept's wake-up is exclusive, and one that
//! lands on a request being cancelled is lost, leaving a connection queued that nobody is
//! woken for. If the successor fails before step 1 (exits, or is not ready within the
//! timeout) it is killed and this process serves on.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::stats::ServerStats;
use crate::sys::inherit::{spawn_inheriting, HANDOVER_ENV, METRICS_GROUP, READY_ENV};

use super::control::ShutdownHandle;

/// One server's listeners to hand on: one per IO thread (duplicates of the engine's own), and
/// whether they are the metrics server's (named as such to the successor, which may add its
/// servers in any order relative to `serve_metrics`).
pub(crate) struct Group {
    pub listeners: Vec<TcpListener>,
    pub metrics: bool,
}

/// What a restart needs: the program, its arguments, a copy of every listener to hand on, and
/// what a retired process watches (its servers' counters, the grace).
pub(crate) struct Restart {
    exe: PathBuf,
    args: Vec<OsString>,
    groups: Vec<Group>,
    ready_timeout: Duration,
    grace: Duration,
    /// Every server's counters (the outgoing connections' too): a retired process exits once
    /// none has a connection open.
    stats: Vec<Arc<ServerStats>>,
}

/// How often a retired process looks whether its last connection has closed.
const RETIRED_POLL: Duration = Duration::from_millis(50);

impl Restart {
    pub(crate) fn new(
        groups: Vec<Group>,
        ready_timeout: Duration,
        grace: Duration,
        stats: Vec<Arc<ServerStats>>,
    ) -> io::Result<Restart> {
        // Resolved now: once an upgrade replaces the file, /proc/self/exe names the old one.
        let exe = std::env::current_exe()?;
        Ok(Restart {
            exe,
            args: std::env::args_os().skip(1).collect(),
            groups,
            ready_timeout,
            grace,
            stats,
        })
    }

    /// Starts the successor and waits for its readiness; its pid, and the socket to tell it
    /// `GO` on.
    pub(crate) fn start_successor(&self) -> io::Result<(u32, UnixStream)> {
        let (mine, theirs) = UnixStream::pair()?;
        let mut fds: Vec<_> = self
            .groups
            .iter()
            .flat_map(|g| &g.listeners)
            .map(|l| l.as_raw_fd())
            .collect();
        fds.push(theirs.as_raw_fd());
        let spec = handover_spec(&self.groups);
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
            return Ok((pid, mine));
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
    /// SIGHUP: starts the successor; once it is ready, stops accepting and lets it start
    /// (`true`: this process is retired now), else `false` (this process serves on).
    pub(crate) fn hand_over(&self, shutdown: &ShutdownHandle) -> bool {
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify(&reloading);
        match self.start_successor() {
            Ok((pid, mut go)) => {
                let stopped = shutdown.retire_and_wait(Duration::from_secs(1));
                if let Err(e) = go.write_all(b"GO\n") {
                    warn!(error = %e, "restart: could not tell the successor to start");
                }
                notify(&[sd_notify::NotifyState::MainPid(pid)]);
                info!(
                    successor_pid = pid,
                    stopped_accepting = stopped,
                    grace_secs = self.grace.as_secs(),
                    "restart: successor ready; handing over, serving the open connections until they close"
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

impl Restart {
    /// In a retired process: drops the listener copies and watches, on a thread of its own,
    /// for the last connection to close (then shuts down, which ends the process at once) or
    /// the grace to pass (then drains what is left as on SIGTERM). Ends quietly if a shutdown
    /// was asked for meanwhile (SIGTERM).
    pub(crate) fn watch_retired(self, shutdown: ShutdownHandle) {
        let Restart { grace, stats, .. } = self;
        let deadline = Instant::now() + grace;
        let watcher = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name("ringport-retired".into())
            .spawn(move || loop {
                std::thread::sleep(RETIRED_POLL);
                if shutdown.begun() {
                    return;
                }
                let open: u64 = stats.iter().map(|s| s.snapshot().active).sum();
                if open == 0 {
                    info!("restart: the last connection of this retired process closed; exiting");
                    shutdown.shutdown();
                    return;
                }
                if Instant::now() >= deadline {
                    info!(
                        open,
                        grace_secs = grace.as_secs(),
                        "restart grace passed; draining what is left"
                    );
                    shutdown.shutdown();
                    return;
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "restart: no watcher thread; draining now");
            watcher.shutdown();
        }
    }
}

/// `RINGPORT_LISTEN_FDS` for `groups`: `3,4;5,6` is two servers of two listeners each;
/// `metrics=7,8` names the metrics server's.
fn handover_spec(groups: &[Group]) -> String {
    groups
        .iter()
        .map(|g| {
            let fds = g
                .listeners
                .iter()
                .map(|l| l.as_raw_fd().to_string())
                .collect::<Vec<_>>()
                .join(",");
            if g.metrics {
                format!("{METRICS_GROUP}{fds}")
            } else {
                fds
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// In a successor, right before its IO threads start: tells the process it replaces that this
/// one is ready, and waits (bounded) until that one has stopped accepting. Does nothing in a
/// process not started by a restart.
pub(crate) fn await_go(ready: Option<crate::sys::inherit::ReadySocket>, timeout: Duration) {
    let Some(mut s) = ready else {
        return;
    };
    if let Err(e) = s.write_all(b"READY=1\n") {
        warn!(error = %e, "could not tell the previous process that this one is ready");
        return;
    }
    let _ = s.set_read_timeout(Some(timeout));
    let mut line = String::new();
    match BufReader::new(&s).read_line(&mut line) {
        Ok(_) if line.trim_end() == "GO" => {}
        other => warn!(
            answer = ?other.map(|_| line.trim_end().to_string()),
            "the previous process did not say GO; starting anyway"
        ),
    }
}

/// READY=1 to systemd (where `NOTIFY_SOCKET` is set).
pub(crate) fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// STOPPING=1 to systemd (where `NOTIFY_SOCKET` is set).
pub(crate) fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// `sd_notify` where `NOTIFY_SOCKET` is set (systemd `Type=notify`); a failure is logged only.
pub(crate) fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "sd_notify failed");
    }
}
