//! A panic in handler code costs only its own connection: in `on_frame` or `on_open` the
//! connection is reset (never a clean EOF), counted as `handler-panic`, and its handler is not
//! called again, not even `on_close`; in the handler factory the new connection is closed
//! before it has a handler. Every other connection on the same IO thread is still served.
//! Library-level, on every backend, one IO thread.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ringport::codec::Lines;
use ringport::{
    BackendKind, CloseReason, Conn, ConnInfo, Frame, Handler, RunningEngine, Server, ServerHandle,
};

/// Echoes lines; panics on `boom`, or in `on_open` when told to. Reports `on_close`.
struct Fragile {
    panic_on_open: bool,
    closed: Arc<Mutex<mpsc::Sender<(SocketAddr, CloseReason)>>>,
}

impl Handler for Fragile {
    fn on_open(&mut self, _conn: &mut Conn<'_>) {
        if self.panic_on_open {
            panic!("a bug in on_open");
        }
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if frame.payload() == b"boom" {
            panic!("a handler bug");
        }
        conn.write(frame.raw());
    }
    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        let _ = self
            .closed
            .lock()
            .unwrap()
            .send((info.peer, reason.clone()));
    }
}

/// What the factory does for the n-th connection (0-based).
#[derive(Clone, Copy, PartialEq)]
enum Make {
    Fine,
    PanicInFactory,
    PanicInOnOpen,
}

struct Setup {
    running: RunningEngine,
    server: ServerHandle,
    closed: mpsc::Receiver<(SocketAddr, CloseReason)>,
}

fn start(kind: BackendKind, plan: Vec<Make>) -> Option<Setup> {
    let mut engine = support::engine(kind, 1)?;
    let (tx, rx) = mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let n = AtomicUsize::new(0);
    let server = engine
        .add_server(Server::new(
            "127.0.0.1:0".parse().unwrap(),
            Lines::new(1024),
            move |_| {
                let i = n.fetch_add(1, Ordering::SeqCst);
                let make = plan.get(i).copied().unwrap_or(Make::Fine);
                if make == Make::PanicInFactory {
                    panic!("a bug in the handler factory");
                }
                Fragile {
                    panic_on_open: make == Make::PanicInOnOpen,
                    closed: tx.clone(),
                }
            },
        ))
        .unwrap();
    Some(Setup {
        running: engine.start().unwrap(),
        server,
        closed: rx,
    })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn round_trip(s: &mut TcpStream, line: &[u8]) -> Vec<u8> {
    s.write_all(line).unwrap();
    let mut got = vec![0; line.len()];
    s.read_exact(&mut got).unwrap();
    got
}

/// How the server ended a connection, seen by a client that only reads.
fn read_end(s: &mut TcpStream) -> Result<(), ErrorKind> {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => panic!("unexpected {n} bytes: {:?}", &buf[..n]),
        Err(e) => Err(e.kind()),
    }
}

/// The docs promise a reset: a clean EOF would look like an orderly close. Under Wine 8 a
/// peer's reset sometimes reaches the test's blocking read as EOF (`support::WINE_NO_RESET`;
/// it failed CI once on `iocp`): there, and only there, EOF is accepted and printed.
fn assert_reset(s: &mut TcpStream, what: &str) {
    let end = read_end(s);
    if end == Ok(()) && support::under_wine() {
        println!(
            "under Wine: {what}: read as EOF ({})",
            support::WINE_NO_RESET
        );
        return;
    }
    assert_eq!(end, Err(ErrorKind::ConnectionReset), "{what} must be reset");
}

fn wait_panics_counted(server: &ServerHandle, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = server
            .stats()
            .snapshot()
            .closed_by(&CloseReason::HandlerPanic);
        if got == want {
            return;
        }
        assert!(
            got < want && Instant::now() < deadline,
            "handler-panic count {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Closes `good` from the client side and waits for its `on_close`: every `on_close` the engine
/// ran before it (on the same, single IO thread) is in `seen`.
fn close_and_collect(
    good: TcpStream,
    closed: &mpsc::Receiver<(SocketAddr, CloseReason)>,
) -> Vec<(SocketAddr, CloseReason)> {
    let good_addr = good.local_addr().unwrap();
    drop(good);
    let mut seen = Vec::new();
    loop {
        let ev = closed
            .recv_timeout(Duration::from_secs(10))
            .expect("the healthy connection's on_close did not run within 10 s");
        let done = ev.0 == good_addr;
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

fn stop(running: RunningEngine) {
    running.shutdown_handle().shutdown();
    running.join();
}

fn panic_in_on_frame_resets_only_its_connection(kind: BackendKind) {
    let Some(setup) = start(kind, vec![]) else {
        return;
    };
    let addr = setup.server.local_addr();
    let mut good = connect(addr);
    let mut bad = connect(addr);
    let bad_addr = bad.local_addr().unwrap();
    assert_eq!(round_trip(&mut good, b"hello\n"), b"hello\n");
    assert_eq!(round_trip(&mut bad, b"first\n"), b"first\n");
    bad.write_all(b"boom\n").unwrap();
    assert_reset(&mut bad, "the connection whose on_frame panicked");
    let seen = others_still_served(setup, good, bad_addr);
    assert_eq!(seen.last().unwrap().1, CloseReason::PeerClosed);
}

/// After one connection's handler panicked (counted once): the connection `good` on the same
/// IO thread and a fresh one are still served, and `on_close` never ran for `bad_addr`.
/// Stops the engine; the closes `good`'s close collected.
fn others_still_served(
    setup: Setup,
    mut good: TcpStream,
    bad_addr: SocketAddr,
) -> Vec<(SocketAddr, CloseReason)> {
    let addr = setup.server.local_addr();
    wait_panics_counted(&setup.server, 1);
    // Same IO thread, still served; new connections too.
    assert_eq!(round_trip(&mut good, b"still here\n"), b"still here\n");
    let mut fresh = connect(addr);
    assert_eq!(round_trip(&mut fresh, b"new\n"), b"new\n");
    let seen = close_and_collect(good, &setup.closed);
    assert!(
        seen.iter().all(|(peer, _)| *peer != bad_addr),
        "on_close ran for the connection whose handler panicked: {seen:?}"
    );
    drop(fresh);
    stop(setup.running);
    seen
}

fn panic_in_on_open_resets_only_its_connection(kind: BackendKind) {
    let Some(setup) = start(kind, vec![Make::Fine, Make::PanicInOnOpen]) else {
        return;
    };
    let addr = setup.server.local_addr();
    let mut good = connect(addr);
    assert_eq!(round_trip(&mut good, b"hello\n"), b"hello\n");
    let mut bad = connect(addr);
    let bad_addr = bad.local_addr().unwrap();
    assert_reset(&mut bad, "a connection whose on_open panicked");
    others_still_served(setup, good, bad_addr);
}

fn panic_in_factory_closes_only_the_new_connection(kind: BackendKind) {
    let Some(setup) = start(kind, vec![Make::Fine, Make::PanicInFactory]) else {
        return;
    };
    let addr = setup.server.local_addr();
    let mut good = connect(addr);
    assert_eq!(round_trip(&mut good, b"hello\n"), b"hello\n");
    let mut bad = connect(addr);
    // It never had a handler: closed at once (EOF or reset), nothing served.
    let _ = bad.write(b"anyone?\n");
    let end = read_end(&mut bad);
    assert!(
        matches!(
            end,
            Ok(()) | Err(ErrorKind::ConnectionReset) | Err(ErrorKind::BrokenPipe)
        ),
        "connection whose factory panicked: {end:?}"
    );
    wait_panics_counted(&setup.server, 1);
    assert_eq!(round_trip(&mut good, b"still here\n"), b"still here\n");
    let mut fresh = connect(addr);
    assert_eq!(round_trip(&mut fresh, b"new\n"), b"new\n");
    let s = setup.server.stats().snapshot();
    assert_eq!(s.accepted, 3, "{s:?}");
    assert_eq!(s.active, 2, "{s:?}");
    drop((good, fresh));
    stop(setup.running);
}

on_every_backend!(
    panic_in_on_frame_resets_only_its_connection,
    panic_in_on_open_resets_only_its_connection,
    panic_in_factory_closes_only_the_new_connection,
);
