//! tcp_proxy: every accepted connection opens one to `--upstream`, and bytes flow both ways
//! unchanged. The smallest correct proxy, in the shape of netty's HexDumpProxy:
//!
//! ```text
//! client ──▶ [Client handler] ──handle.write──▶ upstream conn ──▶ upstream server
//! client ◀── client conn ◀──handle.write── [Upstream handler] ◀── upstream server
//! ```
//! - **Same thread.** The upstream connection is opened with `Conn::connect` from the client's
//!   `on_open`, so both sides live on one IO thread: bytes never cross threads.
//! - **Flow control.** A side whose peer's write queue reaches the high watermark pauses its
//!   own reading and asks to hear when the peer drains (`notify_when_writable`); `on_writable`
//!   resumes it. A client that never reads therefore stops the upstream being read: memory
//!   stays bounded by the watermarks (netty's autoRead pattern).
//! - **Half-close.** A side's EOF is passed on with `shutdown_write` (FIN after everything
//!   queued); the other direction keeps flowing. A connection whose both directions are over
//!   closes by itself.
//! - **Failure.** An upstream that refuses, times out or resets closes the client connection,
//!   logged with the reason; a client that goes away closes the upstream. A reset on either
//!   side resets the other (whatever was queued for it is dropped), also while that side's
//!   reading is paused: the backends watch a paused connection for errors.
//!
//! ```text
//! cargo run --release --example echo_server &
//! cargo run --release --example tcp_proxy -- --upstream 127.0.0.1:5001
//! socat - TCP:127.0.0.1:5006
//! ```
//! With `--upstream-tls --upstream-ca CA.pem` the upstream connection speaks TLS (plaintext in,
//! TLS out), verifying the upstream as `--upstream-name` (default: the upstream's IP address).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ringport::codec::Raw;
use ringport::{
    CloseReason, Conn, ConnInfo, ConnectOptions, ConnectionHandle, Frame, HandleError, Handler,
    Server,
};

#[derive(Parser, Debug)]
#[command(about = "ringport TCP proxy: bytes both ways between each client and --upstream")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5006")]
    listen: ringport::ListenAddr,
    /// Where every accepted connection is forwarded
    #[arg(long)]
    upstream: SocketAddr,
    /// Seconds to wait for the upstream to accept before closing the client
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    connect_timeout: u64,
    #[command(flatten)]
    upstream_tls: common::tls::UpstreamTlsArgs,
    #[command(flatten)]
    common: common::CommonArgs,
}

/// One direction of a proxied session: what arrives here is written to `peer`.
struct Side {
    /// The other connection of the session (`None` until it exists).
    peer: Option<ConnectionHandle>,
    /// "client" or "upstream", for the logs.
    name: &'static str,
}

impl Side {
    /// Forwards `bytes`; when the peer's queue is full, stops reading this side until the peer
    /// has drained. Bytes that cannot be queued are held (offered again later), never dropped.
    fn forward(&mut self, conn: &mut Conn<'_>, bytes: &[u8]) {
        let Some(peer) = &self.peer else {
            conn.hold_frame(); // upstream not created yet: cannot happen, but never drop
            return;
        };
        match peer.write(bytes) {
            Ok(()) if peer.is_writable() => {}
            Ok(()) => self.wait_for(conn), // queued, and the peer is now full: stop reading
            Err(HandleError::Full) => {
                conn.hold_frame(); // not queued: offered again after the peer drains
                self.wait_for(conn);
            }
            Err(_) => conn.close(), // the peer is gone: this side ends too
        }
    }

    fn wait_for(&mut self, conn: &mut Conn<'_>) {
        conn.pause_reading();
        if let Some(peer) = &self.peer {
            peer.notify_when_writable(&conn.handle(), 0);
        }
    }

    fn read_closed(&mut self) {
        // Pass the EOF on: the peer's FIN follows everything already queued for it.
        if let Some(peer) = &self.peer {
            let _ = peer.shutdown_write();
        }
    }

    fn closed(&mut self, info: &ConnInfo, reason: &CloseReason) {
        match reason {
            CloseReason::PeerClosed | CloseReason::Local | CloseReason::Shutdown => {
                tracing::debug!(side = self.name, peer = %info.peer, %reason, "proxy side closed");
            }
            _ => tracing::warn!(side = self.name, peer = %info.peer, %reason, "proxy side failed"),
        }
        // Whatever ended this side ends the session. A reset is passed on as one: the session
        // is broken, and what is queued for the other side would only wait there (for as long
        // as the flush-stall limit, if that side does not read). Otherwise the other side
        // flushes, then closes.
        if let Some(peer) = &self.peer {
            let _ = if *reason == CloseReason::Reset {
                peer.abort()
            } else {
                peer.close()
            };
        }
    }
}

/// The handler of a connection accepted from a client.
struct Client {
    side: Side,
    upstream: SocketAddr,
    timeout: Duration,
    /// TLS to the upstream (`--upstream-tls`).
    tls: UpstreamTls,
}

type UpstreamTls = Option<(
    std::sync::Arc<ringport::rustls::ClientConfig>,
    ringport::rustls::pki_types::ServerName<'static>,
)>;

/// The handler of the connection to the upstream server.
struct Upstream(Side);

impl Handler for Client {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let me = conn.handle();
        let up = Upstream(Side {
            peer: Some(me),
            name: "upstream",
        });
        let options = ConnectOptions::default().timeout(Some(self.timeout));
        let options = common::tls::with_tls(options, &self.tls);
        self.side.peer = Some(conn.connect(self.upstream, Raw, up, options));
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        self.side.forward(conn, frame.raw());
    }
    fn on_writable(&mut self, conn: &mut Conn<'_>, _: u64) {
        conn.resume_reading();
    }
    fn on_read_closed(&mut self, _conn: &mut Conn<'_>) {
        self.side.read_closed(); // keep the connection: the upstream's answer still comes
    }
    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        self.side.closed(info, reason);
    }
}

impl Handler for Upstream {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        self.0.forward(conn, frame.raw());
    }
    fn on_writable(&mut self, conn: &mut Conn<'_>, _: u64) {
        conn.resume_reading();
    }
    fn on_read_closed(&mut self, _conn: &mut Conn<'_>) {
        self.0.read_closed();
    }
    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        self.0.closed(info, reason);
    }
}

fn main() {
    let args = Args::parse();
    let mut engine = args.common.engine(None);
    let (upstream, timeout) = (args.upstream, Duration::from_secs(args.connect_timeout));
    let tls = args
        .upstream_tls
        .connect_options(&args.upstream.ip().to_string());
    let server = Server::listen(args.listen, Raw, move |_| Client {
        side: Side {
            peer: None,
            name: "client",
        },
        upstream,
        timeout,
        tls: tls.clone(),
    });
    let server = args.common.add(&mut engine, server);
    common::run(engine, &[&server]);
}
