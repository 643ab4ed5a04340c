#![cfg(target_os = "linux")] // SIGHUP restarts are a unix mechanism; Linux-only like deploy.rs
//! Restarts no client notices: after a SIGHUP hand-over the old process keeps serving its
//! established connections (it is *retired*) until each closes or `--restart-grace` passes;
//! several generations run side by side; the successor inherits every listener (the metrics
//! one too, and all of them when it runs fewer IO threads); a successor that fails leaves the
//! old process serving; systemd hears `MAINPID` of the successor.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::deploy::{
    http_get, is_gone, kill, load_ran_through_restarts, metrics_addr, ringport_load, sample,
    successor_pid, wait_gone, Proc, Successors,
};
use common::*;

backend_tests!("echo_server";
    twenty_connections_through_three_restarts,
    each_generation_exits_with_its_last_connection,
    restart_grace_drains_what_is_left,
    sigterm_drains_a_retired_process_at_once,
    failed_successor_leaves_the_old_process_serving,
    successor_pid_reaches_systemd,
    fewer_io_threads_keep_every_listener,
    metrics_move_to_the_successor,
);

backend_tests!("chat_server";
    chat_members_hear_the_restart,
);

backend_tests!("line_server";
    line_connections_stay_silent,
);

/// Generous bound for a process to go once it should (a loaded 2-core machine, debug build).
const GONE: Duration = Duration::from_secs(20);

/// A held connection: echoes `payload` and checks the reply byte for byte.
fn echo(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    s.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)?;
    if back != payload {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

fn held(addr: SocketAddr) -> TcpStream {
    let s = connect(addr);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// SIGHUP to `current`; waits (bounded) for the hand-over line that follows it in `server`'s
/// log (successors log to the same pipes); the successor's pid. `current` is not waited for:
/// it is retired, serving what it has.
fn hand_over(server: &Server, current: i32, round: usize) -> i32 {
    let seen = server.stderr_text().len();
    kill(current, libc::SIGHUP);
    assert!(
        server.wait_for_stderr(START_TIMEOUT, |log| successor_pid(&log[seen..]).is_some()),
        "restart {round}: no successor handed over:\n{}",
        server.stderr_text()
    );
    successor_pid(&server.stderr_text()[seen..]).unwrap()
}

fn gone_or_reaped(server: &mut Server, pid: i32, timeout: Duration) -> bool {
    if pid == server.pid() {
        server.wait_exit(timeout).is_some()
    } else {
        wait_gone(pid, timeout)
    }
}

/// The scenario: `ringport-load echo -c 20` (long-lived connections that never
/// reconnect, every reply verified byte for byte) through three SIGHUPs 2 s apart: zero
/// errors. All 20 connections stay on the first process, which exits once the load closes
/// them; the two middle generations, with nothing to serve, exit at once.
fn twenty_connections_through_three_restarts(b: Backend) {
    let load = ringport_load();
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .args(&["--io-threads", "2"])
        .start();
    let addr = server.addr;
    let secs = 14.0; // three restarts 2 s apart, plus a debug build's start-ups
    let began = Instant::now();
    let mut run = Proc::spawn(Command::new(load).args([
        "echo",
        "--target",
        &addr.to_string(),
        "-c",
        "20",
        "-l",
        "64",
        "-d",
        &secs.to_string(),
        "--threads",
        "2",
        "--json",
    ]));
    // The load is connected before the first restart.
    let first = server.pid();
    assert!(
        wait_until(START_TIMEOUT, || open_connections(first) >= 20),
        "the load never connected"
    );
    let mut successors = Successors(Vec::new());
    let mut current = first;
    for round in 1..=3 {
        let started = Instant::now();
        let next = hand_over(&server, current, round);
        successors.0.push(next);
        if round > 1 {
            // A middle generation serves nothing: it exits as soon as it is retired.
            assert!(
                wait_gone(current, GONE),
                "restart {round}: generation {current} with no connection lingers"
            );
        }
        current = next;
        let mut fresh = held(addr);
        echo(
            &mut fresh,
            format!("fresh after restart {round}").as_bytes(),
        )
        .expect("the successor serves new connections");
        std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    }
    assert!(
        !is_gone(first),
        "the first process serves its 20 connections"
    );
    let messages = load_ran_through_restarts(&mut run, secs, began, 1000);
    // Its connections closed: the first process goes.
    assert!(
        gone_or_reaped(&mut server, first, GONE),
        "the first process outlived its last connection"
    );
    assert!(
        server
            .stderr_text()
            .contains("last connection of this retired process closed"),
        "{}",
        server.stderr_text()
    );
    println!("20 connections through 3 restarts: {messages} messages, 0 errors");
    kill(current, libc::SIGTERM);
    assert!(
        wait_gone(current, GONE),
        "the last successor exits on SIGTERM"
    );
    drop(successors);
}

/// Established TCP connections of `pid` (its sockets in /proc/net/tcp state 01).
fn open_connections(pid: i32) -> usize {
    let inodes = socket_inodes(pid);
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[3] == "01" && inodes.contains(&f[9].to_string())
        })
        .count()
}

fn socket_inodes(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|p| {
            p.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect()
}

/// Listening sockets on `port` in the whole system (/proc/net/tcp state 0A).
fn listening_sockets(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!(":{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
        })
        .count()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three generations side by side, one held connection each: each serves its own, and each
/// exits when its last connection closes (the middle one first), the newest untouched.
fn each_generation_exits_with_its_last_connection(b: Backend) {
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .args(&["--io-threads", "1"])
        .start();
    let addr = server.addr;
    let first = server.pid();
    let mut a = held(addr);
    echo(&mut a, b"a0").unwrap();
    let second = hand_over(&server, first, 1);
    let mut successors = Successors(vec![second]);
    let mut bconn = held(addr);
    echo(&mut bconn, b"b0").unwrap();
    let third = hand_over(&server, second, 2);
    successors.0.push(third);
    let mut c = held(addr);
    echo(&mut c, b"c0").unwrap();
    // A SIGHUP to a retired process changes nothing.
    kill(first, libc::SIGHUP);
    assert!(
        server.wait_for_stderr(START_TIMEOUT, |l| l.contains("SIGHUP ignored")),
        "{}",
        server.stderr_text()
    );
    for i in 0..20 {
        for (s, name) in [(&mut a, "a"), (&mut bconn, "b"), (&mut c, "c")] {
            echo(s, format!("{name}{i}").as_bytes())
                .unwrap_or_else(|e| panic!("{name} served by its generation: {e}"));
        }
    }
    assert!(!is_gone(first) && !is_gone(second) && !is_gone(third));
    // The middle generation's only connection closes: it goes, the others stay.
    drop(bconn);
    assert!(wait_gone(second, GONE), "the second generation lingers");
    assert!(
        !is_gone(first),
        "the first generation still has a connection"
    );
    echo(&mut a, b"a after b left").expect("the first generation serves on");
    drop(a);
    assert!(
        gone_or_reaped(&mut server, first, GONE),
        "the first generation lingers"
    );
    let st = server.wait_exit(GONE).expect("exited");
    assert!(st.success(), "a retired process exits 0: {st:?}");
    echo(&mut c, b"c after both left").expect("the newest serves");
    assert!(!is_gone(third));
    kill(third, libc::SIGTERM);
    assert!(wait_gone(third, GONE));
    drop(successors);
}

/// `--restart-grace 2`: a held connection is served through the hand-over and for the
/// grace, then drained (closed gracefully: EOF, no reset), and the old process exits 0.
fn restart_grace_drains_what_is_left(b: Backend) {
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .args(&["--io-threads", "1", "--restart-grace", "2"])
        .start();
    let first = server.pid();
    let mut a = held(server.addr);
    echo(&mut a, b"before").unwrap();
    let next = hand_over(&server, first, 1);
    let _successors = Successors(vec![next]);
    let handed = Instant::now();
    echo(&mut a, b"served after the hand-over").expect("held connection served");
    let (rest, closed) = read_until_close(&mut a, Duration::from_secs(30)).expect("closed");
    let after = handed.elapsed();
    assert!(rest.is_empty(), "nothing unasked: {rest:?}");
    assert!(
        matches!(closed, Closed::Eof),
        "drained gracefully, not reset: {closed:?}"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}, before the 2 s grace"
    );
    assert!(
        after < Duration::from_secs(15),
        "closed after {after:?}, long after the 2 s grace"
    );
    let st = server.wait_exit(GONE).expect("the old process exits");
    assert!(st.success(), "{st:?}");
    assert!(server.stderr_text().contains("restart grace passed"));
    println!("held connection drained {after:?} after the hand-over (grace 2 s)");
    kill(next, libc::SIGTERM);
    assert!(wait_gone(next, GONE));
}

/// SIGTERM to a retired process drains it at once, long before its (default, 300 s) grace.
fn sigterm_drains_a_retired_process_at_once(b: Backend) {
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .args(&["--io-threads", "1"])
        .start();
    let first = server.pid();
    let mut a = held(server.addr);
    echo(&mut a, b"before").unwrap();
    let next = hand_over(&server, first, 1);
    let _successors = Successors(vec![next]);
    echo(&mut a, b"after").unwrap();
    let sent = Instant::now();
    kill(first, libc::SIGTERM);
    let (_, closed) = read_until_close(&mut a, Duration::from_secs(30)).expect("closed");
    assert!(matches!(closed, Closed::Eof), "{closed:?}");
    let st = server.wait_exit(GONE).expect("the old process exits");
    assert!(st.success(), "{st:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "drained {:?} after SIGTERM",
        sent.elapsed()
    );
    let mut fresh = held(server.addr);
    echo(&mut fresh, b"the successor serves on").unwrap();
    kill(next, libc::SIGTERM);
    assert!(wait_gone(next, GONE));
}

/// The successor cannot start (its executable was replaced by one that fails): the old
/// process keeps accepting and keeps its held connection; once the executable is good again,
/// a second SIGHUP hands over.
fn failed_successor_leaves_the_old_process_serving(b: Backend) {
    let dir = std::env::temp_dir().join(format!("ringport-failing-{}-{b}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("echo_server");
    std::fs::copy(require_example("echo_server"), &exe).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--backend",
        b.name(),
        "--io-threads",
        "1",
    ])
    .env_remove("RINGPORT_BACKEND")
    .env("RUST_LOG", "info");
    let mut p = Proc::spawn(&mut cmd);
    let addr = p.listening(START_TIMEOUT);
    let pid = p.child.id() as i32;
    let mut a = held(addr);
    echo(&mut a, b"before").unwrap();
    // A new file at the same path (the running one is untouched): it exits at once.
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    kill(pid, libc::SIGHUP);
    assert!(
        p.wait_text("restart failed; this process serves on", START_TIMEOUT),
        "{}",
        p.output()
    );
    assert!(!p.output().contains("handing over"), "{}", p.output());
    echo(&mut a, b"held connection after the failed restart").expect("held one served");
    for i in 0..20 {
        let mut fresh = held(addr);
        echo(&mut fresh, format!("new {i}").as_bytes()).expect("new connections served");
    }
    // The executable is good again: the next SIGHUP hands over.
    std::fs::remove_file(&exe).unwrap();
    std::fs::copy(require_example("echo_server"), &exe).unwrap();
    kill(pid, libc::SIGHUP);
    assert!(p.wait_text("handing over", START_TIMEOUT), "{}", p.output());
    let next = successor_pid(&p.output()).expect("successor pid");
    p.also.push(next);
    echo(&mut a, b"held through the good restart").unwrap();
    drop(a);
    let st = p
        .wait_exit(GONE)
        .expect("the old process exits after its last connection");
    assert!(st.success(), "{st:?}");
    let mut fresh = held(addr);
    echo(&mut fresh, b"served by the successor").unwrap();
    kill(next, libc::SIGTERM);
    assert!(wait_gone(next, GONE));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under systemd (`NOTIFY_SOCKET`, bound here): READY=1 at start; on SIGHUP RELOADING=1, the
/// successor's own READY=1 and `MAINPID=<successor>`; a retired process that drains says
/// nothing (STOPPING=1 would be taken for the unit's), the main one says STOPPING=1.
fn successor_pid_reaches_systemd(b: Backend) {
    let dir = std::env::temp_dir().join(format!("ringport-mainpid-{}-{b}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .args(&["--io-threads", "1"])
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .start();
    let recv_until = |want: &dyn Fn(&str) -> bool, timeout: Duration| -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            notify
                .set_read_timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))
                .unwrap();
            match notify.recv(&mut buf) {
                Ok(n) => {
                    got.push(String::from_utf8_lossy(&buf[..n]).to_string());
                    if want(&got.join("\n")) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        got
    };
    let start = recv_until(&|t| t.contains("READY=1"), START_TIMEOUT);
    assert!(start.iter().any(|m| m.contains("READY=1")), "{start:?}");
    let first = server.pid();
    let mut a = held(server.addr);
    echo(&mut a, b"held").unwrap();
    let next = hand_over(&server, first, 1);
    let _successors = Successors(vec![next]);
    let main = format!("MAINPID={next}");
    let got = recv_until(
        &|t| t.contains(&main) && t.matches("READY=1").count() >= 1,
        START_TIMEOUT,
    );
    let all = got.join("\n");
    assert!(all.contains("RELOADING=1"), "{got:?}");
    assert!(all.contains(&main), "the successor's pid: {got:?}");
    assert!(
        all.contains("READY=1"),
        "the successor's readiness: {got:?}"
    );
    // The retired process drains on SIGTERM without telling systemd the unit stops.
    kill(first, libc::SIGTERM);
    server.wait_exit(GONE).expect("the retired process exits");
    let after = recv_until(&|_| false, Duration::from_millis(500));
    assert!(
        !after.iter().any(|m| m.contains("STOPPING=1")),
        "a retired process said {after:?}"
    );
    kill(next, libc::SIGTERM);
    let stop = recv_until(&|t| t.contains("STOPPING=1"), GONE);
    assert!(stop.iter().any(|m| m.contains("STOPPING=1")), "{stop:?}");
    assert!(wait_gone(next, GONE));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The old process runs one IO thread per CPU (2 listening sockets under SO_REUSEPORT); its
/// successor sees one CPU (the affinity it inherits). Every inherited listener stays open
/// (the successor runs one IO thread per listener), so no connection waiting in a backlog
/// is reset; connections made throughout the switch all succeed.
fn fewer_io_threads_keep_every_listener(b: Backend) {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        println!("skipped: needs 2 CPUs (one IO thread per CPU before the restart, fewer after)");
        return;
    }
    let mut server = ServerBuilder::new("echo_server").backend(b).start();
    let addr = server.addr;
    let first = server.pid();
    let before = listening_sockets(addr.port());
    assert!(before >= 2, "one listener per IO thread: {before}");
    // The successor inherits the affinity of the thread that starts it: pin them all.
    let st = Command::new("taskset")
        .args(["-a", "-c", "-p", "0", &first.to_string()])
        .output();
    match st {
        Ok(o) if o.status.success() => {}
        other => {
            println!("skipped: taskset could not pin the server ({other:?})");
            return;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).and_then(|mut s| {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        echo(&mut s, format!("client {c} request {i}").as_bytes())
                    });
                    match r {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("{c}/{i}: {e}")),
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(START_TIMEOUT, || ok.load(Ordering::Relaxed) > 100));
    let next = hand_over(&server, first, 1);
    let _successors = Successors(vec![next]);
    assert!(
        gone_or_reaped(&mut server, first, GONE),
        "the old process lingers"
    );
    let served = ok.load(Ordering::Relaxed);
    assert!(wait_until(START_TIMEOUT, || ok.load(Ordering::Relaxed) > served + 200));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let after = listening_sockets(addr.port());
    let log = server.stderr_text();
    let errors = errors.lock().unwrap();
    println!(
        "listeners before {before}, after {after}; {} requests, {} errors",
        ok.load(Ordering::Relaxed),
        errors.len()
    );
    assert_eq!(after, before, "every inherited listener kept:\n{log}");
    assert!(!log.contains("closing the rest"), "{log}");
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    kill(next, libc::SIGTERM);
    assert!(wait_gone(next, GONE));
}

/// The metrics listener moves with the hand-over: scrapes throughout the switch are all
/// answered, and once the successor is ready they are its counters (its accepted count
/// starts from zero), although the old process still runs (a held connection).
fn metrics_move_to_the_successor(b: Backend) {
    let server = ServerBuilder::new("echo_server")
        .backend(b)
        .args(&["--io-threads", "1", "--metrics", "127.0.0.1:0"])
        .start();
    let maddr = metrics_addr(&server.stdout_text());
    let label = format!("server=\"{}\"", server.addr);
    for i in 0..30 {
        let mut s = held(server.addr);
        echo(&mut s, format!("count {i}").as_bytes()).unwrap();
    }
    let accepted = |body: &str| sample(body, "ringport_connections_accepted_total", &label);
    let (_, body) = http_get(maddr, "/metrics");
    assert!(accepted(&body).unwrap_or(0.0) >= 30.0, "{body}");
    let mut a = held(server.addr);
    echo(&mut a, b"held").unwrap();
    let first = server.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = http_get(maddr, "/metrics"); // panics on a refused or cut scrape
                assert_eq!(status, 200);
                n += 1;
            }
            n
        })
    };
    let next = hand_over(&server, first, 1);
    let _successors = Successors(vec![next]);
    let (_, body) = http_get(maddr, "/metrics");
    let n = accepted(&body).unwrap_or(0.0);
    stop.store(true, Ordering::Relaxed);
    let scraped = scrapes
        .join()
        .expect("every scrape during the switch answered");
    assert!(
        n < 30.0,
        "scraped the old process's counters after the hand-over: {n}"
    );
    assert!(
        !is_gone(first),
        "the old process still serves its held connection"
    );
    for _ in 0..10 {
        let (_, body) = http_get(maddr, "/metrics");
        assert!(
            accepted(&body).unwrap_or(0.0) < 30.0,
            "only the successor answers"
        );
    }
    println!("{scraped} scrapes through the switch, all answered");
    drop(a);
    kill(next, libc::SIGTERM);
    assert!(wait_gone(next, GONE));
}

/// Two chat members: after the hand-over each hears one line saying the server restarts,
/// and they go on chatting in the old room.
fn chat_members_hear_the_restart(b: Backend) {
    let server = ServerBuilder::new("chat_server")
        .backend(b)
        .args(&["--io-threads", "1"])
        .start();
    let mut x = line::LineClient::connect_raw(server.addr);
    x.expect("+OK chat", "greeting");
    let mut y = line::LineClient::connect_raw(server.addr);
    y.expect("+OK chat", "greeting");
    x.roundtrip("NICK x", "+OK");
    let first = server.pid();
    let next = hand_over(&server, first, 1);
    let _successors = Successors(vec![next]);
    x.expect("+RESTARTING reconnect to join the new room", "notice to x");
    y.expect("+RESTARTING reconnect to join the new room", "notice to y");
    x.cmd("still here");
    y.expect("x: still here", "the old room goes on");
    drop((x, y));
    assert!(
        wait_gone(first, GONE),
        "the old process exits with its last member"
    );
    kill(next, libc::SIGTERM);
    assert!(wait_gone(next, GONE));
}

/// line_server says nothing about the restart: a held connection reads nothing unasked and
/// is answered as before.
fn line_connections_stay_silent(b: Backend) {
    let server = ServerBuilder::new("line_server")
        .backend(b)
        .args(&["--io-threads", "1"])
        .start();
    let mut c = line::LineClient::connect(server.addr);
    c.roundtrip("PING", "+PONG");
    let first = server.pid();
    let next = hand_over(&server, first, 1);
    let _successors = Successors(vec![next]);
    assert!(
        matches!(c.try_read_line(Duration::from_millis(300)), Err(ref e) if is_timeout(e)),
        "no restart notice"
    );
    c.roundtrip("PING", "+PONG");
    drop(c);
    assert!(wait_gone(first, GONE));
    kill(next, libc::SIGTERM);
    assert!(wait_gone(next, GONE));
}
