//! Socket options applied to every connection of a server, or to one outgoing connection.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// The keepalive interval used on Windows when none is given: Windows' own default
/// (`KeepAliveInterval`, 1 s; after 10 unanswered probes the connection is dropped).
/// `SIO_KEEPALIVE_VALS` sets the idle time and the interval together, and socket2 passes a
/// missing interval as 0.
pub(crate) const WINDOWS_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// TCP options for a connection. The default is TCP_NODELAY on (replies are small and
/// batched by the engine already), everything else as the kernel sets it.
///
/// ```
/// use std::time::Duration;
/// use ringport::SocketOptions;
/// let opts = SocketOptions::default()
///     .keepalive(Some(Duration::from_secs(30)), Some(Duration::from_secs(10)))
///     .send_buffer(Some(256 << 10));
/// assert!(opts.nodelay);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// TCP_NODELAY (default on).
    pub nodelay: bool,
    /// SO_KEEPALIVE with its idle time before the first probe and the interval between
    /// probes (`None`: keepalive off, the kernel default). An interval of `None` leaves the
    /// kernel's interval on Linux; on Windows it is 1 s, Windows' own default (the one
    /// Windows call sets both, and an interval left out would be sent as 0).
    pub keepalive: Option<(Duration, Option<Duration>)>,
    /// SO_SNDBUF in bytes (`None`: the kernel's default and autotuning).
    pub send_buffer: Option<usize>,
    /// SO_RCVBUF in bytes (`None`: the kernel's default and autotuning).
    pub recv_buffer: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: true,
            keepalive: None,
            send_buffer: None,
            recv_buffer: None,
        }
    }
}

impl SocketOptions {
    /// TCP_NODELAY on or off.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }
    /// Keepalive probes after `idle` without traffic, every `interval` (`None` for `idle`:
    /// keepalive off).
    pub fn keepalive(mut self, idle: Option<Duration>, interval: Option<Duration>) -> Self {
        self.keepalive = idle.map(|i| (i, interval));
        self
    }
    /// SO_SNDBUF.
    pub fn send_buffer(mut self, bytes: Option<usize>) -> Self {
        self.send_buffer = bytes;
        self
    }
    /// SO_RCVBUF.
    pub fn recv_buffer(mut self, bytes: Option<usize>) -> Self {
        self.recv_buffer = bytes;
        self
    }

    /// Applies the options to a connected (or connecting) socket.
    pub(crate) fn apply(&self, s: SockRef<'_>) -> io::Result<()> {
        s.set_tcp_nodelay(self.nodelay)?;
        if let Some((idle, interval)) = self.keepalive {
            s.set_tcp_keepalive(&keepalive(idle, interval))?;
        }
        if let Some(n) = self.send_buffer {
            s.set_send_buffer_size(n)?;
        }
        if let Some(n) = self.recv_buffer {
            s.set_recv_buffer_size(n)?;
        }
        Ok(())
    }
}

/// What is handed to socket2 for keepalive after `idle`, every `interval`: on Windows always
/// with an interval ([`WINDOWS_KEEPALIVE_INTERVAL`] when none is given), since socket2 sends
/// a missing one to `SIO_KEEPALIVE_VALS` as 0 (see [`SocketOptions::keepalive`]).
fn keepalive(idle: Duration, interval: Option<Duration>) -> TcpKeepalive {
    let interval = if cfg!(windows) {
        Some(interval.unwrap_or(WINDOWS_KEEPALIVE_INTERVAL))
    } else {
        interval
    };
    let ka = TcpKeepalive::new().with_time(idle);
    match interval {
        Some(i) => ka.with_interval(i),
        None => ka,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boundary with socket2: the `TcpKeepalive` given to `set_tcp_keepalive` (socket2
    /// turns a missing interval into 0 for `SIO_KEEPALIVE_VALS`; Wine skips a 0 interval and
    /// cannot read TCP_KEEPINTVL back, so the value is checked where it leaves ringport).
    #[test]
    fn keepalive_interval_is_explicit_on_windows() {
        let idle = Duration::from_secs(30);
        let given = format!("{:?}", keepalive(idle, Some(Duration::from_secs(7))));
        assert!(given.contains("interval: Some(7s)"), "{given}");
        let none = format!("{:?}", keepalive(idle, None));
        assert!(none.contains("time: Some(30s)"), "{none}");
        if cfg!(windows) {
            assert!(none.contains("interval: Some(1s)"), "{none}");
        } else {
            assert!(none.contains("interval: None"), "the kernel's own: {none}");
        }
    }
}
