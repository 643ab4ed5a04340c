//! An incomplete frame (a line without its terminator, a length header without its payload) is
//! kept while the rest has not arrived, and answered once it has. The server's CPU share over
//! the second it waits is printed (a spinning loop would use a whole core), not asserted:
//! speed and CPU measurements belong to the benchmarks, not to pass/fail tests. Each test runs
//! once per backend.
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

backend_tests!("line_server";
    partial_line_kept_until_complete,
);

backend_tests!("packet_echo_server";
    partial_frame_kept_until_complete,
);

/// CPU share of the server over ~1 s.
fn cpu_share_over_a_second(s: &Server) -> f64 {
    let cpu0 = s.cpu_time();
    let t0 = Instant::now();
    thread::sleep(Duration::from_millis(1000));
    s.cpu_time().saturating_sub(cpu0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

fn partial_line_kept_until_complete(b: Backend) {
    let s = Server::start("line_server", b, &[]);
    let mut c = s.connect();
    let mut greeting = [0u8; 11];
    c.read_exact(&mut greeting).unwrap();
    c.write_all(b"ECHO no terminator yet").unwrap();
    let share = cpu_share_over_a_second(&s);
    println!("CPU with a partial line pending: {:.1}%", share * 100.0);
    // The line completes and is answered: the partial input was kept, not dropped.
    c.write_all(b"\r\n").unwrap();
    let want = b"+no terminator yet\r\n";
    let got = read_exact_timeout(&mut c, want.len(), Duration::from_secs(10)).unwrap();
    assert_eq!(got, want);
}

fn partial_frame_kept_until_complete(b: Backend) {
    let s = Server::start("packet_echo_server", b, &[]);
    let mut c = s.connect();
    let mut frame = 1000u32.to_be_bytes().to_vec();
    frame.extend(std::iter::repeat_n(7u8, 1000));
    c.write_all(&frame[..500]).unwrap();
    let share = cpu_share_over_a_second(&s);
    println!("CPU with a partial frame pending: {:.1}%", share * 100.0);
    c.write_all(&frame[500..]).unwrap();
    let got = read_exact_timeout(&mut c, frame.len(), Duration::from_secs(10)).unwrap();
    assert_eq!(got, frame);
}
