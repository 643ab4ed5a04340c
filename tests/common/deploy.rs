//! Helpers of the deployment tests: outside tools (skipped with a printed line where missing,
//! a failure under `RINGPORT_TEST_REQUIRE_TOOLS=1`), HTTP scrapes of the metrics server, and
//! reading a Prometheus exposition.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The path of `tool`, or `None` after printing `skipped: <tool> not installed (<why>)`;
/// panics instead when `RINGPORT_TEST_REQUIRE_TOOLS=1`.
pub fn tool(name: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("RINGPORT_TEST_REQUIRE_TOOLS").is_some_and(|v| v != "0") {
            panic!("{name} required (RINGPORT_TEST_REQUIRE_TOOLS) but not installed ({why})");
        }
        println!("skipped: {name} not installed ({why})");
    }
    found
}

/// The address of a `metrics on ADDR` line in `stdout`.
pub fn metrics_addr(stdout: &str) -> SocketAddr {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("metrics on "))
        .unwrap_or_else(|| panic!("no `metrics on` line in {stdout:?}"))
        .trim()
        .parse()
        .expect("metrics address")
}

/// `GET path` over HTTP/1.1; the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, super::CONNECT_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(super::IO_TIMEOUT))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("response (Connection: close)");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(body.len(), len, "body length matches Content-Length");
    (status, body.to_string())
}

/// The value of the sample `name{labels}` (labels exactly as rendered, e.g.
/// `server="127.0.0.1:5001"`), or `None` if absent.
pub fn sample(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    exposition.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok())?
    })
}

/// Sum of every sample of metric `name` whose labels contain `contains`.
pub fn sum_samples(exposition: &str, name: &str, contains: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let metric = k.split('{').next()?;
            (metric == name && k.contains(contains)).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// Scrapes `maddr` (for at most `timeout`) until the server labelled `server` (`server="ADDR"`) has
/// counted at least `n` closes and has no connection open: a close the test caused may be
/// counted a moment after the test saw its effect.
pub fn wait_closes_counted(maddr: SocketAddr, server: &str, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, now) = http_get(maddr, "/metrics");
        if sum_samples(&now, "ringport_connections_closed_total", server) >= n as f64
            && sum_samples(&now, "ringport_connections_active", server) == 0.0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} closes never counted:\n{now}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `promtool check metrics` on `exposition`; its exit status and output.
pub fn promtool_check(promtool: &std::path::Path, exposition: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(_st) = child.try_wait().expect("wait promtool") {
            break;
        }
        assert!(Instant::now() < deadline, "promtool did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A process started by a deployment test (an example under another launcher, or with its
/// own `--listen`): stdout and stderr collected, SIGKILLed on drop with every pid in `also`.
pub struct Proc {
    pub child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    /// How many of its two pipes (stdout, stderr) reached EOF: all its output is in `out`.
    pipes_done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Processes it started (restart successors) to kill with it.
    pub also: Vec<i32>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipes_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in pipes {
            let out = out.clone();
            let done = pipes_done.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Release);
            });
        }
        Proc {
            child,
            out,
            pipes_done,
            also: Vec::new(),
        }
    }

    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits (bounded) for an output line starting with `prefix`; the rest of that line.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        self.wait_find(timeout, |l| l.strip_prefix(prefix).map(str::to_string))
    }

    /// Waits (bounded) for an output line containing `needle`: a log line, which the
    /// process writes to its other pipe, may reach us after a stdout line it wrote later.
    pub fn wait_text(&mut self, needle: &str, timeout: Duration) -> bool {
        self.wait_find(timeout, |l| l.contains(needle).then_some(()))
            .is_some()
    }

    /// Waits (bounded) for the first output line `f` maps to `Some`.
    fn wait_find<T>(&mut self, timeout: Duration, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.output().lines().find_map(&f) {
                return Some(found);
            }
            if Instant::now() >= deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                self.wait_output(Duration::from_secs(2)); // the last lines, if it exited
                return self.output().lines().find_map(&f);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address of the first `listening on ADDR (backend: ...)` line.
    pub fn listening(&mut self, timeout: Duration) -> SocketAddr {
        let rest = self
            .wait_line("listening on ", timeout)
            .unwrap_or_else(|| panic!("no listening line:\n{}", self.output()));
        rest.split(' ').next().unwrap().parse().expect("address")
    }

    /// Waits (bounded) for the process to exit, then (bounded too) for the readers to take
    /// the rest of its output: `output()` then holds what it printed last (its exit did not
    /// wait for our readers).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.wait_output(Duration::from_secs(5));
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Until both pipes reached EOF (a process that exited, unless something it started
    /// still holds them), at most `timeout`.
    fn wait_output(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pipes_done.load(std::sync::atomic::Ordering::Acquire) < 2
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        for &pid in &self.also {
            kill(pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- output of {:?} ---\n{}", self.child.id(), self.output());
        }
    }
}

pub fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it no longer serves).
pub fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// The `ringport-load` client of this workspace, built (once per run) with the test binary's
/// profile and target directory; a failed build panics.
pub fn ringport_load() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        super::cargo_build(&["-p", "ringport-load", "--bin", "ringport-load"])?;
        Ok(super::profile_dir().join("ringport-load"))
    });
    match built {
        Ok(p) => p.clone(),
        Err(e) => panic!("building ringport-load failed: {e}"),
    }
}

/// What a `ringport-load --json` run reported: (messages, errors, the whole JSON line).
pub fn load_result(out: &str) -> (u64, u64, String) {
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary from ringport-load:\n{out}"))
        .to_string();
    let field = |name: &str| -> u64 {
        let key = format!("\"{name}\":");
        let at = line
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            + key.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not a count in {line}"))
    };
    (field("messages"), field("errors"), line)
}

/// The `ringport-load --json` run that ran `secs` across three restarts begun at `began`: the
/// restarts ended before the load did, the run finished with no error and sent more than
/// `min_messages` messages, which it returns.
pub fn load_ran_through_restarts(run: &mut Proc, secs: f64, began: Instant, min: u64) -> u64 {
    assert!(
        began.elapsed().as_secs_f64() < secs - 1.0,
        "three restarts took {:?}, longer than the load ran",
        began.elapsed()
    );
    let st = run
        .wait_exit(Duration::from_secs_f64(secs + 60.0))
        .expect("ringport-load finishes");
    let (messages, errors, json) = load_result(&run.output());
    assert!(
        st.success() && errors == 0,
        "ringport-load through three restarts: {st}\n{json}"
    );
    assert!(messages > min, "the load ran: {json}");
    messages
}

/// Kills the restart successors it holds when dropped, also when a test fails (they are not
/// children of the test, so nothing else would).
pub struct Successors(pub Vec<i32>);

impl Drop for Successors {
    fn drop(&mut self) {
        for &pid in &self.0 {
            kill(pid, libc::SIGKILL);
        }
    }
}

/// The pid named by the last `successor_pid=N` of a hand-over line in `log`.
pub fn successor_pid(log: &str) -> Option<i32> {
    log.rsplit("successor_pid=")
        .next()
        .filter(|_| log.contains("handing over"))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
}

/// Waits (bounded) until `pid` is gone; whether it is.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !is_gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
