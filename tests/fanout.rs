//! `ringport::fanout::Room`: a fast talker with readers that keep up and one member that never
//! reads. The never-reader is dropped after the stall timeout, counted (`dropped_slow`, its
//! close `local`); every other reader gets every message, in order; what waits for the
//! never-reader stays within its high watermark plus one message. Library-level, on every
//! backend. `Topics`: a topic's room lives exactly while it has members; a publisher that is
//! not a member reaches every member and is told how many.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringport::codec::Lines;
use ringport::fanout::{Member, Room, Topics};
use ringport::{
    BackendKind, CloseReason, Conn, ConnectionHandle, Frame, Handler, Server, SocketOptions,
};
use support::net::{connect_small_rcvbuf, expect_closed};

on_every_backend!(
    a_never_reader_is_dropped_and_the_readers_that_keep_up_get_everything,
    a_topic_is_made_by_its_first_member_and_dropped_with_its_last,
);

/// Publishes every line it reads (with its terminator); tells the test its handle on open.
struct Publisher {
    room: Arc<Room>,
    member: Option<Member>,
    opened: mpsc::Sender<ConnectionHandle>,
}

impl Handler for Publisher {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        self.member = Some(self.room.join(conn));
        let _ = self.opened.send(conn.handle());
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let msg = [frame.payload(), b"\n"].concat();
        if let Some(m) = &mut self.member {
            m.publish(conn, msg);
        }
    }
    fn on_writable(&mut self, conn: &mut Conn<'_>, value: u64) {
        if let Some(m) = &mut self.member {
            m.on_writable(conn, value);
        }
    }
    fn on_timer(&mut self, conn: &mut Conn<'_>, id: u64) {
        if let Some(m) = &mut self.member {
            m.on_timer(conn, id);
        }
    }
}

const READERS: usize = 4;
const MESSAGES: usize = 20_000;
const LINE: usize = 100; // bytes per message, newline included
const HIGH: usize = 64 << 10;
const STALL: Duration = Duration::from_millis(1500);

fn a_never_reader_is_dropped_and_the_readers_that_keep_up_get_everything(kind: BackendKind) {
    let Some(mut engine) = support::engine(kind, 2) else {
        return;
    };
    let room = Arc::new(Room::new(STALL));
    let (tx, opened) = mpsc::channel();
    let tx = Mutex::new(tx);
    let r = room.clone();
    let server = engine
        .add_server(
            Server::new(
                "127.0.0.1:0".parse().unwrap(),
                Lines::new(4096),
                move |_| Publisher {
                    room: r.clone(),
                    member: None,
                    opened: tx.lock().unwrap().clone(),
                },
            )
            .write_watermarks(HIGH / 4, HIGH)
            // Small kernel buffers: what the never-reader does not read waits in the room
            // soon, not in megabytes of socket buffers.
            .socket_options(SocketOptions::default().send_buffer(Some(16 << 10))),
        )
        .unwrap();
    let addr: SocketAddr = server.local_addr();
    let running = engine.start().unwrap();
    let wait_open = || {
        opened
            .recv_timeout(Duration::from_secs(10))
            .expect("on_open")
    };

    // The never-reader first (a small receive buffer: the room's queue fills soon).
    let mut never = connect_small_rcvbuf(addr, 4096);
    let never_handle = wait_open();
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            wait_open();
            thread::spawn(move || read_all(s, i))
        })
        .collect();
    let mut talker = TcpStream::connect(addr).unwrap();
    wait_open();
    assert_eq!(room.len(), READERS + 2);

    let began = Instant::now();
    let talk = thread::spawn(move || {
        let mut batch = Vec::with_capacity(100 * LINE);
        for n in 0..MESSAGES {
            batch.extend_from_slice(format!("{n:08} {}\n", "x".repeat(LINE - 10)).as_bytes());
            if batch.len() >= 100 * LINE {
                talker.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        talker.write_all(&batch).unwrap();
        talker
    });
    // What waits for the never-reader, sampled until it is dropped.
    let mut most_queued = 0;
    while never_handle.is_open() {
        most_queued = most_queued.max(never_handle.queued_bytes());
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the never-reader is still in the room after 60 s"
        );
        thread::sleep(Duration::from_millis(2));
    }
    let dropped_after = began.elapsed();
    let _talker = talk.join().unwrap();
    for r in readers {
        let got = r.join().unwrap();
        assert_eq!(got, MESSAGES, "a reader that keeps up gets every message");
    }
    let (_, how) = expect_closed(&mut never, Duration::from_secs(10), "the never-reader");
    println!(
        "never-reader dropped after {dropped_after:?} (stall {STALL:?}); most queued for it: \
         {most_queued} B (high {HIGH} B); it ended by {how:?}; all {READERS} readers got \
         {MESSAGES} messages"
    );
    assert_eq!(room.dropped_slow(), 1, "counted once");
    assert!(
        dropped_after >= STALL,
        "dropped only after the stall timeout"
    );
    assert!(
        most_queued <= HIGH + LINE,
        "bounded: {most_queued} B queued for the never-reader"
    );
    let stats = server.stats().snapshot();
    assert_eq!(stats.closed_by(&CloseReason::SlowConsumer), 1, "{stats:?}");
    drop(never);
    running.shutdown_handle().shutdown();
    running.join();
    assert!(room.is_empty(), "every member left with its connection");
}

/// Reads lines until `MESSAGES` have come, checking their order; the count.
fn read_all(s: TcpStream, reader: usize) -> usize {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    for n in 0..MESSAGES {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return n,
            Ok(_) => {}
        }
        let seq: usize = line[..8].parse().unwrap();
        assert_eq!(seq, n, "reader {reader}: message {n} out of order");
    }
    MESSAGES
}

/// `SUB topic` joins (answers `+OK`), `PUB topic msg` publishes as a non-member publisher
/// (answers `+OK n`), through a shared `Topics`.
struct Subscriber {
    topics: Arc<Topics>,
    subs: Vec<Member>,
}

impl Handler for Subscriber {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let line = String::from_utf8_lossy(frame.payload()).into_owned();
        if let Some(topic) = line.strip_prefix("SUB ") {
            self.subs.push(self.topics.join(topic.as_bytes(), conn));
            conn.write(b"+OK\n");
        } else if let Some((topic, msg)) = line.strip_prefix("PUB ").and_then(|r| r.split_once(' '))
        {
            let mut p = self.topics.publisher(topic.as_bytes(), conn);
            let n = p
                .as_mut()
                .map_or(0, |p| p.publish(conn, format!("{msg}\n").into_bytes()));
            assert!(!p.is_some_and(|p| p.is_waiting()), "a few bytes never wait");
            conn.write(format!("+OK {n}\n").as_bytes());
        }
    }
}

fn a_topic_is_made_by_its_first_member_and_dropped_with_its_last(kind: BackendKind) {
    let Some(mut engine) = support::engine(kind, 2) else {
        return;
    };
    let topics = Arc::new(Topics::new(STALL));
    let t = topics.clone();
    let server = engine
        .add_server(Server::new(
            "127.0.0.1:0".parse().unwrap(),
            Lines::new(4096),
            move |_| Subscriber {
                topics: t.clone(),
                subs: Vec::new(),
            },
        ))
        .unwrap();
    let addr = server.local_addr();
    let running = engine.start().unwrap();
    let client = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (s.try_clone().unwrap(), BufReader::new(s))
    };
    let ask = |c: &mut (TcpStream, BufReader<TcpStream>), line: &str| {
        c.0.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        c.1.read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    };
    let (mut a, mut b, mut p) = (client(), client(), client());
    assert_eq!(ask(&mut a, "SUB news"), "+OK");
    assert_eq!(ask(&mut b, "SUB news"), "+OK");
    assert_eq!(ask(&mut b, "SUB sport"), "+OK");
    assert_eq!((topics.len(), topics.members(b"news")), (2, 2));
    assert_eq!(ask(&mut p, "PUB news hello"), "+OK 2");
    assert_eq!(ask(&mut p, "PUB weather rain"), "+OK 0");
    assert_eq!(topics.len(), 2, "a publisher makes no topic");
    let mut got = String::new();
    a.1.read_line(&mut got).unwrap();
    assert_eq!(got, "hello\n");
    // b leaves both topics with its connection: sport goes, news stays with a.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while topics.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "b's topics never left: {}",
            topics.len()
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(topics.members(b"news"), 1);
    assert_eq!(topics.members(b"sport"), 0);
    drop(a);
    while !topics.is_empty() {
        assert!(
            Instant::now() < deadline,
            "news never left with its last member"
        );
        thread::sleep(Duration::from_millis(5));
    }
    // The topic is made again by a new first member.
    assert_eq!(ask(&mut p, "SUB news"), "+OK");
    assert_eq!(topics.members(b"news"), 1);
    drop(p);
    running.shutdown_handle().shutdown();
    running.join();
    assert!(topics.is_empty(), "every member left with its connection");
}
