//! Inputs from fuzzing the gateway's parsers (`fuzz/`, run with `scripts/fuzz.sh`): the
//! WebSocket codec (request head and frames) and the client message parser. The nasty
//! inputs the fuzzers' corpora show are interesting, and any input that ever crashed a
//! target. Each must give a clear error, never a panic, and must not make the codec
//! reserve the size a header claims: the read buffer's capacity stays small.

use bytes::BytesMut;
use tethernet_gateway::protocol::ClientMessage;
use tethernet_gateway::websocket::{WebSocketCodec, WsError, WsIn, WsOut};
use tokio_util::codec::{Decoder, Encoder};

/// Most a read buffer may grow to in these tests: far below any size a header claims.
const SMALL: usize = 256 * 1024;

const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A codec past the handshake.
fn open(max_message: usize) -> WebSocketCodec {
    let mut codec = WebSocketCodec::new(max_message);
    let mut buf = BytesMut::from(REQUEST);
    let Ok(Some(WsIn::Request(request))) = codec.decode(&mut buf) else {
        panic!("no request");
    };
    let accept = request.websocket_accept().unwrap().unwrap();
    codec
        .encode(WsOut::Accept { accept }, &mut BytesMut::new())
        .unwrap();
    codec
}

/// Feeds `reads` one after the other: the items, the first error, and the largest
/// capacity the read buffer reached. The error must stick.
fn feed(codec: &mut WebSocketCodec, reads: &[&[u8]]) -> (Vec<WsIn>, Option<WsError>, usize) {
    let (mut buf, mut items, mut capacity) = (BytesMut::new(), Vec::new(), 0);
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            let result = codec.decode(&mut buf);
            capacity = capacity.max(buf.capacity());
            match result {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(err) => {
                    assert!(codec.decode(&mut buf).is_err(), "recovered after {err}");
                    return (items, Some(err), capacity);
                }
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(item)) => items.push(item),
        Ok(None) => assert!(buf.is_empty(), "{} bytes left, no error", buf.len()),
        Err(err) => return (items, Some(err), capacity),
    }
    (items, None, capacity)
}

/// A masked client frame header (mask 0) claiming `len` bytes, in the 64-bit form.
fn header_64(opcode: u8, len: u64) -> Vec<u8> {
    [
        &[0x80 | opcode, 0x80 | 127][..],
        &len.to_be_bytes(),
        &[0; 4],
    ]
    .concat()
}

#[test]
fn frame_claiming_4_gib_is_refused_before_its_payload() {
    let (items, err, capacity) = feed(&mut open(1 << 20), &[&header_64(2, 1 << 32), &[0; 1000]]);
    assert!(items.is_empty());
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            WsError::MessageTooBig {
                length: 0x1_0000_0000,
                max: 1_048_576
            }
        ),
        "{err}"
    );
    assert_eq!(err.close_code(), 1009);
    assert!(capacity < SMALL, "capacity {capacity}");
}

#[test]
fn largest_64_bit_lengths_are_refused_without_overflow() {
    // 2^63 - 1: too big. 2^63 and above: the top bit is set, a protocol error.
    let (_, err, capacity) = feed(&mut open(1 << 20), &[&header_64(2, u64::MAX >> 1)]);
    let err = err.unwrap();
    assert!(matches!(err, WsError::MessageTooBig { .. }), "{err}");
    assert!(capacity < SMALL, "capacity {capacity}");
    let (_, err, _) = feed(&mut open(1 << 20), &[&header_64(2, u64::MAX)]);
    assert_eq!(err.unwrap().close_code(), 1002);
}

#[test]
fn accepted_large_message_in_transit_reserves_64_kib_at_a_time() {
    // 16 MiB announced, within a 64 MiB maximum, trickled in: room is made for what has
    // arrived and 64 KiB more, never for all 16 MiB at once.
    let mut codec = open(64 << 20);
    let header = header_64(2, 16 << 20);
    let body = vec![0; 200_000];
    let reads: Vec<&[u8]> = [&header[..]].into_iter().chain(body.chunks(1000)).collect();
    let mut buf = BytesMut::new();
    for read in reads {
        buf.extend_from_slice(read);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        let bound = 2 * (buf.len() + 64 * 1024) + 4096;
        assert!(
            buf.capacity() <= bound,
            "capacity {} for {}",
            buf.capacity(),
            buf.len()
        );
    }
}

#[test]
fn fragments_adding_up_over_max_message_are_refused() {
    // Three unmasked-payload (mask 0) binary fragments of 400 bytes, max 1000.
    let fragment = |first: bool, fin: bool| {
        let opcode = if first { 2 } else { 0 };
        let b0 = if fin { 0x80 | opcode } else { opcode };
        [&[b0, 0x80 | 126, 0x01, 0x90, 0, 0, 0, 0][..], &[7; 400]].concat()
    };
    let stream = [
        fragment(true, false),
        fragment(false, false),
        fragment(false, true),
    ];
    let (items, err, _) = feed(&mut open(1000), &[&stream.concat()]);
    assert!(items.is_empty());
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            WsError::MessageTooBig {
                length: 1200,
                max: 1000
            }
        ),
        "{err}"
    );
}

#[test]
fn text_split_inside_a_character_across_fragments_and_reads() {
    // "€" (E2 82 AC) over two fragments, each fed one byte per read: one text.
    let stream = [
        &[0x01, 0x82, 0, 0, 0, 0, 0xE2, 0x82][..],
        &[0x80, 0x81, 0, 0, 0, 0, 0xAC],
    ]
    .concat();
    let reads: Vec<&[u8]> = stream.chunks(1).collect();
    let (items, err, _) = feed(&mut open(16), &reads);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(items, [WsIn::Text("€".into())]);
    // Cut short (E2 82 then end of message): invalid, 1007.
    let (_, err, _) = feed(&mut open(16), &[&[0x81, 0x82, 0, 0, 0, 0, 0xE2, 0x82]]);
    assert_eq!(err.unwrap().close_code(), 1007);
}

#[test]
fn request_head_without_end_is_refused_at_max_header() {
    let mut codec = WebSocketCodec::new(1024);
    let junk = vec![b'a'; 1 << 20];
    let reads: Vec<&[u8]> = junk.chunks(512).collect();
    let (items, err, capacity) = feed(&mut codec, &reads);
    assert!(items.is_empty());
    let err = err.unwrap();
    assert!(
        matches!(err, WsError::HeaderTooLarge { max: 8192 }),
        "{err}"
    );
    assert!(capacity < SMALL, "capacity {capacity}");
    // `\r\n\r\n` split across reads, byte by byte, is still found.
    let reads: Vec<&[u8]> = REQUEST.chunks(1).collect();
    let (items, err, _) = feed(&mut WebSocketCodec::new(1024), &reads);
    assert!(err.is_none(), "{err:?}");
    assert!(matches!(&items[..], [WsIn::Request(_)]), "{items:?}");
}

#[test]
fn request_heads_that_are_odd_but_bounded() {
    // Many tiny headers: one slot each, within max_header.
    let many = [
        &b"GET / HTTP/1.1\r\n"[..],
        &b"a:b\r\n".repeat(1500),
        b"\r\n",
    ]
    .concat();
    let (items, err, _) = feed(&mut WebSocketCodec::new(64), &[&many]);
    assert!(err.is_none(), "{err:?}");
    let [WsIn::Request(request)] = &items[..] else {
        panic!("{items:?}");
    };
    assert_eq!(request.headers.len(), 1500);
    assert_eq!(request.websocket_accept(), Ok(None));
    // A header value that is not UTF-8 is kept, lossily; a key that is not base64, or
    // decodes to other than 16 bytes, is refused with a reason.
    let odd = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \xFF\xFE\r\n\r\n";
    let (items, err, _) = feed(&mut WebSocketCodec::new(64), &[odd]);
    assert!(err.is_none(), "{err:?}");
    let [WsIn::Request(request)] = &items[..] else {
        panic!("{items:?}");
    };
    assert_eq!(
        request.header("sec-websocket-key"),
        Some("\u{FFFD}\u{FFFD}")
    );
    assert!(request.websocket_accept().unwrap_err().contains("base64"));
    // Not HTTP at all, once the blank line arrives.
    let (_, err, _) = feed(&mut WebSocketCodec::new(64), &[b"\x16\x03\x01\x02\r\n\r\n"]);
    assert!(matches!(err, Some(WsError::BadRequest(_))), "{err:?}");
    // End of stream inside the head.
    let (_, err, _) = feed(&mut WebSocketCodec::new(64), &[b"GET / HTTP/1.1\r\n"]);
    assert!(matches!(err, Some(WsError::BadRequest(_))), "{err:?}");
}

#[test]
fn control_frames_and_close_codes_at_the_edges() {
    // A 126-byte ping (in the 16-bit form), a close with code 1005, a 1-byte close.
    for (bytes, code) in [
        (&[0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0][..], 1002),
        (&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xED], 1002),
        (&[0x88, 0x81, 0, 0, 0, 0, 0x03], 1002),
        (&[0x88, 0x83, 0, 0, 0, 0, 0x03, 0xE8, 0xFF], 1007),
    ] {
        let (_, err, _) = feed(&mut open(1024), &[bytes]);
        assert_eq!(err.unwrap().close_code(), code, "{bytes:?}");
    }
    // A 125-byte ping is fine, and input after a close is ignored.
    let ping = [&[0x89, 0x80 | 125, 0, 0, 0, 0][..], &[b'p'; 125]].concat();
    let close = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8];
    let (items, err, _) = feed(&mut open(0), &[&ping, &close, b"\xFF\xFF junk"]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(items.len(), 2);
    assert_eq!(items[1], WsIn::Close(Some((1000, String::new()))));
}

fn parse(json: &[u8]) -> Result<ClientMessage, String> {
    serde_json::from_slice(json).map_err(|err| err.to_string())
}

#[test]
fn client_message_nested_10000_deep_is_an_error() {
    let deep = [
        &br#"{"type":"ping","id":"#[..],
        &vec![b'['; 10_000],
        &vec![b']'; 10_000],
        b"}",
    ]
    .concat();
    let err = parse(&deep).unwrap_err();
    assert!(err.contains("recursion limit"), "{err}");
    // Deep but within the limit: parsed.
    let ok = [
        &br#"{"type":"ping","id":"#[..],
        &[b'['; 100],
        &[b']'; 100],
        b"}",
    ]
    .concat();
    assert!(matches!(
        parse(&ok),
        Ok(ClientMessage::Ping { id: Some(_) })
    ));
}

#[test]
fn client_message_odd_shapes_are_errors() {
    for json in [
        &br#"{"type":"join","room":"a","room":"b"}"#[..], // duplicate field
        br#"{"type":"send","room":"a"}"#,                 // missing body
        br#"{"type":"invalid","reason":"x"}"#,            // transport-only variants
        br#"{"type":"closing","code":1000}"#,
        br#"{"room":"a"}"#, // no type
        br#"{"type":7}"#,
        br#"{"type":"history","room":"a","limit":-1}"#,
        br#"{"type":"history","room":"a","limit":4294967296}"#,
        br#"{"type":"join","room":"a","since":9223372036854775808}"#,
        br#"{"type":"login","token":"\ud800"}"#, // a lone surrogate
        b"{\"type\":\"login\",\"token\":\"\xFF\"}", // not UTF-8
        b"",
        b"[]",
        b"nul",
    ] {
        let result = parse(json);
        assert!(
            result.is_err(),
            "{} gave {result:?}",
            String::from_utf8_lossy(json)
        );
    }
    // Escapes shrink: the strings are never longer than the input.
    let message = parse(br#"{"type":"send","room":"\u0061","body":"\ud83d\ude00"}"#).unwrap();
    assert_eq!(
        message,
        ClientMessage::Send {
            room: "a".into(),
            body: "😀".into(),
            client_id: None
        }
    );
}
