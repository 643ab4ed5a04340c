#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! `pubsub_server`: SUB/PUB/UNSUB with the receiver count, a publisher never gets its own
//! message, topics kept apart; `HB` on an idle connection; a silent client closed after
//! `--heartbeat-timeout` (logged) while a talking one stays; bad commands answered `-ERR` with
//! the connection going on; a line over `--max-line` closes. Each test runs once per backend.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

backend_tests!("pubsub_server";
    publish_reaches_every_subscriber_and_unsub_stops_it,
    an_idle_connection_gets_heartbeats,
    a_silent_client_is_closed_a_talking_one_stays,
    bad_commands_get_err_and_the_connection_goes_on,
);

struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn new(s: &Server) -> Client {
        let w = s.connect();
        Client {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }
    /// The next line (CRLF stripped), waiting at most `timeout` for it.
    fn line_within(&mut self, timeout: Duration) -> String {
        self.w.set_read_timeout(Some(timeout)).unwrap();
        let mut l = String::new();
        self.r
            .read_line(&mut l)
            .unwrap_or_else(|e| panic!("no line within {timeout:?}: {e}"));
        assert!(l.ends_with("\r\n"), "line {l:?} not terminated by CRLF");
        l.truncate(l.len() - 2);
        l
    }
    fn line(&mut self) -> String {
        self.line_within(IO_TIMEOUT)
    }
    fn send(&mut self, text: &str) {
        self.w.write_all(format!("{text}\r\n").as_bytes()).unwrap();
    }
    fn ask(&mut self, text: &str) -> String {
        self.send(text);
        self.line()
    }
    /// `ask`, skipping the heartbeats that may come first.
    fn ask_past_heartbeats(&mut self, text: &str) -> String {
        self.send(text);
        loop {
            match self.line() {
                hb if hb == "HB" => continue,
                l => return l,
            }
        }
    }
}

fn publish_reaches_every_subscriber_and_unsub_stops_it(backend: Backend) {
    let s = Server::start("pubsub_server", backend, &[]);
    let (mut a, mut b, mut c) = (Client::new(&s), Client::new(&s), Client::new(&s));
    assert_eq!(a.ask("SUB news"), "+OK");
    assert_eq!(b.ask("SUB news"), "+OK");
    assert_eq!(b.ask("SUB sport"), "+OK");
    assert_eq!(c.ask("PUB news hello there"), "+OK 2");
    assert_eq!(a.line(), "MSG news hello there");
    assert_eq!(b.line(), "MSG news hello there");
    // Another topic reaches only its subscriber; a topic nobody follows reaches no one.
    assert_eq!(c.ask("PUB sport goal"), "+OK 1");
    assert_eq!(b.line(), "MSG sport goal");
    assert_eq!(c.ask("PUB weather rain"), "+OK 0");
    // A subscribed publisher does not get its own message.
    assert_eq!(a.ask("PUB news from a"), "+OK 1");
    assert_eq!(b.line(), "MSG news from a");
    // UNSUB: a gets nothing more (its next line is the answer to its own PING).
    assert_eq!(a.ask("UNSUB news"), "+OK");
    assert_eq!(a.ask("UNSUB news"), "-ERR not subscribed");
    assert_eq!(c.ask("PUB news second"), "+OK 1");
    assert_eq!(b.line(), "MSG news second");
    assert_eq!(a.ask("PING"), "+PONG");
    // The last subscriber leaving (by closing) ends the topic; a new one starts it again.
    drop(b);
    let deadline = Instant::now() + IO_TIMEOUT;
    while c.ask("PUB news anyone") != "+OK 0" {
        assert!(Instant::now() < deadline, "b's close never left the topic");
    }
    assert_eq!(a.ask("SUB news"), "+OK");
    assert_eq!(c.ask("PUB news back"), "+OK 1");
    assert_eq!(a.line(), "MSG news back");
}

fn an_idle_connection_gets_heartbeats(backend: Backend) {
    let s = Server::start("pubsub_server", backend, &["--heartbeat-interval", "0.5"]);
    let mut idle = Client::new(&s);
    let t = Instant::now();
    assert_eq!(idle.line_within(Duration::from_secs(10)), "HB");
    assert_eq!(idle.line_within(Duration::from_secs(10)), "HB");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "two heartbeats 0.5 s apart came after {took:?}"
    );
    // A heartbeat answered with anything keeps the connection served.
    assert_eq!(idle.ask("PING"), "+PONG");
}

fn a_silent_client_is_closed_a_talking_one_stays(backend: Backend) {
    let s = Server::start(
        "pubsub_server",
        backend,
        &["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"],
    );
    let mut silent = Client::new(&s);
    let mut talking = Client::new(&s);
    let t = Instant::now();
    // The talking client speaks at each heartbeat; the silent one only reads.
    let mut closed = None;
    while closed.is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "silent client never closed"
        );
        match silent.line_within(Duration::from_secs(10)).as_str() {
            "HB" => {}
            "-ERR heartbeat timeout" => closed = Some(t.elapsed()),
            other => panic!("silent client got {other:?}"),
        }
        assert_eq!(talking.ask_past_heartbeats("PING"), "+PONG");
    }
    let (rest, how) = expect_closed(&mut silent.w, IO_TIMEOUT, "after the heartbeat timeout");
    assert!(rest.is_empty() && how == Closed::Eof, "{rest:?} {how:?}");
    let after = closed.unwrap();
    assert!(
        after >= Duration::from_secs(2),
        "closed after {after:?} of silence, before the 2 s timeout"
    );
    assert!(
        s.wait_for_stderr(IO_TIMEOUT, |e| e.contains("heartbeat timeout")),
        "the close is logged: {}",
        tail(&s.stderr_text(), 2000)
    );
    // The talking client, past the timeout too, is still served.
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(talking.ask_past_heartbeats("PING"), "+PONG");
}

fn bad_commands_get_err_and_the_connection_goes_on(backend: Backend) {
    let s = Server::start("pubsub_server", backend, &["--max-line", "64"]);
    let mut c = Client::new(&s);
    for bad in ["FOO bar", "SUB", "SUB a b", "PUB news", "UNSUB", ""] {
        let got = c.ask(bad);
        assert!(got.starts_with("-ERR "), "{bad:?} answered {got:?}");
    }
    assert_eq!(c.ask("ping"), "+PONG");
    assert_eq!(c.ask("sub news"), "+OK");
    // A line over --max-line closes the connection, with a last -ERR.
    c.send(&"x".repeat(100));
    let (rest, _) = expect_closed(&mut c.w, IO_TIMEOUT, "after a line over --max-line");
    let rest = String::from_utf8_lossy(&rest);
    let buffered = String::from_utf8_lossy(c.r.buffer());
    assert!(
        format!("{buffered}{rest}").contains("-ERR line too long"),
        "{buffered:?} {rest:?}"
    );
    // Other connections are unaffected.
    assert_eq!(Client::new(&s).ask("PING"), "+PONG");
}
