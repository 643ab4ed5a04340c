//! Experiment switches of the io_uring backend, each read once per process from the
//! environment so that variants can be measured interleaved without rebuilding
//! (`bench/compare.sh` names them `ringport-uring~setup=coop,recv=single,cq=2`; results and
//! the experiment log are in BENCHMARKS.md). An unknown value is logged and the default kept.
//! The defaults are the configuration measured best; see ARCHITECTURE.md.
//!
//! - `RINGPORT_URING_SETUP=defer|coop|single|plain` (default `defer`): ring setup flags;
//! - `RINGPORT_URING_RECV=multishot|single|own` (default `multishot`): one multishot recv per
//!   connection, or a single-shot recv re-armed after each completion; both take their
//!   buffer from the provided-buffer ring. `own`: a single-shot recv into a buffer of the
//!   same size that the backend lends the connection only while a receive is armed (no
//!   provided buffers, as monoio reads; `ownbuf.rs`);
//! - `RINGPORT_URING_CQ=N` (1 to 64, default 4): completion queue entries per submission
//!   queue entry;
//! - `RINGPORT_URING_RINGFD=on|off` (default `off`): register the ring's own descriptor
//!   (`IORING_REGISTER_RING_FDS`, 5.18) and enter the ring by its index, sparing the kernel a
//!   descriptor lookup per `io_uring_enter`;
//! - `RINGPORT_URING_FIXED=on|off` (default `off`): put every accepted socket into the ring's
//!   file table as well (a direct descriptor, slot = token) and address recv, send and poll by
//!   slot, sparing a file reference per operation; the regular descriptor stays for socket
//!   options, `shutdown` and `SIOCOUTQ`;
//! - `RINGPORT_URING_WAIT=one|noiowait|min:N:USEC|adapt:N:USEC` (default `adapt:8:50`): the
//!   wait of each loop turn.
//!   `one` waits for one completion; `noiowait` does the same without iowait accounting
//!   (`IORING_ENTER_NO_IOWAIT`, 6.15); `min:N:USEC` waits for N completions but returns after
//!   USEC microseconds with fewer (`min_wait_usec`, 6.12), batching completions; with no timer
//!   due it also wakes every USEC while idle (an idle echo_server used about 30 % of a core);
//!   `adapt:N:USEC` waits as `min:N:USEC` only after a loop turn that reaped at least N
//!   completions, else as `one`, so that a lightly loaded ring (one connection, a reply per
//!   wake-up) never waits for company that is not coming. Without the kernel's
//!   `IORING_FEAT_MIN_TIMEOUT` both fall back to `one`;
//! - `RINGPORT_URING_BALANCE=on|off` (default `off`): spread accepted connections over the IO
//!   threads round robin. Each IO thread has its own SO_REUSEPORT listener and the kernel picks
//!   one per connection by a hash of the addresses, which can leave one thread with many more
//!   connections than another (37 against 13 of 50 was seen); with the switch on, each thread
//!   hands what it accepts to the IO threads in turn, as the IOCP backend always does
//!   (`Backend::accepts_for_all`), at the cost of one inbox message per connection;
//! - `RINGPORT_URING_INC=on|off` (default `off`): register the provided-buffer ring for
//!   incremental consumption (`IOU_PBUF_RING_INC`, 6.12; whole buffers on older kernels), so
//!   that small receives share a buffer instead of each touching a fresh one: RSS per idle
//!   connection at 10k 508 B instead of about 900, but 500 blocking connections measured
//!   0.86x msg/s in 6 of 6 rounds against it off (issue 21), so off by default (the 512 B
//!   target is met without it by `RINGPORT_URING_TRIM`);
//! - `RINGPORT_URING_TRIM=MS|off` (default `100`, 1 to 60000): once the provided-buffer ring
//!   has received nothing for MS milliseconds, its buffers' pages go back to the kernel
//!   (`MADV_DONTNEED`; `bufring::Trim`). Only on rings with DEFER_TASKRUN (the default setup),
//!   where the kernel writes into the buffers only inside this thread's `io_uring_enter`.

use std::sync::OnceLock;
use std::time::Duration;

/// Ring setup flags (`RINGPORT_URING_SETUP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Setup {
    /// SINGLE_ISSUER|DEFER_TASKRUN (6.1), else COOP_TASKRUN (5.19), else none. The default.
    Defer,
    /// COOP_TASKRUN|TASKRUN_FLAG (5.19), else none.
    Coop,
    /// SINGLE_ISSUER alone (6.0), else none.
    Single,
    /// No setup flags (as monoio).
    Plain,
}

/// The wait of each loop turn (`RINGPORT_URING_WAIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// Wait for one completion.
    One,
    /// Wait for one completion, not accounted as iowait.
    NoIowait,
    /// Wait for `want` completions, at most `usec` microseconds once the first has arrived.
    Min { want: u32, usec: u32 },
    /// As `Min` after a turn that reaped at least `want` completions, else as `One`. The
    /// default is `adapt:8:50` (BENCHMARKS.md, issue 13, log row 13).
    Adapt { want: u32, usec: u32 },
}

/// How a connection receives (`RINGPORT_URING_RECV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recv {
    /// One multishot recv from the provided-buffer ring. The default.
    Multishot,
    /// A single-shot recv from the provided-buffer ring, re-armed after each completion.
    Single,
    /// A single-shot recv into a buffer lent to the connection while it is armed.
    Own,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tuning {
    pub setup: Setup,
    pub recv: Recv,
    pub cq_factor: u32,
    pub ring_fd: bool,
    pub fixed_files: bool,
    pub wait: Wait,
    pub balance: bool,
    pub incremental: bool,
    /// Release the ring's pages after this long without a receive (`None`: never).
    pub trim: Option<Duration>,
}

/// `RINGPORT_URING_TRIM`'s default.
pub(super) const TRIM_AFTER: Duration = Duration::from_millis(100);

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            setup: Setup::Defer,
            recv: Recv::Multishot,
            cq_factor: 4,
            ring_fd: false,
            fixed_files: false,
            wait: Wait::Adapt { want: 8, usec: 50 },
            balance: false,
            incremental: false,
            trim: Some(TRIM_AFTER),
        }
    }
}

fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

fn parse_wait(v: &str) -> Option<Wait> {
    match v {
        "one" => Some(Wait::One),
        "noiowait" => Some(Wait::NoIowait),
        _ => {
            let (adapt, rest) = match v.strip_prefix("min:") {
                Some(rest) => (false, rest),
                None => (true, v.strip_prefix("adapt:")?),
            };
            let mut parts = rest.split(':');
            let want = parts.next()?.parse::<u32>().ok()?;
            let usec = parts.next()?.parse::<u32>().ok()?;
            let ok = parts.next().is_none()
                && (1..=1024).contains(&want)
                && (1..=100_000).contains(&usec);
            ok.then_some(if adapt {
                Wait::Adapt { want, usec }
            } else {
                Wait::Min { want, usec }
            })
        }
    }
}

/// Reads the switches through `var` (the environment, or a test's map); returns them with
/// the names of the variables whose values were not understood.
pub(super) fn parse(var: impl Fn(&str) -> Option<String>) -> (Tuning, Vec<&'static str>) {
    let mut t = Tuning::default();
    let mut bad = Vec::new();
    let get = |name: &str| var(name).filter(|v| !v.is_empty());
    match get("RINGPORT_URING_SETUP").as_deref() {
        None | Some("defer") => {}
        Some("coop") => t.setup = Setup::Coop,
        Some("single") => t.setup = Setup::Single,
        Some("plain") => t.setup = Setup::Plain,
        Some(_) => bad.push("RINGPORT_URING_SETUP"),
    }
    match get("RINGPORT_URING_RECV").as_deref() {
        None | Some("multishot") => {}
        Some("single") => t.recv = Recv::Single,
        Some("own") => t.recv = Recv::Own,
        Some(_) => bad.push("RINGPORT_URING_RECV"),
    }
    if let Some(v) = get("RINGPORT_URING_CQ") {
        match v.parse::<u32>() {
            Ok(n) if (1..=64).contains(&n) => t.cq_factor = n,
            _ => bad.push("RINGPORT_URING_CQ"),
        }
    }
    for (name, field) in [
        ("RINGPORT_URING_RINGFD", &mut t.ring_fd),
        ("RINGPORT_URING_FIXED", &mut t.fixed_files),
        ("RINGPORT_URING_BALANCE", &mut t.balance),
        ("RINGPORT_URING_INC", &mut t.incremental),
    ] {
        if let Some(v) = get(name) {
            match on_off(&v) {
                Some(on) => *field = on,
                None => bad.push(name),
            }
        }
    }
    if let Some(v) = get("RINGPORT_URING_WAIT") {
        match parse_wait(&v) {
            Some(w) => t.wait = w,
            None => bad.push("RINGPORT_URING_WAIT"),
        }
    }
    match get("RINGPORT_URING_TRIM").as_deref() {
        None => {}
        Some("off") => t.trim = None,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if (1..=60_000).contains(&ms) => t.trim = Some(Duration::from_millis(ms)),
            _ => bad.push("RINGPORT_URING_TRIM"),
        },
    }
    (t, bad)
}

/// The switches of this process (read from the environment on first use).
pub(super) fn tuning() -> Tuning {
    static TUNING: OnceLock<Tuning> = OnceLock::new();
    *TUNING.get_or_init(|| {
        let (t, bad) = parse(|name| std::env::var(name).ok());
        for name in bad {
            tracing::warn!("{name} not understood; its default is kept");
        }
        if t != Tuning::default() {
            tracing::info!(?t, "io_uring experiment switches");
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_map(pairs: &[(&str, &str)]) -> (Tuning, Vec<&'static str>) {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn unset_or_empty_is_the_default() {
        assert_eq!(parse_map(&[]), (Tuning::default(), vec![]));
        assert_eq!(
            parse_map(&[("RINGPORT_URING_SETUP", ""), ("RINGPORT_URING_CQ", "")]),
            (Tuning::default(), vec![])
        );
    }

    #[test]
    fn each_switch_is_read() {
        let (t, bad) = parse_map(&[
            ("RINGPORT_URING_SETUP", "coop"),
            ("RINGPORT_URING_RECV", "single"),
            ("RINGPORT_URING_CQ", "2"),
            ("RINGPORT_URING_RINGFD", "on"),
            ("RINGPORT_URING_FIXED", "on"),
            ("RINGPORT_URING_WAIT", "min:8:50"),
            ("RINGPORT_URING_BALANCE", "on"),
            ("RINGPORT_URING_INC", "on"),
            ("RINGPORT_URING_TRIM", "250"),
        ]);
        assert!(bad.is_empty());
        assert_eq!(
            t,
            Tuning {
                setup: Setup::Coop,
                recv: Recv::Single,
                cq_factor: 2,
                ring_fd: true,
                fixed_files: true,
                wait: Wait::Min { want: 8, usec: 50 },
                balance: true,
                incremental: true,
                trim: Some(Duration::from_millis(250)),
            }
        );
        assert_eq!(parse_map(&[("RINGPORT_URING_TRIM", "off")]).0.trim, None);
        assert_eq!(
            parse_map(&[("RINGPORT_URING_WAIT", "noiowait")]).0.wait,
            Wait::NoIowait
        );
        assert_eq!(
            parse_map(&[("RINGPORT_URING_WAIT", "adapt:16:40")]).0.wait,
            Wait::Adapt { want: 16, usec: 40 }
        );
        assert!(!parse_map(&[("RINGPORT_URING_FIXED", "off")]).0.fixed_files);
        assert_eq!(
            parse_map(&[("RINGPORT_URING_RECV", "own")]).0.recv,
            Recv::Own
        );
        for (v, setup) in [
            ("defer", Setup::Defer),
            ("single", Setup::Single),
            ("plain", Setup::Plain),
        ] {
            assert_eq!(parse_map(&[("RINGPORT_URING_SETUP", v)]).0.setup, setup);
        }
    }

    #[test]
    fn unknown_values_keep_the_default_and_are_named() {
        let (t, bad) = parse_map(&[
            ("RINGPORT_URING_SETUP", "sqpoll"),
            ("RINGPORT_URING_RECV", "bundle"),
            ("RINGPORT_URING_CQ", "0"),
            ("RINGPORT_URING_RINGFD", "yes"),
            ("RINGPORT_URING_WAIT", "min:8"),
            ("RINGPORT_URING_BALANCE", "1"),
            ("RINGPORT_URING_TRIM", "0"),
        ]);
        assert_eq!(t, Tuning::default());
        assert_eq!(
            bad,
            vec![
                "RINGPORT_URING_SETUP",
                "RINGPORT_URING_RECV",
                "RINGPORT_URING_CQ",
                "RINGPORT_URING_RINGFD",
                "RINGPORT_URING_BALANCE",
                "RINGPORT_URING_WAIT",
                "RINGPORT_URING_TRIM"
            ]
        );
        for v in ["60001", "-1", "1.5", "on"] {
            assert_eq!(
                parse_map(&[("RINGPORT_URING_TRIM", v)]).1,
                vec!["RINGPORT_URING_TRIM"],
                "{v}"
            );
        }
        for v in [
            "min:0:50",
            "min:8:0",
            "min:8:50:1",
            "min:x:50",
            "two",
            "adapt:8",
            "adapt:0:50",
            "adapt:8:50:1",
        ] {
            assert_eq!(
                parse_map(&[("RINGPORT_URING_WAIT", v)]).1,
                vec!["RINGPORT_URING_WAIT"],
                "{v}"
            );
        }
        assert_eq!(
            parse_map(&[("RINGPORT_URING_CQ", "65")]).1,
            vec!["RINGPORT_URING_CQ"]
        );
    }
}
