//! Socket options applied to every connection of a server, or to one outgoing connection.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

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
    /// probes (`None`: keepalive off, the kernel default).
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
            let mut ka = TcpKeepalive::new().with_time(idle);
            if let Some(i) = interval {
                ka = ka.with_interval(i);
            }
            s.set_tcp_keepalive(&ka)?;
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
