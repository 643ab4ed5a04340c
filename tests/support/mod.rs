//! Shared by the library-level tests (`Engine` in-process, no example binaries): one test body
//! run once per backend, and engine construction that skips (visibly) where io_uring is
//! unavailable — or fails, when `RINGPORT_TEST_REQUIRE_URING=1` says it must be there.

use ringport::{BackendKind, Engine};

/// An engine on `kind` with `io_threads` threads, or `None` (printed) when the backend is
/// unavailable here.
pub fn engine(kind: BackendKind, io_threads: usize) -> Option<Engine> {
    match Engine::builder()
        .backend(kind)
        .io_threads(io_threads)
        .build()
    {
        Ok(e) => Some(e),
        Err(e) => {
            if std::env::var_os("RINGPORT_TEST_REQUIRE_URING").is_some_and(|v| v != "0") {
                panic!("io_uring required (RINGPORT_TEST_REQUIRE_URING) but: {e}");
            }
            println!("skipped: {e}");
            None
        }
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
