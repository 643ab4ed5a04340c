//! `--tls`: the load client's connections speak TLS through rustls' sans-IO
//! `ClientConnection` over the same non-blocking mio sockets (no async
//! runtime). [`Stream`] reads and writes plaintext like a socket:
//! `WouldBlock` when the socket has nothing more, `Ok(0)` at the peer's end.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

/// What every TLS connection of a run is made with.
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the CAs of `ca` (PEM), or anything with `insecure`; verifies the
    /// server as `name` (also sent as SNI when it is a DNS name).
    pub fn new(ca: Option<&Path>, insecure: bool, name: &str) -> Result<TlsClient, String> {
        let builder = ClientConfig::builder();
        let config = match (ca, insecure) {
            (Some(path), false) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!("--ca {}: no certificate found", path.display()));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("--ca {}: {e}", path.display()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    rustls::crypto::ring::default_provider(),
                )))
                .with_no_client_auth(),
            _ => return Err("--tls needs exactly one of --ca PEM and --insecure".into()),
        };
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("--server-name {name}: {e}"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }
}

/// A socket, with TLS on top when the run asks for it.
pub struct Stream {
    sock: TcpStream,
    tls: Option<ClientConnection>,
}

impl Stream {
    pub fn new(sock: TcpStream, tls: Option<&TlsClient>) -> io::Result<Stream> {
        let tls = match tls {
            Some(t) => {
                let mut c = ClientConnection::new(t.config.clone(), t.name.clone())
                    .map_err(io::Error::other)?;
                // Requests written before the handshake ends wait in rustls;
                // the client's own queue bounds them (pipeline x length).
                c.set_buffer_limit(None);
                Some(c)
            }
            None => None,
        };
        Ok(Stream { sock, tls })
    }

    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Plaintext in; `WouldBlock` when the socket has nothing more.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.sock.read(buf);
        }
        loop {
            let tls = self.tls.as_mut().expect("TLS stream");
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: the peer's close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut self.sock)? == 0 {
                return Ok(0); // EOF without close_notify
            }
            let processed = tls.process_new_packets();
            self.flush_tls()?; // handshake messages, or our alert
            processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    /// Plaintext out: queued in rustls, then as much TLS as the socket takes.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.sock.write(buf);
        };
        let n = tls.writer().write(buf)?;
        self.flush_tls()?;
        Ok(n)
    }

    /// Writes the TLS bytes rustls has ready until done or `WouldBlock`.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `--insecure`: accepts any server certificate (signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl ServerCertVerifier for AnyCertificate {
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
