//! The stop signals `Engine::run` waits for, one interface on every platform.
//!
//! - unix: SIGINT and SIGTERM (through `signal-hook`, which installs the handlers and hands the
//!   signals to a waiting thread).
//! - Windows: Ctrl-C, Ctrl-Break, the console window being closed and system shutdown
//!   (`SetConsoleCtrlHandler`). Windows runs the control handler on a thread of its own and, for
//!   a close or shutdown, terminates the process as soon as the handler returns: the handler
//!   therefore waits (up to [`CLOSE_GRACE`]) until the drain it started has finished. A logoff
//!   (`CTRL_LOGOFF_EVENT`) is not a stop: only services receive it, for *any* user's logoff
//!   (Microsoft's HandlerRoutine page; an interactive process is gone by then), so a server run
//!   under a service wrapper would stop whenever someone logs off. It is passed on to the next
//!   handler, which for a service is the default one that does not end the process, as
//!   OpenJDK's `consoleHandler` does for a non-interactive session.
//!
//! Either way the effect is the same: [`Signals::wait`] returns the signal's name and the engine
//! starts its graceful drain.

use std::io;

#[cfg(unix)]
pub(crate) use unix::{Signals, SignalsHandle};
#[cfg(windows)]
pub(crate) use windows::{Signals, SignalsHandle};

#[cfg(unix)]
mod unix {
    use super::io;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    /// Catches SIGINT and SIGTERM from the moment it is made.
    pub(crate) struct Signals(signal_hook::iterator::Signals);

    /// Ends a [`Signals::wait`] from another thread.
    pub(crate) struct SignalsHandle(signal_hook::iterator::Handle);

    impl Signals {
        /// SIGINT and SIGTERM, and SIGHUP when `hup` (the restart signal).
        pub(crate) fn new(hup: bool) -> io::Result<Signals> {
            let mut signals = vec![SIGINT, SIGTERM];
            if hup {
                signals.push(SIGHUP);
            }
            Ok(Signals(signal_hook::iterator::Signals::new(signals)?))
        }

        pub(crate) fn handle(&self) -> SignalsHandle {
            SignalsHandle(self.0.handle())
        }

        /// Blocks until a stop signal arrives (its name) or the handle is closed (`None`).
        pub(crate) fn wait(&mut self) -> Option<&'static str> {
            self.0.forever().next().map(|sig| match sig {
                SIGINT => "SIGINT",
                SIGTERM => "SIGTERM",
                SIGHUP => "SIGHUP",
                _ => "signal",
            })
        }
    }

    impl SignalsHandle {
        pub(crate) fn close(&self) {
            self.0.close();
        }
    }
}

#[cfg(windows)]
mod windows {
    use super::io;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Condvar, Mutex, Once};
    use std::time::{Duration, Instant};

    use windows_sys::core::BOOL;
    use windows_sys::Win32::Foundation::{FALSE, TRUE};
    use windows_sys::Win32::System::Console::{
        SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT, CTRL_LOGOFF_EVENT,
        CTRL_SHUTDOWN_EVENT,
    };

    /// How long the control handler keeps the process alive after a close or shutdown event
    /// while the drain runs (Windows itself allows about 5 s).
    const CLOSE_GRACE: Duration = Duration::from_millis(4500);

    #[derive(Default)]
    struct State {
        /// Signals received and not yet taken by a waiter.
        pending: Vec<&'static str>,
        /// Waiters (engines running) that have not finished their drain.
        running: usize,
    }

    static STATE: Mutex<State> = Mutex::new(State {
        pending: Vec::new(),
        running: 0,
    });
    static CHANGED: Condvar = Condvar::new();
    static INSTALL: Once = Once::new();
    static INSTALLED: AtomicBool = AtomicBool::new(false);

    fn state() -> std::sync::MutexGuard<'static, State> {
        STATE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name of a control event that stops the server; `None`: not ours (passed on).
    fn stop_event(ctrl_type: u32) -> Option<&'static str> {
        match ctrl_type {
            CTRL_C_EVENT => Some("CTRL_C"),
            CTRL_BREAK_EVENT => Some("CTRL_BREAK"),
            CTRL_CLOSE_EVENT => Some("CTRL_CLOSE"),
            CTRL_SHUTDOWN_EVENT => Some("CTRL_SHUTDOWN"),
            // Some user logged off (only services see it): not a reason to stop. See the
            // module doc.
            CTRL_LOGOFF_EVENT => None,
            _ => None,
        }
    }

    /// Runs on a thread Windows creates for each console control event.
    unsafe extern "system" fn on_ctrl(ctrl_type: u32) -> BOOL {
        let Some(name) = stop_event(ctrl_type) else {
            if ctrl_type == CTRL_LOGOFF_EVENT {
                tracing::info!("a user logged off (CTRL_LOGOFF_EVENT): ignored, still serving");
            }
            return FALSE;
        };
        let mut st = state();
        if st.running == 0 {
            return FALSE; // nobody drains: the default handler ends the process
        }
        st.pending.push(name);
        CHANGED.notify_all();
        if matches!(ctrl_type, CTRL_CLOSE_EVENT | CTRL_SHUTDOWN_EVENT) {
            // The process ends when this returns: give the drain its time.
            let deadline = Instant::now() + CLOSE_GRACE;
            while st.running > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = CHANGED
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        TRUE
    }

    /// Catches the console control events from the moment it is made.
    pub(crate) struct Signals {
        closed: Arc<AtomicBool>,
    }

    /// Ends a [`Signals::wait`] from another thread.
    pub(crate) struct SignalsHandle {
        closed: Arc<AtomicBool>,
    }

    impl Signals {
        /// Ctrl-C, Ctrl-Break, console close, shutdown (`_hup`: no SIGHUP here).
        pub(crate) fn new(_hup: bool) -> io::Result<Signals> {
            let mut err = None;
            INSTALL.call_once(|| {
                // SAFETY: `on_ctrl` is a valid handler for the whole life of the process (a
                // plain function); registering it has no other precondition.
                if unsafe { SetConsoleCtrlHandler(Some(on_ctrl), TRUE) } == 0 {
                    err = Some(io::Error::last_os_error());
                } else {
                    INSTALLED.store(true, Ordering::Release);
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            if !INSTALLED.load(Ordering::Acquire) {
                return Err(io::Error::other("SetConsoleCtrlHandler failed earlier"));
            }
            state().running += 1;
            Ok(Signals {
                closed: Arc::new(AtomicBool::new(false)),
            })
        }

        pub(crate) fn handle(&self) -> SignalsHandle {
            SignalsHandle {
                closed: self.closed.clone(),
            }
        }

        /// Blocks until a control event arrives (its name) or the handle is closed (`None`).
        pub(crate) fn wait(&mut self) -> Option<&'static str> {
            let mut st = state();
            loop {
                if self.closed.load(Ordering::Acquire) {
                    return None;
                }
                if let Some(name) = st.pending.pop() {
                    return Some(name);
                }
                st = CHANGED.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    impl Drop for Signals {
        fn drop(&mut self) {
            // The drain this instance waited for is over: a close handler may return now.
            let mut st = state();
            st.running = st.running.saturating_sub(1);
            CHANGED.notify_all();
        }
    }

    impl SignalsHandle {
        pub(crate) fn close(&self) {
            self.closed.store(true, Ordering::Release);
            let _st = state();
            CHANGED.notify_all();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_logoff_is_passed_on_and_stops_nothing() {
            let mut signals = Signals::new(false).expect("control handler");
            // SAFETY: the handler is a plain function; calling it as Windows would, with a
            // drain registered (`signals`), has no other precondition.
            let handled = unsafe { on_ctrl(CTRL_LOGOFF_EVENT) };
            assert_eq!(handled, FALSE, "passed on to the next (default) handler");
            assert!(state().pending.is_empty(), "no stop queued");
            assert_eq!(stop_event(CTRL_SHUTDOWN_EVENT), Some("CTRL_SHUTDOWN"));
            assert_eq!(stop_event(CTRL_C_EVENT), Some("CTRL_C"));
            signals.handle().close();
            assert_eq!(signals.wait(), None);
        }
    }
}
