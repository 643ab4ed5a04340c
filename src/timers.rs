//! Per-connection timers of one IO thread: a binary heap of deadlines shared by every
//! connection of the thread, with the live deadline of each timer kept in its connection.
//!
//! Each armed timer has exactly one entry in the heap. Re-arming a timer later than its heap
//! entry (a heartbeat pushed back on every frame) only updates the connection's record; when
//! the old entry comes due it is re-queued at the new deadline. Re-arming earlier pushes a new
//! entry and the old one is recognised as stale when it pops. Cancelling only removes the
//! record. So a timer costs one heap entry (40 bytes) plus its record, and setting or resetting
//! it is O(log n) at worst, O(1) in the common push-back case.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// One armed timer of a connection: its id, when it fires, and the deadline of its heap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerRecord {
    pub id: u64,
    pub deadline: Instant,
    pub queued_at: Instant,
}

/// The heap of one IO thread.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64, u64)>>,
}

/// What popping a due heap entry means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// The timer `id` of connection (`token`, `gen`) fires now.
    Fire { token: usize, gen: u64, id: u64 },
    /// Nothing to do (stale, or re-queued later).
    Nothing,
}

impl Timers {
    /// Arms (or re-arms) timer `id` of the connection whose records are `records`.
    pub(crate) fn set(
        &mut self,
        records: &mut Vec<TimerRecord>,
        token: usize,
        gen: u64,
        id: u64,
        deadline: Instant,
    ) {
        if let Some(r) = records.iter_mut().find(|r| r.id == id) {
            r.deadline = deadline;
            if r.queued_at <= deadline {
                return; // the heap entry pops first and re-queues itself
            }
            r.queued_at = deadline;
        } else {
            records.push(TimerRecord {
                id,
                deadline,
                queued_at: deadline,
            });
        }
        self.heap.push(Reverse((deadline, token, gen, id)));
    }

    /// Disarms timer `id`; `false` if it was not armed.
    pub(crate) fn cancel(records: &mut Vec<TimerRecord>, id: u64) -> bool {
        let before = records.len();
        records.retain(|r| r.id != id);
        records.len() != before
    }

    /// The earliest heap deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, ..))| *d)
    }

    /// Number of heap entries (live timers plus stale ones not yet popped).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Pops the earliest entry if it is due at `now`; `records` looks up a connection's
    /// records by (`token`, `gen`) (`None`: the connection is gone).
    pub(crate) fn pop_due<'a>(
        &mut self,
        now: Instant,
        records: impl FnOnce(usize, u64) -> Option<&'a mut Vec<TimerRecord>>,
    ) -> Option<Due> {
        let &Reverse((at, token, gen, id)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        let Some(recs) = records(token, gen) else {
            return Some(Due::Nothing);
        };
        let Some(i) = recs.iter().position(|r| r.id == id) else {
            return Some(Due::Nothing);
        };
        let r = recs[i];
        if r.queued_at != at {
            return Some(Due::Nothing); // a stale duplicate; the live entry is elsewhere
        }
        if r.deadline <= now {
            recs.swap_remove(i);
            return Some(Due::Fire { token, gen, id });
        }
        recs[i].queued_at = r.deadline;
        self.heap.push(Reverse((r.deadline, token, gen, id)));
        Some(Due::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn drain(t: &mut Timers, now: Instant, recs: &mut Vec<TimerRecord>) -> Vec<u64> {
        let mut fired = Vec::new();
        while let Some(d) = t.pop_due(now, |_, _| Some(&mut *recs)) {
            if let Due::Fire { id, .. } = d {
                fired.push(id);
            }
        }
        fired
    }

    #[test]
    fn fires_in_deadline_order_once() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut recs = Vec::new();
        t.set(&mut recs, 1, 0, 7, t0 + Duration::from_millis(30));
        t.set(&mut recs, 1, 0, 8, t0 + Duration::from_millis(10));
        assert_eq!(drain(&mut t, t0, &mut recs), Vec::<u64>::new());
        assert_eq!(
            drain(&mut t, t0 + Duration::from_millis(40), &mut recs),
            vec![8, 7]
        );
        assert!(recs.is_empty());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn pushing_back_keeps_one_heap_entry_and_fires_at_the_new_deadline() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut recs = Vec::new();
        for i in 0..1000 {
            t.set(&mut recs, 1, 0, 1, t0 + Duration::from_millis(10 + i));
        }
        assert_eq!(t.len(), 1, "a pushed-back timer re-uses its heap entry");
        assert!(drain(&mut t, t0 + Duration::from_millis(500), &mut recs).is_empty());
        assert_eq!(t.len(), 1, "re-queued at its real deadline");
        assert_eq!(
            drain(&mut t, t0 + Duration::from_millis(1010), &mut recs),
            vec![1]
        );
    }

    #[test]
    fn pulling_forward_fires_early_once_and_cancel_disarms() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut recs = Vec::new();
        t.set(&mut recs, 1, 0, 1, t0 + Duration::from_millis(100));
        t.set(&mut recs, 1, 0, 1, t0 + Duration::from_millis(5));
        assert_eq!(
            drain(&mut t, t0 + Duration::from_millis(6), &mut recs),
            vec![1]
        );
        assert!(drain(&mut t, t0 + Duration::from_millis(200), &mut recs).is_empty());
        t.set(&mut recs, 1, 0, 2, t0 + Duration::from_millis(5));
        assert!(Timers::cancel(&mut recs, 2));
        assert!(!Timers::cancel(&mut recs, 2));
        assert!(drain(&mut t, t0 + Duration::from_millis(200), &mut recs).is_empty());
    }

    #[test]
    fn a_gone_connection_never_fires() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut recs = Vec::new();
        t.set(&mut recs, 3, 9, 1, t0);
        assert_eq!(t.pop_due(t0, |_, _| None), Some(Due::Nothing));
        assert_eq!(t.len(), 0);
    }
}

/// The cost of timers for 10,000 connections, printed (not asserted: speed is measured, not
/// tested). `cargo test --release --lib timers::cost -- --ignored --nocapture`; BENCHMARKS.md
/// records the figures. The best of 5 rounds is taken, so other load on the machine inflates
/// the figures less.
#[cfg(test)]
mod cost {
    use super::*;
    use std::time::Duration;

    #[test]
    #[ignore = "a measurement; run by hand"]
    fn ten_thousand_connections_with_a_heartbeat_each() {
        const CONNS: usize = 10_000;
        let best = |f: &mut dyn FnMut() -> u64| -> f64 {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let ops = f();
                    t.elapsed().as_nanos() as f64 / ops as f64
                })
                .fold(f64::MAX, f64::min)
        };
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut records: Vec<Vec<TimerRecord>> = vec![Vec::new(); CONNS];
        let arm = best(&mut || {
            for (i, r) in records.iter_mut().enumerate() {
                timers.set(
                    r,
                    i,
                    0,
                    1,
                    t0 + Duration::from_secs(5) + Duration::from_micros(i as u64),
                );
            }
            CONNS as u64
        });
        // A heartbeat pushed back on every frame: 10 frames per connection.
        let mut k = 0u64;
        let push_back = best(&mut || {
            for round in 0..10u64 {
                k += 1;
                for (i, r) in records.iter_mut().enumerate() {
                    let d =
                        t0 + Duration::from_secs(5 + k + round) + Duration::from_micros(i as u64);
                    timers.set(r, i, 0, 1, d);
                }
            }
            10 * CONNS as u64
        });
        let heap_entries = timers.len();
        // Every timer comes due: pops (each re-queued once at its real deadline, then fires).
        let far = t0 + Duration::from_secs(100_000);
        let mut fired = 0u64;
        let t = Instant::now();
        while let Some(d) = timers.pop_due(far, |token, _| records.get_mut(token)) {
            if matches!(d, Due::Fire { .. }) {
                fired += 1;
            }
        }
        let fire = t.elapsed().as_nanos() as f64 / fired.max(1) as f64;
        let bytes = heap_entries * std::mem::size_of::<(Instant, usize, u64, u64)>()
            + CONNS * std::mem::size_of::<TimerRecord>();
        println!(
            "timers, {CONNS} connections: arm {arm:.0} ns, push back {push_back:.0} ns, \
             fire {fire:.0} ns (incl. one re-queue) per timer; heap entries {heap_entries}, \
             about {} bytes per timer",
            bytes / CONNS
        );
        assert_eq!(fired, CONNS as u64);
        assert_eq!(heap_entries, CONNS, "pushing back grew the heap");
    }
}
