//! The client side both test harnesses share: the library-level tests (`tests/support`, on
//! every OS) use it as `support::net`, and the process-level harness (`tests/common`,
//! unix-only), which includes `tests/support` as `common::support`, re-exports it. Telling a reset from an
//! EOF, reading until the server closes, a client with a small receive buffer, a slow reader,
//! comparing bytes, and the seeded randomness the randomised tests replay.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

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

/// Reads until EOF or reset within `timeout`; returns the bytes read and how it ended, or an
/// error (with the bytes read so far in the message) on timeout.
pub fn read_until_close(s: &mut TcpStream, timeout: Duration) -> io::Result<(Vec<u8>, Closed)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connection still open after {timeout:?} ({} bytes read: {:?})",
                    out.len(),
                    String::from_utf8_lossy(&out[..out.len().min(200)])
                ),
            ));
        }
        s.set_read_timeout(Some(deadline - now))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok((out, Closed::Eof)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
            Err(e) if is_reset(&e) => return Ok((out, Closed::Reset)),
            Err(e) => return Err(e),
        }
    }
}

/// Asserts the server closes the connection (EOF or reset) within `timeout`; returns what was
/// read before.
pub fn expect_closed(s: &mut TcpStream, timeout: Duration, context: &str) -> (Vec<u8>, Closed) {
    read_until_close(s, timeout)
        .unwrap_or_else(|e| panic!("{context}: expected the server to close the connection: {e}"))
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

/// The seed for randomised tests: `RINGPORT_TEST_SEED` to replay a run, else a fresh one per
/// test run (the same for every test of this binary), printed by each test that uses it.
pub fn test_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| match std::env::var("RINGPORT_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RINGPORT_TEST_SEED={s:?} is not a u64")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    });
    println!("seed: {seed} (replay with RINGPORT_TEST_SEED={seed})");
    seed
}

/// xorshift64* — small, seeded, reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 to spread small seeds; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// In `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// `n` pseudo-random bytes from [`test_seed`] (printed; `RINGPORT_TEST_SEED=<n>` replays it).
pub fn seeded_bytes(n: usize) -> Vec<u8> {
    Rng::new(test_seed()).bytes(n)
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

/// `assert_eq!` for byte buffers with a compact message (first differing offset).
pub fn assert_bytes_eq(got: &[u8], want: &[u8], context: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| {
        let end = (first + 16).min(b.len());
        format!("{:02x?}", &b[first.min(b.len())..end])
    };
    panic!(
        "{context}: bytes differ: got {} bytes, want {}; first difference at offset {first}: got {} want {}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}
