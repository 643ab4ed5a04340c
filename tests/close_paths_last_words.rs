//! Nothing follows a close's last bytes (library level, on every backend): a heartbeat timer
//! that keeps writing stops when `close_after` begins the close, later writes of the handler
//! are ignored (and `is_writable` says so), plain handles refuse with `Closed`, and only
//! outstanding `Work` still answers, before the last words.

mod support;

use std::net::TcpStream;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use ringport::codec::Raw;
use ringport::{
    BackendKind, CloseReason, Conn, ConnInfo, ConnectionHandle, Frame, HandleError, Handler,
    RunningEngine, Server, ServerHandle, SocketOptions, Work,
};
use support::net::{connect_small_rcvbuf, expect_closed, Closed, IO_TIMEOUT};

const LAST: &[u8] = b"ERR no PONG\r\n";
const PING: &[u8] = b"PING\r\n";
/// Queued right before the last words: more than the socket buffers hold, so the close's
/// flush takes as long as the client leaves it unread, and the heartbeat keeps coming due.
const FILLER: usize = 1 << 20;

/// A heartbeat every millisecond (`PING`); at the third, a large reply and then
/// `close_after(LAST)`, as a server whose peer missed its PONGs.
struct Heartbeat {
    pings: u32,
    closed: mpsc::Sender<CloseReason>,
}
impl Handler for Heartbeat {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.set_timer(1, Duration::from_millis(1));
    }
    fn on_frame(&mut self, _conn: &mut Conn<'_>, _frame: Frame<'_>) {}
    fn on_timer(&mut self, conn: &mut Conn<'_>, _id: u64) {
        conn.write(PING);
        conn.set_timer(1, Duration::from_millis(1));
        self.pings += 1;
        if self.pings == 3 {
            conn.write(&vec![b'.'; FILLER]);
            conn.close_after(LAST);
            conn.set_timer(2, Duration::from_millis(1)); // ignored: the connection is closing
        }
    }
    fn on_close(&mut self, _info: &ConnInfo, reason: &CloseReason) {
        let _ = self.closed.send(reason.clone());
    }
}

fn start<H: Handler>(
    kind: BackendKind,
    factory: impl Fn() -> H + Send + Sync + 'static,
) -> Option<(RunningEngine, ServerHandle)> {
    let mut engine = support::engine(kind, 1)?;
    let server = engine
        .add_server(
            Server::new("127.0.0.1:0".parse().unwrap(), Raw, move |_| factory())
                .socket_options(SocketOptions::default().send_buffer(Some(16 << 10))),
        )
        .unwrap();
    Some((engine.start().unwrap(), server))
}

fn stop(running: RunningEngine) {
    running.shutdown_handle().shutdown();
    running.join();
}

/// Eight connections at once, each left unread for 100 ms while its 1 MiB reply and last
/// words are queued (the heartbeat comes due about a hundred times meanwhile). Each reads
/// exactly three PINGs, the reply, and the last words, then EOF; closed as `local`. Before
/// the fix every connection read PINGs after the last words.
fn close_after_words_are_last_while_a_timer_writes(kind: BackendKind) {
    let (tx, closed) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some((running, server)) = start(kind, move || Heartbeat {
        pings: 0,
        closed: tx.lock().unwrap().clone(),
    }) else {
        return;
    };
    let clients: Vec<TcpStream> = (0..8)
        .map(|_| connect_small_rcvbuf(server.local_addr(), 8192))
        .collect();
    std::thread::sleep(Duration::from_millis(100)); // the window: not a synchronisation
    let want = [PING, PING, PING, &vec![b'.'; FILLER], LAST].concat();
    for (i, mut c) in clients.into_iter().enumerate() {
        let (got, how) = expect_closed(&mut c, IO_TIMEOUT, "a heartbeat connection");
        assert_eq!(how, Closed::Eof, "connection {i}");
        let tail = String::from_utf8_lossy(&got[got.len().saturating_sub(40)..]).into_owned();
        assert!(
            got == want,
            "connection {i}: {} bytes, want {}; it ends with {tail:?}",
            got.len(),
            want.len()
        );
    }
    for _ in 0..8 {
        let reason = closed.recv_timeout(IO_TIMEOUT).expect("on_close");
        assert_eq!(reason, CloseReason::Local);
    }
    stop(running);
}

/// What the test is told by [`Sealed`], in order.
#[derive(Debug)]
enum Seen {
    /// On the first frame: a plain handle and the `Work` answering the frame.
    Opened(ConnectionHandle, Work),
    /// `on_notify`, after `close_after`: whether `Conn::is_writable` said yes.
    Notified { writable: bool },
}

/// On its first frame takes a `Work` for it, then `close_after(LAST)`; in `on_notify`
/// (after the close began) tries to write `LATE`.
struct Sealed(mpsc::Sender<Seen>);
impl Handler for Sealed {
    fn on_frame(&mut self, conn: &mut Conn<'_>, _frame: Frame<'_>) {
        if conn.outstanding_work() > 0 {
            return;
        }
        let work = conn.work();
        let handle = conn.handle();
        conn.close_after(LAST);
        let _ = self.0.send(Seen::Opened(handle, work));
    }
    fn on_notify(&mut self, conn: &mut Conn<'_>, _value: u64) {
        conn.write(b"LATE");
        let _ = self.0.send(Seen::Notified {
            writable: conn.is_writable(),
        });
    }
}

/// After `close_after`: the handler's own later write is ignored and `is_writable` says
/// `false`; a plain handle says closed and refuses with `Closed`; the outstanding `Work`
/// still answers, and its reply comes before the last words.
fn after_close_after_only_outstanding_work_answers(kind: BackendKind) {
    let (tx, seen) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some((running, server)) = start(kind, move || Sealed(tx.lock().unwrap().clone())) else {
        return;
    };
    let mut c = TcpStream::connect(server.local_addr()).unwrap();
    std::io::Write::write_all(&mut c, b"request").unwrap();
    let Ok(Seen::Opened(handle, work)) = seen.recv_timeout(IO_TIMEOUT) else {
        panic!("no first frame");
    };
    assert!(
        !handle.is_open(),
        "a plain handle still open after close_after"
    );
    assert_eq!(handle.write(&b"pushed"[..]), Err(HandleError::Closed));
    assert!(work.is_open(), "the Work must still answer");
    handle.notify(1).unwrap();
    match seen.recv_timeout(IO_TIMEOUT) {
        Ok(Seen::Notified { writable }) => assert!(!writable, "is_writable after close_after"),
        other => panic!("no on_notify: {other:?}"),
    }
    work.write(&b"reply;"[..]).unwrap();
    drop(work);
    let (got, how) = expect_closed(&mut c, IO_TIMEOUT, "the sealed connection");
    assert_eq!(how, Closed::Eof);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&[&b"reply;"[..], LAST].concat())
    );
    stop(running);
}

/// Closes, then says its last words (as a handler whose `close` came first, e.g. the default
/// `on_shutdown`, and whose `close_after` follows in a later callback).
struct CloseThenLastWords;
impl Handler for CloseThenLastWords {
    fn on_frame(&mut self, conn: &mut Conn<'_>, _frame: Frame<'_>) {
        conn.write(b"reply;");
        conn.close();
        conn.close_after(LAST);
        conn.write(b"late;"); // ignored: after the last words
    }
}

/// `close_after` during a graceful close that has not sent its last bytes yet still sends
/// its words, last. Before, they were dropped without a word (`close_after` only took them
/// while the connection was open).
fn close_after_during_a_close_still_says_its_words(kind: BackendKind) {
    let Some((running, server)) = start(kind, || CloseThenLastWords) else {
        return;
    };
    let mut c = TcpStream::connect(server.local_addr()).unwrap();
    std::io::Write::write_all(&mut c, b"request").unwrap();
    let (got, how) = expect_closed(&mut c, IO_TIMEOUT, "close, then close_after");
    assert_eq!(how, Closed::Eof);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&[&b"reply;"[..], LAST].concat())
    );
    stop(running);
}

on_every_backend!(
    close_after_words_are_last_while_a_timer_writes,
    after_close_after_only_outstanding_work_answers,
    close_after_during_a_close_still_says_its_words,
);
