//! [`ListenAddr`]: where a server listens, a TCP address or a Unix domain socket path, as
//! `--listen` spells it (`127.0.0.1:5001`, `[::1]:5001`, `unix:/run/app.sock`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use crate::Error;

/// Where a server listens: a TCP address, or a Unix domain socket (stream) path.
///
/// Parsed from `IP:PORT` (`127.0.0.1:0`, `[::1]:5001`) or `unix:PATH` (`unix:/run/app.sock`,
/// `unix:echo.sock`: relative to the working directory); displayed the same way, so that a
/// `listening on {}` line can be parsed back.
///
/// ```
/// # use ringport::ListenAddr;
/// let tcp: ListenAddr = "127.0.0.1:5001".parse()?;
/// assert_eq!(tcp.tcp(), Some("127.0.0.1:5001".parse()?));
/// let unix: ListenAddr = "unix:/tmp/app.sock".parse()?;
/// assert_eq!(unix.to_string(), "unix:/tmp/app.sock");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address (port 0: any free port).
    Tcp(SocketAddr),
    /// A Unix domain socket path (Linux and the other unixes; on Windows adding such a server
    /// fails with a clear error).
    Unix(PathBuf),
}

/// What [`ConnInfo::peer`](crate::ConnInfo::peer), `local` and `client` hold for a
/// connection over a Unix domain socket, which has no IP address: `0.0.0.0:0`.
pub const UNIX_PLACEHOLDER_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl ListenAddr {
    /// The TCP address, if this is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }

    /// The socket path, if this is a Unix domain socket.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        match self {
            ListenAddr::Tcp(_) => None,
            ListenAddr::Unix(p) => Some(p),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        ListenAddr::Tcp(a)
    }
}

impl FromStr for ListenAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::Config(
                    "empty Unix socket path (expected unix:PATH)".into(),
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            Error::Config(format!(
                "bad listen address {s:?} (expected IP:PORT or unix:PATH)"
            ))
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_addresses_parse_and_print_back() {
        for s in [
            "127.0.0.1:0",
            "[::1]:5001",
            "unix:/tmp/a.sock",
            "unix:rel.sock",
        ] {
            let a: ListenAddr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        let u: ListenAddr = "unix:/tmp/a.sock".parse().unwrap();
        assert_eq!(u.unix_path(), Some(std::path::Path::new("/tmp/a.sock")));
        assert_eq!(u.tcp(), None);
    }

    #[test]
    fn a_bad_listen_address_is_a_one_line_error() {
        for s in ["", "unix:", "localhost", "127.0.0.1", "1.2.3.4:99999"] {
            let e = s.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(!e.contains('\n') && e.contains("unix"), "{s:?}: {e}");
        }
    }
}
