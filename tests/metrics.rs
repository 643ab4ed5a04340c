#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! `--metrics ADDR`: the engine serves Prometheus metrics on a server of its own. `promtool`
//! (Debian `prometheus`, nobody here wrote it) accepts the exposition; the counters move as
//! traffic runs; a scrape during 5,000 open connections answers at once and disturbs none.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::deploy::{
    http_get, metrics_addr, promtool_check, sample, sum_samples, tool, wait_closes_counted,
};
use common::*;

backend_tests!("echo_server";
    promtool_accepts_and_counters_move,
    scrape_during_many_connections,
    scrape_gets_through_trickling_clients,
    trickled_request_ends_at_its_deadline,
);

backend_tests!("line_server_pooled";
    pool_metrics,
);

fn echo_roundtrips(addr: std::net::SocketAddr, conns: usize, rounds: usize, size: usize) {
    let payload = vec![b'x'; size];
    let mut clients: Vec<TcpStream> = (0..conns)
        .map(|_| {
            let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect");
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            s
        })
        .collect();
    let mut back = vec![0u8; size];
    for _ in 0..rounds {
        for c in &mut clients {
            c.write_all(&payload).expect("send");
            c.read_exact(&mut back).expect("echo");
            assert_eq!(back, payload);
        }
    }
}

fn promtool_accepts_and_counters_move(b: Backend) {
    let s = Server::start("echo_server", b, &["--metrics", "127.0.0.1:0"]);
    let maddr = metrics_addr(&s.stdout_text());
    let server = format!("server=\"{}\"", s.addr);

    let (status, before) = http_get(maddr, "/metrics");
    assert_eq!(status, 200, "{before}");
    for name in [
        "ringport_connections_accepted_total",
        "ringport_connections_rejected_total",
        "ringport_connections_active",
        "ringport_connections_closed_total",
        "ringport_received_bytes_total",
        "ringport_sent_bytes_total",
        "ringport_frames_received_total",
        "ringport_decode_errors_total",
        "ringport_bad_frames_total",
        "ringport_backpressure_pauses_total",
        "ringport_io_loop_turns_total",
        "ringport_io_completions_total",
        "ringport_io_busy_seconds_total",
        "ringport_io_inbox_messages",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{before}"
        );
    }
    let (st404, _) = http_get(maddr, "/nope");
    assert_eq!(st404, 404);

    echo_roundtrips(s.addr, 20, 50, 100);
    let get = |text: &str, name: &str| sample(text, name, &server).unwrap_or(0.0);
    // Bytes are counted when the IO thread handles a send's completion, which can come a
    // moment after the client has read the echo: scrape until the counters have caught up
    // (bounded; the assertions below fail if they never do).
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (_, now) = http_get(maddr, "/metrics");
        let moved = |name: &str| get(&now, name) - get(&before, name);
        if moved("ringport_sent_bytes_total") >= 20.0 * 50.0 * 100.0 || Instant::now() >= deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        get(&after, "ringport_connections_accepted_total")
            >= get(&before, "ringport_connections_accepted_total") + 20.0,
        "accepted did not move:\n{after}"
    );
    let moved = |name: &str| get(&after, name) - get(&before, name);
    assert!(moved("ringport_received_bytes_total") >= 20.0 * 50.0 * 100.0);
    assert!(moved("ringport_sent_bytes_total") >= 20.0 * 50.0 * 100.0);
    assert!(moved("ringport_frames_received_total") >= 1.0);
    assert!(
        sum_samples(&after, "ringport_io_loop_turns_total", "")
            > sum_samples(&before, "ringport_io_loop_turns_total", ""),
        "loop turns did not move"
    );
    assert!(
        sum_samples(&after, "ringport_io_completions_total", "")
            > sum_samples(&before, "ringport_io_completions_total", "") + 1000.0,
        "completions did not move"
    );
    // The 20 clients are gone once their closes are counted.
    wait_closes_counted(maddr, &server, 20, Duration::from_secs(10));

    let Some(promtool) = tool("promtool", "Debian package prometheus") else {
        return;
    };
    let (ok, out) = promtool_check(&promtool, &after);
    assert!(
        ok,
        "promtool check metrics refused the exposition:\n{out}\n{after}"
    );
}

fn scrape_during_many_connections(b: Backend) {
    const CONNS: usize = 5000;
    let s = Server::start("echo_server", b, &["--metrics", "127.0.0.1:0"]);
    let maddr = metrics_addr(&s.stdout_text());
    let server = format!("server=\"{}\"", s.addr);
    let mut clients: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let c = TcpStream::connect_timeout(&s.addr, CONNECT_TIMEOUT).expect("connect");
            c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            c
        })
        .collect();
    // Every connection is open on the server's side (each answered once).
    for c in &mut clients {
        c.write_all(b"a").expect("send");
    }
    let mut one = [0u8; 1];
    for c in &mut clients {
        c.read_exact(&mut one).expect("echo");
    }
    let t = Instant::now();
    let (status, body) = http_get(maddr, "/metrics");
    let took = t.elapsed();
    assert_eq!(status, 200);
    assert_eq!(
        sample(&body, "ringport_connections_active", &server),
        Some(CONNS as f64),
        "{body}"
    );
    // Generous for a loaded machine: the bound catches a scrape that waits on each
    // connection or IO thread in turn, not a slow one.
    assert!(
        took < Duration::from_secs(5),
        "a scrape during {CONNS} connections took {took:?}"
    );
    // None was disturbed: each still echoes.
    for c in &mut clients {
        c.write_all(b"b").expect("send after scrape");
    }
    for c in &mut clients {
        c.read_exact(&mut one).expect("echo after scrape");
        assert_eq!(&one, b"b");
    }
}

fn pool_metrics(b: Backend) {
    let s = Server::start(
        "line_server_pooled",
        b,
        &["--metrics", "127.0.0.1:0", "--workers", "2"],
    );
    let maddr = metrics_addr(&s.stdout_text());
    let mut c = line::LineClient::connect(s.addr);
    c.cmd("SLEEP 1500");
    // While the worker sleeps, one worker is busy.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http_get(maddr, "/metrics");
        assert_eq!(
            sample(&body, "ringport_pool_workers", "pool=\"workers\""),
            Some(2.0),
            "{body}"
        );
        if sample(&body, "ringport_pool_busy_workers", "pool=\"workers\"") == Some(1.0) {
            assert!(body.contains("ringport_pool_queued_jobs{pool=\"workers\"}"));
            break;
        }
        assert!(Instant::now() < deadline, "busy workers never 1:\n{body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.expect("+SLEPT 1500", "the pooled sleep answers");
}

/// One GET, or `None` when the server refuses or resets the connection.
fn try_http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Sends one byte on each client every `every` until `stop` (errors ignored: the server may
/// have reset a client). The attack of issue 20: each byte restarted the idle timer.
fn trickle(
    clients: Vec<TcpStream>,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut clients = clients;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for c in &mut clients {
                let _ = c.write_all(b"X");
            }
            std::thread::sleep(every); // the attack's pace, not a synchronisation
        }
    })
}

/// 1,100 clients that each open a request and send a byte every 500 ms (more than the
/// endpoint's 1,024 connections) do not lock a scrape out: the oldest incomplete requests are
/// reset to admit new connections, and the scrape is answered at once.
fn scrape_gets_through_trickling_clients(b: Backend) {
    const ATTACKERS: usize = 1100;
    let s = Server::start("echo_server", b, &["--metrics", "127.0.0.1:0"]);
    let maddr = metrics_addr(&s.stdout_text());
    let mut clients = Vec::new();
    for _ in 0..ATTACKERS {
        if let Ok(mut c) = TcpStream::connect_timeout(&maddr, CONNECT_TIMEOUT) {
            let _ = c.write_all(b"G");
            clients.push(c);
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = trickle(clients, Duration::from_millis(500), stop.clone());
    // Every attacker has been seen by the server (accepted, then kept or reset).
    wait_until(Duration::from_secs(20), "every attacker accepted", || {
        let (_, body) = try_http_get(maddr, "/metrics").unwrap_or_default();
        sample(
            &body,
            "ringport_connections_accepted_total",
            &format!("server=\"{maddr}\""),
        )
        .is_some_and(|v| v >= ATTACKERS as f64)
    });
    // Now, with the attackers still trickling, three scrapes in a row are answered.
    for i in 0..3 {
        let (status, body) = try_http_get(maddr, "/metrics")
            .unwrap_or_else(|| panic!("scrape {i} refused while slow clients trickle"));
        assert_eq!(status, 200);
        let evicted = sample(
            &body,
            "ringport_metrics_requests_total",
            "outcome=\"evicted\"",
        )
        .expect("evictions counted");
        assert!(
            evicted >= (ATTACKERS - ringport::metrics::MAX_PENDING_PER_IP) as f64,
            "evicted {evicted}"
        );
        let pending =
            sample(&body, "ringport_metrics_pending_requests", "").expect("pending gauge");
        assert!(
            pending <= (ringport::metrics::MAX_PENDING_PER_IP + 1) as f64,
            "pending {pending}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().expect("trickler");
}

/// A request trickled one byte every 300 ms is closed at its deadline (the idle timeout never
/// fires: every byte pushed it back).
fn trickled_request_ends_at_its_deadline(b: Backend) {
    let s = Server::start("echo_server", b, &["--metrics", "127.0.0.1:0"]);
    let maddr = metrics_addr(&s.stdout_text());
    let mut c = TcpStream::connect_timeout(&maddr, CONNECT_TIMEOUT).expect("connect");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let start = Instant::now();
    let mut closed = false;
    let mut byte = [0u8; 1];
    // Bounded: the deadline (5 s) plus a margin, well under the idle timeout's reach (a
    // trickle resets it for ever).
    while start.elapsed() < Duration::from_secs(15) {
        if c.write_all(b"G").is_err() {
            closed = true;
            break;
        }
        match c.read(&mut byte) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("no answer is due to an incomplete request"),
            Err(e) if is_timeout(&e) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let took = start.elapsed();
    assert!(closed, "a trickled request was still open after {took:?}");
    assert!(
        took >= ringport::metrics::REQUEST_DEADLINE - Duration::from_millis(200),
        "closed after {took:?}, before its deadline"
    );
    let (_, body) = try_http_get(maddr, "/metrics").expect("scrape");
    assert_eq!(
        sample(
            &body,
            "ringport_metrics_requests_total",
            "outcome=\"deadline\""
        ),
        Some(1.0),
        "{body}"
    );
}
