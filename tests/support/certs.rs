//! Certificates made at test time (rcgen): a CA and the certificates it signs, or self-signed
//! ones that nobody trusting the CA accepts. The library-level TLS tests (`tests/tls.rs`) use
//! them in memory; the process-level harness (`tests/common/tls.rs`) writes them as PEM files.

use std::sync::Arc;

use ringport::rustls::{self, pki_types};

/// A certificate authority of its own.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    /// A new CA named `common_name`.
    pub fn new(common_name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A certificate for the names `sans` and its key: signed by this CA, or self-signed when
    /// `by_ca` is false.
    pub fn issue(&self, sans: &[&str], by_ca: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = if by_ca {
            params.signed_by(&key, &self.cert, &self.key).unwrap()
        } else {
            params.self_signed(&key).unwrap()
        };
        (cert, key)
    }

    /// [`Ca::issue`] as rustls takes it: the chain and the private key.
    pub fn issue_der(
        &self,
        sans: &[&str],
        by_ca: bool,
    ) -> (
        Vec<pki_types::CertificateDer<'static>>,
        pki_types::PrivateKeyDer<'static>,
    ) {
        let (cert, key) = self.issue(sans, by_ca);
        (
            vec![cert.der().clone()],
            pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// A root store trusting this CA only.
    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        Arc::new(roots)
    }
}
