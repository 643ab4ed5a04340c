#![cfg(target_os = "linux")] // /proc figures (CPU time) and signals
//! Hostile TLS peers against the example servers (issue 20), on every backend:
//! - close_notify followed, in the same send, by more bytes than rustls reads at once (it reads
//!   4 KiB per call): the server's CPU stays bounded, another TLS client on the same (only) IO
//!   thread is served, and SIGTERM still exits 0 within the drain time plus a second;
//! - a client of `tcp_proxy --upstream-tls` that half-closes at once: the upstream's handshake
//!   finishes before the proxy's close_notify and FIN, so the upstream's greeting comes back.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;

backend_tests!("echo_server"; close_notify_then_bytes);
backend_tests!("tcp_proxy"; half_close_waits_for_upstream_handshake);

/// The drain time the servers here are given (`--drain-timeout`).
const DRAIN: Duration = Duration::from_secs(2);

/// A TLS example server, logging the TLS layer's debug lines too.
fn tls_server(name: &str, backend: Backend, pki: &Pki, extra: &[&str]) -> Server {
    let mut args = pki.server_args(false);
    args.extend(extra.iter().map(|s| s.to_string()));
    ServerBuilder::new(name)
        .backend(backend)
        .args(&args)
        .env("RUST_LOG", "info,ringport::layer=debug")
        .start()
}

/// One echo over a rustls stream, as a result (a server that stopped serving shows as an error
/// after `timeout`, not as a hang).
fn try_echo(pki: &Pki, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut s = rustls_connect(pki, addr);
    s.sock.set_read_timeout(Some(timeout)).unwrap();
    s.sock.set_write_timeout(Some(timeout)).unwrap();
    s.write_all(b"are you there")
        .and_then(|()| s.flush())
        .map_err(|e| format!("write: {e}"))?;
    let mut got = [0u8; 13];
    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    if &got != b"are you there" {
        return Err(format!("echo differs: {got:?}"));
    }
    Ok(())
}

/// After a full handshake and one echo, the client sends close_notify and 16 KiB of bytes in one
/// send. Before the fix the TLS layer's input loop went round forever (rustls' `read_tls`
/// answers `Ok(0)` once close_notify is in): a whole core, no other client of the thread
/// served, SIGTERM ignored.
fn close_notify_then_bytes(backend: Backend) {
    let pki = Pki::new();
    let mut server = tls_server(
        "echo_server",
        backend,
        &pki,
        &["--io-threads", "1", "--drain-timeout", "2"],
    );
    let mut attacker = rustls_connect(&pki, server.addr);
    rustls_echo(
        &mut attacker,
        b"hello",
        "the attacker's session works first",
    );
    attacker.conn.send_close_notify();
    let mut wire = Vec::new();
    while attacker.conn.wants_write() {
        attacker.conn.write_tls(&mut wire).unwrap();
    }
    let alert = wire.len();
    wire.resize(alert + (16 << 10), b'x');
    attacker.sock.write_all(&wire).unwrap(); // one send: close_notify, then 16 KiB

    // The figures, all gathered before asserting (so a failure reports each of them).
    let window = Duration::from_secs(2);
    let cpu0 = server.cpu_time();
    std::thread::sleep(window); // a measurement window, not a synchronisation
    let cpu = server.cpu_time() - cpu0;
    let served = try_echo(&pki, server.addr, Duration::from_secs(5));
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let exit = server.wait_exit(DRAIN + Duration::from_secs(1));
    let took = t.elapsed();
    drop(attacker);
    let figures = format!(
        "CPU {:.2} s over {:?}; second client: {served:?}; SIGTERM: {exit:?} after {:.2} s",
        cpu.as_secs_f64(),
        window,
        took.as_secs_f64()
    );
    println!("{backend}: {figures}");
    assert!(
        cpu < Duration::from_millis(500),
        "CPU not bounded: {figures}"
    );
    assert!(served.is_ok(), "another client not served: {figures}");
    let status = exit.unwrap_or_else(|| panic!("no exit within drain + 1 s: {figures}"));
    assert_clean_exit(status, libc::SIGTERM, &figures);
    assert!(
        server.stderr_text().contains("after close_notify"),
        "the discarded bytes are logged"
    );
}

/// A client of `tcp_proxy --upstream-tls` connects and half-closes at once: its EOF becomes the
/// upstream connection's `shutdown_write` while the upstream's TLS handshake is still under
/// way. The close_notify and FIN must wait for the handshake; the chat server's greeting then
/// comes back, and the client sees EOF. Before the fix the FIN went out mid-handshake (0-1 of
/// 5 greetings; the upstream logged "EOF before the handshake finished").
fn half_close_waits_for_upstream_handshake(backend: Backend) {
    let pki = Pki::new();
    let chat = tls_server("chat_server", backend, &pki, &[]);
    let proxy = upstream_tls_proxy(backend, &pki, chat.addr, "localhost");
    let tries = 5;
    let mut results = Vec::new();
    for _ in 0..tries {
        let mut c = proxy.connect();
        c.shutdown(Shutdown::Write).unwrap();
        results.push(
            read_until_close(&mut c, IO_TIMEOUT)
                .map(|(b, how)| (String::from_utf8_lossy(&b).into_owned(), how)),
        );
    }
    let greeted = results
        .iter()
        .filter(|r| matches!(r, Ok((b, Closed::Eof)) if b == "+OK chat\r\n"))
        .count();
    println!("{backend}: greeting back in {greeted} of {tries}: {results:?}");
    assert_eq!(greeted, tries, "{results:?}");
    assert!(
        !chat
            .stderr_text()
            .contains("EOF before the handshake finished"),
        "the upstream saw a FIN mid-handshake"
    );
}
