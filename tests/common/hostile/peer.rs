//! The suite's clients: a connection plaintext or TLS ([`Peer`]), a ClientHello's bytes, and
//! `tcp_proxy`'s upstream ([`Upstream`]), whose connections behave as their first line says.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringport::rustls::{self, pki_types};

use super::PLAIN_CLOSE_NOTIFY;
use crate::common::tls::{Pki, RustlsStream};

/// One client connection, plaintext or TLS.
pub enum Peer {
    Raw(TcpStream),
    Tls(Box<RustlsStream>),
}

impl Peer {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Peer::Raw(s) => s,
            Peer::Tls(s) => &s.sock,
        }
    }
    /// Application bytes (encrypted on TLS).
    pub fn send(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Peer::Raw(s) => s.write_all(b),
            Peer::Tls(s) => {
                s.write_all(b)?;
                s.flush()
            }
        }
    }
    /// Bytes straight onto the socket.
    pub fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        let mut s = self.tcp();
        s.write_all(b)
    }
    /// Reads exactly `n` application bytes within `timeout`.
    pub fn read_exact_within(&mut self, n: usize, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{got}/{n} bytes within {timeout:?}"),
                ));
            }
            self.tcp().set_read_timeout(Some(left))?;
            let r = match self {
                Peer::Raw(s) => s.read(&mut out[got..]),
                Peer::Tls(s) => s.read(&mut out[got..]),
            };
            match r {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("EOF after {got}/{n} bytes"),
                    ))
                }
                Ok(k) => got += k,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted || crate::common::is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
    /// A close_notify, then `tail` raw bytes, in one send.
    pub fn close_notify_then(&mut self, tail: &[u8]) -> io::Result<()> {
        let mut bytes = match self {
            Peer::Raw(_) => PLAIN_CLOSE_NOTIFY.to_vec(),
            Peer::Tls(s) => {
                s.conn.send_close_notify();
                let mut v = Vec::new();
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut v)?;
                }
                v
            }
        };
        bytes.extend_from_slice(tail);
        self.raw(&bytes)
    }
}

/// The bytes of a ClientHello for `localhost`.
pub fn client_hello(pki: &Pki) -> Vec<u8> {
    let name = pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = rustls::ClientConnection::new(pki.rustls_client(), name).unwrap();
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v).unwrap();
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The upstream of tcp_proxy
// ---------------------------------------------------------------------------------------------

/// The test's own upstream for `tcp_proxy`: each connection's first line picks its behaviour:
/// `echo` echoes what follows, `sink` never reads again (held open), anything else (or EOF)
/// closes.
pub struct Upstream {
    pub addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = Arc::clone(&held);
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let h = Arc::clone(&h);
                thread::spawn(move || upstream_conn(s, h));
            }
        });
        Upstream { addr, held }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn upstream_conn(mut s: TcpStream, held: Arc<Mutex<Vec<TcpStream>>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 16 {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            _ => return,
        }
    }
    match &line[..] {
        b"echo\n" => {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
        b"sink\n" => held.lock().unwrap_or_else(|e| e.into_inner()).push(s),
        _ => {}
    }
}
