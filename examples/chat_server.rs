//! chat_server: a line chat room. Every line a client sends goes to every other client.
//!
//! ```text
//! $ socat - TCP:127.0.0.1:5007
//! +OK chat
//! NICK ada        → +OK
//! hello           → the others read "ada: hello"   (an unnamed client is anon<id>)
//! QUIT            → +BYE, then the server closes
//! ```
//! How it works: the room is a [`ringport::fanout::Room`]; each connection's handler holds
//! its [`Member`], which publishes every line to the other members' handles (each write
//! travels to that member's IO thread, in order per sender).
//!
//! **Text only.** Lines and nicks are relayed as UTF-8 (invalid bytes become U+FFFD) with every
//! control character (`\r`, ESC, BEL, DEL, C1 ...) replaced by `?`: no member can move
//! another's cursor or fake a line from someone else (`ev\ril: fake: hello`).
//!
//! **Fast senders and slow readers** (the room's rule, see `ringport::fanout`): a member's
//! queue holds `--max-backlog` bytes; a line that finds it full pauses the *sender* until
//! the member reads it down to a quarter, so readers that keep up are never disconnected. A
//! member that holds a sender up for `--stall-timeout` seconds is disconnected (counted as
//! `slow_disconnects`).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ringport::cli;
use ringport::codec::{DecodeError, Lines};
use ringport::fanout::{Member, Room};
use ringport::{CloseReason, Conn, ConnInfo, Frame, Handler, Server};

#[derive(Parser, Debug)]
#[command(about = "ringport chat server: every line goes to every other client")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5007")]
    listen: String,
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
    server: cli::ServerArgs,
}

struct Session {
    room: Arc<Room>,
    /// Set in `on_open`; leaves the room when the session is dropped.
    member: Option<Member>,
    nick: Arc<str>,
}

impl Handler for Session {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+OK chat\r\n");
        self.member = Some(self.room.join(conn));
    }

    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let line = frame.payload();
        if line.eq_ignore_ascii_case(b"QUIT") {
            conn.write(b"+BYE\r\n");
            conn.close();
        } else if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"NICK ") {
            let nick = printable(&line[5..]);
            self.nick = String::from_utf8_lossy(&nick).trim().into();
            conn.write(b"+OK\r\n");
        } else {
            let msg = [self.nick.as_bytes(), b": ", &printable(line), b"\r\n"].concat();
            // Pauses this sender while a member's queue is full (see the module doc).
            if let Some(m) = &mut self.member {
                m.publish(conn, msg);
            }
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

    fn on_decode_error(&mut self, conn: &mut Conn<'_>, _error: &DecodeError) {
        conn.close_after(b"-ERR line too long\r\n");
    }

    /// A restart handed the port to a new process, whose room new members join: say so (this
    /// process serves on until the member leaves or `--restart-grace` passes).
    fn on_retire(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+RESTARTING reconnect to join the new room\r\n");
    }

    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        self.member = None; // leaves the room
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
        cli::fail("--stall-timeout must be a positive number of seconds");
    }
    let stall = Duration::from_secs_f64(args.stall_timeout);
    let mut engine = args.server.engine();
    let room = Arc::new(Room::new(stall));
    let (r, joined) = (room.clone(), AtomicU64::new(0));
    let server = Server::listen(
        cli::listen_addr(&args.listen),
        Lines::new(args.max_line),
        move |_| Session {
            room: r.clone(),
            member: None,
            nick: format!("anon{}", joined.fetch_add(1, Ordering::Relaxed) + 1).into(),
        },
    )
    // The backlog is the high watermark: handle writes beyond it are refused (`Full`), and a
    // member is read down once under the low one.
    .write_watermarks(args.max_backlog / 4, args.max_backlog);
    let server = args.server.add(&mut engine, server);
    cli::run(engine, &[&server]);
    tracing::info!(
        slow_disconnects = room.dropped_slow(),
        budget_waits = room.budget_waits(),
        "chat room closed"
    );
}
