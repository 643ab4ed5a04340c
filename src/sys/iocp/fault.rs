//! Fault injection at the WinSock boundary, compiled only for the unit tests: makes a WinSock
//! call of this backend fail as real Windows may (resource errors Wine never produces, an
//! accept aborted by the peer), so the tests in `tests.rs` can drive the backend's handling of
//! them. Per thread: a backend and its test run on one thread.

use std::cell::Cell;

/// The injectable calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Call {
    /// `WSARecv` (the zero-byte receive) fails synchronously.
    Recv,
    /// An `AcceptEx` completes with an error.
    AcceptDone,
}

#[derive(Clone, Copy)]
struct Fault {
    call: Call,
    error: i32,
    times: u32,
}

thread_local! {
    static FAULT: Cell<Option<Fault>> = const { Cell::new(None) };
    static ATTEMPTS: Cell<u32> = const { Cell::new(0) };
}

/// Makes the next `times` occurrences of `call` fail with WinSock error `error`.
pub(super) fn inject(call: Call, error: i32, times: u32) {
    FAULT.with(|f| f.set(Some(Fault { call, error, times })));
    ATTEMPTS.with(|a| a.set(0));
}

/// How often the injected call was reached since [`inject`] (failed or not).
pub(super) fn attempts() -> u32 {
    ATTEMPTS.with(Cell::get)
}

/// Called by the backend at `call`: the error to fake, if one is injected there.
pub(super) fn take(call: Call) -> Option<i32> {
    FAULT.with(|f| {
        let mut fault = f.get()?;
        if fault.call != call {
            return None;
        }
        ATTEMPTS.with(|a| a.set(a.get() + 1));
        if fault.times == 0 {
            return None;
        }
        fault.times -= 1;
        f.set(Some(fault));
        Some(fault.error)
    })
}

/// Clears any injected fault (end of a test).
pub(super) fn clear() {
    FAULT.with(|f| f.set(None));
}
