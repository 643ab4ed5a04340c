//! The tokio and tokio-util peers speak the same protocols as `echo_server`, `line_server` and
//! `packet_echo_server`: started as processes on loopback (port 0), driven
//! with plain blocking sockets, every read bounded in time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin` on port 0 and reads its `listening on IP:PORT (backend: ..)` line.
fn start(bin: &str, backend: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--threads", "2"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start peer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("listening on 127.0.0.1:")
        .and_then(|r| r.split_once(' '))
        .map(|(p, rest)| {
            assert_eq!(rest.trim(), format!("(backend: {backend})"), "{line}");
            p.parse().unwrap()
        })
        .unwrap_or_else(|| panic!("bad start-up line: {line:?}"));
    Server(child, port)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// Reads until EOF (the server closed).
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn lines_peer_answers_like_line_server() {
    let server = start(
        env!("CARGO_BIN_EXE_tokio_lines"),
        "tokio-util-lines",
        &["--max-line", "100"],
    );
    let mut s = connect(server.1);
    assert_eq!(read_exact(&mut s, 11), b"+OK ready\r\n");
    // Pipelined, mixed case, a bare \n, an unknown verb and an empty line.
    s.write_all(b"PING\r\necho a b\r\nping\nNOPE\r\n\r\nQUIT\r\nPING\r\n")
        .unwrap();
    let got = read_to_end(&mut s);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+PONG\r\n+a b\r\n+PONG\r\n-ERR unknown command\r\n-ERR empty command\r\n+BYE\r\n"
    );
    // A line over --max-line is refused and closes.
    let mut s = connect(server.1);
    assert_eq!(read_exact(&mut s, 11), b"+OK ready\r\n");
    s.write_all(&[b'x'; 200]).unwrap();
    s.write_all(b"\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"-ERR line too long\r\n");
}

#[test]
fn length_delimited_peer_echoes_frames() {
    let server = start(
        env!("CARGO_BIN_EXE_tokio_packet"),
        "tokio-util-length-delimited",
        &["--max-frame", "1000"],
    );
    let mut s = connect(server.1);
    let mut sent = Vec::new();
    for (i, len) in [0usize, 1, 5, 999, 1000].into_iter().enumerate() {
        sent.extend_from_slice(&(len as u32).to_be_bytes());
        sent.extend((0..len).map(|j| (i * 31 + j) as u8));
    }
    // Split mid-header and mid-payload: frames are reassembled.
    s.write_all(&sent[..2]).unwrap();
    s.flush().unwrap();
    s.write_all(&sent[2..700]).unwrap();
    s.write_all(&sent[700..]).unwrap();
    assert_eq!(read_exact(&mut s, sent.len()), sent);
    // A frame announcing more than --max-frame closes the connection.
    s.write_all(&1001u32.to_be_bytes()).unwrap();
    assert_eq!(read_to_end(&mut s), b"");
}

#[test]
fn tokio_echo_peer_echoes_and_closes_at_eof() {
    let server = start(env!("CARGO_BIN_EXE_tokio_echo"), "tokio", &[]);
    let mut s = connect(server.1);
    let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&sent).unwrap();
    assert_eq!(read_exact(&mut s, sent.len()), sent);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"");
}
