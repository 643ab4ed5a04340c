//! Prometheus metrics: every counter of the engine, encoded in the Prometheus text format by
//! `prometheus-client` at each scrape (a [`Collector`] reading the live counters; nothing is
//! copied on the data path), and served by the engine itself on a server of its own
//! ([`Engine::serve_metrics`](crate::Engine::serve_metrics), `http.rs`).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `ringport_connections_accepted_total` | server | connections accepted |
//! | `ringport_connections_rejected_total` | server, cause | closed at once by a limit |
//! | `ringport_accept_errors_total` | server | failed accept calls |
//! | `ringport_connections_active` | server | open now |
//! | `ringport_connections_closed_total` | server, reason | closed, by reason |
//! | `ringport_received_bytes_total`, `ringport_sent_bytes_total` | server | bytes |
//! | `ringport_frames_received_total` | server | frames handed to handlers |
//! | `ringport_decode_errors_total` | server | input the decoder refused |
//! | `ringport_bad_frames_total` | server | bad frames skipped and answered, the connection going on |
//! | `ringport_backpressure_pauses_total` | server | reads paused by a full write queue |
//! | `ringport_layer_handshakes_total` | server | connections whose layers became ready (TLS) |
//! | `ringport_proxy_headers_total` | server, outcome | PROXY headers: `v1`, `v2`, `local`, `none`, `refused` |
//! | `ringport_memory_budget_bytes`, `ringport_memory_used_bytes`, `ringport_memory_used_peak_bytes` | | the memory budget, what is charged to it now and at most |
//! | `ringport_overload_actions_total` | action | overload actions: `shrink`, `pause`, `refuse`, `reset` |
//! | `ringport_io_loop_turns_total` | thread | IO loop turns |
//! | `ringport_io_completions_total` | thread | completions handled |
//! | `ringport_io_busy_seconds_total` | thread | time working between waits (handlers included) |
//! | `ringport_io_inbox_messages` | thread | messages from other threads waiting (handle writes, closes, work done) |
//! | `ringport_metrics_requests_total` | outcome | this endpoint's requests: `answered`, `deadline` (not complete in time), `evicted` (reset to admit a newer one) |
//! | `ringport_metrics_pending_requests` | | this endpoint's connections still sending their request |
//! | `ringport_pool_queued_jobs`, `ringport_pool_busy_workers`, `ringport_pool_workers` | pool | worker pools |
//! | `ringport_pool_cancelled_jobs_total` | pool | jobs skipped: their connection was gone before they started |

mod gate;
mod http;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::budget::{Action, Budget};
use crate::info::CloseReason;
use crate::pool::WorkerPool;
use crate::stats::{LoopStats, ServerStats};

pub use gate::{MAX_PENDING, MAX_PENDING_PER_IP, REQUEST_DEADLINE};
pub(crate) use http::MetricsHttp;

type InboxDepths = Box<dyn Fn() -> Vec<usize> + Send + Sync>;

/// The engine's metrics: its servers, IO threads and any worker pools added. Cheap to clone;
/// [`Metrics::render`] encodes them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Mutex<Vec<(String, Arc<ServerStats>)>>,
    loops: Arc<[LoopStats]>,
    inboxes: OnceLock<InboxDepths>,
    budget: Budget,
    pools: Mutex<Vec<(String, WorkerPool)>>,
    /// The metrics server's own admission (slow clients).
    gate: gate::Gate,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(io_threads: usize, budget: Budget) -> Metrics {
        Metrics {
            inner: Arc::new(Inner {
                servers: Mutex::new(Vec::new()),
                loops: (0..io_threads).map(|_| LoopStats::default()).collect(),
                inboxes: OnceLock::new(),
                budget,
                pools: Mutex::new(Vec::new()),
                gate: gate::Gate::default(),
            }),
        }
    }

    pub(crate) fn loops(&self) -> Arc<[LoopStats]> {
        self.inner.loops.clone()
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.inner.budget
    }

    pub(crate) fn add_server(&self, label: String, stats: Arc<ServerStats>) {
        lock(&self.inner.servers).push((label, stats));
    }

    pub(crate) fn set_inbox_depths(&self, f: InboxDepths) {
        let _ = self.inner.inboxes.set(f);
    }

    /// Reports `pool`'s queue depth and busy workers under the label `pool="{name}"`.
    pub fn add_pool(&self, name: &str, pool: &WorkerPool) {
        lock(&self.inner.pools).push((name.to_string(), pool.clone()));
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collect(self.clone())));
        let mut out = String::with_capacity(8 << 10);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Collect(Metrics);

type Labels = Vec<(&'static str, String)>;

/// One metric family: its rows of labels and values.
fn family<V: Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(Labels, V)],
    put: impl Fn(&mut prometheus_client::encoding::MetricEncoder, V) -> std::fmt::Result,
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let mut row = m.encode_family(labels)?;
        put(&mut row, *v)?;
    }
    Ok(())
}

fn counter_rows(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Counter, rows, |m, v| {
        m.encode_counter::<NoLabelSet, u64, u64>(&v, None::<&Exemplar<NoLabelSet, u64>>)
    })
}

fn gauge_rows(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Gauge, rows, |m, v| {
        m.encode_gauge(&v)
    })
}

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let inner = &self.0.inner;
        let servers: Vec<(String, crate::StatsSnapshot)> = lock(&inner.servers)
            .iter()
            .map(|(l, s)| (l.clone(), s.snapshot()))
            .collect();
        let per_server = |f: &dyn Fn(&crate::StatsSnapshot) -> u64| -> Vec<(Labels, u64)> {
            servers
                .iter()
                .map(|(l, s)| (vec![("server", l.clone())], f(s)))
                .collect()
        };
        let e = &mut enc;
        counter_rows(
            e,
            "ringport_connections_accepted",
            "Connections accepted (including those then rejected by a limit).",
            &per_server(&|s| s.accepted),
        )?;
        let mut rejected = Vec::new();
        for (l, s) in &servers {
            for (cause, v) in [
                ("max-connections", s.rejected),
                ("per-ip-connections", s.rejected_per_ip),
                ("per-ip-rate", s.rejected_rate),
            ] {
                rejected.push((vec![("server", l.clone()), ("cause", cause.into())], v));
            }
        }
        counter_rows(
            e,
            "ringport_connections_rejected",
            "Connections accepted and closed at once by a limit, by cause.",
            &rejected,
        )?;
        counter_rows(
            e,
            "ringport_accept_errors",
            "Failed accept calls (EMFILE, ENFILE, ...), each followed by a back-off.",
            &per_server(&|s| s.accept_errors),
        )?;
        gauge_rows(
            e,
            "ringport_connections_active",
            "Connections open now.",
            &per_server(&|s| s.active),
        )?;
        let mut closed = Vec::new();
        for (l, s) in &servers {
            for reason in CloseReason::NAMES {
                let v = s.closed.get(reason).copied().unwrap_or(0);
                closed.push((vec![("server", l.clone()), ("reason", reason.into())], v));
            }
        }
        counter_rows(
            e,
            "ringport_connections_closed",
            "Connections closed, by reason.",
            &closed,
        )?;
        counter_rows(
            e,
            "ringport_received_bytes",
            "Bytes received.",
            &per_server(&|s| s.bytes_in),
        )?;
        counter_rows(
            e,
            "ringport_sent_bytes",
            "Bytes sent.",
            &per_server(&|s| s.bytes_out),
        )?;
        counter_rows(
            e,
            "ringport_frames_received",
            "Frames decoded and handed to the handler.",
            &per_server(&|s| s.frames_in),
        )?;
        counter_rows(
            e,
            "ringport_decode_errors",
            "Connections whose input the decoder refused.",
            &per_server(&|s| s.decode_errors),
        )?;
        counter_rows(
            e,
            "ringport_bad_frames",
            "Bad frames a typed decoder skipped and answered, the connection going on.",
            &per_server(&|s| s.bad_frames),
        )?;
        counter_rows(
            e,
            "ringport_backpressure_pauses",
            "Times a connection stopped reading because its write queue passed the high watermark.",
            &per_server(&|s| s.backpressure_pauses),
        )?;

        counter_rows(
            e,
            "ringport_layer_handshakes",
            "Connections whose layers became ready (TLS handshakes completed).",
            &per_server(&|s| s.handshakes),
        )?;
        let mut proxy = Vec::new();
        for (l, s) in &servers {
            let p = s.proxy_headers;
            for (outcome, v) in [
                ("v1", p.v1),
                ("v2", p.v2),
                ("local", p.local),
                ("none", p.none),
                ("refused", p.refused),
            ] {
                proxy.push((vec![("server", l.clone()), ("outcome", outcome.into())], v));
            }
        }
        counter_rows(
            e,
            "ringport_proxy_headers",
            "How connections began on servers reading the PROXY protocol: v1 or v2 header with a client address, local (a header without one: LOCAL, UNKNOWN), none (Optional mode, no header), refused (closed for the header).",
            &proxy,
        )?;

        let budget = &inner.budget;
        gauge_rows(
            e,
            "ringport_memory_budget_bytes",
            "The process-wide memory budget for what ringport buffers for peers.",
            &[(Vec::new(), budget.limit() as u64)],
        )?;
        gauge_rows(
            e,
            "ringport_memory_used_bytes",
            "Bytes charged to the memory budget now.",
            &[(Vec::new(), budget.used() as u64)],
        )?;
        gauge_rows(
            e,
            "ringport_memory_used_peak_bytes",
            "The most bytes charged to the memory budget at once since the start.",
            &[(Vec::new(), budget.peak() as u64)],
        )?;
        let actions: Vec<(Labels, u64)> = Action::NAMES
            .iter()
            .zip(budget.actions())
            .map(|(a, v)| (vec![("action", a.to_string())], v))
            .collect();
        counter_rows(
            e,
            "ringport_overload_actions",
            "Overload actions taken as the memory budget filled: shrink (a write watermark lowered), pause (reading stopped while output waits), refuse (a new connection closed), reset (a connection holding the most bytes reset).",
            &actions,
        )?;

        let loops: Vec<_> = inner.loops.iter().map(LoopStats::snapshot).collect();
        let per_thread = |f: &dyn Fn(&crate::stats::LoopSnapshot) -> u64| -> Vec<(Labels, u64)> {
            loops
                .iter()
                .enumerate()
                .map(|(i, s)| (vec![("thread", i.to_string())], f(s)))
                .collect()
        };
        counter_rows(
            e,
            "ringport_io_loop_turns",
            "IO loop turns (one wait for completions each).",
            &per_thread(&|s| s.turns),
        )?;
        counter_rows(
            e,
            "ringport_io_completions",
            "Completions handled by the IO thread (divide by loop turns for completions per turn).",
            &per_thread(&|s| s.completions),
        )?;
        let busy: Vec<(Labels, f64)> = loops
            .iter()
            .enumerate()
            .map(|(i, s)| (vec![("thread", i.to_string())], s.busy_nanos as f64 / 1e9))
            .collect();
        family(
            e,
            "ringport_io_busy_seconds",
            "Seconds the IO thread spent working between waits: handler callbacks, decoding, inbox, timers, flushing.",
            MetricType::Counter,
            &busy,
            |m, v| m.encode_counter::<NoLabelSet, f64, f64>(&v, None::<&Exemplar<NoLabelSet, f64>>),
        )?;
        // Until the engine has started (a scrape can race its last step), none are waiting.
        let depths = match inner.inboxes.get() {
            Some(depths) => depths(),
            None => vec![0; loops.len()],
        };
        let rows: Vec<(Labels, u64)> = depths
            .into_iter()
            .enumerate()
            .map(|(i, d)| (vec![("thread", i.to_string())], d as u64))
            .collect();
        gauge_rows(
            e,
            "ringport_io_inbox_messages",
            "Messages from other threads (handle writes and closes, finished work) waiting for the IO thread.",
            &rows,
        )?;

        let g = &inner.gate.counts;
        let outcomes: Vec<(Labels, u64)> = [
            ("answered", &g.answered),
            ("deadline", &g.deadline),
            ("evicted", &g.evicted),
        ]
        .into_iter()
        .map(|(o, v)| (vec![("outcome", o.to_string())], v.load(Relaxed)))
        .collect();
        counter_rows(
            e,
            "ringport_metrics_requests",
            "Requests to this metrics endpoint, by outcome: answered, deadline (not complete in time), evicted (reset to admit a newer connection).",
            &outcomes,
        )?;
        gauge_rows(
            e,
            "ringport_metrics_pending_requests",
            "Connections to this metrics endpoint still sending their request.",
            &[(Vec::new(), inner.gate.pending() as u64)],
        )?;

        // (name, queued, busy, workers)
        type PoolRow = (String, usize, usize, usize);
        let pools: Vec<PoolRow> = lock(&inner.pools)
            .iter()
            .map(|(n, p)| (n.clone(), p.queued(), p.busy(), p.workers()))
            .collect();
        let per_pool = |f: &dyn Fn(&PoolRow) -> usize| -> Vec<(Labels, u64)> {
            pools
                .iter()
                .map(|p| (vec![("pool", p.0.clone())], f(p) as u64))
                .collect()
        };
        gauge_rows(
            e,
            "ringport_pool_queued_jobs",
            "Jobs waiting in the worker pool's queue.",
            &per_pool(&|p| p.1),
        )?;
        gauge_rows(
            e,
            "ringport_pool_busy_workers",
            "Workers running a job now.",
            &per_pool(&|p| p.2),
        )?;
        gauge_rows(
            e,
            "ringport_pool_workers",
            "Worker threads in the pool.",
            &per_pool(&|p| p.3),
        )?;
        let cancelled: Vec<(Labels, u64)> = lock(&inner.pools)
            .iter()
            .map(|(n, p)| (vec![("pool", n.clone())], p.cancelled()))
            .collect();
        counter_rows(
            e,
            "ringport_pool_cancelled_jobs",
            "Jobs skipped because their connection was gone (reset, aborted) before they started.",
            &cancelled,
        )?;
        Ok(())
    }
}
