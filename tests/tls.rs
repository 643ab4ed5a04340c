//! TLS through the layer stack, library-level, on every backend: a rustls client against a
//! ringport TLS server (echo, large transfers, SNI, ALPN, client certificates accepted and
//! refused, close_notify), a ringport TLS client against a ringport TLS server, and bad input
//! (plaintext, garbage, a truncated handshake, a client that never finishes) each costing only
//! its own connection, counted under its own reason. Certificates are made at test time.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ringport::codec::Raw;
use ringport::rustls::{self, pki_types};
use ringport::{
    BackendKind, CloseReason, Conn, ConnInfo, ConnectOptions, ConnectionHandle, Frame, Handler,
    RunningEngine, Server, ServerHandle,
};
use support::certs::Ca;

const LIMIT: Duration = Duration::from_secs(20);

struct Pki {
    ca: Ca,
    server_chain: Vec<pki_types::CertificateDer<'static>>,
    server_key: pki_types::PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca = Ca::new("ringport test CA");
    let (server_chain, server_key) = ca.issue_der(&["localhost", "ringport.test"], true);
    Pki {
        ca,
        server_chain,
        server_key,
    }
}

impl Pki {
    fn roots(&self) -> Arc<rustls::RootCertStore> {
        self.ca.roots()
    }

    fn server_config(&self, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder();
        let builder = if client_auth {
            let verifier = rustls::server::WebPkiClientVerifier::builder(self.roots())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"ringport-test".to_vec()];
        Arc::new(config)
    }

    fn client_config(&self, identity: bool, trusted: bool) -> Arc<rustls::ClientConfig> {
        let b = rustls::ClientConfig::builder().with_root_certificates(self.roots());
        let mut config = if identity {
            // Signed by the CA, or self-signed when not `trusted`.
            let (chain, key) = self.ca.issue_der(&["client.test"], trusted);
            b.with_client_auth_cert(chain, key).unwrap()
        } else {
            b.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"ringport-test".to_vec()];
        Arc::new(config)
    }
}

/// Echoes; reports the connection's TLS facts on open and its close reason.
struct Echo {
    opened: mpsc::Sender<ConnInfo>,
    closed: mpsc::Sender<CloseReason>,
}
impl Handler for Echo {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = self.opened.send(conn.info().clone());
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
    fn on_close(&mut self, _: &ConnInfo, reason: &CloseReason) {
        let _ = self.closed.send(reason.clone());
    }
}

struct Tls {
    running: RunningEngine,
    server: ServerHandle,
    opened: mpsc::Receiver<ConnInfo>,
    closed: mpsc::Receiver<CloseReason>,
}

fn start(kind: BackendKind, config: Arc<rustls::ServerConfig>, handshake: Duration) -> Option<Tls> {
    let mut engine = support::engine(kind, 2)?;
    let (otx, opened) = mpsc::channel();
    let (ctx, closed) = mpsc::channel();
    let (otx, ctx) = (Mutex::new(otx), Mutex::new(ctx));
    let server = engine
        .add_server(
            Server::new("127.0.0.1:0".parse().unwrap(), Raw, move |_| Echo {
                opened: otx.lock().unwrap().clone(),
                closed: ctx.lock().unwrap().clone(),
            })
            .tls(config)
            .handshake_timeout(handshake),
        )
        .unwrap();
    Some(Tls {
        running: engine.start().unwrap(),
        server,
        opened,
        closed,
    })
}

impl Tls {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
    fn stop(self) {
        self.running.shutdown_handle().shutdown();
        self.running.join();
    }
}

fn tls_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    let conn = rustls::ClientConnection::new(
        config,
        pki_types::ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn echo_sni_alpn_and_close_notify(kind: BackendKind) {
    let p = pki();
    let Some(t) = start(kind, p.server_config(false), LIMIT) else {
        return;
    };
    let mut c = tls_client(t.addr(), p.client_config(false, false), "ringport.test");
    let data: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    // Write and read in turns (one thread: a rustls stream is not split).
    let mut back = Vec::new();
    for chunk in data.chunks(256 << 10) {
        c.write_all(chunk).unwrap();
        let mut got = vec![0u8; chunk.len()];
        c.read_exact(&mut got).unwrap();
        back.extend_from_slice(&got);
    }
    assert!(back == data, "4 MiB over TLS came back changed");
    let info = t.opened.recv_timeout(LIMIT).unwrap();
    let tls = info.tls.expect("TLS facts in ConnInfo");
    assert_eq!(tls.sni.as_deref(), Some("ringport.test"));
    assert_eq!(tls.alpn.as_deref(), Some(&b"ringport-test"[..]));
    assert!(tls.version.contains("TLSv1_3"), "{}", tls.version);
    assert!(!tls.cipher_suite.is_empty());
    assert!(tls.peer_certificates.is_empty(), "no client auth asked");
    // A graceful close from the client: close_notify is EOF for the server, which closes
    // with its own close_notify.
    c.conn.send_close_notify();
    c.flush().unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the server's close_notify, not a truncation");
    assert!(rest.is_empty());
    assert_eq!(
        t.closed.recv_timeout(LIMIT).unwrap(),
        CloseReason::PeerClosed
    );
    assert_eq!(t.server.stats().snapshot().handshakes, 1);
    t.stop();
}

fn client_certificates_accepted_and_refused(kind: BackendKind) {
    let p = pki();
    let Some(t) = start(kind, p.server_config(true), LIMIT) else {
        return;
    };
    let mut good = tls_client(t.addr(), p.client_config(true, true), "localhost");
    good.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    good.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    let info = t.opened.recv_timeout(LIMIT).unwrap();
    assert_eq!(info.tls.unwrap().peer_certificates.len(), 1);

    let mut bad = tls_client(t.addr(), p.client_config(true, false), "localhost");
    let r = bad.write_all(b"ping").and_then(|_| bad.read(&mut got));
    assert!(
        r.is_err() || r.is_ok_and(|n| n == 0),
        "an untrusted client was served"
    );
    let reason = t.closed.recv_timeout(LIMIT).unwrap();
    assert!(matches!(reason, CloseReason::TlsError(_)), "{reason:?}");
    let mut none = tls_client(t.addr(), p.client_config(false, false), "localhost");
    let r = none.write_all(b"ping").and_then(|_| none.read(&mut got));
    assert!(
        r.is_err() || r.is_ok_and(|n| n == 0),
        "a client without a certificate was served"
    );
    assert!(matches!(
        t.closed.recv_timeout(LIMIT).unwrap(),
        CloseReason::TlsError(_)
    ));
    // The good client is unaffected.
    good.write_all(b"pong").unwrap();
    good.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    t.stop();
}

fn bad_input_costs_only_its_connection(kind: BackendKind) {
    let p = pki();
    // The handshake timeout applies to the good client too: long enough for a debug build's
    // handshake on a loaded machine (and under Wine).
    let Some(t) = start(kind, p.server_config(false), Duration::from_secs(2)) else {
        return;
    };
    let mut good = tls_client(t.addr(), p.client_config(false, false), "localhost");
    good.write_all(b"before").unwrap();
    let mut got = [0u8; 6];
    good.read_exact(&mut got).unwrap();

    let expect_closed = |bytes: &[u8], fin: bool| {
        let mut s = TcpStream::connect(t.addr()).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(bytes).unwrap();
        if fin {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink); // EOF or reset: the server closed it
    };
    // Plaintext HTTP to a TLS port, garbage, a truncated ClientHello with EOF.
    expect_closed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    expect_closed(&[0xff; 64], false);
    expect_closed(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00], true);
    // A client that connects and never finishes: the handshake timeout resets it.
    expect_closed(&[0x16, 0x03, 0x01], false);
    let mut reasons: Vec<String> = (0..4)
        .map(|_| t.closed.recv_timeout(LIMIT).unwrap().name().to_string())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "tls-error",
            "tls-error",
            "tls-error",
            "tls-handshake-timeout"
        ]
    );
    let snap = t.server.stats().snapshot();
    assert_eq!(snap.closed.get("tls-error"), Some(&3));
    assert_eq!(snap.closed.get("tls-handshake-timeout"), Some(&1));
    // The good connection never noticed.
    good.write_all(b"after!").unwrap();
    good.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after!");
    t.stop();
}

/// A ringport TLS client (through `Conn::connect` with `ConnectOptions::tls`) against a
/// ringport TLS server: "hello" goes out and comes back.
struct Front {
    upstream: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    tx: mpsc::Sender<Vec<u8>>,
}
struct Back(mpsc::Sender<Vec<u8>>, Vec<u8>);
impl Handler for Front {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let opts = ConnectOptions::default().tls(
            self.config.clone(),
            pki_types::ServerName::try_from("localhost").unwrap(),
        );
        let h = conn.connect(self.upstream, Raw, Back(self.tx.clone(), Vec::new()), opts);
        h.write(&b"hello over tls"[..]).unwrap();
    }
    fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
}
impl Handler for Back {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        self.1.extend_from_slice(frame.raw());
        if self.1.len() >= 14 {
            let _ = self.0.send(std::mem::take(&mut self.1));
            conn.close();
        }
    }
}

fn ringport_tls_client_to_ringport_tls_server(kind: BackendKind) {
    let p = pki();
    let Some(t) = start(kind, p.server_config(false), LIMIT) else {
        return;
    };
    let Some(mut engine) = support::engine(kind, 1) else {
        return;
    };
    let (tx, rx) = mpsc::channel();
    let (upstream, config) = (t.addr(), p.client_config(false, false));
    let tx = Mutex::new(tx);
    let front = engine
        .add_server(Server::new(
            "127.0.0.1:0".parse().unwrap(),
            Raw,
            move |_| Front {
                upstream,
                config: config.clone(),
                tx: tx.lock().unwrap().clone(),
            },
        ))
        .unwrap();
    let running = engine.start().unwrap();
    let _trigger = TcpStream::connect(front.local_addr()).unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), b"hello over tls");
    let info = t.opened.recv_timeout(LIMIT).unwrap();
    assert!(info.tls.is_some());
    running.shutdown_handle().shutdown();
    running.join();
    t.stop();
}

/// On "go": queues a large reply, half-closes (`shutdown_write`), and passes a handle out, so
/// that a write through it comes while the reply is still being sent.
struct ReplyThenHalfClose {
    big: Arc<Vec<u8>>,
    handles: mpsc::Sender<ConnectionHandle>,
}
impl Handler for ReplyThenHalfClose {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if frame.raw().ends_with(b"go") {
            conn.write(&self.big);
            conn.shutdown_write();
            let _ = self.handles.send(conn.handle());
        }
    }
}

/// A handle write that comes after `shutdown_write` was asked, while the reply before it is
/// still in flight: on plaintext it goes out before the FIN; over TLS it must too (or be
/// refused with `Closed`), never be taken and dropped. Before the fix the close_notify was
/// queued as soon as the reply was encrypted, and the write, accepted (`Ok`), vanished.
/// (Then, as on plaintext after the FIN, the handles answer `Closed`.)
fn late_handle_write_after_half_close(kind: BackendKind) {
    let p = pki();
    for tls in [false, true] {
        let Some(mut engine) = support::engine(kind, 1) else {
            return;
        };
        let big = Arc::new(vec![b'r'; 8 << 20]); // more than the socket buffers hold
        let (htx, handles) = mpsc::channel();
        let (big2, htx) = (big.clone(), Mutex::new(htx));
        let mut server = Server::new("127.0.0.1:0".parse().unwrap(), Raw, move |_| {
            ReplyThenHalfClose {
                big: big2.clone(),
                handles: htx.lock().unwrap().clone(),
            }
        })
        .write_watermarks(32 << 20, 64 << 20); // the late write is not refused as `Full`
        if tls {
            server = server.tls(p.server_config(false));
        }
        let server = engine.add_server(server).unwrap();
        let running = engine.start().unwrap();
        let sock = support::net::connect_small_rcvbuf(server.local_addr(), 64 << 10);
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut client: Box<dyn ReadWrite> = if tls {
            let name = pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(p.client_config(false, false), name).unwrap();
            Box::new(rustls::StreamOwned::new(conn, sock))
        } else {
            Box::new(sock)
        };
        client.write_all(b"go").unwrap();
        client.flush().unwrap();
        let handle = handles.recv_timeout(LIMIT).expect("the handler's handle");
        // The first bytes of the reply: the turn that queued it (and, before the fix, the
        // close_notify after it) is over; the rest waits for the client to read.
        let mut got = vec![0u8; 64 << 10];
        client.read_exact(&mut got).unwrap();
        let late = handle.write(&b"late"[..]);
        client
            .read_to_end(&mut got)
            .expect("the whole reply, then a clean end (close_notify / FIN)");
        let want = big.len() + if late.is_ok() { 4 } else { 0 };
        println!(
            "{kind:?} tls={tls}: late write {late:?}, {} of {want} bytes",
            got.len()
        );
        assert_eq!(got.len(), want, "tls={tls}: late write {late:?}");
        assert!(got.starts_with(&big), "tls={tls}: the reply first");
        assert!(
            late.is_ok() == got.ends_with(b"late"),
            "tls={tls}: late write {late:?} and the bytes agree"
        );
        // After the FIN, writes are refused.
        assert_eq!(
            handle.write(&b"after"[..]),
            Err(ringport::HandleError::Closed),
            "tls={tls}"
        );
        drop(client);
        running.shutdown_handle().shutdown();
        running.join();
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

on_every_backend!(
    late_handle_write_after_half_close,
    echo_sni_alpn_and_close_notify,
    client_certificates_accepted_and_refused,
    bad_input_costs_only_its_connection,
    ringport_tls_client_to_ringport_tls_server,
);
