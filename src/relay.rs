//! A relay: two connections joined both ways, as tokio's `copy_bidirectional`.
//!
//! [`Relay`] is a [`Handler`] for each side of the pair. [`Relay::to`] serves an accepted
//! connection: its `on_open` connects to an upstream (on the same IO thread, so bytes never
//! cross threads) and that connection is served by a `Relay` too. [`Relay::with`] serves a
//! connection whose peer exists already.
//!
//! - **Flow control.** What one side reads is written to the other. When the other side's
//!   write queue is above its high watermark, this side stops reading and asks to hear when
//!   the other drains to its low watermark; then it reads again. A side that does not read
//!   therefore stops the other side being read: memory stays bounded by the watermarks.
//! - **Every byte accounted.** A frame the peer cannot take is held and offered again once
//!   the peer drains, never dropped; each side counts what it passed on (logged at close).
//! - **Half-close.** A side's EOF is passed on as the other's FIN, after everything queued for
//!   it; the other direction keeps flowing. A connection whose directions are both over closes.
//! - **Errors.** A side that ends ends the other: a reset is passed on as a reset (what was
//!   queued for the other side is dropped, the session is broken), any other end as a graceful
//!   close after the queued bytes. An upstream that refuses or times out closes the client.
//!
//! ```
//! # use std::io::{Read, Write};
//! use ringport::{codec::Raw, relay::Relay, ConnectOptions, Engine, Server};
//! # let upstream_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! # let upstream_addr = upstream_listener.local_addr()?;
//! # let echo = std::thread::spawn(move || -> std::io::Result<()> {
//! #     let (mut s, _) = upstream_listener.accept()?; // the upstream: an echo server
//! #     s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! #     std::io::copy(&mut s.try_clone()?, &mut s)?;
//! #     Ok(())
//! # });
//! let upstream = upstream_addr; // e.g. "127.0.0.1:5001".parse()?
//! let server = Server::new("127.0.0.1:0".parse()?, Raw, move |_| {
//!     Relay::to(upstream, ConnectOptions::default())
//! });
//! let mut engine = Engine::builder().io_threads(1).handle_signals(false).build()?;
//! let addr = engine.add_server(server)?.local_addr();
//! let running = engine.start()?;
//! # let mut client = std::net::TcpStream::connect(addr)?;
//! # client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! # client.write_all(b"hello")?;
//! # let mut reply = [0u8; 5];
//! # client.read_exact(&mut reply)?;
//! # assert_eq!(&reply, b"hello");
//! # client.shutdown(std::net::Shutdown::Write)?; // the FIN is relayed; the echo server ends
//! # echo.join().unwrap()?;
//! # drop(client);
//! # running.shutdown_handle().shutdown();
//! # running.join();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A TLS terminator in front of a plaintext upstream that is told each client's address with
//! a PROXY v2 header (`listen upstream cert.pem key.pem` on the command line):
//!
//! ```
//! # #[cfg(feature = "tls")] {
//! # use std::io::{Read, Write};
//! use std::sync::Arc;
//! use ringport::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
//! use ringport::{codec::Raw, relay::Relay, ConnectOptions, Engine, ProxyVersion, Server};
//! # // The test's certificate, as PEM files.
//! # let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
//! # let dir = std::env::temp_dir().join(format!("ringport-relay-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
//! # std::fs::write(&cert_path, ck.cert.pem())?;
//! # std::fs::write(&key_path, ck.key_pair.serialize_pem())?;
//! # let (cert_pem, key_pem) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
//! # // The upstream: reads the PROXY v2 header, then echoes.
//! # let upstream_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! # let upstream_addr = upstream_listener.local_addr()?.to_string();
//! # let upstream = upstream_addr.as_str();
//! # let echo = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
//! #     let (mut s, _) = upstream_listener.accept()?;
//! #     s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! #     let mut header = [0u8; 16];
//! #     s.read_exact(&mut header)?;
//! #     assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n", "a PROXY v2 signature");
//! #     let mut addresses = vec![0u8; u16::from_be_bytes([header[14], header[15]]) as usize];
//! #     s.read_exact(&mut addresses)?;
//! #     std::io::copy(&mut s.try_clone()?, &mut s)?;
//! #     Ok(addresses)
//! # });
//!
//! // A program reads `listen upstream cert.pem key.pem` from its command line
//! // (`let a: Vec<String> = std::env::args().collect();`). Here, fixed:
//! let a = ["terminator", "127.0.0.1:0", upstream, cert_pem, key_pem];
//! let (listen, upstream) = (a[1].parse().unwrap(), a[2].parse().unwrap());
//! let certs = CertificateDer::pem_file_iter(&a[3]).unwrap().collect::<Result<_, _>>().unwrap();
//! let key = PrivateKeyDer::from_pem_file(&a[4]).unwrap();
//! let config = ringport::rustls::ServerConfig::builder()
//!     .with_no_client_auth()
//!     .with_single_cert(certs, key)
//!     .unwrap();
//! let server = Server::new(listen, Raw, move |_| {
//!     Relay::to(upstream, ConnectOptions::default()).send_proxy(Some(ProxyVersion::V2))
//! })
//! .tls(Arc::new(config));
//! let mut engine = Engine::builder().build().unwrap();
//! let addr = engine.add_server(server).unwrap().local_addr();
//! // A program ends with `engine.run().unwrap();` (serves until SIGINT/SIGTERM). Here:
//! let running = engine.start().unwrap();
//! # // A TLS client.
//! # let mut roots = ringport::rustls::RootCertStore::empty();
//! # roots.add(ck.cert.der().clone())?;
//! # let client_config = ringport::rustls::ClientConfig::builder()
//! #     .with_root_certificates(roots)
//! #     .with_no_client_auth();
//! # let name = ringport::rustls::pki_types::ServerName::try_from("localhost")?;
//! # let conn = ringport::rustls::ClientConnection::new(Arc::new(client_config), name)?;
//! # let sock = std::net::TcpStream::connect(addr)?;
//! # sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! # let client_addr = sock.local_addr()?;
//! # let mut tls = ringport::rustls::StreamOwned::new(conn, sock);
//! # tls.write_all(b"hello")?;
//! # let mut reply = [0u8; 5];
//! # tls.read_exact(&mut reply)?;
//! # assert_eq!(&reply, b"hello");
//! # tls.conn.send_close_notify(); // relayed as a FIN: the upstream's echo ends
//! # tls.flush()?;
//! # let addresses = echo.join().unwrap()?;
//! # let std::net::SocketAddr::V4(c) = client_addr else { unreachable!() };
//! # assert_eq!(&addresses[..4], &c.ip().octets(), "the client's address, in the PROXY header");
//! # assert_eq!(&addresses[8..10], &c.port().to_be_bytes());
//! # drop(tls);
//! running.shutdown_handle().shutdown();
//! running.join();
//! # std::fs::remove_dir_all(&dir)?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;

use crate::codec::Raw;
use crate::{
    CloseReason, Conn, ConnInfo, ConnectOptions, ConnectionHandle, Frame, HandleError, Handler,
    ProxyVersion,
};

/// One side of a relayed pair (see the [module](self)).
pub struct Relay {
    /// The other connection of the pair (`None` until it exists).
    peer: Option<ConnectionHandle>,
    /// Where to connect on open ([`Relay::to`]).
    upstream: Option<(SocketAddr, ConnectOptions)>,
    /// Begin the upstream connection with a PROXY header of this version.
    send_proxy: Option<ProxyVersion>,
    /// "client" or "upstream", for the logs.
    name: &'static str,
    /// Bytes read on this side and queued on the peer.
    forwarded: u64,
}

impl Relay {
    /// Serves an accepted connection: on open, connects to `upstream` with `options` and
    /// relays both ways.
    pub fn to(upstream: SocketAddr, options: ConnectOptions) -> Relay {
        Relay {
            peer: None,
            upstream: Some((upstream, options)),
            send_proxy: None,
            name: "client",
            forwarded: 0,
        }
    }

    /// Serves a connection whose peer is `peer`: what it reads is written there.
    pub fn with(peer: ConnectionHandle) -> Relay {
        Relay {
            peer: Some(peer),
            upstream: None,
            send_proxy: None,
            name: "upstream",
            forwarded: 0,
        }
    }

    /// With [`Relay::to`]: the upstream connection begins with a PROXY protocol header of
    /// `version` saying that this connection's client ([`ConnInfo::client`]: the address a
    /// PROXY header of its own gave, else its peer) reached this connection's local address.
    pub fn send_proxy(mut self, version: Option<ProxyVersion>) -> Relay {
        self.send_proxy = version;
        self
    }

    /// Bytes this side has read and queued on its peer so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// Forwards `bytes`; when the peer's queue is full, stops reading this side until the
    /// peer has drained. Bytes that cannot be queued are held (offered again), never dropped.
    fn forward(&mut self, conn: &mut Conn<'_>, bytes: &[u8]) {
        let Some(peer) = &self.peer else {
            conn.hold_frame(); // no peer yet: cannot happen (it is made in on_open), never drop
            return;
        };
        if !peer.is_writable() && peer.is_open() {
            conn.hold_frame(); // full: offered again after the peer drains
            self.wait_for_peer(conn);
            return;
        }
        // Both sides live on this IO thread: the copy goes into a pooled buffer that the
        // peer's queue gives back, not a fresh allocation per read.
        let mut buf = conn.pooled_buf();
        buf.extend_from_slice(bytes);
        match peer.write(buf) {
            Ok(()) => {
                self.forwarded += bytes.len() as u64;
                if !peer.is_writable() {
                    self.wait_for_peer(conn); // queued, and the peer is now full
                }
            }
            Err(HandleError::Full) => {
                conn.hold_frame(); // not queued: offered again after the peer drains
                self.wait_for_peer(conn);
            }
            Err(_) => conn.close(), // the peer is gone: this side ends too
        }
    }

    fn wait_for_peer(&mut self, conn: &mut Conn<'_>) {
        conn.pause_reading();
        if let Some(peer) = &self.peer {
            peer.notify_when_writable(&conn.handle(), 0);
        }
    }
}

impl Handler for Relay {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let Some((addr, mut options)) = self.upstream.take() else {
            return;
        };
        if let Some(version) = self.send_proxy {
            let info = conn.info();
            options = options.send_proxy(version, info.client, info.local);
        }
        let me = conn.handle();
        self.peer = Some(conn.connect(addr, Raw, Relay::with(me), options));
    }

    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        self.forward(conn, frame.raw());
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, _: u64) {
        conn.resume_reading();
    }

    fn on_read_closed(&mut self, _conn: &mut Conn<'_>) {
        // The peer's FIN follows everything already queued for it; this side stays open for
        // what the peer still sends.
        if let Some(peer) = &self.peer {
            let _ = peer.shutdown_write();
        }
    }

    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        let (side, bytes) = (self.name, self.forwarded);
        match reason {
            CloseReason::PeerClosed | CloseReason::Local | CloseReason::Shutdown => {
                tracing::debug!(side, peer = %info.peer, %reason, forwarded = bytes, "relay side closed");
            }
            _ => {
                tracing::warn!(side, peer = %info.peer, %reason, forwarded = bytes, "relay side failed")
            }
        }
        if let Some(peer) = &self.peer {
            let _ = if *reason == CloseReason::Reset {
                peer.abort()
            } else {
                peer.close()
            };
        }
    }
}
