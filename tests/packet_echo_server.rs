//! `packet_echo_server`: 4-byte big-endian length + payload frames echoed unchanged; other
//! layouts; oversized and invalid lengths close only the offending connection. Each test runs
//! once per backend.
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use common::packet::{self, Layout};
use common::*;

const SERVER: &str = "packet_echo_server";
const DEFAULT_MAX: usize = 1 << 20;

backend_tests!("packet_echo_server";
    fragmented_round_trip,
    pipelined_frames,
    half_close,
    reset_mid_frame,
    oversized_frame,
    default_max_frame,
    layout_w2_le_includes_header,
    layout_w1,
    layout_w8_be,
    layout_w8_le_includes_header,
    layout_w4_le,
    length_below_header,
    huge_length_width8,
    garbage,
    concurrent_clients,
);

fn fragmented_round_trip(b: Backend) {
    packet::fragmented_round_trip(SERVER, b, &[], 5000, 48);
}

fn pipelined_frames(b: Backend) {
    packet::pipelined_frames(SERVER, b, &[], 600);
}

fn half_close(b: Backend) {
    packet::half_close(SERVER, b, &[], 20_000);
}

fn reset_mid_frame(b: Backend) {
    packet::reset_mid_frame(SERVER, b, &[]);
}

fn oversized_frame(b: Backend) {
    packet::oversized_frame(SERVER, b, &[]);
}

fn default_max_frame(b: Backend) {
    packet::default_max_frame(SERVER, b, &[], DEFAULT_MAX);
}

fn layout_w2_le_includes_header(b: Backend) {
    packet::layout_round_trip(SERVER, b, &[], Layout::new(2, true, true));
}

fn layout_w1(b: Backend) {
    packet::layout_round_trip(SERVER, b, &[], Layout::new(1, false, false));
}

fn layout_w8_be(b: Backend) {
    packet::layout_round_trip(SERVER, b, &[], Layout::new(8, false, false));
}

fn layout_w8_le_includes_header(b: Backend) {
    packet::layout_round_trip(SERVER, b, &[], Layout::new(8, true, true));
}

fn layout_w4_le(b: Backend) {
    packet::layout_round_trip(SERVER, b, &[], Layout::new(4, true, false));
}

fn length_below_header(b: Backend) {
    packet::layout_length_below_header(SERVER, b, &[]);
}

fn huge_length_width8(b: Backend) {
    packet::huge_length_width8(SERVER, b, &[]);
}

fn garbage(b: Backend) {
    packet::garbage(SERVER, b, &[], DEFAULT_MAX as u64);
}

fn concurrent_clients(b: Backend) {
    packet::concurrent_clients(SERVER, b, &[], 3000);
}
