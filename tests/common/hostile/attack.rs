//! The attacks of the hostile-peer suite: each starts its connections, leaves them in their
//! hostile state (or keeps attacking from background threads) and holds them until dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{end_with, Attack, Case, How, Kind, Peer, Reader, Stage, Target};
use crate::common::{reset_close, Rng};

/// Writes in the attack threads give up after this long (then look at the stop flag again).
const WRITE_STEP: Duration = Duration::from_millis(200);

/// An attack under way: its connections, its threads, what it saw.
pub struct Running {
    held: Vec<Peer>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Peer>>>,
    readers: Vec<Reader>,
    active: bool,
    /// What the attack itself found wrong.
    notes: Vec<String>,
}

/// `conns` connections at `stage`.
fn open_all(t: &Target, stage: Stage, conns: usize) -> Vec<Peer> {
    (0..conns)
        .map(|i| {
            t.open(stage)
                .unwrap_or_else(|e| panic!("attacker {i} could not reach {stage:?}: {e}"))
        })
        .collect()
}

fn raw_stage(stage: Stage) -> bool {
    matches!(stage, Stage::ProxyHeader | Stage::Handshake)
}

/// `frame` repeated to `len` bytes.
fn repeated(frame: &[u8], len: usize) -> Vec<u8> {
    frame.iter().copied().cycle().take(len).collect()
}

fn set_write_step(p: &Peer) {
    let _ = p.tcp().set_write_timeout(Some(WRITE_STEP));
}

impl Running {
    pub fn start(t: &Target, case: &Case, rng: &mut Rng) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let mut r = Running {
            held: Vec::new(),
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            readers: Vec::new(),
            active: false,
            notes: Vec::new(),
        };
        let stage = case.stage;
        let raw = raw_stage(stage);
        match case.attack.clone() {
            Attack::Trickle { conns, every } => {
                let mut peers = open_all(t, stage, conns);
                let bytes = t.stage_bytes(stage);
                // After the header or the hello: the requests again and again (a ClientHello
                // is sent once; what would follow it is the client's next flight).
                let cyclic = stage != Stage::Handshake;
                peers.iter().for_each(set_write_step);
                r.active = true;
                r.threads.push(thread::spawn(move || {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        if i < bytes.len() || cyclic {
                            let b = [bytes[i % bytes.len()]];
                            for p in peers.iter_mut() {
                                let _ = if raw { p.raw(&b) } else { p.send(&b) };
                            }
                            i += 1;
                        }
                        thread::sleep(every);
                    }
                    peers
                }));
            }
            Attack::HalfOpen { conns } => {
                r.held = open_all(t, stage, conns);
                if raw {
                    // A partial header / hello.
                    let b = t.stage_bytes(stage);
                    let half = &b[..b.len() / 2];
                    for p in r.held.iter_mut() {
                        let _ = p.raw(half);
                    }
                }
            }
            Attack::Close { how, conns, tail } => {
                for _ in 0..conns {
                    let mut p = t.open(stage).expect("attacker reaches the stage");
                    set_write_step(&p);
                    if raw {
                        // Mid-way: half a PROXY header, or the whole ClientHello.
                        let b = t.stage_bytes(stage);
                        let cut = if stage == Stage::Handshake {
                            b.len()
                        } else {
                            b.len() / 2
                        };
                        let _ = p.raw(&b[..cut]);
                    }
                    let tail = if how == How::CloseNotify || raw {
                        rng.bytes(tail)
                    } else {
                        repeated(&t.frame(), tail)
                    };
                    let raw_tail = raw || how == How::CloseNotify;
                    if let Some(p) = end_with(p, how, &tail, raw_tail) {
                        r.held.push(p);
                    }
                }
            }
            Attack::Garbage { conns, len } => {
                r.held = open_all(t, stage, conns);
                for p in r.held.iter_mut() {
                    set_write_step(p);
                    let g = rng.bytes(len);
                    let _ = if raw { p.raw(&g) } else { p.send(&g) };
                }
            }
            Attack::Oversize { conns } => {
                r.held = open_all(t, stage, conns);
                let big = t.oversize(stage);
                for p in r.held.iter_mut() {
                    set_write_step(p);
                    let _ = if raw { p.raw(&big) } else { p.send(&big) };
                }
            }
            Attack::NeverRead { conns, bytes } => {
                // Each writes until `bytes` are sent or the server stops reading it (a write
                // blocked for WRITE_STEP): the window then sees the paused state.
                let chunk = t.big_frame().repeat(64);
                let writers: Vec<_> = open_all(t, stage, conns)
                    .into_iter()
                    .map(|mut p| {
                        let chunk = chunk.clone();
                        thread::spawn(move || {
                            set_write_step(&p);
                            let mut sent = 0;
                            while sent < bytes && p.send(&chunk).is_ok() {
                                sent += chunk.len();
                            }
                            p
                        })
                    })
                    .collect();
                r.held = writers
                    .into_iter()
                    .map(|w| w.join().expect("writer"))
                    .collect();
            }
            Attack::MgetAmplify { value, keys } => {
                let mut setter = t.open(Stage::FirstFrame).expect("setter");
                let mut set = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${value}\r\n").into_bytes();
                set.extend(std::iter::repeat_n(b'v', value));
                set.extend_from_slice(b"\r\n");
                setter.send(&set).expect("SET");
                let ok = setter.read_exact_within(5, Duration::from_secs(10));
                assert_eq!(ok.ok().as_deref(), Some(&b"+OK\r\n"[..]), "SET k answered");
                let mut mget = format!("*{}\r\n$4\r\nMGET\r\n", keys + 1).into_bytes();
                for _ in 0..keys {
                    mget.extend_from_slice(b"$1\r\nk\r\n");
                }
                let mut p = t.open(Stage::FirstFrame).expect("attacker");
                set_write_step(&p);
                let _ = p.send(&mget);
                r.held = vec![setter, p];
            }
            Attack::FanOut { readers, senders } => {
                for _ in 0..readers {
                    let mut p = t.open(Stage::FirstFrame).expect("member");
                    let g = p.read_exact_within(10, Duration::from_secs(10));
                    assert!(g.is_ok(), "member greeting: {g:?}");
                    let Peer::Raw(s) = p else { unreachable!() };
                    r.readers.push(Reader::start(s));
                }
                r.active = true;
                let line = repeated(
                    b"flood flood flood flood flood flood flood flood\n",
                    64 * 1024,
                );
                for p in open_all(t, Stage::FirstFrame, senders) {
                    let (stop, line) = (Arc::clone(&stop), line.clone());
                    r.threads.push(thread::spawn(move || {
                        let mut p = p;
                        set_write_step(&p);
                        while !stop.load(Ordering::Relaxed) {
                            let _ = p.send(&line);
                        }
                        vec![p]
                    }));
                }
            }
            Attack::Pipeline {
                conns,
                line,
                count,
                continuous,
                read,
            } => {
                let batch = line.repeat(count).into_bytes();
                r.active = continuous;
                for p in open_all(t, Stage::FirstFrame, conns) {
                    if read {
                        let Peer::Raw(s) = &p else { unreachable!() };
                        r.readers.push(Reader::start(s.try_clone().unwrap()));
                    }
                    let (stop, batch) = (Arc::clone(&stop), batch.clone());
                    r.threads.push(thread::spawn(move || {
                        let mut p = p;
                        set_write_step(&p);
                        loop {
                            let _ = p.send(&batch);
                            if !continuous || stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        vec![p]
                    }));
                }
            }
            Attack::FinKeepsGreeting { conns } => {
                for i in 0..conns {
                    let mut s = crate::common::connect(t.addr);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    match crate::common::read_until_close(&mut s, Duration::from_secs(5)) {
                        Ok((got, _)) if got.starts_with(b"+OK chat\r\n") => {}
                        Ok((got, how)) => r.notes.push(format!(
                            "client {i} shut down its write side at once: got {:?} then {how:?}, \
                             not the greeting",
                            String::from_utf8_lossy(&got)
                        )),
                        Err(e) => r.notes.push(format!("client {i}: {e}")),
                    }
                }
            }
            Attack::ResetWhilePaused { conns, flood } => {
                assert_eq!(t.kind, Kind::TcpProxy, "reset while paused needs tcp_proxy");
                let chunk = rng.bytes(64 * 1024);
                let flooders: Vec<_> = open_all(t, Stage::FirstFrame, conns)
                    .into_iter()
                    .map(|mut p| {
                        let (stop, chunk) = (Arc::clone(&stop), chunk.clone());
                        p.send(b"sink\n").expect("mode line");
                        thread::spawn(move || {
                            set_write_step(&p);
                            while !stop.load(Ordering::Relaxed) {
                                let _ = p.send(&chunk);
                            }
                            p
                        })
                    })
                    .collect();
                thread::sleep(flood);
                stop.store(true, Ordering::Relaxed);
                for f in flooders {
                    let Peer::Raw(s) = f.join().expect("flooder") else {
                        unreachable!()
                    };
                    reset_close(s);
                }
                r.stop = Arc::new(AtomicBool::new(false));
            }
        }
        r
    }

    /// What the attack itself saw go wrong: its own checks, and members that read steadily
    /// and were disconnected.
    pub fn failures(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        out.extend(self.readers.iter().enumerate().filter_map(|(i, rd)| {
            rd.ended().map(|how| {
                format!(
                    "reading connection {i} was ended ({how}) after {} bytes",
                    rd.bytes.load(Ordering::Relaxed)
                )
            })
        }));
        out
    }

    /// Stops an active attack (its connections stay open); whether it was active.
    pub fn quiesce(&mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        for th in self.threads.drain(..) {
            if let Ok(peers) = th.join() {
                self.held.extend(peers);
            }
        }
        std::mem::take(&mut self.active)
    }

    /// The attack's connections (for tests that look at them).
    pub fn held(&self) -> &[Peer] {
        &self.held
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.quiesce();
        self.readers.clear();
    }
}
