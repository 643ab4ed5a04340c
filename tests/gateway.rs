//! The gateway API, library-level, on every backend: bounded handle writes and writability
//! callbacks, per-connection timers, half-close, connecting from inside a handler on the same
//! IO thread, encoders, honest errors and configuration checks.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ringport::codec::{LengthDelimited, Raw};
use ringport::{
    BackendKind, CloseReason, Conn, ConnInfo, ConnectOptions, ConnectionHandle, Engine, Error,
    Frame, HandleError, Handler, RunningEngine, Server, ServerHandle,
};

const LIMIT: Duration = Duration::from_secs(20);

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// The next connection on `listener`, waited for at most `LIMIT` (a connect that never comes
/// fails the test instead of hanging it).
fn accept_within(listener: &TcpListener) -> TcpStream {
    let l = listener.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(l.accept().map(|(s, _)| s));
    });
    let u = rx
        .recv_timeout(LIMIT)
        .expect("no connection arrived within the limit")
        .unwrap();
    u.set_read_timeout(Some(LIMIT)).unwrap();
    u
}

/// Starts one server whose handlers come from `factory`, on one IO thread.
fn start<H: Handler, F: Fn(&ConnInfo) -> H + Send + Sync + 'static>(
    kind: BackendKind,
    server: impl FnOnce(Server) -> Server,
    factory: F,
) -> Option<(RunningEngine, SocketAddr)> {
    start_server(kind, server, factory).map(|(running, h)| (running, h.local_addr()))
}

/// `start`, keeping the server's handle (its address and stats).
fn start_server<H: Handler, F: Fn(&ConnInfo) -> H + Send + Sync + 'static>(
    kind: BackendKind,
    server: impl FnOnce(Server) -> Server,
    factory: F,
) -> Option<(RunningEngine, ServerHandle)> {
    let mut engine = support::engine(kind, 1)?;
    let s = server(Server::new("127.0.0.1:0".parse().unwrap(), Raw, factory));
    let h = engine.add_server(s).unwrap();
    Some((engine.start().unwrap(), h))
}

fn stop(running: RunningEngine) {
    running.shutdown_handle().shutdown();
    running.join();
}

/// Publishes each connection's handle; does nothing else.
struct Publish(mpsc::Sender<ConnectionHandle>);
impl Handler for Publish {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = self.0.send(conn.handle());
    }
    fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
    fn on_writable(&mut self, _conn: &mut Conn<'_>, _value: u64) {}
}

fn handle_writes_are_bounded_and_writability_is_announced(kind: BackendKind) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some((running, addr)) = start(
        kind,
        // A small kernel send buffer (a socket option under test too): the queue, not the
        // kernel, holds what the reader does not take.
        |s| {
            s.write_watermarks(64 << 10, 256 << 10)
                .socket_options(ringport::SocketOptions::default().send_buffer(Some(16 << 10)))
        },
        move |_| Publish(tx.lock().unwrap().clone()),
    ) else {
        return;
    };
    // The target never reads (small receive buffer): its queue fills.
    let target_sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    target_sock.set_recv_buffer_size(4096).unwrap();
    target_sock.connect(&addr.into()).unwrap();
    let mut target: TcpStream = target_sock.into();
    target.set_read_timeout(Some(LIMIT)).unwrap();
    let h = rx.recv_timeout(LIMIT).unwrap();
    // A watcher: another connection, told when the target drains.
    let (wtx, wrx) = mpsc::channel::<u64>();
    struct Watcher(mpsc::Sender<ConnectionHandle>, mpsc::Sender<u64>);
    impl Handler for Watcher {
        fn on_open(&mut self, conn: &mut Conn<'_>) {
            let _ = self.0.send(conn.handle());
        }
        fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
        fn on_writable(&mut self, _: &mut Conn<'_>, value: u64) {
            let _ = self.1.send(value);
        }
    }
    let (watcher_tx, watcher_rx) = mpsc::channel();
    running
        .connector()
        .connect(addr, Raw, Watcher(watcher_tx, wtx), Some(LIMIT))
        .unwrap();
    let watcher = watcher_rx.recv_timeout(LIMIT).unwrap();
    let _watcher_server_side = rx.recv_timeout(LIMIT).unwrap();

    let chunk = vec![7u8; 16 << 10];
    let mut accepted = 0usize;
    let deadline = Instant::now() + LIMIT;
    // Only this thread writes, so the queue can only shrink (the IO thread flushing) between
    // reading it and the refusal: `before` is at least what the refusal saw (the handles'
    // count is one word: a write the IO thread is taking is never missed). Right after a
    // refusal the IO thread may still move some of the queue into the kernel's buffers, so
    // the writes go on until a refusal leaves the handle unwritable: once the buffers are
    // full (the target never reads), nothing moves.
    loop {
        let before = h.queued_bytes();
        match h.write(chunk.clone()) {
            Ok(()) => accepted += chunk.len(),
            Err(HandleError::Full) => {
                assert!(before >= 256 << 10, "refused below the high mark: {before}");
                if !h.is_writable() {
                    break;
                }
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "never refused for good: {accepted} bytes accepted"
        );
    }
    assert!(
        accepted < 16 << 20,
        "accepted {accepted} bytes for a reader that never reads"
    );
    h.notify_when_writable(&watcher, 42);
    assert!(
        wrx.recv_timeout(Duration::from_millis(300)).is_err(),
        "writable announced while still full"
    );
    // The target reads everything: the queue drains under the low mark, the watcher is told.
    // The news may come only once the queue is empty (sends that complete in large steps, as
    // on `poll` under Wine), with nothing left to read: the reads wait in short slices so
    // that a read never blocks past the announcement.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    target
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    let value = loop {
        if let Ok(v) = wrx.try_recv() {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "not announced within {LIMIT:?}; {got} bytes read"
        );
        match target.read(&mut buf) {
            Ok(n) => {
                assert!(n > 0, "EOF while draining");
                got += n;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the target: {e}"),
        }
    };
    target.set_read_timeout(Some(LIMIT)).unwrap();
    assert_eq!(value, 42);
    assert!(h.is_writable());
    h.write(&b"more"[..]).unwrap();
    // Everything accepted arrives (nothing was dropped by the refusals): read the rest while
    // the engine drains.
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        target.read_to_end(&mut rest).map(|_| rest.len())
    });
    stop(running);
    let rest = reader.join().unwrap().unwrap();
    assert_eq!(got + rest, accepted + 4);
}

fn a_closed_connection_wakes_its_watchers_and_reports_closed(kind: BackendKind) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some((running, addr)) = start(kind, |s| s, move |_| Publish(tx.lock().unwrap().clone()))
    else {
        return;
    };
    let a = client(addr);
    let ha = rx.recv_timeout(LIMIT).unwrap();
    drop(a);
    support_wait(|| !ha.is_open());
    assert_eq!(ha.write(&b"x"[..]), Err(HandleError::Closed));
    let engine_gone = ha.clone();
    stop(running);
    assert!(matches!(
        engine_gone.write(&b"x"[..]),
        Err(HandleError::Closed | HandleError::EngineStopped)
    ));
}

fn support_wait(mut f: impl FnMut() -> bool) {
    let end = Instant::now() + LIMIT;
    while !f() {
        assert!(Instant::now() < end, "condition not met in time");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `tick N` on each timer expiry, re-arming 3 times; a second timer is cancelled.
struct Ticker {
    n: u64,
}
impl Handler for Ticker {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.set_timer(1, Duration::from_millis(30));
        conn.set_timer(2, Duration::from_millis(10));
        assert!(conn.cancel_timer(2));
        conn.set_timer(3, Duration::from_millis(5_000));
        conn.set_timer(3, Duration::from_millis(1)); // pulled forward: fires first
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, _: Frame<'_>) {
        conn.set_timer(1, Duration::from_millis(30)); // pushed back by traffic
    }
    fn on_timer(&mut self, conn: &mut Conn<'_>, id: u64) {
        if id == 3 {
            conn.write(b"early\n");
            return;
        }
        assert_eq!(id, 1, "a cancelled timer fired");
        self.n += 1;
        conn.write(format!("tick {}\n", self.n).as_bytes());
        if self.n < 3 {
            conn.set_timer(1, Duration::from_millis(30));
        } else {
            conn.close();
        }
    }
}

fn timers_fire_in_order_rearm_and_cancel(kind: BackendKind) {
    let Some((running, addr)) = start(kind, |s| s, |_| Ticker { n: 0 }) else {
        return;
    };
    let mut c = client(addr);
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "early\ntick 1\ntick 2\ntick 3\n");
    stop(running);
}

fn many_connections_each_with_a_timer(kind: BackendKind) {
    let Some((running, addr)) = start(kind, |s| s, |_| Ticker { n: 2 }) else {
        return;
    };
    let mut clients: Vec<TcpStream> = (0..200).map(|_| client(addr)).collect();
    for c in &mut clients {
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "early\ntick 3\n");
    }
    stop(running);
}

/// Half-closes after the first frame; keeps echoing what arrives afterwards into a log.
struct HalfClose(Arc<Mutex<Vec<u8>>>);
impl Handler for HalfClose {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"bye-before-fin");
        conn.shutdown_write();
        conn.write(b"ignored after shutdown_write? no: queued before the FIN");
    }
    fn on_frame(&mut self, _: &mut Conn<'_>, frame: Frame<'_>) {
        self.0.lock().unwrap().extend_from_slice(frame.raw());
    }
}

fn shutdown_write_sends_fin_after_queued_bytes_and_keeps_reading(kind: BackendKind) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let Some((running, addr)) = start(kind, |s| s, move |_| HalfClose(l.clone())) else {
        return;
    };
    let mut c = client(addr);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap(); // EOF: the server's FIN
    assert_eq!(
        got,
        b"bye-before-finignored after shutdown_write? no: queued before the FIN"
    );
    // The server still reads.
    c.write_all(b"after the fin").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    support_wait(|| log.lock().unwrap().as_slice() == b"after the fin");
    stop(running);
}

/// On open, connects to `upstream` from the same IO thread and relays its greeting.
struct Front {
    upstream: SocketAddr,
    tx: mpsc::Sender<(u64, u64)>,
}
struct Back {
    front: ConnectionHandle,
    tx: mpsc::Sender<(u64, u64)>,
    front_id: u64,
}
impl Handler for Front {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let back = Back {
            front: conn.handle(),
            tx: self.tx.clone(),
            front_id: conn.info().id,
        };
        let h = conn.connect(self.upstream, Raw, back, ConnectOptions::default());
        // Usable at once: queued until connected.
        h.write(&b"hello upstream\n"[..]).unwrap();
    }
    fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
}
impl Handler for Back {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = self.tx.send((self.front_id, conn.info().id));
    }
    fn on_frame(&mut self, _: &mut Conn<'_>, frame: Frame<'_>) {
        let _ = self.front.write(frame.raw());
    }
}

fn connect_from_a_handler_lands_on_the_same_io_thread(kind: BackendKind) {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut engine = match support::engine(kind, 2) {
        Some(e) => e,
        None => return,
    };
    let h = engine
        .add_server(Server::new(
            "127.0.0.1:0".parse().unwrap(),
            Raw,
            move |_| Front {
                upstream: up_addr,
                tx: tx.lock().unwrap().clone(),
            },
        ))
        .unwrap();
    let running = engine.start().unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let c = client(h.local_addr());
        let mut u = accept_within(&upstream);
        let mut line = [0u8; 15];
        u.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"hello upstream\n");
        u.write_all(b"from upstream").unwrap();
        clients.push((c, u));
    }
    for (c, _) in &mut clients {
        let mut got = [0u8; 13];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"from upstream");
    }
    for _ in 0..8 {
        let (front, back) = rx.recv_timeout(LIMIT).unwrap();
        assert_eq!(front >> 48, back >> 48, "both sides on one IO thread");
    }
    stop(running);
}

fn connector_works_before_start(kind: BackendKind) {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let Some(engine) = support::engine(kind, 1) else {
        return;
    };
    struct Hello;
    impl Handler for Hello {
        fn on_open(&mut self, conn: &mut Conn<'_>) {
            conn.write(b"hi");
            conn.close();
        }
        fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
    }
    let connector = engine.connector();
    connector
        .connect(upstream.local_addr().unwrap(), Raw, Hello, Some(LIMIT))
        .unwrap();
    let running = engine.start().unwrap();
    let mut u = accept_within(&upstream);
    let mut got = Vec::new();
    u.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hi");
    stop(running);
}

/// Answers each length-prefixed frame with two, through `send_frame`: its payload reversed,
/// then the payload as it came (the second frame joins the first in the same queue).
struct Reverse;
impl Handler for Reverse {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let mut p = frame.payload().to_vec();
        p.reverse();
        conn.send_frame(&p).unwrap();
        conn.send_frame(frame.payload()).unwrap();
    }
}

fn send_frame_encodes_with_the_servers_codec(kind: BackendKind) {
    let Some(mut engine) = support::engine(kind, 1) else {
        return;
    };
    let codec = LengthDelimited::with_layout(2, ringport::codec::Endian::Little, true).unwrap();
    let h = engine
        .add_server(Server::new("127.0.0.1:0".parse().unwrap(), codec, |_| {
            Reverse
        }))
        .unwrap();
    let running = engine.start().unwrap();
    let mut c = client(h.local_addr());
    c.write_all(&[5, 0, b'a', b'b', b'c']).unwrap();
    let mut got = [0u8; 10];
    c.read_exact(&mut got).unwrap();
    assert_eq!(
        &got,
        &[5, 0, b'c', b'b', b'a', 5, 0, b'a', b'b', b'c'],
        "both frames of one callback, in order"
    );
    stop(running);
}

/// On its first frame, reports `is_writable` before and after queueing more than the high
/// watermark in one write.
struct Writability(mpsc::Sender<(bool, bool, usize)>);
impl Handler for Writability {
    fn on_frame(&mut self, conn: &mut Conn<'_>, _: Frame<'_>) {
        let before = conn.is_writable();
        conn.write(&[7u8; 8192]);
        let _ = self
            .0
            .send((before, conn.is_writable(), conn.queued_bytes()));
    }
}

fn conn_is_writable_follows_the_high_watermark(kind: BackendKind) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some((running, addr)) = start(
        kind,
        |s| s.write_watermarks(1024, 4096),
        move |_| Writability(tx.lock().unwrap().clone()),
    ) else {
        return;
    };
    let mut c = client(addr);
    c.write_all(b"x").unwrap();
    let (before, after, queued) = rx.recv_timeout(LIMIT).unwrap();
    assert!(before, "an empty queue is below the high watermark");
    assert_eq!(queued, 8192, "the write is queued whole");
    assert!(
        !after,
        "8192 queued bytes are above the 4096-byte high watermark"
    );
    let mut got = vec![0u8; 8192];
    c.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 7));
    stop(running);
}

/// Answers its first frame with a reply, then closes with last words; reports `on_close`.
struct LastWords(mpsc::Sender<CloseReason>);
impl Handler for LastWords {
    fn on_frame(&mut self, conn: &mut Conn<'_>, _: Frame<'_>) {
        conn.write(b"reply;");
        conn.close_after(b"bye");
    }
    fn on_close(&mut self, _: &ConnInfo, reason: &CloseReason) {
        let _ = self.0.send(reason.clone());
    }
}

/// `close_after`: the reply, then the last words, then EOF. The connection then lingers,
/// reading and discarding, until the peer's EOF or `LINGER`: this client keeps its socket open
/// and sends no EOF, so `on_close` cannot come before `LINGER` has passed since the client's
/// request (a lower bound a correct server cannot beat; no claim on how soon after).
fn close_after_sends_its_last_words_then_eof(kind: BackendKind) {
    let (tx, closed) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some((running, addr)) = start(kind, |s| s, move |_| LastWords(tx.lock().unwrap().clone()))
    else {
        return;
    };
    let mut c = client(addr);
    let sent = Instant::now();
    c.write_all(b"x").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("a clean EOF after the last words");
    assert_eq!(got, b"reply;bye");
    let reason = closed
        .recv_timeout(LIMIT)
        .expect("on_close after the linger");
    let after = sent.elapsed();
    println!("closed ({reason}) {after:?} after the request");
    assert_eq!(reason, CloseReason::Local);
    assert!(
        after >= ringport::LINGER,
        "closed {after:?} after the request, while the peer was open: the linger ({:?}) was cut short",
        ringport::LINGER
    );
    drop(c);
    stop(running);
}

/// Reads after `close_after`'s last words: counts the frames it is given and reports `on_close`.
struct LingerProbe {
    frames: Arc<AtomicUsize>,
    closed: mpsc::Sender<CloseReason>,
}
impl Handler for LingerProbe {
    fn on_frame(&mut self, conn: &mut Conn<'_>, _: Frame<'_>) {
        self.frames.fetch_add(1, Ordering::SeqCst);
        conn.close_after(b"bye");
    }
    fn on_close(&mut self, _: &ConnInfo, reason: &CloseReason) {
        let _ = self.closed.send(reason.clone());
    }
}

/// While a closed connection lingers it still reads, but only to discard: what the peer sends
/// after the last words is received (`bytes_in` counts it) yet never reaches the handler (one
/// frame, `frames_in` 1), and the peer's EOF, read like any input, ends the linger. An engine
/// that stopped reading while lingering would close at `LINGER` with the bytes unread
/// (`bytes_in` 1); one that delivered them would count a second frame.
fn a_lingering_connection_reads_and_discards(kind: BackendKind) {
    let frames = Arc::new(AtomicUsize::new(0));
    let (tx, closed) = mpsc::channel();
    let tx = Mutex::new(tx);
    let f = frames.clone();
    let Some((running, h)) = start_server(
        kind,
        |s| s,
        move |_| LingerProbe {
            frames: f.clone(),
            closed: tx.lock().unwrap().clone(),
        },
    ) else {
        return;
    };
    let mut c = client(h.local_addr());
    c.write_all(b"x").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("a clean EOF after the last words");
    assert_eq!(got, b"bye");
    // The server's FIN came: it lingers now. Send more, then our EOF.
    c.write_all(b"after the last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let reason = closed.recv_timeout(LIMIT).expect("on_close");
    assert_eq!(reason, CloseReason::Local);
    let snap = h.stats().snapshot();
    assert_eq!(
        snap.bytes_in,
        1 + b"after the last words".len() as u64,
        "what the peer sent while the connection lingered was not read: {snap:?}"
    );
    assert_eq!(
        (frames.load(Ordering::SeqCst), snap.frames_in),
        (1, 1),
        "input after close_after reached the handler"
    );
    drop(c);
    stop(running);
}

/// Pauses reading at its first frame, resumes on a timer; logs what it sees in order.
struct Pauser(Arc<Mutex<Vec<String>>>);
impl Handler for Pauser {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let text = String::from_utf8_lossy(frame.raw()).into_owned();
        if text == "a" {
            conn.pause_reading();
            conn.set_timer(1, Duration::from_millis(200));
        }
        let paused = conn.is_reading_paused();
        self.0
            .lock()
            .unwrap()
            .push(format!("frame {text} paused={paused}"));
        conn.write(frame.raw());
    }
    fn on_timer(&mut self, conn: &mut Conn<'_>, _: u64) {
        conn.resume_reading();
        let paused = conn.is_reading_paused();
        self.0
            .lock()
            .unwrap()
            .push(format!("resume paused={paused}"));
    }
}

/// `pause_reading` holds input back until `resume_reading`, and `is_reading_paused` says
/// which it is: "b", sent once "a" was handled (and reading paused), is delivered only after
/// the timer resumed reading, whenever it arrives.
fn pause_reading_holds_input_until_resumed(kind: BackendKind) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let Some((running, addr)) = start(kind, |s| s, move |_| Pauser(l.clone())) else {
        return;
    };
    let mut c = client(addr);
    c.write_all(b"a").unwrap();
    let mut got = [0u8; 1];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"a");
    c.write_all(b"b").unwrap();
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"b");
    assert_eq!(
        *log.lock().unwrap(),
        [
            "frame a paused=true",
            "resume paused=false",
            "frame b paused=false"
        ]
    );
    stop(running);
}

/// Closes (gracefully) when told to by the test: `on_close` says how it ended.
struct Report(mpsc::Sender<CloseReason>);
impl Handler for Report {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
    fn on_close(&mut self, _: &ConnInfo, reason: &CloseReason) {
        let _ = self.0.send(reason.clone());
    }
}

fn close_counts_are_keyed_by_reason_name(kind: BackendKind) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some((running, h)) = start_server(kind, |s| s, move |_| Report(tx.lock().unwrap().clone()))
    else {
        return;
    };
    let mut c = client(h.local_addr());
    c.write_all(b"x").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"x");
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), CloseReason::PeerClosed);
    let snap = h.stats().snapshot();
    assert_eq!(snap.closed.get("peer-closed"), Some(&1));
    assert_eq!(snap.closed_total(), 1);
    assert_eq!(snap.closed.len(), CloseReason::COUNT);
    assert_eq!(running.backend_name(), kind_name(kind));
    stop(running);
}

/// Says goodbye and half-closes on open; on the peer's EOF it neither closes nor writes.
struct BothWays(mpsc::Sender<CloseReason>);
impl Handler for BothWays {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"bye");
        conn.shutdown_write();
    }
    fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
    fn on_read_closed(&mut self, _: &mut Conn<'_>) {}
    fn on_close(&mut self, _: &ConnInfo, reason: &CloseReason) {
        let _ = self.0.send(reason.clone());
    }
}

/// A connection whose two directions are both over (our FIN sent, the peer's EOF delivered)
/// is ended by the engine as `PeerClosed` even though its handler did not close it.
fn a_connection_shut_both_ways_ends(kind: BackendKind) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some((running, h)) =
        start_server(kind, |s| s, move |_| BothWays(tx.lock().unwrap().clone()))
    else {
        return;
    };
    let mut c = client(h.local_addr());
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap(); // EOF: the server's FIN
    assert_eq!(got, b"bye");
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        rx.recv_timeout(LIMIT)
            .expect("the connection was not ended once both directions were over"),
        CloseReason::PeerClosed
    );
    assert_eq!(h.stats().snapshot().closed.get("peer-closed"), Some(&1));
    stop(running);
}

fn kind_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Uring => "uring",
        BackendKind::Iocp => "iocp",
        _ if cfg!(target_os = "linux") => "epoll",
        _ => "poll",
    }
}

on_every_backend!(
    handle_writes_are_bounded_and_writability_is_announced,
    a_closed_connection_wakes_its_watchers_and_reports_closed,
    timers_fire_in_order_rearm_and_cancel,
    many_connections_each_with_a_timer,
    shutdown_write_sends_fin_after_queued_bytes_and_keeps_reading,
    connect_from_a_handler_lands_on_the_same_io_thread,
    connector_works_before_start,
    send_frame_encodes_with_the_servers_codec,
    conn_is_writable_follows_the_high_watermark,
    close_after_sends_its_last_words_then_eof,
    a_lingering_connection_reads_and_discards,
    pause_reading_holds_input_until_resumed,
    close_counts_are_keyed_by_reason_name,
    a_connection_shut_both_ways_ends,
);

#[test]
fn too_many_receive_buffers_is_a_configuration_error() {
    match Engine::builder()
        .backend(BackendKind::Poll)
        .recv_buffer_count(40_000)
        .build()
    {
        Err(Error::Config(msg)) => assert!(msg.contains("32768"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("40000 receive buffers accepted"),
    }
    assert!(Engine::builder()
        .backend(BackendKind::Poll)
        .recv_buffer_count(32_768)
        .build()
        .is_ok());
}

/// The builder's ranges include their ends: 64 bytes and 16 MiB receive buffers, 1 and 1024 IO
/// threads are accepted, one step outside is a configuration error.
#[test]
fn builder_ranges_include_their_ends() {
    let build = |b: ringport::EngineBuilder| b.backend(BackendKind::Poll).build();
    for size in [64, 1 << 24] {
        assert!(
            build(Engine::builder().recv_buffer_size(size)).is_ok(),
            "receive buffer size {size} refused"
        );
    }
    for size in [63, (1 << 24) + 1] {
        assert!(
            matches!(
                build(Engine::builder().recv_buffer_size(size)),
                Err(Error::Config(_))
            ),
            "receive buffer size {size} accepted"
        );
    }
    for n in [1, 1024] {
        assert!(
            build(Engine::builder().io_threads(n)).is_ok(),
            "{n} IO threads refused"
        );
    }
    for n in [0, 1025] {
        assert!(
            matches!(
                build(Engine::builder().io_threads(n)),
                Err(Error::Config(_))
            ),
            "{n} IO threads accepted"
        );
    }
}
