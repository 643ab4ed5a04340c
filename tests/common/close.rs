//! Helpers for the close-path tests (`close_paths.rs`, `echo_model.rs`): the counters a server
//! logs when it stops.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{assert_clean_exit, Server};

/// A server's counters, as its `stopped ... stats=StatsSnapshot { .. }` log line prints them:
/// the plain counters by field name and the close counts by reason name.
#[derive(Debug, Default, Clone)]
pub struct StoppedStats {
    pub fields: BTreeMap<String, u64>,
    pub closed: BTreeMap<String, u64>,
}

impl StoppedStats {
    /// A plain counter (`accepted`, `rejected`, `decode_errors`, ...); panics if absent.
    pub fn get(&self, field: &str) -> u64 {
        *self
            .fields
            .get(field)
            .unwrap_or_else(|| panic!("no counter {field:?} in {self:?}"))
    }

    /// Connections closed for the reason named `name` (`peer-closed`, `flush-stalled`, ...);
    /// panics if the name is not one the server reports.
    pub fn closed(&self, name: &str) -> u64 {
        *self
            .closed
            .get(name)
            .unwrap_or_else(|| panic!("no close reason {name:?} in {self:?}"))
    }

    /// Every close, all reasons together.
    pub fn closed_total(&self) -> u64 {
        self.closed.values().sum()
    }

    /// Parses the `stats=` part of a `stopped` log line.
    pub fn parse(line: &str) -> Option<StoppedStats> {
        let body = &line[line.find("StatsSnapshot {")? + "StatsSnapshot {".len()..];
        let (plain, closed) = match body.split_once("closed: {") {
            Some((p, c)) => (p, c.split('}').next().unwrap_or("")),
            None => (body, ""),
        };
        let pairs = |s: &str| -> BTreeMap<String, u64> {
            s.split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once(':')?;
                    let k = k.trim().trim_matches('"');
                    let v = v.trim().trim_end_matches('}').trim().parse().ok()?;
                    Some((k.to_string(), v))
                })
                .collect()
        };
        let stats = StoppedStats {
            fields: pairs(plain),
            closed: pairs(closed),
        };
        (!stats.closed.is_empty()).then_some(stats)
    }
}

/// Stops `s` with SIGTERM (a graceful drain), checks it exits 0 within `timeout`, and returns
/// the counters of its (only) server from the `stopped` log line.
pub fn stop_and_stats(s: &mut Server, timeout: Duration) -> StoppedStats {
    s.signal(libc::SIGTERM);
    let st = s
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("no exit within {timeout:?} of SIGTERM"));
    assert_clean_exit(st, libc::SIGTERM, "stopping the server");
    let found = s.wait_for_stderr(Duration::from_secs(5), |t| {
        t.lines()
            .any(|l| l.contains("stopped") && l.contains("stats="))
    });
    assert!(found, "no `stopped ... stats=` line on stderr");
    let text = s.stderr_text();
    let line = text
        .lines()
        .find(|l| l.contains("stopped") && l.contains("stats="))
        .expect("stopped line");
    StoppedStats::parse(line).unwrap_or_else(|| panic!("unparsable stats line: {line}"))
}
