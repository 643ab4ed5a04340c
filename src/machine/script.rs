//! The machine under arbitrary event sequences (`fuzz/fuzz_targets/conn_machine.rs`; also run
//! on fixed and random inputs by the unit tests). Not part of the API: compiled only for the
//! crate's tests and with the `fuzzing` feature, and hidden from the docs.
//!
//! [`run`] reads the input as a script: byte 0 picks the start (accepted or connecting, with
//! layers or not), then one byte per step: an [`Event`], a write by the handler, a completed
//! send, or a flush. A small model of the engine stands around the machine: what is queued
//! (`unsent`), the last words, the send in flight, the layers' close_notify, and it carries out
//! the actions the way `engine/flush.rs` does. Events the engine never sends in a state are
//! not sent (a timer after the close disarmed it, a second `Connected`). Step bytes (low 5
//! bits): 0-26 an event or a model change, 27 a drain watch, 28-31 a flush.
//!
//! Checked after every step: the machine's own invariants ([`Machine::check`], and every
//! `debug_assert!` inside it); a close is reported once, with its recorded reason (the
//! backend's close or reset is asked exactly once, and nothing is sent, shut or read after
//! it); nothing the handler writes follows `close_after`'s last words, which wait for every
//! outstanding job; a graceful close never drops a byte (it closes only once nothing is queued, owed or
//! in flight; only a reset or a layer failure drops bytes, and both record their reason); a
//! second flush with nothing in between changes nothing (no spin: one flush is a fixpoint).

use super::{Actions, Event, Life, Machine, Setup, Tick, TickFacts};
use crate::info::CloseReason;
use std::time::{Duration, Instant};

/// The engine's side of one connection, as far as the machine's decisions go.
#[derive(Debug, Default, Clone)]
struct Model {
    layered: bool,
    /// The handler's queue or the layers' wire holds bytes.
    unsent: bool,
    /// `close_after` bytes wait.
    last_words: bool,
    /// The layers sent close_notify (or failed).
    stack_closed: bool,
    /// The backend was asked to close (gracefully or by a reset).
    closed: bool,
    /// The engine's backpressure verdict (watermarks, budget).
    pause: bool,
    /// `close_after` took its bytes: the handler's own writes are ignored from now on.
    sealed: bool,
}

/// Runs `data` as a script; returns the steps taken. Panics if an invariant breaks.
pub fn run(data: &[u8]) -> usize {
    let Some((&start, steps)) = data.split_first() else {
        return 0;
    };
    let mut m = if start & 1 == 0 {
        Machine::accepted()
    } else {
        Machine::connecting()
    };
    let mut e = Model {
        layered: start & 2 != 0,
        ..Model::default()
    };
    let t0 = Instant::now();
    if m.setup() == Setup::Handshaking && !e.layered {
        step(&mut m, &mut e, Event::Ready); // a plain connection opens at accept
    }
    for (i, &b) in steps.iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 50);
        apply(&mut m, &mut e, b, now);
        m.check();
        if e.closed {
            assert!(
                matches!(m.life(), Life::Closed),
                "the backend closed the socket but the machine is {:?}",
                m.life()
            );
        }
    }
    steps.len()
}

/// Feeds an event and carries out the actions the machine returns that concern the model.
fn step(m: &mut Machine, e: &mut Model, ev: Event) -> Actions {
    let a = m.handle(ev);
    if a.has(Actions::DROP_OUTPUT) {
        e.unsent = false; // dropped with the layer's reason recorded
        e.last_words = false;
    }
    if a.has(Actions::RUN_READ_CLOSED) || a.has(Actions::RUN_OPEN) {
        assert!(!e.closed, "a callback after the close");
    }
    a
}

fn reason(b: u8) -> CloseReason {
    match b % 4 {
        0 => CloseReason::Local,
        1 => CloseReason::Protocol("bad frame".into()),
        2 => CloseReason::TlsError("bad record".into()),
        _ => CloseReason::PeerClosed,
    }
}

fn apply(m: &mut Machine, e: &mut Model, b: u8, now: Instant) {
    let r = reason(b >> 5);
    match b & 31 {
        0 => {
            step(m, e, Event::Close(r));
        }
        1 => {
            step(m, e, Event::Abort(r));
        }
        2 => {
            if m.takes_own_writes() {
                e.last_words = true;
                e.sealed = true;
            }
            step(m, e, Event::CloseAfter);
        }
        3 => {
            step(m, e, Event::ShutdownWrite);
        }
        4 => {
            step(m, e, Event::Pause);
        }
        5 => {
            step(m, e, Event::Resume);
        }
        6 if m.wants_frames() && m.opened() => {
            step(m, e, Event::Hold); // only from on_frame, while frames flow
        }
        7 => {
            step(m, e, Event::RetryHeld);
        }
        8 if !e.closed && m.setup() != Setup::Connecting => {
            let layer_eof = (e.layered && !m.opened()).then(|| r.clone());
            step(m, e, Event::PeerEof { layer_eof });
        }
        9 => {
            step(m, e, Event::DeliverEof);
        }
        10 if !e.closed => {
            step(m, e, Event::Reset(r));
        }
        11 if m.writable() => {
            step(m, e, Event::WorkStarted); // `Conn::work` while handles live
        }
        12 if m.work() > 0 => {
            step(m, e, Event::WorkDone);
        }
        13 => {
            assert!(
                !(e.sealed && m.takes_own_writes()),
                "a write after close_after's last words"
            );
            if m.takes_own_writes() {
                e.unsent = true; // `Conn::write`
            }
        }
        14 if m.sending() => {
            step(m, e, Event::SendProgress { done: true });
        }
        15 if m.setup() == Setup::Connecting && !e.closed => {
            step(m, e, Event::Connected);
        }
        16 if e.layered && m.setup() == Setup::Handshaking && m.layers_take_input() => {
            step(m, e, Event::Ready); // the layers got ready
        }
        17 if m.is_open() => {
            step(m, e, Event::TimerDue); // timers are disarmed when it stops being open
        }
        18 => {
            step(m, e, Event::ShutdownBegun);
        }
        19 if e.layered && m.layers_take_input() => {
            e.stack_closed = true;
            step(m, e, Event::LayerFailed(r));
        }
        20 => {
            step(m, e, Event::ForceAbort(r));
        }
        21 if m.wants_frames() && m.opened() => {
            step(m, e, Event::DecodeError(r));
        }
        22 if m.wants_frames() && m.opened() => {
            step(m, e, Event::InputOverflow(r));
        }
        23 => {
            step(m, e, Event::Received);
        }
        24 | 25 => tick(m, e, now, b),
        26 => e.pause = !e.pause,
        27 => {
            step(m, e, Event::WatchDrain); // `Conn::notify_when_drained`
        }
        _ => flush_twice(m, e),
    }
}

/// The timers' tick as `State::tick` runs it.
/// Bits of `b`: 0 the drain deadline passed, 5 the idle timeout, 6 the other deadlines
/// (layers, connect, linger) and a stalled flush.
fn tick(m: &mut Machine, e: &mut Model, now: Instant, b: u8) {
    let (past_drain, idle, due) = (b & 1 != 0, b & 32 != 0, b & 64 != 0);
    let later = now + Duration::from_secs(1);
    let facts = TickFacts {
        now,
        layer_expired: (due && e.layered && !m.opened()).then_some(CloseReason::Local),
        connect_deadline: Some(if due { now } else { later }),
        idle_timeout: idle.then_some(Duration::ZERO),
        last_active: now,
        linger_until: Some(if due { now } else { later }),
        queued: usize::from(e.unsent || m.sending()),
        past_drain,
    };
    let (first, drain) = m.tick(&facts);
    match first {
        Some(Tick::LayerExpired(r)) => {
            step(m, e, Event::ForceAbort(r));
            return;
        }
        Some(Tick::ConnectTimeout) => {
            step(m, e, Event::ConnectTimeout);
            return;
        }
        Some(Tick::Idle) => {
            step(m, e, Event::Idle);
        }
        Some(Tick::CheckStall) if due => {
            step(m, e, Event::ForceAbort(CloseReason::FlushStalled));
        }
        Some(Tick::CheckStall) => {}
        Some(Tick::LingerOver) => {
            step(m, e, Event::LingerOver);
        }
        None => {}
    }
    if drain && matches!(m.life(), Life::Open | Life::Closing) {
        step(m, e, Event::DrainDeadline);
    }
}

/// A flush (its rounds, as `State::flush` runs them while a connection is dirty again), then
/// another with nothing in between, which must change nothing.
fn flush_twice(m: &mut Machine, e: &mut Model) {
    flush_rounds(m, e);
    let before = (format!("{m:?}"), format!("{e:?}"));
    let a = flush_rounds(m, e);
    let after = (format!("{m:?}"), format!("{e:?}"));
    assert_eq!(before, after, "a second flush changed something: {a:?}");
}

/// `State::flush`: rounds of `flush` while the connection was dirtied again (the engine runs at
/// most four; one more round is always enough here).
fn flush_rounds(m: &mut Machine, e: &mut Model) -> Actions {
    let mut all = flush(m, e);
    for _ in 0..3 {
        if !m.is_dirty() {
            break;
        }
        all |= flush(m, e);
    }
    assert!(!m.is_dirty(), "still dirty after four flush rounds: {m:?}");
    all
}

/// `State::flush_one` with the model's queues.
fn flush(m: &mut Machine, e: &mut Model) -> Actions {
    m.clear_dirty();
    // The drain watch (low: nothing queued or in flight, the model's low watermark 0).
    let mut all = m.flush_watch(!e.unsent && !m.sending());
    if all.has(Actions::RUN_WRITABLE) {
        assert!(
            !e.closed && m.opened(),
            "on_writable after the close or before on_open"
        );
    }
    all |= step(m, e, Event::DeliverEof);
    let a = m.flush_start(e.last_words);
    all |= a;
    if a.has(Actions::ABORT) || a.has(Actions::CLOSE) {
        close(m, e, a);
    }
    if a.has(Actions::STOP) {
        return all;
    }
    if a.has(Actions::QUEUE_LAST_WORDS) {
        assert_eq!(m.work(), 0, "last words before the work answered");
        e.last_words = false;
        e.unsent = true;
    }
    if e.layered && m.opened() && e.unsent && e.stack_closed {
        e.unsent = false; // written after close_notify: dropped, as on plaintext after FIN
    }
    let a = m.flush_send(e.unsent, e.last_words, e.layered);
    all |= a;
    if a.has(Actions::FINISH_LAYERS) && !e.stack_closed {
        e.stack_closed = true;
        e.unsent = true; // close_notify
    }
    if a.has(Actions::SEND) && e.unsent {
        e.unsent = false;
        all |= m.handle(Event::SendStarted);
    }
    let drained = m.drained(e.unsent, e.last_words);
    all |= m.flush_write(drained, e.layered);
    if m.is_open() {
        all |= m.backpressure(e.pause);
    }
    let a = m.flush_close(drained);
    all |= a;
    if a.has(Actions::CLOSE) {
        assert!(drained, "a graceful close with bytes left");
        close(m, e, a);
    }
    m.flush_rewatch(!e.unsent && !m.sending());
    all
}

/// The backend closes the socket: once, with the reason the machine recorded.
fn close(m: &mut Machine, e: &mut Model, a: Actions) {
    assert!(!e.closed, "the socket closed twice");
    assert_eq!(m.life(), Life::Closed);
    e.closed = true;
    // A connection closed before its connect completed never sent anything: its close
    // drops what was queued, reported with the close's reason.
    if a.has(Actions::CLOSE) && m.setup() != Setup::Connecting {
        assert!(
            !e.unsent && !e.last_words && !m.sending(),
            "a graceful close dropped bytes: {e:?} {m:?}"
        );
    }
    assert!(
        m.reason().is_some(),
        "a close without a recorded reason: {m:?}"
    );
    m.take_reason(CloseReason::Local);
}
