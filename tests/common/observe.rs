//! Watching a server from outside without sleeping: the kernel's queues of a TCP connection
//! (netlink sock_diag), and the counters an example server logs when it stops.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::{tail, Server};

/// The kernel's `(send queue, receive queue)` of the TCP socket from `local` to `remote` in this
/// network namespace (IPv4), asked of the kernel by exact address through netlink sock_diag
/// (the table of `/proc/net/tcp` is walked whole, which takes seconds on a busy machine). The
/// receive queue is what the socket's process has not read yet; the send queue what the peer
/// has not acknowledged.
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    use socket2::{Domain, Protocol, Socket, Type};
    const NETLINK_SOCK_DIAG: i32 = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    let (SocketAddr::V4(l), SocketAddr::V4(r)) = (local, remote) else {
        panic!("tcp_queues: IPv4 only ({local} -> {remote})");
    };
    // nlmsghdr (16 bytes), then inet_diag_req_v2 (56 bytes).
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.push(libc::AF_INET as u8);
    req.push(libc::IPPROTO_TCP as u8);
    req.push(0); // no extensions
    req.push(0);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // any state
    req.extend_from_slice(&l.port().to_be_bytes());
    req.extend_from_slice(&r.port().to_be_bytes());
    for ip in [l.ip(), r.ip()] {
        req.extend_from_slice(&ip.octets());
        req.extend_from_slice(&[0u8; 12]);
    }
    req.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    req.extend_from_slice(&[0xFFu8; 8]); // INET_DIAG_NOCOOKIE
    debug_assert_eq!(req.len(), 72);
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(NETLINK_SOCK_DIAG)),
    )
    .expect("netlink sock_diag socket");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&sock).write_all(&req).expect("netlink request");
    let mut resp = [0u8; 512];
    let n = (&sock).read(&mut resp).expect("netlink reply");
    let u32_at = |o: usize| u32::from_ne_bytes(resp[o..o + 4].try_into().unwrap());
    let kind = u16::from_ne_bytes([resp[4], resp[5]]);
    if n < 16 || kind == NLMSG_ERROR {
        return None; // no such socket (ENOENT)
    }
    assert_eq!(
        kind, SOCK_DIAG_BY_FAMILY,
        "unexpected netlink reply type {kind}"
    );
    assert!(n >= 16 + 72, "short sock_diag reply ({n} bytes)");
    // inet_diag_msg: family, state, timer, retrans, id (48), expires, rqueue, wqueue, ...
    let (rqueue, wqueue) = (u32_at(16 + 56), u32_at(16 + 60));
    Some((u64::from(wqueue), u64::from(rqueue)))
}

/// Waits until the server has read everything each of `clients` sent: the client's send queue
/// is empty and the server's socket of that connection holds nothing unread. This is how a
/// test knows that a request reached the server's handler path, without sleeping.
pub fn wait_server_read_all_of(clients: &[&TcpStream], what: &str) {
    let pairs: Vec<(SocketAddr, SocketAddr)> = clients
        .iter()
        .map(|c| (c.local_addr().unwrap(), c.peer_addr().unwrap()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states: Vec<_> = pairs
            .iter()
            .map(|&(me, server)| (tcp_queues(me, server), tcp_queues(server, me)))
            .collect();
        if states
            .iter()
            .all(|s| matches!(s, (Some((0, _)), Some((_, 0)))))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s; (client, server) (send, receive) queues: {states:?}"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// [`wait_server_read_all_of`] for one client.
pub fn wait_server_read_all(client: &TcpStream, what: &str) {
    wait_server_read_all_of(&[client], what);
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`), as a log line reads on a terminal.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The counters an example server logs for each of its servers when it stops
/// (`stopped addr=.. stats=StatsSnapshot { accepted: .., .., closed: [..] }`).
#[derive(Debug, Clone, Default)]
pub struct FinalStats {
    pub counters: HashMap<String, u64>,
    /// Indexed by `ringport::CloseReason::index`.
    pub closed: Vec<u64>,
}

impl FinalStats {
    /// A counter by its `StatsSnapshot` field name; panics if the line did not have it.
    pub fn get(&self, name: &str) -> u64 {
        *self
            .counters
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name:?} in the final stats {self:?}"))
    }
    /// Connections closed for this reason.
    pub fn closed_by(&self, reason: &ringport::CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// Every `stopped` line of a server's stderr, parsed.
    pub fn parse_all(stderr: &str) -> Vec<FinalStats> {
        let text = strip_ansi(stderr);
        text.lines()
            .filter(|l| l.contains(" stopped ") && l.contains("stats=StatsSnapshot {"))
            .map(|l| {
                let body = &l[l.find("StatsSnapshot {").unwrap() + "StatsSnapshot {".len()..];
                // `closed: {"drain-timeout": 0, "flush-stalled": 0, ...}`, keyed by reason name.
                let (scalars, closed) = body.split_once("closed: {").expect("closed: {..}");
                let counters = scalars
                    .split(',')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once(':')?;
                        Some((k.trim().to_string(), v.trim().parse().ok()?))
                    })
                    .collect();
                let named: HashMap<String, u64> = closed
                    .split('}')
                    .next()
                    .unwrap()
                    .split(',')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once(':')?;
                        Some((
                            k.trim().trim_matches('"').to_string(),
                            v.trim().parse().ok()?,
                        ))
                    })
                    .collect();
                let closed = ringport::CloseReason::NAMES
                    .iter()
                    .map(|n| named.get(*n).copied().unwrap_or(0))
                    .collect();
                FinalStats { counters, closed }
            })
            .collect()
    }
}

impl Server {
    /// The counters the server logged when it stopped (it must have exited, with one server).
    pub fn final_stats(&self) -> FinalStats {
        assert!(
            self.exit.is_some(),
            "final_stats: the server is still running"
        );
        self.stderr.wait_closed(Duration::from_secs(5));
        let all = FinalStats::parse_all(&self.stderr.text());
        assert_eq!(
            all.len(),
            1,
            "expected one `stopped ... stats=` line, stderr:\n{}",
            tail(&self.stderr.text(), 4000)
        );
        all.into_iter().next().unwrap()
    }
}
