#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! HAProxy (nobody here wrote it) in `mode tcp` in front of two `line_server` processes: both
//! receive connections, and when one dies HAProxy's health check takes it out and every client
//! is served by the other. (The PROXY protocol is not supported yet, so HAProxy sends none.)

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::deploy::{free_port, http_get, metrics_addr, sample, tool, Proc};
use common::line::LineClient;
use common::*;

backend_tests!("line_server";
    two_backends_behind_haproxy,
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

fn two_backends_behind_haproxy(b: Backend) {
    let Some(haproxy) = tool("haproxy", "Debian package haproxy") else {
        return;
    };
    let args = ["--io-threads", "1", "--metrics", "127.0.0.1:0"];
    let mut one = Server::start("line_server", b, &args);
    let two = Server::start("line_server", b, &args);
    let port = free_port();
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = std::env::temp_dir().join(format!("ringport-haproxy-{}-{b}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 10s\n    \
             timeout server 10s\n    retries 3\n    option redispatch\n\
             frontend line_in\n    bind {front}\n    default_backend line_servers\n\
             backend line_servers\n    balance roundrobin\n    \
             server one {} check inter 200ms fall 2 rise 1\n    \
             server two {} check inter 200ms fall 2 rise 1\n",
            one.addr, two.addr
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
