//! Layers: sans-IO transformations between the socket and the codec.
//!
//! ```text
//! socket ─▶ [layer 0: PROXY header, once] ─▶ [layer 1: TLS records] ─▶ codec ─▶ Handler
//! Handler ─▶ write queue (plaintext) ─▶ [layer 1] ─▶ [layer 0] ─▶ wire queue ─▶ send
//! ```
//!
//! A [`Layer`] takes bytes from below and produces bytes for the layer above, plus bytes it
//! must send on its own (a TLS handshake, an alert); it turns bytes from above into bytes for
//! below; it says when it is established (the handshake is done: `on_open` waits for it) and
//! adds its facts to [`ConnInfo`]. It owns its limits; a failure costs only its connection, with
//! a [`CloseReason`] of its own. The engine knows a [`Stack`] of layers, not TLS by name: a layer
//! for the PROXY protocol header sits below TLS without the engine changing. A server's (or an
//! outgoing connection's) configuration is a [`LayerSpec`], the one place a stack is built.

#[cfg(all(feature = "tls", any(test, feature = "fuzzing")))]
pub mod fuzzing;
pub(crate) mod proxy;
mod spec;
#[cfg(feature = "tls")]
pub(crate) mod tls;

use std::time::{Duration, Instant};

use crate::info::{CloseReason, ConnInfo};

/// What a layer's input produced besides bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Input {
    /// The peer ended the stream at this layer (TLS close_notify): EOF for the layers above.
    pub eof: bool,
}

/// One sans-IO layer of a connection.
pub(crate) trait Layer: Send {
    /// The transport is connected: bytes this side sends first (a TLS ClientHello) go to `down`.
    fn start(&mut self, down: &mut Vec<u8>) -> Result<(), CloseReason>;
    /// Consumes `data` from below: what it carries goes to `up`, what this layer must send
    /// itself (handshake, alerts) to `down`. After an `Err` (bytes in `down` are still sent:
    /// an alert) the layer is dead.
    fn input(
        &mut self,
        data: &[u8],
        up: &mut Vec<u8>,
        down: &mut Vec<u8>,
    ) -> Result<Input, CloseReason>;
    /// Wraps `data` from above into `down`.
    fn output(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), CloseReason>;
    /// A graceful end of our sending side: the layer's last bytes (TLS close_notify).
    fn close(&mut self, down: &mut Vec<u8>);
    /// Established: application bytes flow both ways.
    fn ready(&self) -> bool;
    /// Adds what the layer learned to the connection's facts (once ready).
    fn describe(&self, info: &mut ConnInfo);
    /// The reason to give when the layer is not ready within its setup time.
    fn timeout_reason(&self) -> CloseReason;
    /// A setup deadline of the layer's own, tighter than the connection's handshake timeout
    /// (the PROXY header's); `None`: only the connection's.
    fn setup_deadline(&self) -> Option<Instant> {
        None
    }
    /// The reason to give when the peer ends the stream before the layer is ready.
    fn eof_reason(&self) -> CloseReason;
    /// Once ready, the layer names the connection's client (the PROXY header): per-IP limits
    /// and the header counts wait for it.
    fn names_client(&self) -> bool {
        false
    }
    /// Bytes the layer keeps between calls (received bytes not complete yet): charged to the
    /// connection's footprint.
    fn held(&self) -> usize {
        0
    }
}

/// What one call of [`Stack::receive`] produced besides plaintext.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// The peer ended the stream at the top layer (TLS close_notify): EOF for the codec.
    pub eof: bool,
    /// The layer that names the client became ready in this call: `describe` has run, the
    /// connection's client address is known (at most once per connection).
    pub client_named: bool,
}

/// A connection's layers, bottom (socket side) first, with everything the engine keeps for
/// them: the bytes they produced for the wire, the setup deadline, whether the client is named
/// yet and whether the peer ended the stream at the top. The engine knows only this type
/// (boxed in the connection's state: a plain connection pays one pointer for it).
pub(crate) struct Stack {
    layers: Vec<Box<dyn Layer>>,
    /// Bytes the layers produced, ready to send (the connection's `out` holds plaintext).
    pub wire: Vec<u8>,
    /// How long the layers may take to become ready once the transport is up.
    timeout: Duration,
    /// When the layers must be ready by (`None`: not started, or ready).
    deadline: Option<Instant>,
    /// A layer that names the client is not ready yet.
    client_pending: bool,
    /// The top layer reported the peer's end of stream.
    eof: bool,
    failed: bool,
    closed: bool,
}

impl Stack {
    /// `layers` bottom first; they have `timeout` to become ready once started.
    pub(crate) fn new(layers: Vec<Box<dyn Layer>>, timeout: Duration) -> Stack {
        let client_pending = layers.iter().any(|l| l.names_client());
        Stack {
            layers,
            wire: Vec::new(),
            timeout,
            deadline: None,
            client_pending,
            eof: false,
            failed: false,
            closed: false,
        }
    }

    /// The transport is up at `now`: the setup clock starts, and bytes this side sends first
    /// (a TLS ClientHello) are queued on the wire.
    pub(crate) fn start(&mut self, now: Instant) -> Result<(), CloseReason> {
        self.deadline = Some(now + self.timeout);
        for l in &mut self.layers {
            l.start(&mut self.wire)
                .inspect_err(|_| self.failed = true)?;
        }
        Ok(())
    }

    /// Received bytes: plaintext to `up`, what the layers send on their own to the wire.
    pub(crate) fn receive(
        &mut self,
        data: &[u8],
        up: &mut Vec<u8>,
    ) -> Result<Received, CloseReason> {
        let mut wire = std::mem::take(&mut self.wire);
        let r = self.input(data, up, &mut wire);
        self.wire = wire;
        let input = r?;
        self.eof |= input.eof;
        let client_named = self.client_pending
            && self
                .layers
                .iter()
                .filter(|l| l.names_client())
                .all(|l| l.ready());
        if client_named {
            self.client_pending = false;
        }
        Ok(Received {
            eof: input.eof,
            client_named,
        })
    }

    /// Wraps application bytes onto the wire.
    pub(crate) fn send(&mut self, data: &[u8]) -> Result<(), CloseReason> {
        let mut wire = std::mem::take(&mut self.wire);
        let r = self.output(data, &mut wire);
        self.wire = wire;
        r
    }

    /// The graceful close's last bytes onto the wire (once; nothing after a failure).
    pub(crate) fn finish(&mut self) {
        let mut wire = std::mem::take(&mut self.wire);
        self.close(&mut wire);
        self.wire = wire;
    }

    /// The connection opened (every layer is ready): no setup deadline any more.
    pub(crate) fn opened(&mut self) {
        self.deadline = None;
    }

    /// When the layers must be ready by, while they are not.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes the layers keep between calls (their own, besides `wire`).
    pub(crate) fn held(&self) -> usize {
        self.layers.iter().map(|l| l.held()).sum()
    }

    /// Whether the peer ended the stream at the top layer.
    pub(crate) fn eof(&self) -> bool {
        self.eof
    }

    /// Runs `data` up through every layer; bytes layers send on their own go to `down`
    /// (through the layers below them). The bottom layer reads `data` itself and writes its
    /// own bytes to `down`, and the top layer writes into `up`: with one layer (TLS alone) the
    /// ciphertext is not copied and the plaintext is written once, where the decoder reads it.
    /// After an error nothing of the call comes up (`up` is as it was).
    pub(crate) fn input(
        &mut self,
        data: &[u8],
        up: &mut Vec<u8>,
        down: &mut Vec<u8>,
    ) -> Result<Input, CloseReason> {
        if self.failed {
            return Ok(Input::default());
        }
        let n = self.layers.len();
        let mut input = Input::default();
        let up_len = up.len();
        // `held`: what layer i-1 produced for layer i (the bottom layer reads `data`).
        let mut held = Vec::new();
        for i in 0..n {
            let top = i + 1 == n;
            let mut next = Vec::new();
            let r = {
                let from: &[u8] = if i == 0 { data } else { &held };
                let to = if top { &mut *up } else { &mut next };
                if i == 0 {
                    self.layers[0].input(from, to, down)
                } else {
                    let mut own = Vec::new();
                    let r = self.layers[i].input(from, to, &mut own);
                    // What layer i sends itself passes through the layers below it.
                    self.wrap_below(i, &own, down);
                    r
                }
            };
            match r {
                Ok(s) => input.eof |= s.eof,
                Err(reason) => {
                    self.failed = true;
                    up.truncate(up_len);
                    return Err(reason);
                }
            }
            if top {
                break;
            }
            held = next;
            if held.is_empty() {
                break;
            }
        }
        Ok(input)
    }

    /// Passes `bytes` produced by layer `i` down through layers `i-1 .. 0` into `down`.
    fn wrap_below(&mut self, i: usize, bytes: &[u8], down: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let mut cur = bytes.to_vec();
        for l in self.layers[..i].iter_mut().rev() {
            let mut next = Vec::new();
            if l.output(&cur, &mut next).is_err() {
                return;
            }
            cur = next;
        }
        down.extend_from_slice(&cur);
    }

    /// Wraps application bytes through every layer, top first.
    pub(crate) fn output(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), CloseReason> {
        if self.failed || self.closed {
            return Ok(());
        }
        let r = if self.layers.len() == 1 {
            self.layers[0].output(data, down) // the common case: no intermediate copy
        } else {
            let mut cur = data.to_vec();
            let mut r = Ok(());
            for l in self.layers.iter_mut().rev() {
                let mut next = Vec::new();
                r = l.output(&cur, &mut next);
                if r.is_err() {
                    break;
                }
                cur = next;
            }
            if r.is_ok() {
                down.extend_from_slice(&cur);
            }
            r
        };
        r.inspect_err(|_| self.failed = true)
    }

    /// The last bytes of a graceful close (each layer's, top first), once.
    pub(crate) fn close(&mut self, down: &mut Vec<u8>) {
        if self.failed || self.closed {
            return;
        }
        self.closed = true;
        for i in (0..self.layers.len()).rev() {
            let mut own = Vec::new();
            self.layers[i].close(&mut own);
            self.wrap_below(i, &own, down);
        }
    }

    pub(crate) fn ready(&self) -> bool {
        self.layers.iter().all(|l| l.ready())
    }

    /// Whether the graceful close's last bytes were produced (or the stack failed): nothing
    /// more goes out through it.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed || self.failed
    }

    /// Adds the facts of the ready layers, bottom up (a layer above one not ready knows
    /// nothing yet).
    pub(crate) fn describe(&self, info: &mut ConnInfo) {
        for l in self.layers.iter().take_while(|l| l.ready()) {
            l.describe(info);
        }
    }

    /// The first layer not ready, if its own setup deadline has passed: its timeout reason.
    pub(crate) fn expired(&self, now: Instant) -> Option<CloseReason> {
        self.layers
            .iter()
            .find(|l| !l.ready())
            .filter(|l| l.setup_deadline().is_some_and(|d| d <= now))
            .map(|l| l.timeout_reason())
    }

    /// Why the connection ends when the peer's EOF comes before every layer is ready.
    pub(crate) fn eof_reason(&self) -> CloseReason {
        self.layers
            .iter()
            .find(|l| !l.ready())
            .map_or(CloseReason::PeerClosed, |l| l.eof_reason())
    }

    /// The reason of the first layer not ready (for a setup timeout).
    pub(crate) fn timeout_reason(&self) -> CloseReason {
        self.layers
            .iter()
            .find(|l| !l.ready())
            .map_or(CloseReason::Local, |l| l.timeout_reason())
    }
}

/// Makes one layer per connection of a server (or for one outgoing connection); `Err`: the
/// connection fails with that reason.
pub(crate) type LayerFactory =
    std::sync::Arc<dyn Fn() -> Result<Box<dyn Layer>, CloseReason> + Send + Sync>;

pub use proxy::{ProxyProtocol, DEFAULT_PROXY_HEADER_TIMEOUT};
pub(crate) use spec::{count_origin, LayerSpec};

/// Default time a connection's layers have to become ready (the TLS handshake).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod stack_tests;
