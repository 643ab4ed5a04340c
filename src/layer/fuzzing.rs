//! The layer stack under a fuzzer (`fuzz/fuzz_targets/layers.rs`; also run on fixed and random
//! inputs by the unit tests). Not part of the API: compiled only for the crate's tests and with
//! the `fuzzing` feature, and hidden from the docs.
//!
//! One run is a server stack (PROXY header and/or TLS, as the engine builds it for a server)
//! and a client stack (ringport's own TLS client layer, as for `Conn::connect`), joined by two
//! byte pipes. The input picks the setup, then a list of operations: deliver the next `n`
//! bytes of a pipe (arbitrary split points), write plaintext on either side, inject garbage or
//! a plaintext close_notify alert at any point of either pipe, flip a byte, close (close_notify)
//! either side, and end either pipe (EOF). The engine's rules are kept: plaintext is written
//! only once a side's stack is ready and until it closed; nothing joins a pipe after its EOF.
//!
//! Checked on every call: no panic out of the stack (the one rustls debug assertion the TLS
//! layer catches is let through to it: [`allow_caught_rustls_assertion`]); each call takes all the bytes it is given (the stack has
//! no "left over" answer: what a layer needs more of, it holds) and returns; what comes out is
//! bounded by what went in (plaintext up, never more than the bytes in; bytes down, a
//! handshake flight or alerts); `ready` and the peer's EOF never go back; after an error the
//! stack is dead (nothing more comes out). Checked at the end of a run without corruption or
//! EOF: every byte still in the pipes is delivered, and then both sides are established, each
//! received exactly the plaintext the other wrote, and each close_notify was seen as EOF.
//! (rustls draws its own randomness, so a run is not bit-for-bit repeatable; its decisions
//! are.)

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::proxy::ProxyLayer;
use super::tls::TlsLayer;
use super::{Layer, ProxyProtocol, Stack};

/// An unencrypted close_notify alert record (valid only before the handshake's keys).
const PLAIN_CLOSE_NOTIFY: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00];
/// How many bytes a side may send in one call besides what answers the input (a handshake
/// flight with its certificate, tickets, alerts).
const FLIGHT: usize = 16 << 10;

struct Configs {
    server: Arc<ServerConfig>,
    client13: Arc<ClientConfig>,
    client12: Arc<ClientConfig>,
}

/// A server configuration and a client one trusting it (TLS 1.3), for the layer's tests.
#[cfg(test)]
pub(crate) fn tls_configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let c = configs();
    (c.server.clone(), c.client13.clone())
}

/// Made once per process: a CA-less self-signed certificate for `localhost`.
fn configs() -> &'static Configs {
    static C: OnceLock<Configs> = OnceLock::new();
    C.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let der: CertificateDer<'static> = cert.der().clone();
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("root");
        let client13 = ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let client12 = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth();
        Configs {
            server: Arc::new(server),
            client13: Arc::new(client13),
            client12: Arc::new(client12),
        }
    })
}

/// The fuzzer's bytes, read front to back; zeros once they run out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// One side: its stack (none: a plaintext client of a PROXY-only server), what it received,
/// and what it observed.
struct Side {
    stack: Option<Stack>,
    /// Plaintext that came up out of the stack.
    got: Vec<u8>,
    /// Plaintext written through the stack (sent while established).
    sent: Vec<u8>,
    /// Bytes given to `input` in all.
    fed: usize,
    ready: bool,
    eof: bool,
    failed: bool,
    closed: bool,
}

impl Side {
    fn new(stack: Option<Stack>) -> Side {
        Side {
            stack,
            got: Vec::new(),
            sent: Vec::new(),
            fed: 0,
            ready: false,
            eof: false,
            failed: false,
            closed: false,
        }
    }

    fn is_ready(&self) -> bool {
        self.stack.as_ref().is_none_or(Stack::ready)
    }

    /// Feeds `data` (all of it) up the stack; its own bytes go to `out`. Checks the call.
    fn input(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.fed += data.len();
        let Some(stack) = self.stack.as_mut() else {
            self.got.extend_from_slice(data);
            return;
        };
        let (mut up, mut down) = (Vec::new(), Vec::new());
        let r = stack.input(data, &mut up, &mut down);
        if self.failed {
            assert!(
                r.is_ok() && up.is_empty() && down.is_empty(),
                "a failed stack stays dead"
            );
            return;
        }
        assert!(
            down.len() <= FLIGHT + 8 * data.len(),
            "{} bytes sent for {} received",
            down.len(),
            data.len()
        );
        match r {
            Ok(i) => {
                assert!(!self.eof || i.eof, "EOF went back");
                self.eof |= i.eof;
            }
            Err(_) => self.failed = true,
        }
        let ready = stack.ready();
        assert!(!self.ready || ready, "ready went back");
        self.ready = ready;
        self.got.extend_from_slice(&up);
        assert!(
            self.got.len() <= self.fed,
            "more plaintext ({}) than bytes in ({})",
            self.got.len(),
            self.fed
        );
        out.extend_from_slice(&down);
    }

    /// Writes plaintext as the engine does: only once established and before the close.
    fn write(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.closed || self.failed || !self.is_ready() {
            return;
        }
        let Some(stack) = self.stack.as_mut() else {
            self.sent.extend_from_slice(data);
            out.extend_from_slice(data);
            return;
        };
        let mut down = Vec::new();
        match stack.output(data, &mut down) {
            Ok(()) => self.sent.extend_from_slice(data),
            Err(_) => self.failed = true,
        }
        assert!(down.len() <= data.len() + FLIGHT, "output bounded by input");
        out.extend_from_slice(&down);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.closed || !self.is_ready() {
            return;
        }
        self.closed = true;
        if let Some(stack) = self.stack.as_mut() {
            let mut down = Vec::new();
            stack.close(&mut down);
            assert!(down.len() <= FLIGHT, "close_notify bounded");
            assert!(stack.is_closed());
            out.extend_from_slice(&down);
        }
    }
}

/// A pipe between the sides: bytes not yet delivered, and whether its sender ended it.
#[derive(Default)]
struct Pipe {
    bytes: Vec<u8>,
    ended: bool,
}

impl Pipe {
    /// The sender's bytes.
    fn push(&mut self, data: &[u8]) {
        if !self.ended {
            self.bytes.extend_from_slice(data);
        }
    }
    /// The next `n` bytes (0: all).
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = if n == 0 { self.bytes.len() } else { n };
        let n = n.min(self.bytes.len());
        self.bytes.drain(..n).collect()
    }
    /// Bytes that are not the sender's, at `at`.
    fn insert(&mut self, at: usize, bytes: &[u8]) {
        if !self.ended {
            self.bytes.splice(at..at, bytes.iter().copied());
        }
    }
    /// The byte at `at` changed.
    fn flip(&mut self, at: usize, mask: u8) {
        if let Some(b) = self.bytes.get_mut(at) {
            *b ^= mask | 1;
        }
    }
}

/// For a fuzz target whose panic hook aborts (libFuzzer's): lets the one panic the TLS layer
/// catches unwind to it, and keeps every other panic fatal. rustls (0.23) debug-asserts that
/// no fatal alert follows a close_notify it sent; bad input read after ours makes it send one
/// (rustls issue 959). A release build returns the error; the layer catches the debug build's
/// panic and ends the connection (`TlsLayer::process`). Call once, after the fuzzer's set-up.
pub fn allow_caught_rustls_assertion() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fatal = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let known = info.location().is_some_and(|l| {
                l.file().contains("rustls") && l.file().ends_with("common_state.rs")
            }) && {
                let p = info.payload();
                let msg = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str));
                msg.is_some_and(|m| m.contains("sent_fatal_alert"))
            };
            if !known || !super::tls::catching() {
                fatal(info);
            }
        }));
    });
}

/// Runs one input (see the module's description). Panics on a broken invariant. `true`: the
/// run was clean, and its end was checked.
pub fn layers(data: &[u8]) -> bool {
    let cfg = configs();
    let mut cur = Cursor(data);
    let setup = cur.byte();
    let tls = setup % 6 != 5;
    // The PROXY layer of the server and the header the client starts with.
    let (mode, header): (Option<ProxyProtocol>, Vec<u8>) = match setup % 6 {
        0 => (None, Vec::new()),
        1 => (Some(ProxyProtocol::Optional), Vec::new()),
        2 => (
            Some(ProxyProtocol::Optional),
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n".to_vec(),
        ),
        3 => (Some(ProxyProtocol::Required), proxy_v2_header()),
        4 => {
            let n = usize::from(cur.byte());
            (Some(ProxyProtocol::Required), cur.bytes(n))
        }
        _ => (Some(ProxyProtocol::Required), b"PROXY UNKNOWN\r\n".to_vec()),
    };
    let mut clean = setup % 6 != 4;
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    if let Some(mode) = mode {
        layers.push(Box::new(ProxyLayer::new(mode, Duration::from_secs(60))));
    }
    if tls {
        layers.push(Box::new(
            TlsLayer::server(&cfg.server).expect("server connection"),
        ));
    }
    let mut server = Side::new(Some(Stack::new(layers, Duration::from_secs(60))));
    let mut client = Side::new(tls.then(|| {
        let config = if setup & 8 != 0 {
            &cfg.client12
        } else {
            &cfg.client13
        };
        let name = ServerName::try_from("localhost").expect("name");
        Stack::new(
            vec![Box::new(
                TlsLayer::client(config, name).expect("client connection"),
            )],
            Duration::from_secs(60),
        )
    }));
    let (mut c2s, mut s2c) = (Pipe::default(), Pipe::default());
    c2s.push(&header);
    let mut start = Vec::new();
    if let Some(s) = client.stack.as_mut() {
        s.start(std::time::Instant::now()).expect("ClientHello");
        start = std::mem::take(&mut s.wire);
    }
    c2s.push(&start);
    server
        .stack
        .as_mut()
        .map(|s| {
            let r = s.start(std::time::Instant::now());
            s.wire.clear(); // a server sends nothing first
            r
        })
        .transpose()
        .expect("server start");

    while !cur.done() {
        let op = cur.byte();
        match op % 12 {
            0 => deliver(&mut c2s, usize::from(cur.byte()), &mut server, &mut s2c),
            1 => deliver(&mut s2c, usize::from(cur.byte()), &mut client, &mut c2s),
            2 | 3 => {
                let b = cur.byte();
                let len = usize::from(b) * if b & 1 == 1 { 97 } else { 1 };
                let text = pattern(cur.byte(), len);
                let (side, pipe) = if op % 12 == 2 {
                    (&mut client, &mut c2s)
                } else {
                    (&mut server, &mut s2c)
                };
                let mut out = Vec::new();
                side.write(&text, &mut out);
                pipe.push(&out);
            }
            4 | 5 | 10 | 11 => {
                let pipe = if op & 16 == 0 { &mut c2s } else { &mut s2c };
                let at = match cur.byte() {
                    255 => pipe.bytes.len(), // at the end
                    b => usize::from(b) % (pipe.bytes.len() + 1),
                };
                match op % 12 {
                    10 => pipe.insert(at, &PLAIN_CLOSE_NOTIFY),
                    11 => pipe.flip(at, cur.byte()),
                    _ => {
                        let n = usize::from(cur.byte());
                        let junk = cur.bytes(n);
                        pipe.insert(at, &junk);
                    }
                }
                clean = false;
            }
            6 => {
                let mut out = Vec::new();
                client.close(&mut out);
                c2s.push(&out);
            }
            7 => {
                let mut out = Vec::new();
                server.close(&mut out);
                s2c.push(&out);
            }
            8 => c2s.ended = true,
            _ => s2c.ended = true,
        }
        // The engine asks for the EOF reason of a stack not ready when its input ends.
        if c2s.ended && c2s.bytes.is_empty() && !server.is_ready() {
            let _ = server.stack.as_ref().map(Stack::eof_reason);
        }
    }
    if !clean || c2s.ended || s2c.ended {
        return false;
    }
    // Everything still in the pipes is delivered: then all must have gone through.
    for _ in 0..64 {
        if c2s.bytes.is_empty() && s2c.bytes.is_empty() {
            break;
        }
        deliver(&mut c2s, 0, &mut server, &mut s2c);
        deliver(&mut s2c, 0, &mut client, &mut c2s);
    }
    assert!(c2s.bytes.is_empty() && s2c.bytes.is_empty(), "no quiet end");
    assert!(!server.failed && !client.failed, "a clean run failed");
    assert!(server.is_ready() && client.is_ready(), "not established");
    assert!(
        server.got == client.sent,
        "client to server plaintext differs"
    );
    assert!(
        client.got == server.sent,
        "server to client plaintext differs"
    );
    if tls {
        assert_eq!(server.eof, client.closed, "the client's close_notify");
        assert_eq!(client.eof, server.closed, "the server's close_notify");
    }
    true
}

/// Delivers the next `n` bytes of `pipe` (0: all) to `to`, whose own bytes go to `back` (as
/// the engine does, never an empty delivery).
fn deliver(pipe: &mut Pipe, n: usize, to: &mut Side, back: &mut Pipe) {
    let chunk = pipe.take(n);
    if chunk.is_empty() {
        return;
    }
    let mut out = Vec::new();
    to.input(&chunk, &mut out);
    back.push(&out);
}

/// `len` bytes counting up from `seed` (so a reordering or a loss shows).
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// A PROXY v2 header (PROXY, TCP over IPv4) with one TLV.
fn proxy_v2_header() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    let mut body = vec![192, 0, 2, 1, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb];
    body.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // PP2_TYPE_NOOP
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

#[cfg(test)]
mod tests {
    use super::layers;

    /// Deliver-everything steps, as a fuzzer's input would name them.
    fn script(setup: u8, ops: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![setup];
        for op in ops {
            v.extend_from_slice(op);
        }
        v
    }

    const DELIVER_C2S: &[u8] = &[0, 0];
    const DELIVER_S2C: &[u8] = &[1, 0];

    #[test]
    fn clean_exchanges_in_every_setup() {
        for setup in [0u8, 1, 2, 3, 5, 8, 11, 13] {
            let input = script(
                setup,
                &[
                    DELIVER_C2S,
                    DELIVER_S2C,
                    DELIVER_C2S,
                    DELIVER_S2C,
                    &[2, 201, 7], // client writes 100 * 97 bytes
                    &[3, 40, 9],  // server writes 40 bytes
                    &[0, 13],     // 13 bytes of it delivered
                    &[6],         // client close_notify
                    &[1, 0],
                ],
            );
            assert!(layers(&input), "setup {setup}: the end was checked");
        }
    }

    #[test]
    fn bytes_after_close_notify_in_both_directions() {
        // Established, then each side's close_notify followed by 16 KiB in the same delivery.
        let mut input = script(
            0,
            &[DELIVER_C2S, DELIVER_S2C, DELIVER_C2S, DELIVER_S2C, &[6, 7]],
        );
        // Garbage at the end of a pipe: op 4 (client to server) and 28 (server to client).
        for (garbage, deliver) in [(4u8, 0u8), (28, 1)] {
            for _ in 0..64 {
                input.extend_from_slice(&[garbage, 255, 255]);
                input.extend(std::iter::repeat_n(b'x', 255));
            }
            input.extend_from_slice(&[deliver, 0]);
        }
        assert!(!layers(&input), "garbage: not a clean run");
    }

    #[test]
    fn random_inputs() {
        super::allow_caught_rustls_assertion(); // as the fuzz target runs
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        };
        let mut checked = 0;
        for run in 0..128 {
            // Half of the runs keep to operations that corrupt nothing (deliver, write, close).
            let ops: &[u8] = if run % 2 == 0 {
                &[0, 1, 2, 3, 6, 7]
            } else {
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 28]
            };
            let mut input = vec![next()];
            for _ in 0..40 {
                let op = ops[usize::from(next()) % ops.len()];
                input.push(op);
                let args = match op % 12 {
                    0 | 1 => 1,
                    2 | 3 | 11 => 2,
                    4 | 5 => 3,
                    10 => 1,
                    _ => 0,
                };
                input.extend((0..args).map(|_| next()));
                if op % 12 == 4 || op % 12 == 5 {
                    let n = usize::from(*input.last().unwrap());
                    input.extend((0..n).map(|_| next()));
                }
            }
            checked += usize::from(layers(&input));
        }
        println!("{checked} of 128 random runs clean and checked to the end");
        assert!(
            checked >= 32,
            "too few runs reached the end checks: {checked}"
        );
    }
}
