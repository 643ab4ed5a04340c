//! What goes into the machine ([`Event`]) and what comes out ([`Actions`]), and its yes/no
//! flags ([`Flags`], two bytes).

use crate::info::CloseReason;

/// What the engine must do, as bits (several at once; the engine carries them out in a
/// fixed order, see `engine/flush.rs`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Actions(u32);

macro_rules! actions {
    ($($(#[$m:meta])* $name:ident = $bit:expr;)*) => {
        impl Actions {
            $($(#[$m])* pub const $name: Actions = Actions(1 << $bit);)*
            const NAMES: &'static [(&'static str, Actions)] = &[$((stringify!($name), Actions::$name)),*];
        }
    };
}

actions! {
    /// Look at the connection at the end of the loop turn (mark it dirty).
    FLUSH = 0;
    /// The connection stopped being open: disarm its timers, its plain handles say closed.
    LEFT_OPEN = 1;
    /// Nothing more can be written: every handle fails.
    KILL_HANDLES = 2;
    /// Drop what the handler queued and its last words (a layer failed or timed out).
    DROP_OUTPUT = 3;
    /// Close the socket gracefully.
    CLOSE = 4;
    /// Reset the socket (SO_LINGER 0).
    ABORT = 5;
    /// Shut the write side (FIN).
    SHUT_WRITE = 6;
    /// Ask the backend to read.
    READ_ON = 7;
    /// Ask the backend to stop reading.
    READ_OFF = 8;
    /// Run `on_open`.
    RUN_OPEN = 9;
    /// Run `on_read_closed`.
    RUN_READ_CLOSED = 10;
    /// Deliver the held-back input (if any) to the decoder.
    PUMP = 11;
    /// Queue the `close_after` bytes now.
    QUEUE_LAST_WORDS = 12;
    /// End the layers (close_notify) now.
    FINISH_LAYERS = 13;
    /// Hand what is sendable to the backend (one send in flight).
    SEND = 14;
    /// Start lingering: remember until when, drop the held-back input.
    LINGER = 15;
    /// Count a backpressure pause.
    COUNT_PAUSE = 16;
    /// Run `on_writable` for the connection's own drain watch.
    RUN_WRITABLE = 17;
    /// Run the handler's timer callback.
    RUN_TIMER = 18;
    /// Run `on_shutdown`.
    RUN_SHUTDOWN = 19;
    /// Stop here: nothing more to do for this connection this turn.
    STOP = 20;
}

impl Actions {
    pub const NONE: Actions = Actions(0);

    pub fn has(self, a: Actions) -> bool {
        self.0 & a.0 == a.0 && a.0 != 0
    }

    #[cfg_attr(not(debug_assertions), allow(dead_code))] // the checks run in debug builds
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Actions {
    type Output = Actions;
    fn bitor(self, o: Actions) -> Actions {
        Actions(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Actions {
    fn bitor_assign(&mut self, o: Actions) {
        self.0 |= o.0;
    }
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = Actions::NAMES
            .iter()
            .filter(|(_, a)| self.has(*a))
            .map(|(n, _)| *n);
        f.debug_set().entries(names).finish()
    }
}

/// What happens to a connection, from outside the machine (the engine, the handler's `Conn`
/// calls, handles through the inbox, the backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An outgoing connect completed.
    Connected,
    /// The layers are ready (or the connection has none): `on_open` is due.
    Ready,
    /// Bytes arrived (plaintext, after the layers).
    Received,
    /// The peer's EOF. `layer_eof`: with layers, why an EOF ends a connection whose layers
    /// are not ready yet (`Stack::eof_reason`).
    PeerEof {
        layer_eof: Option<CloseReason>,
    },
    /// The frames before the EOF are delivered: tell the handler if it is due.
    DeliverEof,
    /// A socket error: reset.
    Reset(CloseReason),
    /// A send completed (fully or in part: `done`).
    SendProgress {
        done: bool,
    },
    /// The engine handed a send to the backend.
    SendStarted,
    /// A timer of the connection is due.
    TimerDue,
    /// `Conn::work` counted a job; `WorkDone`: a job answered.
    WorkStarted,
    WorkDone,
    /// The engine's shutdown began: `defer` spares a connection that sent nothing yet.
    ShutdownBegun,
    /// The drain deadline passed.
    DrainDeadline,
    /// A layer failed (`force_close`): the handler's output is dropped, the layer's alert goes.
    LayerFailed(CloseReason),
    /// A layer's (or the handshake's) deadline passed, the flush stalled, the budget's
    /// overload reset or a handler panic: reset with this reason, replacing any recorded one.
    ForceAbort(CloseReason),
    /// The decoder refused the input for good.
    DecodeError(CloseReason),
    /// More undecoded input than the server allows.
    InputOverflow(CloseReason),
    /// An outgoing connect did not complete in time.
    ConnectTimeout,
    /// The idle timeout passed with no input, no send progress and no work.
    Idle,
    /// The linger deadline passed: stop waiting for the peer's EOF.
    LingerOver,
    /// The held frame is offered again.
    RetryHeld,
    /// User (or handle) calls.
    Close(CloseReason),
    Abort(CloseReason),
    CloseAfter,
    ShutdownWrite,
    Pause,
    Resume,
    Hold,
    /// Watch the connection's own queue (`Conn::notify_when_drained`, or a handle's
    /// `notify_when_writable` on its own connection): `on_writable` once it is at or under
    /// the low watermark, as the flush sees it (`Machine::flush_watch`).
    WatchDrain,
}

/// The machine's yes/no state, one bit each (two bytes instead of nine bools: the machine is
/// part of every connection's entry).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Flags(pub(super) u16);

impl Flags {
    /// `Conn::pause_reading`.
    pub(super) const USER_PAUSED: Flags = Flags(1);
    /// Paused for the write queue (above the high watermark) or the memory budget.
    pub(super) const BP_PAUSED: Flags = Flags(2);
    /// Whether the backend is currently asked to read.
    pub(super) const READING: Flags = Flags(4);
    /// A send is in the backend's hands.
    pub(super) const SENDING: Flags = Flags(8);
    /// Queued for the end-of-turn flush.
    pub(super) const DIRTY: Flags = Flags(16);
    /// Some input has arrived.
    pub(super) const RECEIVED: Flags = Flags(32);
    /// The connection counts against its client's address in the per-IP limits.
    pub(super) const PEER_COUNTED: Flags = Flags(64);
    /// The close was reported (`take_reason`): debug builds assert it happens once.
    pub(super) const REPORTED: Flags = Flags(128);
    /// The handler watches its own queue ([`Event::WatchDrain`]): `on_writable` is due once
    /// the queue is at or under the low watermark, or the connection stops being open. Only
    /// while callbacks can run (`Open`, `Closing`).
    pub(super) const DRAIN_WATCH: Flags = Flags(256);
    const NAMES: [(&'static str, Flags); 9] = [
        ("user_paused", Flags::USER_PAUSED),
        ("bp_paused", Flags::BP_PAUSED),
        ("reading", Flags::READING),
        ("sending", Flags::SENDING),
        ("dirty", Flags::DIRTY),
        ("received", Flags::RECEIVED),
        ("peer_counted", Flags::PEER_COUNTED),
        ("reported", Flags::REPORTED),
        ("drain_watch", Flags::DRAIN_WATCH),
    ];

    pub(super) fn has(self, f: Flags) -> bool {
        self.0 & f.0 != 0
    }

    pub(super) fn set(&mut self, f: Flags, on: bool) {
        if on {
            self.0 |= f.0;
        } else {
            self.0 &= !f.0;
        }
    }

    /// Sets `f` to `on`; returns what it was.
    pub(super) fn replace(&mut self, f: Flags, on: bool) -> bool {
        let was = self.has(f);
        self.set(f, on);
        was
    }
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = Flags::NAMES
            .iter()
            .filter(|(_, b)| self.has(*b))
            .map(|(n, _)| *n);
        f.debug_set().entries(on).finish()
    }
}

/// Events that may legitimately find nothing to do: late ones (a second `Ready`, a timer,
/// a hold or an EOF after the connection moved on) are consumed and dropped, and queries.
#[cfg(debug_assertions)]
pub(super) fn event_may_idle(e: &Event) -> bool {
    matches!(
        e,
        Event::Ready
            | Event::Received
            | Event::PeerEof { .. }
            | Event::DeliverEof
            | Event::TimerDue
            | Event::DrainDeadline
            | Event::ConnectTimeout
            | Event::Idle
            | Event::Hold
            | Event::DecodeError(_)
            | Event::WorkStarted
            | Event::InputOverflow(_)
    )
}
