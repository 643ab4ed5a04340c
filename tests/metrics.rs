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
