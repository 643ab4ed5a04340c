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

use crate::core::{Phase, Token};
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
        let Some(e) = self.entry(token) else {
            return;
        };
        e.core.dirty = false;
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
        if c.held && !held.contains(&token) {
            held.push(token); // held outside on_frame: still retried, never a silent stall
        }
        match c.phase {
            Phase::Aborting => {
                c.set_phase(Phase::Closed);
                backend.close(token, true);
                return;
            }
            Phase::Closed => return,
            _ => {}
        }
        if c.connecting {
            if c.phase != Phase::Open {
                // Closed before it connected: nothing to flush.
                c.set_phase(Phase::Closed);
                backend.close(token, false);
            }
            return; // nothing is sent or read before the connect completes
        }
        // The last words of a close go out once every outstanding job has answered.
        if c.phase == Phase::Closing && c.work == 0 && c.has_last_words() {
            c.queue_last_words();
        }
        // Layers (TLS) turn the handler's plaintext into wire bytes, and end a graceful close
        // or half-close with their own last bytes (close_notify) once everything is answered.
        if let Some(stack) = c.layers.as_mut() {
            if c.opened && !c.out.is_empty() {
                if stack.is_closed() {
                    // Written after close_notify was queued: on plaintext the same write would
                    // come after the FIN. Dropped alike (the handles already answer `Closed`).
                    debug!(peer = %c.info.peer, bytes = c.out.len(), "write after the layers closed (close_notify, or a failure) dropped");
                    c.out.clear();
                } else {
                    if stack.wire.capacity() == 0 {
                        stack.wire = self.ctx.bufs.get();
                    }
                    let r = stack.send(&c.out);
                    c.out.clear();
                    if let Err(reason) = r {
                        c.force_close(reason);
                    }
                }
            }
        }
        // close_notify goes where plaintext's FIN would: once the stack is established (a FIN
        // mid-handshake ends an outgoing connection's handshake) and nothing queued or in
        // flight is left, so that a write taken before it is never dropped. From then on the
        // handles answer `Closed`, as after a plaintext FIN.
        let ending = c.phase == Phase::Closing || c.shut_write_pending;
        let idle = !c.sending && c.out.is_empty() && c.wire_len() == 0;
        if ending && c.opened && idle && c.work == 0 && !c.has_last_words() {
            if let Some(stack) = c.layers.as_mut() {
                if !stack.is_closed() {
                    stack.finish(); // once; nothing after a failure
                    c.kill_handles();
                }
            }
        }
        // One send in flight per connection; everything queued meanwhile goes in the next.
        let can_send = !c.sending && c.writable();
        let sendable = match c.layers.as_deref_mut() {
            Some(stack) => &mut stack.wire,
            None => &mut c.out,
        };
        if can_send && !sendable.is_empty() {
            let buf = std::mem::take(sendable);
            c.inflight = buf.len();
            c.inflight_cap = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
            c.sending = true;
            backend.send(token, buf);
        }
        let drained = !c.sending
            && c.out.is_empty()
            && c.wire_len() == 0
            && c.work == 0
            && !c.has_last_words();
        // Half-close: FIN after everything queued (and answered) is sent, and with layers only
        // once they are established (their close_notify went first); reading goes on.
        let established = c.opened || c.layers.is_none();
        if c.shut_write_pending && c.phase == Phase::Open && drained && established {
            c.shut_write_pending = false;
            c.write_shut = true;
            c.kill_handles();
            backend.shutdown_write(token);
        }
        // Both directions are over (the peer's EOF was delivered, our FIN is sent): done.
        if c.phase == Phase::Open && c.write_shut && c.read_closed && !c.eof_pending {
            c.begin_close(crate::info::CloseReason::PeerClosed);
        }
        let queued = c.queued();
        if c.phase == Phase::Open {
            let exempt = self.servers[c.server].limits.overload_exempt;
            let pause = super::overload::should_pause(c, queued, &self.ctx.budget, exempt);
            if !c.bp_paused && pause {
                c.bp_paused = true;
                self.ctx.stats[c.server].threads[self.index]
                    .backpressure_pauses
                    .add(1);
                debug!(peer = %c.info.peer, queued, "write queue above high watermark; pausing reads");
            } else if c.bp_paused && !pause {
                c.bp_paused = false;
            }
        }
        c.publish_queued();
        State::recharge(&self.ctx.budget, self.ctx.now, c);
        if let Some(s) = &c.shared {
            if queued <= c.write_low && s.watched.load(std::sync::atomic::Ordering::Acquire) {
                s.wake_watchers();
            }
        }
        if c.phase == Phase::Closing && drained {
            if c.read_closed {
                c.set_phase(Phase::Closed);
                backend.close(token, false);
                return;
            }
            // Flushed: shut our side, then read (and discard) until EOF or the linger ends.
            if !c.write_shut {
                c.write_shut = true;
                backend.shutdown_write(token);
            }
            let mut until = self.ctx.now + LINGER;
            if let Some(d) = self.shutdown_deadline {
                until = until.min(d);
            }
            c.rare_mut().linger_until = Some(until);
            c.set_phase(Phase::Lingering);
            c.rbuf = Vec::new();
        }
        if c.phase == Phase::Lingering && c.read_closed {
            c.set_phase(Phase::Closed);
            backend.close(token, false);
            return;
        }
        let want_read = match c.phase {
            Phase::Open => {
                !c.user_paused && !c.bp_paused && !c.held && !c.read_closed && !c.decode_failed
            }
            Phase::Lingering => !c.read_closed,
            _ => false,
        };
        if want_read != c.reading {
            c.reading = want_read;
            backend.set_reading(token, want_read);
        }
    }
}
