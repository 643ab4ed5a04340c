//! Server lifecycle and limits, through `echo_server`: descriptor exhaustion, SIGTERM/SIGINT
//! draining, `--max-connections`, `--idle-timeout`. Each test runs once per backend.
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const SERVER: &str = "echo_server";

backend_tests!("echo_server";
    descriptor_exhaustion_backs_off,
    drain_deadline_resets_what_is_left,
    sigterm_under_load,
    sigint_idle_exits_zero,
    drain_timeout_bounds_shutdown,
    stops_accepting_on_sigterm,
    max_connections,
    idle_timeout,
);

/// Raise our own soft RLIMIT_NOFILE to the hard limit (the flood needs a few hundred fds).
fn raise_own_nofile() {
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Tries `connect + echo` until it works or the deadline passes.
fn served_within(addr: std::net::SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                if let Err(e) = c.write_all(b"are you there") {
                    last = format!("write: {e}");
                } else {
                    match read_exact_timeout(&mut c, 13, Duration::from_millis(1000)) {
                        Ok(b) if b == b"are you there" => return Ok(start.elapsed()),
                        Ok(b) => return Err(format!("wrong echo {b:?}")),
                        Err(e) => last = format!("read: {e}"),
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                last = format!("connect: {e}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Err(last)
}

/// Under `RLIMIT_NOFILE=64` (one IO thread), ~200 connections exhaust the server's
/// descriptors. Accept errors back off (10 ms doubling to 1 s) instead of spinning: over the
/// ~2.5 s the flood is held after the first error, the `accept_errors` counter (read from the
/// server's final stats) moves, but only a handful of times (a fixed 10 ms retry would make
/// ~250, a spin thousands). Existing connections stay served meanwhile, and once the flood is
/// gone new clients are served again without any help.
fn descriptor_exhaustion_backs_off(backend: Backend) {
    raise_own_nofile();
    let mut s = ServerBuilder::new(SERVER)
        .backend(backend)
        .args(&["--io-threads", "1"])
        .nofile_limit(64)
        .start();
    let mut before = s.connect();
    echo_round_trip(&mut before, b"before the flood", "pre-flood client");

    let log_from = s.stderr_len();
    let mut flood = Vec::new();
    let mut failed = 0;
    for _ in 0..200 {
        match TcpStream::connect_timeout(&s.addr, Duration::from_millis(500)) {
            Ok(c) => flood.push(c),
            Err(_) => failed += 1,
        }
    }
    println!(
        "flood: {} connected, {failed} failed; server fds {}",
        flood.len(),
        s.fd_count()
    );
    s.assert_alive("during the flood (RLIMIT_NOFILE=64)");
    assert!(
        flood.len() >= 100,
        "only {} of 200 flood connections were established (listen backlog?)",
        flood.len()
    );
    // The first failed accept is logged (then at most once a second).
    let backed_off = s.wait_for_stderr(Duration::from_secs(10), |t| {
        strip_ansi(t.get(log_from..).unwrap_or(""))
            .lines()
            .any(|l| l.contains("accept failed; backing off"))
    });
    assert!(
        backed_off,
        "no `accept failed; backing off` warning with descriptors exhausted"
    );
    // Hold the flood: the window over which the errors are counted.
    thread::sleep(Duration::from_millis(2500));
    s.assert_alive("at descriptor exhaustion");
    echo_round_trip(
        &mut before,
        b"during the flood",
        "pre-flood client during exhaustion",
    );

    drop(flood);
    let took = served_within(s.addr, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("no new client served within 15 s after the flood: {e}"));
    println!("new client served {took:?} after dropping the flood");
    echo_round_trip(&mut before, b"after the flood", "pre-flood client after");
    drop(before);
    s.signal(libc::SIGTERM);
    let st = s
        .wait_exit(Duration::from_secs(10))
        .expect("exit after SIGTERM");
    assert_clean_exit(st, libc::SIGTERM, "after the flood");
    let stats = s.final_stats();
    let errors = stats.get("accept_errors");
    println!("accept errors while exhausted: {errors}; final stats {stats:?}");
    assert!(
        errors >= 3,
        "only {errors} accept errors in ~2.5 s of exhaustion: accepting was not retried"
    );
    assert!(
        errors <= 60,
        "{errors} accept errors in ~2.5 s of exhaustion: no back-off (10 ms doubling to 1 s \
         allows about 10)"
    );
}

/// Several clients streaming; SIGTERM; the process exits 0 within the drain deadline + margin;
/// every client sees an echo that is a prefix of what it sent, then EOF (its echo was flushed,
/// it kept reading); idle clients see a clean EOF.
fn sigterm_under_load(backend: Backend) {
    let mut s = Server::start(SERVER, backend, &["--drain-timeout", "3"]);
    let seed = test_seed();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut counters = Vec::new();
    for k in 0..4u64 {
        let c = s.connect();
        let received = Arc::new(AtomicU64::new(0));
        counters.push(Arc::clone(&received));
        let mut w = c.try_clone().unwrap();
        let stop_w = Arc::clone(&stop);
        writers.push(thread::spawn(move || {
            let mut rng = Rng::new(seed ^ k);
            let mut buf = vec![0u8; 16 * 1024];
            let mut sent = 0u64;
            while !stop_w.load(Ordering::Relaxed) {
                rng.fill(&mut buf);
                match w.write_all(&buf) {
                    Ok(()) => sent += buf.len() as u64,
                    Err(_) => break,
                }
            }
            sent
        }));
        let mut r = c;
        readers.push(thread::spawn(move || {
            let mut rng = Rng::new(seed ^ k);
            let mut want = vec![0u8; 16 * 1024];
            let mut have = 0usize; // valid bytes in `want` not yet matched
            let mut pos = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            r.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return Ok((Closed::Eof, received.load(Ordering::Relaxed))),
                    Ok(n) => {
                        for &b in &buf[..n] {
                            if have == 0 {
                                rng.fill(&mut want);
                                have = want.len();
                                pos = 0;
                            }
                            if b != want[pos] {
                                return Err(format!(
                                    "client {k}: echo differs at offset {}",
                                    received.load(Ordering::Relaxed)
                                ));
                            }
                            pos += 1;
                            have -= 1;
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if is_reset(&e) => {
                        return Ok((Closed::Reset, received.load(Ordering::Relaxed)))
                    }
                    Err(e) => return Err(format!("client {k}: read error: {e}")),
                }
            }
        }));
    }
    let mut idle: Vec<_> = (0..2).map(|_| s.connect()).collect();
    for c in idle.iter_mut() {
        echo_round_trip(c, b"idle but known", "idle client");
    }
    wait_until(Duration::from_secs(20), "all streams flowing", || {
        counters
            .iter()
            .all(|c| c.load(Ordering::Relaxed) >= 256 * 1024)
    });

    let t = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(3 + 5));
    stop.store(true, Ordering::Relaxed);
    let status = status.expect("no exit within drain-timeout (3 s) + 5 s after SIGTERM");
    println!("exited with {status} {:?} after SIGTERM", t.elapsed());
    assert_clean_exit(status, libc::SIGTERM, "after SIGTERM under load");

    // Each reader keeps reading, so the server's flush completes well before the deadline:
    // every echo stream ends with the server's FIN after its last byte, never a reset.
    for (k, r) in readers.into_iter().enumerate() {
        let res = r.join().expect("reader thread");
        let (how, n) = res.unwrap_or_else(|e| panic!("{e}"));
        println!("streaming client {k}: {n} bytes echoed, then {how:?}");
        assert_eq!(
            how,
            Closed::Eof,
            "streaming client {k}: a reader that keeps reading must see its echo flushed and \
             closed (EOF) at shutdown, after {n} bytes"
        );
    }
    for w in writers {
        w.join().expect("writer thread");
    }
    for (i, c) in idle.iter_mut().enumerate() {
        let data = read_until_eof(c, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("idle client {i}: expected a clean EOF: {e}"));
        assert!(data.is_empty(), "idle client {i} got {} bytes", data.len());
    }
}

/// SIGINT on an idle server (with one idle client): exit 0 promptly, the client sees EOF.
fn sigint_idle_exits_zero(backend: Backend) {
    let mut s = Server::start(SERVER, backend, &[]);
    let mut c = s.connect();
    echo_round_trip(&mut c, b"x", "echo");
    let t = Instant::now();
    s.signal(libc::SIGINT);
    let status = s
        .wait_exit(Duration::from_secs(5 + 3))
        .expect("no exit within the default drain timeout (5 s) + 3 s after SIGINT");
    assert_clean_exit(status, libc::SIGINT, "after SIGINT");
    println!("idle server exited {:?} after SIGINT", t.elapsed());
    let rest = read_until_eof(&mut c, Duration::from_secs(5)).expect("EOF for the idle client");
    assert!(rest.is_empty());
}

/// With `--drain-timeout 1`, a client that never reads (so the flush can never finish) does
/// not hold the process: it exits 0 within ~1 s (+ margin) after SIGTERM.
fn drain_timeout_bounds_shutdown(backend: Backend) {
    let mut s = Server::start(SERVER, backend, &["--drain-timeout", "1"]);
    let hog = s.connect();
    hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut w = hog.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let buf = vec![1u8; 64 * 1024];
        let mut total = 0u64;
        while total < (256 << 20) {
            match w.write(&buf) {
                Ok(n) => total += n as u64,
                Err(_) => break,
            }
        }
        total
    });
    let total = writer.join().unwrap();
    println!("hog blocked after {} KiB", total / 1024);
    let t = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s
        .wait_exit(Duration::from_secs(1 + 4))
        .expect("a stuck client held the process past --drain-timeout 1 + 4 s");
    println!("exited {status} {:?} after SIGTERM", t.elapsed());
    assert_clean_exit(status, libc::SIGTERM, "after a forced drain");
    drop(hog);
}

/// A client that writes without reading until the server stops reading it (backpressure, read
/// from the final stats), then SIGTERM with `--drain-timeout 1`: its echo can never be
/// flushed, so at the deadline the connection is reset (what it had read is a prefix of what it
/// sent), the process exits 0 within the deadline plus a margin, and its final stats count one
/// close for `shutdown`.
fn drain_deadline_resets_what_is_left(backend: Backend) {
    let mut s = Server::start(
        SERVER,
        backend,
        &["--drain-timeout", "1", "--io-threads", "1"],
    );
    let mut hog = s.connect();
    hog.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    // Byte i of the stream is i % 251: partial writes keep it whole.
    let pattern = |from: u64, n: usize| -> Vec<u8> {
        (from..from + n as u64).map(|i| (i % 251) as u8).collect()
    };
    let mut sent = 0u64;
    loop {
        match hog.write(&pattern(sent, 64 * 1024)) {
            Ok(n) => sent += n as u64,
            Err(e) if is_timeout(&e) => break, // the server stopped reading
            Err(e) => panic!("writing after {sent} bytes: {e}"),
        }
        assert!(
            sent < (256 << 20),
            "256 MiB written: the server never stopped reading"
        );
    }
    let t = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s
        .wait_exit(Duration::from_secs(1 + 4))
        .expect("a client that never reads held the process past --drain-timeout 1 + 4 s");
    println!(
        "sent {} KiB; exited {status} {:?} after SIGTERM",
        sent >> 10,
        t.elapsed()
    );
    assert_clean_exit(status, libc::SIGTERM, "after a forced drain");
    let (echoed, how) = read_until_close(&mut hog, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the stuck client's connection after exit: {e}"));
    assert_eq!(
        how,
        Closed::Reset,
        "a connection left at the drain deadline must be reset"
    );
    assert_bytes_eq(
        &echoed,
        &pattern(0, echoed.len()),
        "the echo before the reset",
    );
    let stats = s.final_stats();
    println!(
        "{} KiB echoed before the reset; final stats {stats:?}",
        echoed.len() >> 10
    );
    assert_eq!(
        stats.closed_by(&ringport::CloseReason::DrainTimeout),
        1,
        "{stats:?}"
    );
    assert!(stats.get("backpressure_pauses") >= 1, "{stats:?}");
}

/// After SIGTERM the server stops accepting: a connection attempted during the drain is never
/// served (refused, or closed without any echo).
fn stops_accepting_on_sigterm(backend: Backend) {
    let mut s = Server::start(SERVER, backend, &["--drain-timeout", "3"]);
    // Keep the drain going with a client that doesn't read.
    let hog = s.connect();
    hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut w = hog.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let buf = vec![1u8; 64 * 1024];
        let mut total = 0u64;
        while total < (256 << 20) {
            match w.write(&buf) {
                Ok(n) => total += n as u64,
                Err(_) => break,
            }
        }
    });
    writer.join().unwrap();
    let before = s.stderr_len();
    s.signal(libc::SIGTERM);
    // The engine logs this line once every IO thread has closed its listeners: a connection
    // made after it is never served.
    let acknowledged = s.wait_for_stderr(Duration::from_secs(5), |t| {
        strip_ansi(t.get(before..).unwrap_or("")).lines().any(|l| {
            l.contains("shutting down: draining connections")
                && l.contains("stopped_accepting=true")
        })
    });
    assert!(
        acknowledged,
        "no `shutting down: draining connections ... stopped_accepting=true` line after \
         SIGTERM; stderr: {}",
        s.stderr_text()
    );
    // The listener may close at once (refused) or linger until exit (then reset).
    match TcpStream::connect_timeout(&s.addr, Duration::from_secs(2)) {
        Err(e) => println!("connect during drain: {e} (refused: fine)"),
        Ok(mut late) => {
            let _ = late.write_all(b"late");
            let (data, how) = expect_closed(
                &mut late,
                Duration::from_secs(3 + 5),
                "a connection made after SIGTERM",
            );
            assert!(
                data.is_empty(),
                "a connection made after SIGTERM was served ({:?})",
                String::from_utf8_lossy(&data)
            );
            println!("connect during drain: accepted by the kernel, then {how:?}");
        }
    }
    let status = s.wait_exit(Duration::from_secs(3 + 5)).expect("exit");
    assert_clean_exit(status, libc::SIGTERM, "after SIGTERM");
    drop(hog);
}

/// `--max-connections 5`: a 6th connection is accepted and closed at once; the first 5 are still
/// served; once one leaves, a new one is served.
fn max_connections(backend: Backend) {
    let mut s = Server::start(SERVER, backend, &["--max-connections", "5"]);
    let mut five: Vec<_> = (0..5).map(|_| s.connect()).collect();
    for (i, c) in five.iter_mut().enumerate() {
        echo_round_trip(c, format!("client {i}").as_bytes(), "one of the first 5");
    }
    for attempt in 0..3 {
        let mut sixth = s.connect();
        let _ = sixth.write_all(b"sixth");
        let (data, how) = expect_closed(
            &mut sixth,
            Duration::from_secs(5),
            &format!("6th connection (attempt {attempt}) with --max-connections 5"),
        );
        assert!(
            data.is_empty(),
            "the 6th connection was served: {:?}",
            String::from_utf8_lossy(&data)
        );
        println!("6th connection: {how:?}");
    }
    for (i, c) in five.iter_mut().enumerate() {
        echo_round_trip(
            c,
            format!("still {i}").as_bytes(),
            "first 5 after rejections",
        );
    }
    // One leaves: a new connection gets its slot (closing is asynchronous: retry).
    drop(five.pop());
    let took = served_within(s.addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no new client served after one of 5 left: {e}"));
    println!("slot reused after {took:?}");
    s.assert_alive("end");
}

/// `--idle-timeout 1`: an idle connection is closed by the server (after about a second, within
/// a few), an active one is not.
fn idle_timeout(backend: Backend) {
    let s = Server::start(SERVER, backend, &["--idle-timeout", "1"]);
    let mut idle = s.connect();
    let mut active = s.connect();
    // Taken before the round trip: the server's last activity (the echo's send completing)
    // is after it, so a correct server cannot close sooner than a second after `t`.
    let t = Instant::now();
    echo_round_trip(&mut idle, b"then silence", "idle client");
    let idle_thread = thread::spawn(move || {
        let r = read_until_close(&mut idle, Duration::from_secs(6));
        (r, t.elapsed())
    });
    // The active client talks every 200 ms for 3 s.
    while t.elapsed() < Duration::from_secs(3) {
        echo_round_trip(&mut active, b"tick", "active client during idle timeout");
        thread::sleep(Duration::from_millis(200));
    }
    let (r, after) = idle_thread.join().unwrap();
    let (data, how) =
        r.unwrap_or_else(|e| panic!("idle connection not closed by --idle-timeout 1: {e}"));
    println!("idle connection closed ({how:?}) after {after:?}");
    assert!(data.is_empty());
    assert!(
        after >= Duration::from_millis(900),
        "idle connection closed after only {after:?} with --idle-timeout 1"
    );
    echo_round_trip(&mut active, b"still alive", "active client after 3 s");
}
