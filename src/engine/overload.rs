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
/// keeps the machine's backpressure pause and its counter).
pub(super) fn should_pause(c: &ConnCore, queued: usize, budget: &crate::budget::Budget) -> bool {
    let pressure = budget.pressure();
    let high = budget.write_share(c.write_high);
    let budget_pause = pressure >= Pressure::Pause && queued > 0;
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
        let Some(e) = self.entries.get_mut(token).and_then(Option::as_mut) else {
            return;
        };
        let c = &mut e.core;
        Self::recharge(&budget, now, c);
        if budget.pressure() < Pressure::Shrink || !c.m.is_open() || c.m.bp_paused() {
            return;
        }
        let queued = c.queued();
        if should_pause(c, queued, &budget) {
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
        } else if pressure < Pressure::Pause {
            // A connection paused for the budget whose queue does not move (its peer does not
            // read) is looked at again: below the pause level it may read.
            for (token, e) in self.entries.iter_mut().enumerate() {
                let Some(e) = e else { continue };
                let c = &mut e.core;
                if c.m.bp_paused() && c.m.is_open() && c.queued() <= c.write_high {
                    self.ctx.mark_dirty(token, c);
                }
            }
        }
    }
}
