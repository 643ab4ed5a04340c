//! The limits, library-level (an `Engine` in this process, one IO thread, on every backend),
//! each checked so that the test fails when the guarantee is removed: write watermarks pause
//! reading and resume it (and the pause is counted); the idle timeout closes a peer that never
//! reads; `max_buffered_input` closes with `Protocol`; a partial frame does not spin the loop; a
//! full worker queue holds the frame and resumes. Shutdown and the counters:
//! `tests/limits_shutdown.rs`.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringport::codec::{LengthDelimited, Lines, Raw};
use ringport::pool::WorkerPool;
use ringport::{
    BackendKind, CloseReason, Conn, ConnectionHandle, Frame, Handler, Server, ServerHandle,
};

use support::limits::*;

/// An echo connection whose client writes without reading: once the server's write queue
/// passes the high watermark it stops reading (the client's writes stall long before the
/// 128 MiB it offers) and counts a pause. Then the client reads: the queue drains below the low
/// watermark, reading resumes, and every byte written, before and after the pause, comes back
/// intact; `bytes_in` and `bytes_out` both equal what was written.
fn watermarks_pause_and_resume(kind: BackendKind) {
    const OFFER: u64 = 128 << 20;
    let (tx, _closed) = closes();
    let server = Server::new(any_port(), Raw, move |_| Echo(tx.clone()))
        .write_watermarks(64 << 10, 256 << 10);
    let Some((running, server)) = start(kind, Duration::from_secs(5), server) else {
        return;
    };
    let mut c = connect(server.local_addr());
    let (paused_at, stalled) = write_until_stalled(&mut c, 0, OFFER);
    let at_pause = server.stats().snapshot();
    println!(
        "client wrote {} KiB; server in {} KiB, out {} KiB, pauses {}",
        paused_at >> 10,
        at_pause.bytes_in >> 10,
        at_pause.bytes_out >> 10,
        at_pause.backpressure_pauses
    );
    assert!(
        stalled,
        "the client wrote all {} MiB without reading a byte: the server never stopped reading",
        OFFER >> 20
    );
    assert!(
        at_pause.backpressure_pauses >= 1,
        "the client stalled but no backpressure pause was counted: {at_pause:?}"
    );

    // Now read everything while writing 4 MiB more: only a resumed server takes them.
    let total = paused_at + (4 << 20);
    let mut r = c.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while got < total {
            let n = r
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("reading the echo at {got}: {e}"));
            assert!(n > 0, "EOF after {got} of {total} echoed bytes");
            assert_eq!(&buf[..n], pattern(got, n), "echo differs near offset {got}");
            got += n as u64;
        }
        got
    });
    c.set_write_timeout(Some(WAIT)).unwrap();
    let mut offset = paused_at;
    while offset < total {
        let n = (total - offset).min(64 << 10) as usize;
        c.write_all(pattern(offset, n)).unwrap_or_else(|e| {
            panic!("writing after the pause at {offset}: {e} (reading never resumed?)")
        });
        offset += n as u64;
    }
    assert_eq!(reader.join().expect("reader"), total);
    // A send is counted when its completion is handled, which may follow its delivery.
    let s = wait_stats(&server, "every byte counted in and out", |s| {
        s.bytes_out >= total
    });
    assert_eq!((s.bytes_in, s.bytes_out), (total, total), "{s:?}");
    assert!(
        s.backpressure_pauses >= at_pause.backpressure_pauses,
        "{s:?}"
    );
    drop(c);
    stop(running);
}

/// `idle_timeout(1 s)`: a peer that never reads (so no send completes once the kernel's buffers
/// are full) and sends nothing is closed by the idle timeout; its queued reply can never be
/// delivered, so the close's flush stalls and the connection is reset, counted as
/// `flush-stalled` (the reset, and the loss, are what the count must show). Bounded by the
/// flush-stall reset; no claim on how soon.
fn idle_timeout_closes_a_peer_that_never_reads(kind: BackendKind) {
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
    })
    .idle_timeout(Some(Duration::from_secs(1)));
    let Some((running, server)) = start(kind, Duration::from_secs(1), server) else {
        return;
    };
    let mut c = connect_small_window(server.local_addr());
    let t = Instant::now();
    let reason = next_close(&closed, Duration::from_secs(30), "a peer that never reads");
    println!("closed ({reason}) after {:?}", t.elapsed());
    assert_eq!(reason, CloseReason::FlushStalled);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "closed before the idle timeout"
    );
    let (n, end) = read_to_end(&mut c);
    assert_eq!(
        end,
        End::Reset,
        "after {n} bytes of an undeliverable 32 MiB reply"
    );
    let s = server.stats().snapshot();
    assert_eq!(s.closed_by(&CloseReason::FlushStalled), 1, "{s:?}");
    stop(running);
}

/// `idle_timeout(2 s)` on an echo connection that answers and then goes quiet: it is closed
/// as `IdleTimeout` with a clean EOF, and never before 2 s have passed since the client sent
/// its last byte (a lower bound a correct server cannot beat: the server's last activity is
/// after that send). No claim on how soon after.
fn idle_timeout_waits_for_the_idle_time(kind: BackendKind) {
    let (tx, closed) = closes();
    let idle = Duration::from_secs(2);
    let server = Server::new(any_port(), Raw, move |_| Echo(tx.clone())).idle_timeout(Some(idle));
    let Some((running, server)) = start(kind, Duration::from_secs(1), server) else {
        return;
    };
    let mut c = connect(server.local_addr());
    let sent = Instant::now();
    c.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping", "served before the idle timeout");
    let (n, end) = read_to_end(&mut c);
    let after = sent.elapsed();
    println!("idle close {after:?} after the last byte sent");
    assert_eq!((n, end), (0, End::Eof), "an idle close is graceful");
    assert!(
        after >= idle,
        "closed {after:?} after the last input: before the {idle:?} idle timeout"
    );
    let reason = next_close(&closed, WAIT, "the idle connection");
    assert_eq!(reason, CloseReason::IdleTimeout);
    let s = server.stats().snapshot();
    assert_eq!(s.closed_by(&CloseReason::IdleTimeout), 1, "{s:?}");
    stop(running);
}

/// `max_buffered_input(64 KiB)` with frames allowed up to 16 MiB: a frame announcing 1 MiB
/// whose first 256 KiB arrive cannot be decoded within the limit, and the connection closes
/// with `Protocol` (counted), while another connection is still served.
fn max_buffered_input_closes_with_protocol(kind: BackendKind) {
    let (tx, closed) = closes();
    let server = Server::new(
        any_port(),
        LengthDelimited::new().max_frame(16 << 20),
        move |_| Echo(tx.clone()),
    )
    .max_buffered_input(64 << 10);
    let Some((running, server)) = start(kind, Duration::from_secs(1), server) else {
        return;
    };
    let mut good = connect(server.local_addr());
    let hello = [&5u32.to_be_bytes()[..], b"hello"].concat();
    good.write_all(&hello).unwrap();
    let mut back = vec![0u8; hello.len()];
    good.read_exact(&mut back).unwrap();
    assert_eq!(back, hello);

    let mut c = connect(server.local_addr());
    c.write_all(&(1u32 << 20).to_be_bytes()).unwrap();
    // The server closes part-way; later writes may fail with a reset.
    let _ = c.write_all(&vec![1u8; 256 << 10]);
    let _ = c.shutdown(Shutdown::Write); // our EOF ends the server's linger
    let reason = next_close(&closed, WAIT, "a partial frame over max_buffered_input");
    match &reason {
        CloseReason::Protocol(m) => assert!(m.contains("undecoded input"), "{m}"),
        other => panic!("closed with {other:?}, want Protocol(..undecoded input..)"),
    }
    let (n, _) = read_to_end(&mut c);
    assert_eq!(n, 0, "nothing may be echoed of the partial frame");
    good.write_all(&hello).unwrap();
    good.read_exact(&mut back).unwrap();
    assert_eq!(back, hello, "the other connection after the protocol close");
    let s = server.stats().snapshot();
    assert_eq!(
        s.closed_by(&CloseReason::Protocol(String::new())),
        1,
        "{s:?}"
    );
    drop(good);
    stop(running);
}

/// `max_buffered_input` is a bound, not a trigger: exactly that many undecoded bytes are kept.
/// A frame of 64 KiB with a limit of 64 KiB: its header and all of its payload but the last 4
/// bytes (64 KiB in all) are read and held (the test waits for `bytes_in` to say so); then the
/// last 4 bytes complete it, and it is echoed whole. No connection is closed.
fn max_buffered_input_holds_exactly_the_limit(kind: BackendKind) {
    const LIMIT: usize = 64 << 10;
    let (tx, _closed) = closes();
    let server = Server::new(
        any_port(),
        LengthDelimited::new().max_frame(16 << 20),
        move |_| Echo(tx.clone()),
    )
    .max_buffered_input(LIMIT);
    let Some((running, server)) = start(kind, Duration::from_secs(1), server) else {
        return;
    };
    let frame = [&(LIMIT as u32).to_be_bytes()[..], pattern(0, LIMIT)].concat();
    echo_held_in_two_parts(&server, &frame, LIMIT, "exactly the limit");
    stop(running);
}

/// Sends `frame` as its first `split` bytes, waits until the server has read them (it holds
/// them: the frame is not whole), then the rest; the frame comes back whole and no
/// connection was closed (`held` names what was held, for the failure message).
fn echo_held_in_two_parts(server: &ServerHandle, frame: &[u8], split: usize, held: &str) {
    let mut c = connect(server.local_addr());
    c.write_all(&frame[..split]).unwrap();
    wait_stats(server, &format!("the first {split} bytes read"), |s| {
        s.bytes_in == split as u64
    });
    c.write_all(&frame[split..]).unwrap();
    let mut back = vec![0u8; frame.len()];
    c.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("the frame not echoed (closed holding {held}?): {e}"));
    assert!(back == frame, "the echo differs");
    let s = server.stats().snapshot();
    assert_eq!(s.closed_total(), 0, "{s:?}");
}

/// Without `max_buffered_input`, the default (`DEFAULT_MAX_BUFFERED_INPUT`, 8 MiB) applies: a
/// 1 MiB frame, far more than one 4 KiB read, is held until it is whole and then echoed. Its
/// first half is sent alone and the test waits for `bytes_in` to count it, so the server does
/// hold half a frame for a while. No connection is closed.
fn the_default_input_limit_holds_a_large_frame(kind: BackendKind) {
    const PAYLOAD: usize = 1 << 20;
    let (tx, _closed) = closes();
    let server = Server::new(
        any_port(),
        LengthDelimited::new().max_frame(16 << 20),
        move |_| Echo(tx.clone()),
    );
    let Some((running, server)) = start(kind, Duration::from_secs(1), server) else {
        return;
    };
    let frame: Vec<u8> = (PAYLOAD as u32)
        .to_be_bytes()
        .into_iter()
        .chain((0..PAYLOAD).map(|i| (i % 251) as u8))
        .collect();
    echo_held_in_two_parts(&server, &frame, frame.len() / 2, "half of a 1 MiB frame");
    stop(running);
}

/// The IO loop turns so far, summed over the IO threads (`ringport_io_loop_turns_total`).
fn loop_turns(metrics: &ringport::Metrics) -> u64 {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("ringport_io_loop_turns_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A connection holding half a frame costs no CPU while the rest is awaited: over a 500 ms
/// window the IO loop turns for its 100 ms ticks (a few times), never in a spin (tens of
/// thousands); then the rest of the frame arrives and the frame is echoed whole.
fn a_partial_frame_does_not_spin_the_loop(kind: BackendKind) {
    let (tx, _closed) = closes();
    let Some(mut engine) = support::build(builder(kind, Duration::from_secs(1))) else {
        return;
    };
    let metrics = engine.metrics();
    let server = engine
        .add_server(Server::new(any_port(), LengthDelimited::new(), move |_| {
            Echo(tx.clone())
        }))
        .unwrap();
    let running = engine.start().unwrap();
    let frame = [&10u32.to_be_bytes()[..], b"0123456789"].concat();
    let mut c = connect(server.local_addr());
    c.write_all(&frame[..7]).unwrap();
    wait_stats(&server, "half the frame read", |s| s.bytes_in == 7);
    let before = loop_turns(&metrics);
    let t = Instant::now();
    thread::sleep(Duration::from_millis(500)); // the window measured, not a wait for readiness
    let turns = loop_turns(&metrics) - before;
    println!(
        "{turns} loop turns in {:?} with half a frame held",
        t.elapsed()
    );
    assert!(
        turns < 100,
        "{turns} loop turns in {:?} while half a frame waited: the loop spins",
        t.elapsed()
    );
    c.write_all(&frame[7..]).unwrap();
    let mut back = vec![0u8; frame.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, frame);
    drop(c);
    stop(running);
}

/// A gate the test opens; jobs block on it.
#[derive(Default)]
struct Gate(Mutex<bool>, Condvar);
impl Gate {
    fn wait(&self) {
        let mut open = self.0.lock().unwrap();
        while !*open {
            open = self.1.wait(open).unwrap();
        }
    }
    fn open(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
}

/// Runs each line as a job on a 1-worker pool with a 1-job queue; a job waits for the gate,
/// then replies `done <line>` through the connection's handle. A full queue holds the frame.
struct Jobs {
    pool: WorkerPool,
    gate: Arc<Gate>,
    held: Arc<AtomicUsize>,
    handle: Option<ConnectionHandle>,
}
impl Handler for Jobs {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        self.handle = Some(conn.handle());
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let h = self.handle.clone().unwrap();
        let gate = self.gate.clone();
        let reply = [b"done ", frame.payload(), b"\n"].concat();
        if self
            .pool
            .try_execute(move || {
                gate.wait();
                let _ = h.write(reply);
            })
            .is_err()
        {
            self.held.fetch_add(1, Ordering::SeqCst);
            conn.hold_frame();
        }
    }
}

/// Five pipelined lines, one worker, room for one job in the queue: the third line finds the
/// queue full and is held (counted by the handler) while the first job blocks. Once the gate
/// opens, every line is run and answered, in order: a held frame is neither lost nor repeated.
fn full_worker_queue_holds_the_frame_and_resumes(kind: BackendKind) {
    let pool = WorkerPool::new("limits-test", 1, 1).unwrap();
    let gate = Arc::new(Gate::default());
    let held = Arc::new(AtomicUsize::new(0));
    let (p, g, h) = (pool.clone(), gate.clone(), held.clone());
    let server = Server::new(any_port(), Lines::new(64), move |_| Jobs {
        pool: p.clone(),
        gate: g.clone(),
        held: h.clone(),
        handle: None,
    });
    let Some((running, server)) = start(kind, Duration::from_secs(1), server) else {
        gate.open();
        return;
    };
    let mut c = connect(server.local_addr());
    c.write_all(b"1\n2\n3\n4\n5\n").unwrap();
    let deadline = Instant::now() + WAIT;
    while held.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "no frame was held with the queue full"
        );
        thread::sleep(Duration::from_millis(5));
    }
    gate.open();
    let want = b"done 1\ndone 2\ndone 3\ndone 4\ndone 5\n";
    let mut got = vec![0u8; want.len()];
    c.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("replies after the queue drained: {e}"));
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    println!(
        "a full queue held a frame {} times",
        held.load(Ordering::SeqCst)
    );
    c.shutdown(Shutdown::Write).unwrap();
    let (n, end) = read_to_end(&mut c);
    assert_eq!(
        (n, end),
        (0, End::Eof),
        "nothing more than the five replies"
    );
    stop(running);
    pool.shutdown(Duration::from_secs(1));
}

/// Queues 4 KiB on open; logs the input it is given (and writes nothing more).
struct Burst(Arc<Mutex<Vec<u8>>>);
impl Handler for Burst {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(&[0x42; 4096]);
    }
    fn on_frame(&mut self, _conn: &mut Conn<'_>, frame: Frame<'_>) {
        self.0.lock().unwrap().extend_from_slice(frame.raw());
    }
}

/// Watermarks 1 KiB / 2 KiB: the 4 KiB written on open pause reading (counted once). The queue
/// then drains in one send, straight from above the high watermark to empty, which is at or
/// below the low one: reading resumes, and input sent after that ("a", then "b" once "a" was
/// handled, so that whatever the backend read ahead before the pause is used up) reaches the
/// handler. An engine that resumed only above the low watermark would stay paused for good.
fn reading_resumes_when_one_send_empties_the_queue(kind: BackendKind) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let server =
        Server::new(any_port(), Raw, move |_| Burst(l.clone())).write_watermarks(1024, 2048);
    let Some((running, server)) = start(kind, Duration::from_secs(5), server) else {
        return;
    };
    let mut c = connect(server.local_addr());
    let mut got = vec![0u8; 4096];
    c.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0x42));
    let wait_log = |want: &[u8]| {
        let deadline = Instant::now() + WAIT;
        while log.lock().unwrap().as_slice() != want {
            assert!(
                Instant::now() < deadline,
                "input {:?} not handled within {WAIT:?} (got {:?}): reading never resumed",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&log.lock().unwrap())
            );
            thread::sleep(Duration::from_millis(5));
        }
    };
    c.write_all(b"a").unwrap();
    wait_log(b"a");
    c.write_all(b"b").unwrap();
    wait_log(b"ab");
    let s = server.stats().snapshot();
    assert_eq!(s.backpressure_pauses, 1, "{s:?}");
    drop(c);
    stop(running);
}

on_every_backend!(
    watermarks_pause_and_resume,
    idle_timeout_closes_a_peer_that_never_reads,
    idle_timeout_waits_for_the_idle_time,
    max_buffered_input_closes_with_protocol,
    max_buffered_input_holds_exactly_the_limit,
    the_default_input_limit_holds_a_large_frame,
    a_partial_frame_does_not_spin_the_loop,
    full_worker_queue_holds_the_frame_and_resumes,
    reading_resumes_when_one_send_empties_the_queue,
);
