//! `line_server_pooled`: the line protocol with commands run on a worker pool (`--workers N`,
//! default 8): SLEEPs don't stall other connections, replies stay in request order. Each test
//! runs once per backend.
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

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
    shutdown_deadline_resets_unfinished_jobs,
);

/// Reads reply lines until the server closes the connection; returns them and how it closed.
fn replies_until_close(c: &mut LineClient, timeout: Duration) -> (Vec<String>, Closed) {
    let mut got = Vec::new();
    loop {
        match c.try_read_line(timeout) {
            Ok(Some(line)) => got.push(line),
            Ok(None) => return (got, Closed::Eof),
            Err(e) if is_reset(&e) => return (got, Closed::Reset),
            Err(e) => panic!("after replies {got:?}: {e}"),
        }
    }
}

/// Four connections each pipeline `SLEEP ms, SLEEP ms, PING` on 2 workers (one connection's
/// commands run one after another: 4 x ms of work per worker), then SIGTERM once the server
/// has read them all. Returns the replies each connection must get.
fn start_jobs_then_sigterm(
    b: Backend,
    drain: &str,
    ms: u64,
) -> (Server, Vec<LineClient>, Vec<String>) {
    let s = Server::start(SERVER, b, &["--workers", "2", "--drain-timeout", drain]);
    let mut clients: Vec<LineClient> = (0..4).map(|_| LineClient::connect(s.addr)).collect();
    for c in &mut clients {
        c.send_raw(format!("SLEEP {ms}\r\nSLEEP {ms}\r\nPING\r\n").as_bytes());
    }
    let streams: Vec<&std::net::TcpStream> = clients.iter().map(|c| &c.stream).collect();
    wait_server_read_all_of(&streams, "the server reading the pipelined commands");
    s.signal(libc::SIGTERM);
    let want = vec![
        format!("+SLEPT {ms}"),
        format!("+SLEPT {ms}"),
        "+PONG".to_string(),
    ];
    (s, clients, want)
}

/// SIGTERM while jobs run and more wait in the queue, with a drain long enough for all of them:
/// every command read before the signal is answered, in order, then the connection closes
/// cleanly (EOF), and the process exits 0.
fn shutdown_with_queued_and_running_jobs(b: Backend) {
    let t = Instant::now();
    let (mut s, mut clients, want) = start_jobs_then_sigterm(b, "20", 600);
    for (i, c) in clients.iter_mut().enumerate() {
        let (got, how) = replies_until_close(c, Duration::from_secs(20));
        assert_eq!(got, want, "client {i}: replies to the queued commands");
        assert_eq!(how, Closed::Eof, "client {i}: closed after its last reply");
    }
    let st = s
        .wait_exit(Duration::from_secs(20))
        .expect("no exit after every connection was answered and closed");
    assert_clean_exit(st, libc::SIGTERM, "after SIGTERM with queued jobs");
    println!("all answered; exited {:?} after the start", t.elapsed());
}

/// The same with `SLEEP 5000` and `--drain-timeout 1`: no job can finish by the deadline (a
/// SLEEP is a lower bound). Every connection, still waiting for its replies at the deadline, is
/// reset (never a clean EOF that would pass for "all answered"); exit 0.
fn shutdown_deadline_resets_unfinished_jobs(b: Backend) {
    let (mut s, mut clients, want) = start_jobs_then_sigterm(b, "1", 5000);
    let mut cut = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let (got, how) = replies_until_close(c, Duration::from_secs(10));
        assert!(
            want.starts_with(&got),
            "client {i}: replies out of order or unexpected: {got:?}"
        );
        if got.len() < want.len() {
            cut += 1;
            assert_eq!(
                how,
                Closed::Reset,
                "client {i}: unanswered commands at the drain deadline, yet a clean close \
                 after {got:?}"
            );
        }
        println!("client {i}: {got:?}, then {how:?}");
    }
    assert!(
        cut > 0,
        "SLEEP 5000 jobs all answered within --drain-timeout 1: the deadline was not applied"
    );
    let st = s
        .wait_exit(Duration::from_secs(1 + 5))
        .expect("no exit within drain-timeout + 5 s");
    assert_clean_exit(st, libc::SIGTERM, "after SIGTERM with queued jobs");
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

/// With 8 workers and one IO thread, 6 connections running `SLEEP 3000` do not delay a PING on
/// another connection: it is answered before any of the sleeps can have ended. (3 s: a PING
/// round trip is far shorter even on a loaded machine, which the bound must allow for.)
fn sleeps_do_not_delay_ping(b: Backend) {
    let s = Server::start(SERVER, b, &["--workers", "8", "--io-threads", "1"]);
    let mut sleepers: Vec<_> = (0..6).map(|_| LineClient::connect(s.addr)).collect();
    let mut pinger = LineClient::connect(s.addr);
    pinger.roundtrip("PING", "+PONG");
    let t = Instant::now();
    for c in sleepers.iter_mut() {
        c.cmd("SLEEP 3000");
    }
    pinger.cmd("PING");
    let r = pinger.read_line_within(Duration::from_secs(10));
    let ping_after = t.elapsed();
    assert_eq!(r, "+PONG");
    assert!(
        ping_after < Duration::from_millis(3000),
        "PING answered {ping_after:?} after 6 SLEEP 3000 started (8 workers): it waited for one"
    );
    for (i, c) in sleepers.iter_mut().enumerate() {
        c.expect("+SLEPT 3000", &format!("sleeper {i}"));
        let after = t.elapsed();
        assert!(
            after >= Duration::from_millis(3000),
            "sleeper {i} answered after only {after:?}"
        );
    }
    // Six 3 s sleeps on 8 workers overlap: one after another they could not end before 18 s.
    let all = t.elapsed();
    assert!(
        all < Duration::from_millis(3000 * 6),
        "6 SLEEP 3000 on 8 workers took {all:?}: they ran one after another"
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

/// Runs `SLEEP long` on connection `a`, then (once the server has read it) `SLEEP short` on
/// `c`, each reply read by a thread of its own; returns when each reply arrived, from the
/// moment `a`'s command was sent.
fn two_sleeps(addr: std::net::SocketAddr, long: u64, short: u64) -> (Duration, Duration) {
    let mut a = LineClient::connect(addr);
    let mut c = LineClient::connect(addr);
    let t = Instant::now();
    a.cmd(&format!("SLEEP {long}"));
    wait_server_read_all(&a.stream, "the server reading the long SLEEP");
    c.cmd(&format!("SLEEP {short}"));
    let ra = thread::spawn(move || {
        a.expect(&format!("+SLEPT {long}"), "long SLEEP");
        t.elapsed()
    });
    let rc = thread::spawn(move || {
        c.expect(&format!("+SLEPT {short}"), "short SLEEP");
        t.elapsed()
    });
    (ra.join().expect("long"), rc.join().expect("short"))
}

/// `--workers N` is the number of commands that run at once. With 2 workers a short SLEEP sent
/// after a long one on another connection finishes first; with 1 worker it waits for the long
/// one (it cannot finish before both sleeps' time has passed). Order and lower bounds only.
fn workers_flag(b: Backend) {
    let s = Server::start(SERVER, b, &["--workers", "2", "--io-threads", "1"]);
    let (long, short) = two_sleeps(s.addr, 1500, 100);
    println!("--workers 2: SLEEP 1500 after {long:?}, SLEEP 100 after {short:?}");
    assert!(
        short < long,
        "--workers 2: the short SLEEP ({short:?}) waited for the long one ({long:?})"
    );
    drop(s);
    let s = Server::start(SERVER, b, &["--workers", "1", "--io-threads", "1"]);
    let (long, short) = two_sleeps(s.addr, 600, 100);
    println!("--workers 1: SLEEP 600 after {long:?}, SLEEP 100 after {short:?}");
    // The lower bound alone proves the order: the short reply cannot come before both
    // sleeps' time. (Comparing with `long` would compare two reader threads' wake-ups,
    // which a loaded machine may reorder across the 100 ms between the replies.)
    assert!(
        short >= Duration::from_millis(600 + 100),
        "--workers 1: the short SLEEP ({short:?}) ran beside the long one ({long:?})"
    );
    let mut p = LineClient::connect(s.addr);
    p.roundtrip("PING", "+PONG");
}
