//! Every IO thread serves connections, on every backend. On Linux each IO thread has its own
//! SO_REUSEPORT listener and the kernel spreads connections over them by hash; on Windows one
//! listening socket is shared, and on `iocp` (where only one completion port can own it) the
//! accepting thread hands connections round robin to every IO thread. A connection's id carries
//! the index of the IO thread serving it in its top 16 bits (`ConnInfo::id`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
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
