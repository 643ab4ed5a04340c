//! [`Handler`]: the per-connection callbacks a server is written as, and [`Frame`]. Also the
//! glue that drives a typed handler and its codec for the engine (`Typed`, behind the
//! object-safe [`DynConn`]), and opening a connection from inside a callback
//! ([`Conn::connect`]).

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{DecodeError, Decoded, Decoder, Encoder};
use crate::conn::Conn;
use crate::core::{ConnCore, ConnectRequest, DynConn, ThreadCtx, Token};
use crate::handle::{ConnShared, ConnectionHandle};
use crate::info::{CloseReason, ConnInfo};
use crate::sockopt::SocketOptions;

mod items;
pub use items::ItemHandler;
pub(crate) use items::Items;

/// Per-connection callbacks, run on the connection's IO thread.
///
/// One value per connection, made by the server's factory when the connection is accepted; it
/// *is* the connection's state. Callbacks must not block for long: everything else on the same
/// IO thread waits meanwhile (hand blocking work to a [`WorkerPool`](crate::pool::WorkerPool),
/// with a [`Work`](crate::Work) from [`Conn::work`] so that no close drops its reply).
pub trait Handler: 'static {
    /// The connection is established. May write a greeting.
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let _ = conn;
    }

    /// A complete frame arrived (for [`Raw`](crate::codec::Raw): whatever bytes arrived).
    /// Frames of one connection arrive in order; the borrowed bytes live only for this call.
    ///
    /// Every handler served with a byte-range [`Decoder`] implements it. A handler served with
    /// an [`ItemDecoder`](crate::codec::ItemDecoder) receives
    /// [`ItemHandler::on_item`](crate::ItemHandler::on_item) instead and leaves this one out;
    /// the default (never reached then) logs an error and closes the connection.
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let _ = frame;
        tracing::error!(peer = %conn.peer_addr(), "Handler::on_frame is not implemented; closing");
        conn.close_with(CloseReason::Protocol("on_frame not implemented".into()));
    }

    /// The peer half-closed: it will send nothing more. Default: close gracefully, which
    /// answers outstanding work and flushes what is queued first.
    fn on_read_closed(&mut self, conn: &mut Conn<'_>) {
        conn.close();
    }

    /// A [`ConnectionHandle::notify`] arrived (its sender's writes made before it are
    /// already queued).
    fn on_notify(&mut self, conn: &mut Conn<'_>, value: u64) {
        let _ = (conn, value);
    }

    /// A connection this one asked about with
    /// [`ConnectionHandle::notify_when_writable`] is back under its low watermark (or has
    /// closed). A proxy resumes reading here.
    fn on_writable(&mut self, conn: &mut Conn<'_>, value: u64) {
        let _ = (conn, value);
    }

    /// Timer `id`, armed with [`Conn::set_timer`], expired.
    fn on_timer(&mut self, conn: &mut Conn<'_>, id: u64) {
        let _ = (conn, id);
    }

    /// This process has handed its listeners to a successor (a SIGHUP restart): it accepts
    /// nothing more and goes on serving this connection until it closes, or until the restart
    /// grace passes and `on_shutdown` follows. Called once, on every connection open at the
    /// handover (and on one that finishes its TLS or PROXY handshake later, right after
    /// `on_open`). A protocol that can ask its client to reconnect (to reach the new process)
    /// says so here. Default: nothing; the connection is served on as before.
    fn on_retire(&mut self, conn: &mut Conn<'_>) {
        let _ = conn;
    }

    /// The engine is shutting down. Default: close gracefully (outstanding work answers,
    /// queued bytes flush); connections still open at the drain deadline are reset.
    fn on_shutdown(&mut self, conn: &mut Conn<'_>) {
        conn.close_with(CloseReason::Shutdown);
    }

    /// The decoder rejected the input (frame or line too long, bad length). The stream cannot
    /// be decoded further: no more frames come and reading stops. Default: close gracefully
    /// (earlier requests still get their replies). Override to send a last reply after them
    /// ([`Conn::close_after`]); the close reason stays [`CloseReason::Protocol`].
    fn on_decode_error(&mut self, conn: &mut Conn<'_>, error: &DecodeError) {
        let _ = error;
        conn.close();
    }

    /// The connection is closed; called exactly once per connection, after every operation on
    /// it has completed.
    fn on_close(&mut self, info: &ConnInfo, reason: &CloseReason) {
        let _ = (info, reason);
    }
}

/// One decoded frame, borrowed from the engine's receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    raw: &'a [u8],
    payload: (usize, usize),
}

impl<'a> Frame<'a> {
    /// The frame as it was on the wire: header, payload and terminator.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    /// The payload: without the length header, or the line without its `\r\n` / `\n`.
    pub fn payload(&self) -> &'a [u8] {
        &self.raw[self.payload.0..self.payload.1]
    }
}

/// How an outgoing connection is made: timeout, socket options, TLS.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Give up (reason `Io(TimedOut)`) if not connected by then. Default 10 s.
    pub timeout: Option<Duration>,
    /// Socket options of the new connection.
    pub socket: SocketOptions,
    /// Write watermarks (low, high) of the new connection; default the engine's defaults.
    pub write_watermarks: (usize, usize),
    /// TLS client configuration and the server name to verify (`None`: plaintext).
    #[cfg(feature = "tls")]
    pub tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// How long the TLS handshake may take after the TCP connect.
    pub handshake_timeout: Duration,
    /// Bytes sent first once connected, before any layer's (a PROXY protocol header, see
    /// [`ConnectOptions::send_proxy`]); empty: none.
    pub preamble: Vec<u8>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ConnectOptions");
        d.field("timeout", &self.timeout)
            .field("socket", &self.socket)
            .field("write_watermarks", &self.write_watermarks)
            .field("preamble", &self.preamble.len());
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.as_ref().map(|(_, name)| name));
        d.finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Some(Duration::from_secs(10)),
            socket: SocketOptions::default(),
            write_watermarks: (
                crate::limits::DEFAULT_WRITE_LOW,
                crate::limits::DEFAULT_WRITE_HIGH,
            ),
            #[cfg(feature = "tls")]
            tls: None,
            handshake_timeout: crate::layer::DEFAULT_HANDSHAKE_TIMEOUT,
            preamble: Vec::new(),
        }
    }
}

impl ConnectOptions {
    /// The connect timeout (`None`: the kernel's).
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }
    /// Socket options.
    pub fn socket(mut self, s: SocketOptions) -> Self {
        self.socket = s;
        self
    }
    /// Speaks TLS to the server, verifying it as `server_name` with `config` (root store,
    /// optional client certificate).
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        self.tls = Some((config, server_name));
        self
    }

    /// Begins the connection with a PROXY protocol header (`version` 1: the text line, 2: the
    /// binary header, both built with the `ppp` crate) telling the server that `source` (the
    /// client) connected to `destination` (the address the client reached), before any other
    /// byte, TLS's ClientHello included. A relay passes the client's address on this way:
    /// [`Relay::send_proxy`](crate::relay::Relay::send_proxy). Addresses of different families
    /// are both sent as IPv6 (an IPv4 one mapped).
    pub fn send_proxy(
        mut self,
        version: crate::ProxyVersion,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Self {
        self.preamble = crate::layer::proxy::header(version, source, destination);
        self
    }

    /// The layers these options ask for (a TLS client), built where every stack is
    /// ([`LayerSpec`](crate::layer::LayerSpec)); `Err`: one cannot be made.
    pub(crate) fn layers(&self) -> Result<Option<crate::layer::Stack>, CloseReason> {
        #[allow(unused_mut)]
        let mut spec = crate::layer::LayerSpec::default();
        spec.set_handshake_timeout(self.handshake_timeout);
        #[cfg(feature = "tls")]
        if let Some((config, name)) = &self.tls {
            spec.tls_client(config.clone(), name.clone());
        }
        spec.stack()
    }
    /// The request an IO thread opens: these options for a connection to `addr` in slot
    /// (`token`, `gen`), with the state its handle shares if one was handed out already.
    pub(crate) fn request(
        self,
        (token, gen): (Token, u64),
        addr: SocketAddr,
        shared: Option<Arc<ConnShared>>,
        app: Box<dyn DynConn>,
    ) -> ConnectRequest {
        ConnectRequest {
            layers: self.layers(),
            preamble: self.preamble,
            token,
            gen,
            addr,
            timeout: self.timeout,
            options: self.socket,
            watermarks: self.write_watermarks,
            shared,
            app,
        }
    }
}

impl Conn<'_> {
    /// Opens an outgoing connection to `addr` on **this** IO thread, served by `handler` with
    /// `codec`, and returns a handle to it at once (writes made through it before the connect
    /// completes are queued and sent once connected). When connected, `handler`'s `on_open`
    /// runs; if the connect fails or times out, only its `on_close` runs, with
    /// [`CloseReason::Io`] saying why. Both ends of a proxied session then live on the same
    /// thread: bytes never cross threads.
    ///
    /// ```
    /// # use std::io::{Read, Write};
    /// # use std::net::SocketAddr;
    /// # use ringport::{codec::Raw, Engine, Server};
    /// # use ringport::{Conn, ConnectOptions, ConnectionHandle, Frame, Handler};
    /// struct Upstream { client: ConnectionHandle }
    /// impl Handler for Upstream {
    ///     fn on_frame(&mut self, _: &mut Conn<'_>, frame: Frame<'_>) {
    ///         let _ = self.client.write(frame.raw());
    ///     }
    /// }
    /// struct Client { addr: SocketAddr, upstream: Option<ConnectionHandle> }
    /// impl Handler for Client {
    ///     fn on_open(&mut self, conn: &mut Conn<'_>) {
    ///         let client = conn.handle();
    ///         let upstream = Upstream { client };
    ///         self.upstream = Some(conn.connect(self.addr, Raw, upstream, ConnectOptions::default()));
    ///     }
    ///     fn on_frame(&mut self, _: &mut Conn<'_>, frame: Frame<'_>) {
    ///         if let Some(u) = &self.upstream { let _ = u.write(frame.raw()); }
    ///     }
    /// }
    ///
    /// # let upstream_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # let upstream_addr = upstream_listener.local_addr()?;
    /// # let echo = std::thread::spawn(move || -> std::io::Result<()> {
    /// #     let (mut s, _) = upstream_listener.accept()?; // the upstream: an echo server
    /// #     s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    /// #     std::io::copy(&mut s.try_clone()?, &mut s)?;
    /// #     Ok(())
    /// # });
    /// let addr = upstream_addr; // e.g. "127.0.0.1:6000".parse()?
    /// let server = Server::new("127.0.0.1:0".parse()?, Raw, move |_| Client { addr, upstream: None });
    /// # let mut engine = Engine::builder().io_threads(1).handle_signals(false).build()?;
    /// # let addr = engine.add_server(server)?.local_addr();
    /// # let running = engine.start()?;
    /// # let mut client = std::net::TcpStream::connect(addr)?;
    /// # client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    /// # client.write_all(b"hello")?;
    /// # let mut reply = [0u8; 5];
    /// # client.read_exact(&mut reply)?;
    /// # assert_eq!(&reply, b"hello");
    /// # drop(client);
    /// # running.shutdown_handle().shutdown();
    /// # running.join();
    /// # echo.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect<D, H>(
        &mut self,
        addr: SocketAddr,
        codec: D,
        handler: H,
        options: ConnectOptions,
    ) -> ConnectionHandle
    where
        D: Decoder,
        H: Handler,
    {
        let (token, gen) = self.ctx.slots.alloc();
        let shared = ConnShared::new(
            options.write_watermarks.0.min(options.write_watermarks.1),
            options.write_watermarks.1,
        );
        let handle = ConnectionHandle::new(self.ctx.inbox.clone(), token, gen, shared.clone());
        let req = options.request(
            (token, gen),
            addr,
            Some(shared),
            Box::new(Typed::new(handler, codec)),
        );
        self.ctx.connects.push(req);
        handle
    }
}

/// A handler and its decoder, driven through [`DynConn`].
pub(crate) struct Typed<H, D> {
    handler: H,
    codec: D,
    /// A callback panicked: the handler's state is suspect, it is not called again.
    poisoned: bool,
    /// The frame the handler held back (`Conn::hold_frame`), as decoded: it is at the start
    /// of the next input and is offered again without decoding (or counting) it again.
    held: Option<Decoded>,
}

impl<H: Handler, D: Decoder> Typed<H, D> {
    pub(crate) fn new(handler: H, codec: D) -> Self {
        Typed {
            handler,
            codec,
            poisoned: false,
            held: None,
        }
    }

    fn guard(
        &mut self,
        core: &mut ConnCore,
        ctx: &mut ThreadCtx,
        token: Token,
        f: impl FnOnce(&mut H, &mut Conn<'_>),
    ) {
        let encoder = self.codec.encoder();
        guarded(
            &mut self.handler,
            &mut self.poisoned,
            encoder,
            (core, ctx, token),
            f,
        );
    }
}

/// Runs one callback; a panic in it costs only this connection (reset, reason
/// [`CloseReason::HandlerPanic`]), never the IO thread and its other connections. Nothing
/// runs once `poisoned`.
pub(crate) fn guarded<H>(
    handler: &mut H,
    poisoned: &mut bool,
    encoder: Option<&dyn Encoder>,
    (core, ctx, token): (&mut ConnCore, &mut ThreadCtx, Token),
    f: impl FnOnce(&mut H, &mut Conn<'_>),
) {
    if *poisoned {
        return;
    }
    let mut conn = Conn::new(core, ctx, token, encoder);
    if catch_unwind(AssertUnwindSafe(|| f(handler, &mut conn))).is_err() {
        *poisoned = true;
        tracing::error!(peer = %core.info.peer, "handler panicked; resetting its connection");
        core.on(crate::machine::Event::ForceAbort(CloseReason::HandlerPanic));
        ctx.mark_dirty(token, core);
    }
}

/// The decoder refused the input for good: count, log, record the reason, tell the handler;
/// no frame is decoded after it.
pub(crate) fn decode_failed(core: &mut ConnCore, ctx: &mut ThreadCtx, error: &DecodeError) {
    tracing::warn!(peer = %core.info.peer, %error, "closing connection: protocol error");
    ctx.stats(core.server).decode_errors.add(1);
    core.on(crate::machine::Event::DecodeError(CloseReason::Protocol(
        error.to_string(),
    )));
}

/// The callbacks other than the data path, forwarded to the handler through `self.guard`
/// (shared by the byte-range and the typed drivers).
macro_rules! forward_callbacks {
    () => {
        fn open(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token) {
            self.guard(core, ctx, token, |h, c| h.on_open(c));
        }

        fn read_closed(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token) {
            self.guard(core, ctx, token, |h, c| h.on_read_closed(c));
        }

        fn notify(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token, value: u64) {
            self.guard(core, ctx, token, |h, c| h.on_notify(c, value));
        }

        fn writable(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token, value: u64) {
            self.guard(core, ctx, token, |h, c| h.on_writable(c, value));
        }

        fn timer(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token, id: u64) {
            self.guard(core, ctx, token, |h, c| h.on_timer(c, id));
        }

        fn shutdown(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token) {
            self.guard(core, ctx, token, |h, c| h.on_shutdown(c));
        }

        fn retire(&mut self, core: &mut ConnCore, ctx: &mut ThreadCtx, token: Token) {
            self.guard(core, ctx, token, |h, c| h.on_retire(c));
        }

        fn closed(&mut self, info: &ConnInfo, reason: &CloseReason) {
            if self.poisoned {
                return;
            }
            let handler = &mut self.handler;
            if catch_unwind(AssertUnwindSafe(|| handler.on_close(info, reason))).is_err() {
                tracing::error!(peer = %info.peer, "handler panicked in on_close");
            }
        }
    };
}
pub(crate) use forward_callbacks;

impl<H: Handler, D: Decoder> DynConn for Typed<H, D> {
    fn data(
        &mut self,
        core: &mut ConnCore,
        ctx: &mut ThreadCtx,
        token: Token,
        data: &[u8],
    ) -> usize {
        let mut pos = 0;
        while pos < data.len() && core.wants_frames() && !self.poisoned {
            // The held frame again: the decoder already returned it (and moved past it).
            let again = self.held.take();
            let fits = |d: &Decoded| pos == 0 && d.consumed <= data.len();
            debug_assert!(
                again.as_ref().is_none_or(fits),
                "a held frame is the start of the next input"
            );
            let again = again.filter(fits);
            let fresh = again.is_none();
            let decoded = match again {
                Some(d) => Ok(Some(d)),
                None => self.codec.decode(&data[pos..]),
            };
            let d = match decoded {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(error) => {
                    decode_failed(core, ctx, &error);
                    self.guard(core, ctx, token, |h, c| h.on_decode_error(c, &error));
                    return data.len();
                }
            };
            if d.consumed == 0
                || d.consumed > data.len() - pos
                || d.payload.start > d.payload.end
                || d.payload.end > d.consumed
            {
                break; // a decoder bug; never loop or index out of bounds on it
            }
            let frame = Frame {
                raw: &data[pos..pos + d.consumed],
                payload: (d.payload.start, d.payload.end),
            };
            if fresh {
                ctx.stats(core.server).frames_in.add(1);
            }
            self.guard(core, ctx, token, |h, c| h.on_frame(c, frame));
            if core.m.held() || self.poisoned {
                if core.m.held() && !self.poisoned {
                    self.held = Some(d);
                }
                break;
            }
            pos += d.consumed;
        }
        pos
    }

    forward_callbacks!();
}
