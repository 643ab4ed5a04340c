//! TLS as a [`Layer`], on rustls' sans-IO connection API (`read_tls` / `process_new_packets` /
//! `write_tls` over engine buffers; no async runtime). One type serves both sides:
//! `rustls::Connection` is a server connection on accepted sockets and a client connection on
//! outgoing ones.
//!
//! Bounds: rustls holds at most one incoming record being deframed; decrypted bytes are moved
//! out at once into the connection's input buffer (bounded by `max_buffered_input`); bytes to
//! send are encrypted in chunks of at most 16 KiB and moved out at once into the wire queue
//! (bounded by the write watermarks). So TLS adds no unbounded buffer.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use tracing::debug;

use super::{Input, Layer};
use crate::info::{CloseReason, ConnInfo, TlsInfo};

/// Plaintext handed to rustls per `write` (one TLS record's worth).
const CHUNK: usize = 16 << 10;

pub(crate) struct TlsLayer {
    conn: Connection,
    /// The peer's close_notify is in: EOF for the layers above, and what follows is ignored.
    peer_closed: bool,
    /// Bytes received after the peer's close_notify, ignored.
    discarded: u64,
    /// Our close_notify is queued (see [`TlsLayer::process`]).
    sent_close: bool,
    /// rustls panicked (see [`TlsLayer::process`]): the connection is not touched again.
    poisoned: bool,
}

impl TlsLayer {
    pub(crate) fn server(config: &Arc<ServerConfig>) -> Result<TlsLayer, String> {
        let conn = ServerConnection::new(config.clone()).map_err(|e| e.to_string())?;
        Ok(TlsLayer::new(conn.into()))
    }

    pub(crate) fn client(
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsLayer, String> {
        let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        Ok(TlsLayer::new(conn.into()))
    }

    fn new(conn: Connection) -> TlsLayer {
        TlsLayer {
            conn,
            peer_closed: false,
            discarded: 0,
            sent_close: false,
            poisoned: false,
        }
    }

    /// Moves every TLS byte rustls has ready into `down`.
    fn drain(&mut self, down: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(down) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

impl TlsLayer {
    /// `process_new_packets`, which after our close_notify may panic in a debug build: rustls
    /// (0.23) debug-asserts that no fatal alert follows a close_notify it sent, and bad input
    /// read after ours makes it send one (rustls issue 959). A release build returns the error.
    /// Caught here, the panic ends only its connection, as the error would (`tls-error`).
    fn process(&mut self) -> Result<rustls::IoState, rustls::Error> {
        if !self.sent_close {
            return self.conn.process_new_packets();
        }
        let conn = &mut self.conn;
        CATCHING.set(true);
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.process_new_packets()));
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
        self.discarded += n as u64;
        debug!(
            bytes = n,
            total = self.discarded,
            "TLS: ignoring bytes received after close_notify"
        );
    }
}

thread_local! {
    /// Inside [`TlsLayer::process`]'s `catch_unwind` (for the fuzz target's panic hook).
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside the TLS layer's `catch_unwind` around rustls.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn catching() -> bool {
    CATCHING.get()
}

fn tls_error(e: impl std::fmt::Display) -> CloseReason {
    CloseReason::TlsError(e.to_string())
}

impl Layer for TlsLayer {
    fn start(&mut self, down: &mut Vec<u8>) -> Result<(), CloseReason> {
        self.drain(down); // a client's ClientHello; nothing for a server
        Ok(())
    }

    fn input(
        &mut self,
        data: &[u8],
        up: &mut Vec<u8>,
        down: &mut Vec<u8>,
    ) -> Result<Input, CloseReason> {
        let mut rest = data;
        let mut input = Input::default();
        while !rest.is_empty() {
            if self.peer_closed {
                // After close_notify rustls reads nothing more (`read_tls` answers `Ok(0)`):
                // what follows is ignored (RFC 8446, 6.1), never looped on.
                self.discard(rest.len());
                break;
            }
            let before = rest.len();
            let read = match self.conn.read_tls(&mut rest) {
                Ok(n) => n,
                Err(e) => return Err(tls_error(e)),
            };
            // Progress: every turn consumes bytes (or leaves: a read of nothing ends the loop).
            debug_assert_eq!(before - rest.len(), read, "read_tls consumed what it said");
            match self.process() {
                Ok(state) => {
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let start = up.len();
                        up.resize(start + n, 0);
                        if let Err(e) = self.conn.reader().read_exact(&mut up[start..]) {
                            up.truncate(start);
                            return Err(tls_error(e));
                        }
                    }
                    self.peer_closed |= state.peer_has_closed();
                }
                Err(e) => {
                    if !self.poisoned {
                        self.drain(down); // the alert that tells the peer why
                    }
                    return Err(tls_error(e));
                }
            }
            if read == 0 && !self.peer_closed {
                // rustls took nothing and the stream is not over: a state it should not reach
                // (its buffers are emptied every turn). Refuse rather than spin.
                return Err(tls_error("the TLS layer accepted no more input"));
            }
        }
        self.drain(down); // handshake messages, key updates
        input.eof = self.peer_closed;
        Ok(input)
    }

    fn output(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), CloseReason> {
        for chunk in data.chunks(CHUNK) {
            self.conn.writer().write_all(chunk).map_err(tls_error)?;
            self.drain(down);
        }
        Ok(())
    }

    fn close(&mut self, down: &mut Vec<u8>) {
        self.sent_close = true;
        self.conn.send_close_notify();
        self.drain(down);
    }

    fn ready(&self) -> bool {
        !self.conn.is_handshaking()
    }

    fn describe(&self, info: &mut ConnInfo) {
        let sni = match &self.conn {
            Connection::Server(s) => s.server_name().map(str::to_string),
            Connection::Client(_) => None,
        };
        info.tls = Some(Box::new(TlsInfo {
            version: self
                .conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher_suite: self
                .conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            sni,
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificates: self
                .conn
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
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
