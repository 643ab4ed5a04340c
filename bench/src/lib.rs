//! What the tokio-based peers share: the runtime, the listener and the
//! `listening on IP:PORT (backend: NAME)` start-up line that `compare.sh`
//! waits for (the same contract as ringport's example servers).

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};

const BACKLOG: u32 = 4096;

/// A multi-thread runtime with `threads` workers (default: available parallelism).
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
}

/// Listens on `addr`, prints the start-up line naming `backend`, then runs
/// `serve` in a task of its own for every accepted connection (TCP_NODELAY set).
pub async fn serve<F, Fut>(addr: SocketAddr, backend: &str, serve: F) -> std::io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local} (backend: {backend})")?;
        out.flush()?;
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream));
    }
}
