#![cfg(target_os = "linux")] // sends itself POSIX signals; Windows: ci/windows/check_servers.py
//! `Engine::start()` + `join()` drains gracefully on SIGTERM and SIGINT, exactly like `run()`
//! (a program that needs a `RunningEngine` is not left with signals that do nothing). One test
//! in its own binary: the signals go to the whole test process.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use ringport::codec::Raw;
use ringport::{BackendKind, Conn, Frame, Handler, Server};

struct Echo;
impl Handler for Echo {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
}

fn drains_on(kind: BackendKind, signal: i32) {
    let Some(mut engine) = support::engine(kind, 2) else {
        return;
    };
    let server = engine
        .add_server(Server::new("127.0.0.1:0".parse().unwrap(), Raw, |_| Echo))
        .unwrap();
    let running = engine.start().unwrap();
    let mut c = TcpStream::connect(server.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"before the signal").unwrap();
    let mut got = [0u8; 17];
    c.read_exact(&mut got).unwrap();
    // SAFETY: kill(2) on our own pid with a signal the engine has a handler for.
    assert_eq!(unsafe { libc::kill(libc::getpid(), signal) }, 0);
    // Graceful: the open connection is closed with a FIN, not left hanging or reset.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("EOF, not a reset");
    assert!(rest.is_empty());
    drop(c);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        running.join();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the engine did not stop on the signal");
    assert_eq!(server.stats().snapshot().closed.get("shutdown"), Some(&1));
}

#[test]
fn start_then_join_drains_on_sigterm_and_sigint() {
    drains_on(BackendKind::Epoll, libc::SIGTERM);
    drains_on(BackendKind::Uring, libc::SIGINT);
    drains_on(BackendKind::Epoll, libc::SIGINT);
    drains_on(BackendKind::Uring, libc::SIGTERM);
}
