//! `chat_server` in a small cgroup: 200 members that never read (and never send) while a few
//! fast talkers flood the room. Every line goes to every member, so each talker's line becomes
//! 200 queued copies: the members' backlogs are what fills memory, charged to the budget
//! through the members' connections (handle writes, then their queues).

use super::*;

backend_tests!("chat_server"; chat_200_silent_members_and_talkers_in_64_mib);

/// A chat client: its greeting read, non-blocking from then on.
fn chat_client(addr: SocketAddr, rcvbuf: Option<usize>) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).ok()?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .ok()?;
    let mut sock: TcpStream = s.into();
    let greeting = read_exact_timeout(&mut sock, 10, Duration::from_secs(10)).ok()?;
    (greeting == b"+OK chat\r\n").then_some(())?;
    sock.set_nonblocking(true).ok()?;
    Some(sock)
}

/// Talkers send 1,000-byte lines as fast as they can and read (and discard) what the room
/// sends them, so that they are readers that keep up.
fn talk(mut talkers: Vec<TcpStream>, stop: Arc<AtomicBool>) {
    let mut line = vec![b'x'; 998];
    line.extend_from_slice(b"\r\n");
    let chunk = line.repeat(16);
    let mut offs = vec![0usize; talkers.len()];
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        let mut progress = false;
        for (t, off) in talkers.iter_mut().zip(offs.iter_mut()) {
            if let Ok(n) = t.write(&chunk[*off..]) {
                *off = (*off + n) % chunk.len();
                progress |= n > 0;
            }
            while let Ok(n) = t.read(&mut buf) {
                if n == 0 {
                    break;
                }
                progress = true;
            }
        }
        if !progress {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether a new client is served: its `NICK` answered `+OK` (among the room's lines).
fn newcomer_served(addr: SocketAddr) -> bool {
    let Some(mut s) = chat_client(addr, None) else {
        return false;
    };
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(Duration::from_secs(3))).is_err()
        || s.write_all(b"NICK newbie\r\n").is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.split(|&b| b == b'\n').any(|l| l == b"+OK\r") {
            return true;
        }
        // Keep only the unfinished last line.
        if let Some(i) = got.iter().rposition(|&b| b == b'\n') {
            got.drain(..=i);
        }
    }
    false
}

fn chat_200_silent_members_and_talkers_in_64_mib(backend: Backend) {
    let limit = 64 * MIB;
    let cgroup = format!("chat-{}", backend.name());
    let Some((_serial, cg, mut server)) =
        start_in_cgroup(&cgroup, "chat_server", backend, limit, &[], 2048)
    else {
        return;
    };
    let addr = server.addr;
    let budget = metric(&scrape(&server), "ringport_memory_budget_bytes", "");
    let members: Vec<TcpStream> = (0..200)
        .filter_map(|_| chat_client(addr, Some(4096)))
        .collect();
    assert_eq!(members.len(), 200, "every silent member joined");
    let talkers: Vec<TcpStream> = (0..8).filter_map(|_| chat_client(addr, None)).collect();
    assert_eq!(talkers.len(), 8, "every talker joined");
    let stop = Arc::new(AtomicBool::new(false));
    let talk_thread = {
        let stop = stop.clone();
        thread::spawn(move || talk(talkers, stop))
    };
    let hold = Duration::from_secs(8);
    let under = "under 200 silent members and 8 talkers";
    hold_within_limit(&mut server, &cg, backend, limit, hold, under, |_| {});
    // A newcomer's NICK is answered while the talkers go on (refused at first, maybe).
    served_within_20_s(backend, "a newcomer", || newcomer_served(addr));
    stop.store(true, Ordering::Relaxed);
    talk_thread.join().expect("talk thread");

    // Which silent members the server dropped: a write to one fails once it was reset.
    let dropped = members
        .iter()
        .filter(|m| (&mut &**m).write(b"x").is_err())
        .count() as u64;
    let m = scrape(&server);
    let actions = overload_actions(&m);
    let peak = metric(&m, "ringport_memory_used_peak_bytes", "");
    let slow = closed(&m, "slow-consumer");
    println!(
        "{backend}: budget {} MiB, peak {} MiB, actions {actions:?}, members dropped {dropped}, closed slow-consumer {slow} overload {}",
        budget / MIB,
        peak / MIB,
        closed(&m, "overload"),
    );
    assert!(
        peak <= budget,
        "the budget's charge peaked at {peak} bytes, past the {budget}-byte budget"
    );
    // Every member the server dropped is counted: reset for the budget (`overload`), or
    // disconnected by the room's stall rule (`slow-consumer`).
    assert!(
        dropped <= actions[3].1 + slow,
        "members dropped {dropped} but resets + slow disconnects counted {} + {slow}",
        actions[3].1
    );
    drop(members);
    drop(server);
    drop(cg);
}
