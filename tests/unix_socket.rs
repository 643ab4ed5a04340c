#![cfg(target_os = "linux")] // Unix domain sockets: Linux backends (Windows: see ARCHITECTURE.md)
//! Servers on a Unix domain socket (stream), on both Linux backends: echo in-process and from
//! `echo_server --listen unix:PATH` (the acceptance), with outside clients (socat,
//! python's socket module); the peer's credentials in `conn.info().unix`; a stale socket file
//! replaced, a live one "address in use", the file removed on a clean shutdown; PROXY and TLS
//! layered on a Unix listener as on TCP; per-IP limits that do not apply to Unix peers.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use common::support;
use common::*;
use ringport::codec::Raw;
use ringport::{
    BackendKind, Conn, ConnInfo, Error, Frame, Handler, ListenAddr, Server, UNIX_PLACEHOLDER_ADDR,
};

backend_tests!("echo_server";
    echo_over_a_unix_socket,
    peer_credentials_are_our_own,
    a_stale_socket_file_is_replaced,
    a_live_socket_is_address_in_use,
    echo_server_listens_on_a_unix_path,
    outside_clients_socat_and_python,
    proxy_header_on_a_unix_listener,
    tls_over_a_unix_socket,
    per_ip_limits_do_not_apply_to_unix_peers,
    a_restart_hands_the_unix_socket_over,
    socket_activation_on_a_unix_socket,
);

fn kind(b: Backend) -> BackendKind {
    match b {
        Backend::Uring => BackendKind::Uring,
        _ => BackendKind::Epoll,
    }
}

/// A fresh directory for one test's socket files (removed on drop).
struct TmpDir(PathBuf);
impl TmpDir {
    fn new(test: &str, b: Backend) -> TmpDir {
        let dir = std::env::temp_dir().join(format!(
            "ringport-unix-{}-{test}-{}",
            std::process::id(),
            b.name()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TmpDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Echoes; sends each connection's info to the test on open.
struct Echo(Option<mpsc::Sender<ConnInfo>>);
impl Handler for Echo {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(conn.info().clone());
        }
    }
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        conn.write(frame.raw());
    }
}

fn echo_server(path: &Path, infos: Option<mpsc::Sender<ConnInfo>>) -> Server {
    let infos = Mutex::new(infos);
    Server::unix(path, Raw, move |_| Echo(infos.lock().unwrap().clone()))
}

fn unix_client(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {path:?}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn unix_echo(s: &mut UnixStream, data: &[u8], context: &str) {
    s.write_all(data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{context}: echo of {} bytes: {e}", data.len()));
    assert_bytes_eq(&got, data, context);
}

/// Many clients, spread over two IO threads sharing the one socket, each echoed in full (256
/// KiB, more than a socket buffer); the file is removed by the clean shutdown.
fn echo_over_a_unix_socket(b: Backend) {
    let Some(mut engine) = support::engine(kind(b), 2) else {
        return;
    };
    let dir = TmpDir::new("echo", b);
    let path = dir.path("echo.sock");
    let server = engine.add_server(echo_server(&path, None)).unwrap();
    assert_eq!(server.unix_path(), Some(path.as_path()));
    assert_eq!(server.listen_addr(), ListenAddr::Unix(path.clone()));
    assert_eq!(server.local_addr(), UNIX_PLACEHOLDER_ADDR);
    let running = engine.start().unwrap();
    let mut rng = Rng::new(test_seed());
    let data = rng.bytes(256 << 10);
    let mut clients: Vec<_> = (0..8).map(|_| unix_client(&path)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        unix_echo(c, &data[..(i + 1) * 1000], "small echo");
    }
    let big = &mut clients[0];
    let mut writer = big.try_clone().unwrap();
    let send = data.clone();
    let t = std::thread::spawn(move || writer.write_all(&send).unwrap());
    let mut got = vec![0u8; data.len()];
    big.read_exact(&mut got).unwrap();
    t.join().unwrap();
    assert_bytes_eq(&got, &data, "256 KiB echo");
    drop(clients);
    wait_until(Duration::from_secs(10), "every connection closed", || {
        server.stats().snapshot().active == 0
    });
    let snap = server.stats().snapshot();
    assert_eq!(snap.accepted, 8);
    running.shutdown_handle().shutdown();
    running.join();
    assert!(
        !path.exists(),
        "the socket file is removed on a clean shutdown"
    );
}

/// `conn.info().unix` holds our own pid, uid and gid (SO_PEERCRED) and the path; `peer`,
/// `local` and `client` are the placeholder 0.0.0.0:0.
fn peer_credentials_are_our_own(b: Backend) {
    let Some(mut engine) = support::engine(kind(b), 1) else {
        return;
    };
    let dir = TmpDir::new("cred", b);
    let path = dir.path("cred.sock");
    let (tx, rx) = mpsc::channel();
    engine.add_server(echo_server(&path, Some(tx))).unwrap();
    let running = engine.start().unwrap();
    let mut c = unix_client(&path);
    unix_echo(&mut c, b"hello", "echo");
    let info = rx.recv_timeout(IO_TIMEOUT).expect("on_open ran");
    let unix = info.unix.as_deref().expect("a Unix peer");
    let cred = unix.cred.expect("SO_PEERCRED on Linux");
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    assert_eq!(cred.pid, std::process::id());
    assert_eq!((cred.uid, cred.gid), (uid, gid));
    assert_eq!(unix.path.as_deref(), Some(path.as_path()));
    assert_eq!(info.peer, UNIX_PLACEHOLDER_ADDR);
    assert_eq!(info.local, UNIX_PLACEHOLDER_ADDR);
    assert_eq!(info.client, UNIX_PLACEHOLDER_ADDR);
    running.shutdown_handle().shutdown();
    running.join();
}

/// A socket file whose server died (nobody accepts: connecting is refused) is replaced.
fn a_stale_socket_file_is_replaced(b: Backend) {
    let Some(mut engine) = support::engine(kind(b), 1) else {
        return;
    };
    let dir = TmpDir::new("stale", b);
    let path = dir.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "the dead listener left its file");
    assert_eq!(
        UnixStream::connect(&path).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    engine.add_server(echo_server(&path, None)).unwrap();
    let running = engine.start().unwrap();
    unix_echo(
        &mut unix_client(&path),
        b"fresh",
        "echo on the replaced socket",
    );
    running.shutdown_handle().shutdown();
    running.join();
}

/// A socket a live server listens on is "address in use" for a second server, which leaves it
/// (and its file) alone; a path that is not a socket is never removed.
fn a_live_socket_is_address_in_use(b: Backend) {
    let Some(mut first) = support::engine(kind(b), 1) else {
        return;
    };
    let dir = TmpDir::new("live", b);
    let path = dir.path("live.sock");
    first.add_server(echo_server(&path, None)).unwrap();
    let running = first.start().unwrap();
    let mut second = support::engine(kind(b), 1).unwrap();
    match second.add_server(echo_server(&path, None)) {
        Err(Error::ListenUnix { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{source}");
            let msg = Error::ListenUnix { path: p, source }.to_string();
            assert!(msg.contains("address in use"), "{msg}");
        }
        Err(e) => panic!("expected address in use, got {e}"),
        Ok(_) => panic!("a second server bound a live socket"),
    }
    drop(second);
    unix_echo(
        &mut unix_client(&path),
        b"still",
        "the first server still serves",
    );

    let plain = dir.path("plain");
    std::fs::write(&plain, b"data").unwrap();
    let mut third = support::engine(kind(b), 1).unwrap();
    let e = third.add_server(echo_server(&plain, None)).err().unwrap();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&plain).unwrap(), b"data");
    running.shutdown_handle().shutdown();
    running.join();
}

/// `echo_server --listen unix:<dir>/echo.sock` echoes (the acceptance); its line says
/// `listening on unix:PATH`; SIGTERM removes the file.
fn echo_server_listens_on_a_unix_path(b: Backend) {
    let dir = TmpDir::new("example", b);
    let path = dir.path("echo.sock");
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .listen(format!("unix:{}", path.display()))
        .start();
    assert_eq!(server.unix_path.as_deref(), Some(path.as_path()));
    let mut c = unix_client(&path);
    for msg in [&b"hello over a unix socket"[..], &[7u8; 70_000][..]] {
        unix_echo(&mut c, msg, "echo_server over unix");
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "EOF after a half-close");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15)).expect("exits");
    assert_clean_exit(status, libc::SIGTERM, "SIGTERM");
    assert!(!path.exists(), "echo_server removed its socket file");
}

/// Clients that are not ours: `socat - UNIX-CONNECT:PATH` and python's socket module.
fn outside_clients_socat_and_python(b: Backend) {
    let dir = TmpDir::new("outside", b);
    let path = dir.path("echo.sock");
    let _server = ServerBuilder::new("echo_server")
        .backend(b)
        .listen(format!("unix:{}", path.display()))
        .start();
    let mut ran = 0;
    if common::deploy::tool("socat", "an outside Unix socket client").is_some() {
        let out = run_with_input(
            Command::new("socat")
                .arg("-t5")
                .arg("-")
                .arg(format!("UNIX-CONNECT:{}", path.display())),
            b"through socat\n",
        );
        assert_eq!(out, b"through socat\n", "socat got its echo");
        ran += 1;
    }
    if common::tls::have_python() {
        let script = "import socket,sys\n\
            s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM)\n\
            s.settimeout(10)\n\
            s.connect(sys.argv[1])\n\
            s.sendall(b'through python\\n')\n\
            s.shutdown(socket.SHUT_WR)\n\
            d=b''\n\
            while True:\n\
            \x20   c=s.recv(4096)\n\
            \x20   if not c: break\n\
            \x20   d+=c\n\
            sys.stdout.buffer.write(d)\n";
        let out = run_with_input(
            Command::new("python3").arg("-c").arg(script).arg(&path),
            b"",
        );
        assert_eq!(out, b"through python\n", "python got its echo");
        ran += 1;
    }
    println!("outside clients run: {ran}");
}

/// Runs `cmd` with `input` on stdin; its stdout (bounded in time).
fn run_with_input(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let input_done = within(Duration::from_secs(20), "outside client", move || {
        child.wait_with_output().unwrap()
    });
    assert!(
        input_done.status.success(),
        "outside client failed: {}",
        String::from_utf8_lossy(&input_done.stderr)
    );
    input_done.stdout
}

/// `line_server --listen unix:PATH --proxy-protocol required`: `WHO` answers the client the
/// PROXY header gave; without a header the connection is closed as on TCP.
fn proxy_header_on_a_unix_listener(b: Backend) {
    let dir = TmpDir::new("proxy", b);
    let path = dir.path("line.sock");
    let _server = ServerBuilder::new("line_server")
        .backend(b)
        .listen(format!("unix:{}", path.display()))
        .args(&["--proxy-protocol", "required"])
        .start();
    let mut c = unix_client(&path);
    c.write_all(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 6379\r\nWHO\r\n")
        .unwrap();
    let mut r = BufReader::new(&c);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim_end(),
        "+OK ready",
        "the greeting, once the header is read"
    );
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "+192.0.2.7:40000");

    let mut bare = unix_client(&path);
    bare.write_all(b"WHO\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = bare.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains('+'),
        "no answer without a header: {rest:?}"
    );
}

/// `echo_server --listen unix:PATH` with TLS flags: a rustls client over the Unix socket.
fn tls_over_a_unix_socket(b: Backend) {
    let dir = TmpDir::new("tls", b);
    let path = dir.path("tls.sock");
    let pki = common::tls::Pki::new();
    let _server = ServerBuilder::new("echo_server")
        .backend(b)
        .listen(format!("unix:{}", path.display()))
        .args(&pki.server_args(false))
        .start();
    let sock = unix_client(&path);
    let name = ringport::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = ringport::rustls::ClientConnection::new(pki.rustls_client(), name).unwrap();
    let mut tls = ringport::rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"secret over a unix socket").unwrap();
    let mut got = [0u8; 25];
    tls.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"secret over a unix socket");
    assert_eq!(
        tls.conn.protocol_version(),
        Some(ringport::rustls::ProtocolVersion::TLSv1_3)
    );
}

/// Unix peers have no IP address: `--max-connections-per-ip 1` refuses none of them (they
/// are not all taken for one address), while `--max-connections` still applies.
fn per_ip_limits_do_not_apply_to_unix_peers(b: Backend) {
    let dir = TmpDir::new("perip", b);
    let path = dir.path("perip.sock");
    let _server = ServerBuilder::new("echo_server")
        .backend(b)
        .listen(format!("unix:{}", path.display()))
        .args(&["--max-connections-per-ip", "1", "--max-connections", "3"])
        .start();
    let mut open: Vec<_> = (0..3).map(|_| unix_client(&path)).collect();
    for c in &mut open {
        unix_echo(c, b"served", "under the per-IP limit of 1");
    }
    let mut fourth = unix_client(&path);
    let _ = fourth.write_all(b"x");
    let mut rest = Vec::new();
    match fourth.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "the fourth was served: {rest:?}"),
        Err(e) => assert!(!is_timeout(&e), "the fourth was not closed: {e}"),
    }
}

/// SIGHUP: the successor inherits the Unix listener; the retired process serves its held
/// connection, then exits without removing the file; the successor's clean stop removes it.
fn a_restart_hands_the_unix_socket_over(b: Backend) {
    use common::deploy::{kill, successor_pid, wait_gone, Successors};
    let dir = TmpDir::new("restart", b);
    let path = dir.path("echo.sock");
    let mut server = ServerBuilder::new("echo_server")
        .backend(b)
        .listen(format!("unix:{}", path.display()))
        .args(&["--io-threads", "2"])
        .start();
    let mut held = unix_client(&path);
    unix_echo(&mut held, b"before", "held, before the restart");
    let seen = server.stderr_text().len();
    kill(server.pid(), libc::SIGHUP);
    assert!(
        server.wait_for_stderr(START_TIMEOUT, |log| successor_pid(&log[seen..]).is_some()),
        "no successor handed over:\n{}",
        server.stderr_text()
    );
    let succ = successor_pid(&server.stderr_text()[seen..]).unwrap();
    let _reap = Successors(vec![succ]);
    assert!(
        server.wait_for_stderr(START_TIMEOUT, |log| log[seen..]
            .contains("using inherited listening socket")),
        "the successor took the inherited socket:\n{}",
        server.stderr_text()
    );
    unix_echo(
        &mut unix_client(&path),
        b"after",
        "a new client after the restart",
    );
    unix_echo(&mut held, b"held", "held, served by the retired process");
    drop(held);
    assert!(
        server.wait_exit(Duration::from_secs(20)).is_some(),
        "the retired process exits with its last connection"
    );
    assert!(
        path.exists(),
        "the retired process left the successor's socket file"
    );
    unix_echo(
        &mut unix_client(&path),
        b"successor",
        "the successor serves",
    );
    kill(succ, libc::SIGTERM);
    assert!(
        wait_gone(succ, Duration::from_secs(20)),
        "the successor stops"
    );
    assert!(
        !path.exists(),
        "the successor removed the socket file it was handed"
    );
}

/// systemd socket activation of a Unix socket (`systemd-socket-activate -l PATH`): the
/// server serves on it and names it; the file is systemd's, so a clean stop leaves it.
fn socket_activation_on_a_unix_socket(b: Backend) {
    use common::deploy::{kill, tool, Proc};
    let Some(activate) = tool("systemd-socket-activate", "Debian package systemd") else {
        return;
    };
    let dir = TmpDir::new("activate", b);
    let path = dir.path("activated.sock");
    let mut cmd = Command::new(activate);
    cmd.arg("-l")
        .arg(&path)
        .arg(require_example("echo_server"))
        .args(["--backend", b.name(), "--io-threads", "2"])
        .args(["--listen", "unix:unused.sock"])
        .env_remove("RINGPORT_BACKEND")
        .env("RUST_LOG", "info");
    let mut p = Proc::spawn(&mut cmd);
    p.wait_line("Listening on", START_TIMEOUT)
        .unwrap_or_else(|| panic!("systemd-socket-activate did not listen:\n{}", p.output()));
    // It execs the server at the first connection.
    let mut first = unix_client(&path);
    unix_echo(&mut first, b"activated", "the activated server echoes");
    let line = p
        .wait_line("listening on ", START_TIMEOUT)
        .unwrap_or_else(|| panic!("no listening line:\n{}", p.output()));
    assert!(
        line.starts_with(&format!("unix:{} ", path.display())),
        "the server names the inherited socket: {line}"
    );
    for i in 0..10 {
        unix_echo(&mut unix_client(&path), format!("x{i}").as_bytes(), "echo");
    }
    drop(first);
    kill(p.child.id() as i32, libc::SIGTERM);
    let st = p
        .wait_exit(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(st.success(), "{st:?}\n{}", p.output());
    assert!(path.exists(), "systemd's socket file is not ours to remove");
    assert!(
        !Path::new("unused.sock").exists(),
        "the configured path was never bound"
    );
}
