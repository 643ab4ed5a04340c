//! The neighbour: a well-behaved client of the attacked server, probed during the attack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{ms, Kind, Peer, Stage, Target};
use crate::common::connect;

/// A well-behaved client of the same server.
pub enum Neighbour {
    /// A kept connection and the reply its request gets.
    Stream(Peer, Vec<u8>),
    /// A fresh scrape each time.
    Metrics,
    /// A chat member reading steadily (its thread records a disconnect); each probe is a fresh
    /// member's greeting.
    Chat(Reader),
    /// tcp_proxy with a refusing upstream: each probe is a fresh client, closed promptly.
    Refused,
    /// Each probe is a fresh connection that must read this greeting.
    Greeting(&'static [u8]),
}

/// A connection read steadily by its own thread until stopped.
pub struct Reader {
    pub bytes: Arc<AtomicU64>,
    /// Set (with how) when the server ended the connection before the reader stopped.
    pub ended: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub fn start(mut s: TcpStream) -> Reader {
        let bytes = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, e, st) = (Arc::clone(&bytes), Arc::clone(&ended), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let _ = s.set_read_timeout(Some(ms(100)));
            let mut buf = vec![0u8; 256 * 1024];
            while !st.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => {
                        *e.lock().unwrap() = Some("EOF".into());
                        return;
                    }
                    Ok(n) => {
                        b.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(err) if crate::common::is_timeout(&err) => {}
                    Err(err) => {
                        *e.lock().unwrap() = Some(err.to_string());
                        return;
                    }
                }
            }
        });
        Reader {
            bytes,
            ended,
            stop,
            thread: Some(thread),
        }
    }
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn expect_reply(p: &mut Peer, want: &[u8], within: Duration) -> Result<(), String> {
    let got = p
        .read_exact_within(want.len(), within)
        .map_err(|e| e.to_string())?;
    if got != want {
        return Err(format!(
            "got {:?}, want {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want)
        ));
    }
    Ok(())
}

impl Neighbour {
    /// A neighbour of `t`, its greeting read.
    pub fn new(t: &Target, within: Duration) -> Result<Neighbour, String> {
        match t.kind {
            Kind::Metrics => Ok(Neighbour::Metrics),
            Kind::TcpProxyRefused => Ok(Neighbour::Refused),
            Kind::TcpProxyTls => Ok(Neighbour::Greeting(b"+OK chat\r\n")),
            Kind::Chat => {
                let mut p = t.open(Stage::FirstFrame).map_err(|e| e.to_string())?;
                expect_reply(&mut p, b"+OK chat\r\n", within)?;
                let Peer::Raw(s) = p else { unreachable!() };
                Ok(Neighbour::Chat(Reader::start(s)))
            }
            _ => {
                let mut p = t.open(Stage::FirstFrame).map_err(|e| e.to_string())?;
                let (req, reply): (Vec<u8>, Vec<u8>) = match t.kind {
                    Kind::Line | Kind::Pooled => {
                        expect_reply(&mut p, b"+OK ready\r\n", within)?;
                        (b"PING\r\n".to_vec(), b"+PONG\r\n".to_vec())
                    }
                    Kind::Resp => (t.frame(), b"+PONG\r\n".to_vec()),
                    Kind::TcpProxy => {
                        p.send(b"echo\n").map_err(|e| e.to_string())?;
                        (b"ping\n".to_vec(), b"ping\n".to_vec())
                    }
                    _ => (t.frame(), t.frame()),
                };
                let _ = req;
                Ok(Neighbour::Stream(p, reply))
            }
        }
    }

    /// One round trip; its time, or why it failed.
    pub fn probe(&mut self, t: &Target, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        match self {
            Neighbour::Stream(p, reply) => {
                let req = match t.kind {
                    Kind::Line | Kind::Pooled => b"PING\r\n".to_vec(),
                    Kind::TcpProxy => b"ping\n".to_vec(),
                    _ => t.frame(),
                };
                p.send(&req).map_err(|e| format!("send: {e}"))?;
                expect_reply(p, reply, within)?;
            }
            Neighbour::Metrics => scrape(t.addr, within)?,
            Neighbour::Chat(reader) => {
                if let Some(how) = reader.ended() {
                    return Err(format!(
                        "the reading member was disconnected ({how}) after {} bytes",
                        reader.bytes.load(Ordering::Relaxed)
                    ));
                }
                let mut p = t.open(Stage::FirstFrame).map_err(|e| e.to_string())?;
                expect_reply(&mut p, b"+OK chat\r\n", within)?;
            }
            Neighbour::Greeting(g) => {
                let mut p = t.open(Stage::FirstFrame).map_err(|e| e.to_string())?;
                expect_reply(&mut p, g, within)?;
            }
            Neighbour::Refused => {
                let mut s = connect(t.addr);
                s.set_read_timeout(Some(within)).unwrap();
                let mut b = [0u8; 64];
                match s.read(&mut b) {
                    Ok(0) => {}
                    Err(e) if crate::common::is_reset(&e) => {}
                    other => return Err(format!("not closed promptly: {other:?}")),
                }
            }
        }
        let took = start.elapsed();
        if took > within {
            return Err(format!("took {took:?}"));
        }
        Ok(took)
    }
}

/// `GET /metrics` on a fresh connection: a 200 within `within`.
pub fn scrape(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, within).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| format!("request: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("response ({} bytes): {e}", raw.len()))?;
    if !raw.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "scrape answered {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        ));
    }
    Ok(())
}
