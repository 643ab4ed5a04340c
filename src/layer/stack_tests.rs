//! The [`Stack`] as the engine drives it (`engine/{table,flush,thread}.rs`), without sockets:
//! received bytes up and the layers' own bytes onto the wire, the client named once, the
//! setup deadline and its timeout, the EOF's reason, the graceful close's last bytes once and
//! nothing out after a close or a failure. The real PROXY layer where it has the behaviour,
//! and a scripted layer ([`Mock`]) for what it has not (bytes of its own, close bytes, a
//! failure, an end of stream).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::proxy::ProxyLayer;
use super::*;

const V1: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A scripted layer. Until ready it holds what it is given; `go` makes it ready (it answers
/// `hi` on its own and passes what it held up); `bad` fails it (after an alert); `end` is its
/// end of stream. It wraps output as `tag bytes tag` and says `bye` when closed.
struct Mock {
    tag: u8,
    ready: bool,
    held: Vec<u8>,
    deadline: Option<Instant>,
}

impl Mock {
    fn new(tag: u8) -> Box<Mock> {
        Box::new(Mock {
            tag,
            ready: false,
            held: Vec::new(),
            deadline: None,
        })
    }

    fn established(tag: u8) -> Box<Mock> {
        Box::new(Mock {
            ready: true,
            ..*Mock::new(tag)
        })
    }

    fn with_deadline(tag: u8, deadline: Instant) -> Box<Mock> {
        Box::new(Mock {
            deadline: Some(deadline),
            ..*Mock::new(tag)
        })
    }
}

fn mock_reason(tag: u8, what: &str) -> CloseReason {
    CloseReason::Protocol(format!("{} {what}", tag as char))
}

impl Layer for Mock {
    fn start(&mut self, _down: &mut Vec<u8>) -> Result<(), CloseReason> {
        Ok(())
    }

    fn input(
        &mut self,
        data: &[u8],
        up: &mut Vec<u8>,
        down: &mut Vec<u8>,
    ) -> Result<Input, CloseReason> {
        match data {
            b"bad" => {
                down.extend_from_slice(b"alert");
                Err(mock_reason(self.tag, "failed"))
            }
            b"end" => Ok(Input { eof: true }),
            b"go" if !self.ready => {
                self.ready = true;
                down.extend_from_slice(b"hi");
                up.append(&mut self.held);
                Ok(Input::default())
            }
            _ if !self.ready => {
                self.held.extend_from_slice(data);
                Ok(Input::default())
            }
            _ => {
                up.extend_from_slice(data);
                Ok(Input::default())
            }
        }
    }

    fn output(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), CloseReason> {
        down.push(self.tag);
        down.extend_from_slice(data);
        down.push(self.tag);
        Ok(())
    }

    fn close(&mut self, down: &mut Vec<u8>) {
        down.extend_from_slice(b"bye");
    }

    fn ready(&self) -> bool {
        self.ready
    }

    fn describe(&self, _info: &mut ConnInfo) {}

    fn timeout_reason(&self) -> CloseReason {
        mock_reason(self.tag, "timed out")
    }

    fn setup_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn eof_reason(&self) -> CloseReason {
        mock_reason(self.tag, "cut short")
    }

    fn held(&self) -> usize {
        self.held.len()
    }
}

fn proxy(timeout: Duration) -> Box<ProxyLayer> {
    Box::new(ProxyLayer::new(ProxyProtocol::Required, timeout))
}

fn stack(layers: Vec<Box<dyn Layer>>) -> Stack {
    Stack::new(layers, TIMEOUT)
}

fn info() -> ConnInfo {
    ConnInfo::new(
        "10.0.0.1:4000".parse().unwrap(),
        "10.0.0.2:5000".parse().unwrap(),
        1,
    )
}

/// The setup clock starts when the transport is up (`thread.rs` at accept or connect) and
/// stops when the connection opens (`table.rs`): the tick resets a stack still not ready at
/// its deadline, so a stack that never started has none, and an opened one has none either.
#[test]
fn the_setup_deadline_runs_from_start_to_open() {
    let mut s = stack(vec![Mock::new(b'a')]);
    assert_eq!(s.deadline(), None, "not started");
    let now = Instant::now();
    s.start(now).unwrap();
    assert_eq!(s.deadline(), Some(now + TIMEOUT));
    s.opened();
    assert_eq!(s.deadline(), None, "opened");
}

/// Received bytes: the plaintext goes up (appended to what the decoder holds), the client is
/// named in the call that completes the PROXY header and never again (the per-IP admission
/// and the header counts run once), and `describe` then gives the header's client.
#[test]
fn receive_passes_plaintext_up_and_names_the_client_once() {
    let mut s = stack(vec![proxy(TIMEOUT)]);
    let mut up = b"old".to_vec();
    let r = s.receive(&V1[..10], &mut up).unwrap();
    assert_eq!(
        r,
        Received {
            eof: false,
            client_named: false
        }
    );
    assert_eq!(up, b"old", "a partial header gives nothing");
    let mut stream = V1[10..].to_vec();
    stream.extend_from_slice(b"WHO\r\n");
    let r = s.receive(&stream, &mut up).unwrap();
    assert_eq!(
        r,
        Received {
            eof: false,
            client_named: true
        }
    );
    assert_eq!(up, b"oldWHO\r\n");
    assert!(s.ready() && s.wire.is_empty());
    let mut i = info();
    s.describe(&mut i);
    assert_eq!(i.client, "192.0.2.7:56324".parse::<SocketAddr>().unwrap());
    assert!(i.proxy.is_some());
    let r = s.receive(b"MORE", &mut up).unwrap();
    assert!(!r.client_named, "named once");
    assert_eq!(up, b"oldWHO\r\nMORE");
}

/// A stack without a layer that names the client never names it; a layer's own bytes (a
/// handshake answer) go onto the wire through the layers below it, not up; a layer's end of
/// stream is the codec's EOF, and the stack remembers it.
#[test]
fn receive_queues_the_layers_own_bytes_and_reports_their_eof() {
    let mut s = stack(vec![Mock::established(b'a'), Mock::new(b'b')]);
    let mut up = Vec::new();
    let r = s.receive(b"early", &mut up).unwrap();
    assert_eq!(r, Received::default());
    assert!(up.is_empty() && s.wire.is_empty());
    assert_eq!(
        s.held(),
        5,
        "the top layer holds what came before it was ready"
    );
    let r = s.receive(b"go", &mut up).unwrap();
    assert!(!r.client_named && !r.eof);
    assert_eq!(up, b"early");
    assert_eq!(s.wire, b"ahia", "b's answer, wrapped by a below it");
    assert_eq!(s.held(), 0);
    assert!(!s.eof());
    let r = s.receive(b"end", &mut up).unwrap();
    assert!(r.eof && s.eof());
}

/// A layer that fails: its reason comes back, its alert is still on the wire, and the stack
/// is dead: nothing more goes out through it (the engine's flush sends the wire, then
/// closes, and asks `is_closed` before it sends plaintext or the close bytes).
#[test]
fn a_failed_layer_keeps_its_alert_and_ends_the_stack() {
    let mut s = stack(vec![Mock::established(b'a')]);
    assert!(!s.is_closed(), "a new stack takes output");
    let mut up = Vec::new();
    let r = s.receive(b"bad", &mut up);
    assert_eq!(r, Err(mock_reason(b'a', "failed")));
    assert!(up.is_empty());
    assert_eq!(s.wire, b"alert");
    assert!(s.is_closed());
    s.send(b"late").unwrap();
    s.finish();
    assert_eq!(s.wire, b"alert", "nothing after a failure");
}

/// Plaintext goes onto the wire wrapped by every layer, top first (the PROXY header goes one
/// way only: it passes output through untouched).
#[test]
fn send_wraps_onto_the_wire_top_first() {
    let mut s = stack(vec![Mock::established(b'a'), Mock::established(b'b')]);
    s.send(b"x").unwrap();
    assert_eq!(s.wire, b"abxba");
    let mut s = stack(vec![Mock::established(b'a')]);
    s.send(b"x").unwrap();
    s.send(b"y").unwrap();
    assert_eq!(s.wire, b"axaaya", "appended, one layer without a copy");
    let mut s = stack(vec![proxy(TIMEOUT), Mock::established(b'b')]);
    s.send(b"x").unwrap();
    assert_eq!(s.wire, b"bxb");
}

/// The graceful close's last bytes (close_notify): each layer's, top first and wrapped by the
/// layers below; once, however often the flush asks; after them nothing more is sent.
#[test]
fn finish_sends_the_close_bytes_once_and_nothing_after() {
    let mut s = stack(vec![Mock::established(b'a'), Mock::established(b'b')]);
    assert!(!s.is_closed());
    s.finish();
    assert_eq!(s.wire, b"abyeabye", "b's bye through a, then a's");
    assert!(s.is_closed());
    s.finish();
    assert_eq!(s.wire, b"abyeabye", "once");
    s.send(b"late").unwrap();
    assert_eq!(s.wire, b"abyeabye", "nothing after the close");
    let mut down = Vec::new();
    s.output(b"late", &mut down).unwrap();
    s.close(&mut down);
    assert!(down.is_empty());
}

/// What the layers keep between calls is charged to the connection's footprint (the memory
/// budget's overload reset ranks connections by it): the bytes of a PROXY header not complete
/// yet, none once it is.
#[test]
fn held_counts_the_bytes_the_layers_keep() {
    let mut s = stack(vec![proxy(TIMEOUT)]);
    assert_eq!(s.held(), 0);
    let mut up = Vec::new();
    s.receive(&V1[..13], &mut up).unwrap();
    assert!(s.held() >= 13, "{} bytes charged", s.held());
    s.receive(&V1[13..], &mut up).unwrap();
    assert_eq!(s.held(), 0);
    let mut s = stack(vec![proxy(TIMEOUT), Mock::new(b'b')]);
    s.receive(V1, &mut up).unwrap();
    s.receive(b"abc", &mut up).unwrap();
    assert_eq!(s.held(), 3, "summed over the layers");
}

/// A layer's own setup deadline (the PROXY header's, tighter than the handshake timeout):
/// the tick resets the connection with the reason of the first layer not ready, once that
/// layer's deadline has passed; ready layers and deadlines still ahead reset nothing.
#[test]
fn expired_names_the_first_layer_not_ready_past_its_deadline() {
    let s = stack(vec![proxy(TIMEOUT)]);
    assert_eq!(s.expired(Instant::now()), None, "not yet");
    let now = Instant::now();
    let mut s = stack(vec![proxy(Duration::ZERO)]);
    let later = Instant::now() + Duration::from_millis(1);
    assert_eq!(s.expired(later), Some(CloseReason::ProxyHeaderTimeout));
    s.receive(V1, &mut Vec::new()).unwrap();
    assert_eq!(s.expired(later), None, "ready");

    // Past the ready PROXY layer, the one above it that is not ready decides.
    let mut s = stack(vec![proxy(Duration::ZERO), Mock::with_deadline(b'b', now)]);
    s.receive(V1, &mut Vec::new()).unwrap();
    assert_eq!(s.expired(now), Some(mock_reason(b'b', "timed out")));
    let s = stack(vec![Mock::with_deadline(b'a', later)]);
    assert_eq!(s.expired(now), None, "not yet");
    let s = stack(vec![Mock::new(b'a')]);
    assert_eq!(s.expired(later), None, "no deadline of its own");
}

/// The peer's EOF before every layer is ready ends the connection with the first such
/// layer's reason (a PROXY header cut short is refused); once all are ready it is a plain
/// peer close.
#[test]
fn eof_reason_is_the_first_layer_not_ready() {
    let mut s = stack(vec![proxy(TIMEOUT), Mock::new(b'b')]);
    assert_eq!(
        s.eof_reason(),
        CloseReason::PeerClosed,
        "no byte yet: a health check"
    );
    s.receive(&V1[..13], &mut Vec::new()).unwrap();
    assert!(matches!(s.eof_reason(), CloseReason::ProxyHeader(m) if m.contains("incomplete")));
    s.receive(&V1[13..], &mut Vec::new()).unwrap();
    assert_eq!(s.eof_reason(), mock_reason(b'b', "cut short"));
    assert_eq!(s.timeout_reason(), mock_reason(b'b', "timed out"));
    s.receive(b"go", &mut Vec::new()).unwrap();
    assert!(s.ready());
    assert_eq!(s.eof_reason(), CloseReason::PeerClosed);
}
