//! Peer of ringport's `line_server` on tokio-util: `Framed` + `LinesCodec`,
//! a task per connection, the same greeting and commands (`PING` -> `+PONG`,
//! `ECHO <text>` -> `+<text>`, `QUIT` -> `+BYE` and close, anything else
//! `-ERR unknown command`; verbs case-insensitive; lines longer than
//! `--max-line` get `-ERR line too long` and close).
//!
//! Replies are queued with `feed` and flushed when no further complete line
//! is waiting, so pipelined commands are answered in one write, as ringport
//! does; one command at a time gets one write each.

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

#[derive(Parser, Debug)]
#[command(about = "tokio-util LinesCodec line server (benchmark peer of line_server)")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5003")]
    listen: SocketAddr,
    /// Runtime worker threads (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// Longest command line accepted, in bytes (terminator excluded).
    #[arg(long, default_value_t = 8192)]
    max_line: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let max = args.max_line;
    ringport_bench::runtime(args.threads)?.block_on(ringport_bench::serve(
        args.listen,
        "tokio-util-lines",
        move |s| session(s, max),
    ))
}

/// The reply to one line (`LinesCodec` adds the `\n` after the `\r`) and
/// whether the connection ends after it.
fn execute(line: &str) -> (String, bool) {
    let (verb, arg) = match line.split_once(' ') {
        Some((v, a)) => (v, Some(a)),
        None => (line, None),
    };
    let reply = match (verb.to_ascii_uppercase().as_str(), arg) {
        ("", None) => "-ERR empty command".to_string(),
        ("PING", None) => "+PONG".to_string(),
        ("ECHO", Some(text)) => format!("+{text}"),
        ("ECHO", None) => "+".to_string(),
        ("QUIT", None) => return ("+BYE\r".to_string(), true),
        _ => "-ERR unknown command".to_string(),
    };
    (reply + "\r", false)
}

async fn session(stream: TcpStream, max_line: usize) {
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(max_line));
    if framed.send("+OK ready\r".to_string()).await.is_err() {
        return;
    }
    loop {
        // A line already buffered is answered without flushing first.
        let next = match framed.next().now_or_never() {
            Some(item) => item,
            None => {
                if SinkExt::<String>::flush(&mut framed).await.is_err() {
                    return;
                }
                framed.next().await
            }
        };
        let (reply, quit) = match next {
            Some(Ok(line)) => execute(&line),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                ("-ERR line too long\r".to_string(), true)
            }
            Some(Err(_)) | None => return,
        };
        if framed.feed(reply).await.is_err() {
            return;
        }
        if quit {
            let _ = SinkExt::<String>::flush(&mut framed).await;
            return;
        }
    }
}
