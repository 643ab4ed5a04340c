//! Experiment switches of the io_uring backend, each read once per process from the
//! environment so that variants can be measured interleaved without rebuilding
//! (`bench/compare.sh` names them `ringport-uring~setup=coop,recv=single,cq=2`; results and
//! the experiment log are in BENCHMARKS.md). An unknown value is logged and the default kept.
//! The defaults are the configuration measured best; see ARCHITECTURE.md.
//!
//! - `RINGPORT_URING_SETUP=defer|coop|single|plain` (default `defer`): ring setup flags;
//! - `RINGPORT_URING_RECV=multishot|single` (default `multishot`): one multishot recv per
//!   connection, or a single-shot recv re-armed after each completion; both take their
//!   buffer from the provided-buffer ring;
//! - `RINGPORT_URING_CQ=N` (1 to 64, default 4): completion queue entries per submission
//!   queue entry.

use std::sync::OnceLock;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tuning {
    pub setup: Setup,
    pub multishot_recv: bool,
    pub cq_factor: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            setup: Setup::Defer,
            multishot_recv: true,
            cq_factor: 4,
        }
    }
}

/// Reads the switches through `var` (the environment, or a test's map); returns them with
/// the names of the variables whose values were not understood.
fn parse(var: impl Fn(&str) -> Option<String>) -> (Tuning, Vec<&'static str>) {
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
        Some("single") => t.multishot_recv = false,
        Some(_) => bad.push("RINGPORT_URING_RECV"),
    }
    if let Some(v) = get("RINGPORT_URING_CQ") {
        match v.parse::<u32>() {
            Ok(n) if (1..=64).contains(&n) => t.cq_factor = n,
            _ => bad.push("RINGPORT_URING_CQ"),
        }
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
        ]);
        assert!(bad.is_empty());
        assert_eq!(
            t,
            Tuning {
                setup: Setup::Coop,
                multishot_recv: false,
                cq_factor: 2
            }
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
        ]);
        assert_eq!(t, Tuning::default());
        assert_eq!(
            bad,
            vec![
                "RINGPORT_URING_SETUP",
                "RINGPORT_URING_RECV",
                "RINGPORT_URING_CQ"
            ]
        );
        assert_eq!(
            parse_map(&[("RINGPORT_URING_CQ", "65")]).1,
            vec!["RINGPORT_URING_CQ"]
        );
    }
}
