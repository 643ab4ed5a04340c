//! The TLS flags: serving TLS (`--tls-cert`, ...) and speaking TLS to an upstream
//! (`--upstream-tls`, ...). PEM files are read at start-up into rustls configurations (a
//! one-line error, then exit, on a bad file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{ConnectOptions, Server};

use super::fail;

/// `--tls-cert PEM --tls-key PEM [--tls-client-ca PEM] [--alpn PROTO,...]`: serve TLS.
#[derive(Args, Debug, Default)]
pub struct TlsArgs {
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA in this PEM file
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// ALPN protocols offered, in order of preference (comma-separated, e.g. h2,http/1.1)
    #[arg(
        long,
        value_name = "PROTO",
        value_delimiter = ',',
        requires = "tls_cert"
    )]
    pub alpn: Vec<String>,
    /// Seconds a client has to finish the TLS handshake
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub tls_handshake_timeout: u64,
}

impl TlsArgs {
    /// The server configuration these flags ask for (`None`: plaintext).
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        let (cert, key) = (self.tls_cert.as_ref()?, self.tls_key.as_ref()?);
        let chain = certs("--tls-cert", cert);
        let key = PrivateKeyDer::from_pem_file(key)
            .unwrap_or_else(|e| fail(format!("--tls-key {}: {e}", key.display())));
        let builder = ServerConfig::builder();
        let builder = match &self.tls_client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(
                    "--tls-client-ca",
                    ca,
                )))
                .build()
                .unwrap_or_else(|e| fail(format!("--tls-client-ca {}: {e}", ca.display())));
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .unwrap_or_else(|e| fail(format!("--tls-cert/--tls-key: {e}")));
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // Resumption by stateless tickets (the session sealed under a key of this process,
        // rotated every 6 hours): any number of clients resume, at no memory per session.
        // rustls' default, a cache of 256 sessions, forgets a client after 128 others (two
        // tickets each); a resumed handshake skips the certificate and its signature.
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .unwrap_or_else(|e| fail(format!("TLS session tickets: {e}")));
        Some(Arc::new(config))
    }

    /// `server` with TLS on when the flags ask for it.
    pub fn apply(&self, server: Server) -> Server {
        match self.server_config() {
            Some(config) => server
                .tls(config)
                .handshake_timeout(std::time::Duration::from_secs(self.tls_handshake_timeout)),
            None => server,
        }
    }
}

/// `--upstream-tls [--upstream-ca PEM] [--upstream-name NAME]`: TLS to an upstream (as
/// `tcp_proxy` does).
#[derive(Args, Debug)]
pub struct UpstreamTlsArgs {
    /// Speak TLS to the upstream (plaintext in, TLS out)
    #[arg(long)]
    pub upstream_tls: bool,
    /// Trust the upstream's certificate if signed by a CA in this PEM file (needed with --upstream-tls)
    #[arg(long, value_name = "PEM", requires = "upstream_tls")]
    pub upstream_ca: Option<PathBuf>,
    /// The server name checked against the upstream's certificate (and sent as SNI)
    /// [default: the upstream host]
    #[arg(long, value_name = "NAME", requires = "upstream_tls")]
    pub upstream_name: Option<String>,
}

impl UpstreamTlsArgs {
    /// The client configuration and server name to connect with (`None`: plaintext); `host`
    /// is the default server name.
    pub fn connect_options(&self, host: &str) -> Option<(Arc<ClientConfig>, ServerName<'static>)> {
        if !self.upstream_tls {
            return None;
        }
        let Some(ca) = &self.upstream_ca else {
            fail("--upstream-tls needs --upstream-ca PEM (the CA that signed the upstream's certificate)");
        };
        let config = ClientConfig::builder()
            .with_root_certificates(roots("--upstream-ca", ca))
            .with_no_client_auth();
        let name = self.upstream_name.as_deref().unwrap_or(host).to_string();
        let name =
            ServerName::try_from(name).unwrap_or_else(|e| fail(format!("--upstream-name: {e}")));
        Some((Arc::new(config), name))
    }
}

/// Applies an upstream TLS setting to connection options.
pub fn with_tls(
    options: ConnectOptions,
    tls: &Option<(Arc<ClientConfig>, ServerName<'static>)>,
) -> ConnectOptions {
    match tls {
        Some((config, name)) => options.tls(config.clone(), name.clone()),
        None => options,
    }
}

/// The certificates of a PEM file given as `flag`.
fn certs(flag: &str, path: &Path) -> Vec<CertificateDer<'static>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .unwrap_or_else(|e| fail(format!("{flag} {}: {e}", path.display())));
    if certs.is_empty() {
        fail(format!("{flag} {}: no certificate found", path.display()));
    }
    certs
}

fn roots(flag: &str, path: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in certs(flag, path) {
        roots
            .add(cert)
            .unwrap_or_else(|e| fail(format!("{flag} {}: {e}", path.display())));
    }
    roots
}
