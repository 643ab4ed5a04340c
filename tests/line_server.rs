//! `line_server`: the line protocol, handled on the IO threads (a SLEEP blocks its IO thread).
//! Each test runs once per backend.
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::line::{self, LineClient};
use common::*;

const SERVER: &str = "line_server";

backend_tests!("line_server";
    greeting_and_verbs,
    verbs_case_insensitive,
    bare_lf_accepted,
    quit_closes_after_flush,
    empty_and_unknown_keep_connection,
    sleep_arguments,
    pipelined_in_order,
    fragmented_commands,
    line_too_long,
    line_too_long_default,
    garbage_lines,
    connect_and_vanish_flood,
    reset_mid_line,
    many_concurrent_clients,
    sigterm_flushes_pending_reply,
    sleep_blocks_its_io_thread,
);

fn greeting_and_verbs(b: Backend) {
    line::greeting_and_verbs(SERVER, b);
}

fn verbs_case_insensitive(b: Backend) {
    line::verbs_case_insensitive(SERVER, b);
}

fn bare_lf_accepted(b: Backend) {
    line::bare_lf_accepted(SERVER, b);
}

fn quit_closes_after_flush(b: Backend) {
    line::quit_closes_after_flush(SERVER, b);
}

fn empty_and_unknown_keep_connection(b: Backend) {
    line::empty_and_unknown_keep_connection(SERVER, b);
}

fn sleep_arguments(b: Backend) {
    line::sleep_arguments(SERVER, b);
}

fn pipelined_in_order(b: Backend) {
    // SLEEPs block the IO thread here: keep them short.
    line::pipelined_in_order(SERVER, b, 2);
}

fn fragmented_commands(b: Backend) {
    line::fragmented_commands(SERVER, b);
}

fn line_too_long(b: Backend) {
    line::line_too_long(SERVER, b);
}

fn line_too_long_default(b: Backend) {
    line::line_too_long_default(SERVER, b);
}

fn garbage_lines(b: Backend) {
    line::garbage_lines(SERVER, b);
}

fn connect_and_vanish_flood(b: Backend) {
    line::connect_and_vanish_flood(SERVER, b);
}

fn reset_mid_line(b: Backend) {
    line::reset_mid_line(SERVER, b);
}

fn many_concurrent_clients(b: Backend) {
    line::many_concurrent_clients(SERVER, b);
}

fn sigterm_flushes_pending_reply(b: Backend) {
    line::sigterm_flushes_pending_reply(SERVER, b);
}

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
