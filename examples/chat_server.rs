//! chat_server: a line chat room. Every line a client sends goes to every other client.
//!
//! ```text
//! $ socat - TCP:127.0.0.1:5007
//! +OK chat
//! NICK ada        → +OK
//! hello           → the others read "ada: hello"   (an unnamed client is anon<id>)
//! QUIT            → +BYE, then the server closes
//! ```
//! How it works: the room is a map from connection id to a [`ConnectionHandle`] and a nick,
//! shared by the IO threads. A line is written to every other member's handle; each handle
//! write travels to that member's IO thread, in order per sender.
//!
//! **Text only.** Lines are relayed as text: read as UTF-8 (invalid bytes become U+FFFD) with
//! every control character (`\r`, ESC, BEL, DEL, C1 ...) replaced by `?`, in lines and nicks
//! alike, so that no member can move another's cursor, clear the screen or fake a line from
//! someone else (`ev\ril: fake: hello`).
//!
//! **Fast senders and slow readers.** A member reading its messages slower than another
//! sends them makes the room hold messages for it. The rule here is backpressure with a
//! stall limit:
//!
//! - A member's queue may hold `--max-backlog` bytes (its high write watermark). A line that
//!   finds a member's queue full, or fills it, pauses the *sender*: the room reads nothing
//!   more from it (its client's writes wait in TCP) until every such member has read its
//!   queue down to a quarter of `--max-backlog` (`notify_when_writable`); the line reaches
//!   each member, in order, nothing is dropped. A fast sender thus goes at the pace of the
//!   room's readers, and a member that reads steadily is never disconnected because another
//!   sends fast.
//! - A member that holds a sender paused for `--stall-timeout` seconds without reading its
//!   queue down to the quarter is disconnected (reset, logged, counted as
//!   `slow_disconnects`), and the sender goes on. A member that never reads thus costs at
//!   most `--max-backlog` plus one line per sender, and stalls the room for at most
//!   `--stall-timeout`.

mod common;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clap::Parser;
use ringport::codec::{DecodeError, Lines};
use ringport::{
    CloseReason, Conn, ConnInfo, ConnectionHandle, Frame, HandleError, Handler, Server,
};

#[derive(Parser, Debug)]
#[command(about = "ringport chat server: every line goes to every other client")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5007")]
    listen: ringport::ListenAddr,
    /// Longest line accepted, in bytes (terminator excluded)
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    max_line: usize,
    /// Bytes that may wait for one member; a line that finds its queue full, or fills it,
    /// pauses the sender until the member has read it down to a quarter
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_backlog: usize,
    /// Seconds a member may hold a sender paused without reading its queue down; then it is
    /// disconnected
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    stall_timeout: f64,
    #[command(flatten)]
    common: common::CommonArgs,
}

/// Everyone in the room, and how many were thrown out for not reading.
#[derive(Default)]
struct Room {
    members: RwLock<HashMap<u64, Member>>,
    slow_disconnects: AtomicU64,
    /// Numbers the `anon<n>` nicks.
    joined: AtomicU64,
}

#[derive(Clone)]
struct Member {
    handle: ConnectionHandle,
    nick: Arc<str>,
    /// Set once by whoever disconnects it for not reading (so it is counted once).
    evicted: Arc<AtomicBool>,
}

/// A member a sender waits for: the line did not fit in its queue (`unsent`), or filled it.
struct Blocking {
    id: u64,
    member: Member,
    unsent: Option<Arc<[u8]>>,
}

impl Room {
    /// Sends `line` to everyone but `from`; returns the members whose queue it found full or
    /// filled (the sender waits for them).
    fn broadcast(&self, from: u64, line: &Arc<[u8]>) -> Vec<Blocking> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let mut blocking = Vec::new();
        for (&id, m) in members.iter().filter(|(id, _)| **id != from) {
            let unsent = match m.handle.write(&line[..]) {
                Ok(()) if m.handle.is_writable() => continue,
                Ok(()) => None,
                Err(HandleError::Full) => Some(line.clone()),
                Err(HandleError::Closed | HandleError::EngineStopped) => continue,
            };
            let member = m.clone();
            blocking.push(Blocking { id, member, unsent });
        }
        blocking
    }

    /// Disconnects a member that held a sender up for the whole stall time.
    fn evict(&self, b: &Blocking, stall: Duration) {
        if !b.member.evicted.swap(true, Ordering::AcqRel) {
            let n = self.slow_disconnects.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                member = b.id,
                nick = %b.member.nick,
                queued = b.member.handle.queued_bytes(),
                stalled_secs = stall.as_secs_f64(),
                slow_disconnects = n,
                "member does not read; disconnecting it"
            );
        }
        let _ = b.member.handle.abort();
    }
}

/// The sender's timer: the members it waits for have had `--stall-timeout` to read.
const STALL_TIMER: u64 = 1;

struct Session {
    room: Arc<Room>,
    id: u64,
    nick: Arc<str>,
    /// This connection's own handle (the watcher in `notify_when_writable`).
    me: Option<ConnectionHandle>,
    /// Members this sender waits for, reading paused (empty: reading).
    blocking: Vec<Blocking>,
    stall: Duration,
}

impl Session {
    /// Asks to hear (`on_writable`, value = the member's id) when `b` has read its queue down.
    fn watch(&self, b: &Blocking) {
        if let Some(me) = &self.me {
            b.member.handle.notify_when_writable(me, b.id);
        }
    }
}

impl Handler for Session {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+OK chat\r\n");
        let handle = conn.handle();
        self.me = Some(handle.clone());
        let member = Member {
            handle,
            nick: self.nick.clone(),
            evicted: Arc::default(),
        };
        let mut members = self.room.members.write().unwrap_or_else(|e| e.into_inner());
        members.insert(self.id, member);
    }

    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let line = frame.payload();
        if line.eq_ignore_ascii_case(b"QUIT") {
            conn.write(b"+BYE\r\n");
            conn.close();
        } else if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"NICK ") {
            let nick = printable(&line[5..]);
            self.nick = String::from_utf8_lossy(&nick).trim().into();
            let mut members = self.room.members.write().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = members.get_mut(&self.id) {
                m.nick = self.nick.clone();
            }
            conn.write(b"+OK\r\n");
        } else {
            let text = printable(line);
            let mut msg = Vec::with_capacity(self.nick.len() + text.len() + 4);
            msg.extend_from_slice(self.nick.as_bytes());
            msg.extend_from_slice(b": ");
            msg.extend_from_slice(&text);
            msg.extend_from_slice(b"\r\n");
            // Reading is paused while anyone holds this sender up: no frame comes meanwhile.
            debug_assert!(
                self.blocking.is_empty(),
                "a line read while the sender waits"
            );
            self.blocking = self.room.broadcast(self.id, &msg.into());
            if !self.blocking.is_empty() {
                conn.pause_reading();
                conn.set_timer(STALL_TIMER, self.stall);
                self.blocking.iter().for_each(|b| self.watch(b));
            }
        }
    }

    /// A member this sender waits for read its queue down (or left): hand it the line it
    /// missed, and read again once nobody holds the sender up.
    fn on_writable(&mut self, conn: &mut Conn<'_>, id: u64) {
        let Some(i) = self.blocking.iter().position(|b| b.id == id) else {
            return; // an older watch of a member no longer waited for
        };
        let b = &mut self.blocking[i];
        if let Some(line) = &b.unsent {
            match b.member.handle.write(&line[..]) {
                Ok(()) => b.unsent = None,
                Err(HandleError::Full) => {}
                Err(HandleError::Closed | HandleError::EngineStopped) => b.unsent = None,
            }
        }
        if b.unsent.is_none() && (b.member.handle.is_writable() || !b.member.handle.is_open()) {
            self.blocking.swap_remove(i);
        } else {
            self.watch(&self.blocking[i]);
        }
        if self.blocking.is_empty() {
            conn.cancel_timer(STALL_TIMER);
            conn.resume_reading();
        }
    }

    /// The members still holding this sender up did not read for the stall time.
    fn on_timer(&mut self, conn: &mut Conn<'_>, _id: u64) {
        for b in std::mem::take(&mut self.blocking) {
            self.room.evict(&b, self.stall);
        }
        conn.resume_reading();
    }

    fn on_decode_error(&mut self, conn: &mut Conn<'_>, _error: &DecodeError) {
        conn.close_after(b"-ERR line too long\r\n");
    }

    /// A restart handed the port to a new process, whose room new members join: say so (this
    /// process serves on until the member leaves or `--restart-grace` passes).
    fn on_retire(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+RESTARTING reconnect to join the new room\r\n");
    }

    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        let mut members = self.room.members.write().unwrap_or_else(|e| e.into_inner());
        members.remove(&self.id);
        tracing::debug!(peer = %info.peer, %reason, "left the room");
    }
}

/// `line` as text safe to show on another member's terminal: UTF-8 (invalid bytes become
/// U+FFFD) with every control character replaced by `?`.
fn printable(line: &[u8]) -> Cow<'_, [u8]> {
    if line.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Cow::Borrowed(line); // plain ASCII: nothing to replace
    }
    let text: String = String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Cow::Owned(text.into_bytes())
}

fn main() {
    let args = Args::parse();
    if !(args.stall_timeout.is_finite() && args.stall_timeout > 0.0) {
        common::fail("--stall-timeout must be a positive number of seconds");
    }
    let stall = Duration::from_secs_f64(args.stall_timeout);
    let mut engine = args.common.engine(None);
    let room = Arc::new(Room::default());
    let r = room.clone();
    let server = Server::listen(args.listen, Lines::new(args.max_line), move |info| {
        Session {
            room: r.clone(),
            id: info.id,
            nick: format!("anon{}", r.joined.fetch_add(1, Ordering::Relaxed) + 1).into(),
            me: None,
            blocking: Vec::new(),
            stall,
        }
    })
    // The backlog is the high watermark: handle writes beyond it are refused (`Full`), and a
    // member is read down once under the low one.
    .write_watermarks(args.max_backlog / 4, args.max_backlog);
    let server = args.common.add(&mut engine, server);
    common::run(engine, &[&server]);
    tracing::info!(
        slow_disconnects = room.slow_disconnects.load(Ordering::Relaxed),
        "chat room closed"
    );
}
