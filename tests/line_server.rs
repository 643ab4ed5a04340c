//! `line_server`: the line protocol, handled on the IO threads (a SLEEP blocks its IO thread).
//! Each test runs once per backend.
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::line::LineClient;
use common::*;

const SERVER: &str = "line_server";

// SLEEPs block the IO thread here: keep them short.
line_suite!("line_server", pipelined_sleep_ms = 2);

backend_tests!("line_server";
    sleep_blocks_its_io_thread,
);

/// In `line_server` a SLEEP blocks its IO thread (handlers run on it): with one IO thread, a
/// PING sent on another connection once the server has read the SLEEP is not answered before
/// the SLEEP ends. The bound is a lower one (a blocked thread cannot be faster), not a speed.
fn sleep_blocks_its_io_thread(b: Backend) {
    const SLEEP_MS: u64 = 1500;
    let s = Server::start(SERVER, b, &["--io-threads", "1"]);
    let mut sleeper = LineClient::connect(s.addr);
    let mut pinger = LineClient::connect(s.addr);
    let t = Instant::now();
    sleeper.cmd(&format!("SLEEP {SLEEP_MS}"));
    // The SLEEP's bytes have left the kernel for the server: its handler is running, or its
    // data is ahead of the PING's in the IO thread's queue of completions or readiness.
    wait_server_read_all(&sleeper.stream, "the server reading the SLEEP");
    pinger.cmd("PING");
    pinger.expect("+PONG", "PING during another connection's SLEEP");
    let ping_after = t.elapsed();
    sleeper.expect(&format!("+SLEPT {SLEEP_MS}"), "SLEEP reply");
    println!(
        "line_server --io-threads 1: PING answered {ping_after:?} after SLEEP {SLEEP_MS} was sent"
    );
    assert!(
        ping_after >= Duration::from_millis(SLEEP_MS),
        "a PING on the same IO thread was answered {ping_after:?} after a SLEEP {SLEEP_MS} \
         started: the SLEEP did not block its IO thread"
    );
}
