//! The layer stack, driven by the machine (issue 21: the layer stack lives inside the
//! connection's machine). The [`Stack`] stays beside the [`Machine`] in the connection's entry
//! (boxed: a plain connection pays one pointer and never comes here; the machine stays a small
//! `Clone` value), and these functions are the only ones that drive it: received bytes up
//! through the layers, the handler's plaintext down onto the wire, the close_notify, the setup
//! deadlines and the EOF's reason. Each feeds the machine what the layers did and returns the
//! actions; the engine passes bytes in and carries out what comes back (deliver the
//! plaintext, run `on_open`, apply the per-IP limits to a client a layer named, send the
//! wire). No IO and no clock: time comes in as an argument.

use std::time::Instant;

use super::{Actions, Event, Machine};
use crate::info::{CloseReason, ConnInfo};
use crate::layer::Stack;

/// What received bytes did in the layers, besides the plaintext they produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Received {
    /// The machine's actions (a layer failed: `LayerFailed`'s, for the engine to apply).
    pub actions: Actions,
    /// A layer failed with this reason: the connection closes for it (the engine logs it).
    pub failed: Option<CloseReason>,
    /// A layer named the client in this call (the PROXY header): the connection's facts hold
    /// its address now, and the per-IP limits apply to it before anything else.
    pub named: bool,
    /// Every layer is ready and the connection is not open yet: `on_open` is due.
    pub ready: bool,
    /// The peer ended the stream at the top layer (TLS close_notify): EOF after the
    /// plaintext.
    pub eof: bool,
}

/// The transport is up at `now`: `preamble` (an outgoing connection's PROXY header) goes on
/// the wire first, then the bytes the layers send first (a TLS ClientHello), and the setup
/// clock starts. A layer that cannot start fails the connection.
pub fn start(m: &mut Machine, stack: &mut Stack, preamble: &[u8], now: Instant) -> Actions {
    debug_assert!(
        preamble.is_empty() || stack.wire.is_empty(),
        "nothing goes on the wire before the preamble"
    );
    stack.wire.extend_from_slice(preamble);
    match stack.start(now) {
        Ok(()) => Actions::NONE,
        Err(reason) => m.handle(Event::LayerFailed(reason)),
    }
}

/// Received bytes through the layers: plaintext appended to `plain`, what the layers send on
/// their own (handshake, alerts) onto the wire; a layer that named the client adds its facts
/// to `info`. `None`: the connection takes no input through its layers any more (resetting
/// or closed); the bytes are dropped.
pub fn receive(
    m: &mut Machine,
    stack: &mut Stack,
    info: &mut ConnInfo,
    data: &[u8],
    plain: &mut Vec<u8>,
) -> Option<Received> {
    if !m.layers_take_input() {
        return None;
    }
    let mut r = Received::default();
    match stack.receive(data, plain) {
        Err(reason) => {
            r.actions = m.handle(Event::LayerFailed(reason.clone()));
            r.failed = Some(reason);
        }
        Ok(input) => {
            if input.client_named {
                stack.describe(info);
            }
            r.named = input.client_named;
            r.ready = stack.ready() && !m.opened();
            r.eof = input.eof;
        }
    }
    Some(r)
}

/// The connection opened (`Event::Ready` ran): no setup deadline any more, and what the
/// layers learned (TLS version, SNI, the PROXY header) goes into the facts.
pub fn opened(stack: &mut Stack, info: &mut ConnInfo) {
    stack.opened();
    stack.describe(info);
}

/// What [`encode`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// A layer failed: `LayerFailed`'s actions.
    pub actions: Actions,
    /// Plaintext written after the layers closed (close_notify queued, or a failure),
    /// dropped as plaintext written after a FIN is (the handles already answer `Closed`).
    pub dropped: usize,
}

/// Flush step 1b: the handler's plaintext (`out`, emptied) through the layers onto the wire,
/// once the connection is open (before, it waits for the handshake). `spare` gives the wire
/// a pooled buffer if it has none.
pub fn encode(
    m: &mut Machine,
    stack: &mut Stack,
    out: &mut Vec<u8>,
    spare: impl FnOnce() -> Vec<u8>,
) -> Encoded {
    let mut e = Encoded::default();
    if !m.opened() || out.is_empty() {
        return e;
    }
    if stack.is_closed() {
        e.dropped = out.len();
        out.clear();
        return e;
    }
    if stack.wire.capacity() == 0 {
        stack.wire = spare();
    }
    let r = stack.send(out);
    out.clear();
    if let Err(reason) = r {
        e.actions = m.handle(Event::LayerFailed(reason));
    }
    e
}

/// `FINISH_LAYERS`: the layers' last bytes (close_notify) onto the wire, once (nothing after
/// a failure). From then on nothing more is taken: `KILL_HANDLES`.
pub fn finish(stack: &mut Stack) -> Actions {
    if stack.is_closed() {
        return Actions::NONE;
    }
    stack.finish();
    Actions::KILL_HANDLES
}

/// For the tick, while the connection is not open: a layer's own setup deadline passed (the
/// PROXY header's) or the handshake's, with its reason.
pub fn expired(m: &Machine, stack: &Stack, now: Instant) -> Option<CloseReason> {
    if m.opened() {
        return None;
    }
    stack.expired(now).or_else(|| {
        stack
            .deadline()
            .is_some_and(|d| d <= now)
            .then(|| stack.timeout_reason())
    })
}

/// The peer's EOF: while the layers are not ready, the reason it ends the connection with
/// (`Event::PeerEof`'s `layer_eof`).
pub fn eof_reason(m: &Machine, stack: &Stack) -> Option<CloseReason> {
    (!m.opened()).then(|| stack.eof_reason())
}

/// Whether the peer's EOF came without the top layer's own end of stream (a TLS connection
/// truncated: no close_notify).
pub fn truncated(stack: &Stack) -> bool {
    !stack.eof()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::layer::proxy::ProxyLayer;
    use crate::layer::ProxyProtocol;
    use crate::machine::Life;

    const HEADER: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\n";

    /// An accepted connection with a real PROXY layer (`Required`, 5 s), started at `now`.
    fn proxied(now: Instant) -> (Machine, Stack, ConnInfo) {
        let mut m = Machine::accepted();
        let layer = ProxyLayer::new(ProxyProtocol::Required, Duration::from_secs(5));
        let mut stack = Stack::new(vec![Box::new(layer)], Duration::from_secs(10));
        assert!(start(&mut m, &mut stack, &[], now).is_empty());
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let info = ConnInfo::new(peer, "10.0.0.1:80".parse().unwrap(), 1);
        (m, stack, info)
    }

    /// The header names the client once, what follows it in the same receive comes up, the
    /// connection is due to open, and once open the handler's bytes pass down untouched.
    #[test]
    fn a_proxy_header_names_the_client_and_the_rest_comes_up() {
        let (mut m, mut stack, mut info) = proxied(Instant::now());
        let mut plain = Vec::new();
        let r = receive(
            &mut m,
            &mut stack,
            &mut info,
            &[HEADER, b"GET"].concat(),
            &mut plain,
        )
        .unwrap();
        assert_eq!(
            (r.named, r.ready, r.eof, r.failed),
            (true, true, false, None)
        );
        assert!(r.actions.is_empty());
        assert_eq!(plain, b"GET");
        assert_eq!(
            info.client,
            "192.0.2.7:40000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(info.peer, "10.0.0.9:5000".parse::<SocketAddr>().unwrap());

        // The handler's plaintext waits for `on_open`, then goes down as it is.
        let mut out = b"reply".to_vec();
        assert_eq!(
            encode(&mut m, &mut stack, &mut out, Vec::new),
            Encoded::default()
        );
        assert_eq!(out, b"reply", "not open yet: it waits");
        assert!(m.handle(Event::Ready).has(Actions::RUN_OPEN));
        opened(&mut stack, &mut info);
        assert_eq!(stack.deadline(), None, "no setup deadline once open");
        assert_eq!(
            encode(&mut m, &mut stack, &mut out, Vec::new),
            Encoded::default()
        );
        assert!(out.is_empty());
        assert_eq!(stack.wire, b"reply");

        // Later bytes pass up; the client is not named again.
        plain.clear();
        let r = receive(&mut m, &mut stack, &mut info, b" /", &mut plain).unwrap();
        assert_eq!((r.named, r.ready), (false, false));
        assert_eq!(plain, b" /");
    }

    /// Split at every position, the header names the client exactly once, and every byte
    /// after it comes up.
    #[test]
    fn a_header_split_anywhere_names_the_client_once() {
        let input = [HEADER, b"PING\r\n"].concat();
        for cut in 0..=input.len() {
            let (mut m, mut stack, mut info) = proxied(Instant::now());
            let mut plain = Vec::new();
            let mut named = 0;
            for part in [&input[..cut], &input[cut..]] {
                let r = receive(&mut m, &mut stack, &mut info, part, &mut plain).unwrap();
                named += usize::from(r.named);
                assert_eq!(r.failed, None, "cut at {cut}");
            }
            assert_eq!(named, 1, "cut at {cut}");
            assert_eq!(plain, b"PING\r\n", "cut at {cut}");
        }
    }

    /// No header where one is required: the connection closes with the layer's reason,
    /// drops what the handler queued, and takes nothing more through the layer.
    #[test]
    fn a_missing_header_fails_the_connection_with_its_reason() {
        let (mut m, mut stack, mut info) = proxied(Instant::now());
        let mut plain = Vec::new();
        let r = receive(
            &mut m,
            &mut stack,
            &mut info,
            b"GET / HTTP/1.0\r\n",
            &mut plain,
        )
        .unwrap();
        assert!(
            matches!(r.failed, Some(CloseReason::ProxyHeader(_))),
            "{r:?}"
        );
        assert!(
            r.actions.has(Actions::DROP_OUTPUT | Actions::LEFT_OPEN),
            "{r:?}"
        );
        assert!(plain.is_empty());
        assert_eq!(m.life(), Life::Closing);
        assert!(matches!(m.reason(), Some(CloseReason::ProxyHeader(_))));
        // The failed layer takes no more; what is written is dropped, not wrapped.
        let r = receive(&mut m, &mut stack, &mut info, b"more", &mut plain).unwrap();
        assert_eq!(r, Received::default());
        assert!(plain.is_empty());
        m.handle(Event::Abort(CloseReason::Local));
        assert!(receive(&mut m, &mut stack, &mut info, b"x", &mut plain).is_none());
    }

    /// An EOF inside the header ends the connection as an incomplete header; one before any
    /// byte is a plain close (a health check); a header not in by its deadline times out.
    #[test]
    fn eof_inside_the_header_and_the_header_timeout() {
        let now = Instant::now();
        let (mut m, stack, _) = proxied(now);
        assert_eq!(eof_reason(&m, &stack), Some(CloseReason::PeerClosed));

        let (mut m2, mut stack2, mut info) = proxied(now);
        let mut plain = Vec::new();
        let r = receive(&mut m2, &mut stack2, &mut info, &HEADER[..10], &mut plain).unwrap();
        assert_eq!((r.named, r.ready), (false, false));
        let layer_eof = eof_reason(&m2, &stack2);
        assert!(
            matches!(layer_eof, Some(CloseReason::ProxyHeader(_))),
            "{layer_eof:?}"
        );
        let a = m2.handle(Event::PeerEof { layer_eof });
        assert!(a.has(Actions::DROP_OUTPUT), "{a:?}");
        assert!(matches!(m2.reason(), Some(CloseReason::ProxyHeader(_))));

        assert_eq!(expired(&m, &stack, now + Duration::from_secs(1)), None);
        assert_eq!(
            expired(&m, &stack, now + Duration::from_secs(6)),
            Some(CloseReason::ProxyHeaderTimeout),
            "the header's own deadline (5 s) before the handshake's (10 s)"
        );
        m.handle(Event::Ready);
        assert_eq!(
            expired(&m, &stack, now + Duration::from_secs(60)),
            None,
            "open: no setup deadline"
        );
        assert!(
            truncated(&stack),
            "a plain PROXY layer never ends the stream itself"
        );
    }

    /// An outgoing connection's preamble goes first; the layers' last bytes are produced once
    /// and then nothing more is taken.
    #[test]
    fn the_preamble_goes_first_and_the_layers_finish_once() {
        let mut m = Machine::connecting();
        let layer = ProxyLayer::new(ProxyProtocol::Optional, Duration::from_secs(5));
        let mut stack = Stack::new(vec![Box::new(layer)], Duration::from_secs(10));
        m.handle(Event::Connected);
        assert!(start(&mut m, &mut stack, b"PROXY UNKNOWN\r\n", Instant::now()).is_empty());
        assert_eq!(stack.wire, b"PROXY UNKNOWN\r\n");
        assert_eq!(finish(&mut stack), Actions::KILL_HANDLES);
        assert_eq!(finish(&mut stack), Actions::NONE, "once");
        m.handle(Event::Ready);
        let mut out = b"late".to_vec();
        let e = encode(&mut m, &mut stack, &mut out, Vec::new);
        assert_eq!(e.dropped, 4, "written after the close_notify: dropped");
        assert!(out.is_empty());
        assert_eq!(stack.wire, b"PROXY UNKNOWN\r\n");
    }
}
