//! `line_server_pooled`: the line protocol with commands run on a worker pool (`--workers N`,
//! default 8): SLEEPs don't stall other connections, replies stay in request order. Each test
//! runs once per backend.

#[macro_use]
mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::line::{self, LineClient};
use common::*;

const SERVER: &str = "line_server_pooled";

backend_tests!("line_server_pooled";
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
    sleeps_do_not_delay_ping,
    pipelined_random_sleeps_in_order,
    workers_flag,
    shutdown_with_queued_and_running_jobs,
);

/// SIGTERM while jobs run and more wait in the queue (2 workers, 4 connections each with two
/// sleeps pipelined): the process still exits 0 within the drain deadline (+ margin), every
/// client sees its connection end (no hang), and replies that do arrive are in order.
fn shutdown_with_queued_and_running_jobs(b: Backend) {
    let mut s = Server::start(SERVER, b, &["--workers", "2", "--drain-timeout", "2"]);
    let mut clients: Vec<LineClient> = (0..4).map(|_| LineClient::connect(s.addr)).collect();
    for c in &mut clients {
        c.send_raw(b"SLEEP 600\r\nSLEEP 600\r\nPING\r\n");
    }
    // One PING on a fresh connection proves the commands above were read and queued.
    let mut probe = LineClient::connect(s.addr);
    probe.roundtrip("PING", "+PONG");
    let t = Instant::now();
    s.signal(libc::SIGTERM);
    let st = s
        .wait_exit(Duration::from_secs(2 + 5))
        .expect("no exit within drain-timeout + 5 s with jobs queued");
    assert_clean_exit(st, libc::SIGTERM, "after SIGTERM with queued jobs");
    println!("exited {:?} after SIGTERM", t.elapsed());
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        while let Ok(Some(line)) = c.try_read_line(Duration::from_secs(5)) {
            got.push(line);
        }
        let want = ["+SLEPT 600", "+SLEPT 600", "+PONG"];
        assert!(
            want.starts_with(&got.iter().map(String::as_str).collect::<Vec<_>>()),
            "client {i}: replies out of order or unexpected: {got:?}"
        );
    }
}

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
    line::pipelined_in_order(SERVER, b, 5);
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

/// With 8 workers and one IO thread, 6 connections running `SLEEP 1500` do not delay a PING on
/// another connection: answered within 1000 ms, while the sleeps are still running.
fn sleeps_do_not_delay_ping(b: Backend) {
    let s = Server::start(SERVER, b, &["--workers", "8", "--io-threads", "1"]);
    let mut sleepers: Vec<_> = (0..6).map(|_| LineClient::connect(s.addr)).collect();
    let mut pinger = LineClient::connect(s.addr);
    pinger.roundtrip("PING", "+PONG");
    let t = Instant::now();
    for c in sleepers.iter_mut() {
        c.cmd("SLEEP 1500");
    }
    pinger.cmd("PING");
    let r = pinger.read_line_within(Duration::from_millis(1000));
    let ping_after = t.elapsed();
    assert_eq!(r, "+PONG");
    assert!(
        ping_after < Duration::from_millis(1000),
        "PING answered {ping_after:?} after 6 SLEEP 1500 started (8 workers)"
    );
    for (i, c) in sleepers.iter_mut().enumerate() {
        c.expect("+SLEPT 1500", &format!("sleeper {i}"));
        let after = t.elapsed();
        assert!(
            after >= Duration::from_millis(1500),
            "sleeper {i} answered after only {after:?}"
        );
    }
    // Six 1.5 s sleeps on 8 workers run in parallel, not one after another.
    let all = t.elapsed();
    assert!(
        all < Duration::from_millis(1500 * 3),
        "6 SLEEP 1500 on 8 workers took {all:?} (serialised?)"
    );
    println!("PING after {ping_after:?}; all sleeps done after {all:?}");
}

/// Several connections each pipeline ECHO/PING/SLEEP (random 0..=30 ms) in one write: every
/// connection gets its replies in order, although the workers finish them out of order.
fn pipelined_random_sleeps_in_order(b: Backend) {
    let s = Server::start(SERVER, b, &[]);
    let addr = s.addr;
    let seed = test_seed();
    let handles: Vec<_> = (0..6u64)
        .map(|k| {
            thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (k << 40));
                let mut c = LineClient::connect(addr);
                let mut req = Vec::new();
                let mut want = Vec::new();
                for i in 0..150 {
                    let (cmd, reply) = match rng.below(3) {
                        0 => {
                            let ms = rng.range(0, 30);
                            (format!("SLEEP {ms}"), format!("+SLEPT {ms}"))
                        }
                        1 => (
                            format!("ECHO conn {k} cmd {i}"),
                            format!("+conn {k} cmd {i}"),
                        ),
                        _ => ("PING".to_string(), "+PONG".to_string()),
                    };
                    req.extend_from_slice(cmd.as_bytes());
                    req.extend_from_slice(b"\r\n");
                    want.push(reply);
                }
                c.send_raw(&req);
                for (i, w) in want.iter().enumerate() {
                    let got = c.read_line_within(Duration::from_secs(20));
                    assert_eq!(&got, w, "connection {k}, reply #{i}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

/// `--workers 1` serialises SLEEPs yet still answers everything; `--workers 2` runs two at once.
fn workers_flag(b: Backend) {
    let s = Server::start(SERVER, b, &["--workers", "2", "--io-threads", "1"]);
    let mut a = LineClient::connect(s.addr);
    let mut c = LineClient::connect(s.addr);
    let t = Instant::now();
    a.cmd("SLEEP 600");
    c.cmd("SLEEP 600");
    a.expect("+SLEPT 600", "a");
    c.expect("+SLEPT 600", "c");
    let two = t.elapsed();
    assert!(
        two < Duration::from_millis(1150),
        "two SLEEP 600 on 2 workers took {two:?}"
    );
    drop(s);
    let s = Server::start(SERVER, b, &["--workers", "1"]);
    let mut a = LineClient::connect(s.addr);
    let mut c = LineClient::connect(s.addr);
    a.cmd("SLEEP 100");
    c.cmd("SLEEP 100");
    a.expect("+SLEPT 100", "a");
    c.expect("+SLEPT 100", "c");
    a.roundtrip("PING", "+PONG");
}
