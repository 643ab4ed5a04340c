//! [`Server`]: an address, a decoder, a handler factory and the limits of its connections;
//! [`ServerHandle`]: a running server's address and counters.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{Decoder, ItemDecoder};
use crate::core::DynConn;
use crate::handler::{Handler, ItemHandler, Items, Typed};
use crate::info::ConnInfo;
use crate::layer::{LayerSpec, ProxyProtocol};
use crate::listen::{ListenAddr, UNIX_PLACEHOLDER_ADDR};
use crate::sockopt::SocketOptions;
use crate::stats::ServerStats;

use super::peers::PeerLimits;
use super::{
    DEFAULT_MAX_BUFFERED_INPUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_WRITE_HIGH, DEFAULT_WRITE_LOW,
};

pub(crate) type Factory = Arc<dyn Fn(&ConnInfo) -> Box<dyn DynConn> + Send + Sync>;

/// One server: an address, a decoder, a handler factory and its limits.
pub struct Server {
    /// The TCP address ([`UNIX_PLACEHOLDER_ADDR`] for a Unix socket server).
    pub(crate) addr: SocketAddr,
    /// The Unix domain socket path (`None`: TCP).
    pub(crate) unix: Option<PathBuf>,
    pub(crate) factory: Factory,
    pub(crate) limits: Limits,
}

#[derive(Clone)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Option<Duration>,
    pub write_high: usize,
    pub write_low: usize,
    pub max_buffered_input: usize,
    pub backlog: i32,
    pub socket: SocketOptions,
    pub reuse_port: bool,
    /// Windows: SO_EXCLUSIVEADDRUSE on the listening socket.
    pub exclusive_address: bool,
    pub max_connections_per_ip: Option<usize>,
    /// Connections per second per address, and the burst allowed above it.
    pub accept_rate_per_ip: Option<(u32, u32)>,
    /// Each accepted connection's layers (PROXY header, TLS): built per connection by the
    /// layer module, which the engine knows only as "a layer stack".
    pub layers: LayerSpec,
    /// New connections are taken whatever the memory budget's pressure (the metrics server:
    /// the operator's view of an overload must stay open).
    pub overload_exempt: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: None,
            write_high: DEFAULT_WRITE_HIGH,
            write_low: DEFAULT_WRITE_LOW,
            max_buffered_input: DEFAULT_MAX_BUFFERED_INPUT,
            backlog: 1024,
            socket: SocketOptions::default(),
            reuse_port: false,
            exclusive_address: false,
            max_connections_per_ip: None,
            accept_rate_per_ip: None,
            layers: LayerSpec::default(),
            overload_exempt: false,
        }
    }
}

impl Server {
    /// A server on `addr` (port 0: any free port) decoding with `codec` (cloned per
    /// connection) and making each connection's handler with `factory`.
    pub fn new<D, H, F>(addr: SocketAddr, codec: D, factory: F) -> Server
    where
        D: Decoder + Sync,
        H: Handler,
        F: Fn(&ConnInfo) -> H + Send + Sync + 'static,
    {
        // A frame the codec accepts is never refused for its size by the input limit.
        let max_buffered_input =
            DEFAULT_MAX_BUFFERED_INPUT.max(codec.max_frame_input().unwrap_or(0));
        let factory: Factory =
            Arc::new(move |info| Box::new(Typed::new(factory(info), codec.clone())));
        Server {
            addr,
            unix: None,
            factory,
            limits: Limits {
                max_buffered_input,
                ..Limits::default()
            },
        }
    }

    /// A server whose handlers receive typed items ([`ItemHandler::on_item`]) from `codec`,
    /// an [`ItemDecoder`] (cloned per connection); bad frames it reports are skipped and
    /// answered ([`ItemHandler::on_bad_frame`]) while the connection goes on.
    ///
    /// `listen` is a TCP address (a `SocketAddr`) or a [`ListenAddr`] (a Unix path too).
    pub fn typed<D, H, F>(listen: impl Into<ListenAddr>, codec: D, factory: F) -> Server
    where
        D: ItemDecoder + Sync,
        H: ItemHandler<D>,
        F: Fn(&ConnInfo) -> H + Send + Sync + 'static,
    {
        let max_buffered_input =
            DEFAULT_MAX_BUFFERED_INPUT.max(codec.max_frame_input().unwrap_or(0));
        let factory: Factory =
            Arc::new(move |info| Box::new(Items::new(factory(info), codec.clone())));
        let (addr, unix) = match listen.into() {
            ListenAddr::Tcp(addr) => (addr, None),
            ListenAddr::Unix(path) => (UNIX_PLACEHOLDER_ADDR, Some(path)),
        };
        Server {
            addr,
            unix,
            factory,
            limits: Limits {
                max_buffered_input,
                ..Limits::default()
            },
        }
    }

    /// A server on `listen`: a TCP address as [`Server::new`], or a Unix domain socket path
    /// as [`Server::unix`] (what `--listen IP:PORT | unix:PATH` parses into).
    pub fn listen<D, H, F>(listen: ListenAddr, codec: D, factory: F) -> Server
    where
        D: Decoder + Sync,
        H: Handler,
        F: Fn(&ConnInfo) -> H + Send + Sync + 'static,
    {
        match listen {
            ListenAddr::Tcp(addr) => Server::new(addr, codec, factory),
            ListenAddr::Unix(path) => Server::unix(path, codec, factory),
        }
    }

    /// A server on the Unix domain socket (stream) `path` (Linux and other unixes; on Windows
    /// adding it fails with a clear error). Every IO thread accepts from the one socket.
    ///
    /// - A socket file left by a process that died (connecting to it is refused) is replaced;
    ///   one a live server listens on fails with "address in use"; a path that exists and is
    ///   not a socket is left alone and fails.
    /// - The file is removed when the engine shuts down cleanly (not by a process that handed
    ///   it over to a restart's successor, nor one given it by systemd socket activation).
    /// - `conn.info().unix` holds the peer's pid, uid and gid (SO_PEERCRED, Linux) and the
    ///   path; `peer`, `local` and `client` are [`UNIX_PLACEHOLDER_ADDR`] (`0.0.0.0:0`), or
    ///   the client's address a PROXY header gave.
    /// - Per-IP limits do not apply to Unix peers (they have no IP), except to the client
    ///   address a PROXY header gives; `max_connections` does.
    /// - Socket options ([`Server::socket_options`]) are TCP options and are not applied.
    /// - TLS and the PROXY protocol work as on TCP.
    pub fn unix<D, H, F>(path: impl Into<PathBuf>, codec: D, factory: F) -> Server
    where
        D: Decoder + Sync,
        H: Handler,
        F: Fn(&ConnInfo) -> H + Send + Sync + 'static,
    {
        let mut s = Server::new(UNIX_PLACEHOLDER_ADDR, codec, factory);
        s.unix = Some(path.into());
        s
    }

    /// Where this server listens.
    pub fn listen_addr(&self) -> ListenAddr {
        match &self.unix {
            Some(p) => ListenAddr::Unix(p.clone()),
            None => ListenAddr::Tcp(self.addr),
        }
    }

    /// Open connections allowed; beyond it a new connection is accepted and closed at once
    /// (counted as `rejected`). Default [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n;
        self
    }

    /// Closes a connection on which, for this long, nothing was received, no send made
    /// progress and no [`Work`](crate::Work) was outstanding. Default: off.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// Write-queue watermarks in bytes. Above `high` the connection stops reading (its own
    /// input cannot grow its queue) and handle writes to it are refused with
    /// [`HandleError::Full`](crate::HandleError::Full); at or under `low` reading resumes and
    /// `notify_when_writable` watchers are told.
    pub fn write_watermarks(mut self, low: usize, high: usize) -> Self {
        self.limits.write_low = low.min(high);
        self.limits.write_high = high;
        self
    }

    /// Received-but-undecoded bytes a connection may hold (a partial frame); beyond it the
    /// connection closes with a protocol error. Default: [`DEFAULT_MAX_BUFFERED_INPUT`]
    /// (8 MiB), or, when the codec's longest frame needs more
    /// ([`Decoder::max_frame_input`]: a `LengthDelimited` header plus `max_frame`, a `Lines`
    /// `max_line` plus its terminator), that much, so every frame the codec accepts is taken.
    /// Setting it below the codec's longest frame refuses the longer frames here.
    pub fn max_buffered_input(mut self, bytes: usize) -> Self {
        self.limits.max_buffered_input = bytes;
        self
    }

    /// The listen(2) backlog of each listener.
    pub fn backlog(mut self, n: i32) -> Self {
        self.limits.backlog = n;
        self
    }

    /// Let other processes listen on the same address and port (SO_REUSEPORT; the kernel
    /// spreads new connections over every listener of the group). Off (the default), adding
    /// the server fails with "address in use" when another process already listens there.
    /// (This process's own listeners, one per IO thread, always share the port.)
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.limits.reuse_port = on;
        self
    }

    /// Windows only: binds with `SO_EXCLUSIVEADDRUSE`, as Microsoft advises for servers. Without
    /// it Windows lets another process bind a more specific address on the same port (a
    /// listener on `0.0.0.0:P` beside another process's `127.0.0.1:P`: loopback clients then
    /// reach the other process), and lets a socket with `SO_REUSEADDR` take the port. With it,
    /// adding the server fails if any socket holds the port, and nobody can bind it afterwards.
    /// Off by default: an exclusive bind also fails while connections of a previous instance
    /// on the port are still open or in TIME_WAIT (Microsoft's "Using SO_REUSEADDR and
    /// SO_EXCLUSIVEADDRUSE"), so a quick restart could not bind. No effect elsewhere: Linux
    /// refuses another process's bind of a listening port unless both set SO_REUSEPORT.
    pub fn exclusive_address(mut self, on: bool) -> Self {
        self.limits.exclusive_address = on;
        self
    }

    /// Open connections allowed per client IP address; beyond it a new connection from that
    /// address is accepted and closed at once (counted as `rejected_per_ip`). Default: none.
    ///
    /// With [`proxy_protocol`](Server::proxy_protocol), this limit and the accept rate apply
    /// to the client address the header gives (the balancer's own address when a header has
    /// none, or none came in `Optional` mode), checked once the header is read; a connection
    /// refused then is counted as `rejected_per_ip` / `rejected_rate` and closed as `local`.
    pub fn max_connections_per_ip(mut self, n: Option<usize>) -> Self {
        self.limits.max_connections_per_ip = n;
        self
    }

    /// New connections allowed per client IP address per second, with bursts of up to `burst`
    /// (a GCRA token bucket); beyond it a new connection is accepted and closed at once
    /// (counted as `rejected_rate`). `per_second` 0 turns the limit off (the default).
    pub fn accept_rate_per_ip(mut self, per_second: u32, burst: u32) -> Self {
        self.limits.accept_rate_per_ip = (per_second > 0).then_some((per_second, burst.max(1)));
        self
    }

    /// Serves TLS: every accepted connection does a rustls handshake (server side) before
    /// `on_open`; handlers read and write plaintext. `conn.info().tls` tells what was
    /// negotiated (version, cipher suite, SNI, ALPN, the client's certificates). A handshake
    /// that fails or does not finish in time closes that connection only, counted as
    /// `tls-error` or `tls-handshake-timeout`.
    ///
    /// The configuration is rustls's own. Here its certificate is a self-signed one made on the
    /// spot with [rcgen](https://docs.rs/rcgen); a real server loads PEM files (as
    /// `ringport::cli::TlsArgs` does for `--tls-cert` and `--tls-key`):
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ringport::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    /// use ringport::{codec::Raw, rustls, Conn, Engine, Frame, Handler, Server};
    ///
    /// struct Echo;
    /// impl Handler for Echo {
    ///     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
    ///         conn.write(frame.raw());
    ///     }
    /// }
    ///
    /// let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    /// let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    /// let config = rustls::ServerConfig::builder()
    ///     .with_no_client_auth()
    ///     .with_single_cert(vec![certified.cert.der().clone()], key)?;
    ///
    /// let server = Server::new("127.0.0.1:0".parse()?, Raw, |_| Echo).tls(Arc::new(config));
    /// let mut engine = Engine::builder().io_threads(1).build()?;
    /// let handle = engine.add_server(server)?; // listening: every connection speaks TLS
    /// assert_ne!(handle.local_addr().port(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.limits.layers.tls_server(config);
        self
    }

    /// Reads a PROXY protocol header (v1 or v2, as HAProxy's `send-proxy` / `send-proxy-v2`
    /// write it) at the start of every connection, below TLS and the codec whatever order
    /// the builder calls come in. `conn.info().client` is then the client's address the
    /// header gave (`peer` stays the balancer's socket), `conn.info().proxy` what the header
    /// said. A missing (`Required`), malformed or oversized header closes that connection
    /// only (`proxy-header`), so does one not complete within
    /// [`proxy_header_timeout`](Server::proxy_header_timeout) (`proxy-header-timeout`).
    /// Per-IP limits then apply to the header's client address (see
    /// [`max_connections_per_ip`](Server::max_connections_per_ip)).
    pub fn proxy_protocol(mut self, mode: ProxyProtocol) -> Self {
        self.limits.layers.set_proxy(mode);
        self
    }

    /// How long a connection may take to deliver its PROXY header from accept (default
    /// [`DEFAULT_PROXY_HEADER_TIMEOUT`](crate::DEFAULT_PROXY_HEADER_TIMEOUT)); the handshake timeout still bounds the layers
    /// together.
    pub fn proxy_header_timeout(mut self, timeout: Duration) -> Self {
        self.limits.layers.set_proxy_header_timeout(timeout);
        self
    }

    /// How long a connection's layers (the TLS handshake) may take before it is reset
    /// (default [`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT)).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits.layers.set_handshake_timeout(timeout);
        self
    }

    /// Socket options applied to every accepted connection (default: TCP_NODELAY on).
    pub fn socket_options(mut self, options: SocketOptions) -> Self {
        self.limits.socket = options;
        self
    }
}

/// Reads a running server's address and counters.
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) addr: SocketAddr,
    pub(crate) unix: Option<PathBuf>,
    pub(crate) stats: Arc<ServerStats>,
}

impl ServerHandle {
    /// The address the server listens on (the real port when port 0 was asked for);
    /// [`UNIX_PLACEHOLDER_ADDR`] for a Unix domain socket server (see
    /// [`listen_addr`](ServerHandle::listen_addr)).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// The Unix domain socket path the server listens on (`None`: TCP).
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_deref()
    }
    /// Where the server listens, TCP or Unix, printable as `--listen` takes it.
    pub fn listen_addr(&self) -> ListenAddr {
        match &self.unix {
            Some(p) => ListenAddr::Unix(p.clone()),
            None => ListenAddr::Tcp(self.addr),
        }
    }
    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }
}

/// What every IO thread knows of a server.
pub(crate) struct SharedServer {
    /// `None` for the outgoing-connection pseudo-server (its handlers come with each connect).
    pub factory: Option<Factory>,
    pub limits: Limits,
    pub stats: Arc<ServerStats>,
    /// Per-IP limits; `None` when the server has none.
    pub peers: Option<PeerLimits>,
}

/// Fails with `AddrInUse` when a listener of another process holds `addr`: a socket without
/// SO_REUSEPORT cannot bind beside a listening one (SO_REUSEADDR only lets it pass sockets in
/// TIME_WAIT). Nothing is kept bound.
pub(crate) fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                "address in use by another process (Server::reuse_port / --reuse-port shares it)",
            )
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{LengthDelimited, Lines, Raw};
    use crate::{Conn, Frame};

    struct Nop;
    impl Handler for Nop {
        fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
    }

    fn limit<D: Decoder + Sync>(codec: D) -> usize {
        let addr = "127.0.0.1:0".parse().unwrap();
        Server::new(addr, codec, |_| Nop).limits.max_buffered_input
    }

    /// The default input limit is 8 MiB, or the codec's longest frame when that is larger: a
    /// frame the codec accepts is never refused for its size (`--max-frame 16777216` used to
    /// be capped at 8 MiB). An explicit limit wins either way.
    #[test]
    fn the_default_input_limit_follows_the_codecs_longest_frame() {
        assert_eq!(limit(Raw), DEFAULT_MAX_BUFFERED_INPUT);
        assert_eq!(limit(LengthDelimited::new()), DEFAULT_MAX_BUFFERED_INPUT);
        assert_eq!(limit(Lines::new(8192)), DEFAULT_MAX_BUFFERED_INPUT);
        assert_eq!(
            limit(LengthDelimited::new().max_frame(16 << 20)),
            (16 << 20) + 4
        );
        let w8 = LengthDelimited::with_layout(8, crate::codec::Endian::Little, false)
            .unwrap()
            .max_frame(usize::MAX);
        assert_eq!(limit(w8), usize::MAX, "saturates, never overflows");
        assert_eq!(limit(Lines::new(16 << 20)), (16 << 20) + 2);
        let addr = "127.0.0.1:0".parse().unwrap();
        let explicit = Server::new(addr, LengthDelimited::new().max_frame(16 << 20), |_| Nop)
            .max_buffered_input(64 << 10);
        assert_eq!(explicit.limits.max_buffered_input, 64 << 10);
    }
}
