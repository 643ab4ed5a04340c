//! The signal waiter: a thread that turns SIGINT/SIGTERM into a graceful shutdown and SIGHUP
//! into a restart. It uses both `control` (the shutdown) and `restart` (the successor); they do
//! not know each other.

use std::thread::JoinHandle;
use std::time::Duration;

use tracing::info;

use super::control::ShutdownHandle;
use super::restart::{self, Restart};

/// The thread that waits for SIGINT/SIGTERM and shuts the engine down gracefully.
pub(crate) struct SignalWaiter {
    handle: crate::sys::signals::SignalsHandle,
    thread: JoinHandle<()>,
}

impl SignalWaiter {
    pub(crate) fn spawn(
        mut signals: crate::sys::signals::Signals,
        shutdown: ShutdownHandle,
        restart: Option<Restart>,
    ) -> std::io::Result<SignalWaiter> {
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("ringport-signals".into())
            .spawn(move || {
                let mut restart = restart;
                // Set once a successor took over: this process serves what it has, then exits.
                let mut retired = false;
                while let Some(sig) = signals.wait() {
                    if sig == "SIGHUP" {
                        if retired {
                            info!("SIGHUP ignored: this process has handed over already");
                            continue;
                        }
                        // Retire only once a successor serves; else go on serving.
                        let Some(r) = restart.take() else { continue };
                        if !r.hand_over(&shutdown) {
                            restart = Some(r);
                            continue;
                        }
                        retired = true;
                        // Our copies of the listeners close with it.
                        r.watch_retired(shutdown.clone());
                        continue;
                    }
                    if !retired {
                        // The successor is the unit's main process now: not ours to say.
                        restart::notify_stopping();
                    }
                    let _ = restart.take();
                    // Logged once every IO thread has closed its listeners (or after 1 s, if
                    // a handler blocks one): from this line on, nothing new is accepted.
                    let all = shutdown.shutdown_and_wait(Duration::from_secs(1));
                    info!(
                        signal = sig,
                        stopped_accepting = all,
                        "shutting down: draining connections"
                    );
                    break;
                }
            })?;
        Ok(SignalWaiter { handle, thread })
    }

    /// The engine has stopped: stop waiting.
    pub(crate) fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}
