//! `RINGPORT_URING_RECV=own` forced on one backend (whatever the environment says): data in
//! pieces, pausing, a close while a receive is armed, and no buffer left lent afterwards.

use super::tests::{accept_as, backend, listen, pattern, turn, Ev, LIMIT};
use super::*;
use std::io::Write;
use std::net::Shutdown;

/// Turns until `want` bytes arrived for `token`; every chunk fits one buffer of `size`.
fn collect(b: &mut UringBackend, token: Token, want: usize, size: usize) -> Vec<u8> {
    let (mut got, end) = (Vec::new(), Instant::now() + LIMIT);
    while got.len() < want {
        for ev in turn(b) {
            match ev {
                Ev::Data(t, data) if t == token => {
                    assert!(
                        !data.is_empty() && data.len() <= size,
                        "chunk {}",
                        data.len()
                    );
                    got.extend(data);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(Instant::now() < end, "timed out with {} bytes", got.len());
    }
    got
}

/// Turns until the token's recv and any cancel of it have completed.
fn settle(b: &mut UringBackend, token: Token) {
    let end = Instant::now() + LIMIT;
    loop {
        assert!(turn(b).is_empty());
        let c = b.conn(token).unwrap();
        if !c.recv && !c.recv_cancel {
            return;
        }
        assert!(Instant::now() < end, "cancel never completed");
    }
}

#[test]
fn own_buffers_in_pieces_pause_close_and_no_leak() {
    const SIZE: usize = 1024;
    let Some(mut b) = backend(16, SIZE) else {
        return;
    };
    let (forced, bad) =
        tuning::parse(|name| (name == "RINGPORT_URING_RECV").then(|| "own".to_string()));
    assert!(bad.is_empty());
    assert_eq!(forced.recv, tuning::Recv::Own);
    b.recv_mode = forced.recv;
    let addr = listen(&mut b);

    // Data in pieces, one larger than a buffer: chunks of at most SIZE, in order.
    let mut client = TcpStream::connect(addr).unwrap();
    accept_as(&mut b, 1);
    let mut sent = Vec::new();
    for piece in [b"ping".to_vec(), pattern(1, 3 * SIZE + 100), b"x".to_vec()] {
        client.write_all(&piece).unwrap();
        sent.extend_from_slice(&piece);
        let got = collect(&mut b, 1, piece.len(), SIZE);
        assert!(got == piece, "data damaged or reordered");
    }
    // Re-armed on the same buffer at the next turn: one buffer lent, held by the kernel.
    assert!(turn(&mut b).is_empty());
    let c = b.conn(1).unwrap();
    assert!(c.recv && c.own.as_ref().is_some_and(|buf| buf.capacity() >= SIZE));
    assert_eq!(b.own.lent, 1);

    // Paused: the recv is cancelled and its buffer goes back; nothing arrives until resumed.
    b.set_reading(1, false);
    b.set_reading(1, true);
    b.set_reading(1, false); // a quick toggle must never arm a second recv
    settle(&mut b, 1);
    assert!(b.conn(1).unwrap().own.is_none(), "buffer kept while paused");
    assert_eq!(b.own.lent, 0);
    client.write_all(b"while paused").unwrap();
    for _ in 0..5 {
        assert!(turn(&mut b).is_empty(), "data while paused");
    }
    b.set_reading(1, true);
    assert_eq!(collect(&mut b, 1, 12, SIZE), b"while paused");

    // A second connection closed while its receive is armed: one Closed, nothing else.
    let second = TcpStream::connect(addr).unwrap();
    accept_as(&mut b, 2);
    assert!(turn(&mut b).is_empty());
    assert!(b.conn(2).unwrap().recv && b.conn(2).unwrap().own.is_some());
    assert_eq!(b.own.lent, 2);
    b.close(2, false);
    let end = Instant::now() + LIMIT;
    while b.conn(2).is_some() {
        for ev in turn(&mut b) {
            assert!(matches!(ev, Ev::Closed(2)), "unexpected {ev:?}");
        }
        assert!(Instant::now() < end, "close never completed");
    }
    assert_eq!(
        b.own.lent, 1,
        "the closed connection's buffer was not returned"
    );
    drop(second);

    // EOF ends reading: no re-arm, the buffer goes back; then the close.
    client.shutdown(Shutdown::Write).unwrap();
    let end = Instant::now() + LIMIT;
    loop {
        let events = turn(&mut b);
        if events.iter().any(|ev| matches!(ev, Ev::ReadClosed(1))) {
            break;
        }
        assert!(events.is_empty(), "unexpected {events:?}");
        assert!(Instant::now() < end, "no EOF");
    }
    assert_eq!(b.own.lent, 0);
    b.close(1, false);
    let end = Instant::now() + LIMIT;
    while b.conn(1).is_some() {
        for ev in turn(&mut b) {
            assert!(matches!(ev, Ev::Closed(1)), "unexpected {ev:?}");
        }
        assert!(Instant::now() < end, "close never completed");
    }
    // Two buffers were ever needed at once; both are back on the free list.
    assert_eq!((b.own.lent, b.own.free_count()), (0, 2));
    b.shutdown(LIMIT);
    assert_eq!(b.in_flight, 0);
}
