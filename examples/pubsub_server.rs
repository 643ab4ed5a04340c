//! pubsub_server: a line pub/sub broker with heartbeats (try `socat - TCP:127.0.0.1:5008`).
//! `SUB news` → `+OK` (`UNSUB news` → `+OK`); `PUB news hello` → `+OK 2`, and each of the 2
//! subscribers of news reads `MSG news hello`; `PING` → `+PONG`; anything else → `-ERR ...`.
//! A topic's room ([`ringport::fanout::Topics`]) lives while it has subscribers; a publisher
//! never gets its own message. A full subscriber queue pauses the publisher; a subscriber that
//! holds it up for `--stall-timeout` is disconnected. A client silent for a whole
//! `--heartbeat-interval` gets `HB`; one silent past `--heartbeat-timeout` is closed (logged).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ringport::codec::{DecodeError, Lines};
use ringport::fanout::{Member, Topics};
use ringport::{cli, CloseReason, Conn, Frame, Handler, Server};

#[derive(Parser, Debug)]
#[command(about = "ringport pub/sub broker: SUB, UNSUB, PUB, PING, with heartbeats")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5008")]
    listen: String,
    /// Longest line accepted, in bytes (terminator excluded); a longer one closes
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    max_line: usize,
    /// Seconds a slow subscriber may hold a publisher paused; then it is disconnected
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = secs)]
    stall_timeout: Duration,
    /// Seconds between heartbeats (`HB` goes to a client silent since the last one)
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = secs)]
    heartbeat_interval: Duration,
    /// Seconds of silence after which a client is closed (checked at each heartbeat)
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = secs)]
    heartbeat_timeout: Duration,
    #[command(flatten)]
    server: cli::ServerArgs,
}

/// A flag's positive number of seconds.
fn secs(s: &str) -> Result<Duration, String> {
    let n: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    let d = Duration::try_from_secs_f64(n).ok().filter(|d| !d.is_zero());
    d.ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

const MAX_SUBS: usize = 1024; // subscriptions per connection: its memory stays bounded
const HEARTBEAT: u64 = 1; // our timer's id (fanout::STALL_TIMER is the room's)

struct Session {
    args: Arc<Args>,
    topics: Arc<Topics>,
    subs: HashMap<Vec<u8>, Member>,
    /// A publish waiting for slow subscribers (reading is paused meanwhile).
    publishing: Option<Member>,
    /// Silence from the client so far, counted in heartbeats.
    silent: Duration,
}

impl Session {
    /// Runs one command; `Ok` holds the reply.
    fn command(&mut self, conn: &mut Conn<'_>, line: &[u8]) -> Result<Vec<u8>, &'static str> {
        let mut parts = line.splitn(3, |&b| b == b' ');
        let cmd = parts.next().unwrap_or_default().to_ascii_uppercase();
        let (topic, rest) = (parts.next().filter(|t| !t.is_empty()), parts.next());
        match (&cmd[..], topic, rest) {
            (b"PING", None, _) => Ok(b"+PONG\r\n".to_vec()),
            (b"SUB", Some(t), None) if self.subs.contains_key(t) => Ok(b"+OK\r\n".to_vec()),
            (b"SUB", Some(_), None) if self.subs.len() >= MAX_SUBS => Err("too many subscriptions"),
            (b"SUB", Some(t), None) => {
                self.subs.insert(t.to_vec(), self.topics.join(t, conn));
                Ok(b"+OK\r\n".to_vec())
            }
            (b"UNSUB", Some(t), None) => {
                self.subs.remove(t).ok_or("not subscribed")?; // dropped: leaves the topic
                Ok(b"+OK\r\n".to_vec())
            }
            (b"PUB", Some(t), Some(msg)) => {
                let mut publisher = self.topics.publisher(t, conn);
                let frame = [b"MSG ", t, b" ", msg, b"\r\n"].concat();
                let n = publisher.as_mut().map_or(0, |p| p.publish(conn, frame));
                self.publishing = publisher.filter(Member::is_waiting);
                Ok(format!("+OK {n}\r\n").into_bytes())
            }
            _ => Err("unknown command or wrong arguments"),
        }
    }
}

impl Handler for Session {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.set_timer(HEARTBEAT, self.args.heartbeat_interval);
    }

    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        self.silent = Duration::ZERO;
        match self.command(conn, frame.payload()) {
            Ok(reply) => conn.write(&reply),
            Err(e) => conn.write(format!("-ERR {e}\r\n").as_bytes()),
        }
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, value: u64) {
        if let Some(p) = &mut self.publishing {
            p.on_writable(conn, value);
            self.publishing.take_if(|p| !p.is_waiting());
        }
    }

    fn on_timer(&mut self, conn: &mut Conn<'_>, id: u64) {
        if id != HEARTBEAT {
            // The room's stall timer: the subscribers still holding the publish are dropped.
            if let Some(mut p) = self.publishing.take() {
                p.on_timer(conn, id);
            }
            return;
        }
        let idle = !self.silent.is_zero(); // nothing heard since the last heartbeat
        self.silent += self.args.heartbeat_interval;
        if self.silent > self.args.heartbeat_timeout && self.publishing.is_none() {
            tracing::info!(peer = %conn.peer_addr(), silent = ?self.silent, "heartbeat timeout");
            conn.write(b"-ERR heartbeat timeout\r\n");
            return conn.close_with(CloseReason::Protocol("heartbeat timeout".into()));
        }
        if idle {
            conn.write(b"HB\r\n");
        }
        conn.set_timer(HEARTBEAT, self.args.heartbeat_interval);
    }

    fn on_decode_error(&mut self, conn: &mut Conn<'_>, _error: &DecodeError) {
        conn.close_after(b"-ERR line too long\r\n");
    }
}

fn main() {
    let args = Arc::new(Args::parse());
    let mut engine = args.server.engine();
    let (a, topics) = (args.clone(), Arc::new(Topics::new(args.stall_timeout)));
    let listen = cli::listen_addr(&args.listen);
    let server = Server::listen(listen, Lines::new(args.max_line), move |_| Session {
        args: a.clone(),
        topics: topics.clone(),
        subs: HashMap::new(),
        publishing: None,
        silent: Duration::ZERO,
    });
    let server = args.server.add(&mut engine, server);
    cli::run(engine, &[&server]);
}
