//! Test clients of the process-level tests: connecting with retries, reading with deadlines,
//! echo round trips, splitting input; bounded waits and the outside-tool check. The basics
//! (reset or EOF, reading until the close, comparing bytes, the seeded randomness) come from
//! [`super::net`], the file the library-level tests share.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
