//! Frame-size flags above the default input limit take effect: `--max-frame` and `--max-line`
//! of 16 MiB let a 9 MiB frame or line through (the server's input limit follows the codec's
//! longest frame), where they used to be capped at 8 MiB without a word (the frame closed the
//! connection as "too much undecoded input", the line got no reply). Each test runs once per
//! backend.
// The process harness (tests/common) is Linux-only.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

use common::*;

/// 9 MiB: more than the default input limit (8 MiB), less than the 16 MiB flags.
const BIG: usize = 9 << 20;
const FLAG: &str = "16777216";

mod packet {
    use super::*;
    backend_tests!("packet_echo_server"; a_9_mib_frame_with_max_frame_16_mib_echoes);
}
mod line {
    use super::*;
    backend_tests!("line_server"; a_9_mib_line_with_max_line_16_mib_is_answered);
}

/// Sends `request` from another thread while reading `want` bytes back; returns them (fewer if
/// the server closed first).
fn send_and_read(c: TcpStream, request: Vec<u8>, want: usize) -> Vec<u8> {
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&request));
    let mut got = Vec::with_capacity(want);
    let _ = c.take(want as u64).read_to_end(&mut got);
    let _ = writer.join().unwrap();
    got
}

fn a_9_mib_frame_with_max_frame_16_mib_echoes(b: Backend) {
    let s = Server::start("packet_echo_server", b, &["--max-frame", FLAG]);
    let frame: Vec<u8> = (BIG as u32)
        .to_be_bytes()
        .into_iter()
        .chain((0..BIG).map(|i| (i % 251) as u8))
        .collect();
    let got = send_and_read(s.connect(), frame.clone(), frame.len());
    assert!(
        got == frame,
        "{} of {} bytes echoed; stderr: {}",
        got.len(),
        frame.len(),
        tail(&s.stderr_text(), 2000)
    );
}

fn a_9_mib_line_with_max_line_16_mib_is_answered(b: Backend) {
    let s = Server::start("line_server", b, &["--max-line", FLAG]);
    let mut c = s.connect();
    let mut greeting = [0u8; 11];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"+OK ready\r\n");
    let text = "x".repeat(BIG);
    let want = format!("+{text}\r\n");
    let got = send_and_read(c, format!("ECHO {text}\r\n").into_bytes(), want.len());
    assert!(
        got == want.as_bytes(),
        "{} of {} bytes answered, starting {:?}; stderr: {}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&got[..got.len().min(40)]),
        tail(&s.stderr_text(), 2000)
    );
}
