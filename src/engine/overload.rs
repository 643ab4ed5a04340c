//! The engine's side of the memory budget ([`crate::budget`]): each connection's charge, the
//! read pause and shrunk watermark a flush applies under pressure, refusal at accept, and the
//! reset of the biggest, longest holders at the top. Every action is re-evaluated as pressure
//! changes, so each reverses when it falls.

use std::time::Instant;

use tracing::{debug, info, warn};

use crate::budget::{Action, Pressure, REFUSE_LIMIT, RESET_TARGET_PERMILLE};
use crate::core::{ConnCore, Token};
use crate::info::CloseReason;
use crate::machine::{Actions, Event, Life};
use crate::stats::ThreadStats;

use super::table::State;

/// A connection holding at least this much is "holding" (its clock for the reset starts).
const HOLDING: usize = 64 << 10;

/// The read pause a flush applies: the server's watermarks, shrunk under pressure, and under
/// [`Pressure::Pause`] any waiting output. Returns whether reading should pause (the caller
/// keeps the machine's backpressure pause and its counter). `exempt`: the server is exempt from overload actions
/// (the metrics server), so the refuse level does not stop its reading.
pub(super) fn should_pause(
    c: &ConnCore,
    queued: usize,
    budget: &crate::budget::Budget,
    exempt: bool,
) -> bool {
    let pressure = budget.pressure();
    let high = budget.write_share(c.write_high);
    // From the refuse level no connection takes input, as no new connection is taken: a
    // connection holding nothing would otherwise still read one buffer and queue its reply,
    // and 2,000 of them took the charge to 120% of the budget (issue 25).
    let budget_pause =
        (pressure >= Pressure::Pause && queued > 0) || (pressure >= Pressure::Refuse && !exempt);
    if !c.m.bp_paused() {
        if queued > c.write_high {
            return true;
        }
        // Under pressure the share bounds all the connection holds (buffer capacities too).
        let held = c.footprint();
        if high < c.write_high && held > high {
            budget.count(Action::Shrink);
            debug!(peer = %c.info.peer, queued, held, share = high, "memory pressure: write watermark shrunk; pausing reads");
            return true;
        }
        if budget_pause {
            budget.count(Action::Pause);
            debug!(peer = %c.info.peer, queued, "memory pressure: output waits; pausing reads");
            return true;
        }
        false
    } else {
        // Resume below the low watermark (shrunk with the high one), and not while the
        // budget still pauses a connection whose output waits.
        let low = if high < c.write_high {
            c.write_low.min(high / 2)
        } else {
            c.write_low
        };
        let held_ok = high >= c.write_high || c.footprint() <= high;
        !(queued <= low && held_ok && !budget_pause)
    }
}

impl State {
    /// Moves connection `c`'s charge to what it holds now.
    pub(super) fn recharge(budget: &crate::budget::Budget, now: Instant, c: &mut ConnCore) {
        let held = c.footprint().min(u32::MAX as usize);
        let before = c.charged as usize;
        if held != before {
            budget.recharge(before, held);
            c.charged = held as u32;
        }
        let holding = held >= HOLDING;
        let since = c.rare.as_ref().and_then(|r| r.holding_since);
        if holding && since.is_none() {
            c.rare_mut().holding_since = Some(now);
        } else if !holding && since.is_some() {
            c.rare_mut().holding_since = None;
        }
    }

    /// After a receive: charges what the connection holds now, and under pressure stops its
    /// reading at once if its output waits (the flush at the turn's end keeps the decision).
    pub(super) fn budget_after_input(
        &mut self,
        token: Token,
        backend: &mut dyn crate::sys::Backend,
    ) {
        let budget = self.ctx.budget.clone();
        let now = self.ctx.now;
        // From the shrink level on, each receive armed takes one buffer at most (io_uring's
        // multishot ones could land four per connection before a pause acts: 2,000 flooders
        // took the charge to 160% of the budget).
        backend.set_recv_tight(budget.pressure() >= Pressure::Shrink);
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        Self::recharge(&budget, now, c);
        let pressure = budget.pressure();
        if pressure >= Pressure::Refuse && !self.refuse_paused {
            self.pause_all_for_budget(backend);
        } else if pressure < Pressure::Refuse {
            self.refuse_paused = false;
        }
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        if budget.pressure() < Pressure::Shrink || !c.m.is_open() || c.m.bp_paused() {
            return;
        }
        let queued = c.queued();
        let exempt = self.servers[c.server].limits.overload_exempt;
        if should_pause(c, queued, &budget, exempt) {
            let a = c.m.budget_pause();
            if a.has(Actions::COUNT_PAUSE) {
                self.ctx.stats[c.server].threads[self.index]
                    .backpressure_pauses
                    .add(1);
            }
            if a.has(Actions::READ_OFF) {
                backend.set_reading(token, false);
            }
            self.ctx.mark_dirty(token, c);
        }
    }

    /// The budget reached its refuse level: every connection still reading stops (once per
    /// rise), before its next receive rather than after it. With thousands of connections one
    /// buffer each is more than the budget has left (2,000 × 16 KiB is 32 MiB: two thirds of a
    /// 48 MiB budget), and a connection learning of the pressure only from its own receive has
    /// taken that buffer already. Reading resumes through the flush once pressure falls below
    /// the refuse level (`overload_tick` marks them).
    fn pause_all_for_budget(&mut self, backend: &mut dyn crate::sys::Backend) {
        self.refuse_paused = true;
        let budget = &self.ctx.budget;
        let mut paused = 0u64;
        for (token, e) in self.entries.iter_mut().enumerate() {
            let Some(e) = e else { continue };
            let c = &mut e.core;
            if !c.m.is_open()
                || c.m.bp_paused()
                || !c.m.reading()
                || self.servers[c.server].limits.overload_exempt
            {
                continue;
            }
            // The flush at the turn's end keeps the pause while the pressure lasts: no need
            // to mark thousands of connections dirty for it.
            if c.m.budget_pause().has(Actions::READ_OFF) {
                backend.set_reading(token, false);
            }
            budget.count(Action::Pause);
            self.ctx.stats[c.server].threads[self.index]
                .backpressure_pauses
                .add(1);
            paused += 1;
        }
        debug!(
            paused,
            thread = self.index,
            "memory budget at the refuse level: reading paused on every connection"
        );
    }

    /// Before a receive is copied: whether it arrived late, on a connection the budget paused
    /// (its recv was already in the kernel when the pause was decided), and copying it would
    /// take the budget to its reset level. Such a connection is reset instead (counted under
    /// `overload`) and its bytes are not taken: a peer's sending never makes the process
    /// allocate past the budget (issue 25).
    pub(super) fn late_input_over_budget(&mut self, token: Token, len: usize) -> bool {
        let budget = &self.ctx.budget;
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return false;
        };
        let c = &mut e.core;
        if !c.m.bp_paused()
            || c.charged == 0
            || !c.m.is_open()
            || Pressure::of(budget.used() + len, budget.limit()) < Pressure::Reset
        {
            return false;
        }
        warn!(peer = %c.info.peer, held = c.charged, len, used = budget.used(), limit = budget.limit(), "memory budget at the top: a paused connection's late input would pass it; resetting the connection");
        budget.count(Action::Reset);
        c.on(Event::ForceAbort(CloseReason::Overload));
        self.ctx.mark_dirty(token, c);
        true
    }

    /// Gives back a closed connection's charge.
    pub(super) fn uncharge(&self, c: &mut ConnCore) {
        self.ctx.budget.recharge(c.charged as usize, 0);
        c.charged = 0;
    }

    /// Whether a new connection is refused for the budget (counted, under `overload`).
    pub(super) fn refuse_for_budget(&self, stats: &ThreadStats) -> bool {
        let budget = &self.ctx.budget;
        if budget.pressure() < Pressure::Refuse {
            return false;
        }
        budget.count(Action::Refuse);
        stats.closed[CloseReason::Overload.index()].add(1);
        debug!(
            used = budget.used(),
            limit = budget.limit(),
            "memory pressure: new connection refused"
        );
        true
    }

    /// Once per tick: logs a change of pressure (one IO thread sees each change), resets the
    /// biggest, longest holders at the top, and under lower pressure lets connections paused
    /// by it read again.
    pub(super) fn overload_tick(&mut self) {
        let budget = self.ctx.budget.clone();
        let pressure = budget.pressure();
        if let Some((from, to)) = budget.observe(pressure) {
            let (used, limit) = (budget.used(), budget.limit());
            if to > from {
                warn!(?from, ?to, used, limit, "memory pressure rose");
            } else {
                info!(?from, ?to, used, limit, "memory pressure fell");
            }
        }
        let now = self.ctx.now;
        let refusing = budget.refusing_for(now, pressure);
        if pressure >= Pressure::Reset || refusing >= REFUSE_LIMIT {
            // This thread's share of what must go to fall back under the refuse threshold.
            let threads = self.ctx.stats.first().map_or(1, |s| s.threads.len()).max(1);
            let floor = budget.limit() / 1000 * RESET_TARGET_PERMILLE;
            let target = budget.used().saturating_sub(floor) / threads + 1;
            let mut holders: Vec<(u128, Token)> = Vec::new();
            for (token, e) in self.entries.iter().enumerate() {
                let Some(e) = e else { continue };
                let c = &e.core;
                if c.charged == 0 || matches!(c.m.life(), Life::Aborting | Life::Closed) {
                    continue;
                }
                let since = c.rare.as_ref().and_then(|r| r.holding_since).unwrap_or(now);
                let age_ms = now.duration_since(since).as_millis() + 1;
                holders.push((c.charged as u128 * age_ms, token));
            }
            holders.sort_unstable_by(|a, b| b.cmp(a));
            let mut freed = 0usize;
            for (_, token) in holders {
                if freed >= target {
                    break;
                }
                let Some(e) = self.entries[token].as_mut() else {
                    continue;
                };
                let c = &mut e.core;
                freed += c.charged as usize;
                warn!(peer = %c.info.peer, held = c.charged, used = budget.used(), limit = budget.limit(), "memory budget at the top: resetting the connection holding the most");
                budget.count(Action::Reset);
                c.on(Event::ForceAbort(CloseReason::Overload));
                self.ctx.mark_dirty(token, c);
            }
        } else if pressure < Pressure::Refuse {
            self.refuse_paused = false;
            // A connection paused for the budget whose queue does not move (its peer does not
            // read) is looked at again: below the pause level it may read, and below the
            // refuse level so may one that holds no output (paused by `pause_all_for_budget`).
            for (token, e) in self.entries.iter_mut().enumerate() {
                let Some(e) = e else { continue };
                let c = &mut e.core;
                let queued = c.queued();
                let may_read = if pressure < Pressure::Pause {
                    queued <= c.write_high
                } else {
                    queued == 0
                };
                if c.m.bp_paused() && c.m.is_open() && may_read {
                    self.ctx.mark_dirty(token, c);
                }
            }
        }
    }
}
