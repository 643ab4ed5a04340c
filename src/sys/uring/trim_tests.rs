//! The buffer ring gives its pages back after a quiet spell (`bufring::Trim`,
//! `RINGPORT_URING_TRIM`): the rule on its own, then on a live ring.

use super::bufring::{BufRing, Trim};
use super::tests::{accept_as, backend, listen, pattern, turn, Ev, LIMIT};
use super::*;
use std::io::Write;

const MS: Duration = Duration::from_millis(1);

#[test]
fn the_rule_sums_quiet_waits_and_starts_again_on_a_receive() {
    let mut bufs = BufRing::new(4, 4096).unwrap();
    let mut trim = Trim::new(30 * MS);
    // Nothing received yet: nothing to release, the engine's timeout stands.
    assert_eq!(trim.timeout(&bufs, None), None);
    assert!(!trim.timed_out());
    assert_eq!(trim.timeout(&bufs, Some(5 * MS)), Some(5 * MS));
    assert!(!trim.timed_out());

    bufs.consumed(0, 64, false);
    // A wait without a timer of its own is cut to the release; a shorter timer stands.
    assert_eq!(trim.timeout(&bufs, None), Some(30 * MS));
    assert_eq!(trim.timeout(&bufs, Some(10 * MS)), Some(10 * MS));
    assert!(!trim.timed_out()); // quiet 10 ms
    assert_eq!(trim.timeout(&bufs, Some(15 * MS)), Some(15 * MS));
    assert!(!trim.timed_out()); // quiet 25 ms
    assert_eq!(trim.timeout(&bufs, None), Some(5 * MS), "what is left");

    // A receive starts the quiet time again.
    bufs.consumed(1, 64, false);
    assert_eq!(trim.timeout(&bufs, Some(100 * MS)), Some(30 * MS));
    assert!(trim.timed_out(), "30 ms quiet");
    // Not while a buffer is out (lent to the engine or kept): its bytes may be unread.
    bufs.recycle(0);
    bufs.release_pages();
    assert!(bufs.resident);
    assert_eq!(bufs.releases, 0);
    // Released: the rule stays out of the way until the next receive.
    bufs.recycle(1);
    bufs.release_pages();
    assert!(!bufs.resident);
    assert_eq!(bufs.releases, 1);
    assert_eq!(trim.timeout(&bufs, None), None);
    assert!(!trim.timed_out());
    bufs.consumed(2, 64, false);
    assert_eq!(trim.timeout(&bufs, None), Some(30 * MS));
}

#[test]
fn a_quiet_ring_gives_its_pages_back_and_still_receives() {
    const COUNT: u16 = 64;
    let Some(mut b) = backend(COUNT, 4096) else {
        return;
    };
    if b.recv_mode == tuning::Recv::Own {
        println!("skipped: RINGPORT_URING_RECV=own does not use the buffer ring");
        return;
    }
    let deferred =
        tuning::tuning().setup == tuning::Setup::Defer && b.ring.params().is_setup_single_issuer();
    if !deferred {
        println!("skipped: the ring has no DEFER_TASKRUN (RINGPORT_URING_SETUP or an old kernel)");
        return;
    }
    // Whatever RINGPORT_URING_TRIM says: 30 ms, below the 20 ms turns' sum of two.
    b.trim = Some(Trim::new(30 * MS));
    let addr = listen(&mut b);
    let mut client = TcpStream::connect(addr).unwrap();
    accept_as(&mut b, 1);

    // One 64-byte message at a time: each takes the next buffer of the ring (or, with
    // RINGPORT_URING_INC=on, the next 64 bytes of one), so pages become resident.
    let mut got = Vec::new();
    let mut sent = Vec::new();
    let send_one = |client: &mut TcpStream, sent: &mut Vec<u8>, seed: usize| {
        let msg = pattern(seed, 64);
        client.write_all(&msg).unwrap();
        sent.extend(msg);
    };
    let collect = |b: &mut UringBackend, got: &mut Vec<u8>, want: usize| {
        let end = Instant::now() + LIMIT;
        while got.len() < want {
            for ev in turn(b) {
                match ev {
                    Ev::Data(1, data) => got.extend(data),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(Instant::now() < end, "timed out with {} bytes", got.len());
        }
    };
    for seed in 0..usize::from(COUNT) / 2 {
        send_one(&mut client, &mut sent, seed);
        collect(&mut b, &mut got, sent.len());
    }
    assert_eq!(got, sent);
    let touched = b.bufs.resident_pages();
    assert!(touched >= 1, "no buffer page resident after 32 receives");

    // Quiet turns: the pages go back once 30 ms have passed without a receive.
    let end = Instant::now() + LIMIT;
    while b.bufs.releases == 0 {
        assert!(turn(&mut b).is_empty());
        assert!(Instant::now() < end, "the pages were never released");
    }
    assert_eq!(
        b.bufs.resident_pages(),
        0,
        "{touched} pages resident before the release"
    );

    // The ring still receives, intact, into fresh pages.
    send_one(&mut client, &mut sent, 99);
    collect(&mut b, &mut got, sent.len());
    assert_eq!(got, sent);
    assert!(b.bufs.resident_pages() >= 1);
    drop(client);
    b.shutdown(LIMIT);
    assert_eq!(b.in_flight, 0);
}
