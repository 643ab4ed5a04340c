//! A handler that panics costs only its own connection: it is reset, counted as
//! `handler-panic`, and every other connection on the same IO thread is still served.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringport::codec::Lines;
use ringport::{BackendKind, CloseReason, Conn, Frame, Handler, Server};

struct Fragile;
impl Handler for Fragile {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if frame.payload() == b"boom" {
            panic!("a handler bug");
        }
        conn.write(frame.raw());
    }
}

fn round_trip(s: &mut TcpStream, line: &[u8]) -> Vec<u8> {
    s.write_all(line).unwrap();
    let mut got = vec![0; line.len()];
    s.read_exact(&mut got).unwrap();
    got
}

fn panic_costs_only_its_connection(kind: BackendKind) {
    let Some(mut engine) = support::engine(kind, 1) else {
        return;
    };
    let server = engine
        .add_server(Server::new(
            "127.0.0.1:0".parse().unwrap(),
            Lines::new(1024),
            |_| Fragile,
        ))
        .unwrap();
    let running = engine.start().unwrap();
    let connect = || {
        let s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut good = connect();
    let mut bad = connect();
    assert_eq!(round_trip(&mut good, b"hello\n"), b"hello\n");
    assert_eq!(round_trip(&mut bad, b"first\n"), b"first\n");
    bad.write_all(b"boom\n").unwrap();
    // The panicking connection is reset (or sees EOF), never left hanging.
    let mut buf = [0u8; 16];
    match bad.read(&mut buf) {
        Ok(0) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("unexpected {n} bytes after the panic"),
    }
    // Same IO thread, still served; new connections too.
    assert_eq!(round_trip(&mut good, b"still here\n"), b"still here\n");
    let mut fresh = connect();
    assert_eq!(round_trip(&mut fresh, b"new\n"), b"new\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .stats()
        .snapshot()
        .closed_by(&CloseReason::HandlerPanic)
        != 1
    {
        assert!(Instant::now() < deadline, "the panic was not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    running.shutdown_handle().shutdown();
    running.join();
}

on_every_backend!(panic_costs_only_its_connection);
