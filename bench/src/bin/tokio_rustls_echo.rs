//! Peer TLS echo server on tokio + tokio-rustls (rustls 0.23, ring provider,
//! the same as ringport's): multi-thread runtime, one task per connection,
//! 16 KiB read buffer, TCP_NODELAY. Same contract as ringport's `echo_server`
//! with `--tls-cert/--tls-key`: echo every decrypted byte; print one
//! `listening on IP:PORT (backend: tokio-rustls)` line once accepting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Parser, Debug)]
#[command(about = "tokio-rustls TLS echo server (benchmark peer)")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5001")]
    listen: SocketAddr,
    /// Runtime worker threads (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// Certificate chain (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
}

const READ_BUF: usize = 16 * 1024;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let chain = CertificateDer::pem_file_iter(&args.tls_cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(&args.tls_key).map_err(std::io::Error::other)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(std::io::Error::other)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    ringport_bench::runtime(args.threads)?.block_on(ringport_bench::serve(
        args.listen,
        "tokio-rustls",
        move |stream| echo(acceptor.clone(), stream),
    ))
}

async fn echo(acceptor: TlsAcceptor, stream: TcpStream) {
    let Ok(mut tls) = acceptor.accept(stream).await else {
        return;
    };
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match tls.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if tls.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = tls.shutdown().await; // close_notify
}
