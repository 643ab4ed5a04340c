//! Shared by the library-level tests (`Engine` in-process, no example binaries): one test body
//! run once per backend, and engine construction that skips (visibly) only where the kernel
//! refuses io_uring (`Error::UringUnavailable`) — or fails, when `RINGPORT_TEST_REQUIRE_URING=1`
//! says it must be there. Every other build error, on either backend, is a failure.

#![allow(dead_code)]

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
