//! End-to-end tests: run the `ringport-load` binary against small in-test
//! servers (std threads on loopback), well-behaved and deliberately broken.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

/// How a test server treats each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Echo every byte.
    Echo,
    /// Echo, but flip the byte at this position of each connection's stream.
    CorruptAt(usize),
    /// Echo the first `n` bytes, then close.
    CloseAfter(usize),
    /// Line protocol: greeting, then `ECHO <x>` -> `+<x>`.
    Line,
    /// Length-prefixed frames of this layout (width, little endian,
    /// includes header), parsed and echoed; a bad header closes.
    Framed(u8, bool, bool),
}

fn spawn_server(b: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            thread::spawn(move || serve(s, b));
        }
    });
    addr
}

fn serve(mut s: TcpStream, b: Behaviour) {
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    match b {
        Behaviour::Echo | Behaviour::CorruptAt(_) | Behaviour::CloseAfter(_) => {
            let mut pos = 0usize;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &mut buf[..n];
                match b {
                    Behaviour::CorruptAt(at) if (pos..pos + n).contains(&at) => {
                        chunk[at - pos] ^= 0x20
                    }
                    Behaviour::CloseAfter(limit) if pos + n >= limit => {
                        let _ = s.write_all(&chunk[..limit - pos]);
                        return;
                    }
                    _ => {}
                }
                pos += n;
                if s.write_all(chunk).is_err() {
                    return;
                }
            }
        }
        Behaviour::Line => {
            let mut w = s.try_clone().unwrap();
            w.write_all(b"+OK ready\r\n").unwrap();
            for line in BufReader::new(s).split(b'\n') {
                let Ok(line) = line else { return };
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                let reply = match line.strip_prefix(b"ECHO ") {
                    Some(x) => [b"+", x, b"\r\n"].concat(),
                    None => b"-ERR unknown\r\n".to_vec(),
                };
                if w.write_all(&reply).is_err() {
                    return;
                }
            }
        }
        Behaviour::Framed(width, le, incl) => {
            let w = width as usize;
            loop {
                let mut hdr = vec![0u8; w];
                if s.read_exact(&mut hdr).is_err() {
                    return;
                }
                let mut bytes = [0u8; 8];
                let v = if le {
                    bytes[..w].copy_from_slice(&hdr);
                    u64::from_le_bytes(bytes)
                } else {
                    bytes[8 - w..].copy_from_slice(&hdr);
                    u64::from_be_bytes(bytes)
                };
                let len = if incl {
                    v.checked_sub(w as u64)
                } else {
                    Some(v)
                };
                let Some(len) = len.filter(|l| *l <= 1 << 20) else {
                    return; // bad header: hang up
                };
                let mut payload = vec![0u8; len as usize];
                if s.read_exact(&mut payload).is_err() {
                    return;
                }
                if s.write_all(&[hdr, payload].concat()).is_err() {
                    return;
                }
            }
        }
    }
}

fn load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringport-load"))
        .args(args)
        .output()
        .expect("run ringport-load")
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "exactly one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

fn run_json(mode: &str, addr: SocketAddr, extra: &[&str]) -> (Output, serde_json::Value) {
    let target = addr.to_string();
    let mut args = vec![mode, "--target", &target, "--json", "--threads", "2"];
    args.extend_from_slice(extra);
    // A bounded --timeout keeps a regression from hanging a test for long.
    if !extra.contains(&"--timeout") {
        args.extend_from_slice(&["--timeout", "20"]);
    }
    let out = load(&args);
    let v = json(&out);
    (out, v)
}

#[test]
fn echo_pipelined_all_verified() {
    let addr = spawn_server(Behaviour::Echo);
    let (out, v) = run_json(
        "echo",
        addr,
        &["-c", "4", "-l", "1000", "-n", "50", "--pipeline", "3"],
    );
    assert!(out.status.success(), "{v}");
    assert_eq!(v["messages"], 200);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["connections"], 4);
    assert_eq!(v["connections_open_at_end"], 4);
    assert_eq!(v["bytes_sent"], 200_000);
    assert_eq!(v["bytes_received"], 200_000);
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"][k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
}

/// A client run: the event client (`run_json`) or the blocking one (`run_blocking`).
type Run = fn(&str, SocketAddr, &[&str]) -> (Output, serde_json::Value);

/// A corrupted byte, a close mid-reply and a close between replies are each counted under
/// their own kind, once per connection; returns the mismatch run's report.
fn errors_by_kind(run: Run) -> serde_json::Value {
    let addr = spawn_server(Behaviour::CorruptAt(300));
    let (out, mismatch) = run("echo", addr, &["-c", "2", "-l", "128", "-n", "10"]);
    assert!(!out.status.success());
    assert_eq!(mismatch["error_kinds"]["mismatch"], 2, "{mismatch}");
    assert_eq!(mismatch["errors"], 2);

    let addr = spawn_server(Behaviour::CloseAfter(200));
    let (out, v) = run("echo", addr, &["-c", "3", "-l", "128", "-n", "10"]);
    assert!(!out.status.success());
    assert_eq!(v["error_kinds"]["short_reply"], 3, "{v}");

    let addr = spawn_server(Behaviour::CloseAfter(256));
    let (out, v) = run("echo", addr, &["-c", "3", "-l", "128", "-n", "10"]);
    assert!(!out.status.success());
    assert_eq!(v["error_kinds"]["dropped"], 3, "{v}");
    assert_eq!(v["messages"], 6);
    assert_eq!(v["connections_open_at_end"], 0, "{v}");
    mismatch
}

/// Nothing listens: each connection fails after bounded retries.
fn refused_connect_fails_after_bounded_retries(run: Run) {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (out, v) = run("echo", addr, &["-c", "2", "-l", "8", "-n", "1"]);
    assert!(!out.status.success());
    assert_eq!(v["error_kinds"]["connect_failed"], 2, "{v}");
    assert_eq!(v["connections"], 0);
}

/// The reported window is the one asked for (`-d`), measured: never shorter, and not
/// stretched by more than a loaded machine's scheduling delay.
fn assert_window(v: &serde_json::Value, asked: f64) {
    let d = v["duration_secs"].as_f64().unwrap();
    assert!(
        (asked - 0.001..asked + 2.0).contains(&d),
        "window {d} s for -d {asked}: {v}"
    );
}

#[test]
fn event_errors_by_kind() {
    errors_by_kind(run_json);
}

#[test]
fn event_refused_connect_fails_after_bounded_retries() {
    refused_connect_fails_after_bounded_retries(run_json);
}

#[test]
fn line_mode() {
    let addr = spawn_server(Behaviour::Line);
    let (out, v) = run_json(
        "line",
        addr,
        &["-c", "3", "-l", "64", "-n", "20", "--pipeline", "2"],
    );
    assert!(out.status.success(), "{v}");
    assert_eq!(v["messages"], 60);
    no_greeting_fails(run_json);
}

/// Against a plain echo server the line client sees no greeting: the run fails; its report.
fn no_greeting_fails(run: Run) -> serde_json::Value {
    let addr = spawn_server(Behaviour::Echo);
    let (out, v) = run(
        "line",
        addr,
        &["-c", "1", "-l", "64", "-n", "1", "--timeout", "1"],
    );
    assert!(!out.status.success(), "{v}");
    v
}

#[test]
fn packet_layouts() {
    let layouts: &[(u8, bool, bool)] = &[
        (4, false, false),
        (1, false, false),
        (2, true, false),
        (2, false, true),
        (4, true, true),
        (8, false, false),
        (8, true, true),
    ];
    for &(w, le, incl) in layouts {
        let addr = spawn_server(Behaviour::Framed(w, le, incl));
        let width = w.to_string();
        let mut extra = vec![
            "-c",
            "2",
            "-l",
            "200",
            "-n",
            "30",
            "--pipeline",
            "4",
            "--length-width",
            &width,
        ];
        if le {
            extra.push("--little-endian");
        }
        if incl {
            extra.push("--length-includes-header");
        }
        let (out, v) = run_json("packet", addr, &extra);
        assert!(out.status.success(), "layout {w} {le} {incl}: {v}");
        assert_eq!(v["messages"], 60);
    }
    // A client whose layout differs from the server's gets errors.
    let addr = spawn_server(Behaviour::Framed(4, false, false));
    let (out, v) = run_json(
        "packet",
        addr,
        &[
            "-c",
            "1",
            "-l",
            "200",
            "-n",
            "3",
            "--little-endian",
            "--timeout",
            "2",
        ],
    );
    assert!(!out.status.success(), "{v}");
}

#[test]
fn open_loop_rate_and_duration() {
    if cfg!(windows) {
        // Seen under Wine 8: about a quarter of the scheduled rate is sent; not yet looked
        // into on a Windows machine (listed in ARCHITECTURE.md, "Windows").
        println!("skipped: open-loop --rate under Wine sends ~1/4 of the rate (timer waits)");
        return;
    }
    let addr = spawn_server(Behaviour::Echo);
    let (out, v) = run_json(
        "echo",
        addr,
        &[
            "-c", "4", "-l", "64", "-d", "1", "--rate", "2000", "--warmup", "0.2",
        ],
    );
    assert!(out.status.success(), "{v}");
    assert_window(&v, 1.0);
    // Open loop: never faster than the schedule; a loaded machine may fall a little behind.
    let rate = v["messages"].as_f64().unwrap() / v["duration_secs"].as_f64().unwrap();
    assert!((1500.0..=2300.0).contains(&rate), "~2000/s expected: {v}");
}

#[test]
fn hold_keeps_connections_open() {
    let addr = spawn_server(Behaviour::Echo);
    let (out, v) = run_json(
        "echo",
        addr,
        &["-c", "5", "-l", "64", "-n", "1", "--hold", "0.3"],
    );
    assert!(out.status.success(), "{v}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("holding connections open"));
    assert_eq!(v["connections_open_at_end"], 5);
}

#[test]
fn text_report_and_usage_errors() {
    let addr = spawn_server(Behaviour::Echo).to_string();
    let out = load(&["echo", "--target", &addr, "-c", "1", "-l", "10", "-n", "5"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("latency (us): p50"), "{text}");
    assert!(text.contains("errors:      none"), "{text}");
    // Neither -d nor -n.
    assert!(!load(&["echo", "--target", &addr, "-l", "10"])
        .status
        .success());
    // Payload too large for a 1-byte header.
    let out = load(&[
        "packet",
        "--target",
        &addr,
        "-l",
        "300",
        "-n",
        "1",
        "--length-width",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

// ---- --client blocking: a thread per connection, one message in flight ----

fn run_blocking(mode: &str, addr: SocketAddr, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec!["--client", "blocking"];
    args.extend_from_slice(extra);
    run_json(mode, addr, &args)
}

#[test]
fn blocking_echo_all_verified() {
    let addr = spawn_server(Behaviour::Echo);
    let (out, v) = run_blocking("echo", addr, &["-c", "4", "-l", "1000", "-n", "50"]);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["client"], "blocking");
    assert_eq!(v["threads"], 4, "{v}");
    assert_eq!(v["messages"], 200);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["connections"], 4);
    assert_eq!(v["connections_open_at_end"], 4);
    assert_eq!(v["bytes_sent"], 200_000);
    assert_eq!(v["bytes_received"], 200_000);
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"][k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    // The event client says which it is too.
    let (_, v) = run_json("echo", addr, &["-c", "1", "-l", "10", "-n", "1"]);
    assert_eq!(v["client"], "event");
}

#[test]
fn blocking_errors_by_kind() {
    let v = errors_by_kind(run_blocking);
    assert_eq!(
        v["messages"], 4,
        "two whole replies each before the bad byte: {v}"
    );
}

#[test]
fn blocking_refused_connect_fails_after_bounded_retries() {
    refused_connect_fails_after_bounded_retries(run_blocking);
}

#[test]
fn blocking_line_and_packet_modes() {
    let addr = spawn_server(Behaviour::Line);
    let (out, v) = run_blocking("line", addr, &["-c", "3", "-l", "64", "-n", "20"]);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["messages"], 60);
    // No greeting from a plain echo server: the line client times out.
    let v = no_greeting_fails(run_blocking);
    assert_eq!(v["error_kinds"]["timeout"], 1, "{v}");

    let addr = spawn_server(Behaviour::Framed(2, true, true));
    let (out, v) = run_blocking(
        "packet",
        addr,
        &[
            "-c",
            "2",
            "-l",
            "200",
            "-n",
            "30",
            "--length-width",
            "2",
            "--little-endian",
            "--length-includes-header",
        ],
    );
    assert!(out.status.success(), "{v}");
    assert_eq!(v["messages"], 60);
}

#[test]
fn blocking_duration_warmup_and_hold() {
    let addr = spawn_server(Behaviour::Echo);
    let (out, v) = run_blocking(
        "echo",
        addr,
        &[
            "-c", "3", "-l", "64", "-d", "0.5", "--warmup", "0.2", "--hold", "0.3",
        ],
    );
    assert!(out.status.success(), "{v}");
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
    assert_window(&v, 0.5);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holding connections open"));
    assert_eq!(v["connections_open_at_end"], 3);
    // Sent and received bytes are whole messages of the window.
    let m = v["messages"].as_u64().unwrap();
    let rx = v["bytes_received"].as_u64().unwrap();
    assert_eq!(rx, m * 64, "{v}");
}

#[test]
fn blocking_rejects_pipeline_and_rate() {
    let addr = spawn_server(Behaviour::Echo).to_string();
    for extra in [["--pipeline", "2"], ["--rate", "100"]] {
        let mut args = vec![
            "echo", "--target", &addr, "--client", "blocking", "-l", "8", "-n", "1",
        ];
        args.extend_from_slice(&extra);
        let out = load(&args);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--client blocking"));
    }
}
