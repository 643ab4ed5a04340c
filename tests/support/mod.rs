//! Shared by the library-level tests (`Engine` in-process, no example binaries): one test body
//! run once per backend, and engine construction that skips (visibly) only where the kernel
//! refuses io_uring (`Error::UringUnavailable`) — or fails, when `RINGPORT_TEST_REQUIRE_URING=1`
//! says it must be there. Every other build error, on either backend, is a failure. The
//! process-level harness (`tests/common`) includes this one as `common::support`.

#![allow(dead_code)]

pub mod certs;
pub mod limits;
pub mod net;

use ringport::{BackendKind, Engine, EngineBuilder, Error};

/// Whether `RINGPORT_TEST_REQUIRE_URING` asks for io_uring (any value but `0`).
pub fn uring_required() -> bool {
    std::env::var_os("RINGPORT_TEST_REQUIRE_URING").is_some_and(|v| v != "0")
}

/// An engine on `kind` with `io_threads` threads, or `None` (printed) when the kernel refuses
/// io_uring.
pub fn engine(kind: BackendKind, io_threads: usize) -> Option<Engine> {
    build(Engine::builder().backend(kind).io_threads(io_threads))
}

/// Builds `builder` (which names its backend); `None` (printed) only for a refused io_uring.
pub fn build(builder: EngineBuilder) -> Option<Engine> {
    match builder.build() {
        Ok(e) => Some(e),
        Err(Error::UringUnavailable(reason)) => {
            if uring_required() {
                panic!("io_uring required (RINGPORT_TEST_REQUIRE_URING) but unavailable: {reason}");
            }
            println!("skipped: io_uring unavailable: {reason}");
            None
        }
        Err(e) => panic!("building the engine failed: {e}"),
    }
}

/// `on_every_backend!(a, b)`: tests `epoll::a`, `uring::a`, ... calling `a(BackendKind)`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        #[cfg(not(windows))]
        mod epoll {
            $(#[test] fn $name() { super::$name(ringport::BackendKind::Epoll) })*
        }
        #[cfg(not(windows))]
        mod uring {
            $(#[test] fn $name() { super::$name(ringport::BackendKind::Uring) })*
        }
        #[cfg(windows)]
        mod iocp {
            $(#[test] fn $name() { super::$name(ringport::BackendKind::Iocp) })*
        }
        #[cfg(windows)]
        mod poll {
            $(#[test] fn $name() { super::$name(ringport::BackendKind::Poll) })*
        }
    };
}

/// Whether this test process runs under Wine (its loader sets `WINECONFIGDIR` and
/// `WINELOADER` in every process it starts).
pub fn under_wine() -> bool {
    cfg!(windows)
        && (std::env::var_os("WINECONFIGDIR").is_some() || std::env::var_os("WINELOADER").is_some())
}

/// Skips (printed) a test that cannot pass under Wine on the backends in `on`, for the reason
/// given; every such skip is listed in ARCHITECTURE.md (Windows). `true`: skipped. On Windows
/// itself, and on every other OS, the test runs; under Wine too with
/// `RINGPORT_TEST_WINE_NO_SKIP=1` (to re-check whether Wine still differs).
pub fn skip_under_wine(kind: BackendKind, on: &[BackendKind], why: &str) -> bool {
    let forced = std::env::var_os("RINGPORT_TEST_WINE_NO_SKIP").is_some_and(|v| v == "1");
    if under_wine() && on.contains(&kind) && !forced {
        println!("skipped: Wine 8 differs from Windows here ({kind:?}): {why}");
        return true;
    }
    false
}

/// Under Wine 8 a peer's reset reaches a blocking `read` (the test's own clients) and mio's
/// AFD readiness (`poll`) as a clean EOF: the read returns 0 (Wine seems to take the socket's
/// error first; not traced in Wine's code). The reset itself is sent: a Linux peer sees
/// ECONNRESET. `iocp` takes the error from its zero-byte receive's completion and counts a
/// peer's reset as `reset`.
pub const WINE_NO_RESET: &str = "a peer's reset is read as a clean EOF";
