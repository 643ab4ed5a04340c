//! Peer echo server on monoio (io_uring driver): one runtime per thread, each
//! with its own SO_REUSEPORT listener on the same port, ownership-passing
//! `read` / `write_all` with an owned 16 KiB buffer, TCP_NODELAY. Same
//! contract as ringport's `echo_server` example: echo every byte; print one
//! `listening on IP:PORT (backend: monoio)` line on stdout once accepting.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;

use clap::Parser;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "monoio echo server (benchmark peer)")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5001")]
    listen: SocketAddr,
    /// Threads, one runtime and one listener each (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
}

const READ_BUF: usize = 16 * 1024;
const BACKLOG: i32 = 4096;
const URING_ENTRIES: u32 = 1024;

pub fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let opts = ListenerOpts::new().reuse_port(true).backlog(BACKLOG);

    // The first listener is bound on the caller's thread so that port 0 is
    // resolved once; the other threads bind the same (now concrete) port.
    // Each listener is bound inside the runtime (thread) that owns it, since
    // monoio I/O objects are tied to their thread's driver.
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<SocketAddr>>();
    let mut handles = Vec::with_capacity(threads);
    let first_addr = {
        let tx = ready_tx.clone();
        let addr = args.listen;
        handles.push(std::thread::spawn(move || run_thread(addr, opts, tx)));
        ready_rx.recv().expect("listener thread died")?
    };
    for _ in 1..threads {
        let tx = ready_tx.clone();
        handles.push(std::thread::spawn(move || run_thread(first_addr, opts, tx)));
        ready_rx.recv().expect("listener thread died")?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {first_addr} (backend: monoio)")?;
        out.flush()?;
    }
    for h in handles {
        h.join().expect("server thread panicked");
    }
    Ok(())
}

fn run_thread(
    addr: SocketAddr,
    opts: ListenerOpts,
    ready: mpsc::Sender<std::io::Result<SocketAddr>>,
) {
    let mut rt = match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind_with_config(addr, &opts) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(listener.local_addr());
        drop(ready);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    monoio::spawn(echo(stream));
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // `buf` now has len == bytes read; write_all sends exactly those.
        let (res, b) = stream.write_all(buf).await;
        buf = b;
        if res.is_err() {
            return;
        }
        buf.clear();
    }
}
