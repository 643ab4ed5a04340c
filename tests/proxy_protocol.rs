#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! The PROXY protocol layer, library-level, on every backend: real v1 and v2 headers (v2 built
//! with the `ppp` crate's builder) in `Required` and `Optional` mode, a header split over many
//! writes, v2 `LOCAL`, garbage, an oversized header, a header too slow (its own timeout, well
//! under the handshake timeout), TLS above the PROXY header, and per-IP limits keyed by the
//! header's client address. Each refusal costs only its own connection and is counted.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ppp::v2::{Builder, Command, IPv4, Protocol, Type, Version};
use ringport::codec::Raw;
use ringport::rustls::{self, pki_types};
use ringport::{
    BackendKind, CloseReason, Conn, ConnInfo, Frame, Handler, ProxyProtocol, ProxyVersion,
    RunningEngine, Server, ServerHandle, StatsSnapshot,
};

const LIMIT: Duration = Duration::from_secs(20);

/// On open writes `<client>\n`, then echoes; reports its facts and its close reason.
struct Who {
    opened: mpsc::Sender<ConnInfo>,
    closed: mpsc::Sender<CloseReason>,
}
impl Handler for Who {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let line = format!("{}\n", conn.info().client);
        conn.write(line.as_bytes());
        let _ = self.opened.send(conn.info().clone());
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
    fn on_close(&mut self, _: &ConnInfo, reason: &CloseReason) {
        let _ = self.closed.send(reason.clone());
    }
}

struct Running {
    running: RunningEngine,
    server: ServerHandle,
    opened: mpsc::Receiver<ConnInfo>,
    closed: mpsc::Receiver<CloseReason>,
}

fn start(kind: BackendKind, setup: impl FnOnce(Server) -> Server) -> Option<Running> {
    let mut engine = support::engine(kind, 2)?;
    let (otx, opened) = mpsc::channel();
    let (ctx, closed) = mpsc::channel();
    let (otx, ctx) = (Mutex::new(otx), Mutex::new(ctx));
    let server = Server::new("127.0.0.1:0".parse().unwrap(), Raw, move |_| Who {
        opened: otx.lock().unwrap().clone(),
        closed: ctx.lock().unwrap().clone(),
    });
    let server = engine.add_server(setup(server)).unwrap();
    Some(Running {
        running: engine.start().unwrap(),
        server,
        opened,
        closed,
    })
}

impl Running {
    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.server.local_addr()).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }
    /// Waits (bounded) until the counters satisfy `ok`.
    fn stats_until(&self, what: &str, ok: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
        let deadline = Instant::now() + LIMIT;
        loop {
            let s = self.server.stats().snapshot();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn stop(self) {
        self.running.shutdown_handle().shutdown();
        self.running.join();
    }
}

fn v1(src: &str, dst: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

fn v2(command: Command, src: [u8; 4], port: u16) -> Vec<u8> {
    Builder::with_addresses(
        Version::Two | command,
        Protocol::Stream,
        IPv4::new(src, [192, 0, 2, 1], port, 443),
    )
    .write_tlv(Type::UniqueId, b"ringport-test")
    .unwrap()
    .build()
    .unwrap()
}

/// Reads the `<client>\n` line the server greets with.
fn greeting(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

fn echoes(r: &mut BufReader<TcpStream>, data: &[u8]) {
    r.get_mut().write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    r.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
}

/// The server closed the connection without a byte of reply (EOF or reset).
fn refused(mut s: TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("the server did not close the connection within {LIMIT:?}")
        }
        Err(_) => {} // a reset
        Ok(n) => panic!("a refused connection got {n} bytes: {:?}", &buf[..n]),
    }
}

fn required_v1_and_v2_give_the_client_address(kind: BackendKind) {
    let Some(t) = start(kind, |s| s.proxy_protocol(ProxyProtocol::Required)) else {
        return;
    };
    let mut c = t.connect();
    let sock = c.local_addr().unwrap();
    c.write_all(&v1("203.0.113.5:40001", "192.0.2.1:5003"))
        .unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(greeting(&mut r), "203.0.113.5:40001");
    echoes(&mut r, b"after a v1 header");
    let info = t.opened.recv_timeout(LIMIT).unwrap();
    assert_eq!(info.peer, sock, "peer stays the socket's address");
    let p = info.proxy.expect("proxy facts");
    assert_eq!(p.version, ProxyVersion::V1);
    assert_eq!(p.destination, Some("192.0.2.1:5003".parse().unwrap()));

    let mut c = t.connect();
    let mut h = v2(Command::Proxy, [198, 51, 100, 7], 50123);
    h.extend_from_slice(b"same segment");
    c.write_all(&h).unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(greeting(&mut r), "198.51.100.7:50123");
    let mut back = [0u8; 12];
    r.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"same segment");
    let info = t.opened.recv_timeout(LIMIT).unwrap();
    assert_eq!(info.proxy.unwrap().version, ProxyVersion::V2);
    let s = t.stats_until("v1 and v2 counted", |s| {
        s.proxy_headers.v1 == 1 && s.proxy_headers.v2 == 1
    });
    assert_eq!(s.proxy_headers.refused, 0);
    t.stop();
}

fn header_split_over_many_writes(kind: BackendKind) {
    let Some(t) = start(kind, |s| s.proxy_protocol(ProxyProtocol::Required)) else {
        return;
    };
    for header in [
        v1("203.0.113.9:1234", "192.0.2.1:5003"),
        v2(Command::Proxy, [203, 0, 113, 9], 1234),
    ] {
        let mut c = t.connect();
        for b in &header {
            c.write_all(&[*b]).unwrap();
        }
        let mut r = BufReader::new(c);
        assert_eq!(greeting(&mut r), "203.0.113.9:1234");
        echoes(&mut r, b"x");
    }
    t.stop();
}

fn v2_local_keeps_the_socket_address(kind: BackendKind) {
    let Some(t) = start(kind, |s| s.proxy_protocol(ProxyProtocol::Required)) else {
        return;
    };
    let mut c = t.connect();
    let sock = c.local_addr().unwrap();
    c.write_all(&v2(Command::Local, [10, 9, 9, 9], 9)).unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(greeting(&mut r), sock.to_string());
    assert!(t.opened.recv_timeout(LIMIT).unwrap().proxy.unwrap().local);
    t.stats_until("local counted", |s| s.proxy_headers.local == 1);
    t.stop();
}

fn optional_with_and_without_a_header(kind: BackendKind) {
    let Some(t) = start(kind, |s| s.proxy_protocol(ProxyProtocol::Optional)) else {
        return;
    };
    // No header: the first bytes (a prefix of "PROXY " at first) come through untouched.
    let mut c = t.connect();
    let sock = c.local_addr().unwrap();
    c.write_all(b"PROX").unwrap();
    c.write_all(b"IMA centauri").unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(greeting(&mut r), sock.to_string());
    let mut back = [0u8; 16];
    r.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"PROXIMA centauri");
    assert_eq!(t.opened.recv_timeout(LIMIT).unwrap().proxy, None);
    // With one: read and removed.
    let mut c = t.connect();
    c.write_all(&v1("203.0.113.77:999", "192.0.2.1:1")).unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(greeting(&mut r), "203.0.113.77:999");
    echoes(&mut r, b"hello");
    t.stats_until("one none, one v1", |s| {
        s.proxy_headers.none == 1 && s.proxy_headers.v1 == 1
    });
    t.stop();
}

fn bad_headers_cost_only_their_connection(kind: BackendKind) {
    let Some(t) = start(kind, |s| s.proxy_protocol(ProxyProtocol::Required)) else {
        return;
    };
    // A good client stays served throughout.
    let mut good = t.connect();
    good.write_all(&v1("203.0.113.1:1", "192.0.2.1:2")).unwrap();
    let mut good = BufReader::new(good);
    assert_eq!(greeting(&mut good), "203.0.113.1:1");

    let mut oversized = b"PROXY TCP4 ".to_vec();
    oversized.extend(std::iter::repeat_n(b'7', 150));
    let mut too_long_v2 = v2(Command::Proxy, [1, 2, 3, 4], 5)[..16].to_vec();
    too_long_v2[14..16].copy_from_slice(&8000u16.to_be_bytes());
    let bad: [(&[u8], &str); 5] = [
        (b"GET / HTTP/1.1\r\n\r\n", "missing"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "malformed"),
        (&oversized, "oversized"),
        (&too_long_v2, "oversized"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c", "malformed"),
    ];
    for (bytes, what) in bad {
        let mut c = t.connect();
        c.write_all(bytes).unwrap();
        refused(c);
        match t.closed.recv_timeout(LIMIT).unwrap() {
            CloseReason::ProxyHeader(m) => assert!(m.contains(what), "{m}: expected {what}"),
            other => panic!("{what}: closed as {other:?}"),
        }
        echoes(&mut good, what.as_bytes());
    }
    // Connected and closed without a byte (a TCP health check): a plain close, not a refusal.
    drop(t.connect());
    assert_eq!(
        t.closed.recv_timeout(LIMIT).unwrap(),
        CloseReason::PeerClosed
    );
    let s = t.stats_until("five refused", |s| s.proxy_headers.refused == 5);
    assert_eq!(s.closed_by(&CloseReason::ProxyHeader(String::new())), 5);
    assert_eq!(s.proxy_headers.v1, 1);
    t.stop();
}

fn slow_header_times_out_on_its_own_clock(kind: BackendKind) {
    let Some(t) = start(kind, |s| {
        s.proxy_protocol(ProxyProtocol::Required)
            .proxy_header_timeout(Duration::from_millis(300))
            .handshake_timeout(Duration::from_secs(30))
    }) else {
        return;
    };
    let began = Instant::now();
    let mut c = t.connect();
    c.write_all(b"PROXY TCP4 203.0.113.1").unwrap(); // and nothing more
    refused(c);
    let took = began.elapsed();
    assert_eq!(
        t.closed.recv_timeout(LIMIT).unwrap(),
        CloseReason::ProxyHeaderTimeout
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    let s = t.stats_until("timeout counted", |s| s.proxy_headers.refused == 1);
    assert_eq!(s.closed_by(&CloseReason::ProxyHeaderTimeout), 1);
    t.stop();
}

fn per_ip_limit_applies_to_the_header_client(kind: BackendKind) {
    let Some(t) = start(kind, |s| {
        s.proxy_protocol(ProxyProtocol::Required)
            .max_connections_per_ip(Some(1))
    }) else {
        return;
    };
    // Every socket comes from 127.0.0.1 (the "balancer"); the headers name the clients.
    let mut first = t.connect();
    first
        .write_all(&v1("10.1.1.1:1000", "192.0.2.1:1"))
        .unwrap();
    let mut first = BufReader::new(first);
    assert_eq!(greeting(&mut first), "10.1.1.1:1000");
    let mut second = t.connect();
    second
        .write_all(&v1("10.1.1.1:1001", "192.0.2.1:1"))
        .unwrap();
    refused(second);
    let mut other = t.connect();
    other
        .write_all(&v1("10.1.1.2:1000", "192.0.2.1:1"))
        .unwrap();
    let mut other = BufReader::new(other);
    assert_eq!(greeting(&mut other), "10.1.1.2:1000");
    // The refusal is counted before the refused connection's close finishes: wait for both.
    t.stats_until("one refused per IP, two active", |s| {
        s.rejected_per_ip == 1 && s.active == 2
    });
    // The first client's slot is free again once it leaves.
    drop(first);
    t.stats_until("released", |s| s.active == 1);
    let mut again = t.connect();
    again
        .write_all(&v1("10.1.1.1:1002", "192.0.2.1:1"))
        .unwrap();
    assert_eq!(greeting(&mut BufReader::new(again)), "10.1.1.1:1002");
    t.stop();
}

fn pki() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ringport.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn tls_above_the_proxy_header(kind: BackendKind) {
    let (server_config, client_config) = pki();
    // TLS asked for first: the PROXY layer still sits below it.
    let Some(t) = start(kind, |s| {
        s.tls(server_config).proxy_protocol(ProxyProtocol::Required)
    }) else {
        return;
    };
    let mut sock = t.connect();
    sock.write_all(&v2(Command::Proxy, [203, 0, 113, 44], 4444))
        .unwrap();
    let conn = rustls::ClientConnection::new(
        client_config,
        pki_types::ServerName::try_from("ringport.test").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        tls.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert_eq!(line, b"203.0.113.44:4444\n");
    tls.write_all(b"through TLS").unwrap();
    let mut back = [0u8; 11];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"through TLS");
    let info = t.opened.recv_timeout(LIMIT).unwrap();
    assert!(info.tls.is_some(), "TLS facts");
    assert_eq!(info.client, "203.0.113.44:4444".parse().unwrap());
    t.stop();
}

on_every_backend!(
    required_v1_and_v2_give_the_client_address,
    header_split_over_many_writes,
    v2_local_keeps_the_socket_address,
    optional_with_and_without_a_header,
    bad_headers_cost_only_their_connection,
    slow_header_times_out_on_its_own_clock,
    per_ip_limit_applies_to_the_header_client,
    tls_above_the_proxy_header,
);
