//! In-memory rustls server cost per handshake and per 1 KiB record, ring vs aws-lc-rs
//! (only the server side's calls are timed; client and server in one thread, no sockets).
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
};

#[derive(Debug)]
struct Any(Arc<CryptoProvider>);
impl ServerCertVerifier for Any {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn pump_to_server(c: &mut ClientConnection, s: &mut ServerConnection, t: &mut Duration) {
    let mut buf = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut buf).unwrap();
    }
    let t0 = Instant::now();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        s.read_tls(&mut rd).unwrap();
        s.process_new_packets().unwrap();
    }
    *t += t0.elapsed();
}
fn pump_to_client(s: &mut ServerConnection, c: &mut ClientConnection, t: &mut Duration) {
    let t0 = Instant::now();
    let mut buf = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut buf).unwrap();
    }
    *t += t0.elapsed();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd).unwrap();
        c.process_new_packets().unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(&args[1])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&args[2]).unwrap();
    let n: usize = args.get(3).map(|a| a.parse().unwrap()).unwrap_or(300);
    let only = args.get(4).cloned().unwrap_or_default();
    for (pname, prov) in [
        ("ring", rustls::crypto::ring::default_provider()),
        ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider()),
    ] {
        if !only.is_empty() && only != pname {
            continue;
        }
        let mut prov = prov;
        if std::env::var("KX").as_deref() == Ok("x25519") {
            prov.kx_groups
                .retain(|g| g.name() == rustls::NamedGroup::X25519);
        }
        println!(
            "{pname}: kx groups {:?}",
            prov.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        );
        let prov = Arc::new(prov);
        let pick: usize = args.get(5).map(|a| a.parse().unwrap()).unwrap_or(99);
        for (k, (mode, resume, tickets, stateless)) in [
            ("full", false, 2, false),
            ("resumed, stateful cache, 2 tickets", true, 2, false),
            ("resumed, stateful cache, 1 ticket", true, 1, false),
            ("resumed, stateless tickets, 1 ticket", true, 1, true),
        ]
        .into_iter()
        .enumerate()
        {
            if pick != 99 && pick != k {
                continue;
            }
            let mut sc = ServerConfig::builder_with_provider(prov.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .unwrap();
            sc.send_tls13_tickets = tickets;
            if stateless {
                sc.ticketer = if pname == "ring" {
                    rustls::crypto::ring::Ticketer::new().unwrap()
                } else {
                    rustls::crypto::aws_lc_rs::Ticketer::new().unwrap()
                };
            }
            let sc = Arc::new(sc);
            let mut cc = ClientConfig::builder_with_provider(prov.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Any(prov.clone())))
                .with_no_client_auth();
            if !resume {
                cc.resumption = rustls::client::Resumption::disabled();
            }
            let cc = Arc::new(cc);
            let mut t = Duration::ZERO;
            let mut resumed = 0;
            for i in 0..n + 20 {
                let mut c =
                    ClientConnection::new(cc.clone(), ServerName::try_from("localhost").unwrap())
                        .unwrap();
                let t0 = Instant::now();
                let mut s = ServerConnection::new(sc.clone()).unwrap();
                let mut ts = t0.elapsed();
                while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write()
                {
                    pump_to_server(&mut c, &mut s, &mut ts);
                    pump_to_client(&mut s, &mut c, &mut ts);
                }
                // one echo so the client takes its tickets
                c.writer().write_all(b"ping").unwrap();
                pump_to_server(&mut c, &mut s, &mut ts);
                let mut b = [0u8; 4];
                s.reader().read_exact(&mut b).unwrap();
                pump_to_client(&mut s, &mut c, &mut ts);
                if i >= 20 {
                    t += ts;
                    if matches!(s.handshake_kind(), Some(rustls::HandshakeKind::Resumed)) {
                        resumed += 1;
                    }
                }
            }
            println!("{pname:10} handshake {mode:38}: server {:6.1} us/handshake ({resumed}/{n} resumed)", t.as_secs_f64() * 1e6 / n as f64);
        }
        if pick != 99 && pick != 4 {
            continue;
        }
        // 1 KiB records on an established connection, server side: decrypt one, encrypt one.
        let sc = Arc::new(
            ServerConfig::builder_with_provider(prov.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .unwrap(),
        );
        let cc = Arc::new(
            ClientConfig::builder_with_provider(prov.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Any(prov.clone())))
                .with_no_client_auth(),
        );
        let mut c = ClientConnection::new(cc, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut s = ServerConnection::new(sc).unwrap();
        let mut ts = Duration::ZERO;
        while c.is_handshaking() || s.is_handshaking() {
            pump_to_server(&mut c, &mut s, &mut ts);
            pump_to_client(&mut s, &mut c, &mut ts);
        }
        let msg = vec![7u8; 1024];
        let mut buf = vec![0u8; 1024];
        let m = 20000;
        let mut ts = Duration::ZERO;
        for _ in 0..m {
            c.writer().write_all(&msg).unwrap();
            pump_to_server(&mut c, &mut s, &mut ts);
            let t0 = Instant::now();
            s.reader().read_exact(&mut buf).unwrap();
            s.writer().write_all(&buf).unwrap();
            ts += t0.elapsed();
            pump_to_client(&mut s, &mut c, &mut ts);
            c.reader().read_exact(&mut buf).unwrap();
        }
        println!("{pname:10} 1 KiB echo record (server decrypt + encrypt, buffered API): {:5.2} us/msg, suite {:?}", ts.as_secs_f64() * 1e6 / m as f64, s.negotiated_cipher_suite().unwrap().suite());
    }
}
