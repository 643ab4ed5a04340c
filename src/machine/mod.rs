//! A connection's life as one sans-IO state machine (issue 21): phases are enums, not flags;
//! events come in ([`Machine::handle`]), actions go out ([`Actions`]); time comes in as an
//! argument. No IO, no clock, no buffer: the engine (`engine/{table,flush,thread}.rs`) owns
//! the bytes and the backend, feeds the machine what happened and carries out what it says.
//!
//! ```text
//!   setup:  Connecting ──connected──▶ Handshaking ──layers ready / plain──▶ Ready
//!   life:   Open ──close──▶ Closing ──drained──▶ Lingering ──EOF / linger over──▶ Closed
//!            │                 │                                                   ▲
//!            └──abort/reset────┴───────────────▶ Aborting ──flush (RST)────────────┘
//!   input:  Open ──EOF──▶ EofPending ──on_read_closed ran──▶ Closed     (reset: Closed)
//!   frames: Flowing ◀──retry──▶ Held;  Flowing/Held ──decode error / layer failure──▶ Failed
//!   write:  Open ──shutdown_write──▶ ShutPending ──drained, FIN──▶ Shut   (close: Shut)
//!   words:  Open ──close_after──▶ Sealed ──work answered──▶ Queued
//! ```
//!
//! Invariants (checked after every event by [`Machine::check`] in debug builds, and by the
//! unit tests and the `conn_machine` fuzz target):
//! - a close is reported exactly once, with one reason ([`Machine::take_reason`]);
//! - a connection past `Open`, or whose frames failed, has its reason recorded until it is
//!   reported: input it discards is never dropped without a counted reason;
//! - every event consumes input, changes the state or emits an action (no spin: the flush
//!   never re-marks its own connection dirty);
//! - nothing is written after the write side is shut, and `Connecting` neither reads nor sends.

mod events;
mod flush;
pub(crate) mod layered;
#[cfg(any(test, feature = "fuzzing"))]
pub mod script;
#[cfg(test)]
mod tests;

pub use events::{Actions, Event};
pub use flush::{Tick, TickFacts};

use events::Flags;

use crate::info::CloseReason;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Life {
    /// Reading and writing.
    Open,
    /// Closing gracefully: no more frames are delivered; outstanding work answers and queued
    /// bytes are flushed first.
    Closing,
    /// Flushed and write side shut down; reading (and discarding) until EOF or the linger
    /// deadline, so unread input does not turn our last reply into a reset.
    Lingering,
    /// Reset requested: close with SO_LINGER 0 at the next flush.
    Aborting,
    /// The backend was told to close; waiting for its `Closed` event.
    Closed,
}

/// How far the connection has got before `on_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    /// An outgoing connect not yet established: nothing is sent or read.
    Connecting,
    /// Connected; the layers (PROXY header, TLS handshake) are not ready yet.
    Handshaking,
    /// `on_open` has run (or was due: a connection closed before it never runs it).
    Ready,
}

/// The peer's side of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    Open,
    /// EOF arrived; `on_read_closed` waits until the frames before it are delivered.
    EofPending,
    /// EOF (or a reset) seen and, if it was due, told.
    Closed,
}

/// Whether frames may be decoded and delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frames {
    Flowing,
    /// The handler held the current frame back (`Conn::hold_frame`): offered again later.
    Held,
    /// The decoder (or a layer) failed: no more frames, ever.
    Failed,
}

/// Our side of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteSide {
    Open,
    /// `shutdown_write` asked: FIN once everything queued is sent (reading goes on).
    ShutPending,
    /// FIN sent: nothing more can be written.
    Shut,
}

/// `close_after`'s last words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Words {
    Open,
    /// `close_after` was called: the handler's own writes are ignored from now on.
    Sealed,
    /// The last words are queued: nothing more is taken, not even a handle's write.
    Queued,
}

/// One connection's state: phases as enums, the counters the decisions need.
#[derive(Debug, Clone)]
pub struct Machine {
    life: Life,
    setup: Setup,
    input: Input,
    frames: Frames,
    write: WriteSide,
    words: Words,
    /// The flags: user and backpressure pauses, reading, sending, dirty, received, counted
    /// against its IP, reported ([`Flags`]).
    flags: Flags,
    /// Outstanding work.
    work: u64,
    /// Why it closes (boxed: most reasons carry a string, and only a closing connection has
    /// one).
    reason: Option<Box<CloseReason>>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine::accepted()
    }
}

impl Machine {
    /// An accepted connection (reading; `on_open` once [`Event::Ready`]).
    pub fn accepted() -> Machine {
        Machine {
            life: Life::Open,
            setup: Setup::Handshaking,
            input: Input::Open,
            frames: Frames::Flowing,
            write: WriteSide::Open,
            words: Words::Open,
            flags: Flags(Flags::READING.0),
            work: 0,
            reason: None,
        }
    }

    /// An outgoing connection whose connect is under way (not reading).
    pub fn connecting() -> Machine {
        Machine {
            setup: Setup::Connecting,
            flags: Flags(0),
            ..Machine::accepted()
        }
    }

    pub fn life(&self) -> Life {
        self.life
    }
    pub fn work(&self) -> u64 {
        self.work
    }
    pub fn is_open(&self) -> bool {
        self.life == Life::Open
    }
    pub fn opened(&self) -> bool {
        self.setup == Setup::Ready
    }
    pub fn user_paused(&self) -> bool {
        self.flags.has(Flags::USER_PAUSED)
    }
    pub fn bp_paused(&self) -> bool {
        self.flags.has(Flags::BP_PAUSED)
    }
    pub fn held(&self) -> bool {
        self.frames == Frames::Held
    }
    /// The peer's EOF (or a reset) was seen.
    pub fn read_closed(&self) -> bool {
        self.input != Input::Open
    }
    pub fn received(&self) -> bool {
        self.flags.has(Flags::RECEIVED)
    }
    /// The handler watches its own queue ([`Event::WatchDrain`]).
    pub fn drain_watched(&self) -> bool {
        self.flags.has(Flags::DRAIN_WATCH)
    }
    pub fn reason(&self) -> Option<&CloseReason> {
        self.reason.as_deref()
    }

    /// Whether more bytes may be queued.
    pub fn writable(&self) -> bool {
        matches!(self.life, Life::Open | Life::Closing) && self.write != WriteSide::Shut
    }

    /// Whether the handler's own writes are queued (not after `close_after`).
    pub fn takes_own_writes(&self) -> bool {
        self.writable() && self.words == Words::Open
    }

    /// Whether a handle's write taken from the inbox now is queued (not once the last words
    /// are queued).
    pub fn takes_handle_writes(&self) -> bool {
        self.writable() && self.words != Words::Queued
    }

    /// Frames may be delivered to the handler now.
    pub fn wants_frames(&self) -> bool {
        self.life == Life::Open
            && !self.flags.has(Flags::USER_PAUSED)
            && self.frames == Frames::Flowing
    }

    /// Received plaintext goes to the decoder (else it is read and discarded: the connection
    /// is closing, or past a decode error, with its reason recorded).
    pub fn accepts_input(&self) -> bool {
        let ok = self.life == Life::Open && self.frames != Frames::Failed && self.opened();
        debug_assert!(
            ok || self.reason.is_some()
                || self.setup != Setup::Ready
                || self.flags.has(Flags::REPORTED),
            "input discarded without a recorded reason: {self:?}"
        );
        ok
    }

    /// Whether received bytes still go through the layers (not once resetting).
    pub fn layers_take_input(&self) -> bool {
        !matches!(self.life, Life::Aborting | Life::Closed)
    }

    /// Marks the connection dirty; `true` if it was not (the engine queues it once).
    pub fn mark_dirty(&mut self) -> bool {
        !self.flags.replace(Flags::DIRTY, true)
    }

    /// Waiting for the flush (marked and not yet picked up): what the script's model and the
    /// tests read; the engine keeps its own dirty list.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn is_dirty(&self) -> bool {
        self.flags.has(Flags::DIRTY)
    }

    /// The flush picked the connection up.
    pub fn clear_dirty(&mut self) {
        self.flags.set(Flags::DIRTY, false);
    }

    pub fn set_peer_counted(&mut self, counted: bool) {
        self.flags.set(Flags::PEER_COUNTED, counted);
    }

    /// The per-IP count is given back (once).
    pub fn take_peer_counted(&mut self) -> bool {
        self.flags.replace(Flags::PEER_COUNTED, false)
    }

    /// Records `reason` unless one is recorded.
    pub fn set_reason(&mut self, reason: CloseReason) {
        if self.reason.is_none() {
            self.reason = Some(Box::new(reason));
        }
    }

    /// The close is reported: its one reason (`default` if none was recorded). Exactly once.
    pub fn take_reason(&mut self, default: CloseReason) -> CloseReason {
        debug_assert!(!self.flags.has(Flags::REPORTED), "a close reported twice");
        self.flags.set(Flags::REPORTED, true);
        self.reason.take().map_or(default, |r| *r)
    }

    /// Applies `event` (`now` is not needed by any event: time-based ones are decided by
    /// [`Machine::tick`]).
    pub fn handle(&mut self, event: Event) -> Actions {
        #[cfg(debug_assertions)]
        let before = self.clone();
        let a = self.apply(&event);
        #[cfg(debug_assertions)]
        {
            self.check();
            debug_assert!(
                !a.is_empty() || self.differs(&before) || events::event_may_idle(&event),
                "event {event:?} did nothing in {before:?}"
            );
        }
        a
    }

    fn apply(&mut self, event: &Event) -> Actions {
        use Event as E;
        match event {
            E::Connected => {
                if self.setup == Setup::Connecting {
                    self.setup = Setup::Handshaking;
                }
                self.flags.set(Flags::READING, true); // the backend reads once connected
                Actions::FLUSH
            }
            E::Ready => {
                if self.opened() {
                    return Actions::NONE;
                }
                self.setup = Setup::Ready;
                let run = if self.life == Life::Open {
                    Actions::RUN_OPEN
                } else {
                    Actions::NONE
                };
                run | Actions::FLUSH
            }
            E::Received => {
                self.flags.set(Flags::RECEIVED, true);
                Actions::NONE
            }
            E::PeerEof { layer_eof } => self.peer_eof(layer_eof.clone()),
            E::DeliverEof => {
                if self.input != Input::EofPending || !self.wants_frames() {
                    return Actions::NONE;
                }
                self.input = Input::Closed;
                Actions::RUN_READ_CLOSED
            }
            E::Reset(reason) => {
                if self.input == Input::Open {
                    self.input = Input::Closed;
                }
                self.flags.set(Flags::READING, false);
                self.begin_abort(reason.clone()) | Actions::FLUSH
            }
            E::SendProgress { done } => {
                if *done {
                    self.flags.set(Flags::SENDING, false);
                }
                Actions::FLUSH
            }
            E::SendStarted => {
                debug_assert!(!self.flags.has(Flags::SENDING), "one send in flight");
                debug_assert!(self.writable(), "a send after the write side shut");
                self.flags.set(Flags::SENDING, true);
                Actions::NONE
            }
            E::TimerDue => {
                // A closing connection's timers were disarmed (`LEFT_OPEN`).
                debug_assert_eq!(self.life, Life::Open, "a timer fired while closing");
                if self.life == Life::Open {
                    Actions::RUN_TIMER | Actions::FLUSH
                } else {
                    Actions::NONE
                }
            }
            E::WorkStarted => {
                self.work += 1;
                Actions::NONE
            }
            E::WorkDone => {
                self.work = self.work.saturating_sub(1);
                Actions::FLUSH
            }
            E::ShutdownBegun => {
                self.set_reason(CloseReason::Shutdown); // whoever closes it from now on
                if self.life == Life::Open && self.opened() {
                    Actions::RUN_SHUTDOWN | Actions::FLUSH
                } else {
                    self.begin_close(CloseReason::Shutdown) | Actions::FLUSH // never opened
                }
            }
            E::DrainDeadline => {
                if matches!(self.life, Life::Open | Life::Closing) {
                    self.force_abort(CloseReason::DrainTimeout) | Actions::FLUSH
                } else {
                    Actions::NONE
                }
            }
            E::LayerFailed(reason) => self.force_close(reason.clone()) | Actions::FLUSH,
            E::ForceAbort(reason) => self.force_abort(reason.clone()) | Actions::FLUSH,
            E::DecodeError(reason) => {
                self.frames = Frames::Failed;
                self.set_reason(reason.clone());
                Actions::NONE
            }
            E::InputOverflow(reason) => {
                self.frames = Frames::Failed;
                self.begin_close(reason.clone())
            }
            E::ConnectTimeout => {
                if self.setup != Setup::Connecting {
                    return Actions::NONE;
                }
                self.begin_abort(CloseReason::Io(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out".into(),
                )) | Actions::FLUSH
            }
            E::Idle => {
                if self.life == Life::Open && self.work == 0 {
                    self.begin_close(CloseReason::IdleTimeout) | Actions::FLUSH
                } else {
                    Actions::NONE
                }
            }
            E::LingerOver => {
                if self.life == Life::Lingering && self.input == Input::Open {
                    self.input = Input::Closed; // stop waiting for the peer's EOF
                }
                Actions::FLUSH
            }
            E::RetryHeld => {
                if self.frames == Frames::Held {
                    self.frames = Frames::Flowing;
                }
                Actions::FLUSH
            }
            E::Close(reason) => self.begin_close(reason.clone()) | Actions::FLUSH,
            E::Abort(reason) => self.begin_abort(reason.clone()) | Actions::FLUSH,
            E::CloseAfter => {
                if self.takes_own_writes() {
                    self.words = Words::Sealed;
                }
                self.begin_close(CloseReason::Local) | Actions::FLUSH
            }
            E::ShutdownWrite => {
                if self.life == Life::Open && self.write == WriteSide::Open {
                    self.write = WriteSide::ShutPending;
                }
                Actions::FLUSH
            }
            E::Pause => {
                self.flags.set(Flags::USER_PAUSED, true);
                Actions::FLUSH
            }
            E::Resume => {
                self.flags.set(Flags::USER_PAUSED, false);
                Actions::FLUSH
            }
            E::Hold => {
                if self.frames == Frames::Flowing {
                    self.frames = Frames::Held;
                }
                Actions::NONE
            }
            E::WatchDrain => {
                // Past `Closing` no callback but `on_close` runs: nothing to watch for.
                if matches!(self.life, Life::Open | Life::Closing) {
                    self.flags.set(Flags::DRAIN_WATCH, true);
                }
                Actions::FLUSH
            }
        }
    }

    fn peer_eof(&mut self, layer_eof: Option<CloseReason>) -> Actions {
        if self.input != Input::Open {
            self.flags.set(Flags::READING, false); // TCP's EOF after the layer's own end of stream
            return Actions::NONE;
        }
        let live = matches!(self.life, Life::Open | Life::Closing);
        if let (Some(reason), false, true) = (layer_eof, self.opened(), live) {
            // The layers never got ready: the EOF ends the connection (a reason of its own).
            self.input = Input::Closed;
            self.flags.set(Flags::READING, false);
            return self.force_close(reason) | Actions::FLUSH;
        }
        self.input = Input::Closed;
        self.flags.set(Flags::READING, false);
        if self.life != Life::Open {
            return Actions::FLUSH;
        }
        self.set_reason(CloseReason::PeerClosed);
        self.input = Input::EofPending;
        // Frames already received are delivered before the half-close is.
        let pump = if self.wants_frames() {
            Actions::PUMP
        } else {
            Actions::NONE
        };
        pump | Actions::FLUSH
    }

    /// Starts a graceful close for `reason` unless one is under way.
    fn begin_close(&mut self, reason: CloseReason) -> Actions {
        if self.life != Life::Open {
            return Actions::NONE;
        }
        self.set_reason(reason);
        self.set_life(Life::Closing)
    }

    /// Requests a reset for `reason` unless the connection is already closed.
    fn begin_abort(&mut self, reason: CloseReason) -> Actions {
        if matches!(self.life, Life::Closed | Life::Aborting) {
            return Actions::NONE;
        }
        self.set_reason(reason);
        self.set_life(Life::Aborting)
    }

    /// Closes because a layer failed or timed out: what the handler queued is dropped, what
    /// the layer queued (an alert) is still sent, and `reason` replaces any recorded one.
    fn force_close(&mut self, reason: CloseReason) -> Actions {
        self.work = 0;
        self.frames = Frames::Failed;
        self.reason = Some(Box::new(reason));
        let mut a = Actions::DROP_OUTPUT;
        if self.life == Life::Open {
            a |= self.set_life(Life::Closing);
        }
        a
    }

    /// Resets for `reason`, which replaces any recorded one (a reset that drops queued bytes
    /// must be counted as what it is).
    fn force_abort(&mut self, reason: CloseReason) -> Actions {
        if matches!(self.life, Life::Closed | Life::Aborting) {
            return Actions::NONE;
        }
        self.reason = Some(Box::new(reason));
        self.set_life(Life::Aborting)
    }

    /// Moves to `life`: once the connection stops being open its timers are disarmed and its
    /// plain handles say closed; once nothing more can be written, every handle fails.
    fn set_life(&mut self, life: Life) -> Actions {
        debug_assert!(
            life != Life::Open || self.life == Life::Open,
            "a connection never reopens"
        );
        debug_assert!(
            life == Life::Open || self.reason.is_some() || life == Life::Closed,
            "leaving Open without a reason"
        );
        self.life = life;
        let mut a = Actions::NONE;
        if life != Life::Open {
            a |= Actions::LEFT_OPEN;
        }
        if !matches!(life, Life::Open | Life::Closing) {
            self.flags.set(Flags::DRAIN_WATCH, false); // reset or flushed: `on_close` follows
        }
        if !matches!(life, Life::Open | Life::Closing) {
            a |= Actions::KILL_HANDLES;
        }
        a
    }

    /// The invariants that hold between events.
    #[cfg_attr(not(debug_assertions), allow(dead_code))] // the checks run in debug builds
    pub fn check(&self) {
        let past_open = self.life != Life::Open;
        assert!(
            !past_open
                || self.reason.is_some()
                || self.flags.has(Flags::REPORTED)
                || self.life == Life::Closed,
            "past Open without a recorded reason: {self:?}"
        );
        assert!(
            self.frames != Frames::Failed
                || self.reason.is_some()
                || self.flags.has(Flags::REPORTED),
            "frames failed without a recorded reason: {self:?}"
        );
        assert!(
            self.input != Input::EofPending
                || self.reason.is_some()
                || self.flags.has(Flags::REPORTED),
            "EOF pending without a reason: {self:?}"
        );
        assert!(
            self.write != WriteSide::Shut || !self.flags.has(Flags::SENDING),
            "a send in flight after FIN: {self:?}"
        );
        assert!(
            self.setup != Setup::Connecting
                || (!self.flags.has(Flags::READING) && !self.flags.has(Flags::SENDING)),
            "a connecting socket reads or sends: {self:?}"
        );
        assert!(
            !self.flags.has(Flags::DRAIN_WATCH) || matches!(self.life, Life::Open | Life::Closing),
            "a drain watch on a connection past its callbacks: {self:?}"
        );
    }

    #[cfg(debug_assertions)]
    fn differs(&self, o: &Machine) -> bool {
        // Bookkeeping bits (dirty, counted, reported) are not the connection's state.
        let state = |m: &Machine| {
            let flags = m.flags.0 & !(Flags::DIRTY.0 | Flags::PEER_COUNTED.0 | Flags::REPORTED.0);
            (
                m.life, m.setup, m.input, m.frames, m.write, m.words, flags, m.work,
            )
        };
        state(self) != state(o) || self.reason != o.reason
    }
}

/// Observers for the unit tests and the fuzz target.
#[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
impl Machine {
    pub fn setup(&self) -> Setup {
        self.setup
    }
    pub fn input(&self) -> Input {
        self.input
    }
    pub fn frames(&self) -> Frames {
        self.frames
    }
    pub fn write_side(&self) -> WriteSide {
        self.write
    }
    pub fn reading(&self) -> bool {
        self.flags.has(Flags::READING)
    }
    pub fn sending(&self) -> bool {
        self.flags.has(Flags::SENDING)
    }
}
