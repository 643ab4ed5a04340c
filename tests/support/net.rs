//! Client-side helpers of the library-level tests that run on every OS (the process harness in
//! `tests/common` is unix-only and has its own, richer set): a client with a small receive
//! buffer, a slow reader, reading until the server closes, seeded random bytes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default socket read/write timeout of these clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Reset,
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Reads until the server closes the connection (EOF or reset) within `timeout`, or panics;
/// returns what was read before and how it ended.
pub fn expect_closed(s: &mut TcpStream, timeout: Duration, context: &str) -> (Vec<u8>, Closed) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        assert!(
            now < deadline,
            "{context}: still open after {timeout:?} ({} bytes read)",
            out.len()
        );
        s.set_read_timeout(Some(deadline - now)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, Closed::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
            Err(e) if is_reset(&e) => return (out, Closed::Reset),
            Err(e) => panic!("{context}: reading after {} bytes: {e}", out.len()),
        }
    }
}

/// A client whose receive buffer is set to `rcvbuf` bytes BEFORE connecting (so the window it
/// advertises stays small), with `TCP_NODELAY` and [`IO_TIMEOUT`] socket timeouts.
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    sock.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let s: TcpStream = sock.into();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// `n` pseudo-random bytes from a fresh seed (printed; `RINGPORT_TEST_SEED=<n>` replays it).
pub fn seeded_bytes(n: usize) -> Vec<u8> {
    let seed = match std::env::var("RINGPORT_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RINGPORT_TEST_SEED={s:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    println!("seed: {seed} (RINGPORT_TEST_SEED={seed} replays it)");
    // xorshift64*, never seeded with zero.
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// How a slow client reads: at most `rate_bytes_per_sec` for `slow_for`, then at full speed.
#[derive(Clone, Copy)]
pub struct SlowRead {
    pub rate_bytes_per_sec: f64,
    pub slow_for: Duration,
}

/// Sends `data` from another thread and half-closes; meanwhile reads as `slow` says until EOF,
/// a reset or 120 s. Returns what came back, how it ended, and how long after the half-close.
pub fn send_half_close_read_slowly(
    mut c: TcpStream,
    data: &[u8],
    slow: SlowRead,
) -> (Vec<u8>, Closed, Duration) {
    let mut w = c.try_clone().unwrap();
    let sent = data.to_vec();
    let writer = thread::spawn(move || -> io::Result<Instant> {
        w.write_all(&sent)?;
        w.shutdown(Shutdown::Write)?;
        Ok(Instant::now())
    });
    let start = Instant::now();
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = start + Duration::from_secs(120);
    let how = loop {
        let slow_now = start.elapsed() < slow.slow_for;
        if slow_now {
            // The pace of a slow reader: never ahead of its rate.
            let due = start + Duration::from_secs_f64(got.len() as f64 / slow.rate_bytes_per_sec);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        assert!(
            Instant::now() < deadline,
            "still reading after 120 s ({} bytes)",
            got.len()
        );
        let n = if slow_now { 1024 } else { buf.len() };
        match c.read(&mut buf[..n]) {
            Ok(0) => break Closed::Eof,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_reset(&e) => break Closed::Reset,
            Err(e) => panic!("reading after {} bytes: {e}", got.len()),
        }
    };
    let half_closed = writer.join().unwrap().expect("writer");
    (got, how, half_closed.elapsed())
}

/// `assert_eq!` for byte buffers with a compact message (lengths and first differing offset).
pub fn assert_bytes_eq(got: &[u8], want: &[u8], context: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{context}: got {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}
