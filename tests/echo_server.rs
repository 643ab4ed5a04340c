//! `echo_server`: every byte comes back, whatever the fragmentation, volume or client behaviour.
//! Each test runs once per backend (`<test>::epoll`, `<test>::uring`).
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::{any, prop, prop_assert, TestCaseError};

const SERVER: &str = "echo_server";

backend_tests!("echo_server";
    listening_line_and_echo,
    fragmented_writes_round_trip,
    pipelined_burst,
    echo_16_mib,
    half_close,
    reset_mid_stream,
    many_concurrent_clients,
    io_threads_flag,
    non_reading_client,
);

fn listening_line_and_echo(backend: Backend) {
    let s = Server::start(SERVER, backend, &[]);
    assert_eq!(s.addr.ip().to_string(), "127.0.0.1");
    assert_ne!(
        s.addr.port(),
        0,
        "the listening line must carry the real port"
    );
    assert_eq!(s.backend, backend.name());
    let out = s.stdout_text();
    assert_eq!(
        out.lines().count(),
        1,
        "exactly one line on stdout expected, got {out:?}"
    );
    let mut c = s.connect();
    echo_round_trip(&mut c, b"hello ringport", "first echo");
    echo_round_trip(&mut c, &[0u8, 255, 10, 13, 0], "binary echo");
}

/// Random data written in random-sized pieces (proptest, seeded) comes back intact and in
/// order, on a fresh connection per case.
fn fragmented_writes_round_trip(backend: Backend) {
    let s = Server::start(SERVER, backend, &[]);
    let addr = s.addr;
    let mut runner = proptest_runner(48);
    let strategy = (
        0usize..200_000,
        prop::collection::vec(1usize..=4096, 1..64),
        any::<u64>(),
    );
    let result = runner.run(&strategy, |(len, chunk_sizes, seed)| {
        let data = Rng::new(seed).bytes(len);
        let chunks = split_by_sizes(&data, &chunk_sizes);
        let mut c = connect(addr);
        let back = exchange(&mut c, chunks, data.len(), IO_TIMEOUT)
            .map_err(|e| TestCaseError::fail(format!("exchange: {e}")))?;
        prop_assert!(back == data, "echo differs ({} bytes)", len);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// 2000 small messages in one write, then tiny writes interleaved with reads.
fn pipelined_burst(backend: Backend) {
    let s = Server::start(SERVER, backend, &[]);
    let mut c = s.connect();
    let mut burst = Vec::new();
    for i in 0..2000 {
        burst.extend_from_slice(format!("message {i}\n").as_bytes());
    }
    let n = burst.len();
    let back = exchange(&mut c, vec![burst.clone()], n, IO_TIMEOUT).expect("burst");
    assert_bytes_eq(&back, &burst, "pipelined burst");
    for i in 0..200u32 {
        echo_round_trip(&mut c, &i.to_be_bytes()[3..], "1-byte round trip");
    }
}

/// 16 MiB through one connection: written by one thread, read and compared by another.
fn echo_16_mib(backend: Backend) {
    const TOTAL: usize = 16 << 20;
    let s = Server::start(SERVER, backend, &[]);
    let mut c = s.connect();
    let seed = test_seed();
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            let n = (TOTAL - sent).min(buf.len());
            rng.fill(&mut buf[..n]);
            w.write_all(&buf[..n])?;
            sent += n;
        }
        std::io::Result::Ok(())
    });
    let start = Instant::now();
    let mut rng = Rng::new(seed);
    let mut want = vec![0u8; 256 * 1024];
    let mut received = 0;
    while received < TOTAL {
        // Same block boundaries as the writer so the expected bytes can be regenerated.
        let n = (TOTAL - received).min(want.len());
        rng.fill(&mut want[..n]);
        let chunk = read_exact_timeout(&mut c, n, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("after {received} of {TOTAL} bytes: {e}"));
        assert_bytes_eq(
            &chunk,
            &want[..n],
            &format!("16 MiB echo, block at offset {received}"),
        );
        received += n;
    }
    writer.join().unwrap().expect("writer");
    println!("16 MiB echoed in {:?}", start.elapsed());
    c.shutdown(Shutdown::Write).unwrap();
    let rest = read_until_eof(&mut c, IO_TIMEOUT).expect("EOF after half-close");
    assert!(
        rest.is_empty(),
        "{} unexpected bytes after the 16 MiB",
        rest.len()
    );
}

/// Data then `shutdown(Write)`: all of it echoed, then a clean EOF.
fn half_close(backend: Backend) {
    let s = Server::start(SERVER, backend, &[]);
    let mut rng = Rng::new(test_seed());
    for len in [0usize, 1, 1000, 65_536, 1 << 20] {
        let data = rng.bytes(len);
        let mut c = s.connect();
        let mut w = c.try_clone().unwrap();
        let sent = data.clone();
        let writer = thread::spawn(move || {
            w.write_all(&sent)?;
            w.shutdown(Shutdown::Write)
        });
        let back = read_until_eof(&mut c, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{len} bytes then half-close: {e}"));
        writer.join().unwrap().expect("writer");
        assert_bytes_eq(&back, &data, &format!("half-close after {len} bytes"));
    }
}

/// Clients reset the connection while the server holds (or is echoing) their data.
fn reset_mid_stream(backend: Backend) {
    let mut s = Server::start(SERVER, backend, &[]);
    let mut healthy = s.connect();
    echo_round_trip(&mut healthy, b"before", "healthy");
    let mut rng = Rng::new(test_seed());
    for i in 0..40 {
        let mut c = s.connect();
        let n = [1usize, 100, 10_000, 300_000][i % 4];
        let _ = c.write_all(&rng.bytes(n));
        if i % 5 == 0 {
            // Read a little of the echo first.
            let mut b = [0u8; 1];
            let _ = c.read(&mut b);
        }
        reset_close(c);
    }
    s.assert_alive("after 40 resets mid-stream");
    echo_round_trip(&mut healthy, b"after", "healthy");
    let mut fresh = s.connect();
    echo_round_trip(&mut fresh, b"fresh", "fresh client");
}

/// 64 concurrent clients, each 20 round trips.
fn many_concurrent_clients(backend: Backend) {
    let mut s = Server::start(SERVER, backend, &[]);
    let addr = s.addr;
    let handles: Vec<_> = (0..64u32)
        .map(|k| {
            thread::spawn(move || {
                let mut c = connect(addr);
                for j in 0..20u32 {
                    let msg = format!("client {k} round {j} {}", "x".repeat((k * 37 + j) as usize));
                    echo_round_trip(&mut c, msg.as_bytes(), &format!("client {k}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    s.assert_alive("after 64 clients");
}

/// `--io-threads 1` and `--io-threads 3` both serve many connections.
fn io_threads_flag(backend: Backend) {
    for n in ["1", "3"] {
        let s = Server::start(SERVER, backend, &["--io-threads", n]);
        let mut clients: Vec<_> = (0..12).map(|_| s.connect()).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            echo_round_trip(c, format!("io-threads {n}, client {i}").as_bytes(), "echo");
        }
    }
}

/// A client offers 128 MiB without ever reading. The server must apply backpressure (stop
/// reading it) instead of buffering: the client's writes stall before 128 MiB, the server's RSS
/// grows by far less than what was offered (under 32 MiB: the write queue's high watermark,
/// the receive buffers and the allocator's slack), and another client is served meanwhile.
fn non_reading_client(backend: Backend) {
    const TOTAL: u64 = 128 << 20;
    let mut s = Server::start(SERVER, backend, &[]);
    let mut other = s.connect();
    echo_round_trip(&mut other, b"warm-up", "warm-up");
    let rss0 = s.rss_kib();

    let hog = s.connect();
    hog.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let written = Arc::clone(&written);
        let done = Arc::clone(&done);
        let mut hog = hog.try_clone().unwrap();
        thread::spawn(move || {
            let buf = vec![0xA5u8; 64 * 1024];
            while written.load(Ordering::Relaxed) < TOTAL {
                match hog.write(&buf) {
                    Ok(n) => {
                        written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => break, // blocked for 3 s: backpressure reached
                }
            }
            done.store(true, Ordering::Relaxed);
        })
    };

    let mut max_rss = rss0;
    let mut worst = Duration::ZERO;
    let mut i = 0u32;
    while !done.load(Ordering::Relaxed) {
        let t = Instant::now();
        echo_round_trip(
            &mut other,
            format!("ping {i}").as_bytes(),
            "served while hogged",
        );
        worst = worst.max(t.elapsed());
        max_rss = max_rss.max(s.rss_kib());
        i += 1;
        thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    max_rss = max_rss.max(s.rss_kib());
    let w = written.load(Ordering::Relaxed);
    println!(
        "hog wrote {} KiB before blocking; RSS {} -> max {} KiB; {} round trips meanwhile, worst {:?}",
        w / 1024,
        rss0,
        max_rss,
        i,
        worst
    );
    assert!(
        w < TOTAL,
        "the client wrote all {} MiB without reading: the server never stopped reading it",
        TOTAL >> 20
    );
    let growth = max_rss.saturating_sub(rss0);
    assert!(
        growth < 32 * 1024,
        "server RSS grew by {growth} KiB (from {rss0} KiB) while a client wrote {} KiB without \
         reading: no backpressure",
        w / 1024
    );
    s.assert_alive("after the non-reading client");
    drop(hog);
    echo_round_trip(&mut other, b"after", "after the hog left");
}
