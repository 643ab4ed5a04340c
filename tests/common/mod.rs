//! Shared harness for the process-level integration tests.
//!
//! The example servers are driven as separate processes through their CLI contract:
//! `--listen 127.0.0.1:0 --backend <b>`, one `listening on IP:PORT (backend: NAME)` line on
//! stdout, logs on stderr. [`Server`] spawns one, waits (bounded) for that line, drains stderr
//! into a shared buffer and kills the process on drop (printing its stderr if the test failed).
//!
//! The examples are built once per test run by the harness itself ([`ensure_examples_built`]),
//! with the test binary's profile and target directory: a test never runs a stale server, and a
//! missing example is a failure. The build reports on stderr as it goes (one line per example
//! built), so the first test never looks hung.
//!
//! [`backend_tests!`] generates one `#[test]` per backend for each test body, like monoio's
//! `test_all`: `body::epoll` and `body::uring`. The uring variant is skipped (with a printed
//! `skipped: io_uring unavailable: <reason>`) only when the server refuses `--backend uring`
//! with its documented one-line error and exit status 1; set `RINGPORT_TEST_REQUIRE_URING=1` to
//! turn that skip into a failure.
//!
//! Randomised tests take a fresh seed per run (printed); `RINGPORT_TEST_SEED=<n>` replays one.

#![allow(dead_code)]

pub mod close;
pub mod deploy;
pub mod hostile;
pub mod line;
mod observe;
pub mod packet;
pub mod tls;

#[allow(unused_imports)] // not every test binary watches the kernel or the final stats
pub use observe::*;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Default socket read/write timeout for test clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client keeps retrying to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Per-backend test generation
// ---------------------------------------------------------------------------------------------

/// `backend_tests!("server_name"; body_a, body_b);` generates, for each body
/// `fn body(backend: Backend)`, a module `body` with the tests `epoll` and `uring`.
///
/// A missing example binary fails the test (the harness builds the examples once per run, see
/// [`ensure_examples_built`]); only a precise io_uring refusal skips the uring variant.
macro_rules! backend_tests {
    ($server:literal; $($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn epoll() {
                    if let Some(b) =
                        $crate::common::prepare($server, $crate::common::Backend::Epoll)
                    {
                        super::$name(b)
                    }
                }

                #[test]
                fn uring() {
                    if let Some(b) =
                        $crate::common::prepare($server, $crate::common::Backend::Uring)
                    {
                        super::$name(b)
                    }
                }
            }
        )+
    };
}

/// The IO backend a server is asked to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Epoll,
    Uring,
    Auto,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::Uring => "uring",
            Backend::Auto => "auto",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `RINGPORT_TEST_REQUIRE_URING` asks for io_uring (any value but `0`).
pub fn uring_required() -> bool {
    std::env::var_os("RINGPORT_TEST_REQUIRE_URING").is_some_and(|v| v != "0")
}

/// `target/<profile>` of this test binary (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("test binary {exe:?} is not under target/<profile>/deps"))
        .to_path_buf()
}

/// The test binary's profile name (`debug`, `release` or a custom one).
fn profile_name() -> String {
    profile_dir()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string()
}

/// `cargo build ARGS` for this workspace with the test binary's own profile and target
/// directory.
fn cargo_build_command(args: &[&str]) -> Command {
    let profile_dir = profile_dir();
    let target_dir = profile_dir
        .parent()
        .expect("target dir above the profile dir");
    // The cargo that runs the tests (cargo sets `CARGO` for them), else the one that built them.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    // What cargo sets for this test process describes ringport's test target; inherited, it
    // reaches every build script that watches it (`rerun-if-env-changed`: ring watches
    // CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...), whose fingerprint then flips between this build
    // and the next `cargo test`: ring and everything above it were rebuilt each time.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if is_cargo_test_env(key) {
            cmd.env_remove(key);
        }
    }
    cmd.arg("build")
        .args(args)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match profile_name().as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.arg("--profile").arg(other);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Whether cargo sets the environment variable `key` for the test process it runs (rather
/// than the user setting it for cargo: CARGO_HOME, CARGO_TARGET_DIR, CARGO_PROFILE_* stay).
fn is_cargo_test_env(key: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
        "CARGO_MANIFEST_",
    ]
    .iter()
    .any(|p| key.starts_with(p))
        || [
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&key)
}

/// Runs `cargo build ARGS` for this workspace with the test binary's own profile and target
/// directory; `Err` holds the command and cargo's stderr.
pub fn cargo_build(args: &[&str]) -> Result<(), String> {
    let mut cmd = cargo_build_command(args);
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// One line of build progress on the process's stderr, bypassing the test harness's output
/// capture (`eprintln!` is captured): whoever runs the tests sees it at once.
fn progress(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "[ringport tests] {line}");
    let _ = err.flush();
}

/// What a `compiler-artifact` message of `cargo build --message-format=json` says: the
/// target's name, whether it is an example, and whether it was already up to date.
fn artifact_of(json: &str) -> Option<(&str, bool, bool)> {
    if !json.contains(r#""reason":"compiler-artifact""#) {
        return None;
    }
    let target = &json[json.find(r#""target":{"#)?..];
    let target = &target[..target.find('}')?];
    let name_at = target.find(r#""name":""#)? + r#""name":""#.len();
    let name = &target[name_at..name_at + target[name_at..].find('"')?];
    let example = target.contains(r#""kind":["example"]"#);
    Some((name, example, json.contains(r#""fresh":true"#)))
}

/// Builds every example of this package once per test run, with the profile and target
/// directory of the test binary itself, so that a test never starts a stale server (e.g. after
/// `cargo test --test echo_server`, which does not rebuild examples). Cargo makes this a no-op
/// when they are fresh (`cargo test` with no filter has just built them). The build is
/// visible while it runs: one line per example (and for the library) on stderr as cargo
/// finishes it, then a summary, so the first test never looks hung. A failed build panics: a
/// missing or stale example is a test failure, never a skip.
pub fn ensure_examples_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(build_examples);
    if let Err(e) = result {
        panic!("building the example servers failed: {e}");
    }
}

fn build_examples() -> Result<(), String> {
    let t = Instant::now();
    progress(&format!(
        "building the examples ({}): cargo build --examples ...",
        profile_name()
    ));
    let mut cmd = cargo_build_command(&[
        "--examples",
        "--features",
        "cli",
        "--message-format=json-render-diagnostics",
    ]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {cmd:?}: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Drained meanwhile: a full stderr pipe would stall cargo.
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (mut built, mut fresh) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let Ok(line) = line else { break };
        let Some((name, example, up_to_date)) = artifact_of(&line) else {
            continue;
        };
        if example && up_to_date {
            fresh += 1;
        } else if example {
            built += 1;
            let secs = t.elapsed().as_secs_f64();
            progress(&format!("  example {name} built (+{secs:.1} s)"));
        } else if name == "ringport" && !up_to_date {
            let secs = t.elapsed().as_secs_f64();
            progress(&format!("  library ringport built (+{secs:.1} s)"));
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {cmd:?}: {e}"))?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        progress(&format!("building the examples FAILED ({status})"));
        return Err(format!("{cmd:?} failed ({status}):\n{stderr}"));
    }
    progress(&format!(
        "examples ready in {:.1} s: {built} built, {fresh} up to date",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Path of a built example: `target/<profile>/examples/<name>`, built fresh for this run.
pub fn example_path(name: &str) -> PathBuf {
    ensure_examples_built();
    let p = profile_dir().join("examples").join(name);
    assert!(
        p.is_file(),
        "example binary `{name}` not found at {p:?} after `cargo build --examples`"
    );
    p
}

/// The same as [`example_path`] (kept for the tests that call it before starting a server).
pub fn require_example(name: &str) -> PathBuf {
    example_path(name)
}

/// Called by every generated test before running its body: builds the examples (once) and,
/// for io_uring, checks that the backend is available: a precise refusal skips (printed), or
/// fails under `RINGPORT_TEST_REQUIRE_URING=1`.
pub fn prepare(server: &str, backend: Backend) -> Option<Backend> {
    example_path(server);
    if backend == Backend::Uring {
        // Whether io_uring works does not depend on the example (some need arguments to start).
        if let Err(reason) = uring_availability("echo_server") {
            if uring_required() {
                panic!("io_uring required (RINGPORT_TEST_REQUIRE_URING) but unavailable: {reason}");
            }
            println!("skipped: io_uring unavailable: {reason}");
            return None;
        }
    }
    Some(backend)
}

/// Starts `server --backend uring` once (per binary, cached) to find out whether io_uring works.
/// `Err(reason)` only for the documented refusal ([`is_uring_refusal`]); any other start
/// failure panics: that is a bug, not a skip.
pub fn uring_availability(server: &str) -> Result<(), String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache.get(server) {
        return r.clone();
    }
    let result = match ServerBuilder::new(server).backend(Backend::Uring).spawn() {
        Ok(s) => {
            drop(s);
            Ok(())
        }
        Err(StartError::Exited { status, stderr, .. }) if is_uring_refusal(status, &stderr) => {
            Err(uring_refusal_line(&stderr)
                .unwrap_or_default()
                .trim_start_matches(URING_REFUSAL)
                .to_string())
        }
        Err(e) => panic!("probing `{server} --backend uring` failed unexpectedly: {e}"),
    };
    cache.insert(server.to_string(), result.clone());
    result
}

/// The start of the one line an example prints when the engine returns
/// `ringport::Error::UringUnavailable` (then it exits with status 1).
pub const URING_REFUSAL: &str = "error: io_uring unavailable: ";

/// The refusal line in a server's stderr, if there is one.
pub fn uring_refusal_line(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.starts_with(URING_REFUSAL))
}

/// Whether a server exit is the documented "io_uring unavailable" refusal: exit status 1 and a
/// line starting with [`URING_REFUSAL`]. Nothing else (a panic, a bind error, another message
/// that happens to say "unavailable") counts.
pub fn is_uring_refusal(status: ExitStatus, stderr: &str) -> bool {
    status.code() == Some(1) && uring_refusal_line(stderr).is_some()
}

// ---------------------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------------------

/// Output of a child stream, collected by a background thread.
#[derive(Default)]
struct Collected {
    state: Mutex<(Vec<u8>, bool)>, // (bytes, stream closed)
    cond: Condvar,
}

impl Collected {
    fn push(&self, bytes: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0.extend_from_slice(bytes);
        self.cond.notify_all();
    }
    fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1 = true;
        self.cond.notify_all();
    }
    fn text(&self) -> String {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&st.0).into_owned()
    }
    fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }
    /// Waits until `pred(text)` holds, the stream closes, or `timeout` passes.
    fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if pred(&String::from_utf8_lossy(&st.0)) {
                return true;
            }
            let now = Instant::now();
            if st.1 || now >= deadline {
                return false;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.1 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Why a server did not come up.
#[derive(Debug)]
pub enum StartError {
    Spawn(io::Error),
    /// The process exited before printing its listening line.
    Exited {
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    /// No listening line within [`START_TIMEOUT`].
    Timeout {
        stdout: String,
        stderr: String,
    },
    /// A listening line that does not follow the contract.
    BadLine {
        line: String,
        stderr: String,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spawn(e) => write!(f, "spawn failed: {e}"),
            StartError::Exited {
                status,
                stdout,
                stderr,
            } => write!(
                f,
                "exited ({status}) before listening\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ),
            StartError::Timeout { stdout, stderr } => write!(
                f,
                "no `listening on` line within {START_TIMEOUT:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ),
            StartError::BadLine { line, stderr } => {
                write!(f, "bad listening line {line:?}\n--- stderr ---\n{stderr}")
            }
        }
    }
}

/// Parses `listening on IP:PORT (backend: NAME)`.
pub fn parse_listening_line(line: &str) -> Option<(SocketAddr, String)> {
    let rest = line.trim_end().strip_prefix("listening on ")?;
    let (addr, rest) = rest.split_once(" (backend: ")?;
    let backend = rest.strip_suffix(')')?;
    let addr: SocketAddr = addr.parse().ok()?;
    if backend != "epoll" && backend != "uring" {
        return None;
    }
    Some((addr, backend.to_string()))
}

/// Parses `listening on unix:PATH (backend: NAME)`.
pub fn parse_unix_listening_line(line: &str) -> Option<(PathBuf, String)> {
    let rest = line.trim_end().strip_prefix("listening on unix:")?;
    let (path, backend) = rest.rsplit_once(" (backend: ")?;
    let backend = backend.strip_suffix(')')?;
    if backend != "epoll" && backend != "uring" {
        return None;
    }
    Some((PathBuf::from(path), backend.to_string()))
}

/// Configures a server process before starting it.
pub struct ServerBuilder {
    name: String,
    listen: String,
    backend: Option<Backend>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<u64>,
    deny_uring: Option<i32>,
    cgroup: Option<PathBuf>,
}

impl ServerBuilder {
    pub fn new(name: &str) -> Self {
        ServerBuilder {
            name: name.to_string(),
            listen: "127.0.0.1:0".into(),
            backend: None,
            args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info".into())],
            nofile: None,
            deny_uring: None,
            cgroup: None,
        }
    }
    /// Passes `--listen <addr>` instead of `127.0.0.1:0` (e.g. `unix:PATH`; the server's
    /// [`Server::unix_path`] is then set and its `addr` is `0.0.0.0:0`).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }
    /// Passes `--backend <b>` (without it the server chooses, e.g. from `RINGPORT_BACKEND`).
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = Some(b);
        self
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<S: AsRef<str>>(mut self, a: &[S]) -> Self {
        self.args.extend(a.iter().map(|s| s.as_ref().to_string()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Runs the server under `RLIMIT_NOFILE = n` (soft and hard).
    pub fn nofile_limit(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }
    /// Installs a seccomp filter in the child that makes `io_uring_setup` fail with `errno`
    /// (ENOSYS: kernel without io_uring; EPERM: io_uring disabled by policy).
    pub fn deny_io_uring(mut self, errno: i32) -> Self {
        self.deny_uring = Some(errno);
        self
    }

    /// Starts the server inside a cgroup: the child writes itself into `procs` (the cgroup's
    /// `cgroup.procs`) before it runs the server, so that all of its memory is charged there.
    pub fn join_cgroup(mut self, procs: PathBuf) -> Self {
        self.cgroup = Some(procs);
        self
    }

    pub fn spawn(self) -> Result<Server, StartError> {
        let exe = example_path(&self.name);
        let mut cmd = Command::new(&exe);
        cmd.arg("--listen").arg(&self.listen);
        if let Some(b) = self.backend {
            cmd.arg("--backend").arg(b.name());
        }
        cmd.args(&self.args);
        cmd.env_remove("RINGPORT_BACKEND");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let nofile = self.nofile;
        let deny = self.deny_uring;
        let cgroup = self.cgroup.as_ref().map(|p| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in a path")
        });
        if nofile.is_some() || deny.is_some() || cgroup.is_some() {
            // SAFETY: only async-signal-safe syscalls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(n) = nofile {
                        let lim = libc::rlimit {
                            rlim_cur: n as libc::rlim_t,
                            rlim_max: n as libc::rlim_t,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    if let Some(procs) = &cgroup {
                        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                        if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                            return Err(io::Error::last_os_error());
                        }
                        libc::close(fd);
                    }
                    if let Some(errno) = deny {
                        deny_io_uring_setup(errno)?;
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(StartError::Spawn)?;

        let stderr = Arc::new(Collected::default());
        let stdout = Arc::new(Collected::default());
        {
            let mut pipe = child.stderr.take().expect("stderr piped");
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => sink.push(&buf[..n]),
                    }
                }
                sink.close();
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        {
            let pipe = child.stdout.take().expect("stdout piped");
            let sink = Arc::clone(&stdout);
            thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            sink.push(&line);
                            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                        }
                    }
                }
                sink.close();
            });
        }

        let deadline = Instant::now() + START_TIMEOUT;
        let fail = |child: &mut Child, err: StartError| -> StartError {
            let _ = child.kill();
            let _ = child.wait();
            err
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                let e = StartError::Timeout {
                    stdout: stdout.text(),
                    stderr: stderr.text(),
                };
                return Err(fail(&mut child, e));
            }
            match rx.recv_timeout(deadline - now) {
                Ok(line) => {
                    if !line.starts_with("listening on ") {
                        continue;
                    }
                    let parsed = parse_listening_line(&line).map(|(a, b)| (a, None, b));
                    let parsed = parsed.or_else(|| {
                        let (path, b) = parse_unix_listening_line(&line)?;
                        Some((SocketAddr::from(([0, 0, 0, 0], 0)), Some(path), b))
                    });
                    let Some((addr, unix_path, named)) = parsed else {
                        let e = StartError::BadLine {
                            line,
                            stderr: stderr.text(),
                        };
                        return Err(fail(&mut child, e));
                    };
                    if let Some(b) = self.backend {
                        if b != Backend::Auto && named != b.name() {
                            let e = StartError::BadLine {
                                line: format!("{} (asked for --backend {b})", line.trim_end()),
                                stderr: stderr.text(),
                            };
                            return Err(fail(&mut child, e));
                        }
                    }
                    return Ok(Server {
                        name: self.name,
                        child,
                        addr,
                        unix_path,
                        backend: named,
                        stderr,
                        stdout,
                        exit: None,
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting. Collect its status and stderr.
                    let status = wait_child(&mut child, Duration::from_secs(10));
                    let Some(status) = status else {
                        let e = StartError::Timeout {
                            stdout: stdout.text(),
                            stderr: stderr.text(),
                        };
                        return Err(fail(&mut child, e));
                    };
                    stderr.wait_closed(Duration::from_secs(5));
                    return Err(StartError::Exited {
                        status,
                        stdout: stdout.text(),
                        stderr: stderr.text(),
                    });
                }
            }
        }
    }

    /// Like [`spawn`](Self::spawn), panicking with the collected output on failure.
    pub fn start(self) -> Server {
        let desc = format!("{} {:?} {:?}", self.name, self.backend, self.args);
        self.spawn()
            .unwrap_or_else(|e| panic!("server `{desc}` did not start: {e}"))
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// seccomp-bpf: `io_uring_setup` fails with `errno`, everything else allowed.
fn deny_io_uring_setup(errno: i32) -> io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    compile_error!("deny_io_uring_setup: add the AUDIT_ARCH of this architecture");
    const IO_URING_SETUP: u32 = 425;

    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut filter = [
        stmt(load, 4), // seccomp_data.arch
        jump(AUDIT_ARCH, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(load, 0), // seccomp_data.nr
        jump(IO_URING_SETUP, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | (errno as u32 & 0xffff)),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls with a valid, live filter program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A running example server. Killed (SIGKILL) on drop; its stderr is printed if the test panics.
pub struct Server {
    name: String,
    child: Child,
    /// The address from the listening line (`0.0.0.0:0` for a Unix socket).
    pub addr: SocketAddr,
    /// The Unix socket path from a `listening on unix:PATH` line.
    pub unix_path: Option<PathBuf>,
    /// The backend named in the listening line.
    pub backend: String,
    stderr: Arc<Collected>,
    stdout: Arc<Collected>,
    exit: Option<ExitStatus>,
}

impl Server {
    /// Starts `name --listen 127.0.0.1:0 --backend <backend> <extra_args>` with `RUST_LOG=info`.
    pub fn start(name: &str, backend: Backend, extra_args: &[&str]) -> Server {
        ServerBuilder::new(name)
            .backend(backend)
            .args(extra_args)
            .start()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    pub fn stderr_len(&self) -> usize {
        self.stderr.len()
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }

    /// Waits until the stderr collected so far satisfies `pred`.
    pub fn wait_for_stderr(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        self.stderr.wait_for(timeout, pred)
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = wait_child(&mut self.child, timeout);
        }
        self.exit
    }

    pub fn is_alive(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.exit = Some(st);
                false
            }
            _ => true,
        }
    }

    /// Panics (with the stderr) if the process has exited.
    pub fn assert_alive(&mut self, context: &str) {
        if !self.is_alive() {
            self.stderr.wait_closed(Duration::from_secs(2));
            panic!(
                "{}: server `{}` died ({:?})\n--- stderr ---\n{}",
                context,
                self.name,
                self.exit,
                tail(&self.stderr.text(), 8000)
            );
        }
    }

    /// Resident set size in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// CPU time (user + system) consumed so far, from /proc/<pid>/stat.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/<pid>/stat");
        // Fields after the `(comm)` which may contain spaces.
        let after = &stat[stat.rfind(')').expect("comm in stat") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After comm: state is field 3 (index 0 here); utime is field 14, stime 15.
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_secs_f64((utime + stime) as f64 / hz as f64)
    }

    /// Minor page faults so far (`minflt` of /proc/<pid>/stat): pages the process touched
    /// for the first time, e.g. after the allocator handed memory back and took it again.
    pub fn minor_faults(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/<pid>/stat");
        let after = &stat[stat.rfind(')').expect("comm in stat") + 2..];
        // After comm: state is field 3 (index 0 here); minflt is field 10.
        after
            .split_whitespace()
            .nth(7)
            .expect("minflt")
            .parse()
            .expect("minflt")
    }

    /// Number of open descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// What the server's descriptors point to (`socket`, `anon_inode:[eventpoll]`, ...), with
    /// counts; for diagnostics.
    pub fn fd_summary(&self) -> String {
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) {
            for e in dir.flatten() {
                let target = std::fs::read_link(e.path())
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "?".into());
                let kind = match target.split_once(":[") {
                    Some((k, rest)) if k == "socket" || k == "pipe" => {
                        let _ = rest;
                        k.to_string()
                    }
                    _ => target,
                };
                *kinds.entry(kind).or_default() += 1;
            }
        }
        format!("{kinds:?}")
    }

    /// Connects a new client (retrying while refused), with [`IO_TIMEOUT`] socket timeouts.
    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            self.stderr.wait_closed(Duration::from_secs(2));
            eprintln!(
                "--- stderr of `{}` (pid {}, backend {}) ---\n{}\n--- end of stderr ---",
                self.name,
                self.child.id(),
                self.backend,
                tail(&self.stderr.text(), 16000)
            );
        }
    }
}

/// Asserts a process stopped by `sig` exited with status 0; a death by the signal itself means
/// the handler was not installed (yet).
pub fn assert_clean_exit(status: ExitStatus, sig: i32, context: &str) {
    use std::os::unix::process::ExitStatusExt;
    if status.signal() == Some(sig) {
        panic!(
            "{context}: the process was killed by signal {sig} itself (no SIGINT/SIGTERM handler \
             installed at that moment), expected a graceful exit 0"
        );
    }
    assert!(
        status.success(),
        "{context}: exit status {status}, expected 0"
    );
}

/// The last `max` bytes of `s` (on a char boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Connects to `addr`, retrying (connection refused, ...) for [`CONNECT_TIMEOUT`]; sets
/// `TCP_NODELAY` and [`IO_TIMEOUT`] read/write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect to {addr} failed for {CONNECT_TIMEOUT:?}: {e}"),
        }
    }
}

/// Reads exactly `n` bytes within `timeout`.
pub fn read_exact_timeout(s: &mut TcpStream, n: usize, timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {got}/{n} bytes"),
            ));
        }
        s.set_read_timeout(Some(deadline - now))?;
        match s.read(&mut out[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {got}/{n} bytes"),
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("after {got}/{n} bytes: {e}"),
                ))
            }
        }
    }
    Ok(out)
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Reset,
}

/// Reads until EOF or reset within `timeout`; returns the bytes read and how it ended, or an
/// error (with the bytes read so far in the message) on timeout.
pub fn read_until_close(s: &mut TcpStream, timeout: Duration) -> io::Result<(Vec<u8>, Closed)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connection still open after {timeout:?} ({} bytes read: {:?})",
                    out.len(),
                    String::from_utf8_lossy(&out[..out.len().min(200)])
                ),
            ));
        }
        s.set_read_timeout(Some(deadline - now))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok((out, Closed::Eof)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
            Err(e) if is_reset(&e) => return Ok((out, Closed::Reset)),
            Err(e) => return Err(e),
        }
    }
}

/// Reads until EOF (a reset is an error) within `timeout`.
pub fn read_until_eof(s: &mut TcpStream, timeout: Duration) -> io::Result<Vec<u8>> {
    match read_until_close(s, timeout)? {
        (data, Closed::Eof) => Ok(data),
        (data, Closed::Reset) => Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("reset (instead of EOF) after {} bytes", data.len()),
        )),
    }
}

/// Asserts the server closes the connection (EOF or reset) within `timeout`; returns what was
/// read before.
pub fn expect_closed(s: &mut TcpStream, timeout: Duration, context: &str) -> (Vec<u8>, Closed) {
    read_until_close(s, timeout)
        .unwrap_or_else(|e| panic!("{context}: expected the server to close the connection: {e}"))
}

/// Closes the socket with a reset (SO_LINGER 0).
pub fn reset_close(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
}

/// Writes `data` and expects exactly the same bytes back.
pub fn echo_round_trip(s: &mut TcpStream, data: &[u8], context: &str) {
    s.write_all(data)
        .unwrap_or_else(|e| panic!("{context}: write {} bytes: {e}", data.len()));
    let back = read_exact_timeout(s, data.len(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{context}: reading the echo of {} bytes: {e}", data.len()));
    assert_bytes_eq(&back, data, context);
}

/// `assert_eq!` for byte buffers with a compact message (first differing offset).
pub fn assert_bytes_eq(got: &[u8], want: &[u8], context: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| {
        let end = (first + 16).min(b.len());
        format!("{:02x?}", &b[first.min(b.len())..end])
    };
    panic!(
        "{context}: bytes differ: got {} bytes, want {}; first difference at offset {first}: got {} want {}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

/// Writes `chunks` from a second thread (one `write_all` each, `TCP_NODELAY`) while reading
/// `expected_len` bytes back in this one; returns them. Never deadlocks on full buffers.
pub fn exchange(
    s: &mut TcpStream,
    chunks: Vec<Vec<u8>>,
    expected_len: usize,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let mut w = s.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<()> {
        for c in &chunks {
            w.write_all(c)?;
        }
        w.flush()
    });
    let res = read_exact_timeout(s, expected_len, timeout);
    if res.is_err() {
        let _ = s.shutdown(Shutdown::Both);
    }
    let wres = writer.join().expect("writer thread panicked");
    let data = res?;
    wres.map_err(|e| io::Error::new(e.kind(), format!("writer: {e}")))?;
    Ok(data)
}

/// Splits `data` into consecutive chunks of random sizes in `1..=max_chunk`.
pub fn split_random(data: &[u8], rng: &mut Rng, max_chunk: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let n = (1 + rng.below(max_chunk as u64) as usize).min(data.len() - i);
        out.push(data[i..i + n].to_vec());
        i += n;
    }
    out
}

/// Splits `data` cycling through the given chunk sizes (each clamped to at least 1).
pub fn split_by_sizes(data: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < data.len() {
        let n = sizes[k % sizes.len()].max(1).min(data.len() - i);
        out.push(data[i..i + n].to_vec());
        i += n;
        k += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

/// The seed for randomised tests: `RINGPORT_TEST_SEED` to replay a run, else a fresh one per
/// test run (the same for every test of this binary), printed by each test that uses it.
pub fn test_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| match std::env::var("RINGPORT_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RINGPORT_TEST_SEED={s:?} is not a u64")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    });
    println!("seed: {seed} (replay with RINGPORT_TEST_SEED={seed})");
    seed
}

/// xorshift64* — small, seeded, reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 to spread small seeds; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// In `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// A proptest runner seeded from [`test_seed`] (fresh per run, replayable), no regression
/// files, bounded shrinking (each case talks to a live server).
pub fn proptest_runner(cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(test_seed()),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    })
}

/// Runs `body` in a thread and panics if it does not finish within `timeout` (the thread is
/// left behind; the process-level servers are killed by their guards when the test ends).
pub fn within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: did not finish within {timeout:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// Waits until `f` returns true (polling; for things with no signal), or panics at the deadline.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `program args` runs and exits 0 (`tool` is the name printed); when not, prints the
/// skip line, and panics instead under `RINGPORT_TEST_REQUIRE_TOOLS=1`.
pub fn tool_available(tool: &str, program: &str, args: &[&str], why: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("RINGPORT_TEST_REQUIRE_TOOLS").is_some_and(|v| v != "0") {
            panic!("{tool} required (RINGPORT_TEST_REQUIRE_TOOLS) but not installed ({why})");
        }
        println!("skipped: {tool} not installed ({why})");
    }
    ok
}
