//! Tests of the RESP decoder, the command reader and the reply encoders, driven
//! the way the engine drives a decoder (append a chunk, decode until `Ok(None)`,
//! drop what each frame consumed, stop at the first error).

use super::*;
use proptest::prelude::*;

/// What the decoder made of a stream: each command's arguments, the error that
/// ended the stream, and the bytes left over without a complete command.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    commands: Vec<Vec<Vec<u8>>>,
    error: Option<DecodeError>,
    leftover: Vec<u8>,
}

fn feed<'a>(mut decoder: Resp, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut buf = Vec::new();
    let mut commands = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&buf) {
                Ok(Some(d)) => {
                    assert!(d.consumed > 0 && d.consumed <= buf.len(), "{d:?}");
                    assert!(
                        d.payload.start <= d.payload.end && d.payload.end <= d.consumed,
                        "{d:?}"
                    );
                    let cmd = Command::parse(&buf[d.payload.clone()]);
                    let args: Vec<Vec<u8>> = cmd.args().map(|a| a.into_owned()).collect();
                    assert_eq!(args.len(), cmd.len(), "argc matches the arguments read");
                    commands.push(args);
                    buf.drain(..d.consumed);
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        commands,
                        error: Some(e),
                        leftover: Vec::new(),
                    }
                }
            }
        }
    }
    Outcome {
        commands,
        error: None,
        leftover: buf,
    }
}

fn whole(decoder: Resp, wire: &[u8]) -> Outcome {
    feed(decoder, [wire])
}

/// Asserts the stream decodes to the same outcome whole, byte by byte and cut at every position.
fn assert_split_invariant(decoder: &Resp, wire: &[u8]) -> Outcome {
    let expected = whole(decoder.clone(), wire);
    assert_eq!(
        feed(decoder.clone(), wire.chunks(1)),
        expected,
        "byte by byte"
    );
    for i in 0..=wire.len() {
        let (a, b) = wire.split_at(i);
        assert_eq!(feed(decoder.clone(), [a, b]), expected, "split at {i}");
    }
    expected
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    write_array_header(&mut out, args.len());
    for a in args {
        write_bulk(&mut out, a);
    }
    out
}

fn cmd(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

fn malformed(msg: &str) -> Option<DecodeError> {
    Some(DecodeError::Malformed(msg.to_string()))
}

#[test]
fn array_of_bulk_strings_is_one_command() {
    let wire = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n";
    let out = assert_split_invariant(&Resp::new(), wire);
    assert_eq!(out.commands, vec![cmd(&["SET", "k", "va\r\nl"])]);
    assert_eq!(out.error, None);
    assert!(out.leftover.is_empty());
}

#[test]
fn the_frame_payload_is_the_whole_array() {
    let wire = b"*1\r\n$4\r\nPING\r\nrest";
    let d = Resp::new().decode(wire).unwrap().unwrap();
    assert_eq!(d.consumed, 14);
    assert_eq!(d.payload, 0..14);
}

#[test]
fn inline_commands_split_on_spaces() {
    let wire = b"SET  k\tvalue \r\nPING\nGET k\r\n";
    let out = assert_split_invariant(&Resp::new(), wire);
    assert_eq!(
        out.commands,
        vec![
            cmd(&["SET", "k", "value"]),
            cmd(&["PING"]),
            cmd(&["GET", "k"])
        ]
    );
}

#[test]
fn inline_quotes_and_escapes_follow_redis() {
    let wire = b"ECHO \"a\\x41b\\n\" 'it\\'s' \"\" x\"y z\"\r\n";
    let out = assert_split_invariant(&Resp::new(), wire);
    assert_eq!(
        out.commands,
        vec![vec![
            b"ECHO".to_vec(),
            b"aAb\n".to_vec(),
            b"it's".to_vec(),
            b"".to_vec(),
            b"xy z".to_vec(),
        ]]
    );
    // Inside single quotes only \' is an escape; a bad \x is an x.
    let out = whole(Resp::new(), b"ECHO 'a\\nb' \"\\xZZ\"\r\n");
    assert_eq!(
        out.commands,
        vec![vec![b"ECHO".to_vec(), b"a\\nb".to_vec(), b"xZZ".to_vec()]]
    );
}

#[test]
fn plain_inline_words_are_borrowed() {
    let line = b"GET key";
    let c = Command::parse(line);
    assert!(c.args().all(|a| matches!(a, Cow::Borrowed(_))));
    let wire = encode(&[b"GET", b"key"]);
    let c = Command::parse(&wire);
    assert!(c.args().all(|a| matches!(a, Cow::Borrowed(_))));
}

#[test]
fn unbalanced_quotes_are_a_protocol_error() {
    for wire in [
        &b"GET \"abc\r\n"[..],
        b"GET 'abc\r\n",
        b"GET \"a\"b\r\n",
        b"GET 'a'b\r\n",
    ] {
        let out = assert_split_invariant(&Resp::new(), wire);
        assert_eq!(
            out.error,
            malformed("unbalanced quotes in request"),
            "{wire:?}"
        );
    }
}

#[test]
fn empty_commands_are_frames_without_arguments() {
    let wire = b"*0\r\n*-1\r\n\r\n\n   \r\n*1\r\n$4\r\nPING\r\n";
    let out = assert_split_invariant(&Resp::new(), wire);
    assert_eq!(
        out.commands,
        vec![vec![], vec![], vec![], vec![], vec![], cmd(&["PING"])]
    );
}

#[test]
fn pipelined_commands_come_out_in_order() {
    let mut wire = Vec::new();
    for i in 0..50 {
        wire.extend_from_slice(&encode(&[b"INCR", format!("k{i}").as_bytes()]));
        wire.extend_from_slice(format!("GET k{i}\r\n").as_bytes());
    }
    let out = whole(Resp::new(), &wire);
    assert_eq!(out.commands.len(), 100);
    for i in 0..50 {
        assert_eq!(out.commands[2 * i], cmd(&["INCR", &format!("k{i}")]));
        assert_eq!(out.commands[2 * i + 1], cmd(&["GET", &format!("k{i}")]));
    }
}

#[test]
fn an_incomplete_command_waits() {
    for wire in [
        &b"*"[..],
        b"*2",
        b"*2\r",
        b"*2\r\n",
        b"*2\r\n$3\r\nGET\r\n",
        b"*2\r\n$3\r\nGET\r\n$3",
        b"*2\r\n$3\r\nGET\r\n$3\r\nke",
        b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r",
        b"GET key",
        b"GET key\r",
    ] {
        let out = whole(Resp::new(), wire);
        assert_eq!(out.error, None, "{wire:?}");
        assert!(out.commands.is_empty(), "{wire:?}");
        assert_eq!(out.leftover, wire);
    }
}

#[test]
fn an_element_that_is_not_a_bulk_string_is_rejected() {
    let out = assert_split_invariant(&Resp::new(), b"*2\r\n$3\r\nGET\r\n:5\r\n");
    assert_eq!(out.error, malformed("expected '$', got ':'"));
    let out = whole(Resp::new(), b"*1\r\n\x01");
    assert_eq!(out.error, malformed("expected '$', got '\\u{1}'"));
}

#[test]
fn bad_counts_and_lengths_use_redis_wording() {
    let cases: &[(&[u8], &str)] = &[
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*+1\r\n", "invalid multibulk length"),
        (b"*1\n", "invalid multibulk length"),
        (b"*1099511627776\r\n", "invalid multibulk length"),
        (b"*99999999999999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$abc\r\n", "invalid bulk length"),
        (b"*1\r\n$1099511627776\r\n", "invalid bulk length"),
        (b"*1\r\n$3\r\nabcde", "bulk string not terminated by CRLF"),
    ];
    for (wire, msg) in cases {
        let out = assert_split_invariant(&Resp::new(), wire);
        assert_eq!(
            out.error,
            malformed(msg),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[test]
fn a_one_gib_argument_count_is_rejected_at_its_header() {
    let out = whole(Resp::new(), b"*1073741824\r\n");
    assert_eq!(out.error, malformed("invalid multibulk length"));
}

#[test]
fn an_oversized_bulk_is_rejected_before_its_bytes_arrive() {
    let decoder = Resp::new().max_bulk(10);
    assert_eq!(
        whole(decoder.clone(), b"*1\r\n$10\r\n0123456789\r\n").commands,
        vec![cmd(&["0123456789"])]
    );
    let out = whole(decoder, b"*1\r\n$11\r\n");
    assert_eq!(out.error, malformed("invalid bulk length"));
}

#[test]
fn the_argument_limit_is_configurable() {
    let decoder = Resp::new().max_args(2);
    assert_eq!(whole(decoder.clone(), &encode(&[b"a", b"b"])).error, None);
    assert_eq!(
        whole(decoder, b"*3\r\n").error,
        malformed("invalid multibulk length")
    );
}

#[test]
fn header_lines_without_terminator_are_bounded() {
    let mut wire = b"*".to_vec();
    wire.extend(std::iter::repeat_n(b'1', 40));
    assert_eq!(
        whole(Resp::new(), &wire).error,
        malformed("too big mbulk count string")
    );
    let mut wire = b"*1\r\n$".to_vec();
    wire.extend(std::iter::repeat_n(b'1', 40));
    assert_eq!(
        whole(Resp::new(), &wire).error,
        malformed("too big bulk count string")
    );
    // The longest valid header still waits for its terminator.
    let wire = b"*-9223372036854775808";
    assert_eq!(whole(Resp::new(), wire).error, None);
}

#[test]
fn inline_line_limit() {
    let decoder = Resp::new().max_inline(8);
    let out = assert_split_invariant(&decoder, b"12345678\r\n12345678\n");
    assert_eq!(out.commands, vec![cmd(&["12345678"]), cmd(&["12345678"])]);
    let out = whole(decoder.clone(), b"123456789");
    assert_eq!(out.error, malformed("too big inline request"));
    // Eight bytes and a '\r' may still be a line of eight.
    assert_eq!(whole(decoder.clone(), b"12345678\r").error, None);
    let out = whole(decoder, b"123456789\r\n");
    assert_eq!(out.error, malformed("too big inline request"));
    let big = vec![b'x'; DEFAULT_MAX_INLINE + 1];
    assert_eq!(
        whole(Resp::new(), &big).error,
        malformed("too big inline request")
    );
}

#[test]
fn the_decoder_is_reset_after_an_error_and_after_a_frame() {
    let mut d = Resp::new();
    assert_eq!(d.decode(b"*2\r\n$1\r\na\r\n"), Ok(None));
    assert!(d.decode(b"*2\r\n$1\r\na\r\n:").is_err());
    assert_eq!(d, Resp::new());
    assert!(d.decode(b"*1\r\n$1\r\na\r\n").unwrap().is_some());
    assert_eq!(d, Resp::new());
}

#[test]
fn a_large_bulk_in_many_pieces() {
    let value = vec![7u8; 1 << 20];
    let wire = encode(&[b"SET", b"k", &value]);
    let out = feed(Resp::new(), wire.chunks(16 * 1024));
    assert_eq!(out.error, None);
    assert_eq!(out.commands.len(), 1);
    assert_eq!(out.commands[0][2], value);
}

#[test]
fn strict_integers_like_string2ll() {
    for (s, v) in [
        ("0", Some(0)),
        ("-1", Some(-1)),
        ("123", Some(123)),
        ("9223372036854775807", Some(i64::MAX)),
        ("-9223372036854775808", Some(i64::MIN)),
        ("9223372036854775808", None),
        ("-0", None),
        ("01", None),
        ("+1", None),
        (" 1", None),
        ("1 ", None),
        ("", None),
        ("-", None),
        ("1a", None),
    ] {
        assert_eq!(parse_i64(s.as_bytes()), v, "{s:?}");
    }
}

#[test]
fn number_lines_read_as_the_line_search_and_parse_i64_do() {
    let numbers = [
        "0",
        "5",
        "00",
        "05",
        "10",
        "99",
        "100",
        "012",
        "-1",
        "-0",
        "+1",
        " 1",
        "1 ",
        "",
        "-",
        "1a",
        "a1",
        "999999999999999999",
        "1000000000000000000",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "0000000000000000000001",
    ];
    let ends = ["\r\n", "\r\nxyz", "\r", "", "\n", "\rx", "x\r\n", "\n\r"];
    for n in numbers {
        for end in ends {
            let buf = format!("${n}{end}").into_bytes();
            let slow = header_line(&buf, 1).map(|(c, after)| (parse_i64(c), after));
            assert_eq!(
                number_line(&buf, 1),
                slow,
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}

#[test]
fn reply_encoders() {
    assert_eq!(ReplyHeader::bulk(0).as_bytes(), b"$0\r\n");
    assert_eq!(ReplyHeader::array(12).as_bytes(), b"*12\r\n");
    assert_eq!(ReplyHeader::integer(-42).as_bytes(), b":-42\r\n");
    assert_eq!(ReplyHeader::map(3).as_bytes(), b"%3\r\n");
    assert_eq!(
        ReplyHeader::integer(i64::MIN).as_bytes(),
        b":-9223372036854775808\r\n"
    );
    assert_eq!(
        ReplyHeader::integer(i64::MAX).as_bytes(),
        b":9223372036854775807\r\n"
    );
    let mut out = Vec::new();
    write_bulk(&mut out, b"hi");
    write_integer(&mut out, 7);
    write_simple(&mut out, b"OK");
    write_error(&mut out, b"ERR bad\r\nthing");
    write_array_header(&mut out, 2);
    assert_eq!(out, b"$2\r\nhi\r\n:7\r\n+OK\r\n-ERR bad  thing\r\n*2\r\n");
    assert_eq!(
        protocol_error_reply(&DecodeError::Malformed("invalid bulk length".into())),
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
}

fn any_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6)
}

proptest! {
    #[test]
    fn any_fragmentation_of_encoded_commands_decodes_to_the_same_commands(
        commands in prop::collection::vec(any_args(), 0..6),
        sizes in prop::collection::vec(1usize..24, 1..16),
    ) {
        let mut wire = Vec::new();
        for c in &commands {
            let refs: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            wire.extend_from_slice(&encode(&refs));
        }
        let mut chunks = Vec::new();
        let mut rest = &wire[..];
        for &s in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at(s.min(rest.len()));
            chunks.push(a);
            rest = b;
        }
        let out = feed(Resp::new(), chunks);
        prop_assert_eq!(out.error, None);
        prop_assert!(out.leftover.is_empty());
        prop_assert_eq!(out.commands, commands);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_fragmentation_changes_nothing(
        wire in prop::collection::vec(
            prop_oneof![
                Just(b'*'), Just(b'$'), Just(b'\r'), Just(b'\n'), Just(b'"'), Just(b'\''),
                Just(b'\\'), Just(b' '), Just(b'-'), b'0'..=b'9', any::<u8>(),
            ],
            0..200,
        ),
        chunk in 1usize..16,
        max in 0usize..40,
    ) {
        let decoder = Resp::new().max_bulk(max).max_args(max).max_inline(max);
        let expected = whole(decoder.clone(), &wire);
        prop_assert_eq!(feed(decoder, wire.chunks(chunk)), expected);
    }

    #[test]
    fn plain_inline_words_round_trip(
        words in prop::collection::vec("[a-zA-Z0-9:_.-]{1,12}", 1..6),
    ) {
        let line = format!("{}\r\n", words.join(" "));
        let out = whole(Resp::new(), line.as_bytes());
        let expected: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        prop_assert_eq!(out.commands, vec![expected]);
    }
}
