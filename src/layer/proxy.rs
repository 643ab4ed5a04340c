//! The PROXY protocol (v1 text and v2 binary) as the bottom [`Layer`]: a load balancer (HAProxy
//! `send-proxy` / `send-proxy-v2`, Envoy, a cloud NLB) writes one header before the client's
//! first byte, telling the client's real address. Parsing is the `ppp` crate's; this layer
//! decides when enough bytes are in, bounds them, and passes everything after the header up
//! untouched.
//!
//! ```text
//! v1:  "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n"          at most 107 bytes
//! v2:  \r\n\r\n\0\r\nQUIT\n | ver/cmd | fam/proto | len (u16 BE) | addresses | TLVs
//!      └──────── 12 ───────┘    1          1           2        └── len bytes ──┘
//! ```
//!
//! Limits, each closing only its connection with a counted reason:
//! - a v1 header longer than 107 bytes (the specification's bound) or a v2 header longer than
//!   [`MAX_V2_HEADER`] (4 KiB, fixed part included; the specification allows 64 KiB, HAProxy's
//!   headers with TLVs are a few hundred bytes): `proxy-header` ("oversized");
//! - bytes that are no header in [`ProxyProtocol::Required`] mode: `proxy-header` ("missing");
//! - a header `ppp` refuses: `proxy-header` ("malformed");
//! - no complete header within the server's proxy header timeout (default
//!   [`DEFAULT_PROXY_HEADER_TIMEOUT`]): `proxy-header-timeout`.
//!
//! Held bytes are bounded by the largest header: the layer decides as soon as it can.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ppp::v1;
use ppp::v2;
use ppp::PartialResult;

use super::{Input, Layer};
use crate::info::{CloseReason, ConnInfo, ProxyInfo, ProxyVersion};

/// How long a connection has to deliver its PROXY header by default.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest v2 header accepted (16 fixed bytes, addresses and TLVs).
pub const MAX_V2_HEADER: usize = 4096;
/// The largest v1 header (the specification's bound, CRLF included).
pub const MAX_V1_HEADER: usize = 107;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
/// Signature, version/command, family/protocol and the length field.
const V2_FIXED: usize = 16;

/// Whether a server's connections must start with a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Every connection starts with a v1 or v2 header; one that does not is closed
    /// (`proxy-header`). For servers reached only through the balancer.
    Required,
    /// A connection may start with a header (v1 or v2) or with the protocol's own bytes:
    /// bytes that can still become a header are held until they can no longer (`PROXY ` or
    /// the v2 signature diverges), then passed up untouched. A client whose protocol may
    /// itself begin with `PROXY ` must not be served in this mode.
    Optional,
}

impl std::str::FromStr for ProxyProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "required" => Ok(ProxyProtocol::Required),
            "optional" => Ok(ProxyProtocol::Optional),
            other => Err(format!(
                "unknown PROXY protocol mode {other:?} (required|optional)"
            )),
        }
    }
}

/// What the bytes held so far are.
enum Verdict {
    /// Not decided yet: more bytes are needed.
    Wait,
    /// A complete header of this many bytes, and what it says.
    Header(usize, Option<ProxyInfo>),
    /// No header: the bytes belong to the protocol above.
    None,
}

pub(crate) struct ProxyLayer {
    mode: ProxyProtocol,
    /// Bytes received while undecided (at most one header's worth).
    held: Vec<u8>,
    done: bool,
    /// Bytes seen at all (an EOF before any is a plain close, not a refused header).
    seen: bool,
    info: Option<ProxyInfo>,
    deadline: Instant,
}

impl ProxyLayer {
    pub(crate) fn new(mode: ProxyProtocol, timeout: Duration) -> ProxyLayer {
        ProxyLayer {
            mode,
            held: Vec::new(),
            done: false,
            seen: false,
            info: None,
            deadline: Instant::now() + timeout,
        }
    }

    fn classify(&self) -> Result<Verdict, CloseReason> {
        let b = &self.held[..];
        if b.len() >= V2_SIGNATURE.len() && b.starts_with(V2_SIGNATURE) {
            return v2_verdict(b);
        }
        if b.len() >= V1_PREFIX.len() && b.starts_with(V1_PREFIX) {
            return v1_verdict(b);
        }
        let prefix_of = |sig: &[u8]| b.len() < sig.len() && sig.starts_with(b);
        if prefix_of(V2_SIGNATURE) || prefix_of(V1_PREFIX) {
            return Ok(Verdict::Wait);
        }
        match self.mode {
            ProxyProtocol::Optional => Ok(Verdict::None),
            ProxyProtocol::Required => Err(refused(
                "missing (the connection did not start with a PROXY header)",
            )),
        }
    }
}

fn refused(what: &str) -> CloseReason {
    CloseReason::ProxyHeader(what.to_string())
}

fn v1_verdict(b: &[u8]) -> Result<Verdict, CloseReason> {
    // The specification's reading: wait for the LF (within 107 bytes), then parse the line.
    // (`ppp` on a partial line can mistake a cut-off field for a bad one.)
    let Some(lf) = b.iter().take(MAX_V1_HEADER).position(|&c| c == b'\n') else {
        return if b.len() >= MAX_V1_HEADER {
            Err(refused("oversized (a v1 header is at most 107 bytes)"))
        } else {
            Ok(Verdict::Wait)
        };
    };
    let b = &b[..=lf];
    match v1::Header::try_from(b) {
        Ok(h) => {
            let len = h.header.len();
            let info = match h.addresses {
                v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                v1::Addresses::Unknown => None,
            };
            Ok(Verdict::Header(
                len,
                Some(ProxyInfo {
                    version: ProxyVersion::V1,
                    local: info.is_none(),
                    source: info.map(|i| i.0),
                    destination: info.map(|i| i.1),
                }),
            ))
        }
        Err(v1::BinaryParseError::Parse(v1::ParseError::HeaderTooLong)) => {
            Err(refused("oversized (a v1 header is at most 107 bytes)"))
        }
        Err(e) => Err(CloseReason::ProxyHeader(format!(
            "malformed v1 header: {e}"
        ))),
    }
}

fn v2_verdict(b: &[u8]) -> Result<Verdict, CloseReason> {
    if b.len() >= V2_FIXED {
        let len = V2_FIXED + u16::from_be_bytes([b[14], b[15]]) as usize;
        if len > MAX_V2_HEADER {
            return Err(CloseReason::ProxyHeader(format!(
                "oversized ({len}-byte v2 header, at most {MAX_V2_HEADER})"
            )));
        }
    }
    match v2::Header::try_from(b) {
        Ok(h) => {
            if let Some(Err(e)) = h.tlvs().find(Result::is_err) {
                return Err(CloseReason::ProxyHeader(format!("malformed v2 TLVs: {e}")));
            }
            let addrs = match h.addresses {
                v2::Addresses::IPv4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                v2::Addresses::IPv6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                // Unix sockets and unspecified families say nothing usable about the client.
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            };
            // LOCAL: the balancer speaks for itself (a health check): keep the socket's address.
            let local = h.command == v2::Command::Local;
            let addrs = if local { None } else { addrs };
            Ok(Verdict::Header(
                h.len(),
                Some(ProxyInfo {
                    version: ProxyVersion::V2,
                    local: local || addrs.is_none(),
                    source: addrs.map(|a| a.0),
                    destination: addrs.map(|a| a.1),
                }),
            ))
        }
        Err(e) if e.is_incomplete() => Ok(Verdict::Wait),
        Err(e) => Err(CloseReason::ProxyHeader(format!(
            "malformed v2 header: {e}"
        ))),
    }
}

impl Layer for ProxyLayer {
    fn start(&mut self, _down: &mut Vec<u8>) -> Result<(), CloseReason> {
        Ok(())
    }

    fn input(
        &mut self,
        data: &[u8],
        up: &mut Vec<u8>,
        _down: &mut Vec<u8>,
    ) -> Result<Input, CloseReason> {
        if self.done {
            up.extend_from_slice(data);
            return Ok(Input::default());
        }
        self.seen |= !data.is_empty();
        // Only what a header can still need is copied; the rest waits in `data`.
        let room = MAX_V2_HEADER.saturating_sub(self.held.len());
        let take = data.len().min(room);
        self.held.extend_from_slice(&data[..take]);
        let (used, info) = match self.classify()? {
            Verdict::Wait if take < data.len() => {
                // Cannot happen (every header is decided within MAX_V2_HEADER bytes); refuse
                // rather than hold more.
                return Err(refused("oversized"));
            }
            Verdict::Wait => {
                // Progress without a loop: every byte given is held (and held bytes are
                // bounded), or the header is decided.
                debug_assert!(take == data.len() && self.held.len() <= MAX_V2_HEADER);
                return Ok(Input::default());
            }
            Verdict::Header(len, info) => (len, info),
            Verdict::None => (0, None),
        };
        self.done = true;
        self.info = info;
        up.extend_from_slice(&self.held[used..]);
        up.extend_from_slice(&data[take..]);
        self.held = Vec::new();
        Ok(Input::default())
    }

    fn output(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), CloseReason> {
        down.extend_from_slice(data); // the header goes one way only
        Ok(())
    }

    fn close(&mut self, _down: &mut Vec<u8>) {}

    fn ready(&self) -> bool {
        self.done
    }

    fn names_client(&self) -> bool {
        true
    }

    /// A header not complete yet (at most [`MAX_V2_HEADER`] bytes of it): memory the
    /// connection holds for its peer, charged to its footprint like any input it holds.
    fn held(&self) -> usize {
        self.held.capacity()
    }

    fn describe(&self, info: &mut ConnInfo) {
        if let Some(p) = &self.info {
            if let Some(src) = p.source {
                info.client = src;
            }
            info.proxy = Some(Box::new(p.clone()));
        }
    }

    fn timeout_reason(&self) -> CloseReason {
        CloseReason::ProxyHeaderTimeout
    }

    fn setup_deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }

    fn eof_reason(&self) -> CloseReason {
        if self.seen {
            refused("incomplete (EOF before the header ended)")
        } else {
            // Connected and closed without a byte (a TCP health check): nothing was refused.
            CloseReason::PeerClosed
        }
    }
}

/// The PROXY header an outgoing connection begins with (`ConnectOptions::send_proxy`): that
/// `source` connected to `destination`, over TCP. Addresses of different families are both
/// given as IPv6 (the IPv4 one mapped), which both versions can carry.
pub(crate) fn header(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyVersion::V1 => v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        .expect("a v2 header of two TCP addresses is written to a Vec"),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
