#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! `chat_server`: greeting, NICK, broadcast to every other member in order per sender, QUIT,
//! and a member that stops reading disconnected once its backlog passes `--max-backlog` while
//! the others go on. Each test runs once per backend.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::*;

backend_tests!("chat_server";
    greeting_nick_broadcast_and_quit,
    delivery_is_in_order_per_sender,
    slow_member_is_disconnected_others_go_on,
);

struct Member {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Member {
    fn join(s: &Server) -> Member {
        let w = s.connect();
        w.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut m = Member {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        };
        assert_eq!(m.line(), "+OK chat");
        m
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("a line");
        assert!(l.ends_with("\r\n"), "line {l:?} not terminated by CRLF");
        l.trim_end().to_string()
    }
    fn send(&mut self, text: &str) {
        self.w.write_all(format!("{text}\r\n").as_bytes()).unwrap();
    }
}

fn greeting_nick_broadcast_and_quit(backend: Backend) {
    let s = Server::start("chat_server", backend, &[]);
    let mut a = Member::join(&s);
    let mut b = Member::join(&s);
    a.send("NICK ada");
    assert_eq!(a.line(), "+OK");
    a.send("hello all");
    assert_eq!(b.line(), "ada: hello all");
    b.send("hi ada");
    let got = a.line();
    assert!(
        got.starts_with("anon") && got.ends_with(": hi ada"),
        "unnamed sender shows as anon<id>: {got:?}"
    );
    a.send("QUIT");
    assert_eq!(a.line(), "+BYE");
    let (_, closed) = expect_closed(&mut a.w, IO_TIMEOUT, "after QUIT");
    assert!(
        matches!(closed, Closed::Eof),
        "QUIT closes gracefully: {closed:?}"
    );
    // b is still served.
    let mut c = Member::join(&s);
    c.send("NICK cy");
    assert_eq!(c.line(), "+OK");
    c.send("still here?");
    assert_eq!(b.line(), "cy: still here?");
}

fn delivery_is_in_order_per_sender(backend: Backend) {
    let s = Server::start("chat_server", backend, &[]);
    let mut senders: Vec<Member> = (0..3).map(|_| Member::join(&s)).collect();
    let mut reader = Member::join(&s);
    for (i, m) in senders.iter_mut().enumerate() {
        m.send(&format!("NICK s{i}"));
        assert_eq!(m.line(), "+OK");
    }
    let writers: Vec<_> = senders
        .into_iter()
        .map(|mut m| {
            thread::spawn(move || {
                let name = m.w.local_addr().unwrap();
                let _ = name;
                let mut batch = String::new();
                for n in 0..2000 {
                    batch.push_str(&format!("m{n}\r\n"));
                }
                m.w.write_all(batch.as_bytes()).unwrap();
                m // keep the member connected until the reader is done
            })
        })
        .collect();
    let mut next = [0usize; 3];
    for _ in 0..6000 {
        let l = reader.line();
        let (who, msg) = l.split_once(": ").expect("nick: text");
        let i: usize = who.trim_start_matches('s').parse().expect("sender index");
        assert_eq!(msg, format!("m{}", next[i]), "out of order from {who}");
        next[i] += 1;
    }
    assert_eq!(next, [2000; 3]);
    for w in writers {
        drop(w.join().unwrap());
    }
}

fn slow_member_is_disconnected_others_go_on(backend: Backend) {
    let mut s = Server::start("chat_server", backend, &["--max-backlog", "262144"]);
    let mut a = Member::join(&s);
    let mut b = Member::join(&s);
    a.send("NICK ada");
    assert_eq!(a.line(), "+OK");
    b.send("NICK bea");
    assert_eq!(b.line(), "+OK");
    let rss0 = s.rss_kib();
    // The slow member: joins, then never reads (tiny receive buffer).
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow.set_recv_buffer_size(4096).unwrap();
    slow.connect(&s.addr.into()).unwrap();
    let mut slow: TcpStream = slow.into();
    slow.write_all(b"NICK slow\r\nI am here\r\n").unwrap();
    assert_eq!(b.line(), "slow: I am here"); // it is in the room
    assert_eq!(a.line(), "slow: I am here");
    // 8 MB of chat from ada, in batches that bea reads as they come: bea never falls more
    // than one batch (50 KB) behind; the slow member falls behind without bound.
    let line = "x".repeat(1000);
    for batch in 0..160 {
        let mut text = String::new();
        for n in 0..50 {
            text.push_str(&format!("{} {line}\r\n", batch * 50 + n));
        }
        a.w.write_all(text.as_bytes()).unwrap();
        for n in 0..50 {
            assert_eq!(
                b.line(),
                format!("ada: {} {line}", batch * 50 + n),
                "bea missed or reordered a line"
            );
        }
    }
    assert!(
        s.wait_for_stderr(IO_TIMEOUT, |e| e.contains("member does not read")),
        "the slow member's disconnection is logged"
    );
    let growth_mib = s.rss_kib().saturating_sub(rss0) / 1024;
    assert!(
        growth_mib < 32,
        "server RSS grew {growth_mib} MiB for one slow member"
    );
    // The slow member was disconnected: after what its buffers held, a reset or EOF.
    let _ = expect_closed(&mut slow, Duration::from_secs(30), "the slow member");
    // The room goes on.
    b.send("still chatting");
    assert_eq!(a.line(), "bea: still chatting");
    s.assert_alive("after the slow member");
}
