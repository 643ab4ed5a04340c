//! The line protocol of `line_server` and `line_server_pooled`, free of IO: one command line
//! in, one reply out. The pooled server runs the very same function on a worker.

use std::net::SocketAddr;
use std::time::Duration;

/// The reply to one command line from `client` (the address the server believes the client
/// has: `conn.info().client`), and whether the connection ends after it.
/// Kept free of IO so the pooled variant can run the very same function on a worker.
pub fn execute(line: &[u8], client: SocketAddr) -> (Vec<u8>, bool) {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(_) => return (b"-ERR unknown command\r\n".to_vec(), false),
    };
    let (verb, arg) = match text.split_once(' ') {
        Some((v, a)) => (v, Some(a)),
        None => (text, None),
    };
    let reply = match (verb.to_ascii_uppercase().as_str(), arg) {
        ("", None) => "-ERR empty command".to_string(),
        ("PING", None) => "+PONG".to_string(),
        ("ECHO", Some(text)) => format!("+{text}"),
        ("ECHO", None) => "+".to_string(),
        ("SLEEP", Some(ms)) => match ms.trim().parse::<u64>() {
            Ok(ms) if ms <= 10_000 => {
                // Stands for a blocking call (a database query): it stalls this IO thread.
                std::thread::sleep(Duration::from_millis(ms));
                format!("+SLEPT {ms}")
            }
            _ => "-ERR bad sleep (0 to 10000 ms)".to_string(),
        },
        // Behind a balancer with --proxy-protocol: the address its PROXY header gave.
        ("WHO", None) => format!("+{client}"),
        ("QUIT", None) => return (b"+BYE\r\n".to_vec(), true),
        _ => "-ERR unknown command".to_string(),
    };
    let mut out = reply.into_bytes();
    out.extend_from_slice(b"\r\n");
    (out, false)
}

/// Whether `line` is a `QUIT` (the IO thread stops taking commands after it).
pub fn is_quit(line: &[u8]) -> bool {
    line.eq_ignore_ascii_case(b"QUIT")
}
