//! Baseline echo server with std only: one OS thread per connection, 16 KiB
//! buffer, TCP_NODELAY. Prints `listening on IP:PORT (backend: std)`.
//! Not part of compare.sh's default set (a thread per connection does not
//! scale to the 10k-connection scenario); handy as a sanity baseline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "std thread-per-connection echo server (baseline)")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5001")]
    listen: SocketAddr,
    /// Accepted for CLI compatibility with the other servers; unused.
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "listening on {} (backend: std)",
            listener.local_addr()?
        )?;
        out.flush()?;
    }
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let spawned = std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || echo(s));
                if let Err(e) = spawned {
                    eprintln!("spawn: {e}");
                }
            }
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}
