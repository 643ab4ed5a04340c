use rustls::pki_types::ServerName;

use super::TlsLayer;
use crate::info::CloseReason;
use crate::layer::fuzzing::tls_configs;
use crate::layer::Layer;

/// A client and a server layer, handshake done.
fn established() -> (TlsLayer, TlsLayer) {
    let (server_config, client_config) = tls_configs();
    let mut server = TlsLayer::server(&server_config).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = TlsLayer::client(&client_config, name).unwrap();
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
    client.start(&mut c2s).unwrap();
    for _ in 0..8 {
        let mut up = Vec::new();
        server
            .input(&std::mem::take(&mut c2s), &mut up, &mut s2c)
            .unwrap();
        client
            .input(&std::mem::take(&mut s2c), &mut up, &mut c2s)
            .unwrap();
        assert!(up.is_empty());
    }
    assert!(server.ready() && client.ready());
    (server, client)
}

/// close_notify and 16 KiB after it in one call (issue 20's attack): the call returns, says
/// EOF, and ignores what follows; so does every later call.
#[test]
fn bytes_after_close_notify_are_ignored() {
    let (mut server, mut client) = established();
    let mut wire = Vec::new();
    client.output(b"last words", &mut wire).unwrap();
    client.close(&mut wire);
    wire.resize(wire.len() + (16 << 10), b'x');
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let input = server.input(&wire, &mut up, &mut down).unwrap();
    assert!(input.eof);
    assert_eq!(up, b"last words");
    assert!(server.discarded > 0 && server.discarded <= 16 << 10);
    let before = server.discarded;
    let input = server.input(&[b'y'; 100], &mut up, &mut down).unwrap();
    assert!(input.eof);
    assert_eq!(server.discarded, before + 100);
    assert_eq!(up, b"last words", "nothing more comes up");
    // Our side may still send (a half-close), then end.
    let mut back = Vec::new();
    server.output(b"reply", &mut back).unwrap();
    server.close(&mut back);
    let mut got = Vec::new();
    let input = client.input(&back, &mut got, &mut Vec::new()).unwrap();
    assert!(input.eof);
    assert_eq!(got, b"reply");
}

/// Bad input after our own close_notify is a TLS error for the connection, never a panic out
/// of the layer (rustls debug-asserts there; see `TlsLayer::process`).
#[test]
fn bad_record_after_our_close_notify_is_an_error() {
    let (mut server, _client) = established();
    server.close(&mut Vec::new());
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend_from_slice(&[0xab; 0x20]);
    let r = server.input(&record, &mut Vec::new(), &mut Vec::new());
    assert!(matches!(r, Err(CloseReason::TlsError(_))), "{r:?}");
}

/// Garbage instead of a record header (content type 0x78): an error, at once.
#[test]
fn garbage_is_an_error() {
    let (mut server, _client) = established();
    let r = server.input(&[b'x'; 64], &mut Vec::new(), &mut Vec::new());
    assert!(matches!(r, Err(CloseReason::TlsError(_))), "{r:?}");
}

/// A stack of TLS alone (the common case, read without an intermediate copy): the plaintext
/// is appended to what `up` already holds, the layer's own bytes go to `down`; after an error
/// nothing of that call comes up and the stack is dead.
#[test]
fn stack_of_tls_alone_appends_plaintext_and_keeps_nothing_after_an_error() {
    use crate::layer::Stack;
    let (server, mut client) = established();
    let mut stack = Stack::new(vec![Box::new(server)], std::time::Duration::from_secs(5));
    let mut wire = Vec::new();
    client.output(b"hello", &mut wire).unwrap();
    let (mut up, mut down) = (b"held".to_vec(), Vec::new());
    let input = stack.input(&wire, &mut up, &mut down).unwrap();
    assert!(!input.eof);
    assert_eq!(up, b"heldhello");
    assert!(down.is_empty(), "nothing to send for application data");
    // A good record followed by garbage in one receive: an error, and `up` keeps only what
    // it held before the call.
    let mut wire = Vec::new();
    client.output(b"lost", &mut wire).unwrap();
    wire.extend_from_slice(&[b'x'; 64]);
    let r = stack.input(&wire, &mut up, &mut down);
    assert!(matches!(r, Err(CloseReason::TlsError(_))), "{r:?}");
    assert_eq!(up, b"heldhello");
    assert!(!down.is_empty(), "the alert that says why");
    let r = stack.input(b"more", &mut up, &mut Vec::new());
    assert!(matches!(r, Ok(i) if !i.eof));
    assert_eq!(up, b"heldhello", "a dead stack gives nothing");
}

/// Runs a handshake with every flight fed to the other side in pieces of `piece` bytes.
fn established_in_pieces(piece: usize) -> (TlsLayer, TlsLayer) {
    let (server_config, client_config) = tls_configs();
    let mut server = TlsLayer::server(&server_config).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = TlsLayer::client(&client_config, name).unwrap();
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
    client.start(&mut c2s).unwrap();
    for _ in 0..8 {
        let mut up = Vec::new();
        for p in std::mem::take(&mut c2s).chunks(piece) {
            server.input(p, &mut up, &mut s2c).unwrap();
        }
        for p in std::mem::take(&mut s2c).chunks(piece) {
            client.input(p, &mut up, &mut c2s).unwrap();
        }
        assert!(up.is_empty());
    }
    assert!(server.ready() && client.ready());
    (server, client)
}

/// The point of the unbuffered API: once a call has consumed every complete record, an idle
/// connection keeps no buffer (rustls' buffered connection kept a 4 KiB one each).
#[test]
fn an_idle_connection_holds_no_buffer() {
    let (mut server, mut client) = established();
    assert_eq!((server.held(), client.held()), (0, 0));
    let mut wire = Vec::new();
    client.output(&[7; 5000], &mut wire).unwrap();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    server.input(&wire, &mut up, &mut down).unwrap();
    assert_eq!(up, [7; 5000]);
    assert_eq!(server.held(), 0, "nothing kept once the record is in");
}

/// Handshake flights and a record cut at every byte: the start is held (exactly what is
/// pending), the whole comes up once, and the held bytes are freed when the record completes.
#[test]
fn records_split_at_every_byte_come_up_whole() {
    for piece in [1, 2, 7, 100] {
        let (mut server, mut client) = established_in_pieces(piece);
        assert_eq!(server.held(), 0);
        let mut wire = Vec::new();
        let msg: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        client.output(&msg, &mut wire).unwrap();
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for (i, p) in wire.chunks(piece).enumerate() {
            server.input(p, &mut up, &mut down).unwrap();
            let fed = ((i + 1) * piece).min(wire.len());
            if fed < wire.len() {
                assert!(up.is_empty(), "nothing before the record is whole");
                assert_eq!(server.rx.len(), fed, "the start of the record, exactly");
                assert!(
                    server.held() <= 2 * fed + (1 << 10),
                    "no spare capacity kept"
                );
            }
        }
        assert_eq!(up, msg, "piece {piece}");
        assert_eq!(server.held(), 0, "freed once the record is in");
        assert!(down.is_empty());
    }
}

/// A handshake message announced as 60,000 bytes and sent in records of one byte each (6
/// bytes on the wire per payload byte): held until its end would be 360 KB. Refused once the
/// held bytes pass the bound, with a TLS error; nothing panics.
#[test]
fn a_handshake_message_in_tiny_records_is_refused_at_the_bound() {
    let (server_config, _) = tls_configs();
    let mut server = TlsLayer::server(&server_config).unwrap();
    let mut first = Vec::new();
    for b in [0x01, 0x00, 0xea, 0x60] {
        first.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, b]);
    }
    let (mut up, mut down) = (Vec::new(), Vec::new());
    server.input(&first, &mut up, &mut down).unwrap();
    let chunk: Vec<u8> = [0x16, 0x03, 0x01, 0x00, 0x01, 0x00].repeat(1000);
    let mut sent = first.len();
    let r = loop {
        match server.input(&chunk, &mut up, &mut down) {
            Ok(_) => {
                sent += chunk.len();
                assert!(server.rx.len() <= super::MAX_HELD + chunk.len());
                assert!(sent < 400 << 10, "never refused");
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&r, CloseReason::TlsError(m) if m.contains("without a complete")),
        "{r:?}"
    );
    assert!(
        sent >= super::MAX_HELD - chunk.len(),
        "refused at {sent} bytes"
    );
    assert!(up.is_empty());
}

/// Many records in one receive (a pipelining client): each pass of the state machine takes
/// one, and a long run of passes that all consume bytes is progress, not a loop: every record
/// comes up, in order, and nothing is held.
#[test]
fn a_hundred_records_in_one_receive_all_come_up() {
    let (mut server, mut client) = established();
    let mut wire = Vec::new();
    let mut msg = Vec::new();
    for i in 0..100u8 {
        client.output(&[i; 3], &mut wire).unwrap();
        msg.extend_from_slice(&[i; 3]);
    }
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let input = server.input(&wire, &mut up, &mut down).unwrap();
    assert!(!input.eof);
    assert_eq!(up, msg);
    assert_eq!(server.held(), 0, "every byte consumed");
    assert!(down.is_empty());
}

/// A big record completed by a receive that also starts the next one: what is held is the
/// next record's start, and the buffer it is held in is cut to it (it had grown to the big
/// record): a slow peer does not keep 16 KiB per connection for 100 bytes.
#[test]
fn a_held_start_keeps_no_buffer_of_the_record_before() {
    let (mut server, mut client) = established();
    let mut wire = Vec::new();
    client.output(&[b'a'; 16 << 10], &mut wire).unwrap();
    let big = wire.len();
    client.output(&[b'b'; 1000], &mut wire).unwrap();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    server.input(&wire[..10 << 10], &mut up, &mut down).unwrap();
    assert!(up.is_empty());
    assert_eq!(server.rx.len(), 10 << 10);
    server
        .input(&wire[10 << 10..big + 100], &mut up, &mut down)
        .unwrap();
    assert_eq!(up, [b'a'; 16 << 10]);
    assert_eq!(server.rx.len(), 100, "the next record's start, exactly");
    assert!(
        server.held() <= 2 * 100 + (1 << 10),
        "{} bytes held for 100",
        server.held()
    );
    server
        .input(&wire[big + 100..], &mut up, &mut down)
        .unwrap();
    assert_eq!(&up[16 << 10..], [b'b'; 1000]);
    assert_eq!(server.held(), 0);
}

/// Encrypting sizes the output to the data plus the records' overhead: the wire queue
/// (pooled, and charged to the connection's footprint by capacity) is not over-allocated.
#[test]
fn encrypting_does_not_over_allocate_the_wire() {
    let (_server, mut client) = established();
    for n in [1usize, 1000, 40 << 10] {
        let mut wire = Vec::new();
        client.output(&vec![b'x'; n], &mut wire).unwrap();
        let records = n.div_ceil(16 << 10);
        assert!(wire.len() > n && wire.len() <= n + records * super::OVERHEAD);
        assert!(
            wire.capacity() <= 2 * (n + records * super::OVERHEAD),
            "{} bytes of capacity for {n}",
            wire.capacity()
        );
    }
}

/// The room loop: a writer that needs more room than it was given gets it, once more; one
/// that says it needs no more than it was given (a contract broken below us) is an error, not
/// a loop, and leaves `down` as it was.
#[test]
fn append_sized_grows_once_and_refuses_a_writer_that_does_not_advance() {
    let mut down = b"kept".to_vec();
    let mut calls = 0;
    super::append_sized(&mut down, 8, |out| {
        calls += 1;
        if out.len() < 100 {
            return Err(Ok(100));
        }
        out[..5].copy_from_slice(b"hello");
        Ok(5)
    })
    .unwrap();
    assert_eq!(down, b"kepthello");
    assert_eq!(calls, 2);
    for asks in [8, 4] {
        let mut calls = 0;
        let r = super::append_sized(&mut down, 8, |_| {
            calls += 1;
            assert!(calls < 4, "asked again and again");
            Err(Ok(asks))
        });
        assert!(r.is_err(), "asks for {asks} with 8 given");
        assert_eq!(calls, 1);
        assert_eq!(down, b"kepthello");
    }
}

/// A good record and a forged one (its tag altered) in one receive: the good one's plaintext
/// comes up, the forged one is a TLS error with the alert that says why, and the bytes the
/// call consumed before the error are accounted exactly (no panic on the rest).
#[test]
fn a_forged_record_after_a_good_one_is_an_error_with_its_alert() {
    let (mut server, mut client) = established();
    let mut wire = Vec::new();
    client.output(b"good", &mut wire).unwrap();
    client.output(b"forged record", &mut wire).unwrap();
    let last = wire.len() - 1;
    wire[last] ^= 0x55;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let r = server.input(&wire, &mut up, &mut down);
    assert!(matches!(&r, Err(CloseReason::TlsError(_))), "{r:?}");
    assert_eq!(up, b"good");
    assert!(!down.is_empty(), "the alert");
    let mut got = Vec::new();
    let r = client.input(&down, &mut got, &mut Vec::new());
    assert!(
        matches!(&r, Err(CloseReason::TlsError(m)) if m.contains("BadRecordMac")),
        "{r:?}"
    );
    assert!(got.is_empty());
}

/// A ClientHello and a second, empty one in the same receive: the first is answered, the
/// second is a TLS error (an alert goes after the server's flight), and the bytes consumed
/// before the error are accounted exactly (no panic on the rest).
#[test]
fn a_bad_handshake_message_after_a_good_one_is_an_error() {
    let (server_config, client_config) = tls_configs();
    let mut server = TlsLayer::server(&server_config).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = TlsLayer::client(&client_config, name).unwrap();
    let mut c2s = Vec::new();
    client.start(&mut c2s).unwrap();
    c2s.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00]);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let r = server.input(&c2s, &mut up, &mut down);
    assert!(matches!(&r, Err(CloseReason::TlsError(_))), "{r:?}");
    assert!(up.is_empty());
    assert!(!down.is_empty(), "the server's flight and the alert");
}
