//! A connection whose reading is paused still learns of the peer's reset (issue 27), library
//! level, on every backend: before, a reset while paused went unnoticed for as long as the
//! pause (a proxy whose client reset while its upstream was full held both descriptors and
//! their buffers for good).

mod support;

use std::io::{Read, Write};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use ringport::codec::Raw;
use ringport::{
    BackendKind, CloseReason, Conn, ConnInfo, ConnectionHandle, Frame, Handler, RunningEngine,
    Server, ServerHandle,
};

const LIMIT: Duration = Duration::from_secs(20);

/// Pauses reading at open and never resumes; tells the test once the pause is in effect (a
/// timer fires on a later loop turn, after the flush that applied it) and how it closed.
struct PausedForGood {
    paused: mpsc::Sender<ConnectionHandle>,
    closed: mpsc::Sender<CloseReason>,
}
impl Handler for PausedForGood {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.pause_reading();
        conn.set_timer(0, Duration::from_millis(10));
    }
    fn on_timer(&mut self, conn: &mut Conn<'_>, _: u64) {
        let _ = self.paused.send(conn.handle());
    }
    fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
    fn on_close(&mut self, _: &ConnInfo, reason: &CloseReason) {
        let _ = self.closed.send(reason.clone());
    }
}

/// An engine (one IO thread) whose connections pause at open, and the channels they report on.
fn start(
    kind: BackendKind,
) -> Option<(
    RunningEngine,
    ServerHandle,
    mpsc::Receiver<ConnectionHandle>,
    mpsc::Receiver<CloseReason>,
)> {
    let (paused_tx, paused) = mpsc::channel();
    let (closed_tx, closed) = mpsc::channel();
    let txs = Mutex::new((paused_tx, closed_tx));
    let mut engine = support::engine(kind, 1)?;
    let server = Server::new("127.0.0.1:0".parse().unwrap(), Raw, move |_: &ConnInfo| {
        let t = txs.lock().unwrap();
        PausedForGood {
            paused: t.0.clone(),
            closed: t.1.clone(),
        }
    });
    let h = engine.add_server(server).unwrap();
    Some((engine.start().unwrap(), h, paused, closed))
}

fn stop(running: RunningEngine) {
    running.shutdown_handle().shutdown();
    running.join();
}

/// Issue 27: a connection whose reading is paused learns of the peer's reset, with data unread
/// in its socket: `on_close` reports `Reset`, counted. Before, nothing was reported and the
/// descriptor stayed open for as long as the pause.
fn a_paused_connection_learns_of_a_reset(kind: BackendKind) {
    if cfg!(windows) {
        // IOCP learns of a reset from its zero-byte receive, which a paused connection with
        // unread data does not have outstanding (ARCHITECTURE.md, Windows); not run there.
        println!("skipped: not yet on Windows (a paused iocp connection with unread data)");
        return;
    }
    let Some((running, h, paused, closed)) = start(kind) else {
        return;
    };
    let mut c = std::net::TcpStream::connect(h.local_addr()).unwrap();
    paused.recv_timeout(LIMIT).expect("the pause took effect");
    c.write_all(&[7u8; 32 << 10]).unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c); // a reset
    let reason = closed
        .recv_timeout(LIMIT)
        .expect("the reset of a paused connection went unnoticed");
    assert_eq!(reason, CloseReason::Reset);
    assert_eq!(h.stats().snapshot().closed.get("reset"), Some(&1));
    stop(running);
}

/// A paused connection that its handler (here a handle) aborts is closed: `on_close` says
/// `Local` and the peer sees the reset. On io_uring the close must cancel the error poll the
/// pause armed; before it did, the close never completed (no `on_close`, the descriptor kept).
fn a_paused_connection_is_closed_when_aborted(kind: BackendKind) {
    let Some((running, h, paused, closed)) = start(kind) else {
        return;
    };
    let mut c = std::net::TcpStream::connect(h.local_addr()).unwrap();
    c.write_all(b"unread").unwrap();
    let handle = paused.recv_timeout(LIMIT).expect("the pause took effect");
    handle.abort().unwrap();
    let reason = closed
        .recv_timeout(LIMIT)
        .expect("the abort of a paused connection never completed");
    assert_eq!(reason, CloseReason::Local);
    c.set_read_timeout(Some(LIMIT)).unwrap();
    let end = c.read(&mut [0u8; 16]);
    assert!(
        matches!(&end, Ok(0)) || end.as_ref().is_err_and(|e| !support::net::is_timeout(e)),
        "the peer did not see the connection end: {end:?}"
    );
    stop(running);
}

on_every_backend!(
    a_paused_connection_learns_of_a_reset,
    a_paused_connection_is_closed_when_aborted
);
