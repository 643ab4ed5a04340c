//! `large_packet_echo_server`: the framing and flags of `packet_echo_server`, plus
//! `--io-buffer BYTES` (default 1024) and a default `--max-frame` of 65536; frames larger than
//! the IO buffer are echoed through a worker pool with per-connection order preserved. Each test
//! runs once per backend.
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::thread;
use std::time::Duration;

use common::packet::{self, Layout};
use common::*;

const SERVER: &str = "large_packet_echo_server";
const DEFAULT_MAX: usize = 65_536;

backend_tests!("large_packet_echo_server";
    frames_around_io_buffer,
    fragmented_round_trip,
    fragmented_small_io_buffer,
    pipelined_mixed_sizes_in_order,
    half_close,
    reset_mid_frame,
    oversized_frame,
    default_max_frame,
    layout_w2_le_includes_header,
    layout_w8_be,
    garbage,
    concurrent_clients_large_frames,
    transfer_buffers_exhausted_hold_and_resume,
);

/// Frames just below, at and above the IO buffer (default 1024) up to the default max.
fn frames_around_io_buffer(b: Backend) {
    let s = Server::start(SERVER, b, &[]);
    let mut rng = Rng::new(test_seed());
    let mut c = s.connect();
    for len in [
        0, 1, 1019, 1020, 1023, 1024, 1025, 2048, 4097, 30_000, 65_535, 65_536,
    ] {
        let f = Layout::DEFAULT.frame(&rng.bytes(len));
        let back = exchange(&mut c, vec![f.clone()], f.len(), IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("frame of {len}: {e}"));
        assert_bytes_eq(&back, &f, &format!("frame of {len}"));
    }
}

fn fragmented_round_trip(b: Backend) {
    packet::fragmented_round_trip(SERVER, b, &[], DEFAULT_MAX, 32);
}

/// `--io-buffer 64`: every frame spans many reads.
fn fragmented_small_io_buffer(b: Backend) {
    packet::fragmented_round_trip(SERVER, b, &["--io-buffer", "64"], 20_000, 24);
}

/// 300 frames of random sizes (small and large mixed) in one write: echoed in order although
/// large ones go through the worker pool.
fn pipelined_mixed_sizes_in_order(b: Backend) {
    let s = Server::start(SERVER, b, &[]);
    let mut rng = Rng::new(test_seed() ^ 0x1A2);
    let mut c = s.connect();
    let mut data = Vec::new();
    for i in 0..300 {
        let len = match rng.below(4) {
            0 => rng.range(0, 16) as usize,
            1 => rng.range(17, 1024) as usize,
            _ => rng.range(1025, DEFAULT_MAX as u64) as usize,
        };
        // Tag each payload with its index so an out-of-order echo is obvious.
        let mut p = rng.bytes(len.max(4));
        p[..4].copy_from_slice(&(i as u32).to_be_bytes());
        data.extend_from_slice(&Layout::DEFAULT.frame(&p));
    }
    let n = data.len();
    let back = exchange(&mut c, vec![data.clone()], n, Duration::from_secs(60)).expect("echo");
    assert_bytes_eq(&back, &data, "pipelined mixed sizes");
}

fn half_close(b: Backend) {
    packet::half_close(SERVER, b, &[], DEFAULT_MAX);
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

fn layout_w8_be(b: Backend) {
    packet::layout_round_trip(SERVER, b, &[], Layout::new(8, false, false));
}

fn garbage(b: Backend) {
    packet::garbage(SERVER, b, &[], DEFAULT_MAX as u64);
}

/// 8 clients at once, each 40 frames of 1..=65536 bytes, with `--io-buffer 512`.
fn concurrent_clients_large_frames(b: Backend) {
    let mut s = Server::start(SERVER, b, &["--io-buffer", "512"]);
    let addr = s.addr;
    let seed = test_seed();
    let handles: Vec<_> = (0..8u64)
        .map(|k| {
            thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (k << 24));
                let mut c = connect(addr);
                let data = packet::random_frames(&mut rng, Layout::DEFAULT, 40, DEFAULT_MAX);
                let chunks = split_random(&data, &mut rng, 100_000);
                let back = exchange(&mut c, chunks, data.len(), Duration::from_secs(60))
                    .unwrap_or_else(|e| panic!("client {k}: {e}"));
                assert_bytes_eq(&back, &data, &format!("client {k}"));
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    s.assert_alive("after concurrent large frames");
}

/// `--transfer-buffers 2 --workers 1`: 8 clients at once each send 24 frames larger than the IO
/// buffer in one write (and read the echo meanwhile), so the two transfer buffers are in use
/// nearly all the time and frames wait for one. No frame may be lost, duplicated or reordered
/// (a held frame is offered again and its connection resumes reading), and the server's memory
/// stays bounded (under 64 MiB of growth; the clients offer up to 12 MiB at once).
fn transfer_buffers_exhausted_hold_and_resume(b: Backend) {
    let s = Server::start(
        SERVER,
        b,
        &[
            "--transfer-buffers",
            "2",
            "--workers",
            "1",
            "--io-threads",
            "1",
        ],
    );
    let rss0 = s.rss_kib();
    let addr = s.addr;
    let seed = test_seed();
    let handles: Vec<_> = (0..8u64)
        .map(|k| {
            thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (k << 16) ^ 0x7B);
                let mut c = connect(addr);
                let mut data = Vec::new();
                for _ in 0..24 {
                    let n = rng.range(2048, DEFAULT_MAX as u64) as usize;
                    data.extend_from_slice(&Layout::DEFAULT.frame(&rng.bytes(n)));
                }
                let back = exchange(
                    &mut c,
                    vec![data.clone()],
                    data.len(),
                    Duration::from_secs(60),
                )
                .unwrap_or_else(|e| panic!("client {k}: {e}"));
                assert_bytes_eq(&back, &data, &format!("client {k}"));
            })
        })
        .collect();
    let mut max_rss = rss0;
    while !handles.iter().all(|h| h.is_finished()) {
        max_rss = max_rss.max(s.rss_kib());
        thread::sleep(Duration::from_millis(20));
    }
    for h in handles {
        h.join().expect("client thread");
    }
    let growth = max_rss.saturating_sub(rss0);
    println!("RSS {rss0} -> max {max_rss} KiB with 2 transfer buffers");
    assert!(
        growth < 64 * 1024,
        "server RSS grew by {growth} KiB with 2 transfer buffers"
    );
}
