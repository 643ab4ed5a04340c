//! Shared harness for the process-level integration tests.
//!
//! The example servers are driven as separate processes through their CLI contract:
//! `--listen 127.0.0.1:0 --backend <b>`, one `listening on IP:PORT (backend: NAME)` line on
//! stdout, logs on stderr. [`Server`] spawns one, waits (bounded) for that line, drains stderr
//! into a shared buffer and kills the process on drop (printing its stderr if the test failed).
//!
//! The examples are built once per test run by the harness itself ([`ensure_examples_built`]),
//! with the test binary's profile and target directory: a test never runs a stale server, and a
//! missing example is a failure. The build reports on stderr as it goes (one line per example
//! built), so the first test never looks hung.
//!
//! [`backend_tests!`] generates one `#[test]` per backend for each test body, like monoio's
//! `test_all`: `body::epoll` and `body::uring`. The uring variant is skipped (with a printed
//! `skipped: io_uring unavailable: <reason>`) only when the server refuses `--backend uring`
//! with its documented one-line error and exit status 1; set `RINGPORT_TEST_REQUIRE_URING=1` to
//! turn that skip into a failure.
//!
//! Randomised tests take a fresh seed per run (printed); `RINGPORT_TEST_SEED=<n>` replays one.

#![allow(dead_code)]

mod build;
mod client;
pub mod close;
pub mod deploy;
#[macro_use]
pub mod hostile;
pub mod line;
mod observe;
pub mod packet;
mod server;
/// The library-level tests' harness: its client basics (`support::net`) are this one's too.
#[path = "../support/mod.rs"]
pub mod support;
pub mod tls;

pub use build::*;
pub use client::*;
pub use net::{
    assert_bytes_eq, expect_closed, is_reset, is_timeout, read_until_close, test_seed, Closed, Rng,
    IO_TIMEOUT,
};
#[allow(unused_imports)] // not every test binary watches the kernel or the final stats
pub use observe::*;
pub use server::*;
pub use support::net;

use std::fmt;
use std::time::Duration;

/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a client keeps retrying to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Per-backend test generation
// ---------------------------------------------------------------------------------------------

/// `backend_tests!("server_name"; body_a, body_b);` generates, for each body
/// `fn body(backend: Backend)`, a module `body` with the tests `epoll` and `uring`.
///
/// A missing example binary fails the test (the harness builds the examples once per run, see
/// [`ensure_examples_built`]); only a precise io_uring refusal skips the uring variant.
macro_rules! backend_tests {
    ($server:literal; $($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn epoll() {
                    if let Some(b) =
                        $crate::common::prepare($server, $crate::common::Backend::Epoll)
                    {
                        super::$name(b)
                    }
                }

                #[test]
                fn uring() {
                    if let Some(b) =
                        $crate::common::prepare($server, $crate::common::Backend::Uring)
                    {
                        super::$name(b)
                    }
                }
            }
        )+
    };
}

/// The shared line-protocol suite of [`line`] for a line server binary, each test once per
/// backend under its own name; `pipelined_sleep_ms` bounds the SLEEPs `pipelined_in_order`
/// pipelines (short where a SLEEP blocks the IO thread).
#[allow(unused_macros)] // used by the two line-server test files only
macro_rules! line_suite {
    ($server:literal, pipelined_sleep_ms = $ms:expr) => {
        line_suite!(@each $server; greeting_and_verbs, verbs_case_insensitive, bare_lf_accepted, quit_closes_after_flush, empty_and_unknown_keep_connection, sleep_arguments, fragmented_commands, line_too_long, line_too_long_default, garbage_lines, connect_and_vanish_flood, reset_mid_line, many_concurrent_clients, sigterm_flushes_pending_reply);
        fn pipelined_in_order(b: $crate::common::Backend) {
            $crate::common::line::pipelined_in_order($server, b, $ms)
        }
        backend_tests!($server; pipelined_in_order);
    };
    (@each $server:literal; $($name:ident),+) => {
        $(
            fn $name(b: $crate::common::Backend) {
                $crate::common::line::$name($server, b)
            }
        )+
        backend_tests!($server; $($name),+);
    };
}

/// The IO backend a server is asked to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Epoll,
    Uring,
    Auto,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::Uring => "uring",
            Backend::Auto => "auto",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
