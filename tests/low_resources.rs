//! Low resources (issue 25): example servers run inside a small memory cgroup and face idle
//! crowds and never-reading flooders. The process stays alive, a new connection is still
//! served, every connection the server dropped is counted under `overload`, and RSS stays under
//! the limit. Needs root and a cgroup memory controller (v1 or v2): skipped with a printed
//! reason without them, a failure under `RINGPORT_TEST_REQUIRE_TOOLS=1`.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::deploy::{http_get, metrics_addr, sample, sum_samples};
use common::*;
use ringport::rustls;

backend_tests!("echo_server";
    idle_crowd_and_200_flooders_in_64_mib,
    flooders_2000_in_128_mib,
    tls_200_flooders_in_64_mib,
);
backend_tests!("line_server_pooled"; pooled_full_queue_200_flooders_in_64_mib);
backend_tests!("resp_server"; resp_mget_200_flooders_in_64_mib);

const MIB: u64 = 1 << 20;

#[path = "low_resources/chat.rs"]
mod chat;

/// A memory cgroup made for one test (a child of this process's own), removed on drop.
struct MemCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemCgroup {
    /// A new cgroup limited to `limit` bytes, or why there cannot be one here.
    fn create(name: &str, limit: u64) -> Result<MemCgroup, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let mut found = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut r = right.split_whitespace();
            let (Some(fstype), _, Some(options)) = (r.next(), r.next(), r.next()) else {
                continue;
            };
            let Some(mount) = left.split_whitespace().nth(4) else {
                continue;
            };
            if fstype == "cgroup2" {
                let controllers = std::fs::read_to_string(format!("{mount}/cgroup.controllers"))
                    .unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "memory") {
                    let own = cgroups
                        .lines()
                        .find_map(|l| l.strip_prefix("0::"))
                        .unwrap_or("/");
                    found = Some((PathBuf::from(mount), own.to_string(), true));
                    break;
                }
            } else if fstype == "cgroup" && options.split(',').any(|o| o == "memory") {
                let own = cgroups
                    .lines()
                    .find_map(|l| {
                        let mut p = l.splitn(3, ':');
                        let (_, c, path) = (p.next()?, p.next()?, p.next()?);
                        c.split(',')
                            .any(|c| c == "memory")
                            .then(|| path.to_string())
                    })
                    .unwrap_or_else(|| "/".into());
                found = Some((PathBuf::from(mount), own, false));
            }
        }
        let (mount, own, v2) = found.ok_or("no cgroup memory controller mounted")?;
        // Our own cgroup when it is visible under the mount (a container sees its own as root).
        let mut parent = mount.join(own.trim_start_matches('/'));
        if !parent.is_dir() {
            parent = mount;
        }
        if v2 {
            // A child's controllers come from its parent's subtree_control.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory");
        }
        let dir = parent.join(format!("ringport-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
        let cg = MemCgroup { dir, v2 };
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cg.dir.join(file), limit.to_string())
            .map_err(|e| format!("cannot set {file}: {e}"))?;
        if v2 {
            let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        } else {
            let _ = std::fs::write(
                cg.dir.join("memory.memsw.limit_in_bytes"),
                limit.to_string(),
            );
        }
        Ok(cg)
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// How many times the kernel's OOM killer ran in this cgroup.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The kernel memory charged to the cgroup at its peak (v1 only: `memory.kmem.*`).
    fn kmem_peak(&self) -> Option<u64> {
        let s = std::fs::read_to_string(self.dir.join("memory.kmem.max_usage_in_bytes")).ok()?;
        s.trim().parse().ok()
    }

    /// The cgroup's peak memory use (v1 `max_usage_in_bytes`, v2 `memory.peak` when there).
    fn peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // The server was killed before (it is dropped first); its exit may take a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The cgroup, or `None` after printing why the test is skipped (a failure when tools are
/// required).
fn cgroup_or_skip(name: &str, limit: u64) -> Option<MemCgroup> {
    match MemCgroup::create(name, limit) {
        Ok(cg) => Some(cg),
        Err(why) => {
            if std::env::var_os("RINGPORT_TEST_REQUIRE_TOOLS").is_some_and(|v| v != "0") {
                panic!("a memory cgroup is required (RINGPORT_TEST_REQUIRE_TOOLS) but: {why}");
            }
            println!("skipped: no memory cgroup ({why})");
            None
        }
    }
}

/// Raises this process's open-file limit to `n` (the hard limit allowing); returns the limit.
fn raise_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, live struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = (n as libc::rlim_t).max(lim.rlim_cur);
        lim.rlim_max = lim.rlim_max.max(want); // root may raise the hard limit
        lim.rlim_cur = want;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// Resident set size in KiB, `None` once the process is gone (a zombie has none).
fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One scenario at a time: each takes thousands of descriptors and a share of the machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the one-at-a-time lock, makes a memory cgroup of `limit` bytes named after `cgroup`
/// (`None` after the printed skip) and starts `server` in it, with `args`, the metrics port,
/// room for 20,000 connections and an open-file limit of `nofile`. Bind the three in this
/// order: the server goes first (killed), then its cgroup (removed), then the lock.
fn start_in_cgroup(
    cgroup: &str,
    server: &str,
    backend: Backend,
    limit: u64,
    args: &[String],
    nofile: u64,
) -> Option<(MutexGuard<'static, ()>, MemCgroup, Server)> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cg = cgroup_or_skip(cgroup, limit)?;
    let mut args = args.to_vec();
    args.extend(["--metrics", "127.0.0.1:0", "--max-connections", "20000"].map(String::from));
    let server = ServerBuilder::new(server)
        .backend(backend)
        .args(&args)
        .nofile_limit(nofile)
        .join_cgroup(cg.procs())
        .start();
    Some((serial, cg, server))
}

/// Samples the server's RSS every 200 ms for `hold` while it lives (`sample` runs at each),
/// prints what its cgroup saw, and asserts what every scenario keeps: the server alive
/// (`under`: the load, in the message), no OOM kill in its cgroup, its RSS under the `limit`.
fn hold_within_limit(
    server: &mut Server,
    cg: &MemCgroup,
    backend: Backend,
    limit: u64,
    hold: Duration,
    under: &str,
    mut sample: impl FnMut(&Server),
) {
    let start = Instant::now();
    let mut max_rss = 0;
    while start.elapsed() < hold {
        if !server.is_alive() {
            break;
        }
        match rss_kib(server.pid()) {
            Some(kib) => max_rss = max_rss.max(kib),
            None => break, // gone (killed)
        }
        sample(server);
        thread::sleep(Duration::from_millis(200));
    }
    let alive = server.is_alive();
    println!(
        "{backend}: alive={alive} after {:?}, max RSS {} MiB, cgroup peak {:?} MiB (kernel {:?} MiB), OOM kills {}",
        start.elapsed(),
        max_rss / 1024,
        cg.peak().map(|p| p / MIB),
        cg.kmem_peak().map(|p| p / MIB),
        cg.oom_kills()
    );
    server.assert_alive(under);
    assert_eq!(
        cg.oom_kills(),
        0,
        "the OOM killer ran in the server's cgroup"
    );
    assert!(
        max_rss * 1024 < limit,
        "RSS {max_rss} KiB not under the {limit}-byte limit"
    );
}

/// Retries `served` every 100 ms until it says yes, for at most 20 s (asserted); prints after
/// how many attempts and how long. `who`: the client, in the messages.
fn served_within_20_s(backend: Backend, who: &str, mut served: impl FnMut() -> bool) {
    let t = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        if served() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{backend}: {who} not served in 20 s ({attempts} attempts)"
        );
        thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{backend}: {who} served after {attempts} attempt(s), {:?}",
        t.elapsed()
    );
}

/// The overload actions counted so far, by name.
fn overload_actions(exposition: &str) -> Vec<(&'static str, u64)> {
    ["shrink", "pause", "refuse", "reset"]
        .into_iter()
        .map(|a| {
            let labels = format!("action=\"{a}\"");
            (
                a,
                metric(exposition, "ringport_overload_actions_total", &labels),
            )
        })
        .collect()
}

/// Connections closed for `reason` so far.
fn closed(exposition: &str, reason: &str) -> u64 {
    let labels = format!("reason=\"{reason}\"");
    sum_samples(exposition, "ringport_connections_closed_total", &labels) as u64
}

/// What the server under test speaks, and so how its clients talk to it.
enum Kind {
    /// `echo_server`, plain TCP.
    Echo,
    /// `echo_server --tls-cert/--tls-key`: every flooder completes its handshake first.
    Tls(Box<tls::Pki>),
    /// `line_server_pooled` with a small job queue, kept full: flooders send `ECHO` lines and
    /// a `SLEEP` now and then, and never read the replies.
    Pooled,
    /// `resp_server` with one 256 KiB value: flooders pipeline `MGET k k k ...` (64 keys, a
    /// 16 MiB reply for a 900-byte command) and never read.
    Resp,
}

/// A RESP command.
fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut c = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        c.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        c.extend_from_slice(a);
        c.extend_from_slice(b"\r\n");
    }
    c
}

impl Kind {
    fn server(&self) -> &'static str {
        match self {
            Kind::Echo | Kind::Tls(_) => "echo_server",
            Kind::Pooled => "line_server_pooled",
            Kind::Resp => "resp_server",
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Kind::Echo | Kind::Resp => vec![],
            Kind::Tls(pki) => pki.server_args(false),
            // 2 workers, 128 jobs waiting at most: the flooders keep the queue full.
            Kind::Pooled => ["--workers", "2", "--queue", "128"]
                .map(String::from)
                .to_vec(),
        }
    }

    /// What a flooder sends, over and over (a whole number of lines for the line server).
    fn chunk(&self) -> Vec<u8> {
        match self {
            Kind::Echo | Kind::Tls(_) => vec![b'x'; 64 << 10],
            Kind::Pooled => {
                let mut c = Vec::with_capacity(64 << 10);
                for _ in 0..8 {
                    c.extend_from_slice(b"ECHO ");
                    c.extend(std::iter::repeat_n(b'x', 8000));
                    c.extend_from_slice(b"\r\n");
                }
                c.extend_from_slice(b"SLEEP 1\r\n");
                c
            }
            Kind::Resp => {
                let mut args: Vec<&[u8]> = vec![b"MGET"];
                args.extend(std::iter::repeat_n(&b"k"[..], 64));
                resp_command(&args)
            }
        }
    }
}

/// A client that sets a 4 KiB receive buffer, never reads, and sends as fast as it can.
enum Flooder {
    Plain(TcpStream, usize),
    Tls(Box<rustls::ClientConnection>, TcpStream),
}

impl Flooder {
    fn connect(kind: &Kind, addr: SocketAddr) -> Option<Flooder> {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
        s.set_recv_buffer_size(4096).ok()?;
        s.connect_timeout(&addr.into(), Duration::from_secs(5))
            .ok()?;
        let mut sock: TcpStream = s.into();
        if let Kind::Tls(pki) = kind {
            let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
            let mut conn = rustls::ClientConnection::new(pki.rustls_client(), name).ok()?;
            sock.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).ok()?;
            }
            sock.set_nonblocking(true).ok()?;
            return Some(Flooder::Tls(Box::new(conn), sock));
        }
        sock.set_nonblocking(true).ok()?;
        Some(Flooder::Plain(sock, 0))
    }

    /// Sends what the socket takes now; `Ok(true)` when something went out.
    fn push(&mut self, chunk: &[u8]) -> std::io::Result<bool> {
        let would_block = |e: &std::io::Error| e.kind() == ErrorKind::WouldBlock;
        match self {
            Flooder::Plain(s, off) => match s.write(&chunk[*off..]) {
                Ok(n) => {
                    *off = (*off + n) % chunk.len();
                    Ok(n > 0)
                }
                Err(e) if would_block(&e) => Ok(false),
                Err(e) => Err(e),
            },
            Flooder::Tls(conn, s) => {
                if !conn.wants_write() {
                    let _ = conn.writer().write(chunk)?;
                }
                let mut progress = false;
                while conn.wants_write() {
                    match conn.write_tls(s) {
                        Ok(n) => progress |= n > 0,
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(progress)
            }
        }
    }
}

/// Floods from one thread until `stop`; counts the flooders the server dropped.
fn flood(
    mut peers: Vec<Flooder>,
    chunk: Vec<u8>,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
) {
    let mut alive = vec![true; peers.len()];
    while !stop.load(Ordering::Relaxed) {
        let mut progress = false;
        for (i, p) in peers.iter_mut().enumerate() {
            if !alive[i] {
                continue;
            }
            match p.push(&chunk) {
                Ok(sent) => progress |= sent,
                Err(_) => {
                    alive[i] = false;
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !progress {
            thread::sleep(Duration::from_millis(5)); // everyone's buffers are full
        }
    }
}

/// A well-behaved client: one request, its whole reply, within `timeout`.
enum Client {
    Plain(TcpStream),
    Tls(Box<tls::RustlsStream>),
}

impl Client {
    /// A new connection (the line server's greeting read), or `None` when refused.
    fn connect(kind: &Kind, addr: SocketAddr, timeout: Duration) -> Option<Client> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.set_write_timeout(Some(timeout)).ok()?;
        match kind {
            Kind::Echo | Kind::Resp => Some(Client::Plain(s)),
            Kind::Pooled => {
                let greeting = read_exact_timeout(&mut s, 11, timeout).ok()?;
                (greeting == b"+OK ready\r\n").then_some(Client::Plain(s))
            }
            Kind::Tls(pki) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
                let mut conn = rustls::ClientConnection::new(pki.rustls_client(), name).ok()?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut s).ok()?;
                }
                Some(Client::Tls(Box::new(rustls::StreamOwned::new(conn, s))))
            }
        }
    }

    /// Whether `tag` is answered (echoed, or `+tag` from the line server).
    fn served(&mut self, kind: &Kind, tag: &str) -> bool {
        let (req, want) = match kind {
            Kind::Pooled => (format!("ECHO {tag}\r\n"), format!("+{tag}\r\n")),
            Kind::Resp => (
                String::from_utf8(resp_command(&[b"ECHO", tag.as_bytes()])).unwrap(),
                format!("${}\r\n{tag}\r\n", tag.len()),
            ),
            _ => (tag.to_string(), tag.to_string()),
        };
        let mut got = vec![0u8; want.len()];
        let ok = match self {
            Client::Plain(s) => {
                s.write_all(req.as_bytes()).is_ok() && s.read_exact(&mut got).is_ok()
            }
            Client::Tls(s) => {
                s.write_all(req.as_bytes()).is_ok()
                    && s.flush().is_ok()
                    && s.read_exact(&mut got).is_ok()
            }
        };
        ok && got == want.as_bytes()
    }
}

/// The server's metrics exposition.
fn scrape(server: &Server) -> String {
    http_get(metrics_addr(&server.stdout_text()), "/metrics").1
}

fn metric(exposition: &str, name: &str, labels: &str) -> u64 {
    sample(exposition, name, labels).unwrap_or(0.0) as u64
}

/// The scenario of the "done when": `idle` idle connections, then `flooders`
/// never-reading flooders, for `hold`; then the server must be alive, a new connection's echo
/// must come back, and every dropped connection must be counted under `overload`.
fn crowd_and_flood(
    kind: Kind,
    backend: Backend,
    limit: u64,
    idle: usize,
    flooders: usize,
    hold: Duration,
) {
    let name = format!("{}-{}-{}", kind.server(), backend.name(), flooders);
    let need = (idle + flooders) as u64 + 256;
    let nofile = raise_nofile(need);
    assert!(
        nofile >= need,
        "RLIMIT_NOFILE {nofile} < {need} (check `ulimit -Hn`)"
    );
    let Some((_serial, cg, mut server)) = start_in_cgroup(
        &name,
        kind.server(),
        backend,
        limit,
        &kind.args(),
        need + 256,
    ) else {
        return;
    };
    let addr = server.addr;
    let m = scrape(&server);
    let budget = metric(&m, "ringport_memory_budget_bytes", "");
    assert!(
        budget > 0 && budget <= limit,
        "the default budget comes from the cgroup limit ({limit}): {budget}"
    );
    // A well-behaved client, connected before the crowd.
    let mut early = Client::connect(&kind, addr, Duration::from_secs(10)).expect("early client");
    assert!(
        early.served(&kind, "before"),
        "early client before the crowd"
    );
    if let (Kind::Resp, Client::Plain(s)) = (&kind, &mut early) {
        let value = vec![b'v'; 256 << 10];
        s.write_all(&resp_command(&[b"SET", b"k", &value]))
            .expect("SET k");
        let ok = read_exact_timeout(s, 5, Duration::from_secs(10)).expect("SET's reply");
        assert_eq!(ok, b"+OK\r\n", "SET k");
    }

    let t = Instant::now();
    let mut crowd = Vec::with_capacity(idle);
    for _ in 0..idle {
        match TcpStream::connect(addr) {
            Ok(s) => crowd.push(s),
            Err(e) => panic!("idle connection {} failed: {e}", crowd.len()),
        }
    }
    let peers: Vec<Flooder> = (0..flooders)
        .filter_map(|_| Flooder::connect(&kind, addr))
        .collect();
    assert_eq!(peers.len(), flooders, "every flooder connected");
    println!(
        "{backend}: {idle} idle + {flooders} flooders connected in {:?}",
        t.elapsed()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicUsize::new(0));
    let flood_thread = {
        let (stop, dropped) = (stop.clone(), dropped.clone());
        let chunk = kind.chunk();
        thread::spawn(move || flood(peers, chunk, stop, dropped))
    };
    let mut max_queued = 0;
    let under = "under the idle crowd and the flood";
    hold_within_limit(&mut server, &cg, backend, limit, hold, under, |server| {
        if let Kind::Pooled = kind {
            let q = sum_samples(&scrape(server), "ringport_pool_queued_jobs", "") as u64;
            max_queued = max_queued.max(q);
        }
    });

    // A new connection is served (the refusals reverse once the resets bring pressure down).
    served_within_20_s(backend, "a new connection", || {
        Client::connect(&kind, addr, Duration::from_secs(3))
            .is_some_and(|mut c| c.served(&kind, "new"))
    });
    // The early client: still served, or (it holds nothing) never reset for the budget.
    let t = Instant::now();
    assert!(early.served(&kind, "after"), "early client after the flood");
    println!("{backend}: the early client served in {:?}", t.elapsed());
    if let (Kind::Resp, Client::Plain(s)) = (&kind, &mut early) {
        // The server's own count of replies that waited for the budget.
        s.write_all(&resp_command(&[b"INFO"])).expect("INFO");
        let mut info = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let complete = |info: &[u8]| {
            // `$N\r\n` then N bytes and `\r\n`.
            let text = String::from_utf8_lossy(info);
            let Some((head, _)) = text.split_once("\r\n") else {
                return false;
            };
            let n: usize = head.trim_start_matches('$').parse().unwrap_or(0);
            info.len() >= head.len() + 2 + n + 2
        };
        while !complete(&info) && Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => info.extend_from_slice(&buf[..n]),
            }
        }
        let info = String::from_utf8_lossy(&info);
        let waits = info
            .lines()
            .find(|l| l.starts_with("budget_waits:"))
            .unwrap_or("budget_waits: missing");
        println!("{backend}: resp_server INFO {waits}");
    }

    stop.store(true, Ordering::Relaxed);
    flood_thread.join().expect("flood thread");
    let m = scrape(&server);
    let actions = overload_actions(&m);
    let used = metric(&m, "ringport_memory_used_bytes", "");
    let peak = metric(&m, "ringport_memory_used_peak_bytes", "");
    if let Kind::Pooled = kind {
        println!(
            "{backend}: pool queued at most {max_queued} (of 128) during the flood, cancelled {}",
            sum_samples(&m, "ringport_pool_cancelled_jobs", "") as u64
        );
    }
    println!(
        "{backend}: budget {} MiB, used {} MiB (peak {} MiB), actions {actions:?}, closed overload {}, flooders dropped {}",
        budget / MIB,
        used / MIB,
        peak / MIB,
        closed(&m, "overload"),
        dropped.load(Ordering::Relaxed)
    );
    // A peer's sending never takes the charge past the budget (the pauses, refusals and
    // resets act before it: issue 25). Not for resp_server: it charges each reply as it
    // writes it and releases that a loop turn later, when the engine has counted the same
    // bytes in the queue, so its peak counts them twice.
    assert!(
        matches!(kind, Kind::Resp) || peak <= budget,
        "the budget's charge peaked at {peak} bytes, past the {budget}-byte budget"
    );
    let closes: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("ringport_connections_closed_total") && !l.ends_with(" 0"))
        .collect();
    println!("{backend}: closes {closes:?}");
    // Every connection the server dropped is counted under `overload`: resets, or refusals at
    // accept (the test's own new connections, and flooders still in the accept queue when a
    // fast amplification, RESP's, reaches the refuse level within the first 0.2 s).
    let resets = actions[3].1;
    let refusals = actions[2].1;
    assert!(
        dropped.load(Ordering::Relaxed) as u64 <= resets + refusals,
        "flooders dropped {} but resets + refusals counted {resets} + {refusals}",
        dropped.load(Ordering::Relaxed)
    );
    // A reset is counted as closed once its close completes: a moment after the action.
    let mut overload = closed(&m, "overload");
    let deadline = Instant::now() + Duration::from_secs(10);
    while overload < refusals + resets && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        overload = closed(&scrape(&server), "overload");
    }
    assert_eq!(
        overload,
        refusals + resets,
        "overload closes are the refusals plus the resets"
    );
    // Every charge is released once the flooders are gone: use falls under the shrink level.
    let mut used = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(10);
    while used >= budget / 2 && Instant::now() < deadline {
        used = metric(&scrape(&server), "ringport_memory_used_bytes", "");
        thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{backend}: used {} KiB once the flooders are gone",
        used / 1024
    );
    assert!(
        used < budget / 2,
        "{used} bytes still charged after the flood (budget {budget})"
    );
    drop(crowd);
    drop(server);
    drop(cg);
}

fn idle_crowd_and_200_flooders_in_64_mib(backend: Backend) {
    crowd_and_flood(
        Kind::Echo,
        backend,
        64 * MIB,
        9_000,
        200,
        Duration::from_secs(8),
    );
}

fn flooders_2000_in_128_mib(backend: Backend) {
    // On io_uring each of 2,000 flooders landed up to 4 receive buffers (64 KiB) before a pause
    // took effect: the charge peaked at 160% of the budget (105 MB of 48 MiB and an OOM kill
    // on a fresh-clone CI run). The peak is asserted under the budget.
    crowd_and_flood(
        Kind::Echo,
        backend,
        128 * MIB,
        9_000,
        2_000,
        Duration::from_secs(8),
    );
}

/// TLS `echo_server`: 2,000 idle connections and 200 flooders that complete their handshake,
/// then send as fast as they can and never read, in 64 MiB.
fn tls_200_flooders_in_64_mib(backend: Backend) {
    let kind = Kind::Tls(Box::new(tls::Pki::new()));
    crowd_and_flood(kind, backend, 64 * MIB, 2_000, 200, Duration::from_secs(8));
}

/// `line_server_pooled` with its job queue full (2 workers, 128 jobs): 2,000 idle connections
/// and 200 clients pipelining `ECHO` lines (and a `SLEEP`) that never read a reply, in 64 MiB.
fn pooled_full_queue_200_flooders_in_64_mib(backend: Backend) {
    crowd_and_flood(
        Kind::Pooled,
        backend,
        64 * MIB,
        2_000,
        200,
        Duration::from_secs(8),
    );
}

/// RESP amplification: `resp_server` holding one 256 KiB value, 2,000 idle connections and
/// 200 clients pipelining `MGET k k ...` (64 keys) that never read, in 64 MiB.
fn resp_mget_200_flooders_in_64_mib(backend: Backend) {
    crowd_and_flood(
        Kind::Resp,
        backend,
        64 * MIB,
        2_000,
        200,
        Duration::from_secs(8),
    );
}
