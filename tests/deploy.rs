#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! Deployment: `--reuse-port` (two processes on one port, the kernel spreads connections),
//! systemd socket activation under `systemd-socket-activate` (nobody here wrote it) with
//! readiness over `NOTIFY_SOCKET`, and zero-downtime restarts on SIGHUP under load (our own
//! client threads, and `ringport-load` running through three restarts).

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
    free_port, http_get, is_gone, kill, load_ran_through_restarts, metrics_addr, ringport_load,
    sample, successor_pid, tool, Proc, Successors,
};
use common::*;

backend_tests!("echo_server";
    reuse_port_shares_one_port,
    socket_activation_serves_and_reports_ready,
    restart_under_load,
    ringport_load_through_three_restarts,
);

backend_tests!("line_server_pooled";
    restart_answers_in_flight_requests,
);

fn echo_once(addr: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)?;
    if back != payload {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

fn example(name: &str, b: Backend) -> Command {
    let mut cmd = Command::new(require_example(name));
    cmd.env_remove("RINGPORT_BACKEND")
        .env("RUST_LOG", "info")
        .args(["--backend", b.name()]);
    cmd
}

fn reuse_port_shares_one_port(b: Backend) {
    let mut one = Proc::spawn(example("echo_server", b).args([
        "--listen",
        "127.0.0.1:0",
        "--io-threads",
        "1",
        "--reuse-port",
        "--metrics",
        "127.0.0.1:0",
    ]));
    let addr = one.listening(START_TIMEOUT);
    let port = addr.to_string();

    // Without --reuse-port, a second process is told the address is taken.
    let mut refused =
        Proc::spawn(example("echo_server", b).args(["--listen", &port, "--io-threads", "1"]));
    let st = refused.wait_exit(START_TIMEOUT).expect("exits");
    assert!(
        !st.success(),
        "bound beside another process:\n{}",
        refused.output()
    );
    let error = refused.wait_line("error: ", Duration::from_secs(5));
    assert!(
        error.is_some_and(|e| e.contains("in use")),
        "no address-in-use error:\n{}",
        refused.output()
    );

    let mut two = Proc::spawn(example("echo_server", b).args([
        "--listen",
        &port,
        "--io-threads",
        "1",
        "--reuse-port",
        "--metrics",
        "127.0.0.1:0",
    ]));
    assert_eq!(two.listening(START_TIMEOUT), addr);
    for i in 0..200 {
        echo_once(addr, format!("hello {i}").as_bytes()).expect("echo through the shared port");
    }
    let accepted = |p: &Proc| {
        let (_, body) = http_get(metrics_addr(&p.output()), "/metrics");
        sample(
            &body,
            "ringport_connections_accepted_total",
            &format!("server=\"{addr}\""),
        )
        .unwrap_or(0.0)
    };
    let (a, c) = (accepted(&one), accepted(&two));
    assert_eq!(a + c, 200.0, "every connection counted once");
    // The kernel hashes each connection to one listener of the group: with 200 connections
    // the chance that one side gets none is 2^-199.
    assert!(a > 0.0 && c > 0.0, "not spread: {a} and {c}");

    // One process stops; the port keeps serving through the other.
    kill(one.child.id() as i32, libc::SIGTERM);
    one.wait_exit(Duration::from_secs(20)).expect("first exits");
    for i in 0..50 {
        echo_once(addr, format!("after {i}").as_bytes()).expect("served by the second");
    }
}

fn socket_activation_serves_and_reports_ready(b: Backend) {
    let Some(activate) = tool("systemd-socket-activate", "Debian package systemd") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("ringport-notify-{}-{}", std::process::id(), b));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    notify
        .set_read_timeout(Some(START_TIMEOUT))
        .expect("timeout");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(activate);
    // It passes the program only the variables named with -E (and LISTEN_*).
    cmd.args(["-l", &listen])
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(require_example("echo_server"))
        .args(["--backend", b.name(), "--io-threads", "2"])
        .env_remove("RINGPORT_BACKEND")
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify_path);
    let mut p = Proc::spawn(&mut cmd);
    p.wait_line("Listening on", START_TIMEOUT)
        .unwrap_or_else(|| panic!("systemd-socket-activate did not listen:\n{}", p.output()));
    // systemd-socket-activate execs the server only at the first connection: connect first.
    let mut first = TcpStream::connect_timeout(&listen.parse().unwrap(), CONNECT_TIMEOUT)
        .expect("connect to the activation socket");
    first.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    first.write_all(b"first").unwrap();
    let mut back = [0u8; 5];
    first
        .read_exact(&mut back)
        .expect("the activated server echoes");
    assert_eq!(&back, b"first");
    assert_eq!(
        p.listening(START_TIMEOUT).to_string(),
        listen,
        "the server names the inherited socket"
    );
    assert!(
        p.wait_text("using inherited listening socket", START_TIMEOUT),
        "{}",
        p.output()
    );
    let mut msg = [0u8; 256];
    let n = notify.recv(&mut msg).expect("a readiness datagram");
    let text = String::from_utf8_lossy(&msg[..n]).to_string();
    assert!(text.contains("READY=1"), "got {text:?}");
    for i in 0..20 {
        echo_once(listen.parse().unwrap(), format!("x{i}").as_bytes()).expect("echo");
    }
    drop(first);
    kill(p.child.id() as i32, libc::SIGTERM);
    let n = notify.recv(&mut msg).expect("a stopping datagram");
    let text = String::from_utf8_lossy(&msg[..n]).to_string();
    assert!(text.contains("STOPPING=1"), "got {text:?}");
    let st = p
        .wait_exit(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(st.success(), "{st:?}\n{}", p.output());
    let _ = std::fs::remove_dir_all(&dir);
}

fn restart_under_load(b: Backend) {
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .args(&["--io-threads", "2"])
        .start();
    let addr = server.addr;
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
                    match echo_once(addr, format!("client {c} request {i}").as_bytes()) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("{c}/{i}: {e}")),
                    }
                }
            })
        })
        .collect();
    let mut successors = Successors(Vec::new());
    let mut current = server.pid();
    for round in 1..=3 {
        let before = ok.load(Ordering::Relaxed);
        let next = restart(&mut server, current, round);
        successors.0.push(next);
        current = next;
        // The new process alone serves now.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ok.load(Ordering::Relaxed) < before + 200 {
            assert!(
                Instant::now() < deadline,
                "restart {round}: the new process does not serve"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        echo_once(addr, b"served by the successor").expect("a request after the switch");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    kill(current, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_gone(current) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(successors);
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors in {} requests through 3 restarts: {:?}",
        errors.len(),
        ok.load(Ordering::Relaxed),
        &errors[..errors.len().min(10)]
    );
    println!(
        "{} requests through 3 restarts, 0 errors",
        ok.load(Ordering::Relaxed)
    );
}

fn restart_answers_in_flight_requests(b: Backend) {
    let server = ServerBuilder::new("line_server_pooled")
        .backend(b)
        .args(&["--io-threads", "1", "--workers", "2"])
        .start();
    let mut slow = line::LineClient::connect(server.addr);
    slow.cmd("SLEEP 800");
    std::thread::sleep(Duration::from_millis(100)); // the job runs on a worker
    let seen = server.stderr_text().len();
    kill(server.pid(), libc::SIGHUP);
    assert!(
        server.wait_for_stderr(START_TIMEOUT, |log| successor_pid(&log[seen..]).is_some()),
        "no successor handed over"
    );
    let next = successor_pid(&server.stderr_text()[seen..]).unwrap();
    let _reap = Successors(vec![next]);
    slow.expect(
        "+SLEPT 800",
        "the request in flight at the restart is answered",
    );
    let mut fresh = line::LineClient::connect(server.addr);
    fresh.roundtrip("PING", "+PONG");
    kill(next, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_gone(next) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP to `current` (the process `server` started, or a successor): waits (bounded) for the
/// successor's hand-over line and for `current` to be gone; the successor's pid.
fn restart(server: &mut Server, current: i32, round: usize) -> i32 {
    let seen = server.stderr_text().len();
    kill(current, libc::SIGHUP);
    assert!(
        server.wait_for_stderr(START_TIMEOUT, |log| successor_pid(&log[seen..]).is_some()),
        "restart {round}: no successor handed over"
    );
    let next = successor_pid(&server.stderr_text()[seen..]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_gone(current) {
        assert!(
            Instant::now() < deadline,
            "restart {round}: old process {current} lingers"
        );
        if current == server.pid() {
            let _ = server.wait_exit(Duration::from_millis(50));
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    next
}

/// `ringport-load` (a new connection per message, so every connection attempt during the
/// switches is tested) runs through three SIGHUP restarts of `echo_server` and reports zero
/// errors; the process left after each restart serves.
fn ringport_load_through_three_restarts(b: Backend) {
    let load = ringport_load();
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .args(&["--io-threads", "2", "--metrics", "127.0.0.1:0"])
        .start();
    let addr = server.addr;
    // Long enough for three restarts of a debug build; the test fails if they take longer.
    let secs = 20.0;
    let began = Instant::now();
    let mut run = Proc::spawn(Command::new(load).args([
        "echo",
        "--target",
        &addr.to_string(),
        "-c",
        "8",
        "-l",
        "64",
        "-d",
        &secs.to_string(),
        "--reconnect-every",
        "1",
        "--threads",
        "2",
        "--json",
    ]));
    // The load is under way before the first restart: the server has accepted connections.
    let metrics = metrics_addr(&server.stdout_text());
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let (_, body) = http_get(metrics, "/metrics");
        let n = sample(
            &body,
            "ringport_connections_accepted_total",
            &format!("server=\"{addr}\""),
        )
        .unwrap_or(0.0);
        if n >= 50.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the load never reached the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut successors = Successors(Vec::new());
    let mut current = server.pid();
    for round in 1..=3 {
        let next = restart(&mut server, current, round);
        successors.0.push(next);
        current = next;
        echo_once(addr, format!("served after restart {round}").as_bytes())
            .expect("the successor serves");
    }
    let messages = load_ran_through_restarts(&mut run, secs, began, 100);
    println!(
        "ringport-load through 3 restarts: {messages} messages (one connection each), 0 errors"
    );
    kill(current, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_gone(current) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(successors);
}
