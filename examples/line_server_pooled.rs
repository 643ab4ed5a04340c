//! line_server_pooled: the line_server protocol, every command run on a worker pool, so a
//! blocking command (`SLEEP`, standing for a database call) never stalls the IO threads.
//!
//! ```text
//! line_server_pooled --workers 8        # then, as for line_server:
//! printf 'SLEEP 1500\r\n' | socat - TCP:127.0.0.1:5004 &
//! printf 'PING\r\n' | socat - TCP:127.0.0.1:5004      # answered at once
//! ```
//! How it works: the IO thread decodes a line and queues it, with a [`Work`] for the connection,
//! on the connection's [`Ordered`] queue; a worker runs it and writes the reply through the
//! `Work`, which ends when the job drops it. One connection's commands run one after another,
//! so pipelined commands are answered in order; the workers take connections in turn (one
//! command each, round robin), so a connection's backlog never makes the others wait. A full
//! queue (`--queue`, or 64 commands of one connection) means the connection stops reading until
//! there is room. Commands of a connection that was reset are skipped, not run. The engine
//! knows every `Work` outstanding: whatever closes the connection (the client's EOF, an
//! over-long line, the idle timeout, a shutdown) waits for the replies first, so no accepted
//! command loses its answer.
//! Use this variant only when handlers block; otherwise `line_server` is simpler and faster.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ringport::cli;
use ringport::codec::{DecodeError, Lines};
use ringport::pool::{Ordered, WorkerPool};
use ringport::{Conn, Frame, Handler, Server, Work};

#[derive(Parser, Debug)]
#[command(about = "ringport pooled line server: commands run on a worker pool")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5004")]
    listen: String,
    /// Longest command line accepted, in bytes (terminator excluded)
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    max_line: usize,
    /// Worker threads running the commands
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Commands waiting for a worker, all connections together; when full, connections feeding
    /// it stop reading
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    #[command(flatten)]
    server: cli::ServerArgs,
}

struct Session {
    pool: WorkerPool,
    jobs: Ordered,
    quit: bool,
}

impl Handler for Session {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+OK ready\r\n");
    }

    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if self.quit {
            return; // nothing after QUIT is executed
        }
        let line = frame.payload().to_vec();
        let quit = is_quit(&line);
        let client = conn.info().client;
        // The job gets the connection's `Work` (counted until the job drops it) only if it is
        // accepted; a job whose connection was reset before it started is skipped.
        let job = move |work: Work| {
            let (reply, close) = execute(&line, client);
            let _ = work.write(reply); // an error: the connection is gone, nobody to answer
            if close {
                let _ = work.close(); // waits for nothing but this reply's flush
            }
        };
        if self.jobs.submit_work(&self.pool, conn, job).is_err() {
            // Nothing queued: stop reading, offer this line again a few ms later.
            conn.hold_frame();
            return;
        }
        self.quit = quit;
    }

    // The reply to an over-long line goes after the replies still being computed. (The
    // default `on_read_closed` and `on_shutdown` close gracefully, which waits for them too.)
    fn on_decode_error(&mut self, conn: &mut Conn<'_>, _error: &DecodeError) {
        conn.close_after(b"-ERR line too long\r\n");
    }
}

fn main() {
    let args = Args::parse();
    let mut engine = args.server.engine();
    let pool = WorkerPool::new("ringport-worker", args.workers, args.queue)
        .unwrap_or_else(|e| cli::fail(e));
    engine.metrics().add_pool("workers", &pool);
    let codec = Lines::new(args.max_line);
    let p = pool.clone();
    let server = Server::listen(cli::listen_addr(&args.listen), codec, move |_| Session {
        pool: p.clone(),
        jobs: Ordered::new(64),
        quit: false,
    });
    let server = args.server.add(&mut engine, server);
    cli::run(engine, &[&server]);
    // The engine has drained (jobs queued meanwhile ran and answered; connections still open
    // at the drain deadline were reset and counted): drop what is left without waiting on it.
    pool.shutdown(Duration::from_millis(200));
}

/// The reply to one command line from `client` (the address the server believes the client
/// has: `conn.info().client`), and whether the connection ends after it.
/// `line_server`'s function, unchanged: it runs on a worker here.
fn execute(line: &[u8], client: SocketAddr) -> (Vec<u8>, bool) {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(_) => return (b"-ERR unknown command\r\n".to_vec(), false),
    };
    let (verb, arg) = match text.split_once(' ') {
        Some((v, a)) => (v, Some(a)),
        None => (text, None),
    };
    let reply = match (verb.to_ascii_uppercase().as_str(), arg) {
        ("", None) => "-ERR empty command".to_string(),
        ("PING", None) => "+PONG".to_string(),
        ("ECHO", Some(text)) => format!("+{text}"),
        ("ECHO", None) => "+".to_string(),
        ("SLEEP", Some(ms)) => match ms.trim().parse::<u64>() {
            Ok(ms) if ms <= 10_000 => {
                // Stands for a blocking call (a database query): it stalls this IO thread.
                std::thread::sleep(Duration::from_millis(ms));
                format!("+SLEPT {ms}")
            }
            _ => "-ERR bad sleep (0 to 10000 ms)".to_string(),
        },
        // Behind a balancer with --proxy-protocol: the address its PROXY header gave.
        ("WHO", None) => format!("+{client}"),
        ("QUIT", None) => return (b"+BYE\r\n".to_vec(), true),
        _ => "-ERR unknown command".to_string(),
    };
    let mut out = reply.into_bytes();
    out.extend_from_slice(b"\r\n");
    (out, false)
}

/// Whether `line` is a `QUIT` (the IO thread stops taking commands after it).
fn is_quit(line: &[u8]) -> bool {
    line.eq_ignore_ascii_case(b"QUIT")
}
