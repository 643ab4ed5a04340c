//! Peer of ringport's `packet_echo_server` on tokio-util: `Framed` +
//! `LengthDelimitedCodec` (4-byte big-endian length of the payload, its
//! default and `packet_echo_server`'s), a task per connection, every frame
//! echoed back unchanged. A frame announcing more than `--max-frame` closes
//! the connection.
//!
//! Frames are queued with `feed` and flushed when no further complete frame
//! is waiting, so pipelined frames are echoed in one write, as ringport does.

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::bytes::Bytes;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

#[derive(Parser, Debug)]
#[command(
    about = "tokio-util LengthDelimitedCodec echo server (benchmark peer of packet_echo_server)"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5002")]
    listen: SocketAddr,
    /// Runtime worker threads (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// Largest payload accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let max = args.max_frame;
    ringport_bench::runtime(args.threads)?.block_on(ringport_bench::serve(
        args.listen,
        "tokio-util-length-delimited",
        move |s| session(s, max),
    ))
}

async fn session(stream: TcpStream, max_frame: usize) {
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec();
    let mut framed = Framed::new(stream, codec);
    loop {
        // A frame already buffered is echoed without flushing first.
        let next = match framed.next().now_or_never() {
            Some(item) => item,
            None => {
                if SinkExt::<Bytes>::flush(&mut framed).await.is_err() {
                    return;
                }
                framed.next().await
            }
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(_)) | None => return,
        };
        if framed.feed(frame.freeze()).await.is_err() {
            return;
        }
    }
}
