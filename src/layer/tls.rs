//! TLS as a [`Layer`], on rustls' unbuffered sans-IO API (`rustls::unbuffered`:
//! `process_tls_records` and its `ConnectionState`s; no async runtime). One type serves both
//! sides: a server connection on accepted sockets, a client connection on outgoing ones.
//!
//! Buffers: rustls holds no buffer of received or outgoing TLS bytes of its own here. A call's
//! received bytes are copied once into the IO thread's scratch buffer and decrypted there, in
//! place; the plaintext goes straight to the layer above, the records rustls encodes straight
//! into the wire queue. Only the tail of a record not complete yet (or the records of a
//! handshake message not complete yet) is kept per connection, in `rx`, and `rx` is freed as
//! soon as it is empty: an idle connection holds no buffer (rustls' buffered `Connection`
//! held a 4 KiB deframer buffer each).
//!
//! Bounds: `rx` holds at most [`MAX_HELD`] bytes (a handshake message of rustls' 64 KiB limit
//! and one record): more is a TLS error of that connection. Decrypted bytes are moved out at
//! once into the connection's input buffer (bounded by `max_buffered_input`); encrypted bytes
//! into the wire queue (bounded by the write watermarks). So TLS adds no unbounded buffer.

use std::cell::Cell;
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerConnectionData, UnbufferedServerConnection,
};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, ReadEarlyData, UnbufferedConnectionCommon,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{ClientConfig, ServerConfig};

use tracing::debug;

use super::{Input, Layer};
use crate::info::{CloseReason, ConnInfo, TlsInfo};

/// The most received bytes a connection keeps between calls: a handshake message of rustls'
/// largest (64 KiB) spread over records, plus one record (16 KiB of payload and overhead).
pub(crate) const MAX_HELD: usize = (64 << 10) + (18 << 10);

/// Passes of the state machine in a row that consume no received byte: each drains one of
/// rustls' own queues (records to send, plaintext) or reports a state once, so a handful is
/// the most a call sees. More is a loop that does not advance: refused, never spun on.
const MAX_IDLE_PASSES: usize = 64;

/// One side's connection.
enum Conn {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

pub(crate) struct TlsLayer {
    conn: Conn,
    /// Received bytes not consumed yet: the start of a record, or the records of a handshake
    /// message not complete yet (rustls reads them again once the rest is in). No capacity
    /// while empty.
    rx: Vec<u8>,
    /// The server name the client asked for (SNI), seen when its hello was read.
    sni: Option<Box<str>>,
    /// The peer's close_notify is in: EOF for the layers above, and what follows is ignored.
    peer_closed: bool,
    /// Bytes received after the peer's close_notify, ignored.
    discarded: u64,
    /// Our close_notify is queued (see [`TlsLayer::guarded`]).
    sent_close: bool,
    /// rustls panicked (see [`TlsLayer::guarded`]): the connection is not touched again.
    poisoned: bool,
}

impl TlsLayer {
    /// A server connection. `config` should come through [`server_config`] (for the SNI in
    /// `TlsInfo`); another works, with no SNI reported.
    pub(crate) fn server(config: &Arc<ServerConfig>) -> Result<TlsLayer, String> {
        let conn = UnbufferedServerConnection::new(config.clone()).map_err(|e| e.to_string())?;
        Ok(TlsLayer::new(Conn::Server(conn)))
    }

    pub(crate) fn client(
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsLayer, String> {
        let conn =
            UnbufferedClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        Ok(TlsLayer::new(Conn::Client(conn)))
    }

    fn new(conn: Conn) -> TlsLayer {
        TlsLayer {
            conn,
            rx: Vec::new(),
            sni: None,
            peer_closed: false,
            discarded: 0,
            sent_close: false,
            poisoned: false,
        }
    }

    fn common(&self) -> &rustls::CommonState {
        match &self.conn {
            Conn::Server(c) => c,
            Conn::Client(c) => c,
        }
    }

    /// Runs `f` on rustls, catching the panic rustls may raise after our close_notify in a
    /// debug build: rustls (0.23) debug-asserts that no fatal alert follows a close_notify it
    /// sent, and bad input read after ours makes it send one (rustls issue 959). A release
    /// build returns the error. Caught here, the panic ends only its connection, as the error
    /// would (`tls-error`).
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<T, rustls::Error>,
    ) -> Result<T, rustls::Error> {
        if self.poisoned {
            return Err(rustls::Error::General("connection failed before".into()));
        }
        if !self.sent_close {
            return f(&mut self.conn);
        }
        let conn = &mut self.conn;
        CATCHING.set(true);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
        CATCHING.set(false);
        match r {
            Ok(r) => r,
            Err(_) => {
                self.poisoned = true;
                Err(rustls::Error::General(
                    "bad record after our close_notify".into(),
                ))
            }
        }
    }

    /// Ignores `n` bytes that came after the peer's close_notify (logged; the connection goes
    /// on to its end as after any EOF).
    fn discard(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.discarded += n as u64;
        debug!(
            bytes = n,
            total = self.discarded,
            "TLS: ignoring bytes received after close_notify"
        );
    }

    /// Runs the state machine over `buf` (received bytes, decrypted in place): plaintext to
    /// `up`, the records rustls sends on its own to `down`. Returns how many bytes of `buf`
    /// were consumed; the rest is the start of what the next call completes (or, after the
    /// peer's close_notify, bytes to ignore).
    fn pump(
        &mut self,
        buf: &mut [u8],
        up: &mut Vec<u8>,
        down: &mut Vec<u8>,
        out: &mut Pumped,
    ) -> Result<(), rustls::Error> {
        let r = self.guarded(|conn| match conn {
            Conn::Server(c) => pump(c, buf, up, down, out),
            Conn::Client(c) => pump(c, buf, up, down, out),
        });
        if let Some(sni) = SNI.take() {
            self.sni = Some(sni);
        }
        self.peer_closed |= out.peer_closed;
        r
    }

    /// After an error: the records rustls queued (the alert that tells the peer why) go to
    /// `down`. `buf` is what the failed run had not consumed (rustls' handshake joiner may
    /// point into it).
    fn alert(&mut self, buf: &mut [u8], down: &mut Vec<u8>) {
        let _ = self.guarded(|conn| {
            match conn {
                Conn::Server(c) => alert(c, buf, down),
                Conn::Client(c) => alert(c, buf, down),
            }
            Ok(())
        });
    }

    /// Runs the state machine over the held bytes (nothing new received) until it can send
    /// application data, and gives `f` the writer; `Ok(None)` if it cannot send (closed, or
    /// not established).
    fn with_writer<T>(
        &mut self,
        down: &mut Vec<u8>,
        f: impl FnOnce(&mut dyn WriteTo, &mut Vec<u8>) -> Result<T, rustls::Error>,
    ) -> Result<Option<T>, rustls::Error> {
        let mut rx = std::mem::take(&mut self.rx);
        let r = self.guarded(|conn| match conn {
            Conn::Server(c) => writer(c, &mut rx, down, f),
            Conn::Client(c) => writer(c, &mut rx, down, f),
        });
        self.rx = rx;
        r
    }
}

thread_local! {
    /// Inside [`TlsLayer::guarded`]'s `catch_unwind` (for the fuzz target's panic hook).
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// The IO thread's buffer where a call's received bytes are decrypted (kept between calls:
    /// one per thread, not one per connection).
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The server name of the last client hello this thread's certificate resolver saw
    /// (taken by the connection whose state machine ran it, at once).
    static SNI: Cell<Option<Box<str>>> = const { Cell::new(None) };
}

/// Whether this thread is inside the TLS layer's `catch_unwind` around rustls.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn catching() -> bool {
    CATCHING.get()
}

/// `config` with its certificate resolver wrapped to note the client's server name (SNI) for
/// the connection being set up: rustls' unbuffered server connection does not expose it.
pub(crate) fn server_config(config: Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut config = Arc::unwrap_or_clone(config);
    config.cert_resolver = Arc::new(NotesSni(config.cert_resolver.clone()));
    Arc::new(config)
}

#[derive(Debug)]
struct NotesSni(Arc<dyn ResolvesServerCert>);

impl ResolvesServerCert for NotesSni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Called on the IO thread, inside the connection's `process_tls_records`.
        SNI.set(hello.server_name().map(Box::from));
        self.0.resolve(hello)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
}

/// What one run of [`pump`] saw besides bytes.
#[derive(Default)]
struct Pumped {
    /// Bytes of the buffer consumed.
    used: usize,
    peer_closed: bool,
}

/// The side-specific part of the state machine.
trait Side: Sized {
    fn process<'c, 'i>(
        conn: &'c mut UnbufferedConnectionCommon<Self>,
        buf: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self>;
    /// 0-RTT data (servers that enable it) goes up like the rest.
    fn early(early: ReadEarlyData<'_, '_, Self>, up: &mut Vec<u8>) -> Result<(), rustls::Error>;
}

impl Side for ServerConnectionData {
    fn process<'c, 'i>(
        conn: &'c mut UnbufferedConnectionCommon<Self>,
        buf: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self> {
        conn.process_tls_records(buf)
    }

    fn early(
        mut early: ReadEarlyData<'_, '_, Self>,
        up: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        while let Some(record) = early.next_record() {
            up.extend_from_slice(record?.payload);
        }
        Ok(())
    }
}

impl Side for ClientConnectionData {
    fn process<'c, 'i>(
        conn: &'c mut UnbufferedConnectionCommon<Self>,
        buf: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self> {
        conn.process_tls_records(buf)
    }

    fn early(_: ReadEarlyData<'_, '_, Self>, _: &mut Vec<u8>) -> Result<(), rustls::Error> {
        // rustls gives a client no such state.
        Err(rustls::Error::General("early data on a client".into()))
    }
}

/// A record rustls encoded (`EncodeTlsData`) appended to `down`.
fn encode<D>(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, D>,
    down: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    append_sized(down, 1 << 10, |out| match e.encode(out) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(s)) => Err(Ok(s.required_size)),
        Err(err) => Err(Err(err.to_string())),
    })
}

/// Appends to `down` what `write` puts into a slice of `room` bytes, growing the slice once
/// more each time `write` says it needs more (`Err(Ok(required))`) than it was given; on any
/// other error (`Err(Err(why))`) `down` is left as it was.
fn append_sized(
    down: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Result<usize, String>>,
) -> Result<(), rustls::Error> {
    let start = down.len();
    loop {
        down.resize(start + room, 0);
        match write(&mut down[start..]) {
            Ok(n) => {
                down.truncate(start + n);
                return Ok(());
            }
            Err(Ok(required)) if required > room => room = required,
            Err(Ok(required)) => {
                down.truncate(start);
                return Err(rustls::Error::General(format!(
                    "rustls asked for {required} bytes of room and was given {room}"
                )));
            }
            Err(Err(why)) => {
                down.truncate(start);
                return Err(rustls::Error::General(why));
            }
        }
    }
}

/// The state machine over `buf` until it needs more bytes (see [`TlsLayer::pump`]).
fn pump<D: Side>(
    conn: &mut UnbufferedConnectionCommon<D>,
    buf: &mut [u8],
    up: &mut Vec<u8>,
    down: &mut Vec<u8>,
    out: &mut Pumped,
) -> Result<(), rustls::Error> {
    let mut idle = 0;
    loop {
        let status = D::process(conn, &mut buf[out.used..]);
        let mut used = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(e) => {
                out.used += used;
                return Err(e);
            }
        };
        let more = match state {
            ConnectionState::ReadTraffic(mut read) => {
                while let Some(record) = read.next_record() {
                    let record = record?;
                    used += record.discard;
                    up.extend_from_slice(record.payload);
                }
                true
            }
            ConnectionState::ReadEarlyData(early) => {
                D::early(early, up)?;
                true
            }
            ConnectionState::EncodeTlsData(mut e) => {
                encode(&mut e, down)?;
                true
            }
            // What was encoded is in `down`, which the engine sends.
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                true
            }
            ConnectionState::PeerClosed => {
                out.peer_closed = true;
                true
            }
            // Needs more bytes (the rest of `buf` is the start of a record), or is over.
            ConnectionState::BlockedHandshake
            | ConnectionState::WriteTraffic(_)
            | ConnectionState::Closed => false,
            other => {
                return Err(rustls::Error::General(format!(
                    "unexpected TLS state {other:?}"
                )))
            }
        };
        out.used += used;
        debug_assert!(out.used <= buf.len(), "rustls consumed what it was given");
        if !more {
            return Ok(());
        }
        // Progress: a pass consumes bytes, or drains one of rustls' own queues; a run of
        // passes that consume nothing is bounded (refused rather than spun on).
        idle = if used == 0 { idle + 1 } else { 0 };
        debug_assert!(
            idle < MAX_IDLE_PASSES,
            "the TLS state machine does not advance"
        );
        if idle >= MAX_IDLE_PASSES {
            return Err(rustls::Error::General(
                "the TLS layer made no progress".into(),
            ));
        }
    }
}

/// Encrypts into a `Vec` (what [`TlsLayer::with_writer`]'s callers do with the writer).
trait WriteTo {
    /// Application bytes as records, appended to `down`.
    fn encrypt(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), rustls::Error>;
    /// A close_notify appended to `down`.
    fn close_notify(&mut self, down: &mut Vec<u8>) -> Result<(), rustls::Error>;
}

/// Record overhead allowed per 16 KiB of payload when sizing the output (TLS 1.3: header 5,
/// content type 1, AEAD tag 16; TLS 1.2 GCM: header 5, nonce 8, tag 16); rustls says the exact
/// size when it is more (a key update queued with the data), and the call is repeated.
const OVERHEAD: usize = 40;

/// An encryption error as [`append_sized`] reads it: more room, or a failure.
fn sized(err: EncryptError) -> Result<usize, String> {
    match err {
        EncryptError::InsufficientSize(s) => Ok(s.required_size),
        err => Err(err.to_string()),
    }
}

impl<D> WriteTo for WriteTraffic<'_, D> {
    fn encrypt(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), rustls::Error> {
        let records = data.len().div_ceil(16 << 10).max(1);
        let room = data.len() + records * OVERHEAD;
        append_sized(down, room, |out| {
            WriteTraffic::encrypt(self, data, out).map_err(sized)
        })
    }

    fn close_notify(&mut self, down: &mut Vec<u8>) -> Result<(), rustls::Error> {
        append_sized(down, 64, |out| self.queue_close_notify(out).map_err(sized))
    }
}

/// The state machine with no received bytes, until it can send application data (records
/// it queued itself go to `down` first); then `f`. `Ok(None)`: it cannot send (closed, or
/// the handshake is not done).
fn writer<D: Side, T>(
    conn: &mut UnbufferedConnectionCommon<D>,
    rx: &mut [u8],
    down: &mut Vec<u8>,
    f: impl FnOnce(&mut dyn WriteTo, &mut Vec<u8>) -> Result<T, rustls::Error>,
) -> Result<Option<T>, rustls::Error> {
    for _ in 0..MAX_IDLE_PASSES {
        // The held bytes, which input left with nothing complete in them: nothing consumed.
        let status = D::process(conn, rx);
        debug_assert_eq!(status.discard, 0, "held bytes hold nothing complete");
        if status.discard != 0 {
            return Err(rustls::Error::General(
                "the TLS layer held a complete record".into(),
            ));
        }
        match status.state? {
            ConnectionState::WriteTraffic(mut w) => return f(&mut w, down).map(Some),
            ConnectionState::EncodeTlsData(mut e) => encode(&mut e, down)?,
            ConnectionState::TransmitTlsData(t) => t.done(),
            // Only after a close_notify (input drains plaintext and reports it at once).
            ConnectionState::PeerClosed => {}
            ConnectionState::ReadTraffic(_) | ConnectionState::ReadEarlyData(_) => {
                return Err(rustls::Error::General(
                    "plaintext left unread in the TLS layer".into(),
                ))
            }
            _ => return Ok(None),
        }
    }
    Err(rustls::Error::General(
        "the TLS layer made no progress".into(),
    ))
}

/// See [`TlsLayer::alert`]: what rustls queued, until it has nothing more (bounded).
/// Only while rustls has records queued: a pass then pops one before it reads `buf` again
/// (which would fail again, and a second fatal alert trips rustls' debug assertion).
fn alert<D: Side>(conn: &mut UnbufferedConnectionCommon<D>, buf: &mut [u8], down: &mut Vec<u8>) {
    for _ in 0..MAX_IDLE_PASSES {
        if !conn.wants_write() {
            return;
        }
        let status = D::process(conn, buf);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                if encode(&mut e, down).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

fn tls_error(e: impl std::fmt::Display) -> CloseReason {
    CloseReason::TlsError(e.to_string())
}

impl Layer for TlsLayer {
    fn start(&mut self, down: &mut Vec<u8>) -> Result<(), CloseReason> {
        // A client's ClientHello; nothing for a server.
        self.pump(&mut [], &mut Vec::new(), down, &mut Pumped::default())
            .map_err(tls_error)
    }

    fn input(
        &mut self,
        data: &[u8],
        up: &mut Vec<u8>,
        down: &mut Vec<u8>,
    ) -> Result<Input, CloseReason> {
        if self.peer_closed {
            // After close_notify rustls reads nothing more: what follows is ignored (RFC 8446,
            // 6.1), never looped on.
            self.discard(data.len());
            return Ok(Input { eof: true });
        }
        // Decrypted where it lies: in `rx` after a held start, else in the thread's scratch
        // buffer (a copy of `data`: rustls decrypts in place, and `data` is the engine's).
        let held = !self.rx.is_empty();
        let mut buf = if held {
            std::mem::take(&mut self.rx)
        } else {
            SCRATCH.take()
        };
        if !held {
            buf.clear();
        }
        buf.extend_from_slice(data);
        let mut out = Pumped::default();
        let r = self.pump(&mut buf, up, down, &mut out);
        let used = out.used;
        let rest = buf.len() - used;
        match &r {
            Ok(()) if self.peer_closed => self.discard(rest),
            Ok(()) if rest > 0 => {
                // The start of what the next call completes: kept, exactly sized.
                if held {
                    buf.drain(..used);
                    if buf.capacity() > 2 * buf.len() + (1 << 10) {
                        buf.shrink_to_fit(); // held for as long as the peer is slow
                    }
                    self.rx = std::mem::take(&mut buf);
                } else {
                    self.rx = buf[used..].to_vec();
                }
            }
            Ok(()) => {}
            // The alert that tells the peer why, if rustls queued one.
            Err(_) => self.alert(&mut buf[used..], down),
        }
        if !held {
            SCRATCH.set(buf);
        }
        if let Err(e) = r {
            return Err(tls_error(e));
        }
        if self.rx.len() > MAX_HELD {
            return Err(tls_error(format!(
                "{} bytes received without a complete TLS record or handshake message",
                self.rx.len()
            )));
        }
        Ok(Input {
            eof: self.peer_closed,
        })
    }

    fn output(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), CloseReason> {
        if data.is_empty() {
            return Ok(());
        }
        match self.with_writer(down, |w, down| w.encrypt(data, down)) {
            Ok(Some(())) => Ok(()),
            Ok(None) => Err(tls_error(
                "TLS cannot send now (closed, or not established)",
            )),
            Err(e) => Err(tls_error(e)),
        }
    }

    fn close(&mut self, down: &mut Vec<u8>) {
        if self.sent_close {
            return;
        }
        if let Err(e) = self.with_writer(down, |w, down| w.close_notify(down)) {
            debug!(error = %e, "TLS: close_notify not sent");
        }
        self.sent_close = true;
    }

    fn ready(&self) -> bool {
        !self.common().is_handshaking()
    }

    fn describe(&self, info: &mut ConnInfo) {
        let common = self.common();
        info.tls = Some(Box::new(TlsInfo {
            version: common
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher_suite: common
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            sni: self.sni.as_deref().map(str::to_string),
            alpn: common.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificates: common
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
                .unwrap_or_default(),
        }));
    }

    fn timeout_reason(&self) -> CloseReason {
        CloseReason::TlsHandshakeTimeout
    }

    fn eof_reason(&self) -> CloseReason {
        CloseReason::TlsError("EOF during the handshake".into())
    }

    fn held(&self) -> usize {
        self.rx.capacity()
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
