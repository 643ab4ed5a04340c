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
//! **Slow consumers.** A member that stops reading would make the server hold every message
//! for it. Its handle refuses writes once `--max-backlog` bytes wait for it
//! ([`HandleError::Full`]: the server's high write watermark); the policy here is to
//! disconnect it at once, logged and counted. Other policies fit in the same `match`: drop the
//! message for that member only, or pause the sender until the member drains
//! (`notify_when_writable`, as `tcp_proxy` does).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use clap::Parser;
use ringport::codec::{DecodeError, Lines};
use ringport::{
    CloseReason, Conn, ConnInfo, ConnectionHandle, Frame, HandleError, Handler, Server,
};

#[derive(Parser, Debug)]
#[command(about = "ringport chat server: every line goes to every other client")]
struct Args {
    /// Address to listen on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:5007")]
    listen: SocketAddr,
    /// Longest line accepted, in bytes (terminator excluded)
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    max_line: usize,
    /// Bytes that may wait for one member; beyond it the member is disconnected
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_backlog: usize,
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

struct Member {
    handle: ConnectionHandle,
    nick: Arc<str>,
}

impl Room {
    /// Sends `line` to everyone but `from`, disconnecting members that fell too far behind.
    fn broadcast(&self, from: u64, line: &[u8]) {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        for (id, m) in members.iter().filter(|(id, _)| **id != from) {
            match m.handle.write(line) {
                Ok(()) | Err(HandleError::Closed) | Err(HandleError::EngineStopped) => {}
                Err(HandleError::Full) => {
                    let n = self.slow_disconnects.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        member = id,
                        queued = m.handle.queued_bytes(),
                        slow_disconnects = n,
                        "member does not read; disconnecting it"
                    );
                    let _ = m.handle.abort();
                }
            }
        }
    }
}

struct Session {
    room: Arc<Room>,
    id: u64,
    nick: Arc<str>,
}

impl Handler for Session {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+OK chat\r\n");
        let member = Member {
            handle: conn.handle(),
            nick: self.nick.clone(),
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
            self.nick = String::from_utf8_lossy(&line[5..]).trim().into();
            let mut members = self.room.members.write().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = members.get_mut(&self.id) {
                m.nick = self.nick.clone();
            }
            conn.write(b"+OK\r\n");
        } else {
            let mut msg = Vec::with_capacity(self.nick.len() + line.len() + 4);
            msg.extend_from_slice(self.nick.as_bytes());
            msg.extend_from_slice(b": ");
            msg.extend_from_slice(line);
            msg.extend_from_slice(b"\r\n");
            self.room.broadcast(self.id, &msg);
        }
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

fn main() {
    let args = Args::parse();
    let mut engine = args.common.engine(None);
    let room = Arc::new(Room::default());
    let r = room.clone();
    let server = Server::new(args.listen, Lines::new(args.max_line), move |info| {
        Session {
            room: r.clone(),
            id: info.id,
            nick: format!("anon{}", r.joined.fetch_add(1, Ordering::Relaxed) + 1).into(),
        }
    })
    // The backlog limit is the high watermark: handle writes beyond it are refused.
    .write_watermarks(args.max_backlog / 4, args.max_backlog);
    let server = args.common.add(&mut engine, server);
    common::run(engine, &[&server]);
    tracing::info!(
        slow_disconnects = room.slow_disconnects.load(Ordering::Relaxed),
        "chat room closed"
    );
}
