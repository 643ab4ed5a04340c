//! line_server_pooled: the line_server protocol, every command run on a worker pool, so a
//! blocking command (`SLEEP`, standing for a database call) never stalls the IO threads.
//!
//! ```text
//! line_server_pooled --workers 8        # then, as for line_server:
//! printf 'SLEEP 1500\r\n' | socat - TCP:127.0.0.1:5004 &
//! printf 'PING\r\n' | socat - TCP:127.0.0.1:5004      # answered at once
//! ```
//! How it works: the IO thread decodes a line and queues it, with a handle to the connection,
//! on the connection's [`Ordered`] queue; a worker runs it and writes the reply through the
//! handle. One connection's commands run one after another, so pipelined commands are answered
//! in order. A full queue means the connection stops reading until there is room.
//! Use this variant only when handlers block; otherwise `line_server` is simpler and faster.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use common::line_protocol::{execute, is_quit};
use ringport::codec::{DecodeError, Lines};
use ringport::pool::{InFlight, Ordered, WorkerPool};
use ringport::{Conn, ConnectionHandle, Frame, Handler, Server};

#[derive(Parser, Debug)]
#[command(about = "ringport pooled line server: commands run on a worker pool")]
struct Args {
    /// Address to listen on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:5004")]
    listen: SocketAddr,
    /// Longest command line accepted, in bytes (terminator excluded)
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    max_line: usize,
    /// Worker threads running the commands
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Jobs the worker queue holds; when full, connections feeding it stop reading
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    #[command(flatten)]
    common: common::CommonArgs,
}

struct Session {
    pool: WorkerPool,
    jobs: Ordered,
    handle: Option<ConnectionHandle>,
    /// Jobs submitted and not yet reported done (counted here, on the IO thread).
    in_flight: InFlight,
    quit: bool,
}

impl Session {
    /// Queues `work` (which returns the reply and whether to close) after this connection's
    /// earlier commands. `false`: no room now.
    fn submit(&mut self, work: impl FnOnce() -> (Vec<u8>, bool) + Send + 'static) -> bool {
        let Some(h) = self.handle.clone() else {
            return false;
        };
        let job = move || {
            let (reply, close) = work();
            // Errors mean the connection is gone: nothing left to answer.
            let _ = h.write(reply);
            if close {
                let _ = h.close();
            }
            let _ = h.notify(0); // "done", arriving after the reply in the IO thread's inbox
        };
        if self.jobs.submit(&self.pool, job).is_err() {
            return false;
        }
        self.in_flight.started();
        true
    }
}

impl Handler for Session {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+OK ready\r\n");
        self.handle = Some(conn.handle());
    }

    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if self.quit {
            return; // nothing after QUIT is executed
        }
        let line = frame.payload().to_vec();
        let quit = is_quit(&line);
        if !self.submit(move || execute(&line)) {
            conn.hold_frame(); // the queue is full: stop reading, offer this line again later
            return;
        }
        self.quit = quit;
    }

    fn on_notify(&mut self, conn: &mut Conn<'_>, _job: u64) {
        self.in_flight.done(conn); // and closes if a close was waiting for it
    }

    // The client stopped sending: answer what it asked, then close.
    fn on_read_closed(&mut self, conn: &mut Conn<'_>) {
        self.in_flight.close_when_done(conn);
    }

    // Shutdown: let queued commands answer (until the drain deadline), then close.
    fn on_shutdown(&mut self, conn: &mut Conn<'_>) {
        conn.pause_reading();
        self.in_flight.close_when_done(conn);
    }

    // The reply to an over-long line goes after the replies still being computed.
    fn on_decode_error(&mut self, conn: &mut Conn<'_>, _error: &DecodeError) {
        if self.in_flight.is_idle() {
            conn.write(b"-ERR line too long\r\n");
            conn.close();
        } else if !self.submit(|| (b"-ERR line too long\r\n".to_vec(), true)) {
            conn.close(); // no room to queue even that: close after what is queued
        }
    }
}

fn main() {
    let args = Args::parse();
    let mut engine = args.common.engine(None);
    let pool = WorkerPool::new("ringport-worker", args.workers, args.queue)
        .unwrap_or_else(|e| common::fail(e));
    let codec = Lines::new(args.max_line);
    let p = pool.clone();
    let server = Server::new(args.listen, codec, move |_| Session {
        pool: p.clone(),
        jobs: Ordered::new(64),
        handle: None,
        in_flight: InFlight::default(),
        quit: false,
    });
    let server = args.common.add(&mut engine, server);
    common::run(engine, &[&server]);
    // The engine has drained (jobs queued meanwhile ran and answered; connections still open
    // at the deadline were reset): drop what is left without waiting on it.
    pool.shutdown(Duration::from_millis(200));
}
