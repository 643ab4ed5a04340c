//! Backend-level tests of the IOCP backend (run under Wine in CI).

use super::*;
use op::MAX_SEND;
use std::io::{Read, Write};
use std::mem;
use std::time::Instant;
use windows_sys::Win32::Networking::WinSock::{WSAECONNABORTED, WSAENOBUFS, WSAEWOULDBLOCK};

fn backend() -> IocpBackend {
    IocpBackend::new(&BackendConfig {
        recv_buffer_size: 4096,
        recv_buffer_count: 2,
        ring_entries: 8,
    })
    .expect("completion port")
}

/// Waits (bounded) until `want` matches an event; every event seen goes to `seen`.
fn until(b: &mut IocpBackend, seen: &mut Vec<String>, want: impl Fn(&Event<'_>) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        b.wait(Some(Duration::from_millis(50))).expect("wait");
        while let Some(ev) = b.next() {
            let hit = want(&ev);
            seen.push(format!("{ev:?}"));
            if hit {
                return;
            }
        }
        assert!(Instant::now() < end, "timed out; events: {seen:?}");
    }
}

/// Accepts one connection through AcceptEx and registers it as token 0.
fn accepted(b: &mut IocpBackend) -> (std::net::TcpStream, Vec<String>) {
    let l = super::super::bind_listeners("127.0.0.1:0".parse().unwrap(), 16, 1, false)
        .unwrap()
        .remove(0);
    let addr = l.local_addr().unwrap();
    b.add_listener(0, l).unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let mut seen = Vec::new();
    let mut stream = None;
    let end = Instant::now() + Duration::from_secs(10);
    while stream.is_none() {
        assert!(Instant::now() < end, "no accept; events: {seen:?}");
        b.wait(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = b.next() {
            match ev {
                Event::Accepted { stream: s, .. } => stream = Some(s),
                other => seen.push(format!("{other:?}")),
            }
        }
    }
    b.register(0, stream.unwrap()).unwrap();
    (client, seen)
}

#[test]
fn data_then_eof_through_zero_byte_receives() {
    let mut b = backend();
    let (mut client, mut seen) = accepted(&mut b);
    client.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while got.len() < 5 {
        assert!(Instant::now() < end, "no data; events: {seen:?}");
        b.wait(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = b.next() {
            if let Event::Data { data, .. } = ev {
                got.extend_from_slice(data);
            } else {
                seen.push(format!("{ev:?}"));
            }
        }
    }
    assert_eq!(got, b"hello");
    client.shutdown(Shutdown::Write).unwrap();
    until(&mut b, &mut seen, |e| {
        matches!(e, Event::ReadClosed { token: 0 })
    });
    b.send(0, b"bye".to_vec());
    until(&mut b, &mut seen, |e| {
        matches!(e, Event::SendDone { token: 0, .. })
    });
    let mut reply = [0u8; 3];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"bye");
    b.close(0, false);
    until(&mut b, &mut seen, |e| {
        matches!(e, Event::Closed { token: 0 })
    });
    assert_eq!(
        b.in_flight, ACCEPTS_PER_LISTENER,
        "only the listener's accepts remain"
    );
    b.shutdown(Duration::from_secs(2));
    assert_eq!(b.in_flight, 0);
}

#[test]
fn close_with_a_send_in_flight_reports_only_closed_once() {
    let mut b = backend();
    let (client, mut seen) = accepted(&mut b);
    // The client never reads: a large send stays in flight.
    b.send(0, vec![7u8; 64 << 20]);
    b.wait(Some(Duration::from_millis(100))).unwrap();
    while b.next().is_some() {}
    b.close(0, true);
    until(&mut b, &mut seen, |e| {
        matches!(e, Event::Closed { token: 0 })
    });
    // Nothing else for the token, ever: not the send's result, not a second Closed.
    b.wait(Some(Duration::from_millis(200))).unwrap();
    while let Some(ev) = b.next() {
        seen.push(format!("{ev:?}"));
    }
    let about_0 = seen.iter().filter(|s| s.contains("token: 0")).count();
    assert_eq!(about_0, 1, "{seen:?}");
    assert!(b.conns.iter().all(Option::is_none));
    drop(client);
    b.shutdown(Duration::from_secs(2));
    assert_eq!(b.in_flight, 0);
}

#[test]
fn waker_interrupts_an_unbounded_wait() {
    let mut b = backend();
    let w = b.waker();
    let t = std::thread::spawn(move || {
        w.wake();
        w.wake(); // coalesced with the first while it waits in the port
    });
    let start = Instant::now();
    b.wait(None).unwrap();
    assert!(matches!(b.next(), Some(Event::Wake)));
    assert!(b.next().is_none());
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
}

#[test]
fn a_large_send_reports_progress_per_piece_then_done() {
    let mut b = backend();
    let (mut client, mut seen) = accepted(&mut b);
    let len = 4 * MAX_SEND + 1000;
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        client.read_exact(&mut got).map(|()| got)
    });
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    b.send(0, data.clone());
    let mut progress = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let back = 'done: loop {
        assert!(Instant::now() < end, "no SendDone; events: {seen:?}");
        b.wait(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = b.next() {
            match ev {
                Event::SendProgress { token: 0, sent } => progress.push(sent),
                Event::SendDone { token: 0, buf } => break 'done buf,
                other => seen.push(format!("{other:?}")),
            }
        }
    };
    // Every WSASend carries at most MAX_SEND bytes, and each but the last is progress.
    assert!(progress.len() >= 4, "progress: {progress:?}");
    assert!(
        progress.iter().all(|&n| n > 0 && n <= MAX_SEND),
        "{progress:?}"
    );
    assert!(progress.iter().sum::<usize>() < len, "{progress:?}");
    assert_eq!(back, data, "the buffer comes back whole");
    assert_eq!(reader.join().unwrap().unwrap(), data);
    b.close(0, false);
    until(&mut b, &mut seen, |e| {
        matches!(e, Event::Closed { token: 0 })
    });
    b.shutdown(Duration::from_secs(2));
}

/// Drives the zero-byte receive of a fresh connection into failing at once with `error` (a
/// resource error real Windows gives and Wine does not) up to 1000 times in a row: the
/// connection must get that read error from the first failure, with no retry. (Before the fix
/// the failure re-queued a `recv`, which said `WSAEWOULDBLOCK` and re-posted the receive: the
/// IO thread spun inside one `next()` for as long as the failure lasted.)
fn immediate_recv_failure_is_a_read_error(error: i32) {
    let mut b = backend();
    fault::inject(fault::Call::Recv, error, 1000);
    let (client, mut seen) = accepted(&mut b);
    let mut got = None;
    let end = Instant::now() + Duration::from_secs(5);
    while got.is_none() {
        assert!(
            Instant::now() < end,
            "no read error after {} WSARecv attempts; events: {seen:?}",
            fault::attempts()
        );
        b.wait(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = b.next() {
            match ev {
                Event::ReadError { token: 0, error } => got = Some(error),
                other => seen.push(format!("{other:?}")),
            }
        }
    }
    assert_eq!(got.unwrap().raw_os_error(), Some(error));
    assert_eq!(fault::attempts(), 1, "one WSARecv, no retry loop");
    fault::clear();
    // The connection still closes cleanly, and nothing else is outstanding for it.
    b.close(0, true);
    until(&mut b, &mut seen, |e| {
        matches!(e, Event::Closed { token: 0 })
    });
    assert_eq!(b.in_flight, ACCEPTS_PER_LISTENER, "{seen:?}");
    drop(client);
    b.shutdown(Duration::from_secs(2));
    assert_eq!(b.in_flight, 0);
}

#[test]
fn a_zero_byte_receive_failing_with_enobufs_is_a_read_error_not_a_spin() {
    immediate_recv_failure_is_a_read_error(WSAENOBUFS);
}

#[test]
fn a_zero_byte_receive_failing_with_wouldblock_is_a_read_error_not_a_spin() {
    immediate_recv_failure_is_a_read_error(WSAEWOULDBLOCK);
}

/// Binds a listener (backlog 1024, through `bind_listeners` as the engine does) as id 0.
fn listening(b: &mut IocpBackend) -> SocketAddr {
    let l = super::super::bind_listeners("127.0.0.1:0".parse().unwrap(), 1024, 1, false)
        .unwrap()
        .remove(0);
    let addr = l.local_addr().unwrap();
    b.add_listener(0, l).unwrap();
    addr
}

#[test]
fn an_accept_aborted_by_its_peer_is_reposted_quietly() {
    let mut b = backend();
    let addr = listening(&mut b);
    assert_eq!(b.in_flight, ACCEPTS_PER_LISTENER);
    // The next AcceptEx completes with WSAECONNABORTED (the peer gave up before we took it).
    fault::inject(fault::Call::AcceptDone, WSAECONNABORTED, 1);
    let _first = std::net::TcpStream::connect(addr).unwrap();
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while fault::attempts() == 0 {
        assert!(
            Instant::now() < end,
            "no accept completion; events: {seen:?}"
        );
        b.wait(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = b.next() {
            seen.push(format!("{ev:?}"));
        }
    }
    fault::clear();
    assert!(
        !seen.iter().any(|s| s.contains("AcceptError")),
        "an aborted accept is no accept error: {seen:?}"
    );
    let l = b.listeners[0].as_ref().unwrap();
    assert!(!l.paused, "accepting goes on");
    assert_eq!(l.pending, ACCEPTS_PER_LISTENER, "the accept was re-posted");
    // And the next client is accepted.
    let _second = std::net::TcpStream::connect(addr).unwrap();
    until(&mut b, &mut seen, |e| matches!(e, Event::Accepted { .. }));
    b.shutdown(Duration::from_secs(2));
    assert_eq!(b.in_flight, 0);
}

#[test]
fn thirty_two_accepts_outstanding_take_a_burst() {
    let mut b = backend();
    let addr = listening(&mut b);
    assert_eq!(
        b.in_flight, 32,
        "AcceptEx calls outstanding (libuv keeps 32)"
    );
    // A burst while the IO thread does not turn: the outstanding accepts and the backlog take
    // it, then every connection is accepted.
    const BURST: usize = 100;
    let clients: Vec<_> = (0..BURST)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut accepted = 0;
    let mut other = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while accepted < BURST {
        assert!(
            Instant::now() < end,
            "{accepted} of {BURST} accepted; {other:?}"
        );
        b.wait(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = b.next() {
            match ev {
                Event::Accepted { .. } => accepted += 1,
                ev => other.push(format!("{ev:?}")),
            }
        }
    }
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(b.in_flight, 32, "refilled");
    drop(clients);
    b.shutdown(Duration::from_secs(2));
}

#[test]
fn the_backlog_is_passed_as_somaxconn_hint() {
    assert_eq!(listen_backlog(1024), -1024);
    assert_eq!(listen_backlog(0), -1);
    assert_eq!(listen_backlog(i32::MAX), -65535);
}

/// Each `WSASend` piece stays under the socket's send buffer (KB 823764: a send that fills it
/// completes only at the last segment's ACK, which a delayed ACK holds up to 200 ms).
#[test]
fn send_pieces_stay_under_the_send_buffer() {
    let mut b = backend();
    let (mut client, mut seen) = accepted(&mut b);
    let sock = &b.conns[0].as_ref().unwrap().sock;
    sock.set_send_buffer_size(16 << 10).unwrap();
    // Read back as the backend reads it (a Linux host under Wine doubles the value set).
    let sndbuf = sock.send_buffer_size().unwrap();
    assert!(
        sndbuf < MAX_SEND,
        "the test needs a send buffer under MAX_SEND: {sndbuf}"
    );
    let len = 1 << 20;
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        client.read_exact(&mut got).map(|()| got)
    });
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    b.send(0, data.clone());
    let mut progress = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    'done: loop {
        assert!(Instant::now() < end, "no SendDone; events: {seen:?}");
        b.wait(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = b.next() {
            match ev {
                Event::SendProgress { token: 0, sent } => progress.push(sent),
                Event::SendDone { token: 0, .. } => break 'done,
                other => seen.push(format!("{other:?}")),
            }
        }
    }
    assert!(
        progress.iter().all(|&n| n > 0 && n < sndbuf),
        "pieces {progress:?} vs SO_SNDBUF {sndbuf}"
    );
    assert_eq!(reader.join().unwrap().unwrap(), data);
    b.shutdown(Duration::from_secs(2));
}

/// `Server::exclusive_address`: the listener is bound with SO_EXCLUSIVEADDRUSE (read back), and
/// a second socket cannot bind the port, not even with SO_REUSEADDR.
#[test]
fn an_exclusive_listener_keeps_its_port() {
    use windows_sys::Win32::Networking::WinSock::{getsockopt, SOL_SOCKET, SO_EXCLUSIVEADDRUSE};
    let l = super::super::bind_listeners("127.0.0.1:0".parse().unwrap(), 16, 1, true)
        .unwrap()
        .remove(0);
    let addr = l.local_addr().unwrap();
    let sock = Socket::from(l);
    let mut on: i32 = 0;
    let mut len = mem::size_of::<i32>() as i32;
    // SAFETY: an open socket; the out buffer is an i32 of `len` bytes.
    let rc = unsafe {
        getsockopt(
            raw(&sock),
            SOL_SOCKET,
            SO_EXCLUSIVEADDRUSE,
            (&mut on as *mut i32).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(SO_EXCLUSIVEADDRUSE): {}", wsa_error());
    assert_eq!(on, 1);
    let other = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    other.set_reuse_address(true).unwrap();
    assert!(
        other.bind(&addr.into()).is_err(),
        "the port is held exclusively"
    );
}

/// The base provider's socket (`SIO_BASE_HANDLE`) is found; without a layered provider (Wine,
/// and Windows without one) it is the socket itself, which is then not cancelled twice.
#[test]
fn the_base_handle_of_a_socket_without_a_layered_provider_is_itself() {
    let mut b = backend();
    let (client, mut seen) = accepted(&mut b);
    let sock = raw(&b.conns[0].as_ref().unwrap().sock);
    assert_eq!(op::base_handle(sock), Some(sock));
    // The close cancels the zero-byte receive through `cancel_all` and completes.
    b.close(0, false);
    until(&mut b, &mut seen, |e| {
        matches!(e, Event::Closed { token: 0 })
    });
    drop(client);
    b.shutdown(Duration::from_secs(2));
    assert_eq!(b.in_flight, 0);
}

/// A connect to a loopback port nobody listens on fails promptly. On Windows 10 1709 and later
/// this holds only with `SIO_TCP_INITIAL_RTO`'s no-SYN-retransmission (otherwise about 2 s);
/// under Wine (Linux's TCP answers the SYN with a reset) it checks that the ioctl, applied or
/// refused, leaves the connect working.
#[test]
fn a_refused_loopback_connect_fails_promptly() {
    let mut b = backend();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // the listener is dropped: nobody listens there now
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let start = Instant::now();
    b.connect(0, sock, addr);
    let mut seen = Vec::new();
    let result = 'done: loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no Connected; events: {seen:?}"
        );
        b.wait(Some(Duration::from_millis(50))).unwrap();
        while let Some(ev) = b.next() {
            match ev {
                Event::Connected { token: 0, result } => break 'done result,
                other => seen.push(format!("{other:?}")),
            }
        }
    };
    let took = start.elapsed();
    let err = result.expect_err("nobody listens");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_millis(1500), "refused after {took:?}");
    b.close(0, true);
    until(&mut b, &mut seen, |e| {
        matches!(e, Event::Closed { token: 0 })
    });
    b.shutdown(Duration::from_secs(2));
}
