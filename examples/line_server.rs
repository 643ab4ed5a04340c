//! line_server: a small SMTP/POP3-style command protocol, handled on the IO threads.
//!
//! ```text
//! $ nc -C 127.0.0.1 5003
//! +OK ready
//! PING            → +PONG
//! ECHO hi there   → +hi there
//! SLEEP 200       → +SLEPT 200   (blocks this IO thread for 200 ms: see line_server_pooled)
//! WHO             → +127.0.0.1:50312   (the client's address; behind HAProxy with
//!                                        --proxy-protocol, the one its header gave)
//! QUIT            → +BYE, then the server closes
//! ```
//! Lines end in `\r\n` (a bare `\n` is accepted); verbs are case-insensitive; an empty line is
//! `-ERR empty command`, anything else `-ERR unknown command`; a line longer than `--max-line`
//! gets `-ERR line too long` and the connection closes.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ringport::cli;
use ringport::codec::{DecodeError, Lines};
use ringport::{CloseReason, Conn, Frame, Handler, Server};

#[derive(Parser, Debug)]
#[command(about = "ringport line server: PING, ECHO, SLEEP, WHO, QUIT over \\r\\n lines")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5003")]
    listen: String,
    /// Longest command line accepted, in bytes (terminator excluded)
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    max_line: usize,
    #[command(flatten)]
    server: cli::ServerArgs,
}

struct Session;

impl Handler for Session {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+OK ready\r\n");
    }

    // One call per line, in order, pipelined or not; the `Lines` codec strips the terminator.
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let (reply, quit) = execute(frame.payload(), conn.info().client);
        conn.write(&reply);
        if quit {
            conn.close(); // after `+BYE` is flushed
        }
    }

    // The codec refused the input (a line longer than --max-line): answer, then close.
    fn on_decode_error(&mut self, conn: &mut Conn<'_>, _error: &DecodeError) {
        conn.write(b"-ERR line too long\r\n");
        conn.close();
    }

    fn on_close(&mut self, info: &ringport::ConnInfo, reason: &CloseReason) {
        tracing::debug!(peer = %info.peer, %reason, "session ended");
    }
}

fn main() {
    let args = Args::parse();
    let mut engine = args.server.engine();
    let codec = Lines::new(args.max_line);
    let server = args.server.add(
        &mut engine,
        Server::listen(cli::listen_addr(&args.listen), codec, |_| Session),
    );
    cli::run(engine, &[&server]);
}

/// The reply to one command line from `client` (the address the server believes the client
/// has: `conn.info().client`), and whether the connection ends after it.
/// Free of IO: `line_server_pooled` runs this same function on a worker.
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
