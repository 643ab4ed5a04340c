#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! Per-IP limits of the example servers (`--max-connections-per-ip`, `--accept-rate-per-ip`):
//! one address is refused beyond its limit while another connects freely. Loopback has the
//! whole 127/8, so clients bind 127.0.0.2 and 127.0.0.3 as their source addresses.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

backend_tests!("line_server";
    connections_per_ip_limit,
    accept_rate_per_ip_limit,
);

/// Connects from `source` to `server`.
fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(source, 0).into())
        .expect("bind source address");
    s.connect_timeout(&server.into(), CONNECT_TIMEOUT)
        .expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// Whether the server served this connection: its greeting arrives (admitted), or the
/// connection ends without one (refused).
fn greeted(s: &TcpStream) -> bool {
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(_) if line == "+OK ready\r\n" => true,
        Ok(0) => false,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        other => panic!("unexpected first read {other:?} {line:?}"),
    }
}

fn connections_per_ip_limit(b: Backend) {
    let s = Server::start("line_server", b, &["--max-connections-per-ip", "100"]);
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let c: IpAddr = "127.0.0.3".parse().unwrap();
    let mut from_a: Vec<TcpStream> = (0..100).map(|_| connect_from(a, s.addr)).collect();
    for (i, conn) in from_a.iter().enumerate() {
        assert!(
            greeted(conn),
            "connection {i} from 127.0.0.2 refused under the limit"
        );
    }
    for i in 0..5 {
        let extra = connect_from(a, s.addr);
        assert!(
            !greeted(&extra),
            "connection {} from 127.0.0.2 served beyond the limit of 100",
            101 + i
        );
    }
    let from_c: Vec<TcpStream> = (0..100).map(|_| connect_from(c, s.addr)).collect();
    for (i, conn) in from_c.iter().enumerate() {
        assert!(
            greeted(conn),
            "connection {i} from 127.0.0.3 refused: starved by 127.0.0.2"
        );
    }
    // A closed connection frees its place: wait until the server has seen the close.
    let mut gone = from_a.pop().expect("one");
    gone.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    let _ = gone.read_to_end(&mut rest);
    drop(gone);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = connect_from(a, s.addr);
        if greeted(&again) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection's place was never freed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(from_c);
}

fn accept_rate_per_ip_limit(b: Backend) {
    // 1 per second, bursts of 5: a sixth connection within the same second is refused.
    let s = Server::start(
        "line_server",
        b,
        &["--accept-rate-per-ip", "1", "--accept-burst-per-ip", "5"],
    );
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let c: IpAddr = "127.0.0.3".parse().unwrap();
    let start = std::time::Instant::now();
    let mut served = 0;
    let mut held = Vec::new();
    for _ in 0..8 {
        let conn = connect_from(a, s.addr);
        if greeted(&conn) {
            served += 1;
        }
        held.push(conn);
    }
    let took = start.elapsed();
    // Each second that passed may have refilled one more.
    let allowed = 5 + took.as_secs() as usize;
    assert!(
        served >= 5 && served <= allowed,
        "served {served} of 8 from 127.0.0.2 in {took:?} (burst 5, 1/s)"
    );
    assert!(served < 8, "the rate limit refused nothing");
    for i in 0..5 {
        let conn = connect_from(c, s.addr);
        assert!(greeted(&conn), "connection {i} from 127.0.0.3 refused");
    }
}
