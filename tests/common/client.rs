//! Test clients: connecting with retries, reading with deadlines, telling a reset from an
//! EOF, comparing bytes; and the seeded randomness the randomised tests replay.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Connects to `addr`, retrying (connection refused, ...) for [`CONNECT_TIMEOUT`]; sets
/// `TCP_NODELAY` and [`IO_TIMEOUT`] read/write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect to {addr} failed for {CONNECT_TIMEOUT:?}: {e}"),
        }
    }
}

/// Reads exactly `n` bytes within `timeout`.
pub fn read_exact_timeout(s: &mut TcpStream, n: usize, timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {got}/{n} bytes"),
            ));
        }
        s.set_read_timeout(Some(deadline - now))?;
        match s.read(&mut out[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {got}/{n} bytes"),
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("after {got}/{n} bytes: {e}"),
                ))
            }
        }
    }
    Ok(out)
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

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Reset,
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

/// Reads until EOF (a reset is an error) within `timeout`.
pub fn read_until_eof(s: &mut TcpStream, timeout: Duration) -> io::Result<Vec<u8>> {
    match read_until_close(s, timeout)? {
        (data, Closed::Eof) => Ok(data),
        (data, Closed::Reset) => Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("reset (instead of EOF) after {} bytes", data.len()),
        )),
    }
}

/// Asserts the server closes the connection (EOF or reset) within `timeout`; returns what was
/// read before.
pub fn expect_closed(s: &mut TcpStream, timeout: Duration, context: &str) -> (Vec<u8>, Closed) {
    read_until_close(s, timeout)
        .unwrap_or_else(|e| panic!("{context}: expected the server to close the connection: {e}"))
}

/// Closes the socket with a reset (SO_LINGER 0).
pub fn reset_close(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
}

/// Writes `data` and expects exactly the same bytes back.
pub fn echo_round_trip(s: &mut TcpStream, data: &[u8], context: &str) {
    s.write_all(data)
        .unwrap_or_else(|e| panic!("{context}: write {} bytes: {e}", data.len()));
    let back = read_exact_timeout(s, data.len(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{context}: reading the echo of {} bytes: {e}", data.len()));
    assert_bytes_eq(&back, data, context);
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

/// Writes `chunks` from a second thread (one `write_all` each, `TCP_NODELAY`) while reading
/// `expected_len` bytes back in this one; returns them. Never deadlocks on full buffers.
pub fn exchange(
    s: &mut TcpStream,
    chunks: Vec<Vec<u8>>,
    expected_len: usize,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let mut w = s.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<()> {
        for c in &chunks {
            w.write_all(c)?;
        }
        w.flush()
    });
    let res = read_exact_timeout(s, expected_len, timeout);
    if res.is_err() {
        let _ = s.shutdown(Shutdown::Both);
    }
    let wres = writer.join().expect("writer thread panicked");
    let data = res?;
    wres.map_err(|e| io::Error::new(e.kind(), format!("writer: {e}")))?;
    Ok(data)
}

/// Splits `data` into consecutive chunks of random sizes in `1..=max_chunk`.
pub fn split_random(data: &[u8], rng: &mut Rng, max_chunk: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let n = (1 + rng.below(max_chunk as u64) as usize).min(data.len() - i);
        out.push(data[i..i + n].to_vec());
        i += n;
    }
    out
}

/// Splits `data` cycling through the given chunk sizes (each clamped to at least 1).
pub fn split_by_sizes(data: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < data.len() {
        let n = sizes[k % sizes.len()].max(1).min(data.len() - i);
        out.push(data[i..i + n].to_vec());
        i += n;
        k += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

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

/// A proptest runner seeded from [`test_seed`] (fresh per run, replayable), no regression
/// files, bounded shrinking (each case talks to a live server).
pub fn proptest_runner(cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(test_seed()),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    })
}

/// Runs `body` in a thread and panics if it does not finish within `timeout` (the thread is
/// left behind; the process-level servers are killed by their guards when the test ends).
pub fn within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: did not finish within {timeout:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// Waits until `f` returns true (polling; for things with no signal), or panics at the deadline.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `program args` runs and exits 0 (`tool` is the name printed); when not, prints the
/// skip line, and panics instead under `RINGPORT_TEST_REQUIRE_TOOLS=1`.
pub fn tool_available(tool: &str, program: &str, args: &[&str], why: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("RINGPORT_TEST_REQUIRE_TOOLS").is_some_and(|v| v != "0") {
            panic!("{tool} required (RINGPORT_TEST_REQUIRE_TOOLS) but not installed ({why})");
        }
        println!("skipped: {tool} not installed ({why})");
    }
    ok
}
