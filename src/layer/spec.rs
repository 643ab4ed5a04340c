//! What a connection's layers are made of ([`LayerSpec`]): the one place a layer stack is
//! built, for an accepted connection (its server's PROXY mode, TLS and other factories) and for
//! an outgoing one (`ConnectOptions`: a TLS client). The engine keeps a `LayerSpec` per server
//! and asks it for a [`Stack`] per connection: it names no layer.

use std::time::Duration;

use super::proxy::{ProxyLayer, ProxyProtocol, DEFAULT_PROXY_HEADER_TIMEOUT};
use super::{Layer, LayerFactory, Stack, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::info::{CloseReason, ConnInfo};
use crate::stats::ThreadStats;

/// The layers of a server's (or of an outgoing connection's) connections, bottom first: the
/// PROXY header reader if one is asked for, always at the bottom (the header arrives first,
/// in plaintext, whatever the order of the builder calls), then the factories' layers in the
/// order they were added (TLS).
#[derive(Clone)]
pub(crate) struct LayerSpec {
    proxy: Option<ProxyProtocol>,
    proxy_header_timeout: Duration,
    factories: Vec<LayerFactory>,
    handshake_timeout: Duration,
}

impl Default for LayerSpec {
    fn default() -> Self {
        LayerSpec {
            proxy: None,
            proxy_header_timeout: DEFAULT_PROXY_HEADER_TIMEOUT,
            factories: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl LayerSpec {
    /// Reads a PROXY protocol header first (`Server::proxy_protocol`).
    pub(crate) fn set_proxy(&mut self, mode: ProxyProtocol) {
        self.proxy = Some(mode);
    }

    /// How long the PROXY header may take from accept.
    pub(crate) fn set_proxy_header_timeout(&mut self, timeout: Duration) {
        self.proxy_header_timeout = timeout;
    }

    /// How long the layers together may take to become ready (the TLS handshake).
    pub(crate) fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// Adds a layer above the ones added before.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))] // TLS is the only factory yet
    pub(crate) fn push(&mut self, factory: LayerFactory) {
        self.factories.push(factory);
    }

    /// TLS, server side (`Server::tls`).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_server(&mut self, config: std::sync::Arc<rustls::ServerConfig>) {
        let config = super::tls::server_config(config);
        self.push(std::sync::Arc::new(move || {
            super::tls::TlsLayer::server(&config)
                .map(|l| Box::new(l) as Box<dyn Layer>)
                .map_err(CloseReason::TlsError)
        }));
    }

    /// TLS, client side, verifying the server as `name` (`ConnectOptions::tls`).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_client(
        &mut self,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) {
        self.push(std::sync::Arc::new(move || {
            super::tls::TlsLayer::client(&config, name.clone())
                .map(|l| Box::new(l) as Box<dyn Layer>)
                .map_err(CloseReason::TlsError)
        }));
    }

    /// Whether connections have no layer at all (a plain connection opens at once).
    pub(crate) fn is_empty(&self) -> bool {
        self.proxy.is_none() && self.factories.is_empty()
    }

    /// Whether a layer names the client (a PROXY header): the per-IP limits wait for it
    /// instead of counting the peer at accept.
    pub(crate) fn names_client(&self) -> bool {
        self.proxy.is_some()
    }

    /// A new connection's stack, not started yet (`Stack::start` once the transport is up);
    /// `Ok(None)`: no layers. A layer that cannot be made fails the connection with its
    /// reason.
    pub(crate) fn stack(&self) -> Result<Option<Stack>, CloseReason> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut layers: Vec<Box<dyn Layer>> = Vec::with_capacity(self.factories.len() + 1);
        if let Some(mode) = self.proxy {
            layers.push(Box::new(ProxyLayer::new(mode, self.proxy_header_timeout)));
        }
        for f in &self.factories {
            layers.push(f()?);
        }
        Ok(Some(Stack::new(layers, self.handshake_timeout)))
    }
}

/// Counts how a connection whose client a layer named began: by the PROXY header's version,
/// its `LOCAL` command, or no header (`Optional` mode).
pub(crate) fn count_origin(stats: &ThreadStats, info: &ConnInfo) {
    stats.count_origin(info.proxy.as_deref());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A layer that passes bytes both ways and is ready at once.
    struct Pass;
    impl Layer for Pass {
        fn start(&mut self, _: &mut Vec<u8>) -> Result<(), CloseReason> {
            Ok(())
        }
        fn input(
            &mut self,
            data: &[u8],
            up: &mut Vec<u8>,
            _: &mut Vec<u8>,
        ) -> Result<crate::layer::Input, CloseReason> {
            up.extend_from_slice(data);
            Ok(Default::default())
        }
        fn output(&mut self, data: &[u8], down: &mut Vec<u8>) -> Result<(), CloseReason> {
            down.extend_from_slice(data);
            Ok(())
        }
        fn close(&mut self, _: &mut Vec<u8>) {}
        fn ready(&self) -> bool {
            true
        }
        fn describe(&self, _: &mut ConnInfo) {}
        fn timeout_reason(&self) -> CloseReason {
            CloseReason::Local
        }
        fn eof_reason(&self) -> CloseReason {
            CloseReason::PeerClosed
        }
    }

    /// No layer: no stack (the plain path); the PROXY reader at the bottom whatever the
    /// order of the calls, below the factories' layers; a factory's failure is the
    /// connection's reason.
    #[test]
    fn the_stack_is_built_bottom_first_with_the_proxy_reader_at_the_bottom() {
        let spec = LayerSpec::default();
        assert!(spec.is_empty() && !spec.names_client());
        assert!(matches!(spec.stack(), Ok(None)));

        let mut spec = LayerSpec::default();
        spec.push(Arc::new(|| Ok(Box::new(Pass) as Box<dyn Layer>)));
        assert!(!spec.is_empty() && !spec.names_client());
        spec.set_proxy(ProxyProtocol::Required);
        assert!(spec.names_client());
        let mut stack = spec.stack().unwrap().expect("layers");
        // The PROXY reader is the bottom layer: it names the client, and the bytes after its
        // header come up through the layer above it.
        let mut up = Vec::new();
        let r = stack
            .receive(b"PROXY TCP4 10.1.2.3 10.0.0.1 4000 80\r\nhello", &mut up)
            .unwrap();
        assert!(r.client_named);
        assert_eq!(up, b"hello");
        assert!(stack.ready());

        let mut spec = LayerSpec::default();
        spec.push(Arc::new(|| Err(CloseReason::TlsError("no key".into()))));
        assert_eq!(
            spec.stack().err(),
            Some(CloseReason::TlsError("no key".into()))
        );
    }
}
