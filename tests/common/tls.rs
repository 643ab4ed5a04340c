//! TLS helpers for the process-level tests: certificates made at test time (rcgen) and written
//! as PEM files to a temporary directory, the example flags that use them, and clients nobody
//! here wrote: Python's `ssl` module, `openssl s_client`, and rustls' own blocking stream.
//!
//! A test needing `python3` or `openssl` calls [`have_tool`] first: when the tool is missing it
//! prints `skipped: <tool> not installed (...)` and the test returns, unless
//! `RINGPORT_TEST_REQUIRE_TOOLS=1`, which turns the skip into a failure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringport::rustls::{self, pki_types};

use super::support::certs::Ca;
use super::{Backend, Server, IO_TIMEOUT};

/// Whether `tool` can be run (`tool` answers `args`): [`tool_available`] with the tool as
/// its own program.
pub fn have_tool(tool: &str, args: &[&str], why: &str) -> bool {
    super::tool_available(tool, tool, args, why)
}

pub fn have_python() -> bool {
    have_tool(
        "python3",
        &["-c", "import ssl"],
        "Python's ssl module is the TLS client",
    )
}

pub fn have_openssl() -> bool {
    have_tool(
        "openssl",
        &["version"],
        "openssl s_client/s_server is the TLS peer; apt-get install openssl",
    )
}

/// A CA, a server certificate for `localhost`, `ringport.test` and 127.0.0.1, and client
/// certificates (one signed by the CA, one self-signed), as PEM files in a directory removed on
/// drop.
pub struct Pki {
    pub dir: PathBuf,
    ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringport-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("ringport example test CA");
        std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
        let pki = Pki { dir, ca };
        pki.issue("server", &["localhost", "ringport.test", "127.0.0.1"], true);
        pki.issue("client", &["client.test"], true);
        pki.issue("stranger", &["client.test"], false);
        pki
    }

    /// Writes `<name>.pem` and `<name>-key.pem`, signed by the CA or self-signed.
    fn issue(&self, name: &str, sans: &[&str], by_ca: bool) {
        let (cert, key) = self.ca.issue(sans, by_ca);
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(
            self.dir.join(format!("{name}-key.pem")),
            key.serialize_pem(),
        )
        .unwrap();
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// The flags that make an example serve TLS with the server certificate (and ALPN
    /// `ringport-test,http/1.1`); with `client_auth`, clients need a certificate of the CA.
    pub fn server_args(&self, client_auth: bool) -> Vec<String> {
        let mut a = vec![
            "--tls-cert".to_string(),
            self.path("server.pem"),
            "--tls-key".to_string(),
            self.path("server-key.pem"),
            "--alpn".to_string(),
            "ringport-test,http/1.1".to_string(),
        ];
        if client_auth {
            a.push("--tls-client-ca".to_string());
            a.push(self.path("ca.pem"));
        }
        a
    }

    /// A rustls client configuration trusting the CA (no client certificate).
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(self.ca.roots())
                .with_no_client_auth(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tcp_proxy` in front of the TLS server at `upstream`: it verifies the upstream with the
/// CA of `pki` and the name `name`.
pub fn upstream_tls_proxy(backend: Backend, pki: &Pki, upstream: SocketAddr, name: &str) -> Server {
    let (up, ca) = (upstream.to_string(), pki.path("ca.pem"));
    let args = [
        "--upstream",
        &up,
        "--upstream-tls",
        "--upstream-ca",
        &ca,
        "--upstream-name",
        name,
    ];
    Server::start("tcp_proxy", backend, &args)
}

/// A blocking rustls client stream to `addr` as `localhost`.
pub type RustlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn rustls_connect(pki: &Pki, addr: SocketAddr) -> RustlsStream {
    let sock = super::connect(addr);
    let name = pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(pki.rustls_client(), name).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// One echo round trip over a rustls stream.
pub fn rustls_echo(s: &mut RustlsStream, data: &[u8], context: &str) {
    s.write_all(data)
        .unwrap_or_else(|e| panic!("{context}: write: {e}"));
    s.flush().unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{context}: read: {e}"));
    assert_eq!(got, data, "{context}: echo differs");
}

/// What a Python `ssl` client saw.
#[derive(Debug, Default)]
pub struct PyResult {
    /// `TLSv1.3`, ... (empty if the handshake failed).
    pub version: String,
    pub cipher: String,
    /// The ALPN protocol the server picked (empty: none).
    pub alpn: String,
    /// Bytes received (exchange mode) or the count echoed (echo mode).
    pub received: Vec<u8>,
    /// The exception that ended the session, if any (`EOF` for a clean end of stream).
    pub error: String,
}

/// How the Python client talks once connected.
pub enum PyMode<'a> {
    /// Sends the bytes, then reads until `expect` bytes came back (or the stream ended).
    Exchange { send: &'a [u8], expect: usize },
    /// Echoes `n` random bytes in 256 KiB steps and checks every byte came back.
    Echo { n: usize },
}

const PY_CLIENT: &str = r#"
import os, socket, ssl, sys
host, port, ca, sni, alpn, cert, key, mode, a, b = sys.argv[1:11]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
if alpn:
    ctx.set_alpn_protocols(alpn.split(','))
if cert:
    ctx.load_cert_chain(cert, key)
out = {'version': '', 'cipher': '', 'alpn': '', 'received': '', 'error': ''}
try:
    raw = socket.create_connection((host, int(port)), timeout=20)
    s = ctx.wrap_socket(raw, server_hostname=sni)
    out['version'] = s.version()
    out['cipher'] = s.cipher()[0]
    out['alpn'] = s.selected_alpn_protocol() or ''
    if mode == 'exchange':
        s.sendall(bytes.fromhex(sys.stdin.read()))
        want, got = int(b), b''
        while len(got) < want:
            chunk = s.recv(65536)
            if not chunk:
                out['error'] = 'EOF'
                break
            got += chunk
        out['received'] = got.hex()
    else:
        n, step, done = int(a), 256 * 1024, 0
        while done < n:
            part = os.urandom(min(step, n - done))
            s.sendall(part)
            back = b''
            while len(back) < len(part):
                chunk = s.recv(len(part) - len(back))
                if not chunk:
                    raise Exception('EOF after %d bytes echoed' % (done + len(back)))
                back += chunk
            if back != part:
                raise Exception('echo differs after %d bytes' % done)
            done += len(part)
        out['received'] = str(done).encode().hex()
    s.close()
except Exception as e:
    out['error'] = (type(e).__name__ + ': ' + str(e)).replace('\n', ' ')
for k, v in out.items():
    print(k + '=' + v)
"#;

/// Runs Python's `ssl` client against `addr` with server name `sni`, offering `alpn`
/// (comma-separated, empty: none) and presenting `identity` (`client` or `stranger`, or none).
pub fn python_client(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
    alpn: &str,
    identity: Option<&str>,
    mode: PyMode<'_>,
) -> PyResult {
    let (cert, key) = match identity {
        Some(id) => (
            pki.path(&format!("{id}.pem")),
            pki.path(&format!("{id}-key.pem")),
        ),
        None => (String::new(), String::new()),
    };
    let (mode, a, b) = match mode {
        // The bytes to send go on stdin (an argument is limited to 128 KiB).
        PyMode::Exchange { send, expect } => ("exchange", hex(send), expect.to_string()),
        PyMode::Echo { n } => ("echo", n.to_string(), String::new()),
    };
    let a_arg = if mode == "echo" {
        a.clone()
    } else {
        "-".to_string()
    };
    let child = Command::new("python3")
        .args(["-c", PY_CLIENT])
        .args([
            &addr.ip().to_string(),
            &addr.port().to_string(),
            &pki.path("ca.pem"),
            sni,
            alpn,
            &cert,
            &key,
            mode,
            &a_arg,
            &b,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let out = super::within(Duration::from_secs(120), "python ssl client", move || {
        let mut child = child;
        let mut stdin = child.stdin.take().unwrap();
        if mode == "exchange" {
            stdin.write_all(a.as_bytes()).unwrap();
        }
        drop(stdin);
        child.wait_with_output().expect("python3 output")
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python client failed: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = PyResult::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "version" => r.version = v.to_string(),
            "cipher" => r.cipher = v.to_string(),
            "alpn" => r.alpn = v.to_string(),
            "received" => r.received = unhex(v),
            "error" => r.error = v.to_string(),
            _ => {}
        }
    }
    r
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Runs `openssl s_client` against `addr` (verifying with the CA, `-servername sni`, the extra
/// `args`), writes `input`, and returns its stdout once it contains `until` (or after the
/// time limit). The process is killed afterwards.
pub fn s_client(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
    args: &[&str],
    input: &[u8],
    until: &str,
) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
        ])
        .args([
            "-CAfile",
            &pki.path("ca.pem"),
            "-verify_return_error",
            "-nocommands",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let out = out.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input);
    let _ = stdin.flush();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        if text.contains(until)
            || Instant::now() > deadline
            || child.try_wait().ok().flatten().is_some()
        {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    let _ = reader.join();
    let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    text
}

/// An `openssl s_server -rev` (answers each line reversed) with the server certificate, on a
/// free loopback port; killed on drop.
pub struct SServer {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl SServer {
    pub fn start(pki: &Pki) -> SServer {
        let mut child = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                "127.0.0.1:0",
                "-rev",
                "-naccept",
                "1",
            ])
            .args([
                "-cert",
                &pki.path("server.pem"),
                "-key",
                &pki.path("server-key.pem"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_server");
        let stdout = child.stdout.take().unwrap();
        let port = super::within(Duration::from_secs(20), "s_server ACCEPT line", move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let port = loop {
                let line = lines.next().expect("s_server exited").unwrap();
                if let Some(rest) = line.strip_prefix("ACCEPT ") {
                    break rest
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .trim()
                        .parse::<u16>()
                        .unwrap();
                }
            };
            // Keep draining so the server never blocks on a full pipe.
            thread::spawn(move || for _ in lines {});
            port
        });
        SServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the examples' final statistics line contains.
const STOPPED: &str = " stopped addr=";

/// Stops `server` with SIGTERM and returns how many connections it counted under `reason` (from
/// the `stopped ... closed: {"reason": N, ...}` line it logs at shutdown).
pub fn closed_count_at_stop(server: &mut Server, reason: &str) -> u64 {
    server.signal(libc::SIGTERM);
    server
        .wait_exit(Duration::from_secs(20))
        .expect("server exits after SIGTERM");
    // (Not just `stopped`: the earlier shutdown line says `stopped_accepting=true`.)
    let ok = server.wait_for_stderr(Duration::from_secs(5), |s| {
        s.find(STOPPED).is_some_and(|i| s[i..].contains('\n')) // the whole line
    });
    assert!(ok, "no `stopped` line:\n{}", server.stderr_text());
    closed_count(&server.stderr_text(), reason)
}

/// The count under `reason` in the last `closed: {...}` map of `log` (0 when absent).
pub fn closed_count(log: &str, reason: &str) -> u64 {
    let Some(line) = log.lines().rev().find(|l| l.contains(STOPPED)) else {
        return 0;
    };
    let key = format!("\"{reason}\": ");
    match line.find(&key) {
        Some(i) => line[i + key.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or(0),
        None => 0,
    }
}

/// Reads from a plain socket until the peer closes (EOF or reset) or the time limit; returns
/// what arrived and whether it closed.
pub fn drain_until_closed(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if super::is_timeout(&e) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}
