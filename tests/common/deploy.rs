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
