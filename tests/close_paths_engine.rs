//! The close paths of in-process engines (library level, on every backend and every OS): a
//! slow but steady reader during a close is served to the end, a peer that never reads is reset
//! as `flush-stalled`. The process-level matrix (through the example servers) is
//! `close_paths.rs`.
//!
//! Both take 10 to 20 s per backend: one send stays in flight for longer than `FLUSH_STALL`
//! while bytes keep moving, and the never-reading peer is reset only after `FLUSH_STALL`. The
//! slow reader reproduced real losses (progress seen only as bytes the kernel accepted; a uring
//! send blocking in an io-wq worker; an IOCP `WSASend` completing only once whole) and failed
//! until the engine fixes.

mod support;

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use ringport::codec::Raw;
use ringport::{
    BackendKind, CloseReason, Conn, Frame, Handler, RunningEngine, Server as Srv, ServerHandle,
    SocketOptions, StatsSnapshot, FLUSH_STALL,
};
use support::net::{
    assert_bytes_eq, connect_small_rcvbuf, expect_closed, seeded_bytes,
    send_half_close_read_slowly, Closed, SlowRead, IO_TIMEOUT,
};
use support::WINE_NO_RESET;

/// Echoes every byte; the default `on_read_closed` closes gracefully.
struct Echo;
impl Handler for Echo {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
}

/// An echo engine on `kind` (one IO thread) whose connections have a 16 KiB SO_SNDBUF: the
/// kernel holds little, so what the client has not read yet stays in the engine's queue and one
/// send stays in flight for as long as the client takes to read it.
fn small_sndbuf_echo(kind: BackendKind) -> Option<(RunningEngine, ServerHandle)> {
    let mut engine = support::engine(kind, 1)?;
    let server = engine
        .add_server(
            Srv::new("127.0.0.1:0".parse().unwrap(), Raw, |_| Echo)
                .socket_options(SocketOptions::default().send_buffer(Some(16 << 10))),
        )
        .unwrap();
    Some((engine.start().unwrap(), server))
}

/// Waits until `n` connections of `server` have closed; returns its counters.
fn closed_count(server: &ServerHandle, n: u64) -> StatsSnapshot {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let st = server.stats().snapshot();
        if st.closed_total() >= n || Instant::now() >= deadline {
            return st;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn stop(running: RunningEngine) {
    running.shutdown_handle().shutdown();
    running.join();
}

/// Partial send progress is progress: the client (8 KiB receive buffer) sends 384 KiB,
/// half-closes at once, and reads at 24 KiB/s. The server is Closing with one send of hundreds
/// of KiB in flight for ~15 s, more than `FLUSH_STALL`, while bytes keep moving. Everything
/// comes back, then EOF; `peer-closed`, not `flush-stalled`.
fn slow_reader_during_closing_gets_every_byte(kind: BackendKind) {
    let Some((running, server)) = small_sndbuf_echo(kind) else {
        return;
    };
    let data = seeded_bytes(384 << 10);
    let c = connect_small_rcvbuf(server.local_addr(), 8192);
    let slow = SlowRead {
        rate_bytes_per_sec: 24.0 * 1024.0,
        slow_for: Duration::from_secs(3600),
    };
    let (got, how, closing_for) = send_half_close_read_slowly(c, &data, slow);
    println!(
        "{kind:?}: {} of {} bytes; the server was closing for {closing_for:?}",
        got.len(),
        data.len()
    );
    assert_eq!(
        how,
        Closed::Eof,
        "a slow but steady reader was reset after {} of {} bytes",
        got.len(),
        data.len()
    );
    assert_bytes_eq(&got, &data, "slow reader");
    assert!(
        closing_for > FLUSH_STALL + Duration::from_secs(2),
        "the server was closing for only {closing_for:?}: the test did not exercise a flush \
         longer than FLUSH_STALL"
    );
    let stats = closed_count(&server, 1);
    assert_eq!(stats.closed_by(&CloseReason::PeerClosed), 1, "{stats:?}");
    assert_eq!(stats.closed_by(&CloseReason::FlushStalled), 0, "{stats:?}");
    stop(running);
}

/// The converse: a peer that half-closes and never reads is reset once the flush moved no byte
/// for `FLUSH_STALL`; counted `flush-stalled`, not `peer-closed`.
fn never_reading_peer_is_reset_as_flush_stalled(kind: BackendKind) {
    if support::skip_under_wine(kind, &[BackendKind::Iocp, BackendKind::Poll], WINE_NO_RESET) {
        return;
    }
    let Some((running, server)) = small_sndbuf_echo(kind) else {
        return;
    };
    let data = seeded_bytes(256 << 10);
    let mut c = connect_small_rcvbuf(server.local_addr(), 8192);
    c.write_all(&data).expect("256 KiB fit the server's queue");
    c.shutdown(Shutdown::Write).unwrap();
    let t = Instant::now();
    let deadline = t + FLUSH_STALL + Duration::from_secs(15);
    while server
        .stats()
        .snapshot()
        .closed_by(&CloseReason::FlushStalled)
        == 0
    {
        assert!(Instant::now() < deadline, "no flush-stalled reset");
        thread::sleep(Duration::from_millis(20));
    }
    let after = t.elapsed();
    println!("{kind:?}: reset as flush-stalled after {after:?}");
    assert!(
        after >= FLUSH_STALL - Duration::from_millis(500),
        "reset after only {after:?} (FLUSH_STALL is {FLUSH_STALL:?})"
    );
    let (got, how) = expect_closed(&mut c, IO_TIMEOUT, "after the flush-stall reset");
    assert_eq!(how, Closed::Reset, "a stalled flush ends in a reset");
    assert!(
        got.len() < data.len() && data[..got.len()] == got[..],
        "what came back must be a strict prefix of what was sent ({} bytes)",
        got.len()
    );
    let stats = closed_count(&server, 1);
    assert_eq!(stats.closed_by(&CloseReason::FlushStalled), 1, "{stats:?}");
    assert_eq!(
        stats.closed_by(&CloseReason::PeerClosed),
        0,
        "a stalled flush must not be counted as peer-closed: {stats:?}"
    );
    stop(running);
}

/// A connect storm across a shutdown, on two IO threads: once the engine has stopped, every
/// accepted connection has a close reason (`accepted == closed_total`, nothing active). On
/// IOCP one IO thread accepts and hands connections round robin to the others: one handed to
/// a thread whose drain had begun was dropped uncounted. On epoll and io_uring no connection
/// reaches the engine after its listeners closed (the backends drop what they still held), so
/// there this checks that the count stays whole.
fn connections_accepted_during_the_drain_are_counted(kind: BackendKind) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Some(mut engine) = support::engine(kind, 2) else {
        return;
    };
    let server = engine
        .add_server(Srv::new("127.0.0.1:0".parse().unwrap(), Raw, |_| Echo))
        .unwrap();
    let running = engine.start().unwrap();
    let addr = server.local_addr();
    let stop_storm = Arc::new(AtomicBool::new(false));
    let storm: Vec<_> = (0..3)
        .map(|_| {
            let stop_storm = stop_storm.clone();
            thread::spawn(move || {
                let mut n = 0u32;
                while !stop_storm.load(Ordering::Relaxed) && n < 5000 {
                    n += 1;
                    match std::net::TcpStream::connect(addr) {
                        Ok(mut c) => {
                            let _ = c.write_all(b"x");
                        }
                        Err(_) => thread::sleep(Duration::from_millis(1)),
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + IO_TIMEOUT;
    while server.stats().snapshot().accepted < 200 {
        assert!(Instant::now() < deadline, "the storm was not accepted");
        thread::sleep(Duration::from_millis(5));
    }
    running.shutdown_handle().shutdown();
    running.join();
    stop_storm.store(true, Ordering::Relaxed);
    for t in storm {
        t.join().unwrap();
    }
    let s = server.stats().snapshot();
    println!("{kind:?}: {s:?}");
    assert_eq!(s.active, 0, "{s:?}");
    assert_eq!(
        s.accepted,
        s.closed_total(),
        "accepted connections without a close reason: {s:?}"
    );
}

on_every_backend!(
    slow_reader_during_closing_gets_every_byte,
    never_reading_peer_is_reset_as_flush_stalled,
    connections_accepted_during_the_drain_are_counted,
);
