//! The uring backend at its edges: sockets it could not close in time are still closed (the
//! peer learns, no descriptor leaks), outgoing sockets are non-blocking, and a short send
//! reports its progress.

use super::*;
use std::io::{Read, Write};
use std::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(20);

fn backend() -> Option<UringBackend> {
    let config = BackendConfig {
        recv_buffer_size: 4096,
        recv_buffer_count: 64,
        ring_entries: 64,
    };
    if let Err(reason) = probe(&config) {
        if std::env::var_os("RINGPORT_TEST_REQUIRE_URING").is_some_and(|v| v != "0") {
            panic!("io_uring required (RINGPORT_TEST_REQUIRE_URING) but unavailable: {reason}");
        }
        println!("skipped: io_uring unavailable: {reason}");
        return None;
    }
    Some(UringBackend::new(&config).expect("probe passed but new failed"))
}

/// Accepts one connection through the ring and registers it as `token`.
fn accept(b: &mut UringBackend, token: Token) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    b.add_listener(0, listener).unwrap();
    let client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let end = Instant::now() + LIMIT;
    loop {
        b.wait(Some(Duration::from_millis(20))).unwrap();
        let mut accepted = None;
        while let Some(ev) = b.next() {
            if let Event::Accepted { stream, .. } = ev {
                accepted = Some(stream);
            }
        }
        if let Some(stream) = accepted {
            b.register(token, stream).unwrap();
            return client;
        }
        assert!(Instant::now() < end, "no accept");
    }
}

/// The inode of the file `fd` names now, or `None` if it is not open. Tests run in parallel
/// threads of one process, so a closed number may at once name another test's socket: the
/// inode tells the two apart.
fn inode(fd: RawFd) -> Option<libc::ino_t> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes one `stat` into the buffer given; it is read only when fstat
    // succeeded (an invalid fd gives EBADF).
    unsafe { (libc::fstat(fd, st.as_mut_ptr()) == 0).then(|| st.assume_init().st_ino) }
}

#[test]
fn connections_left_at_the_shutdown_deadline_are_reset_and_closed() {
    let Some(mut b) = backend() else { return };
    let mut client = accept(&mut b, 3);
    b.wait(Some(Duration::ZERO)).unwrap(); // the multishot recv is in the kernel now
    let fd = b.conns[3].as_ref().unwrap().fd;
    let socket = inode(fd).expect("the connection's descriptor is open");
    // A deadline of zero: the ring cannot finish anything; the connection is forgotten with
    // its operations still in flight, as when the drain deadline passes.
    b.shutdown(Duration::ZERO);
    assert!(b.in_flight > 0, "the test needs operations left in flight");
    drop(b);
    assert_ne!(
        inode(fd),
        Some(socket),
        "the descriptor of a forgotten connection leaked"
    );
    // The peer learns at once (reset or EOF), instead of waiting forever.
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("the peer did not learn the connection is gone: {other:?}"),
    }
}

#[test]
fn outgoing_sockets_are_non_blocking() {
    let Some(mut b) = backend() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    b.connect(5, socket, addr);
    let fd = b.conns[5].as_ref().unwrap().fd;
    // SAFETY: F_GETFL only reads the descriptor's status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(flags & libc::O_NONBLOCK != 0, "outgoing socket is blocking");
    b.shutdown(LIMIT);
}

#[test]
fn a_short_send_reports_progress_before_it_is_done() {
    let Some(mut b) = backend() else { return };
    let mut client = accept(&mut b, 1);
    // A small send buffer: 4 MiB cannot go in one piece while the client reads slowly.
    let fd = b.conns[1].as_ref().unwrap().fd;
    // SAFETY: borrows `fd` for one setsockopt; the backend keeps owning it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed)
        .set_send_buffer_size(8192)
        .unwrap();
    let total = 4 << 20;
    b.send(1, vec![9u8; total]);
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        let mut buf = vec![0u8; 65536];
        while got < total {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
        client.write_all(b"x").unwrap();
        got
    });
    let (mut progress, mut done) = (0usize, false);
    let end = Instant::now() + LIMIT;
    while !done {
        b.wait(Some(Duration::from_millis(20))).unwrap();
        while let Some(ev) = b.next() {
            match ev {
                Event::SendProgress { token: 1, sent } => progress += sent,
                Event::SendDone { token: 1, buf } => {
                    assert_eq!(buf.len(), total);
                    done = true;
                }
                _ => {}
            }
        }
        assert!(Instant::now() < end, "send never finished");
    }
    assert_eq!(reader.join().unwrap(), total);
    assert!(
        progress > 0 && progress < total,
        "no progress reported ({progress})"
    );
    b.shutdown(LIMIT);
}
