//! What the engine reads from the machine, each accessor against the decision the engine
//! takes with it (`engine/{table,flush,thread,overload}.rs`), and the events whose
//! conditions the phase × event sweep passes through without telling apart (it checks the
//! invariants, not which of two legal outcomes came).

use super::*;

/// `overload.rs` pauses a connection for the budget only if it is not paused already, and
/// resumes only the paused ones: the pause is visible from the moment it is decided (by the
/// flush's watermark verdict or at once under pressure) until it is lifted.
#[test]
fn bp_paused_follows_the_backpressure_verdict() {
    let mut m = open();
    assert!(!m.bp_paused());
    m.backpressure(true);
    assert!(m.bp_paused());
    m.backpressure(false);
    assert!(!m.bp_paused());
    m.budget_pause();
    assert!(m.bp_paused());
    assert!(!m.user_paused(), "the user's pause is another");
}

/// `flush.rs` and `table.rs` queue a held connection for a retry at the turn's end, and the
/// handler's item loop stops at a held frame: held from `hold_frame` until it is offered
/// again, and never once the frames failed.
#[test]
fn held_from_hold_until_the_retry() {
    let mut m = open();
    assert!(!m.held());
    m.handle(Event::Hold);
    assert!(m.held());
    m.handle(Event::RetryHeld);
    assert!(!m.held());
    m.handle(Event::DecodeError(R::Local));
    m.handle(Event::Hold);
    assert!(!m.held(), "failed frames are never held");
}

/// `thread.rs` spares a connection that has sent nothing yet when the engine shuts down (and
/// ends it at once when it never will): `received` is false until the first bytes arrive.
#[test]
fn received_after_the_first_bytes() {
    let mut m = Machine::accepted();
    assert!(!m.received());
    m.handle(Event::Received);
    assert!(m.received());
    m.handle(Event::Ready);
    assert!(m.received(), "kept");
}

/// `table.rs` hands received plaintext to the decoder only if the machine accepts input:
/// once open (`on_open` runs before any `on_data`), while open and until the frames fail.
/// Paused or held frames still take input (it is buffered); a closing connection's input is
/// read and discarded.
#[test]
fn accepts_input_only_while_open_and_decoding() {
    assert!(
        !Machine::accepted().accepts_input(),
        "not opened: on_open first"
    );
    let mut m = open();
    assert!(m.accepts_input());
    m.handle(Event::Pause);
    m.handle(Event::Hold);
    assert!(m.accepts_input(), "paused or held: buffered");
    m.handle(Event::DecodeError(R::Local));
    assert!(!m.accepts_input(), "decode error");
    assert!(!closing().accepts_input());
    assert!(!lingering().accepts_input());
    assert!(!aborting().accepts_input());
    let mut m = Machine::accepted();
    m.handle(Event::Close(R::Local));
    m.handle(Event::Ready); // late: the layers got ready while closing
    assert!(m.opened() && !m.accepts_input());
}

/// `table.rs` runs received bytes through the layers (a TLS close_notify, an alert) while the
/// connection may still send or read gracefully; once a reset is asked, they are dropped.
#[test]
fn layers_take_input_until_a_reset() {
    assert!(Machine::accepted().layers_take_input());
    assert!(open().layers_take_input());
    assert!(closing().layers_take_input());
    assert!(lingering().layers_take_input());
    assert!(!aborting().layers_take_input());
    assert!(!closed().layers_take_input());
}

/// `core.rs` queues a connection for the end-of-turn flush only when `mark_dirty` says it was
/// not queued (a connection is flushed once per turn); the flush clears it.
#[test]
fn mark_dirty_says_true_once_per_flush() {
    let mut m = open();
    assert!(m.mark_dirty(), "first: queue it");
    assert!(!m.mark_dirty(), "queued already");
    m.clear_dirty();
    assert!(m.mark_dirty(), "after the flush: queue it again");
}

/// `table.rs` gives the per-IP count back when the connection ends, only if it took one and
/// only once (a second close path must not release another connection's count).
#[test]
fn the_per_ip_count_is_given_back_once() {
    let mut m = open();
    assert!(!m.take_peer_counted(), "never counted");
    m.set_peer_counted(true);
    assert!(m.take_peer_counted());
    assert!(!m.take_peer_counted(), "once");
    m.set_peer_counted(false);
    assert!(!m.take_peer_counted());
}

/// Shutdown: an open connection runs `on_shutdown` (it closes itself); one that never opened
/// closes at once with the shutdown's reason (no `on_shutdown` without `on_open`); a closing
/// one just goes on closing.
#[test]
fn shutdown_runs_on_shutdown_only_for_open_connections() {
    let mut m = open();
    let a = m.handle(Event::ShutdownBegun);
    assert!(a.has(Actions::RUN_SHUTDOWN) && m.is_open(), "{a:?}");

    let mut m = Machine::accepted(); // layers not ready
    let a = m.handle(Event::ShutdownBegun);
    assert!(!a.has(Actions::RUN_SHUTDOWN), "{a:?}");
    assert_eq!(m.life(), Life::Closing);
    assert_eq!(m.reason(), Some(&R::Shutdown));

    let mut m = closing();
    let a = m.handle(Event::ShutdownBegun);
    assert_eq!(a, Actions::FLUSH, "closing already: {a:?}");
    assert_eq!(m.take_reason(R::PeerClosed), R::Local, "its own reason");
}

/// The connect timeout resets only a connect still under way; a connected (or accepted)
/// connection ignores a late one.
#[test]
fn connect_timeout_resets_only_a_pending_connect() {
    let mut m = Machine::connecting();
    let a = m.handle(Event::ConnectTimeout);
    assert!(a.has(Actions::KILL_HANDLES | Actions::FLUSH), "{a:?}");
    assert_eq!(m.life(), Life::Aborting);
    assert!(matches!(
        m.reason(),
        Some(R::Io(std::io::ErrorKind::TimedOut, _))
    ));
    let mut m = Machine::connecting();
    m.handle(Event::Connected);
    assert!(m.handle(Event::ConnectTimeout).is_empty());
    assert!(m.is_open() && m.reason().is_none());
    let mut m = open();
    assert!(m.handle(Event::ConnectTimeout).is_empty());
    assert!(m.is_open());
}

/// The linger deadline ends a lingering close (the next flush closes without the peer's
/// EOF); to an open connection it means nothing (it keeps reading).
#[test]
fn linger_over_stops_waiting_only_while_lingering() {
    let mut m = lingering();
    assert!(!m.read_closed());
    m.handle(Event::LingerOver);
    assert!(m.read_closed());
    assert!(m.flush_close(true).has(Actions::CLOSE | Actions::STOP));
    assert_eq!(m.life(), Life::Closed);

    let mut m = open();
    m.handle(Event::LingerOver);
    assert!(!m.read_closed() && m.is_open());
    assert!(m.flush_close(true).is_empty(), "still reading");
}

/// `shutdown_write` after the FIN went changes nothing: the write side stays shut (nothing
/// is written after a FIN); while closing, the close's own FIN is the one that goes.
#[test]
fn shutdown_write_after_the_fin_keeps_it_shut() {
    let mut m = open();
    m.handle(Event::ShutdownWrite);
    assert!(m.flush_write(true, false).has(Actions::SHUT_WRITE));
    assert_eq!(m.write_side(), WriteSide::Shut);
    m.handle(Event::ShutdownWrite);
    assert_eq!(m.write_side(), WriteSide::Shut);
    assert!(!m.writable() && !m.takes_handle_writes());
    assert!(m.flush_write(true, false).is_empty(), "one FIN");

    let mut m = closing();
    m.handle(Event::ShutdownWrite);
    assert_eq!(m.write_side(), WriteSide::Open, "the close shuts it");
    let a = m.flush_close(true);
    assert!(a.has(Actions::SHUT_WRITE | Actions::LINGER), "{a:?}");
}

/// The layers' close bytes (close_notify) go where a plain connection's FIN would: once the
/// connection is ending and established, with nothing sending, queued or owed. Sent before
/// queued bytes or a job's answer, they would end the stream in front of them (the peer reads
/// nothing after a close_notify).
#[test]
fn close_notify_waits_for_everything_queued() {
    let finish = |m: &Machine, unsent, last_words| {
        m.flush_send(unsent, last_words, true)
            .has(Actions::FINISH_LAYERS)
    };
    let m = closing();
    assert!(finish(&m, false, false));
    assert!(
        !m.flush_send(false, false, false)
            .has(Actions::FINISH_LAYERS),
        "no layers"
    );
    assert!(!finish(&m, true, false), "bytes queued");
    assert!(!finish(&m, false, true), "last words owed");
    let mut m = closing();
    m.handle(Event::SendStarted);
    assert!(!finish(&m, false, false), "a send in flight");
    m.handle(Event::SendProgress { done: true });
    assert!(finish(&m, false, false));
    let mut m = open();
    m.handle(Event::WorkStarted);
    m.handle(Event::Close(R::Local));
    assert!(!finish(&m, false, false), "a job still to answer");
    m.handle(Event::WorkDone);
    assert!(finish(&m, false, false));
    let mut m = open();
    assert!(!finish(&m, false, false), "open: not ending");
    m.handle(Event::ShutdownWrite);
    assert!(finish(&m, false, false), "half-close");
    let mut m = Machine::accepted();
    m.handle(Event::Close(R::Local));
    assert!(!finish(&m, false, false), "layers never ready");
}

/// Actions combine as a set: an action two steps ask for is still asked for (the flush's
/// steps and the events' own actions are or-ed together).
#[test]
fn actions_combine_as_a_set() {
    let a = Actions::FLUSH | Actions::LEFT_OPEN;
    let b = a | Actions::FLUSH | Actions::KILL_HANDLES;
    assert!(b.has(Actions::FLUSH) && b.has(Actions::LEFT_OPEN | Actions::KILL_HANDLES));
    assert_eq!(a | a, a);
    assert_eq!(Actions::NONE | Actions::NONE, Actions::NONE);
    let mut c = a;
    c |= a;
    assert_eq!(c, a);
    assert!(
        !Actions::FLUSH.has(Actions::NONE),
        "nothing is not an action"
    );
}
