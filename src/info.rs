//! The plain facts about a connection that every layer shares: who it is ([`ConnInfo`]) and why
//! it ended ([`CloseReason`]). Depends on nothing else in the crate.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Addresses and identity of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The remote end.
    pub peer: SocketAddr,
    /// The local end (the server's address as the client reached it).
    pub local: SocketAddr,
    /// Unique within the engine for its lifetime (IO thread index in the top 16 bits).
    pub id: u64,
    /// What the TLS handshake negotiated (`None`: plaintext). Boxed, like `proxy`, so that a
    /// plaintext connection's entry stays small (the 10k-connection memory target).
    pub tls: Option<Box<TlsInfo>>,
    /// The address the server believes the client has: the source a PROXY protocol header
    /// gave, else `peer` (no header, a v2 `LOCAL` health check, a v1 `UNKNOWN`). Set before
    /// `on_open`; the handler factory, which runs at accept, sees `peer` here.
    pub client: SocketAddr,
    /// The PROXY protocol header the connection began with (`None`: none, or the server
    /// does not read one).
    pub proxy: Option<Box<ProxyInfo>>,
    /// The peer of a connection over a Unix domain socket: its credentials and the socket's
    /// path (`None`: a TCP connection). Such a connection has no IP address: `peer`, `local`
    /// and `client` are then [`UNIX_PLACEHOLDER_ADDR`](crate::UNIX_PLACEHOLDER_ADDR)
    /// (`0.0.0.0:0`), unless a PROXY header gave the client's address.
    pub unix: Option<Box<UnixPeer>>,
}

/// Who is at the other end of a Unix domain socket connection (`conn.info().unix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixPeer {
    /// The path of the socket the connection came in on (`None` if it has none: an abstract
    /// or unnamed socket).
    pub path: Option<std::path::PathBuf>,
    /// The peer process's credentials when it connected (SO_PEERCRED; `None` where the OS
    /// does not tell them: only Linux is implemented).
    pub cred: Option<PeerCred>,
}

/// A Unix domain socket peer's process credentials, as the kernel recorded them at connect
/// (SO_PEERCRED): they cannot be forged by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's process id.
    pub pid: u32,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, local: SocketAddr, id: u64) -> ConnInfo {
        ConnInfo {
            peer,
            local,
            id,
            tls: None,
            client: peer,
            proxy: None,
            unix: None,
        }
    }

    /// The address the per-IP limits count this connection under: the client's (the peer's,
    /// or the one a layer named, e.g. a PROXY header's source), or none for a Unix peer with
    /// no client address named (it has no IP to limit).
    pub(crate) fn limited_ip(&self) -> Option<std::net::IpAddr> {
        let named = self.proxy.as_ref().is_some_and(|p| p.source.is_some());
        (self.unix.is_none() || named).then(|| self.client.ip())
    }
}

/// Which version of the PROXY protocol a header was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl std::str::FromStr for ProxyVersion {
    type Err = String;
    /// `v1` or `v2` (also `1`, `2`), as `tcp_proxy --send-proxy` takes it.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(ProxyVersion::V1),
            "v2" | "2" => Ok(ProxyVersion::V2),
            _ => Err(format!("PROXY protocol version {s:?}: expected v1 or v2")),
        }
    }
}

/// What a connection's PROXY protocol header said (`conn.info().proxy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    /// v1 or v2.
    pub version: ProxyVersion,
    /// The header carries no client address: a v2 `LOCAL` command (the balancer's own
    /// health check), a v1 `UNKNOWN`, or an address family other than TCP over IPv4/IPv6.
    /// The connection keeps its socket address as [`ConnInfo::client`].
    pub local: bool,
    /// The client's address as the balancer saw it (`None` when `local`).
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the balancer (`None` when `local`).
    pub destination: Option<SocketAddr>,
}

/// What a TLS connection's handshake settled, for the handler (`conn.info().tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version, e.g. `TLSv1_3`.
    pub version: String,
    /// The cipher suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
    /// The server name the client asked for (SNI), on accepted connections.
    pub sni: Option<String>,
    /// The application protocol agreed with ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The peer's certificate chain (DER, end entity first): a client's when client
    /// authentication is on, the server's on outgoing connections.
    pub peer_certificates: Vec<Vec<u8>>,
}

/// Why a connection closed; passed to [`Handler::on_close`](crate::Handler::on_close) and
/// counted per server under [`CloseReason::name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (EOF), and the connection then closed.
    PeerClosed,
    /// The peer reset the connection (ECONNRESET, EPIPE).
    Reset,
    /// The handler called [`Conn::close`](crate::Conn::close) or
    /// [`Conn::abort`](crate::Conn::abort) (or a [`ConnectionHandle`](crate::ConnectionHandle)
    /// did).
    Local,
    /// Nothing was received, no send made progress and no work was outstanding for the
    /// server's idle timeout.
    IdleTimeout,
    /// The peer broke the protocol or a limit (frame or line too long, read buffer full, ...).
    Protocol(String),
    /// The engine shut down and the connection closed gracefully within the drain time.
    Shutdown,
    /// Another IO error.
    Io(io::ErrorKind, String),
    /// A handler callback panicked; the connection was reset and its handler is not called
    /// again (not even `on_close`).
    HandlerPanic,
    /// The connection was closing but its queued bytes moved not one byte for
    /// [`FLUSH_STALL`](crate::FLUSH_STALL) (the peer stopped reading): it was reset and
    /// the unsent bytes were dropped.
    FlushStalled,
    /// The engine's drain deadline passed with the connection still open or flushing: it was
    /// reset, and whatever it still had queued was dropped.
    DrainTimeout,
    /// The TLS layer failed: not TLS (plaintext or garbage), a bad record, an unsupported
    /// version, a refused certificate, EOF during the handshake, ... (the message says which).
    TlsError(String),
    /// The TLS handshake did not finish within the server's handshake timeout.
    TlsHandshakeTimeout,
    /// The PROXY protocol header was missing (in `Required` mode), malformed, oversized or
    /// cut short by EOF (the message says which).
    ProxyHeader(String),
    /// No complete PROXY protocol header arrived within the server's proxy header timeout.
    ProxyHeaderTimeout,
    /// The process-wide memory budget was nearly spent: a new connection refused at accept,
    /// or (at the top) an open one holding the most bytes for the longest, reset.
    Overload,
    /// A fan-out member ([`fanout::Room`](crate::fanout::Room)) that held a publisher up for
    /// the room's stall timeout without reading its queue down: reset, its queue dropped.
    SlowConsumer,
}

impl CloseReason {
    /// Number of distinct kinds of reason.
    pub const COUNT: usize = 16;

    /// Every kind's [`name`](CloseReason::name), in [`index`](CloseReason::index) order.
    pub const NAMES: [&'static str; CloseReason::COUNT] = [
        "peer-closed",
        "reset",
        "local",
        "idle-timeout",
        "protocol",
        "shutdown",
        "io-error",
        "handler-panic",
        "flush-stalled",
        "drain-timeout",
        "tls-error",
        "tls-handshake-timeout",
        "proxy-header",
        "proxy-header-timeout",
        "overload",
        "slow-consumer",
    ];

    /// A stable index per kind of reason, for counters.
    pub fn index(&self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Reset => 1,
            CloseReason::Local => 2,
            CloseReason::IdleTimeout => 3,
            CloseReason::Protocol(_) => 4,
            CloseReason::Shutdown => 5,
            CloseReason::Io(..) => 6,
            CloseReason::HandlerPanic => 7,
            CloseReason::FlushStalled => 8,
            CloseReason::DrainTimeout => 9,
            CloseReason::TlsError(_) => 10,
            CloseReason::TlsHandshakeTimeout => 11,
            CloseReason::ProxyHeader(_) => 12,
            CloseReason::ProxyHeaderTimeout => 13,
            CloseReason::Overload => 14,
            CloseReason::SlowConsumer => 15,
        }
    }

    /// A short, stable name for the kind of reason (see [`CloseReason::NAMES`]): the key of
    /// the close counters and of the logs.
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// Whether the connection ended with a reset by this side, dropping what it had queued
    /// (as opposed to a graceful close or the peer's doing).
    pub fn is_local_reset(&self) -> bool {
        matches!(
            self,
            CloseReason::HandlerPanic
                | CloseReason::FlushStalled
                | CloseReason::DrainTimeout
                | CloseReason::Overload
                | CloseReason::SlowConsumer
        )
    }

    pub(crate) fn from_io(e: &io::Error) -> CloseReason {
        match e.kind() {
            // NotConnected: the peer reset before the connection was looked at.
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected => CloseReason::Reset,
            kind => CloseReason::Io(kind, e.to_string()),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Protocol(m) => write!(f, "protocol: {m}"),
            CloseReason::Io(_, m) => write!(f, "io-error: {m}"),
            CloseReason::TlsError(m) => write!(f, "tls-error: {m}"),
            CloseReason::ProxyHeader(m) => write!(f, "proxy-header: {m}"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_index_and_name() {
        let all = [
            CloseReason::PeerClosed,
            CloseReason::Reset,
            CloseReason::Local,
            CloseReason::IdleTimeout,
            CloseReason::Protocol(String::new()),
            CloseReason::Shutdown,
            CloseReason::Io(io::ErrorKind::Other, String::new()),
            CloseReason::HandlerPanic,
            CloseReason::FlushStalled,
            CloseReason::DrainTimeout,
            CloseReason::TlsError(String::new()),
            CloseReason::TlsHandshakeTimeout,
            CloseReason::ProxyHeader(String::new()),
            CloseReason::ProxyHeaderTimeout,
            CloseReason::Overload,
            CloseReason::SlowConsumer,
        ];
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(r.name(), CloseReason::NAMES[i]);
        }
    }
}
