//! Example servers as child processes: [`ServerBuilder`] spawns one, [`Server`] waits for its
//! listening line, collects its output and kills it on drop.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

// ---------------------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------------------

/// Output of a child stream, collected by a background thread.
#[derive(Default)]
pub(super) struct Collected {
    state: Mutex<(Vec<u8>, bool)>, // (bytes, stream closed)
    cond: Condvar,
}

impl Collected {
    pub(super) fn push(&self, bytes: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0.extend_from_slice(bytes);
        self.cond.notify_all();
    }
    pub(super) fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1 = true;
        self.cond.notify_all();
    }
    pub(super) fn text(&self) -> String {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&st.0).into_owned()
    }
    pub(super) fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }
    /// Waits until `pred(text)` holds, the stream closes, or `timeout` passes.
    pub(super) fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
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
    pub(super) fn wait_closed(&self, timeout: Duration) {
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
    pub(super) stderr: Arc<Collected>,
    pub(super) stdout: Arc<Collected>,
    pub(super) exit: Option<ExitStatus>,
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
