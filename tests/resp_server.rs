#![cfg(target_os = "linux")] // Linux-only for now: not yet run under Wine (see ARCHITECTURE.md, Windows)
//! `resp_server`: a Redis-protocol server, checked with clients nobody here wrote (redis-py,
//! redis-cli, redis-benchmark) and byte for byte against redis-server itself. Each test runs once
//! per backend.
//!
//! A test that needs an outside tool prints `skipped: <tool> not installed (...)` when it is
//! missing, and fails instead when `RINGPORT_TEST_REQUIRE_TOOLS=1` (CI installs them with
//! `.ci/install-resp.sh`).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SERVER: &str = "resp_server";

backend_tests!("resp_server";
    replies_match_redis_server_byte_for_byte,
    bad_input_closes_only_that_connection,
    redis_py_suite,
    redis_cli_set_get_and_mass_insert,
    redis_benchmark_without_errors,
    maxmemory_refuses_writes_with_oom,
    unread_expired_keys_are_swept,
    set_conditions_see_an_expired_key_as_missing,
    pipelined_replies_in_order,
    a_client_that_never_reads_costs_bounded_memory,
    a_large_mget_is_built_only_as_fast_as_it_is_read,
    maxmemory_counts_queued_replies,
    a_command_over_the_size_limit_gets_a_protocol_error,
    hello_setname_refuses_what_client_setname_refuses,
    sigterm_exits_cleanly,
);

// ---------------------------------------------------------------------------------------------
// Helpers: outside tools, a raw RESP client
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` with `stdin` fed from a thread; kills it and panics after `timeout`.
fn run_bounded(mut cmd: Command, stdin: Vec<u8>, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let pid = child.id();
    let out = within(timeout, &what, move || child.wait_with_output());
    let _ = feeder.join();
    out.unwrap_or_else(|e| panic!("{what} (pid {pid}): {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A RESP array of bulk strings.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends `request` and reads exactly the length of `expected`, which it must equal.
fn expect_reply(s: &mut TcpStream, request: &[u8], expected: &[u8]) {
    s.write_all(request).expect("send");
    let got = read_exact_timeout(s, expected.len(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("reply to {:?}: {e}", text(request)));
    assert_eq!(
        text(&got),
        text(expected),
        "reply to {:?}",
        text(&request[..request.len().min(200)])
    );
}

/// `INFO` field `name` as a number.
fn info_field(s: &mut TcpStream, name: &str) -> u64 {
    s.write_all(b"INFO\r\n").expect("send INFO");
    let head = read_line(s);
    let len: usize = head[1..].trim().parse().expect("bulk length of INFO");
    let body = text(&read_exact_timeout(s, len + 2, IO_TIMEOUT).expect("INFO body"));
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in INFO: {body}"))
        .trim()
        .parse()
        .expect("a number")
}

fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.extend(read_exact_timeout(s, 1, IO_TIMEOUT).expect("reply line"));
    }
    text(&line)
}

/// A redis-server of the machine's own, on a Unix socket in a fresh directory (no TCP port).
struct RedisServer {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl RedisServer {
    fn start(extra: &[&str]) -> RedisServer {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringport-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer { child, dir, socket };
        wait_until(Duration::from_secs(10), "redis-server accepting", || {
            UnixStream::connect(&server.socket).is_ok()
        });
        server
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).expect("connect to redis-server");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `request` followed by an `ECHO <marker>` and returns what came back before the
/// marker's reply (and `true` if the server closed instead).
fn exchange_until_marker(s: &mut impl ReadWrite, request: &[u8]) -> (Vec<u8>, bool) {
    const MARKER: &[u8] = b"end-of-case-7f3a9c";
    let sentinel_reply = format!("${}\r\n{}\r\n", MARKER.len(), text(MARKER)).into_bytes();
    let mut wire = request.to_vec();
    wire.extend_from_slice(&resp(&[b"ECHO", MARKER]));
    let _ = s.write_all(&wire); // a server that closed early may refuse part of it
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if got.ends_with(&sentinel_reply) {
            got.truncate(got.len() - sentinel_reply.len());
            return (got, false);
        }
        assert!(
            Instant::now() < deadline,
            "no end of reply to {:?}: {:?}",
            text(&request[..request.len().min(100)]),
            text(&got)
        );
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_reset(&e) => return (got, true),
            Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn read_until_eof_unix(s: &mut UnixStream, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("redis-server did not close after {what:?}: {e}"));
    out
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The same inputs to redis-server and to resp_server, each on a fresh connection: the replies
/// (errors, nulls, integers, protocol errors and whether the connection closed) must be
/// identical byte for byte. Deliberate differences are left out: `COMMAND` (empty here),
/// `HELLO` (server version), and a count of over 1 048 576 elements, which Redis 7 accepts up
/// to 2^31 and ringport refuses (see `bad_input_closes_only_that_connection`).
fn replies_match_redis_server_byte_for_byte(b: Backend) {
    if !tool_available(
        "redis-server",
        "redis-server",
        &["--version"],
        "apt-get install redis-server",
    ) {
        return;
    }
    let redis = RedisServer::start(&[]);
    let ours = Server::start(SERVER, b, &[]);
    let long = "x".repeat(200);
    let cases: Vec<Vec<u8>> = vec![
        // Replies of the commands themselves.
        b"PING\r\nPING hello\r\nECHO \"a\\x41b\\n\"\r\nECHO 'it\\'s'\r\n".to_vec(),
        b"SET k v\r\nGET k\r\nGET nokey\r\nSET k w NX\r\nSET k w XX\r\nGET k\r\nSET n 1 NX\r\n"
            .to_vec(),
        b"SET k v\r\nGETSET k w\r\nGETSET nokey v\r\nDEL k nokey k\r\nEXISTS k nokey\r\n".to_vec(),
        b"INCR c\r\nINCRBY c 41\r\nDECR c\r\nDECRBY c -8\r\nGET c\r\nINCRBY c -100\r\n".to_vec(),
        b"APPEND s foo\r\nAPPEND s bar\r\nSTRLEN s\r\nSTRLEN nokey\r\nGET s\r\n".to_vec(),
        b"MSET a 1 b 2\r\nMGET a nokey b\r\nDBSIZE\r\nFLUSHALL\r\nDBSIZE\r\nFLUSHALL ASYNC\r\n"
            .to_vec(),
        b"SET t v\r\nTTL t\r\nPTTL t\r\nTTL nokey\r\nPTTL nokey\r\nEXPIRE t 100\r\nTTL t\r\n\
          PERSIST t\r\nPERSIST t\r\nTTL t\r\nEXPIRE nokey 5\r\nSET u v EX 100\r\nTTL u\r\n\
          SET u v KEEPTTL\r\nTTL u\r\nSET u v\r\nTTL u\r\nPEXPIRE u 0\r\nEXISTS u\r\n"
            .to_vec(),
        b"SELECT 0\r\nCONFIG GET save\r\nCONFIG GET appendonly\r\nCLIENT SETNAME me\r\n\
          CLIENT GETNAME\r\nCLIENT SETNAME\r\n"
            .to_vec(),
        resp(&[b"SET", b"bin\x00\r\n\xff", b"\x00\x01\r\n"]),
        [
            resp(&[b"SET", b"bin\x00\r\n\xff", b"\x00\x01\r\n"]),
            resp(&[b"GET", b"bin\x00\r\n\xff"]),
        ]
        .concat(),
        // Empty commands are ignored.
        b"\r\n\n*0\r\n*-1\r\nPING\r\n".to_vec(),
        // Names in any case; near misses (a byte that is no letter, one byte more or less, a
        // name over 8 bytes) are unknown.
        b"gEt k\r\nSeT k v\r\nget k\r\nFlushAll\r\nG@T k\r\nGE k\r\nGETT k\r\nGETGETGET k\r\n\
          G[T k\r\nflushalll\r\n"
            .to_vec(),
        [resp(&[b"", b"k"]), resp(&[b"g\xc5t", b"k"])].concat(),
        // A SET of a value as long as the one before, with and without an expiry, in place.
        b"SET p abc\r\nSET p xyz\r\nGET p\r\nSET p 123 EX 100\r\nTTL p\r\nSET p 456 EX 200\r\n\
          TTL p\r\nGET p\r\nSET p 789\r\nTTL p\r\nGET p\r\nSET p 000 KEEPTTL\r\nGET p\r\n"
            .to_vec(),
        // Exact error texts.
        b"FOO\r\nFOO a b\r\nfoo a b c d e f g h\r\n".to_vec(),
        format!("FOO {long} {long}\r\nFOO a {long} b\r\n").into_bytes(),
        resp(&[b"FOO", b"a\r\nb", b"c"]),
        b"GET\r\nGET a b\r\nSET k\r\nPING a b\r\nMSET a\r\nMSET a b c\r\nDEL\r\nCONFIG GET\r\n\
          ECHO\r\nINCRBY x\r\n"
            .to_vec(),
        b"SET x abc\r\nINCR x\r\nINCRBY x 1\r\nINCRBY y abc\r\nINCRBY y 1.5\r\nEXPIRE x abc\r\n\
          SET x v EX abc\r\nSELECT abc\r\nDECRBY y 01\r\n"
            .to_vec(),
        b"SET m 9223372036854775807\r\nINCR m\r\nSET m -9223372036854775808\r\nDECR m\r\n\
          DECRBY m -9223372036854775808\r\n"
            .to_vec(),
        b"SET k v NX XX\r\nSET k v FOO\r\nSET k v EX 10 PX 100\r\nSET k v EX\r\n\
          SET k v KEEPTTL EX 10\r\n"
            .to_vec(),
        b"SET k v EX 0\r\nSET k v EX -1\r\nSET k v PX 0\r\nEXPIRE k 99999999999999999\r\n\
          SET k v EX 99999999999999999\r\n"
            .to_vec(),
        b"CLIENT NOSUCH\r\nCONFIG NOSUCH\r\n".to_vec(),
        // A name HELLO may not set, like CLIENT SETNAME; nothing changes.
        [
            resp(&[b"HELLO", b"2", b"SETNAME", b"a b"]),
            resp(&[b"HELLO", b"2", b"SETNAME", b"a\nb"]),
            resp(&[b"CLIENT", b"GETNAME"]),
        ]
        .concat(),
    ];
    // These answer, then close: compared up to EOF (nothing is sent after them, so that
    // redis-server closes with nothing unread, which would turn its close into a reset).
    let closing: Vec<Vec<u8>> = vec![
        b"SET q 1\r\nQUIT\r\n".to_vec(),
        b"*2\r\n$3\r\nGET\r\n:5\r\n".to_vec(),
        b"*1099511627776\r\n".to_vec(),
        b"*1\r\n$1099511627776\r\n".to_vec(),
        b"*1\r\n$-5\r\n".to_vec(),
        b"*abc\r\n".to_vec(),
        b"PING\r\nGET \"unterminated\r\n".to_vec(),
        b"GET \"a\"b\r\n".to_vec(),
        // Redis gives up past 64 KiB without a line end, ringport at once; both read it all.
        [b"*".to_vec(), vec![b'1'; 65_536]].concat(),
        [b"*1\r\n$".to_vec(), vec![b'1'; 65_536]].concat(),
        vec![b'x'; 65_537],
    ];
    for case in &cases {
        let mut r = redis.connect();
        let mut o = ours.connect();
        let theirs = exchange_until_marker(&mut r, case);
        let mine = exchange_until_marker(&mut o, case);
        assert_eq!(
            (text(&mine.0), mine.1),
            (text(&theirs.0), theirs.1),
            "(reply, closed) to {:?} differs from redis-server's",
            text(&case[..case.len().min(120)])
        );
    }
    for case in &closing {
        let mut r = redis.connect();
        let mut o = ours.connect();
        r.write_all(case).unwrap();
        o.write_all(case).unwrap();
        let what = text(&case[..case.len().min(120)]);
        let theirs = read_until_eof_unix(&mut r, &what);
        let (mine, _) = expect_closed(&mut o, IO_TIMEOUT, &what);
        assert_eq!(text(&mine), text(&theirs), "reply to {what:?} differs");
    }
    println!(
        "{} cases identical to redis-server",
        cases.len() + closing.len()
    );
}

/// The bad inputs of the issue, each on its own connection while another client is mid-way
/// through its own work: each gets Redis's error and is closed; the other client never notices;
/// every one is counted.
fn bad_input_closes_only_that_connection(b: Backend) {
    let server = Server::start(SERVER, b, &[]);
    let mut bystander = server.connect();
    // Half a command from the bystander: it must complete normally afterwards.
    bystander
        .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n")
        .unwrap();
    let cases: &[(&[u8], &[u8])] = &[
        (b"\x00\x01garbage\xff\r\n*2\r\n$3\r\nGET\r\n:5\r\n", b"-ERR unknown command '\x00\x01garbage\xff', with args beginning with: \r\n-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"*1\r\n$1099511627776\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1073741824\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n*1\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),
        (b"*12345678901234567890123456789012345678901234567890", b"-ERR Protocol error: too big mbulk count string\r\n"),
    ];
    for (input, reply) in cases {
        let mut s = server.connect();
        s.write_all(input).unwrap();
        let (got, _) = expect_closed(&mut s, IO_TIMEOUT, &text(input));
        assert_eq!(text(&got), text(reply), "reply to {:?}", text(input));
    }
    // An array cut short by the client's EOF: no reply, the connection just ends.
    let mut s = server.connect();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, _) = expect_closed(&mut s, IO_TIMEOUT, "unterminated array then EOF");
    assert_eq!(text(&got), "");

    expect_reply(&mut bystander, b"$1\r\nv\r\n", b"+OK\r\n");
    expect_reply(&mut bystander, b"GET k\r\n", b"$1\r\nv\r\n");
    assert_eq!(info_field(&mut bystander, "protocol_errors"), 5);
    server.stderr_text(); // logged, not fatal
}

fn redis_py_suite(b: Backend) {
    if !tool_available(
        "redis-py",
        "python3",
        &["-c", "import redis"],
        "pip install redis",
    ) {
        return;
    }
    let server = Server::start(SERVER, b, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/resp/redis_py_suite.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(server.addr.port().to_string());
    let out = run_bounded(cmd, Vec::new(), Duration::from_secs(60));
    let stdout = text(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("all redis-py checks passed"),
        "redis-py suite failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
}

fn redis_cli_set_get_and_mass_insert(b: Backend) {
    if !tool_available(
        "redis-cli",
        "redis-cli",
        &["--version"],
        "apt-get install redis-tools",
    ) {
        return;
    }
    let server = Server::start(SERVER, b, &[]);
    let port = server.addr.port().to_string();
    let cli = |args: &[&str], stdin: Vec<u8>| {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        run_bounded(cmd, stdin, Duration::from_secs(30))
    };
    let out = cli(&["SET", "a", "b"], Vec::new());
    assert_eq!(text(&out.stdout).trim(), "OK", "{}", text(&out.stderr));
    let out = cli(&["GET", "a"], Vec::new());
    assert_eq!(text(&out.stdout).trim(), "b");
    let out = cli(&["GET", "missing"], Vec::new());
    assert_eq!(text(&out.stdout).trim(), "");
    let out = cli(&["INCR", "a"], Vec::new());
    assert_eq!(
        text(&out.stdout).trim(),
        "ERR value is not an integer or out of range"
    );

    // Mass insertion, the way the Redis docs describe it: RESP on stdin of `redis-cli --pipe`.
    let mut data = Vec::with_capacity(4 << 20);
    for i in 0..100_000 {
        let (k, v) = (format!("key:{i}"), format!("value:{i}"));
        data.extend_from_slice(&resp(&[b"SET", k.as_bytes(), v.as_bytes()]));
    }
    let out = cli(&["--pipe"], data);
    let report = text(&out.stdout);
    assert!(out.status.success(), "--pipe failed: {report}");
    assert!(
        report.contains("errors: 0, replies: 100000"),
        "--pipe report: {report}"
    );
    let out = cli(&["DBSIZE"], Vec::new());
    assert_eq!(text(&out.stdout).trim(), "100001");
    let out = cli(&["GET", "key:99999"], Vec::new());
    assert_eq!(text(&out.stdout).trim(), "value:99999");
}

fn redis_benchmark_without_errors(b: Backend) {
    if !tool_available(
        "redis-benchmark",
        "redis-benchmark",
        &["--version"],
        "apt-get install redis-tools",
    ) {
        return;
    }
    let server = Server::start(SERVER, b, &[]);
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &server.addr.port().to_string()])
        .args([
            "-t",
            "ping,set,get,incr,mset",
            "-n",
            "20000",
            "-c",
            "50",
            "--csv",
        ]);
    let out = run_bounded(cmd, Vec::new(), Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "redis-benchmark: {stdout}\n{stderr}");
    assert!(
        !stdout.to_ascii_lowercase().contains("error")
            && !stderr.to_ascii_lowercase().contains("error"),
        "errors reported: {stdout}\n{stderr}"
    );
    for test in [
        "PING_INLINE",
        "PING_MBULK",
        "SET",
        "GET",
        "INCR",
        "MSET (10 keys)",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("\"{test}\"")))
            .unwrap_or_else(|| panic!("no {test} result in:\n{stdout}"));
        let rps: f64 = line
            .split(',')
            .nth(1)
            .unwrap()
            .trim_matches('"')
            .parse()
            .unwrap();
        assert!(rps > 0.0, "{line}");
    }
    println!("{stdout}");
    let mut s = server.connect();
    expect_reply(&mut s, b"GET counter:__rand_int__\r\n", b"$5\r\n20000\r\n");
}

fn maxmemory_refuses_writes_with_oom(b: Backend) {
    const OOM: &[u8] = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n";
    let server = Server::start(SERVER, b, &["--maxmemory", "100000"]);
    let mut s = server.connect();
    let value = vec![b'v'; 1000];
    let mut stored = 0;
    loop {
        let key = format!("k{stored}");
        s.write_all(&resp(&[b"SET", key.as_bytes(), &value]))
            .unwrap();
        let line = read_line(&mut s);
        if line.as_bytes() == OOM {
            break;
        }
        assert_eq!(line, "+OK\r\n");
        stored += 1;
        assert!(stored < 200, "no OOM after {stored} values of 1000 bytes");
    }
    assert!(stored >= 80, "OOM after only {stored} values of 1000 bytes");
    // Every write is refused, reads and deletes work, and freeing memory allows writes again.
    for write in [
        &b"INCR n\r\n"[..],
        b"APPEND k0 x\r\n",
        b"MSET a 1\r\n",
        b"GETSET k0 x\r\n",
    ] {
        expect_reply(&mut s, write, OOM);
    }
    expect_reply(&mut s, b"STRLEN k0\r\n", b":1000\r\n");
    expect_reply(&mut s, b"DEL k0 k1 k2\r\n", b":3\r\n");
    expect_reply(&mut s, b"SET x y\r\n", b"+OK\r\n");
    expect_reply(&mut s, b"FLUSHALL\r\n", b"+OK\r\n");
    expect_reply(&mut s, b"INCR n\r\n", b":1\r\n");

    // The same text as redis-server's own refusal.
    if tool_available(
        "redis-server",
        "redis-server",
        &["--version"],
        "apt-get install redis-server",
    ) {
        let redis = RedisServer::start(&["--maxmemory", "1"]);
        let (theirs, _) = exchange_until_marker(&mut redis.connect(), b"SET x y\r\n");
        assert_eq!(text(&theirs), text(OOM));
    }
}

/// Keys with a short expiry that nobody reads again disappear (the periodic sweep), and the
/// ones never read report -2 afterwards (lazy expiry on access).
fn unread_expired_keys_are_swept(b: Backend) {
    let server = Server::start(SERVER, b, &[]);
    let mut s = server.connect();
    let mut wire = Vec::new();
    for i in 0..200 {
        wire.extend_from_slice(format!("SET e{i} v PX 50\r\n").as_bytes());
    }
    wire.extend_from_slice(b"SET keep v\r\n");
    s.write_all(&wire).unwrap();
    let replies = read_exact_timeout(&mut s, 201 * 5, IO_TIMEOUT).unwrap();
    assert_eq!(replies, b"+OK\r\n".repeat(201));
    wait_until(Duration::from_secs(10), "expired keys swept", || {
        s.write_all(b"DBSIZE\r\n").unwrap();
        read_line(&mut s) == ":1\r\n"
    });
    expect_reply(
        &mut s,
        b"GET e7\r\nTTL e8\r\nGET keep\r\n",
        b"$-1\r\n:-2\r\n$1\r\nv\r\n",
    );
}

/// `SET` checks `NX`/`XX`/`KEEPTTL` on the table slot it then fills (one probe): a key that has
/// expired but is still in its table (the sweep has not reached it yet) counts as missing, and
/// replacing it keeps the count of expiring keys (`INFO` `db0:...,expires=`) exact.
fn set_conditions_see_an_expired_key_as_missing(b: Backend) {
    let server = Server::start(SERVER, b, &[]);
    let mut s = server.connect();
    expect_reply(
        &mut s,
        b"SET e v PX 30\r\nSET f v PX 30\r\n",
        b"+OK\r\n+OK\r\n",
    );
    wait_until(Duration::from_secs(10), "both keys expired", || {
        s.write_all(b"PTTL e\r\nPTTL f\r\n").unwrap();
        let (e, f) = (read_line(&mut s), read_line(&mut s));
        e == ":-2\r\n" && f == ":-2\r\n"
    });
    expect_reply(
        &mut s,
        b"SET e w XX\r\nSET e w NX KEEPTTL\r\nGET e\r\nTTL e\r\nSET f w KEEPTTL\r\nTTL f\r\n\
          SET f x XX\r\nGET f\r\nDBSIZE\r\n",
        b"$-1\r\n+OK\r\n$1\r\nw\r\n:-1\r\n+OK\r\n:-1\r\n+OK\r\n$1\r\nx\r\n:2\r\n",
    );
    s.write_all(b"INFO\r\n").unwrap();
    let head = read_line(&mut s);
    let len: usize = head[1..].trim().parse().expect("bulk length of INFO");
    let body = text(&read_exact_timeout(&mut s, len + 2, IO_TIMEOUT).expect("INFO body"));
    assert!(
        body.contains("db0:keys=2,expires=0,"),
        "two keys, none expiring: {body}"
    );
}

/// 10,000 commands in one write are answered in order.
fn pipelined_replies_in_order(b: Backend) {
    let server = Server::start(SERVER, b, &[]);
    let mut s = server.connect();
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 1..=5000 {
        wire.extend_from_slice(&resp(&[b"INCR", b"seq"]));
        expected.extend_from_slice(format!(":{i}\r\n").as_bytes());
        wire.extend_from_slice(b"GET seq\r\n");
        let v = i.to_string();
        expected.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&wire))
    };
    let got = read_exact_timeout(&mut s, expected.len(), IO_TIMEOUT).unwrap();
    writer.join().unwrap().unwrap();
    assert!(got == expected, "pipelined replies out of order");
}

/// A client pipelines 200 `GET`s of a 1 MiB value and does not read: the server holds the
/// commands back instead of queueing 200 MiB of replies; once read, every reply is complete.
fn a_client_that_never_reads_costs_bounded_memory(b: Backend) {
    let server = Server::start(SERVER, b, &["--io-threads", "1"]);
    let mut s = server.connect();
    let value: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    s.write_all(&resp(&[b"SET", b"big", &value])).unwrap();
    assert_eq!(read_line(&mut s), "+OK\r\n");
    let baseline = server.rss_kib();
    s.write_all(&b"GET big\r\n".repeat(200)).unwrap();
    // One IO thread: once another client's PING is answered, the GETs sent before it have been
    // received and run as far as the server lets them.
    let mut other = server.connect();
    expect_reply(&mut other, b"PING\r\n", b"+PONG\r\n");
    let grown_mib = server.rss_kib().saturating_sub(baseline) / 1024;
    assert!(
        grown_mib < 64,
        "RSS grew by {grown_mib} MiB with 200 MiB of replies unread"
    );
    let header = b"$1048576\r\n".to_vec();
    for i in 0..200 {
        let got = read_exact_timeout(&mut s, header.len() + value.len() + 2, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("reply {i}: {e}"));
        assert!(
            got.starts_with(&header) && got[header.len()..header.len() + value.len()] == value[..],
            "reply {i} differs"
        );
    }
    expect_reply(&mut s, b"PING\r\n", b"+PONG\r\n");
}

/// `MGET` of one 256 KiB value under four names, and a missing key, 2,000 times (a 34 KB
/// request asking for 400 MiB) from a client that does not read: the reply is built only as
/// fast as it is read (issue 20: RSS grew 500 MiB and stayed). Meanwhile another client on the
/// same IO thread is served, and `INFO` shows the queued replies. Then the client half-closes
/// and reads: the whole reply, in order, then EOF.
fn a_large_mget_is_built_only_as_fast_as_it_is_read(b: Backend) {
    const VALUE: usize = 256 << 10;
    const KEYS: usize = 2000;
    let server = Server::start(SERVER, b, &["--io-threads", "1"]);
    let mut other = server.connect();
    let names: [&[u8]; 5] = [b"k0", b"k1", b"k2", b"k3", b"nokey"];
    let values: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; VALUE]).collect();
    for (name, value) in names.iter().zip(&values) {
        expect_reply(&mut other, &resp(&[b"SET", name, value]), b"+OK\r\n");
    }
    let baseline = server.rss_kib();
    let mut request: Vec<&[u8]> = vec![b"MGET"];
    request.extend((0..KEYS).map(|i| names[i % names.len()]));
    let request = resp(&request);
    let mut s = server.connect();
    s.write_all(&request).unwrap();
    wait_server_read_all(&s, "the server reading the MGET");
    // The same IO thread serves others while the reply waits.
    expect_reply(&mut other, b"PING\r\n", b"+PONG\r\n");
    expect_reply(&mut other, b"GET k0\r\n", &resp_bulk(&values[0]));
    let grown_mib = server.rss_kib().saturating_sub(baseline) / 1024;
    println!("MGET of {KEYS} keys unread: RSS grew {grown_mib} MiB");
    assert!(
        grown_mib < 64,
        "RSS grew by {grown_mib} MiB for one unread MGET"
    );
    let queued = info_field(&mut other, "mem_clients_normal");
    let waits = info_field(&mut other, "reply_waits");
    assert!(waits >= 1, "the MGET reply never waited for its reader");
    assert!(
        (1 << 20..(4 << 20) + 2 * VALUE as u64).contains(&queued),
        "queued replies counted: {queued} bytes"
    );
    // Half-close, then read: the reply is finished before the close.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_line(&mut s), format!("*{KEYS}\r\n"));
    for i in 0..KEYS {
        let want = match values.get(i % names.len()) {
            Some(v) => resp_bulk(v),
            None => b"$-1\r\n".to_vec(),
        };
        let got = read_exact_timeout(&mut s, want.len(), IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("MGET element {i}: {e}"));
        assert!(got == want, "MGET element {i} differs");
    }
    let (rest, _) = expect_closed(&mut s, IO_TIMEOUT, "after the MGET reply");
    assert_eq!(text(&rest), "", "nothing after the reply");
    wait_until(IO_TIMEOUT, "queued replies uncounted", || {
        info_field(&mut other, "mem_clients_normal") < 4096
    });
}

fn resp_bulk(value: &[u8]) -> Vec<u8> {
    [format!("${}\r\n", value.len()).as_bytes(), value, b"\r\n"].concat()
}

/// `--maxmemory` counts the replies queued for clients: a client that does not read its
/// `MGET` holds megabytes of replies, and writes answer `-OOM` until it has read them.
fn maxmemory_counts_queued_replies(b: Backend) {
    const OOM: &[u8] = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n";
    let server = Server::start(SERVER, b, &["--maxmemory", "2000000"]);
    let mut other = server.connect();
    let value = vec![b'v'; 256 << 10];
    expect_reply(&mut other, &resp(&[b"SET", b"big", &value]), b"+OK\r\n");
    expect_reply(&mut other, b"SET small v\r\n", b"+OK\r\n");
    let mut request: Vec<&[u8]> = vec![b"MGET"];
    request.extend(std::iter::repeat_n(&b"big"[..], 64)); // 16 MiB of replies
    let mut s = server.connect();
    s.write_all(&resp(&request)).unwrap();
    wait_server_read_all(&s, "the server reading the MGET");
    wait_until(
        IO_TIMEOUT,
        "writes refused while replies are queued",
        || {
            other.write_all(b"SET probe x\r\n").unwrap();
            read_line(&mut other).as_bytes() == OOM
        },
    );
    assert!(info_field(&mut other, "mem_clients_normal") > 2_000_000);
    expect_reply(&mut other, b"SET small w\r\n", OOM);
    expect_reply(&mut other, b"GET small\r\n", b"$1\r\nv\r\n");
    // Read: the queue drains, and writes work again.
    let len = b"*64\r\n".len() + 64 * resp_bulk(&value).len();
    read_exact_timeout(&mut s, len, IO_TIMEOUT).expect("the whole MGET reply");
    wait_until(
        IO_TIMEOUT,
        "writes accepted once the replies are read",
        || {
            other.write_all(b"SET small w\r\n").unwrap();
            read_line(&mut other) == "+OK\r\n"
        },
    );
}

/// A command larger than `--max-bulk` plus 1 MiB (an `MSET` of many values, each under
/// `--max-bulk`) gets `-ERR Protocol error: ...` before the close, as a bulk over `--max-bulk`
/// does (issue 27: it was closed with no reply), and is counted; a bystander goes on.
fn a_command_over_the_size_limit_gets_a_protocol_error(b: Backend) {
    let server = Server::start(SERVER, b, &["--max-bulk", "1000"]);
    let mut bystander = server.connect();
    expect_reply(&mut bystander, b"SET k v\r\n", b"+OK\r\n");
    let value = vec![b'v'; 500];
    let mut request: Vec<&[u8]> = vec![b"MSET"];
    for _ in 0..3000 {
        request.extend([&b"key"[..], &value]);
    }
    let request = resp(&request); // 1.5 MB, each bulk under 1000 bytes
    let over_bulk = [
        &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n"[..],
        &[b'x'; 2002],
    ]
    .concat();
    let cases: [(&[u8], &str); 2] = [
        (
            &request,
            "-ERR Protocol error: command larger than 1049576 bytes\r\n",
        ),
        (&over_bulk, "-ERR Protocol error: invalid bulk length\r\n"),
    ];
    for (input, reply) in cases {
        let mut s = server.connect();
        let writer = {
            let mut s = s.try_clone().unwrap();
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = s.write_all(&input); // the server may close before reading it all
            })
        };
        let (got, _) = expect_closed(&mut s, IO_TIMEOUT, reply);
        writer.join().unwrap();
        assert_eq!(text(&got), reply);
    }
    assert_eq!(info_field(&mut bystander, "protocol_errors"), 2);
    expect_reply(&mut bystander, b"GET k\r\n", b"$1\r\nv\r\n");
}

/// `HELLO 2 SETNAME` refuses a name with a space or a newline, as `CLIENT SETNAME` does
/// (Redis 7 refuses both; issue 27: HELLO took it), and then changes nothing.
fn hello_setname_refuses_what_client_setname_refuses(b: Backend) {
    const BAD: &[u8] =
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n";
    let server = Server::start(SERVER, b, &[]);
    let mut s = server.connect();
    for name in [&b"a b"[..], b"a\nb", b"a\r\nb", b"\x01"] {
        expect_reply(&mut s, &resp(&[b"CLIENT", b"SETNAME", name]), BAD);
        expect_reply(&mut s, &resp(&[b"HELLO", b"3", b"SETNAME", name]), BAD);
    }
    // Still RESP2 (the refused HELLO 3 switched nothing) and still unnamed.
    expect_reply(&mut s, b"CLIENT GETNAME\r\n", b"$-1\r\n");
    let hello = resp(&[b"HELLO", b"2", b"SETNAME", b"good-name"]);
    let rest = exchange_until_marker(&mut s, &[&hello[..], b"CLIENT GETNAME\r\n"].concat()).0;
    assert!(text(&rest).starts_with("*14\r\n"), "HELLO 2 answers");
    assert!(
        text(&rest).ends_with("$9\r\ngood-name\r\n"),
        "name after HELLO SETNAME: {:?}",
        text(&rest)
    );
}

/// SIGTERM with a client connected and the expiry sweep running: a graceful exit 0 (the sweep
/// thread does not keep the process alive).
fn sigterm_exits_cleanly(b: Backend) {
    let mut server = Server::start(SERVER, b, &[]);
    let mut s = server.connect();
    expect_reply(&mut s, b"SET k v PX 100000\r\n", b"+OK\r\n");
    server.signal(libc::SIGTERM);
    let (_, how) = expect_closed(&mut s, Duration::from_secs(10), "client at shutdown");
    assert_eq!(
        how,
        Closed::Eof,
        "the client is closed gracefully, not reset"
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("resp_server exits within 10 s of SIGTERM");
    assert_clean_exit(status, libc::SIGTERM, "resp_server after SIGTERM");
}
