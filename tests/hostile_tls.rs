//! The hostile-peer suite, TLS and PROXY ports: `echo_server --tls-cert --tls-key` at the
//! handshake and after it, and `echo_server --proxy-protocol required` at the PROXY header.
//! Trickles, half-open floods, FIN / RST / close_notify with and without bytes after them,
//! garbage and oversize input, and clients that never read. The same checker as
//! `tests/hostile.rs` (`common::hostile::run`): CPU bounded, a neighbour on the same IO thread
//! served, RSS growth bounded, SIGTERM exits 0 within the drain time plus a second.

#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use common::hostile::{ms, Attack::*, Case, How::*, Kind::*, Stage::*};

hostile_cases! {
    // TLS, at the handshake: the ClientHello byte by byte, clients that never finish it,
    // FIN / RST / a plaintext close_notify right after the ClientHello, garbage, a record
    // header announcing more than a record may hold.
    tls_trickle_handshake => Case::new(Tls, Handshake, Trickle { conns: 20, every: ms(50) });
    tls_half_open_handshake => Case::new(Tls, Handshake, HalfOpen { conns: 200 });
    tls_fin_mid_handshake => Case::new(Tls, Handshake, Close { how: Fin, conns: 20, tail: 0 });
    tls_rst_mid_handshake => Case::new(Tls, Handshake, Close { how: Rst, conns: 20, tail: 0 });
    tls_rst_mid_handshake_with_bytes => Case::new(Tls, Handshake, Close { how: Rst, conns: 20, tail: 8192 });
    tls_close_notify_mid_handshake => Case::new(Tls, Handshake, Close { how: CloseNotify, conns: 20, tail: 0 });
    tls_close_notify_mid_handshake_then_bytes => Case::new(Tls, Handshake, Close { how: CloseNotify, conns: 20, tail: 8192 });
    tls_garbage_handshake => Case::new(Tls, Handshake, Garbage { conns: 20, len: 16 * 1024 });
    tls_oversize_record => Case::new(Tls, Handshake, Oversize { conns: 20 });

    // TLS, after the handshake.
    tls_half_open_after_handshake => Case::new(Tls, FirstFrame, HalfOpen { conns: 20 });
    tls_fin_with_bytes_unread => Case::new(Tls, FirstFrame, Close { how: Fin, conns: 20, tail: 256 * 1024 });
    tls_rst_with_bytes => Case::new(Tls, FirstFrame, Close { how: Rst, conns: 20, tail: 256 * 1024 });
    tls_close_notify => Case::new(Tls, FirstFrame, Close { how: CloseNotify, conns: 20, tail: 0 });
    // Issue 20 item 1: close_notify and 8 KB of anything after it, in one send.
    tls_close_notify_then_bytes => Case::new(Tls, FirstFrame, Close { how: CloseNotify, conns: 1, tail: 8192 });
    tls_close_notify_mid_frame_then_bytes => Case::new(Tls, MidFrame, Close { how: CloseNotify, conns: 1, tail: 8192 });
    tls_garbage_after_handshake => Case::new(Tls, FirstFrame, Garbage { conns: 20, len: 16 * 1024 });
    tls_never_reads => Case::new(Tls, FirstFrame, NeverRead { conns: 10, bytes: 4 << 20 });

    // The PROXY port, at the header.
    proxy_trickle_header => Case::new(Proxy, ProxyHeader, Trickle { conns: 20, every: ms(50) });
    proxy_half_open => Case::new(Proxy, ProxyHeader, HalfOpen { conns: 200 });
    proxy_fin_mid_header => Case::new(Proxy, ProxyHeader, Close { how: Fin, conns: 20, tail: 0 });
    proxy_rst_mid_header => Case::new(Proxy, ProxyHeader, Close { how: Rst, conns: 20, tail: 0 });
    proxy_fin_mid_header_with_bytes => Case::new(Proxy, ProxyHeader, Close { how: Fin, conns: 20, tail: 8192 });
    proxy_garbage_header => Case::new(Proxy, ProxyHeader, Garbage { conns: 20, len: 16 * 1024 });
    proxy_oversize_header => Case::new(Proxy, ProxyHeader, Oversize { conns: 20 });
    // After the header: the plain port's cases again, through the layer.
    proxy_half_open_after_header => Case::new(Proxy, FirstFrame, HalfOpen { conns: 200 });
    proxy_rst_with_bytes => Case::new(Proxy, FirstFrame, Close { how: Rst, conns: 20, tail: 256 * 1024 });
    proxy_never_reads => Case::new(Proxy, FirstFrame, NeverRead { conns: 20, bytes: 4 << 20 });
}
