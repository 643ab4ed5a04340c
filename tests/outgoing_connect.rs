//! Outgoing connections (`Connector::connect`) on every backend: a connect that succeeds and
//! echoes, a refused connect, and a connect timeout. All on loopback, bounded in time.

mod support;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use ringport::codec::Raw;
use ringport::{BackendKind, CloseReason, Conn, ConnInfo, Frame, Handler, RunningEngine, Server};

struct Echo;
impl Handler for Echo {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Opened,
    Echoed(Vec<u8>),
    Closed(CloseReason),
}

/// Sends "hello", waits for it to come back, then closes; reports what happened.
struct Client {
    tx: mpsc::Sender<Seen>,
    got: Vec<u8>,
}

impl Handler for Client {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = self.tx.send(Seen::Opened);
        conn.write(b"hello");
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        self.got.extend_from_slice(frame.raw());
        if self.got.len() >= 5 {
            let _ = self.tx.send(Seen::Echoed(self.got.clone()));
            conn.close();
        }
    }
    fn on_close(&mut self, _info: &ConnInfo, reason: &CloseReason) {
        let _ = self.tx.send(Seen::Closed(reason.clone()));
    }
}

/// Connects a `Client` to `addr` through the engine; its events arrive on the receiver.
fn connect_client(
    running: &RunningEngine,
    addr: SocketAddr,
    timeout: Duration,
) -> mpsc::Receiver<Seen> {
    let (tx, rx) = mpsc::channel();
    let client = Client {
        tx,
        got: Vec::new(),
    };
    running
        .connector()
        .connect(addr, Raw, client, Some(timeout))
        .unwrap();
    rx
}

/// A loopback socket bound to a free port, not listening (yet).
fn bound_socket() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

fn stop(running: RunningEngine) {
    running.shutdown_handle().shutdown();
    running.join();
}

fn recv(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no event within 10 s")
}

fn connect_echo_and_close(kind: BackendKind) {
    let Some(mut engine) = support::engine(kind, 2) else {
        return;
    };
    let server = engine
        .add_server(Server::new("127.0.0.1:0".parse().unwrap(), Raw, |_| Echo))
        .unwrap();
    let running = engine.start().unwrap();
    let rx = connect_client(&running, server.local_addr(), Duration::from_secs(5));
    assert_eq!(recv(&rx), Seen::Opened);
    assert_eq!(recv(&rx), Seen::Echoed(b"hello".to_vec()));
    assert_eq!(recv(&rx), Seen::Closed(CloseReason::Local));
    assert_eq!(running.connector().stats().snapshot().accepted, 1);
    stop(running);
}

fn refused_connect_reports_on_close_only(kind: BackendKind) {
    let Some(engine) = support::engine(kind, 2) else {
        return;
    };
    // A port that was just free: bind without listening, so a connect is refused.
    let (s, addr) = bound_socket();
    let running = engine.start().unwrap();
    let rx = connect_client(&running, addr, Duration::from_secs(5));
    match recv(&rx) {
        Seen::Closed(CloseReason::Io(kind, _)) => {
            assert_eq!(kind, std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected a refused connect, got {other:?}"),
    }
    drop(s);
    stop(running);
}

fn connect_timeout_closes_with_timed_out(kind: BackendKind) {
    let Some(engine) = support::engine(kind, 2) else {
        return;
    };
    // A listener that never accepts, its backlog filled: further SYNs are dropped, so a
    // connect neither succeeds nor fails until our timeout.
    let (l, addr) = bound_socket();
    l.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    let running = engine.start().unwrap();
    let rx = connect_client(&running, addr, Duration::from_millis(300));
    match recv(&rx) {
        Seen::Closed(CloseReason::Io(kind, _)) => assert_eq!(kind, std::io::ErrorKind::TimedOut),
        other => panic!("expected a connect timeout, got {other:?}"),
    }
    stop(running);
}

on_every_backend!(
    connect_echo_and_close,
    refused_connect_reports_on_close_only,
    connect_timeout_closes_with_timed_out
);
