//! The machine's part of the end-of-turn flush and of the timers' tick: what to do with the
//! connection given what the engine's queues hold. The engine asks in three steps because it
//! moves bytes between them (last words, the layers' encoding, the send):
//!
//! 0. [`Machine::flush_watch`]: the handler's watch on its own queue;
//! 1. [`Machine::flush_start`]: reset or close what must go; queue the last words;
//! 2. [`Machine::flush_send`]: end the layers (close_notify) and send;
//! 3. [`Machine::flush_write`] then [`Machine::flush_close`]: half-close, backpressure,
//!    the graceful close's steps and whether to read.

use std::time::{Duration, Instant};

use super::{Actions, Flags, Input, Life, Machine, Setup, Words, WriteSide};
use crate::info::CloseReason;

/// What the timers' tick knows of a connection (computed by the engine from its buffers,
/// layers and limits).
#[derive(Debug, Clone)]
pub struct TickFacts {
    pub now: Instant,
    /// With layers not ready yet: their own setup deadline passed (the PROXY header's) or
    /// the handshake timeout, with the reason.
    pub layer_expired: Option<CloseReason>,
    pub connect_deadline: Option<Instant>,
    pub idle_timeout: Option<Duration>,
    pub last_active: Instant,
    pub linger_until: Option<Instant>,
    /// Bytes queued or in flight.
    pub queued: usize,
    /// The engine's drain deadline passed.
    pub past_drain: bool,
}

/// What the tick finds for a connection (at most one of the first, then maybe the drain's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// The layers did not get ready in time: reset.
    LayerExpired(CloseReason),
    ConnectTimeout,
    Idle,
    /// Closing with bytes still queued: the engine looks whether they moved.
    CheckStall,
    LingerOver,
}

impl Machine {
    /// Step 0 of a flush, before anything else (its callback may write or close, and the
    /// rest of the flush carries that out): the handler's watch on its own queue
    /// ([`Event::WatchDrain`]) is due once the queue is at or under the low watermark
    /// (`low`, the engine's count: queued, in flight and what handles posted), or once the
    /// connection stops being open (a close was asked: the handler hears it as a handle's
    /// watcher would). `RUN_WRITABLE`: run `on_writable` (one-shot). A connection not opened
    /// yet keeps the watch until it is; one closed before it opened drops it.
    pub fn flush_watch(&mut self, low: bool) -> Actions {
        if !self.drain_due(low) {
            return Actions::NONE; // no watch, or not yet
        }
        self.flags.set(Flags::DRAIN_WATCH, false);
        if self.opened() {
            Actions::RUN_WRITABLE
        } else {
            Actions::NONE
        }
    }

    /// Last step of a flush: the drain watch became due during it (what was queued was sent
    /// or dropped, or a close began, after step 0 looked). Marks the connection dirty, so that
    /// the flush's next round runs the watch first; returns whether it did. Without it the
    /// watch would wait for a later event, which may never come (found by the `conn_machine`
    /// fuzz target: a write dropped after close_notify left the queue empty, the watch unfired).
    pub fn flush_rewatch(&mut self, low: bool) -> bool {
        self.drain_due(low) && self.mark_dirty()
    }

    /// A drain watch is set and due: the queue is low on an opened connection, or the
    /// connection stopped being open.
    fn drain_due(&self, low: bool) -> bool {
        self.flags.has(Flags::DRAIN_WATCH) && (self.life != Life::Open || (low && self.opened()))
    }

    /// Step 1 of a flush. `last_words`: `close_after` bytes wait.
    pub fn flush_start(&mut self, last_words: bool) -> Actions {
        match self.life {
            Life::Aborting => return self.set_life(Life::Closed) | Actions::ABORT | Actions::STOP,
            Life::Closed => return Actions::STOP,
            _ => {}
        }
        if self.setup == Setup::Connecting {
            if self.life != Life::Open {
                // Closed before it connected: nothing to flush.
                return self.set_life(Life::Closed) | Actions::CLOSE | Actions::STOP;
            }
            return Actions::STOP; // nothing is sent or read before the connect completes
        }
        // The last words of a close go out once every outstanding job has answered.
        if self.life == Life::Closing && self.work == 0 && last_words {
            self.words = Words::Queued;
            return Actions::QUEUE_LAST_WORDS;
        }
        Actions::NONE
    }

    /// Step 2: `unsent`: the handler's queue or the layers' wire holds bytes; `last_words`
    /// still wait; `layered`: the connection has layers. `FINISH_LAYERS`: close_notify goes
    /// where plaintext's FIN would (established, nothing queued, in flight or owed left);
    /// `SEND`: a send may start.
    pub fn flush_send(&self, unsent: bool, last_words: bool, layered: bool) -> Actions {
        let mut a = Actions::NONE;
        let ending = self.life == Life::Closing || self.write == WriteSide::ShutPending;
        let idle = !self.flags.has(Flags::SENDING) && !unsent;
        if layered && ending && self.opened() && idle && self.work == 0 && !last_words {
            a |= Actions::FINISH_LAYERS;
        }
        if !self.flags.has(Flags::SENDING) && self.writable() {
            a |= Actions::SEND;
        }
        a
    }

    /// Whether nothing is queued, in flight or owed (`unsent`, `last_words` as above).
    pub fn drained(&self, unsent: bool, last_words: bool) -> bool {
        !self.flags.has(Flags::SENDING) && !unsent && self.work == 0 && !last_words
    }

    /// Step 3a, after the send: the half-close's FIN, and the end of a connection both of
    /// whose directions are over.
    pub fn flush_write(&mut self, drained: bool, layered: bool) -> Actions {
        let mut a = Actions::NONE;
        // Half-close: FIN after everything queued (and answered) is sent, and with layers only
        // once they are established (their close_notify went first); reading goes on.
        let established = self.opened() || !layered;
        if self.write == WriteSide::ShutPending && self.life == Life::Open && drained && established
        {
            self.write = WriteSide::Shut;
            a |= Actions::KILL_HANDLES | Actions::SHUT_WRITE;
        }
        // Both directions are over (the peer's EOF was delivered, our FIN is sent): done.
        if self.life == Life::Open && self.write == WriteSide::Shut && self.input == Input::Closed {
            a |= self.begin_close(CloseReason::PeerClosed);
        }
        a
    }

    /// Step 3b, while open: backpressure (`pause`: the engine's watermark and budget verdict,
    /// asked only while open).
    pub fn backpressure(&mut self, pause: bool) -> Actions {
        if self.life != Life::Open || self.flags.has(Flags::BP_PAUSED) == pause {
            return Actions::NONE;
        }
        self.flags.set(Flags::BP_PAUSED, pause);
        if pause {
            Actions::COUNT_PAUSE
        } else {
            Actions::NONE
        }
    }

    /// Step 3c: a drained graceful close shuts our side and lingers (or closes if the peer's
    /// EOF came already); a lingering close ends at EOF; then whether to read.
    pub fn flush_close(&mut self, drained: bool) -> Actions {
        let mut a = Actions::NONE;
        if self.life == Life::Closing && drained {
            if self.read_closed() {
                return self.set_life(Life::Closed) | Actions::CLOSE | Actions::STOP;
            }
            // Flushed: shut our side, then read (and discard) until EOF or the linger ends.
            if self.write != WriteSide::Shut {
                self.write = WriteSide::Shut;
                a |= Actions::SHUT_WRITE;
            }
            a |= self.set_life(Life::Lingering) | Actions::LINGER;
        }
        if self.life == Life::Lingering && self.read_closed() {
            return a | self.set_life(Life::Closed) | Actions::CLOSE | Actions::STOP;
        }
        a | self.read_order()
    }

    /// Asks the backend to read or not, if that changed.
    pub fn read_order(&mut self) -> Actions {
        let want = match self.life {
            Life::Open => {
                !self.flags.has(Flags::USER_PAUSED)
                    && !self.flags.has(Flags::BP_PAUSED)
                    && self.frames == super::Frames::Flowing
                    && self.input == Input::Open
            }
            Life::Lingering => self.input == Input::Open,
            _ => false,
        };
        if want == self.flags.has(Flags::READING) {
            return Actions::NONE;
        }
        self.flags.set(Flags::READING, want);
        if want {
            Actions::READ_ON
        } else {
            Actions::READ_OFF
        }
    }

    /// Under memory pressure right after input: pause reading at once (the flush at the
    /// turn's end keeps the decision). `READ_OFF` only if the backend was reading.
    pub fn budget_pause(&mut self) -> Actions {
        if self.life != Life::Open || self.flags.has(Flags::BP_PAUSED) {
            return Actions::NONE;
        }
        self.flags.set(Flags::BP_PAUSED, true);
        let mut a = Actions::COUNT_PAUSE | Actions::FLUSH;
        if self.flags.replace(Flags::READING, false) {
            a |= Actions::READ_OFF;
        }
        a
    }

    /// What the tick finds (the first item), and whether the drain deadline resets it too.
    pub fn tick(&self, f: &TickFacts) -> (Option<Tick>, bool) {
        if !self.opened() {
            if let Some(reason) = &f.layer_expired {
                return (Some(Tick::LayerExpired(reason.clone())), false);
            }
        }
        if self.setup == Setup::Connecting && f.connect_deadline.is_some_and(|d| d <= f.now) {
            return (Some(Tick::ConnectTimeout), false);
        }
        let first = match self.life {
            Life::Open
                if self.work == 0
                    && f.idle_timeout
                        .is_some_and(|t| f.now.duration_since(f.last_active) >= t) =>
            {
                Some(Tick::Idle)
            }
            Life::Closing if self.work == 0 && f.queued > 0 => Some(Tick::CheckStall),
            Life::Lingering if f.linger_until.is_none_or(|until| until <= f.now) => {
                Some(Tick::LingerOver)
            }
            _ => None,
        };
        (first, f.past_drain)
    }
}
