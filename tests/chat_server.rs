#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! `chat_server`: greeting, NICK, broadcast to every other member in order per sender, QUIT;
//! a fast sender slowed to its readers' pace (a steady reader is never disconnected), a member
//! that stops reading disconnected after `--stall-timeout` while the others go on; control
//! characters never relayed. Each test runs once per backend.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

backend_tests!("chat_server";
    greeting_nick_broadcast_and_quit,
    delivery_is_in_order_per_sender,
    slow_member_is_disconnected_others_go_on,
    a_steady_reader_gets_everything_from_a_fast_sender,
    a_never_reader_is_dropped_while_a_steady_reader_keeps_up,
    control_characters_are_not_relayed,
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
    let mut s = Server::start(
        "chat_server",
        backend,
        &["--max-backlog", "262144", "--stall-timeout", "2"],
    );
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
    assert_eq!(slow_disconnects_at_exit(&mut s), 1);
}

/// SIGTERM, then the `slow_disconnects` count of the server's last log line.
fn slow_disconnects_at_exit(s: &mut Server) -> u64 {
    s.signal(libc::SIGTERM);
    let status = s
        .wait_exit(Duration::from_secs(15))
        .expect("exit after SIGTERM");
    assert_clean_exit(status, libc::SIGTERM, "chat_server");
    // The process has exited, but the stderr collector may not have read its last lines yet.
    s.wait_for_stderr(Duration::from_secs(5), |t| t.contains("chat room closed"));
    let text = strip_ansi(&s.stderr_text());
    let line = text
        .lines()
        .find(|l| l.contains("chat room closed"))
        .unwrap_or_else(|| panic!("no `chat room closed` line:\n{}", tail(&text, 2000)));
    line.split("slow_disconnects=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no slow_disconnects in {line:?}"))
}

const PAD: usize = 1000;

/// `n` lines of about 1 KB, numbered, sent as fast as the socket takes them.
fn flood(mut w: TcpStream, lines: usize) -> thread::JoinHandle<TcpStream> {
    thread::spawn(move || {
        let pad = "x".repeat(PAD);
        let mut batch = String::with_capacity(70_000);
        for n in 0..lines {
            batch.push_str(&format!("{n} {pad}\r\n"));
            if batch.len() >= 64 << 10 || n + 1 == lines {
                w.write_all(batch.as_bytes()).expect("the sender's writes");
                batch.clear();
            }
        }
        w
    })
}

/// Reads `lines` lines `<nick>: <n> <pad>` in order, steadily: a 64 KiB read every
/// millisecond at most (up to 64 MB/s, slower than a sender on loopback); returns the bytes
/// read, or panics with how far it got.
fn read_flood(r: &mut TcpStream, nick: &str, lines: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let pad = "x".repeat(PAD);
    let mut buf = vec![0u8; 64 << 10];
    let (mut pending, mut next, mut total) = (Vec::new(), 0, 0);
    while next < lines {
        assert!(
            Instant::now() < deadline,
            "{next} of {lines} lines ({total} bytes) within {within:?}"
        );
        thread::sleep(Duration::from_millis(1)); // the reader's pace, not a synchronisation
        let n = match r.read(&mut buf) {
            Ok(0) => panic!("EOF after {next} of {lines} lines ({total} bytes)"),
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => panic!("{e} after {next} of {lines} lines ({total} bytes)"),
        };
        total += n;
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end + 1];
            let want = format!("{nick}: {next} {pad}\r\n");
            assert!(line == want.as_bytes(), "line {next} differs or is missing");
            next += 1;
            start += end + 1;
        }
        pending.drain(..start);
    }
    total
}

/// One member sends 20 MB as fast as it can; another reads steadily with large reads: it gets
/// every line, in order, and is never disconnected (issue 20: it was reset after 0.8-1.2 MB).
/// The sender is slowed to the reader's pace instead.
fn a_steady_reader_gets_everything_from_a_fast_sender(backend: Backend) {
    const LINES: usize = 20_000;
    let mut s = Server::start("chat_server", backend, &[]);
    let mut a = Member::join(&s);
    let b = Member::join(&s);
    a.send("NICK ada");
    assert_eq!(a.line(), "+OK");
    let sender = flood(a.w.try_clone().unwrap(), LINES);
    let mut r = b.w.try_clone().unwrap();
    let got = read_flood(&mut r, "ada", LINES, Duration::from_secs(120));
    println!("steady reader: {got} bytes of {LINES} lines");
    sender.join().unwrap();
    assert_eq!(slow_disconnects_at_exit(&mut s), 0);
}

/// The same flood with a third member that never reads (`--stall-timeout 1`): it is
/// disconnected, counted, and server memory stays bounded, while the steady reader gets
/// everything.
fn a_never_reader_is_dropped_while_a_steady_reader_keeps_up(backend: Backend) {
    const LINES: usize = 20_000;
    let mut s = Server::start("chat_server", backend, &["--stall-timeout", "1"]);
    let mut a = Member::join(&s);
    let b = Member::join(&s);
    a.send("NICK ada");
    assert_eq!(a.line(), "+OK");
    let rss0 = s.rss_kib();
    let never = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    never.set_recv_buffer_size(4096).unwrap();
    never.connect(&s.addr.into()).unwrap();
    let mut never: TcpStream = never.into();
    never.write_all(b"NICK never\r\nhi\r\n").unwrap();
    let mut r = b.w.try_clone().unwrap();
    r.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut br = BufReader::new(r.try_clone().unwrap());
    let mut l = String::new();
    br.read_line(&mut l).unwrap();
    assert_eq!(l, "never: hi\r\n", "the never-reader is in the room");
    let sender = flood(a.w.try_clone().unwrap(), LINES);
    let got = read_flood(&mut r, "ada", LINES, Duration::from_secs(120));
    sender.join().unwrap();
    let growth_mib = s.rss_kib().saturating_sub(rss0) / 1024;
    println!("steady reader: {got} bytes; RSS grew {growth_mib} MiB");
    assert!(growth_mib < 32, "RSS grew {growth_mib} MiB");
    let _ = expect_closed(&mut never, Duration::from_secs(30), "the never-reader");
    assert_eq!(slow_disconnects_at_exit(&mut s), 1);
}

/// Control characters are replaced by `?` in lines and nicks (issue 27: `\r` and escape codes
/// were relayed verbatim, so one member could fake another's line on screen); UTF-8 text
/// passes unchanged, invalid bytes become U+FFFD.
fn control_characters_are_not_relayed(backend: Backend) {
    let s = Server::start("chat_server", backend, &[]);
    let mut a = Member::join(&s);
    let mut b = Member::join(&s);
    a.w.write_all(b"NICK ev\x1b[31mil\r\n").unwrap();
    assert_eq!(a.line(), "+OK");
    let cases: [(&[u8], &str); 5] = [
        (b"ev\ril: fake: hello", "ev?[31mil: ev?il: fake: hello"),
        (b"\x1b[2J\x07cleared", "ev?[31mil: ?[2J?cleared"),
        (
            "caf\u{e9} \u{9b}31m".as_bytes(),
            "ev?[31mil: caf\u{e9} ?31m",
        ),
        (b"tab\there\x7f", "ev?[31mil: tab?here?"),
        (b"bad \xff byte", "ev?[31mil: bad \u{fffd} byte"),
    ];
    for (sent, shown) in cases {
        a.w.write_all(&[sent, b"\r\n"].concat()).unwrap();
        assert_eq!(b.line(), shown);
    }
}
