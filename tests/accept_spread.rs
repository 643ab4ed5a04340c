//! Every IO thread serves connections, on every backend. On Linux each IO thread has its own
//! SO_REUSEPORT listener and the kernel spreads connections over them by hash; on Windows one
//! listening socket is shared, and on `iocp` (where only one completion port can own it) the
//! accepting thread hands connections round robin to every IO thread. A connection's id carries
//! the index of the IO thread serving it in its top 16 bits (`ConnInfo::id`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
#[cfg(not(windows))]
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use ringport::codec::Raw;
use ringport::{BackendKind, Conn, Frame, Handler, Server};

const THREADS: usize = 4;
const CONNECTIONS: usize = 32;

struct Echo;
impl Handler for Echo {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
}

fn connections_are_served_by_every_io_thread(kind: BackendKind) {
    let Some(mut engine) = support::engine(kind, THREADS) else {
        return;
    };
    let (tx, threads) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = engine
        .add_server(Server::new(
            "127.0.0.1:0".parse().unwrap(),
            Raw,
            move |info| {
                let _ = tx.lock().unwrap().send((info.id >> 48) as usize);
                Echo
            },
        ))
        .unwrap();
    let running = engine.start().unwrap();
    // One at a time, each answered before the next connects: a round robin is then exact.
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let mut c = TcpStream::connect(server.local_addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&[i as u8]).unwrap();
        let mut echo = [0u8; 1];
        c.read_exact(&mut echo).expect("the echo");
        assert_eq!(echo[0], i as u8);
        clients.push(c);
    }
    let mut per_thread = [0usize; THREADS];
    for _ in 0..CONNECTIONS {
        let t = threads.recv_timeout(Duration::from_secs(10)).unwrap();
        per_thread[t] += 1;
    }
    println!("{kind:?}: connections per IO thread {per_thread:?}");
    if kind == BackendKind::Iocp {
        // One thread accepts and hands connections round robin: exactly even.
        assert_eq!(per_thread, [CONNECTIONS / THREADS; THREADS]);
    } else {
        // The kernel spreads them (SO_REUSEPORT hash, or threads racing to accept): all on one
        // thread has a chance of 4^-31 for independent choices.
        let used = per_thread.iter().filter(|&&n| n > 0).count();
        assert!(
            used > 1,
            "every connection on one IO thread: {per_thread:?}"
        );
    }
    drop(clients);
    running.shutdown_handle().shutdown();
    running.join();
}

on_every_backend!(connections_are_served_by_every_io_thread);

#[cfg(not(windows))]
/// Reports each connection's local port and IO thread (the top 16 bits of its id) on open.
struct WhereServed(mpsc::Sender<(u16, u64)>);
#[cfg(not(windows))]
impl Handler for WhereServed {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let info = conn.info();
        let _ = self.0.send((info.local.port(), info.id >> 48));
    }
    fn on_frame(&mut self, _: &mut Conn<'_>, _: Frame<'_>) {}
}

/// Where each IO thread has its own listening socket (epoll, io_uring), a connection is
/// served by the thread that accepted it: no hand-off (that is IOCP's, whose one socket
/// accepts for every thread). Two IO threads are given one listener each, on two ports, so
/// which thread accepts is known: every connection to the second port must be on thread 1,
/// to the first on thread 0 (two of each, in turn).
#[cfg(not(windows))]
fn connections_stay_on_the_thread_that_accepted_them(kind: BackendKind) {
    let Some(mut engine) = support::engine(kind, 2) else {
        return;
    };
    let listeners: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    engine
        .add_server_with_listeners(
            Server::new("127.0.0.1:0".parse().unwrap(), Raw, move |_| {
                WhereServed(tx.lock().unwrap().clone())
            }),
            listeners,
        )
        .unwrap();
    let running = engine.start().unwrap();
    let mut clients = Vec::new();
    for thread in [1, 1, 0, 0] {
        let port = ports[thread];
        clients.push(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap());
        let (local, served_by) = rx.recv_timeout(Duration::from_secs(10)).expect("on_open");
        assert_eq!(local, port);
        assert_eq!(
            served_by, thread as u64,
            "accepted by IO thread {thread}'s listener (port {port}), served by thread {served_by}"
        );
    }
    drop(clients);
    running.shutdown_handle().shutdown();
    running.join();
}

#[cfg(not(windows))]
mod accept_thread {
    #[test]
    fn epoll() {
        super::connections_stay_on_the_thread_that_accepted_them(ringport::BackendKind::Epoll)
    }
    #[test]
    fn uring() {
        super::connections_stay_on_the_thread_that_accepted_them(ringport::BackendKind::Uring)
    }
}
