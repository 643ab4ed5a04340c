//! The process-wide memory budget ([`Budget`]): one limit on the sum of what ringport buffers
//! for its peers (write queues and handle writes, held and undecoded input, TLS wire buffers,
//! the worker pool's queued jobs) and what the handlers hold for their clients (RESP replies,
//! chat backlogs, charged through [`Budget::try_charge`]). Depends on nothing else in the crate.
//!
//! The budget's [`Pressure`] (used / limit) drives the engine's overload actions, each at its
//! threshold and each reversed as pressure falls:
//!
//! ```text
//!  used/limit   0 ── 50% ─────────── 70% ─────────── 85% ──────────── 95% ───▶
//!  action          shrink watermarks  pause reading   refuse new       reset the biggest,
//!                  (share per holder) (output waits)  connections      longest holders
//! ```
//!
//! Counting is by difference: each connection remembers what it has charged and moves the
//! shared counter by the change at the end of each loop turn (one atomic add per dirty
//! connection), so the data path takes no lock and no allocation is refused mid-callback.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// How full the budget is, from low to high; each level includes the actions below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Below [`Pressure::Shrink`]'s threshold: no action.
    Normal,
    /// From 50%: per-connection write watermarks shrink to a share of what is left.
    Shrink,
    /// From 70%: connections whose output waits stop reading.
    Pause,
    /// From 85%: new connections are closed at once (close reason `overload`).
    Refuse,
    /// From 95%, or after `REFUSE_LIMIT` at [`Pressure::Refuse`]: the connections holding
    /// the most bytes for the longest are reset (close reason `overload`) until use is back
    /// under `RESET_TARGET_PERMILLE`.
    Reset,
}

impl Pressure {
    fn from_u8(v: u8) -> Pressure {
        match v {
            0 => Pressure::Normal,
            1 => Pressure::Shrink,
            2 => Pressure::Pause,
            3 => Pressure::Refuse,
            _ => Pressure::Reset,
        }
    }

    /// The level of `used` bytes out of `limit`.
    pub fn of(used: usize, limit: usize) -> Pressure {
        let permille = (used as u128 * 1000 / limit.max(1) as u128) as u64;
        match permille {
            950.. => Pressure::Reset,
            850.. => Pressure::Refuse,
            700.. => Pressure::Pause,
            500.. => Pressure::Shrink,
            _ => Pressure::Normal,
        }
    }
}

/// The overload actions, as counted (`ringport_overload_actions_total{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A connection's write watermark was lowered below its server's.
    Shrink = 0,
    /// A connection stopped reading because its output waits under pressure.
    Pause = 1,
    /// A new connection was refused.
    Refuse = 2,
    /// A connection was reset.
    Reset = 3,
}

impl Action {
    /// Every action's name, in discriminant order (the metric's `action` label).
    pub const NAMES: [&'static str; 4] = ["shrink", "pause", "refuse", "reset"];
}

/// How long refusing new connections may last before the resets begin (refusals free
/// nothing: held memory only goes when its peer reads or its connection goes).
pub const REFUSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the resets bring use back to: below the refuse threshold, so that new connections are
/// served again.
pub const RESET_TARGET_PERMILLE: usize = 800;

/// The smallest write watermark a shrink leaves a connection: enough for one receive buffer's
/// reply, so that every connection still makes progress.
pub const MIN_SHARE: usize = 16 << 10;

/// The process-wide memory budget. Cheap to clone (all clones share one counter); get the
/// engine's with [`Engine::budget`](crate::Engine::budget) or
/// [`Conn::budget`](crate::Conn::budget).
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
    /// The most `used` has been (the low-resource tests assert it stays under `limit`).
    peak: AtomicUsize,
    /// Connections charging anything now (the watermark share divides by them).
    holders: AtomicUsize,
    actions: [AtomicU64; 4],
    /// Charges refused by `try_charge`.
    refused_charges: AtomicU64,
    /// The pressure last logged (`Pressure as u8`).
    logged: AtomicU8,
    /// When pressure last reached [`Pressure::Refuse`] (ms since `start`; 0: below it).
    refusing_since_ms: AtomicU64,
    start: std::time::Instant,
}

impl Budget {
    /// A budget of `limit` bytes (at least 1 MiB).
    pub fn new(limit: usize) -> Budget {
        Budget {
            inner: Arc::new(Inner {
                limit: limit.max(1 << 20),
                used: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                holders: AtomicUsize::new(0),
                actions: Default::default(),
                refused_charges: AtomicU64::new(0),
                logged: AtomicU8::new(Pressure::Normal as u8),
                refusing_since_ms: AtomicU64::new(0),
                start: std::time::Instant::now(),
            }),
        }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Relaxed)
    }

    /// The most bytes charged at once since the budget was made.
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Relaxed)
    }

    /// How full the budget is now.
    pub fn pressure(&self) -> Pressure {
        Pressure::of(self.used(), self.inner.limit)
    }

    /// Charges `bytes` unconditionally (what is already allocated). Pair with
    /// [`Budget::release`].
    pub fn charge(&self, bytes: usize) {
        let now = self.inner.used.fetch_add(bytes, Relaxed) + bytes;
        self.inner.peak.fetch_max(now, Relaxed);
    }

    /// Charges `bytes` if that leaves the budget below the [`Pressure::Refuse`] threshold;
    /// `false` (nothing charged, counted) otherwise: the caller should not allocate them
    /// (answer an error, drop the oldest backlog entry, ...). Pair with [`Budget::release`].
    pub fn try_charge(&self, bytes: usize) -> bool {
        let limit = self.inner.limit;
        let ok = self
            .inner
            .used
            .fetch_update(Relaxed, Relaxed, |u| {
                let next = u.checked_add(bytes)?;
                (Pressure::of(next, limit) < Pressure::Refuse).then_some(next)
            })
            .map(|before| self.inner.peak.fetch_max(before + bytes, Relaxed))
            .is_ok();
        if !ok {
            self.inner.refused_charges.fetch_add(1, Relaxed);
        }
        ok
    }

    /// Releases `bytes` charged before.
    pub fn release(&self, bytes: usize) {
        let before = self.inner.used.fetch_sub(bytes, Relaxed);
        debug_assert!(before >= bytes, "released more than was charged");
    }

    /// Moves a holder's charge from `before` to `after` bytes (the engine's per-connection
    /// accounting).
    pub(crate) fn recharge(&self, before: usize, after: usize) {
        if after > before {
            self.charge(after - before);
        } else if before > after {
            self.release(before - after);
        }
        match (before, after) {
            (0, 1..) => {
                self.inner.holders.fetch_add(1, Relaxed);
            }
            (1.., 0) => {
                self.inner.holders.fetch_sub(1, Relaxed);
            }
            _ => {}
        }
    }

    /// A connection's write high watermark under the current pressure: its server's `high`
    /// below [`Pressure::Shrink`], else its share of what the budget has left, divided
    /// among the connections holding data, never below [`MIN_SHARE`].
    pub(crate) fn write_share(&self, high: usize) -> usize {
        let used = self.used();
        let limit = self.inner.limit;
        if Pressure::of(used, limit) < Pressure::Shrink {
            return high;
        }
        // The room left up to the pause threshold, shared by those holding data.
        let room = (limit / 10 * 7).saturating_sub(used);
        let holders = self.inner.holders.load(Relaxed).max(1);
        high.min((room / holders).max(MIN_SHARE))
    }

    /// `Some((before, now))` for the one caller that sees the pressure change to `now`.
    pub(crate) fn observe(&self, now: Pressure) -> Option<(Pressure, Pressure)> {
        let before = self.inner.logged.swap(now as u8, Relaxed);
        (before != now as u8).then(|| (Pressure::from_u8(before), now))
    }

    /// How long the budget has been refusing: since pressure reached [`Pressure::Refuse`],
    /// until use is back under `RESET_TARGET_PERMILLE` (zero outside that). Refusing new
    /// connections frees nothing: if it lasts, the resets begin. The hysteresis matters: use
    /// that swings between 80% and 85% (readers paused at the refuse level resume below it and
    /// fill it again) would otherwise restart the clock at each swing, never reset anyone, and
    /// refuse newcomers on and off for ever.
    pub(crate) fn refusing_for(
        &self,
        now: std::time::Instant,
        pressure: Pressure,
    ) -> std::time::Duration {
        let now_ms = now.saturating_duration_since(self.inner.start).as_millis() as u64 + 1;
        if pressure < Pressure::Refuse {
            let since = self.inner.refusing_since_ms.load(Relaxed);
            let floor = self.inner.limit / 1000 * RESET_TARGET_PERMILLE;
            if since == 0 || self.used() < floor {
                self.inner.refusing_since_ms.store(0, Relaxed);
                return std::time::Duration::ZERO;
            }
            return std::time::Duration::from_millis(now_ms.saturating_sub(since));
        }
        let since = match self
            .inner
            .refusing_since_ms
            .compare_exchange(0, now_ms, Relaxed, Relaxed)
        {
            Ok(_) => now_ms,
            Err(v) => v,
        };
        std::time::Duration::from_millis(now_ms.saturating_sub(since))
    }

    /// Counts one `action`.
    pub(crate) fn count(&self, action: Action) {
        self.inner.actions[action as usize].fetch_add(1, Relaxed);
    }

    /// How many times each action was taken, in [`Action::NAMES`] order.
    pub fn actions(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.inner.actions[i].load(Relaxed))
    }

    /// How many [`Budget::try_charge`] calls were refused.
    pub fn refused_charges(&self) -> u64 {
        self.inner.refused_charges.load(Relaxed)
    }
}

/// Fraction of the memory limit that is the default budget: the rest is for what the budget
/// does not count (the binary and its threads, the connection table, the allocator's slack,
/// the kernel memory charged to the same cgroup: socket and io_uring structures, ~15 MiB
/// for 11,000 connections) and for what one loop turn receives before the budget's
/// decisions take effect. Measured in `tests/low_resources.rs`: at 1/2, io_uring with
/// 9,000 idle connections and 2,000 flooders hit the 128 MiB limit; at 3/8 it peaks at 92 MiB.
pub const DEFAULT_BUDGET_FRACTION: (usize, usize) = (3, 8);

/// The default budget: 3/8 of the memory limit of the process's cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) when there is one, else 3/8 of physical memory (the smaller of
/// the two); 768 MiB when neither can be read.
pub fn default_limit() -> usize {
    let total = cgroup_limit()
        .into_iter()
        .chain(physical_memory())
        .min()
        .unwrap_or(2 << 30);
    total / DEFAULT_BUDGET_FRACTION.1 * DEFAULT_BUDGET_FRACTION.0
}

/// The memory limit of this process's cgroup, read through `/proc/self/cgroup`.
pub fn cgroup_limit() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    cgroup_limit_from(&cgroups, &mounts, &|p| std::fs::read_to_string(p).ok())
}

/// [`cgroup_limit`] over given file contents (`read` reads a path), for the tests.
fn cgroup_limit_from(
    cgroups: &str,
    mountinfo: &str,
    read: &dyn Fn(&str) -> Option<String>,
) -> Option<usize> {
    let mut limits = Vec::new();
    for line in cgroups.lines() {
        // `hierarchy-id:controllers:path`; v2 is `0::path`.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (v2, file) = if controllers.is_empty() {
            (true, "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (false, "memory.limit_in_bytes")
        } else {
            continue;
        };
        for root in mount_points(mountinfo, v2) {
            // The cgroup's own directory, then its ancestors (a container sees its own
            // cgroup as the mount's root, where the path does not exist).
            let mut dir = path.trim_end_matches('/').to_string();
            loop {
                if let Some(v) = read(&format!("{root}{dir}/{file}")) {
                    if let Ok(n) = v.trim().parse::<u64>() {
                        // v1 says "no limit" with a huge page-rounded number.
                        if n < (1 << 60) {
                            limits.push(n as usize);
                        }
                    }
                }
                match dir.rfind('/') {
                    Some(i) => dir.truncate(i),
                    None => break,
                }
            }
        }
    }
    limits.into_iter().min()
}

/// Where the memory controller is mounted (v1), or the unified hierarchy (v2), from
/// `/proc/self/mountinfo`; the usual places when it says nothing.
fn mount_points(mountinfo: &str, v2: bool) -> Vec<String> {
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let options = r.nth(1).unwrap_or("");
            let mount = left.split_whitespace().nth(4)?;
            let fits = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && options.split(',').any(|o| o == "memory")
            };
            fits.then(|| mount.to_string())
        })
        .collect();
    if points.is_empty() {
        points.push(
            if v2 {
                "/sys/fs/cgroup"
            } else {
                "/sys/fs/cgroup/memory"
            }
            .to_string(),
        );
    }
    points
}

/// Physical memory, from `/proc/meminfo`.
fn physical_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_levels_follow_the_thresholds() {
        let l = 1000;
        assert_eq!(Pressure::of(0, l), Pressure::Normal);
        assert_eq!(Pressure::of(499, l), Pressure::Normal);
        assert_eq!(Pressure::of(500, l), Pressure::Shrink);
        assert_eq!(Pressure::of(700, l), Pressure::Pause);
        assert_eq!(Pressure::of(850, l), Pressure::Refuse);
        assert_eq!(Pressure::of(950, l), Pressure::Reset);
        assert_eq!(Pressure::of(5000, l), Pressure::Reset);
    }

    #[test]
    fn try_charge_stops_below_the_refuse_threshold_and_release_gives_back() {
        let b = Budget::new(10 << 20);
        assert!(b.try_charge(8 << 20));
        assert!(!b.try_charge(1 << 20), "would pass 85%");
        assert_eq!(b.refused_charges(), 1);
        b.release(8 << 20);
        assert_eq!(b.used(), 0);
        assert!(b.try_charge(1 << 20));
    }

    #[test]
    fn refusing_lasts_from_the_refuse_level_until_back_under_the_reset_target() {
        use std::time::{Duration, Instant};
        let b = Budget::new(1000 << 20);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        b.charge(860 << 20);
        assert_eq!(b.refusing_for(at(0), b.pressure()), Duration::ZERO);
        // Swings between 80% and 85% keep the clock running...
        b.release(30 << 20);
        assert_eq!(b.pressure(), Pressure::Pause);
        assert_eq!(
            b.refusing_for(at(600), b.pressure()),
            Duration::from_millis(600)
        );
        b.charge(30 << 20);
        assert_eq!(
            b.refusing_for(at(1200), b.pressure()),
            Duration::from_millis(1200)
        );
        // ...and falling under 80% stops it; below the refuse level it does not start.
        b.release(100 << 20);
        assert_eq!(b.refusing_for(at(1300), b.pressure()), Duration::ZERO);
        b.charge(60 << 20);
        assert_eq!(b.refusing_for(at(1400), b.pressure()), Duration::ZERO);
        assert_eq!(b.peak(), 860 << 20);
    }

    #[test]
    fn the_write_share_shrinks_as_holders_and_use_grow() {
        let b = Budget::new(100 << 20);
        assert_eq!(b.write_share(1 << 20), 1 << 20, "no pressure: the server's");
        for _ in 0..60 {
            b.recharge(0, 1 << 20);
        }
        let share = b.write_share(1 << 20);
        assert!((MIN_SHARE..1 << 20).contains(&share), "{share}");
        for _ in 0..10 {
            b.recharge(0, 1 << 20);
        }
        assert_eq!(
            b.write_share(1 << 20),
            MIN_SHARE,
            "no room left: the minimum"
        );
        b.recharge(1 << 20, 0);
        assert_eq!(b.used(), 69 << 20);
    }

    #[test]
    fn cgroup_v1_and_v2_limits_are_read_from_the_process_cgroup() {
        let mounts = "30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      31 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let v1 = "4:memory:/a/b\n0::/c\n";
        let files = |p: &str| match p {
            "/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes" => Some("67108864\n".into()),
            "/sys/fs/cgroup/memory/a/memory.limit_in_bytes" => Some("9223372036854771712".into()),
            "/sys/fs/cgroup/unified/c/memory.max" => Some("max\n".into()),
            _ => None,
        };
        assert_eq!(cgroup_limit_from(v1, mounts, &files), Some(64 << 20));
        let v2 = "0::/svc\n";
        let files2 =
            |p: &str| (p == "/sys/fs/cgroup/unified/svc/memory.max").then(|| "134217728".into());
        assert_eq!(cgroup_limit_from(v2, mounts, &files2), Some(128 << 20));
        assert_eq!(cgroup_limit_from("0::/\n", "", &|_| None), None);
    }
}
