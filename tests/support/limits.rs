//! Shared by `tests/limits.rs`, `tests/limits_shutdown.rs` and `tests/typed_frames.rs`:
//! one-thread engines with small receive buffers, clients with small windows, and the probes
//! the limit tests read.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringport::{
    BackendKind, CloseReason, Conn, ConnInfo, EngineBuilder, Frame, Handler, RunningEngine, Server,
    ServerHandle, StatsSnapshot,
};

pub const WAIT: Duration = Duration::from_secs(20);

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One IO thread, small receive buffers (so that what the backend reads ahead while a
/// connection is paused stays small), the given drain timeout.
pub fn builder(kind: BackendKind, drain: Duration) -> EngineBuilder {
    ringport::Engine::builder()
        .backend(kind)
        .io_threads(1)
        .recv_buffer_size(4096)
        .recv_buffer_count(8)
        .drain_timeout(drain)
}

/// Starts an engine running `server`; `None` where io_uring is refused (printed).
pub fn start(
    kind: BackendKind,
    drain: Duration,
    server: Server,
) -> Option<(RunningEngine, ServerHandle)> {
    let mut engine = super::build(builder(kind, drain))?;
    let handle = engine.add_server(server).unwrap();
    Some((engine.start().unwrap(), handle))
}

pub fn stop(running: RunningEngine) {
    running.shutdown_handle().shutdown();
    running.join();
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// A client with a 4 KiB receive buffer that will never read: the server's sends stall as
/// soon as the kernel's buffers are full.
pub fn connect_small_window(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Waits (polling the counters, bounded) until `pred` holds; returns that snapshot.
pub fn wait_stats(
    server: &ServerHandle,
    what: &str,
    pred: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = server.stats().snapshot();
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}; stats {s:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Debug, PartialEq)]
pub enum End {
    Eof,
    Reset,
}

/// Reads until the server ends the connection; returns the bytes read and how it ended.
pub fn read_to_end(s: &mut TcpStream) -> (usize, End) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (n, End::Eof),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (n, End::Reset),
            Err(e) => panic!("after {n} bytes: {e}"),
        }
    }
}

/// A stream whose byte `i` is `i % 251`: any loss, duplication or reordering shows. Bytes
/// `offset..offset + len` of it (`len` up to 64 KiB), cut from a table made once.
pub fn pattern(offset: u64, len: usize) -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| (0..(64 << 10) + 251).map(|i| (i % 251) as u8).collect());
    let start = (offset % 251) as usize;
    &table[start..start + len]
}

/// Reports each connection's `on_close` reason.
pub type Closes = Arc<Mutex<mpsc::Sender<CloseReason>>>;

pub fn closes() -> (Closes, mpsc::Receiver<CloseReason>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(Mutex::new(tx)), rx)
}

pub fn next_close(rx: &mpsc::Receiver<CloseReason>, within: Duration, what: &str) -> CloseReason {
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("{what}: no on_close within {within:?}"))
}

// ---------------------------------------------------------------------------------------------

pub struct Echo(pub Closes);
impl Handler for Echo {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
    fn on_close(&mut self, _info: &ConnInfo, reason: &CloseReason) {
        let _ = self.0.lock().unwrap().send(reason.clone());
    }
}

/// Writes `pattern` bytes from `offset` until `limit` bytes in all or until one write makes no
/// progress for 1 s (the server stopped reading). Returns the new offset and whether it stalled.
pub fn write_until_stalled(s: &mut TcpStream, mut offset: u64, limit: u64) -> (u64, bool) {
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    while offset < limit {
        match s.write(pattern(offset, 64 * 1024)) {
            Ok(n) => offset += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return (offset, true)
            }
            Err(e) => panic!("writing at offset {offset}: {e}"),
        }
    }
    (offset, false)
}

/// Queues `bytes` on open and never reads; reports `on_close`.
pub struct Flood {
    pub bytes: usize,
    pub closed: Closes,
}
impl Handler for Flood {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let chunk = vec![0x5Au8; 64 << 10];
        for _ in 0..self.bytes / chunk.len() {
            conn.write(&chunk);
        }
    }
    fn on_frame(&mut self, _conn: &mut Conn<'_>, _frame: Frame<'_>) {}
    fn on_close(&mut self, _info: &ConnInfo, reason: &CloseReason) {
        let _ = self.closed.lock().unwrap().send(reason.clone());
    }
}
