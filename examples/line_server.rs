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

mod common;

use clap::Parser;
use ringport::codec::{DecodeError, Lines};
use ringport::{CloseReason, Conn, Frame, Handler, Server};

#[derive(Parser, Debug)]
#[command(about = "ringport line server: PING, ECHO, SLEEP, WHO, QUIT over \\r\\n lines")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5003")]
    listen: ringport::ListenAddr,
    /// Longest command line accepted, in bytes (terminator excluded)
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    max_line: usize,
    #[command(flatten)]
    common: common::CommonArgs,
}

struct Session;

impl Handler for Session {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.write(b"+OK ready\r\n");
    }

    // One call per line, in order, pipelined or not; the `Lines` codec strips the terminator.
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let (reply, quit) = common::line_protocol::execute(frame.payload(), conn.info().client);
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
    let mut engine = args.common.engine(None);
    let codec = Lines::new(args.max_line);
    let server = args
        .common
        .add(&mut engine, Server::listen(args.listen, codec, |_| Session));
    common::run(engine, &[&server]);
}
