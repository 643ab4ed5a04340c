//! The end of a loop turn: apply what the turn's callbacks asked for, connection by
//! connection. One send per connection (the batching), half-closes, watermarks and writability,
//! read pause/resume, and the steps of a graceful close:
//!
//! ```text
//! Open ──close()──▶ Closing ──work answered, last words queued, all sent──▶ Lingering ──EOF/2 s──▶ Closed
//!   │                  │        (SHUT_WR; input read and discarded)                         ▲
//!   └──abort()/error───┴──────────────────────────▶ Aborting (reset) ───────────────────────┘
//! ```

use tracing::debug;

use crate::core::Token;
use crate::machine::{layered, Actions, Event};
use crate::sys::Backend;

use super::table::State;
use super::LINGER;

impl State {
    /// Re-delivering held-back input can dirty connections again, so this runs a few rounds;
    /// anything left is picked up next turn.
    pub(super) fn flush(&mut self, backend: &mut dyn Backend) {
        for _ in 0..4 {
            if self.ctx.dirty.is_empty() {
                return;
            }
            let dirty = std::mem::take(&mut self.ctx.dirty);
            for &token in &dirty {
                self.flush_one(backend, token);
            }
            let mut dirty = dirty;
            dirty.clear();
            if self.ctx.dirty.is_empty() {
                self.ctx.dirty = dirty; // keep the allocation
            }
        }
    }

    fn flush_one(&mut self, backend: &mut dyn Backend, token: Token) {
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        e.core.m.clear_dirty();
        // The handler's watch on its own queue first (`Conn::notify_when_drained`): its
        // `on_writable` may write or close, and the rest of the flush carries that out.
        if e.core.m.drain_watched() {
            let low = e.core.queued() <= e.core.write_low;
            if e.core.m.flush_watch(low).has(Actions::RUN_WRITABLE) {
                let value = e.core.drain_value();
                e.app.writable(&mut e.core, &mut self.ctx, token, value);
            }
        }
        // Input held back (paused, held frame) is delivered first once frames are wanted again.
        if e.core.wants_frames() && !e.core.rbuf.is_empty() {
            self.pump(token);
        }
        self.deliver_eof(token);
        let held = &mut self.held;
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        if c.m.held() && !held.contains(&token) {
            held.push(token); // held outside on_frame: still retried, never a silent stall
        }
        // Resets, closes before the connect, and the last words of a close (once every
        // outstanding job has answered).
        let a = c.m.flush_start(c.has_last_words());
        c.apply(a);
        if a.has(Actions::ABORT) {
            backend.close(token, true);
        } else if a.has(Actions::CLOSE) {
            backend.close(token, false);
        }
        if a.has(Actions::STOP) {
            return;
        }
        if a.has(Actions::QUEUE_LAST_WORDS) {
            c.queue_last_words();
        }
        // Layers (TLS) turn the handler's plaintext into wire bytes, and end a graceful close
        // or half-close with their own last bytes (close_notify) once everything is answered.
        if let Some(stack) = c.layers.as_deref_mut() {
            let bufs = &mut self.ctx.bufs;
            let e = layered::encode(&mut c.m, stack, &mut c.out, || bufs.get());
            if e.dropped > 0 {
                // Written after close_notify was queued: on plaintext the same write would
                // come after the FIN. Dropped alike (the handles already answer `Closed`).
                debug!(peer = %c.info.peer, bytes = e.dropped, "write after the layers closed (close_notify, or a failure) dropped");
            }
            c.apply(e.actions);
        }
        // close_notify goes where plaintext's FIN would: once the stack is established (a FIN
        // mid-handshake ends an outgoing connection's handshake) and nothing queued or in
        // flight is left, so that a write taken before it is never dropped. From then on the
        // handles answer `Closed`, as after a plaintext FIN.
        let unsent = !c.out.is_empty() || c.wire_len() > 0;
        let a =
            c.m.flush_send(unsent, c.has_last_words(), c.layers.is_some());
        if a.has(Actions::FINISH_LAYERS) {
            if let Some(stack) = c.layers.as_deref_mut() {
                let finished = layered::finish(stack); // once; nothing after a failure
                c.apply(finished);
            }
        }
        // One send in flight per connection; everything queued meanwhile goes in the next.
        let sendable = match c.layers.as_deref_mut() {
            Some(stack) => &mut stack.wire,
            None => &mut c.out,
        };
        if a.has(Actions::SEND) && !sendable.is_empty() {
            let buf = std::mem::take(sendable);
            c.inflight = buf.len();
            c.inflight_cap = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
            c.on(Event::SendStarted);
            backend.send(token, buf);
        }
        let unsent = !c.out.is_empty() || c.wire_len() > 0;
        let drained = c.m.drained(unsent, c.has_last_words());
        let a = c.m.flush_write(drained, c.layers.is_some());
        if a.has(Actions::SHUT_WRITE) {
            backend.shutdown_write(token);
        }
        c.apply(a);
        let queued = c.queued();
        if c.m.is_open() {
            let exempt = self.servers[c.server].limits.overload_exempt;
            let pause = super::overload::should_pause(c, queued, &self.ctx.budget, exempt);
            if c.m.backpressure(pause).has(Actions::COUNT_PAUSE) {
                self.ctx.stats[c.server].threads[self.index]
                    .backpressure_pauses
                    .add(1);
                debug!(peer = %c.info.peer, queued, "write queue above high watermark; pausing reads");
            }
        }
        c.publish_queued();
        State::recharge(&self.ctx.budget, self.ctx.now, c);
        if let Some(s) = &c.shared {
            if queued <= c.write_low && s.watched.load(std::sync::atomic::Ordering::Acquire) {
                s.wake_watchers();
            }
        }
        // A drained graceful close: FIN and linger (or close at once after the peer's EOF);
        // a lingering close ends at EOF; then whether to read.
        let a = c.m.flush_close(drained);
        if a.has(Actions::SHUT_WRITE) {
            backend.shutdown_write(token);
        }
        if a.has(Actions::LINGER) {
            let mut until = self.ctx.now + LINGER;
            if let Some(d) = self.shutdown_deadline {
                until = until.min(d);
            }
            c.rare_mut().linger_until = Some(until);
            c.rbuf = Vec::new();
        }
        c.apply(a);
        if a.has(Actions::CLOSE) {
            backend.close(token, false);
        }
        if a.has(Actions::READ_ON) {
            backend.set_reading(token, true);
        } else if a.has(Actions::READ_OFF) {
            backend.set_reading(token, false);
        }
        // The drain watch came due in this flush (sent, dropped, or a close begun after step
        // 0 looked): the next round of `flush` runs it, in this loop turn.
        if c.m.drain_watched() && c.m.flush_rewatch(c.queued() <= c.write_low) {
            self.ctx.dirty.push(token);
        }
    }
}
