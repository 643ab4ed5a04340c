//! Building requests and verifying replies, per mode.
//!
//! Every message has a 64-bit *seed* (derived from the connection id and the
//! message's sequence number). The payload is a pure function of the seed and
//! the byte position, so the expected reply can be regenerated for any byte
//! range: replies are verified as a stream, chunk by chunk, however the
//! server fragments or coalesces them, without buffering whole replies.
//!
//! Every mode's reply is a byte string fully determined by what was sent:
//! - echo: the payload itself;
//! - packet: the frame as sent (length header + payload);
//! - line: `+<payload>\r\n` (after the `+OK ready\r\n` greeting).

use std::fmt;

/// The greeting a line-mode server sends on every new connection.
pub const LINE_GREETING: &[u8] = b"+OK ready\r\n";

/// Alphabet for line-mode payloads: 64 printable ASCII characters, none of
/// them a space, `\r` or `\n`.
const ASCII64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Layout of a packet-mode length header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// Header width in bytes: 1, 2, 4 or 8.
    pub width: u8,
    pub little_endian: bool,
    /// Whether the length value counts the header bytes too.
    pub includes_header: bool,
}

impl Default for FrameLayout {
    /// 4-byte big-endian, payload-only length (tokio-util's
    /// `LengthDelimitedCodec` default).
    fn default() -> Self {
        FrameLayout {
            width: 4,
            little_endian: false,
            includes_header: false,
        }
    }
}

impl FrameLayout {
    pub fn new(width: u8, little_endian: bool, includes_header: bool) -> Result<Self, String> {
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(format!("length width must be 1, 2, 4 or 8 (got {width})"));
        }
        Ok(FrameLayout {
            width,
            little_endian,
            includes_header,
        })
    }

    pub fn header_len(&self) -> usize {
        self.width as usize
    }

    /// Largest value the header can hold.
    fn max_value(&self) -> u64 {
        if self.width == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * self.width as u32)) - 1
        }
    }

    /// The header value for a payload of `payload_len` bytes, if it fits.
    fn value_for(&self, payload_len: usize) -> Option<u64> {
        let extra = if self.includes_header {
            self.header_len()
        } else {
            0
        };
        let v = (payload_len as u64).checked_add(extra as u64)?;
        (v <= self.max_value()).then_some(v)
    }

    /// Appends the header for a payload of `payload_len` bytes.
    pub fn encode_header(&self, payload_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
        let v = self.value_for(payload_len).ok_or_else(|| {
            format!(
                "payload of {payload_len} bytes does not fit a {}-byte length header",
                self.width
            )
        })?;
        let w = self.header_len();
        if self.little_endian {
            out.extend_from_slice(&v.to_le_bytes()[..w]);
        } else {
            out.extend_from_slice(&v.to_be_bytes()[8 - w..]);
        }
        Ok(())
    }

    /// Parses a header at the start of `buf`: `Some(payload_len)`, or `None`
    /// if `buf` is shorter than a header or the value is impossible (smaller
    /// than the header when the length includes it).
    pub fn decode_header(&self, buf: &[u8]) -> Option<usize> {
        let w = self.header_len();
        let h = buf.get(..w)?;
        let mut bytes = [0u8; 8];
        let v = if self.little_endian {
            bytes[..w].copy_from_slice(h);
            u64::from_le_bytes(bytes)
        } else {
            bytes[8 - w..].copy_from_slice(h);
            u64::from_be_bytes(bytes)
        };
        let payload = if self.includes_header {
            v.checked_sub(w as u64)?
        } else {
            v
        };
        usize::try_from(payload).ok()
    }
}

impl fmt::Display for FrameLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-byte {} length{}",
            self.width,
            if self.little_endian { "LE" } else { "BE" },
            if self.includes_header {
                " (includes header)"
            } else {
                ""
            }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Packet(FrameLayout),
    Line,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Packet(_) => "packet",
            Mode::Line => "line",
        }
    }
}

/// What a connection sends and expects, for one mode and payload size.
#[derive(Clone, Debug)]
pub struct Proto {
    mode: Mode,
    payload_len: usize,
    /// The (seed-independent) header of every packet-mode frame.
    frame_header: Vec<u8>,
}

impl Proto {
    pub fn new(mode: Mode, payload_len: usize) -> Result<Self, String> {
        let mut frame_header = Vec::new();
        match mode {
            Mode::Echo if payload_len == 0 => {
                return Err("echo mode needs a payload of at least 1 byte".into())
            }
            Mode::Line if payload_len == 0 => {
                return Err("line mode needs a payload of at least 1 byte".into())
            }
            Mode::Packet(layout) => layout.encode_header(payload_len, &mut frame_header)?,
            _ => {}
        }
        Ok(Proto {
            mode,
            payload_len,
            frame_header,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// Bytes the server sends on connect before anything else.
    pub fn greeting(&self) -> &'static [u8] {
        match self.mode {
            Mode::Line => LINE_GREETING,
            _ => b"",
        }
    }

    pub fn request_len(&self) -> usize {
        match self.mode {
            Mode::Echo => self.payload_len,
            Mode::Packet(_) => self.frame_header.len() + self.payload_len,
            Mode::Line => b"ECHO ".len() + self.payload_len + 2,
        }
    }

    pub fn reply_len(&self) -> usize {
        match self.mode {
            Mode::Echo => self.payload_len,
            Mode::Packet(_) => self.frame_header.len() + self.payload_len,
            Mode::Line => 1 + self.payload_len + 2,
        }
    }

    fn ascii(&self) -> bool {
        matches!(self.mode, Mode::Line)
    }

    /// Appends the request for message `seed` to `out`.
    pub fn write_request(&self, seed: u64, out: &mut Vec<u8>) {
        let start = out.len();
        match self.mode {
            Mode::Echo => {}
            Mode::Packet(_) => out.extend_from_slice(&self.frame_header),
            Mode::Line => out.extend_from_slice(b"ECHO "),
        }
        let p = out.len();
        out.resize(p + self.payload_len, 0);
        fill_payload(seed, 0, &mut out[p..], self.ascii());
        if self.mode == Mode::Line {
            out.extend_from_slice(b"\r\n");
        }
        debug_assert_eq!(out.len() - start, self.request_len());
    }

    /// Fills `out` with the expected reply bytes of message `seed`, starting
    /// at byte `offset` of the reply. `offset + out.len()` must not exceed
    /// [`Proto::reply_len`].
    pub fn expected_reply(&self, seed: u64, offset: usize, out: &mut [u8]) {
        debug_assert!(offset + out.len() <= self.reply_len());
        // The reply is prefix ++ payload ++ suffix; fill each overlapping part.
        let (prefix, suffix): (&[u8], &[u8]) = match self.mode {
            Mode::Echo => (b"", b""),
            Mode::Packet(_) => (&self.frame_header, b""),
            Mode::Line => (b"+", b"\r\n"),
        };
        let end = offset + out.len();
        let pay_start = prefix.len();
        let pay_end = pay_start + self.payload_len;
        let mut pos = offset;
        let mut o = 0;
        while pos < end {
            let (n, src_is) = if pos < pay_start {
                ((pay_start.min(end)) - pos, 0)
            } else if pos < pay_end {
                ((pay_end.min(end)) - pos, 1)
            } else {
                (end - pos, 2)
            };
            let dst = &mut out[o..o + n];
            match src_is {
                0 => dst.copy_from_slice(&prefix[pos..pos + n]),
                1 => fill_payload(seed, pos - pay_start, dst, self.ascii()),
                _ => dst.copy_from_slice(&suffix[pos - pay_end..pos - pay_end + n]),
            }
            pos += n;
            o += n;
        }
    }

    /// Describes how a received reply chunk differs from the expected bytes
    /// (`got` and `want` cover the same range starting at reply `offset`).
    pub fn describe_mismatch(&self, offset: usize, got: &[u8], want: &[u8]) -> String {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        let at = offset + i;
        let header_note;
        let what = match self.mode {
            Mode::Packet(layout) if at < layout.header_len() => {
                header_note = match (offset, layout.decode_header(got)) {
                    (0, Some(len)) => format!(" (in the length header: says {len} payload bytes)"),
                    _ => " (in the length header)".to_string(),
                };
                header_note.as_str()
            }
            Mode::Line if at == 0 => " (reply does not start with '+')",
            Mode::Line if at > self.payload_len => " (in the line terminator)",
            _ => "",
        };
        format!(
            "byte {at} of a {}-byte reply is {:#04x}, expected {:#04x}{what}",
            self.reply_len(),
            got[i],
            want[i]
        )
    }
}

/// The seed of message number `seq` on connection `conn`.
pub fn message_seed(conn: u64, seq: u64) -> u64 {
    splitmix64((conn << 40) ^ seq ^ 0x5eed_0000_0000_0000)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` with payload bytes `offset..offset + out.len()` of the payload
/// of message `seed`. Byte `i` depends only on `(seed, i)`.
pub fn fill_payload(seed: u64, offset: usize, out: &mut [u8], ascii: bool) {
    let mut pos = offset;
    let mut o = 0;
    while o < out.len() {
        let block = (pos / 8) as u64;
        let word = splitmix64(seed ^ block.wrapping_mul(0xd6e8_feb8_6659_fd93)).to_le_bytes();
        let start = pos % 8;
        let n = (8 - start).min(out.len() - o);
        out[o..o + n].copy_from_slice(&word[start..start + n]);
        pos += n;
        o += n;
    }
    if ascii {
        for b in out.iter_mut() {
            *b = ASCII64[(*b & 63) as usize];
        }
    }
}

/// Streaming verifier for one reply: feed it chunks as they arrive.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplyCursor {
    /// Bytes of the current reply already received and verified.
    pub offset: usize,
}

/// Outcome of feeding bytes to a [`ReplyCursor`].
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    /// `used` bytes matched; the reply is still incomplete.
    Partial { used: usize },
    /// `used` bytes matched and completed the reply.
    Complete { used: usize },
    /// The bytes differ from what was expected.
    Mismatch(String),
}

impl ReplyCursor {
    /// Verifies the start of `data` against the rest of the reply to message
    /// `seed`. `scratch` is reused to regenerate the expected bytes.
    pub fn feed(&mut self, proto: &Proto, seed: u64, data: &[u8], scratch: &mut Vec<u8>) -> Feed {
        let total = proto.reply_len();
        let n = data.len().min(total - self.offset);
        if scratch.len() < n {
            scratch.resize(n, 0);
        }
        let want = &mut scratch[..n];
        proto.expected_reply(seed, self.offset, want);
        if data[..n] != *want {
            return Feed::Mismatch(proto.describe_mismatch(self.offset, &data[..n], want));
        }
        self.offset += n;
        if self.offset == total {
            self.offset = 0;
            Feed::Complete { used: n }
        } else {
            Feed::Partial { used: n }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_reply(p: &Proto, seed: u64) -> Vec<u8> {
        let mut v = vec![0; p.reply_len()];
        p.expected_reply(seed, 0, &mut v);
        v
    }

    fn packet(width: u8, le: bool, incl: bool) -> Mode {
        Mode::Packet(FrameLayout::new(width, le, incl).unwrap())
    }

    /// Feeds `data` in chunks of `chunk` bytes; returns the outcomes.
    fn feed_all(p: &Proto, seed: u64, data: &[u8], chunk: usize) -> Vec<Feed> {
        let mut c = ReplyCursor::default();
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        for part in data.chunks(chunk) {
            let f = c.feed(p, seed, part, &mut scratch);
            let stop = matches!(f, Feed::Mismatch(_));
            out.push(f);
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn echo_reply_is_the_request() {
        let p = Proto::new(Mode::Echo, 100).unwrap();
        let mut req = Vec::new();
        p.write_request(42, &mut req);
        assert_eq!(req.len(), 100);
        assert_eq!(req, full_reply(&p, 42));
    }

    #[test]
    fn payloads_vary_per_message() {
        let p = Proto::new(Mode::Echo, 64).unwrap();
        let a = full_reply(&p, message_seed(0, 0));
        let b = full_reply(&p, message_seed(0, 1));
        let c = full_reply(&p, message_seed(1, 0));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }

    #[test]
    fn expected_reply_any_range_matches_whole() {
        for mode in [Mode::Echo, Mode::Line, packet(2, true, true)] {
            let p = Proto::new(mode, 37).unwrap();
            let whole = full_reply(&p, 7);
            for start in 0..whole.len() {
                for end in start..=whole.len() {
                    let mut part = vec![0; end - start];
                    p.expected_reply(7, start, &mut part);
                    assert_eq!(part, &whole[start..end], "{mode:?} {start}..{end}");
                }
            }
        }
    }

    #[test]
    fn verify_accepts_fragmented_reply() {
        let p = Proto::new(Mode::Echo, 1000).unwrap();
        let reply = full_reply(&p, 9);
        for chunk in [1, 7, 999, 1000] {
            let fs = feed_all(&p, 9, &reply, chunk);
            assert!(
                matches!(fs.last(), Some(Feed::Complete { .. })),
                "chunk {chunk}"
            );
            let used: usize = fs
                .iter()
                .map(|f| match f {
                    Feed::Partial { used } | Feed::Complete { used } => *used,
                    Feed::Mismatch(_) => panic!("unexpected mismatch"),
                })
                .sum();
            assert_eq!(used, 1000);
        }
    }

    #[test]
    fn verify_catches_a_flipped_byte() {
        for mode in [Mode::Echo, Mode::Line, packet(4, false, false)] {
            let p = Proto::new(mode, 128).unwrap();
            let good = full_reply(&p, 5);
            for i in [0, 1, 3, 4, 64, good.len() - 1] {
                let mut bad = good.clone();
                bad[i] ^= 0x01;
                let fs = feed_all(&p, 5, &bad, 16);
                match fs.last() {
                    Some(Feed::Mismatch(msg)) => {
                        assert!(msg.contains(&format!("byte {i} ")), "{msg}")
                    }
                    other => panic!("{mode:?}: flipped byte {i} not caught: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn verify_catches_a_stale_reply() {
        // The reply to a different message (e.g. misrouted) must not pass.
        let p = Proto::new(Mode::Echo, 32).unwrap();
        let other = full_reply(&p, message_seed(3, 1));
        let fs = feed_all(&p, message_seed(3, 2), &other, 32);
        assert!(matches!(fs[0], Feed::Mismatch(_)));
    }

    #[test]
    fn short_reply_is_not_complete() {
        // A reply cut short (connection closed mid-reply) leaves the cursor
        // mid-reply: the connection reports it as a short reply on EOF.
        let p = Proto::new(packet(4, false, false), 50).unwrap();
        let reply = full_reply(&p, 1);
        let mut c = ReplyCursor::default();
        let mut scratch = Vec::new();
        let f = c.feed(&p, 1, &reply[..30], &mut scratch);
        assert_eq!(f, Feed::Partial { used: 30 });
        assert_eq!(c.offset, 30);
    }

    #[test]
    fn coalesced_replies_split_at_boundary() {
        let p = Proto::new(Mode::Echo, 10).unwrap();
        let mut data = full_reply(&p, 1);
        data.extend(full_reply(&p, 2));
        let mut c = ReplyCursor::default();
        let mut s = Vec::new();
        assert_eq!(c.feed(&p, 1, &data, &mut s), Feed::Complete { used: 10 });
        assert_eq!(
            c.feed(&p, 2, &data[10..], &mut s),
            Feed::Complete { used: 10 }
        );
    }

    #[test]
    fn frame_layouts() {
        let cases: &[(u8, bool, bool, &[u8])] = &[
            (1, false, false, &[5]),
            (1, true, true, &[6]),
            (2, false, false, &[0, 5]),
            (2, true, false, &[5, 0]),
            (2, false, true, &[0, 7]),
            (4, false, false, &[0, 0, 0, 5]),
            (4, true, false, &[5, 0, 0, 0]),
            (4, false, true, &[0, 0, 0, 9]),
            (8, false, false, &[0, 0, 0, 0, 0, 0, 0, 5]),
            (8, true, true, &[13, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for &(w, le, incl, header) in cases {
            let layout = FrameLayout::new(w, le, incl).unwrap();
            let mut h = Vec::new();
            layout.encode_header(5, &mut h).unwrap();
            assert_eq!(h, header, "{layout}");
            assert_eq!(layout.decode_header(&h), Some(5), "{layout}");
            assert_eq!(layout.decode_header(&h[..h.len() - 1]), None);

            let p = Proto::new(Mode::Packet(layout), 5).unwrap();
            let mut req = Vec::new();
            p.write_request(77, &mut req);
            assert_eq!(&req[..w as usize], header);
            assert_eq!(req.len(), w as usize + 5);
            assert_eq!(
                req,
                full_reply(&p, 77),
                "packet reply is the frame unchanged"
            );
        }
    }

    #[test]
    fn default_layout_is_4_byte_big_endian_payload_only() {
        assert_eq!(
            FrameLayout::default(),
            FrameLayout::new(4, false, false).unwrap()
        );
    }

    #[test]
    fn frame_length_must_fit_width() {
        assert!(FrameLayout::new(3, false, false).is_err());
        assert!(Proto::new(packet(1, false, false), 255).is_ok());
        assert!(Proto::new(packet(1, false, false), 256).is_err());
        assert!(Proto::new(packet(1, false, true), 254).is_ok());
        assert!(Proto::new(packet(1, false, true), 255).is_err());
        assert!(Proto::new(packet(2, true, false), 65535).is_ok());
        assert!(Proto::new(packet(2, true, false), 65536).is_err());
        // includes_header: a value smaller than the header is invalid.
        let l = FrameLayout::new(2, false, true).unwrap();
        assert_eq!(l.decode_header(&[0, 1]), None);
        assert_eq!(l.decode_header(&[0, 2]), Some(0));
    }

    #[test]
    fn line_request_and_reply() {
        let p = Proto::new(Mode::Line, 20).unwrap();
        assert_eq!(p.greeting(), b"+OK ready\r\n");
        let mut req = Vec::new();
        p.write_request(3, &mut req);
        assert!(req.starts_with(b"ECHO "));
        assert!(req.ends_with(b"\r\n"));
        let payload = &req[5..req.len() - 2];
        assert_eq!(payload.len(), 20);
        assert!(payload
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'\r' && *b != b'\n'));
        let reply = full_reply(&p, 3);
        assert_eq!(reply[0], b'+');
        assert_eq!(&reply[1..21], payload);
        assert_eq!(&reply[21..], b"\r\n");
        assert!(Proto::new(Mode::Line, 0).is_err());
    }

    #[test]
    fn line_mismatch_in_terminator_is_described() {
        let p = Proto::new(Mode::Line, 4).unwrap();
        let mut bad = full_reply(&p, 1);
        let last = bad.len() - 1;
        bad[last] = b'x';
        match feed_all(&p, 1, &bad, 100).pop() {
            Some(Feed::Mismatch(m)) => assert!(m.contains("terminator"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
