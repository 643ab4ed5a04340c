//! `--tls`: `ringport-load` against a rustls echo server of the test (std
//! threads on loopback, a certificate made at test time), in echo and packet
//! modes, with `--ca` and `--insecure`; an untrusted server fails the run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS echo server for `localhost`; returns its address and the PEM of its
/// (self-signed, end-entity) certificate.
fn tls_echo_server() -> (SocketAddr, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let config = config.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if tls.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, cert.pem())
}

fn run(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringport-load"))
        .args(args)
        .args(["--json", "--threads", "2", "--timeout", "20"])
        .output()
        .expect("run ringport-load");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"));
    (out, v)
}

#[test]
fn echo_and_packet_over_tls_all_verified() {
    let (addr, pem) = tls_echo_server();
    let dir = std::env::temp_dir().join(format!("ringport-load-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("cert.pem");
    std::fs::write(&ca, pem).unwrap();
    let (ca, target) = (
        ca.to_string_lossy().into_owned(),
        format!("localhost:{}", addr.port()),
    );
    for (mode, trust) in [
        ("echo", vec!["--ca", &ca]),
        ("packet", vec!["--ca", &ca]),
        ("echo", vec!["--insecure"]),
    ] {
        let mut args = vec![
            mode, "--target", &target, "-c", "4", "-l", "20000", "-n", "25",
        ];
        args.extend(["--pipeline", "2", "--tls"]);
        args.extend(trust.iter().copied());
        let (out, v) = run(&args);
        assert!(out.status.success(), "{mode} {trust:?}: {v}");
        assert_eq!(v["messages"], 100, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
    }
    // A new connection (a full handshake) every 5 messages: 4 per connection.
    let args = [
        "echo", "--target", &target, "-c", "4", "-l", "100", "-n", "25",
    ];
    let (out, v) = run(&[&args[..], &["--tls", "--ca", &ca, "--reconnect-every", "5"]].concat());
    assert!(out.status.success(), "{v}");
    assert_eq!(
        (v["messages"].as_u64(), v["errors"].as_u64()),
        (Some(100), Some(0)),
        "{v}"
    );
    assert_eq!(v["handshakes"], 16, "{v}");
    assert!(v["handshakes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    // The certificate does not name 127.0.0.1: verification fails, so does the run.
    let ip_target = addr.to_string();
    let (out, v) = run(&[
        "echo", "--target", &ip_target, "-c", "2", "-l", "10", "-n", "2", "--tls", "--ca", &ca,
    ]);
    assert!(!out.status.success(), "{v}");
    assert_eq!(v["messages"], 0, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
