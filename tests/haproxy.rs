#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! HAProxy (nobody here wrote it) in `mode tcp` in front of two `line_server` processes: both
//! receive connections, and when one dies HAProxy's health check takes it out and every client
//! is served by the other. With `send-proxy-v2` and, separately, `send-proxy` (v1) in front of
//! backends started with `--proxy-protocol required`, `WHO` answers the client's own address
//! and port (its socket's local address), both backends count headers, and `ringport-load`
//! through HAProxy finishes with zero errors.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::deploy::{
    free_port, http_get, load_result, metrics_addr, ringport_load, sample, tool, Proc,
};
use common::line::LineClient;
use common::*;

backend_tests!("line_server";
    two_backends_behind_haproxy,
    send_proxy_v2_who_and_load,
    send_proxy_v1_who,
    tcp_proxy_send_proxy_v1_into_accept_proxy,
    tcp_proxy_send_proxy_v2_into_accept_proxy,
);

fn served(addr: SocketAddr, n: usize, phase: &str) {
    for i in 0..n {
        println!("{phase}: client {i}");
        let mut c = LineClient::connect(addr);
        c.roundtrip(&format!("ECHO request {i}"), &format!("+request {i}"));
        c.roundtrip("QUIT", "+BYE");
    }
}

fn frames(s: &Server) -> f64 {
    let (_, body) = http_get(metrics_addr(&s.stdout_text()), "/metrics");
    sample(
        &body,
        "ringport_frames_received_total",
        &format!("server=\"{}\"", s.addr),
    )
    .unwrap_or(0.0)
}

/// HAProxy in `mode tcp` on a free port in front of `backends` (each server line gets
/// `server_opts`, e.g. `send-proxy-v2`), once it listens: its address, process and directory.
fn start_haproxy(
    haproxy: &std::path::Path,
    b: Backend,
    backends: &[&Server],
    server_opts: &str,
) -> (SocketAddr, Proc, std::path::PathBuf) {
    start_haproxy_bind(haproxy, b, backends, "", server_opts)
}

/// [`start_haproxy`] with `bind_opts` on its bind line (e.g. `accept-proxy`).
fn start_haproxy_bind(
    haproxy: &std::path::Path,
    b: Backend,
    backends: &[&Server],
    bind_opts: &str,
    server_opts: &str,
) -> (SocketAddr, Proc, std::path::PathBuf) {
    let port = free_port();
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // One directory per call: two tests with the same options (the v1 and v2 runs of
    // `tcp_proxy_into_accept_proxy`) run at once, and one's cleanup removed the other's file.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{bind_opts}{server_opts}").replace(' ', "_");
    let dir = std::env::temp_dir().join(format!(
        "ringport-haproxy-{}-{call}-{b}-{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    let names = ["one", "two"];
    let servers: String = backends
        .iter()
        .zip(names)
        .map(|(s, name)| {
            format!(
                "    server {name} {} {server_opts} check inter 200ms fall 2 rise 1\n",
                s.addr
            )
        })
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 10s\n    \
             timeout server 10s\n    retries 3\n    option redispatch\n\
             frontend line_in\n    bind {front} {bind_opts}\n    default_backend line_servers\n\
             backend line_servers\n    balance roundrobin\n{servers}",
        ),
    )
    .unwrap();
    let mut proxy = Proc::spawn(Command::new(haproxy).arg("-db").arg("-f").arg(&cfg));
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(front).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen:\n{}",
            proxy.output()
        );
        if let Some(st) = proxy.wait_exit(Duration::from_millis(20)) {
            panic!("haproxy exited {st}:\n{}", proxy.output());
        }
    }
    (front, proxy, dir)
}

/// `WHO` through `front` from `n` clients: each answer is the client's own socket address.
fn who_is_the_client(front: SocketAddr, n: usize) {
    for i in 0..n {
        let mut c = LineClient::connect(front);
        let me = c.stream.local_addr().unwrap();
        c.roundtrip("WHO", &format!("+{me}"));
        c.roundtrip(&format!("ECHO who {i}"), &format!("+who {i}"));
        c.roundtrip("QUIT", "+BYE");
    }
}

/// The server's `ringport_proxy_headers_total{outcome}` sample.
fn headers(s: &Server, outcome: &str) -> f64 {
    let (_, body) = http_get(metrics_addr(&s.stdout_text()), "/metrics");
    sample(
        &body,
        "ringport_proxy_headers_total",
        &format!("server=\"{}\",outcome=\"{outcome}\"", s.addr),
    )
    .unwrap_or_else(|| panic!("no {outcome} header sample in:\n{body}"))
}

fn behind_send_proxy(b: Backend, option: &str, outcome: &str, load: bool) {
    let Some(haproxy) = tool("haproxy", "Debian package haproxy") else {
        return;
    };
    let args = [
        "--io-threads",
        "1",
        "--metrics",
        "127.0.0.1:0",
        "--proxy-protocol",
        "required",
    ];
    let one = Server::start("line_server", b, &args);
    let two = Server::start("line_server", b, &args);
    // Plain health checks (connect, then reset, without a byte): no header refused for them.
    let (front, _proxy, dir) = start_haproxy(&haproxy, b, &[&one, &two], option);
    who_is_the_client(front, 20);
    let (a, c) = (headers(&one, outcome), headers(&two, outcome));
    assert!(
        a >= 1.0 && c >= 1.0 && a + c >= 20.0,
        "both backends read {outcome} headers: {a} and {c}"
    );
    for s in [&one, &two] {
        assert_eq!(
            headers(s, "refused"),
            0.0,
            "no header refused by {}",
            s.addr
        );
    }
    if load {
        let mut run = Proc::spawn(Command::new(ringport_load()).args([
            "line",
            "--target",
            &front.to_string(),
            "-c",
            "8",
            "-l",
            "32",
            "-n",
            "200",
            "--timeout",
            "30",
            "--threads",
            "2",
            "--json",
        ]));
        let st = run
            .wait_exit(Duration::from_secs(60))
            .expect("ringport-load finishes");
        let (messages, errors, json) = load_result(&run.output());
        assert!(
            st.success() && errors == 0,
            "ringport-load through HAProxy: {st}\n{json}"
        );
        assert_eq!(messages, 8 * 200, "{json}");
        println!("ringport-load through HAProxy ({option}): {messages} messages, 0 errors");
        let (a2, c2) = (headers(&one, outcome), headers(&two, outcome));
        assert!(a2 > a && c2 > c, "both backends took load connections");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn send_proxy_v2_who_and_load(b: Backend) {
    behind_send_proxy(b, "send-proxy-v2", "v2", true);
}

fn send_proxy_v1_who(b: Backend) {
    behind_send_proxy(b, "send-proxy", "v1", false);
}

fn two_backends_behind_haproxy(b: Backend) {
    let Some(haproxy) = tool("haproxy", "Debian package haproxy") else {
        return;
    };
    let args = ["--io-threads", "1", "--metrics", "127.0.0.1:0"];
    let mut one = Server::start("line_server", b, &args);
    let two = Server::start("line_server", b, &args);
    let (front, proxy, dir) = start_haproxy(&haproxy, b, &[&one, &two], "");
    served(front, 40, "both up");
    let (a, c) = (frames(&one), frames(&two));
    assert!(
        a > 0.0 && c > 0.0,
        "both backends serve: {a} and {c} frames"
    );

    // One backend dies: once the health check has taken it out, the other serves everyone.
    one.signal(libc::SIGKILL);
    one.wait_exit(Duration::from_secs(10)).expect("killed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.output().contains("line_servers/one is DOWN") {
        assert!(
            Instant::now() < deadline,
            "HAProxy's health check never took the dead backend out:\n{}",
            proxy.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    served(front, 40, "one killed");
    let after = frames(&two);
    assert!(
        after >= c + 80.0,
        "the survivor served them all ({c} -> {after})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tcp_proxy --send-proxy VERSION` in front of HAProxy's `bind ... accept-proxy`, which passes
/// what it read on with `send-proxy-v2` to `line_server --proxy-protocol required`: `WHO`
/// answers the client's own address, so HAProxy parsed the header tcp_proxy wrote.
fn tcp_proxy_into_accept_proxy(b: Backend, version: &str) {
    let Some(haproxy) = tool("haproxy", "Debian package haproxy") else {
        return;
    };
    let line = Server::start(
        "line_server",
        b,
        &[
            "--io-threads",
            "1",
            "--metrics",
            "127.0.0.1:0",
            "--proxy-protocol",
            "required",
        ],
    );
    let (front, _proxy, dir) =
        start_haproxy_bind(&haproxy, b, &[&line], "accept-proxy", "send-proxy-v2");
    let relay = Server::start(
        "tcp_proxy",
        b,
        &["--upstream", &front.to_string(), "--send-proxy", version],
    );
    who_is_the_client(relay.addr, 5);
    assert!(
        headers(&line, "v2") >= 5.0,
        "line_server read HAProxy's headers"
    );
    assert_eq!(headers(&line, "refused"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tcp_proxy_send_proxy_v1_into_accept_proxy(b: Backend) {
    tcp_proxy_into_accept_proxy(b, "v1");
}

fn tcp_proxy_send_proxy_v2_into_accept_proxy(b: Backend) {
    tcp_proxy_into_accept_proxy(b, "v2");
}
