use std::net::SocketAddr;

use ppp::v2::{Builder, Command, IPv4, IPv6, Protocol, Type, Version};
use proptest::prelude::*;

use super::*;

const V1: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";

fn layer(mode: ProxyProtocol) -> ProxyLayer {
    ProxyLayer::new(mode, Duration::from_secs(5))
}

fn info_of(l: &ProxyLayer) -> ConnInfo {
    let sock: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let mut info = ConnInfo::new(sock, "10.0.0.2:5000".parse().unwrap(), 1);
    l.describe(&mut info);
    info
}

fn v2_tcp4(command: Command) -> Vec<u8> {
    Builder::with_addresses(
        Version::Two | command,
        Protocol::Stream,
        IPv4::new([203, 0, 113, 9], [198, 51, 100, 1], 61000, 443),
    )
    .build()
    .unwrap()
}

/// Feeds `chunks` one by one; returns what went up and the first error.
fn feed(l: &mut ProxyLayer, chunks: &[&[u8]]) -> (Vec<u8>, Option<CloseReason>) {
    let mut up = Vec::new();
    for c in chunks {
        let mut down = Vec::new();
        if let Err(r) = l.input(c, &mut up, &mut down) {
            return (up, Some(r));
        }
        assert!(down.is_empty(), "the PROXY layer never sends");
    }
    (up, None)
}

fn assert_refused(r: Option<CloseReason>, word: &str) {
    match r {
        Some(CloseReason::ProxyHeader(m)) => assert!(m.contains(word), "{m:?} lacks {word:?}"),
        other => panic!("expected a proxy-header refusal ({word}), got {other:?}"),
    }
}

#[test]
fn v1_header_split_at_every_point_gives_the_client_and_the_rest() {
    let mut stream = V1.to_vec();
    stream.extend_from_slice(b"WHO\r\n");
    for cut in 0..=stream.len() {
        let mut l = layer(ProxyProtocol::Required);
        let (up, err) = feed(&mut l, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(err, None, "cut at {cut}");
        assert!(l.ready());
        assert_eq!(up, b"WHO\r\n", "cut at {cut}");
        let info = info_of(&l);
        assert_eq!(info.client, "192.0.2.7:56324".parse().unwrap());
        assert_eq!(info.peer, "10.0.0.1:4000".parse().unwrap());
        let p = info.proxy.expect("proxy info");
        assert_eq!(p.version, ProxyVersion::V1);
        assert!(!p.local);
        assert_eq!(p.destination, Some("198.51.100.1:443".parse().unwrap()));
    }
}

#[test]
fn v1_header_byte_by_byte_is_ready_only_at_its_last_byte() {
    let mut l = layer(ProxyProtocol::Required);
    for (i, b) in V1.iter().enumerate() {
        let (up, err) = feed(&mut l, &[&[*b]]);
        assert_eq!(err, None, "byte {i}");
        assert!(up.is_empty());
        assert_eq!(l.ready(), i == V1.len() - 1, "byte {i}");
    }
}

#[test]
fn v1_tcp6_and_unknown() {
    let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n";
    let mut l = layer(ProxyProtocol::Required);
    assert_eq!(feed(&mut l, &[h]).1, None);
    assert_eq!(info_of(&l).client, "[2001:db8::1]:1234".parse().unwrap());

    let mut l = layer(ProxyProtocol::Required);
    let (up, err) = feed(&mut l, &[b"PROXY UNKNOWN\r\nhi"]);
    assert_eq!(err, None);
    assert_eq!(up, b"hi");
    let info = info_of(&l);
    assert_eq!(info.client, info.peer, "UNKNOWN keeps the socket address");
    assert!(info.proxy.expect("proxy").local);
}

#[test]
fn v2_header_split_at_every_point() {
    let mut stream = v2_tcp4(Command::Proxy);
    stream.extend_from_slice(b"\x00\x01payload");
    for cut in 0..=stream.len() {
        let mut l = layer(ProxyProtocol::Required);
        let (up, err) = feed(&mut l, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(err, None, "cut at {cut}");
        assert_eq!(up, b"\x00\x01payload", "cut at {cut}");
        let info = info_of(&l);
        assert_eq!(info.client, "203.0.113.9:61000".parse().unwrap());
        let p = info.proxy.expect("proxy");
        assert_eq!(p.version, ProxyVersion::V2);
        assert!(!p.local);
    }
}

#[test]
fn v2_with_tlvs_and_ipv6() {
    let h = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        IPv6::new(
            "2001:db8::9".parse::<std::net::Ipv6Addr>().unwrap(),
            "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
            40000,
            443,
        ),
    )
    .write_tlv(Type::Authority, b"example.com")
    .unwrap()
    .write_tlv(Type::UniqueId, b"abc123")
    .unwrap()
    .build()
    .unwrap();
    let mut stream = h.clone();
    stream.extend_from_slice(b"rest");
    for cut in 0..=stream.len() {
        let mut l = layer(ProxyProtocol::Required);
        let (up, err) = feed(&mut l, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(err, None, "cut at {cut}");
        assert_eq!(up, b"rest");
        assert_eq!(info_of(&l).client, "[2001:db8::9]:40000".parse().unwrap());
    }
}

#[test]
fn v2_local_keeps_the_socket_address() {
    let mut l = layer(ProxyProtocol::Required);
    let (up, err) = feed(&mut l, &[&v2_tcp4(Command::Local)]);
    assert_eq!(err, None);
    assert!(up.is_empty());
    assert!(l.ready());
    let info = info_of(&l);
    assert_eq!(info.client, info.peer);
    let p = info.proxy.expect("proxy");
    assert!(p.local);
    assert_eq!(p.source, None);
}

#[test]
fn v2_oversized_is_refused_from_its_length_field() {
    let mut h = v2_tcp4(Command::Proxy)[..16].to_vec();
    let len = (MAX_V2_HEADER - 16 + 1) as u16;
    h[14..16].copy_from_slice(&len.to_be_bytes());
    let mut l = layer(ProxyProtocol::Required);
    assert_refused(feed(&mut l, &[&h]).1, "oversized");
    // Exactly the bound is fine.
    let mut h = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        IPv4::new([1, 2, 3, 4], [5, 6, 7, 8], 1, 2),
    )
    .write_tlv(Type::NoOp, &vec![0u8; MAX_V2_HEADER - 16 - 12 - 3])
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(h.len(), MAX_V2_HEADER);
    h.extend_from_slice(b"x");
    let mut l = layer(ProxyProtocol::Required);
    assert_eq!(feed(&mut l, &[&h]), (b"x".to_vec(), None));
}

#[test]
fn v1_oversized_is_refused() {
    let mut h = b"PROXY TCP4 ".to_vec();
    h.extend(std::iter::repeat_n(b'1', 120));
    let mut l = layer(ProxyProtocol::Required);
    assert_refused(feed(&mut l, &[&h]).1, "oversized");
}

#[test]
fn garbage_and_missing_headers_are_refused_in_required_mode() {
    for bad in [&b"GET / HTTP/1.1\r\n"[..], b"WHO\r\n", b"\r\n\r\nX"] {
        let mut l = layer(ProxyProtocol::Required);
        assert_refused(feed(&mut l, &[bad]).1, "missing");
    }
    for bad in [
        &b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..],
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
    ] {
        let mut l = layer(ProxyProtocol::Required);
        assert_refused(feed(&mut l, &[bad]).1, "malformed");
    }
    let mut bad_v2 = v2_tcp4(Command::Proxy);
    bad_v2[12] = 0x31; // version 3
    let mut l = layer(ProxyProtocol::Required);
    assert_refused(feed(&mut l, &[&bad_v2]).1, "malformed");
}

#[test]
fn optional_without_a_header_passes_every_byte_up_untouched() {
    for bytes in [
        &b"WHO\r\n"[..],
        b"PROX\r\n",      // diverges from "PROXY " at its fifth byte
        b"\r\n\r\nhello", // diverges from the v2 signature
        b"",
    ] {
        for cut in 0..=bytes.len() {
            let mut l = layer(ProxyProtocol::Optional);
            let (up, err) = feed(&mut l, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(err, None);
            if bytes.is_empty() {
                assert!(!l.ready());
                continue;
            }
            assert_eq!(up, bytes, "cut at {cut}");
            assert!(l.ready());
            let info = info_of(&l);
            assert_eq!(info.client, info.peer);
            assert_eq!(info.proxy, None);
        }
    }
}

#[test]
fn optional_holds_a_strict_prefix_of_a_signature() {
    let mut l = layer(ProxyProtocol::Optional);
    assert_eq!(feed(&mut l, &[b"PROX"]), (vec![], None));
    assert!(!l.ready());
    let mut l = layer(ProxyProtocol::Optional);
    assert_eq!(feed(&mut l, &[&V2_SIGNATURE[..11]]), (vec![], None));
    assert!(!l.ready());
}

#[test]
fn optional_with_a_header_reads_it() {
    let mut l = layer(ProxyProtocol::Optional);
    let (up, err) = feed(&mut l, &[V1, b"x"]);
    assert_eq!((up, err), (b"x".to_vec(), None));
    assert_eq!(info_of(&l).client, "192.0.2.7:56324".parse().unwrap());
}

#[test]
fn after_the_header_bytes_pass_through_both_ways() {
    let mut l = layer(ProxyProtocol::Required);
    feed(&mut l, &[V1]);
    let (up, err) = feed(&mut l, &[b"PROXY not a header now"]);
    assert_eq!((up, err), (b"PROXY not a header now".to_vec(), None));
    let mut down = Vec::new();
    l.output(b"+ok\r\n", &mut down).unwrap();
    assert_eq!(down, b"+ok\r\n");
}

#[test]
fn eof_before_any_byte_is_a_plain_close_and_after_some_a_refusal() {
    let l = layer(ProxyProtocol::Required);
    assert_eq!(l.eof_reason(), CloseReason::PeerClosed);
    let mut l = layer(ProxyProtocol::Required);
    feed(&mut l, &[b"PROXY TCP4 1."]);
    assert_refused(Some(l.eof_reason()), "incomplete");
}

/// The bytes of a header not complete yet are the connection's: charged to its footprint
/// (which the memory budget's overload reset ranks connections by) up to a header's worth,
/// and none once the header is decided (a slow header must not hide 4 KiB per connection).
#[test]
fn held_header_bytes_are_charged_to_the_connection() {
    let mut l = layer(ProxyProtocol::Required);
    assert_eq!(l.held(), 0);
    feed(&mut l, &[&V1[..13]]);
    assert!(l.held() >= 13, "{} bytes charged", l.held());
    let v2 = v2_tcp4(Command::Proxy);
    let mut l = layer(ProxyProtocol::Required);
    feed(&mut l, &[&v2[..v2.len() - 1]]);
    assert!(l.held() >= v2.len() - 1, "{} bytes charged", l.held());
    assert!(l.held() <= MAX_V2_HEADER);
    feed(&mut l, &[&v2[v2.len() - 1..]]);
    assert!(l.ready());
    assert_eq!(l.held(), 0, "decided: nothing held");
}

#[test]
fn the_deadline_is_the_header_timeout_from_creation() {
    let before = Instant::now();
    let l = ProxyLayer::new(ProxyProtocol::Required, Duration::from_millis(250));
    let d = l.setup_deadline().expect("deadline");
    assert!(d >= before + Duration::from_millis(250));
    assert!(d <= Instant::now() + Duration::from_millis(250));
    assert_eq!(l.timeout_reason(), CloseReason::ProxyHeaderTimeout);
}

#[test]
fn modes_parse_from_flags() {
    assert_eq!("required".parse(), Ok(ProxyProtocol::Required));
    assert_eq!("optional".parse(), Ok(ProxyProtocol::Optional));
    assert!("yes".parse::<ProxyProtocol>().is_err());
}

proptest! {
    /// Any split of a header plus payload gives the same client and the same payload; any
    /// byte string in Optional mode either becomes a header or comes back whole.
    #[test]
    fn splits_never_change_the_outcome(
        cuts in proptest::collection::vec(0usize..200, 0..6),
        payload in proptest::collection::vec(any::<u8>(), 0..40),
        v2 in any::<bool>(),
    ) {
        let mut stream = if v2 { v2_tcp4(Command::Proxy) } else { V1.to_vec() };
        stream.extend_from_slice(&payload);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts {
            chunks.push(&stream[at..c]);
            at = c;
        }
        chunks.push(&stream[at..]);
        let mut l = layer(ProxyProtocol::Required);
        let (up, err) = feed(&mut l, &chunks);
        prop_assert_eq!(err, None);
        prop_assert_eq!(up, payload);
        prop_assert!(l.ready());
    }

    #[test]
    fn optional_never_loses_or_changes_bytes(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
        let mut l = layer(ProxyProtocol::Optional);
        let (up, err) = feed(&mut l, &[&bytes]);
        if err.is_none() && l.ready() && info_of(&l).proxy.is_none() {
            prop_assert_eq!(up, bytes);
        } else if err.is_none() && !l.ready() {
            prop_assert!(up.is_empty());
        }
    }
}

/// What `ConnectOptions::send_proxy` sends, read back by this crate's own PROXY layer: the
/// same source and destination, in both versions, also across address families.
#[test]
fn sent_headers_read_back_as_the_same_addresses() {
    let cases: [(&str, &str); 3] = [
        ("192.0.2.7:56324", "198.51.100.1:443"),
        ("[2001:db8::7]:56324", "[2001:db8::1]:443"),
        ("192.0.2.7:56324", "[2001:db8::1]:443"),
    ];
    for (src, dst) in cases {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let mut h = header(version, src, dst);
            if version == ProxyVersion::V1 {
                assert!(
                    h.starts_with(b"PROXY TCP"),
                    "{:?}",
                    String::from_utf8_lossy(&h)
                );
            }
            h.extend_from_slice(b"WHO\r\n");
            let mut l = layer(ProxyProtocol::Required);
            let (up, err) = feed(&mut l, &[&h]);
            assert_eq!(err, None, "{version:?} {src} -> {dst}");
            assert_eq!(up, b"WHO\r\n");
            let info = info_of(&l);
            let p = info.proxy.expect("a header was read");
            assert_eq!(p.version, version);
            let mapped = |s: SocketAddr| match s {
                SocketAddr::V4(v) if !dst.is_ipv4() => {
                    SocketAddr::from((v.ip().to_ipv6_mapped(), v.port()))
                }
                s => s,
            };
            assert_eq!(info.client, mapped(src), "{version:?}");
        }
    }
}
