//! Peer echo server on tokio: multi-thread runtime, one task per connection,
//! 16 KiB read buffer, TCP_NODELAY. Same contract as ringport's `echo_server`
//! example: echo every byte; print one `listening on IP:PORT (backend: tokio)`
//! line on stdout once accepting.

use std::net::SocketAddr;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "tokio echo server (benchmark peer)")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5001")]
    listen: SocketAddr,
    /// Runtime worker threads (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
}

const READ_BUF: usize = 16 * 1024;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    ringport_bench::runtime(args.threads)?.block_on(ringport_bench::serve(
        args.listen,
        "tokio",
        echo,
    ))
}

async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
