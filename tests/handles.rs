//! `ConnectionHandle`: writes from other threads arrive in order; a handle whose connection
//! closed fails cleanly and never reaches the newer connection that reuses its slot; handles
//! keep neither connection nor engine alive; once a handle has asked for a close, every handle
//! of the connection says closed. Library-level, on every backend.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use ringport::codec::Raw;
use ringport::{
    BackendKind, Conn, ConnectionHandle, Frame, HandleError, Handler, Server, SocketOptions,
};

/// Hands its connection's handle to the test on open; echoes nothing; writes `{value};` for
/// each notification.
struct Publish(mpsc::Sender<ConnectionHandle>);
impl Handler for Publish {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = self.0.send(conn.handle());
    }
    fn on_frame(&mut self, _conn: &mut Conn<'_>, _frame: Frame<'_>) {}
    fn on_notify(&mut self, conn: &mut Conn<'_>, value: u64) {
        conn.write(format!("{value};").as_bytes());
    }
}

fn start(
    kind: BackendKind,
) -> Option<(
    ringport::RunningEngine,
    std::net::SocketAddr,
    mpsc::Receiver<ConnectionHandle>,
)> {
    // One IO thread: a freed slot is the next one reused.
    let mut engine = support::engine(kind, 1)?;
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = engine
        .add_server(Server::new(
            "127.0.0.1:0".parse().unwrap(),
            Raw,
            move |_| Publish(tx.lock().unwrap().clone()),
        ))
        .unwrap();
    Some((engine.start().unwrap(), server.local_addr(), rx))
}

fn client(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn stale_handle_never_reaches_the_slots_next_connection(kind: BackendKind) {
    let Some((running, addr, handles)) = start(kind) else {
        return;
    };
    let mut a = client(addr);
    let ha = handles.recv_timeout(Duration::from_secs(10)).unwrap();
    ha.write(&b"to-a"[..]).unwrap();
    let mut got = [0u8; 4];
    a.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-a");

    drop(a); // the peer goes away: the engine closes the connection and frees its slot
    let deadline = Instant::now() + Duration::from_secs(10);
    while ha.is_open() {
        assert!(
            Instant::now() < deadline,
            "handle still open after the peer left"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ha.write(&b"stale"[..]), Err(HandleError::Closed));

    let mut b = client(addr);
    let hb = handles.recv_timeout(Duration::from_secs(10)).unwrap();
    // Whatever the old handle does now, the new connection sees only its own bytes.
    assert_eq!(ha.write(&b"stale"[..]), Err(HandleError::Closed));
    assert_eq!(ha.close(), Err(HandleError::Closed));
    hb.write(&b"to-b"[..]).unwrap();
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-b");
    assert!(hb.is_open());

    running.shutdown_handle().shutdown();
    running.join(); // handles still held here: they keep nothing alive
    assert_eq!(hb.write(&b"after"[..]), Err(HandleError::Closed));
}

/// `notify` runs `on_notify` on the connection's IO thread, after the writes the same thread
/// made before it.
fn notify_reaches_on_notify_after_earlier_writes(kind: BackendKind) {
    let Some((running, addr, handles)) = start(kind) else {
        return;
    };
    let mut c = client(addr);
    let h = handles.recv_timeout(Duration::from_secs(10)).unwrap();
    h.write(&b"a;"[..]).unwrap();
    h.notify(7).unwrap();
    h.write(&b"b;"[..]).unwrap();
    h.notify(42).unwrap();
    let mut got = [0u8; 9];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"a;7;b;42;");
    running.shutdown_handle().shutdown();
    running.join();
}

fn many_writes_from_another_thread_arrive_in_order(kind: BackendKind) {
    let Some((running, addr, handles)) = start(kind) else {
        return;
    };
    let mut c = client(addr);
    let h = handles.recv_timeout(Duration::from_secs(10)).unwrap();
    const N: u32 = 200_000;
    let writer = std::thread::spawn(move || {
        for i in 0..N {
            h.write(i.to_be_bytes().to_vec()).unwrap();
        }
        h.close().unwrap();
    });
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    writer.join().unwrap();
    assert_eq!(all.len(), N as usize * 4, "bytes lost");
    for (i, chunk) in all.chunks(4).enumerate() {
        assert_eq!(
            u32::from_be_bytes(chunk.try_into().unwrap()),
            i as u32,
            "out of order at {i}"
        );
    }
    running.shutdown_handle().shutdown();
    running.join();
}

/// Hands its handle to the test on open; reports `(value, queued bytes)` from `on_writable`.
struct Watch {
    handles: mpsc::Sender<ConnectionHandle>,
    writable: mpsc::Sender<(u64, usize)>,
}
impl Handler for Watch {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = self.handles.send(conn.handle());
    }
    fn on_frame(&mut self, _conn: &mut Conn<'_>, _frame: Frame<'_>) {}
    fn on_writable(&mut self, conn: &mut Conn<'_>, value: u64) {
        let _ = self.writable.send((value, conn.queued_bytes()));
    }
}

/// The default low watermark is 256 KiB (`DEFAULT_WRITE_LOW`): with 200 KiB written to a
/// client that has a 4 KiB window and reads nothing, through a 4 KiB send buffer, most of it
/// stays queued, which is under the mark, so a writability watcher fires at once, with bytes
/// still queued. (Were the low watermark 0, it would wait for a reader that never comes.)
/// Then the client reads it all.
fn a_watcher_fires_at_once_under_the_default_low_watermark(kind: BackendKind) {
    const BYTES: usize = 200 << 10;
    let Some(mut engine) = support::engine(kind, 1) else {
        return;
    };
    let (htx, handles) = mpsc::channel();
    let (wtx, writable) = mpsc::channel();
    let (htx, wtx) = (Mutex::new(htx), Mutex::new(wtx));
    let server = engine
        .add_server(
            Server::new("127.0.0.1:0".parse().unwrap(), Raw, move |_| Watch {
                handles: htx.lock().unwrap().clone(),
                writable: wtx.lock().unwrap().clone(),
            })
            .socket_options(SocketOptions::default().send_buffer(Some(4096))),
        )
        .unwrap();
    let running = engine.start().unwrap();
    let mut c = support::net::connect_small_rcvbuf(server.local_addr(), 4096);
    let h = handles.recv_timeout(Duration::from_secs(10)).unwrap();
    h.write(vec![0x33; BYTES]).unwrap();
    h.notify_when_writable(&h, 5);
    let (value, queued) = writable
        .recv_timeout(Duration::from_secs(10))
        .expect("no on_writable while the queue was under the default low watermark");
    println!("on_writable with {queued} bytes queued");
    assert_eq!(value, 5);
    assert!(
        queued <= ringport::DEFAULT_WRITE_LOW,
        "{queued} bytes queued"
    );
    let mut got = vec![0u8; BYTES];
    c.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0x33));
    running.shutdown_handle().shutdown();
    running.join();
}

/// How a handler asks to hear when its own queue is back under the low watermark.
#[derive(Clone, Copy)]
enum SelfWatch {
    /// `notify_when_writable` on its own handle, from the callback that filled the queue.
    OwnHandle,
    /// `Conn::notify_when_drained`.
    Drained,
}

/// Fills its own queue on the first frame (`SELF_BYTES`, far above the high watermark) and
/// asks, in the same callback, to hear when the queue is back under the low watermark;
/// reports `(value, queued bytes)` from `on_writable`.
struct Filler {
    how: SelfWatch,
    writable: mpsc::Sender<(u64, usize)>,
}
const SELF_BYTES: usize = 1 << 20;
const SELF_LOW: usize = 64 << 10;
impl Handler for Filler {
    fn on_frame(&mut self, conn: &mut Conn<'_>, _frame: Frame<'_>) {
        conn.write(&vec![0x5a; SELF_BYTES]);
        match self.how {
            SelfWatch::OwnHandle => {
                let me = conn.handle();
                me.notify_when_writable(&me, 9);
            }
            SelfWatch::Drained => conn.notify_when_drained(9),
        }
    }
    fn on_writable(&mut self, conn: &mut Conn<'_>, value: u64) {
        let _ = self.writable.send((value, conn.queued_bytes()));
    }
}

/// A connection that watches its own queue hears of it only once the queue is at or under
/// the low watermark, counting the bytes the watching callback itself wrote: 1 MiB queued
/// (watermarks 64 KiB / 256 KiB, 4 KiB socket buffers) to a client that reads only after
/// asking. Before the fix the watch fired at once with the whole 1 MiB still queued (the
/// handles' backlog counts a callback's writes only when the loop turn ends), so a handler
/// could not wait for its own reader (`resp_server` asked from a 1 ms timer instead).
fn a_watch_on_its_own_queue_waits_for_the_low_watermark(kind: BackendKind, how: SelfWatch) {
    let Some(mut engine) = support::engine(kind, 1) else {
        return;
    };
    let (wtx, writable) = mpsc::channel();
    let wtx = Mutex::new(wtx);
    let server = engine
        .add_server(
            Server::new("127.0.0.1:0".parse().unwrap(), Raw, move |_| Filler {
                how,
                writable: wtx.lock().unwrap().clone(),
            })
            .write_watermarks(SELF_LOW, 256 << 10)
            .socket_options(SocketOptions::default().send_buffer(Some(4096))),
        )
        .unwrap();
    let running = engine.start().unwrap();
    let mut c = support::net::connect_small_rcvbuf(server.local_addr(), 4096);
    use std::io::Write;
    c.write_all(b"go").unwrap();
    let mut got = vec![0u8; SELF_BYTES];
    c.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0x5a));
    let (value, queued) = writable
        .recv_timeout(Duration::from_secs(10))
        .expect("no on_writable after the client read everything");
    println!("on_writable with {queued} bytes queued (low watermark {SELF_LOW})");
    assert_eq!(value, 9);
    assert!(
        queued <= SELF_LOW,
        "on_writable with {queued} bytes queued, above the low watermark ({SELF_LOW})"
    );
    running.shutdown_handle().shutdown();
    running.join();
}

fn a_watch_on_its_own_handle_waits_for_the_low_watermark(kind: BackendKind) {
    a_watch_on_its_own_queue_waits_for_the_low_watermark(kind, SelfWatch::OwnHandle);
}

fn notify_when_drained_waits_for_the_low_watermark(kind: BackendKind) {
    a_watch_on_its_own_queue_waits_for_the_low_watermark(kind, SelfWatch::Drained);
}

/// Once the engine has stopped, what is kept of it says so: the connector refuses with
/// `EngineStopped` (not an `Ok` for a connect that no thread will make), and
/// `shutdown_and_wait` returns `true` at once (every IO thread closed its listeners; none is
/// left to answer, and none is waited for).
fn a_stopped_engine_refuses_connects_and_shutdown_waits_for_nothing(kind: BackendKind) {
    let Some((running, addr, _handles)) = start(kind) else {
        return;
    };
    let connector = running.connector();
    let shutdown = running.shutdown_handle();
    shutdown.shutdown();
    running.join();
    let (tx, _rx) = mpsc::channel();
    assert_eq!(
        connector.connect(addr, Raw, Publish(tx), Some(Duration::from_secs(1))),
        Err(HandleError::EngineStopped)
    );
    assert!(
        shutdown.shutdown_and_wait(Duration::from_secs(10)),
        "shutdown_and_wait on a stopped engine waited for threads that are gone"
    );
}

/// Once `abort` or `close` has returned, the handle and its clones say closed and refuse
/// writes with `Closed` at once, without waiting for the IO thread. A fan-out loop that aborts
/// a full subscriber sees it closed on its next pass (before: `is_open` stayed true and
/// `write` kept answering `Full`, so the loop aborted it again and again).
fn a_handle_told_to_close_says_closed_at_once(kind: BackendKind) {
    let Some((running, addr, handles)) = start(kind) else {
        return;
    };
    // A subscriber that never reads: written to until full, then aborted.
    let mut full = client(addr);
    let h = handles.recv_timeout(Duration::from_secs(10)).unwrap();
    let twin = h.clone();
    let mut writes = 0;
    while h.write(vec![7u8; 64 << 10]) != Err(HandleError::Full) {
        writes += 1;
        assert!(writes < 10_000, "never full");
    }
    h.abort().unwrap();
    for (name, x) in [("the handle", &h), ("its clone", &twin)] {
        assert!(!x.is_open(), "{name} still open after abort");
        assert!(!x.is_writable(), "{name} still writable after abort");
        assert_eq!(x.write(&b"x"[..]), Err(HandleError::Closed), "{name}");
    }
    assert_eq!(h.abort(), Err(HandleError::Closed), "aborted twice");
    let mut sink = Vec::new();
    let _ = full.read_to_end(&mut sink); // reset (or EOF): either way it ends

    // A graceful close: what was written before it still arrives, then EOF.
    let mut c = client(addr);
    let h = handles.recv_timeout(Duration::from_secs(10)).unwrap();
    let twin = h.clone();
    h.write(&b"before;"[..]).unwrap();
    h.close().unwrap();
    for (name, x) in [("the handle", &h), ("its clone", &twin)] {
        assert!(!x.is_open(), "{name} still open after close");
        assert_eq!(x.write(&b"after;"[..]), Err(HandleError::Closed), "{name}");
    }
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "before;");
    running.shutdown_handle().shutdown();
    running.join();
}

on_every_backend!(
    a_handle_told_to_close_says_closed_at_once,
    stale_handle_never_reaches_the_slots_next_connection,
    notify_reaches_on_notify_after_earlier_writes,
    many_writes_from_another_thread_arrive_in_order,
    a_watcher_fires_at_once_under_the_default_low_watermark,
    a_watch_on_its_own_handle_waits_for_the_low_watermark,
    notify_when_drained_waits_for_the_low_watermark,
    a_stopped_engine_refuses_connects_and_shutdown_waits_for_nothing,
);
