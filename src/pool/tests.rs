use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::queue::Queue;
use super::*;
use crate::budget::Budget;

#[test]
fn a_budgeted_buffer_pool_charges_what_it_allocates_and_stops_at_the_refuse_level() {
    let budget = Budget::new(1 << 20);
    let pool = BufferPool::new(8, 256 << 10).with_budget(budget.clone());
    let a = pool.try_get().expect("first buffer");
    let b = pool.try_get().expect("second buffer");
    let c = pool.try_get().expect("third buffer (75%)");
    assert_eq!(budget.used(), 768 << 10);
    assert!(pool.try_get().is_none(), "a fourth would pass 85%");
    assert_eq!(pool.in_use(), 3, "the refused one is not counted out");
    drop(c);
    assert_eq!(budget.used(), 768 << 10, "a free buffer stays charged");
    let c = pool.try_get().expect("the free one comes back");
    assert_eq!(budget.used(), 768 << 10, "reused: no new charge");
    drop((a, b, c));
    drop(pool);
    assert_eq!(budget.used(), 0, "the pool's free buffers go with it");
}

#[test]
fn buffer_pool_never_hands_out_more_than_its_count_and_reuses_returns() {
    let pool = BufferPool::new(2, 1024);
    let mut a = pool.try_get().unwrap();
    a.extend_from_slice(b"hello");
    let b = pool.try_get().unwrap();
    assert!(pool.try_get().is_none());
    assert_eq!(pool.in_use(), 2);
    drop(a);
    let c = pool.try_get().unwrap();
    assert!(c.is_empty(), "a returned buffer comes back cleared");
    assert!(c.capacity() >= 5);
    drop((b, c));
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn ordered_jobs_of_one_connection_run_in_submission_order() {
    let pool = WorkerPool::new("t", 4, 256).unwrap();
    let (tx, rx) = mpsc::channel();
    let ordered = Ordered::new(1000);
    for i in 0..200u32 {
        let tx = tx.clone();
        ordered
            .submit(&pool, move || {
                if i % 7 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                tx.send(i).unwrap();
            })
            .unwrap();
    }
    let got: Vec<u32> = (0..200)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    pool.shutdown(Duration::from_secs(5));
}

/// One worker, blocked on connection A's first job while A queues four more and B one:
/// B's job runs right after A's first, not after A's backlog (round robin).
#[test]
fn connections_take_turns_one_job_each() {
    let pool = WorkerPool::new("t", 1, 64).unwrap();
    let (a, b) = (Ordered::new(64), Ordered::new(64));
    let (tx, rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let t = tx.clone();
    a.submit(&pool, move || {
        let _ = gate_rx.recv_timeout(Duration::from_secs(10));
        t.send("a1").unwrap();
    })
    .unwrap();
    for name in ["a2", "a3", "a4", "a5"] {
        let t = tx.clone();
        a.submit(&pool, move || t.send(name).unwrap()).unwrap();
    }
    let t = tx.clone();
    b.submit(&pool, move || t.send("b1").unwrap()).unwrap();
    gate_tx.send(()).unwrap();
    let order: Vec<&str> = (0..6)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert_eq!(order, ["a1", "b1", "a2", "a3", "a4", "a5"]);
    assert_eq!(pool.queued(), 0);
    pool.shutdown(Duration::from_secs(5));
}

/// Every connection's waiting jobs count toward the pool's capacity (memory stays bounded
/// whatever the number of connections).
#[test]
fn connections_share_the_queue_capacity() {
    let pool = WorkerPool::new("t", 1, 4).unwrap();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    pool.try_execute(move || {
        let _ = gate_rx.recv_timeout(Duration::from_secs(10));
    })
    .unwrap();
    let lanes: Vec<Ordered> = (0..4).map(|_| Ordered::new(64)).collect();
    let accepted = lanes
        .iter()
        .flat_map(|l| (0..4).map(move |_| l))
        .filter(|l| l.submit(&pool, || {}).is_ok())
        .count();
    // The gate job may still wait too: 3 or 4 places were left.
    assert!((3..=4).contains(&accepted), "accepted {accepted} of 16");
    assert_eq!(lanes[3].submit(&pool, || {}), Err(Busy::PoolFull));
    assert!(pool.queued() <= 4);
    gate_tx.send(()).unwrap();
    pool.shutdown(Duration::from_secs(5));
}

#[test]
fn freed_room_goes_to_the_line_in_order() {
    let t0 = Instant::now();
    let mut q = Queue {
        ready: VecDeque::new(),
        waiting: 2,
        stopping: false,
        line: VecDeque::new(),
    };
    // Full (capacity 2): 1, 2, 3 are refused, in that order, and queue up.
    for who in [1, 2, 3] {
        assert!(!q.admit(Some(who), 2, t0));
    }
    // One place frees: only the first in line takes it; 2 and 3 keep their places, and a
    // newcomer (or a job with no identity) goes behind them.
    q.waiting = 1;
    assert!(!q.admit(Some(3), 2, t0));
    assert!(!q.admit(Some(9), 2, t0));
    assert!(!q.admit(None, 2, t0));
    assert!(q.admit(Some(1), 2, t0));
    // 1's job was taken by a worker meanwhile: one place free again.
    assert!(q.admit(Some(2), 2, t0));
    // 3 stops asking: after ADMISSION_HOLD its place (and 9's) is given up.
    let later = t0 + ADMISSION_HOLD + Duration::from_millis(1);
    assert!(q.admit(None, 2, later));
    assert!(q.line.is_empty());
}

#[test]
fn a_full_queue_refuses_instead_of_growing() {
    let pool = WorkerPool::new("t", 1, 2).unwrap();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate_rx));
    let g = gate.clone();
    pool.try_execute(move || {
        let _ = g.lock().unwrap().recv_timeout(Duration::from_secs(10));
    })
    .unwrap();
    // The worker may or may not have taken the first job yet: at most 3 fit.
    let accepted = (0..10).filter(|_| pool.try_execute(|| {}).is_ok()).count();
    assert!(accepted <= 2, "queue grew past its capacity: {accepted}");
    assert_eq!(pool.try_execute(|| {}), Err(PoolFull));
    gate_tx.send(()).unwrap();
    pool.shutdown(Duration::from_secs(5));
}

#[test]
fn queued_and_busy_count_what_waits_and_what_runs() {
    let pool = WorkerPool::new("t", 1, 8).unwrap();
    assert_eq!((pool.queued(), pool.busy(), pool.workers()), (0, 0, 1));
    let (started_tx, started_rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    pool.try_execute(move || {
        started_tx.send(()).unwrap();
        let _ = gate_rx.recv_timeout(Duration::from_secs(10));
    })
    .unwrap();
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    for i in 0..3 {
        let done_tx = done_tx.clone();
        pool.try_execute(move || done_tx.send(i).unwrap()).unwrap();
    }
    assert_eq!(pool.busy(), 1, "the blocked job runs");
    assert_eq!(pool.queued(), 3, "three jobs wait behind it");
    gate_tx.send(()).unwrap();
    for i in 0..3 {
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)).unwrap(), i);
    }
    assert_eq!(pool.queued(), 0);
    pool.shutdown(Duration::from_secs(5));
}

#[test]
fn per_connection_limit_refuses_extra_jobs() {
    let pool = WorkerPool::new("t", 1, 4).unwrap();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let ordered = Ordered::new(2);
    ordered
        .submit(&pool, move || {
            let _ = gate_rx.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
    assert!(ordered.submit(&pool, || {}).is_ok());
    assert!(ordered.submit(&pool, || {}).is_ok());
    assert_eq!(ordered.submit(&pool, || {}), Err(Busy::ConnectionFull));
    gate_tx.send(()).unwrap();
    pool.shutdown(Duration::from_secs(5));
}

#[test]
fn shutdown_drops_queued_jobs_and_returns_by_the_deadline() {
    let pool = WorkerPool::new("t", 1, 64).unwrap();
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (started_tx, started_rx) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let f = finished.clone();
    pool.try_execute(move || {
        started_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        f.store(true, Ordering::SeqCst);
    })
    .unwrap();
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for _ in 0..50 {
        let ran = ran.clone();
        pool.try_execute(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    let t = Instant::now();
    pool.shutdown(Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        finished.load(Ordering::SeqCst),
        "shutdown returned before the running job finished (well within its deadline)"
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "queued jobs ran after shutdown began"
    );
}
