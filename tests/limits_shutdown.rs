//! The shutdown guarantees and the counters, library-level (an `Engine` in this process, one IO
//! thread, on every backend): the drain deadline resets a connection whose queue cannot flush;
//! shutdown waits for a busy IO thread, spares a fresh connection for a moment and ends with
//! the last connection; every counter of `StatsSnapshot` moves exactly as documented. The
//! limits themselves: `tests/limits.rs`.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringport::codec::{Lines, Raw};
use ringport::{BackendKind, CloseReason, Conn, Frame, Handler, Server, StatsSnapshot};

use support::limits::*;

/// A connection whose 32 MiB reply can never be flushed (the peer never reads) at shutdown:
/// at the drain deadline it is reset (a clean close would hand the peer a truncated reply
/// followed by an EOF, as if it were whole), its `on_close` says `Shutdown`, and the engine
/// stops.
fn drain_deadline_resets_what_is_left(kind: BackendKind) {
    if support::skip_under_wine(
        kind,
        &[BackendKind::Iocp, BackendKind::Poll],
        support::WINE_NO_RESET,
    ) {
        return;
    }
    let (tx, closed) = closes();
    let server = Server::new(any_port(), Raw, move |_| Flood {
        bytes: 32 << 20,
        closed: tx.clone(),
    });
    let Some((running, server)) = start(kind, Duration::from_secs(1), server) else {
        return;
    };
    let mut c = connect_small_window(server.local_addr());
    wait_stats(&server, "the connection opened", |s| s.active == 1);
    let t = Instant::now();
    running.shutdown_handle().shutdown();
    let reason = next_close(
        &closed,
        WAIT,
        "the unflushable connection at the drain deadline",
    );
    println!(
        "closed ({reason}) {:?} after the shutdown began",
        t.elapsed()
    );
    assert_eq!(reason, CloseReason::DrainTimeout);
    let (n, end) = read_to_end(&mut c);
    assert_eq!(
        end,
        End::Reset,
        "after {n} of 32 MiB the connection ended cleanly: what was left was not reset"
    );
    running.join();
    let s = server.stats().snapshot();
    assert_eq!(s.closed_by(&CloseReason::DrainTimeout), 1, "{s:?}");
    assert_eq!(s.active, 0, "{s:?}");
}

/// Says when its callback starts, then is busy in it for 300 ms (a slow handler).
struct Busy {
    entered: Arc<Mutex<mpsc::Sender<()>>>,
    done: Arc<AtomicBool>,
}
impl Handler for Busy {
    fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {
        let _ = self.entered.lock().unwrap().send(());
        thread::sleep(Duration::from_millis(300)); // the slowness under test, not a wait
        self.done.store(true, Ordering::SeqCst);
    }
}

/// `shutdown_and_wait` waits (up to its timeout) for every IO thread to stop accepting: called
/// while the only IO thread is busy in a 300 ms callback, it returns `true`, and only once that
/// callback has returned.
fn shutdown_and_wait_waits_for_a_busy_io_thread(kind: BackendKind) {
    let (tx, entered) = mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let server = Server::new(any_port(), Raw, move |_| Busy {
        entered: tx.clone(),
        done: d.clone(),
    });
    let Some((running, server)) = start(kind, Duration::from_secs(1), server) else {
        return;
    };
    let mut c = connect(server.local_addr());
    c.write_all(b"x").unwrap();
    entered
        .recv_timeout(WAIT)
        .expect("the callback did not run");
    let t = Instant::now();
    assert!(
        running.shutdown_handle().shutdown_and_wait(WAIT),
        "shutdown_and_wait gave up on an IO thread busy for 300 ms (after {:?})",
        t.elapsed()
    );
    assert!(
        done.load(Ordering::SeqCst),
        "shutdown_and_wait returned while the IO thread was still in its callback"
    );
    drop(c);
    running.join();
}

/// A connection that is open but has sent nothing when the drain begins is spared for a
/// moment (its request may be on the way; the engine's grace is 1 s): the test waits until
/// the IO thread has stopped accepting (`shutdown_and_wait`), then sends a line, which is
/// answered before the close (EOF, `Shutdown`). An engine that closed such a connection at
/// once would answer nothing.
fn a_fresh_connection_is_spared_at_shutdown(kind: BackendKind) {
    let (tx, closed) = closes();
    let server = Server::new(any_port(), Raw, move |_| Echo(tx.clone()));
    let Some((running, server)) = start(kind, Duration::from_secs(10), server) else {
        return;
    };
    let mut c = connect(server.local_addr());
    wait_stats(&server, "the connection opened", |s| s.active == 1);
    assert!(running.shutdown_handle().shutdown_and_wait(WAIT));
    c.write_all(b"late request\n").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("the answer, then a clean EOF");
    assert_eq!(
        got, b"late request\n",
        "the fresh connection was closed unanswered"
    );
    assert_eq!(
        next_close(&closed, WAIT, "the spared connection"),
        CloseReason::Shutdown
    );
    running.join();
}

/// Echoes lines; `close` closes the connection (nothing echoed).
struct Counted;
impl Handler for Counted {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if frame.payload() == b"close" {
            conn.close();
        } else {
            conn.write(frame.raw());
        }
    }
}

fn echo_line(c: &mut TcpStream, line: &[u8]) {
    c.write_all(line).unwrap();
    let mut back = vec![0u8; line.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, line);
}

/// Every counter of `StatsSnapshot`, exactly, after a scripted sequence (each step waits for
/// its own outcome): accepted, active, rejected (`max_connections(2)`), bytes in and out,
/// frames, and a close for each of peer-closed, reset, local, protocol and shutdown. (Idle
/// timeout, handler panic and backpressure pauses are counted in their own tests above and in
/// `handler_panic.rs`; accept errors in `lifecycle.rs`.)
fn every_counter_is_counted(kind: BackendKind) {
    if support::skip_under_wine(kind, &[BackendKind::Poll], support::WINE_NO_RESET) {
        return;
    }
    let server = Server::new(any_port(), Lines::new(64), |_| Counted).max_connections(2);
    let Some((running, server)) = start(kind, Duration::from_secs(2), server) else {
        return;
    };
    let addr = server.local_addr();
    let mut c1 = connect(addr);
    let mut c2 = connect(addr);
    echo_line(&mut c1, b"a\n");
    echo_line(&mut c2, b"b\n");
    wait_stats(&server, "two open", |s| s.active == 2);

    // A third is accepted and closed at once.
    let mut c3 = connect(addr);
    let (n, _) = read_to_end(&mut c3);
    assert_eq!(n, 0);
    wait_stats(&server, "the third rejected", |s| s.rejected == 1);

    // Local: the handler closes; the client sees EOF, then leaves.
    c1.write_all(b"close\n").unwrap();
    assert_eq!(read_to_end(&mut c1), (0, End::Eof));
    drop(c1);
    wait_stats(&server, "local close", |s| {
        s.closed_by(&CloseReason::Local) == 1
    });

    // Protocol: a line over 64 bytes.
    c2.write_all(&[b'x'; 100]).unwrap();
    let (n, _) = read_to_end(&mut c2);
    assert_eq!(n, 0);
    drop(c2);
    wait_stats(&server, "protocol close", |s| {
        s.closed_by(&CloseReason::Protocol(String::new())) == 1
    });

    // Peer closed: the client leaves cleanly.
    let mut c4 = connect(addr);
    echo_line(&mut c4, b"d\n");
    c4.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c4), (0, End::Eof));
    drop(c4);
    wait_stats(&server, "peer close", |s| {
        s.closed_by(&CloseReason::PeerClosed) == 1
    });

    // Reset: the client resets.
    let mut c5 = connect(addr);
    echo_line(&mut c5, b"e\n");
    socket2::SockRef::from(&c5)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c5);
    wait_stats(&server, "reset", |s| s.closed_by(&CloseReason::Reset) == 1);

    // Shutdown: still open when the engine stops.
    let mut c6 = connect(addr);
    echo_line(&mut c6, b"f\n");
    wait_stats(&server, "c6 open", |s| s.active == 1);
    running.shutdown_handle().shutdown();
    assert_eq!(read_to_end(&mut c6), (0, End::Eof));
    drop(c6);
    running.join();

    let s = server.stats().snapshot();
    let mut closed: std::collections::BTreeMap<&'static str, u64> =
        CloseReason::NAMES.iter().map(|n| (*n, 0)).collect();
    for r in [
        CloseReason::PeerClosed,
        CloseReason::Reset,
        CloseReason::Local,
        CloseReason::Protocol(String::new()),
        CloseReason::Shutdown,
    ] {
        closed.insert(r.name(), 1);
    }
    let want = StatsSnapshot {
        accepted: 6,
        active: 0,
        rejected: 1,
        rejected_per_ip: 0,
        rejected_rate: 0,
        accept_errors: 0,
        // a, b, close, 100 x, d, e, f
        bytes_in: 2 + 2 + 6 + 100 + 2 + 2 + 2,
        bytes_out: 2 * 5,
        frames_in: 6,
        // the 100 x line is longer than the codec allows
        decode_errors: 1,
        bad_frames: 0,
        handshakes: 0,
        backpressure_pauses: 0,
        proxy_headers: Default::default(),
        closed,
    };
    assert_eq!(s, want);
}

/// A drain whose connections all close stops the engine then, not at the drain deadline: with
/// a 60 s deadline, an idle connection is closed cleanly (EOF, `Shutdown`) and `join` returns
/// within the 20 s wait.
fn shutdown_ends_when_the_last_connection_is_gone(kind: BackendKind) {
    let (tx, closed) = closes();
    let server = Server::new(any_port(), Raw, move |_| Echo(tx.clone()));
    let Some((running, server)) = start(kind, Duration::from_secs(60), server) else {
        return;
    };
    let mut c = connect(server.local_addr());
    echo_line(&mut c, b"x\n");
    running.shutdown_handle().shutdown();
    let (n, end) = read_to_end(&mut c);
    assert_eq!((n, end), (0, End::Eof));
    assert_eq!(
        next_close(&closed, WAIT, "the idle connection at shutdown"),
        CloseReason::Shutdown
    );
    let (done, joined) = mpsc::channel();
    thread::spawn(move || {
        running.join();
        let _ = done.send(());
    });
    joined.recv_timeout(WAIT).unwrap_or_else(|_| {
        panic!("the engine had no connection left but did not stop within {WAIT:?} (the drain deadline is 60 s)")
    });
    assert_eq!(server.stats().snapshot().active, 0);
}

/// A send the peer takes only in part still counts what the kernel took: 32 MiB queued on
/// open to a client with a 4 KiB window that does not read yet can never finish, yet
/// `bytes_out` moves above 0 (the partial send's progress). Then the client reads it all and
/// `bytes_out` is exactly 32 MiB: nothing counted twice.
fn bytes_out_counts_a_send_in_progress(kind: BackendKind) {
    const BYTES: usize = 32 << 20;
    let (tx, _closed) = closes();
    let server = Server::new(any_port(), Raw, move |_| Flood {
        bytes: BYTES,
        closed: tx.clone(),
    });
    let Some((running, server)) = start(kind, Duration::from_secs(5), server) else {
        return;
    };
    let mut c = connect_small_window(server.local_addr());
    let s = wait_stats(&server, "part of the stalled send counted", |s| {
        s.bytes_out > 0
    });
    assert!(s.bytes_out < BYTES as u64, "{s:?}");
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < BYTES {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {got} bytes");
        assert!(buf[..n].iter().all(|&b| b == 0x5A));
        got += n;
    }
    let s = wait_stats(&server, "the whole send counted", |s| {
        s.bytes_out >= BYTES as u64
    });
    assert_eq!(s.bytes_out, BYTES as u64, "{s:?}");
    drop(c);
    stop(running);
}

on_every_backend!(
    drain_deadline_resets_what_is_left,
    shutdown_and_wait_waits_for_a_busy_io_thread,
    a_fresh_connection_is_spared_at_shutdown,
    every_counter_is_counted,
    shutdown_ends_when_the_last_connection_is_gone,
    bytes_out_counts_a_send_in_progress,
);
