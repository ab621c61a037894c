//! Shared harness for the fuzz targets in `fuzz_targets/`.
//!
//! Every target reads a small fixed-size configuration from the front of the fuzzer's
//! input (codec parameters and how the rest is cut into reads), then feeds the rest to a
//! decoder twice: as one buffer and cut into reads. [`drive`] checks what holds for every
//! decoder whatever the input: no panic; after the decoder asks for more input the buffer
//! holds at most `buffered` bytes and its capacity stays near what was fed (a header that
//! claims 4 GiB must not reserve 4 GiB); a framing error is reported again on the next
//! call; at end of stream every byte is consumed or an error is reported. The targets then
//! compare the two runs with each other and, where one is simple to write, with a
//! reference decoder over the whole input, and re-encode what was decoded.

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use tethernet::codec::CodecError;
use tokio_util::codec::Decoder;

/// How the input is cut into reads: four chunk sizes, used in turn.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Chunking([u8; 4]);

impl Chunking {
    /// The size of the `n`th read: 1 to 32 bytes mostly, sometimes up to 4 KiB.
    fn size(&self, n: usize) -> usize {
        match self.0[n % 4] {
            b @ 0..=191 => usize::from(b % 32) + 1,
            b => usize::from(b - 191) * 64,
        }
    }

    /// `data` cut into reads.
    pub fn split<'a>(&self, data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut reads = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let (read, tail) = rest.split_at(self.size(reads.len()).min(rest.len()));
            reads.push(read);
            rest = tail;
        }
        reads
    }
}

/// Reads a `T` from the front of `data` and returns it with the rest, or `None` if
/// `data` is too short.
pub fn split_config<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<(T, &'a [u8])> {
    let mut u = Unstructured::new(data);
    let config = T::arbitrary(&mut u).ok()?;
    Some((config, u.take_rest()))
}

/// What a decoder produced, in order: items and errors.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    /// A decoded item.
    Item(T),
    /// An error after which decoding goes on (the offending frame was consumed).
    Content(String),
    /// An error that ends the stream.
    Framing(String),
}

/// How an error ends the stream.
pub enum ErrorClass {
    /// Decoding may go on with the next frame.
    Content(String),
    /// The stream is unsynchronised; the decoder must keep failing.
    Framing(String),
}

/// The usual classes of a [`CodecError`]; the lengths in `FrameTooLong` are left out
/// (delimiter codecs report how much was buffered, which depends on the reads).
pub fn codec_error_class(error: &CodecError) -> ErrorClass {
    match error {
        CodecError::FrameTooLong { max, .. } => {
            ErrorClass::Framing(format!("too long (max {max})"))
        }
        CodecError::InvalidFrame(_) => ErrorClass::Framing("invalid frame".into()),
        CodecError::InvalidUtf8 { valid_up_to } => {
            ErrorClass::Content(format!("invalid UTF-8 after {valid_up_to}"))
        }
        CodecError::Json(_) => ErrorClass::Content("json".into()),
        other => ErrorClass::Framing(format!("other: {other}")),
    }
}

/// Bounds the buffer must respect whenever the decoder asks for more input.
pub struct Limits {
    /// Most bytes buffered: the largest frame plus its header.
    pub buffered: usize,
    /// Most room a decoder may reserve beyond what it holds (for the frame in transit).
    pub reserve: usize,
}

/// Feeds `reads` to `codec` one after the other, decoding all it can after each, then
/// ends the stream; returns what was decoded. `on_item` sees each item with the codec
/// (to answer a handshake, say) and checks it.
///
/// # Panics
///
/// When an invariant of the module documentation is broken.
pub fn drive<D, T>(
    codec: &mut D,
    reads: &[&[u8]],
    limits: &Limits,
    classify: impl Fn(&D::Error) -> ErrorClass,
    mut on_item: impl FnMut(&mut D, D::Item) -> T,
) -> Vec<Event<T>>
where
    D: Decoder,
    D::Error: std::fmt::Debug,
{
    let total: usize = reads.iter().map(|read| read.len()).sum();
    // A `Vec` at most doubles what it is asked for; the reads themselves need `total`.
    let max_capacity = 2 * (total + limits.buffered + limits.reserve) + 4096;
    let mut events = Vec::new();
    let mut buffer = BytesMut::new();
    for read in reads {
        buffer.extend_from_slice(read);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(item)) => events.push(Event::Item(on_item(codec, item))),
                Ok(None) => {
                    assert!(
                        buffer.len() <= limits.buffered,
                        "decoder asks for more with {} bytes buffered (limit {})",
                        buffer.len(),
                        limits.buffered
                    );
                    assert!(
                        buffer.capacity() <= max_capacity,
                        "read buffer capacity {} after {total} bytes fed (limit {max_capacity})",
                        buffer.capacity()
                    );
                    break;
                }
                Err(error) => match classify(&error) {
                    ErrorClass::Content(class) => events.push(Event::Content(class)),
                    ErrorClass::Framing(class) => {
                        let again = codec.decode(&mut buffer);
                        assert!(
                            again.is_err(),
                            "decoder recovered after {error:?}: {:?}",
                            again.map(|item| item.is_some())
                        );
                        events.push(Event::Framing(class));
                        return events;
                    }
                },
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buffer) {
            Ok(Some(item)) => events.push(Event::Item(on_item(codec, item))),
            Ok(None) => {
                assert!(
                    buffer.is_empty(),
                    "end of stream with {} bytes left and no error",
                    buffer.len()
                );
                return events;
            }
            Err(error) => match classify(&error) {
                ErrorClass::Content(class) => events.push(Event::Content(class)),
                ErrorClass::Framing(class) => {
                    events.push(Event::Framing(class));
                    return events;
                }
            },
        }
    }
}

/// Runs `make()` over `data` whole and cut by `chunking`, asserts that both runs decoded
/// the same, and returns what they decoded.
pub fn whole_and_split<D, T>(
    make: impl Fn() -> D,
    data: &[u8],
    chunking: Chunking,
    limits: &Limits,
    classify: impl Fn(&D::Error) -> ErrorClass + Copy,
    mut on_item: impl FnMut(&mut D, D::Item) -> T,
) -> Vec<Event<T>>
where
    D: Decoder,
    D::Error: std::fmt::Debug,
    T: PartialEq + std::fmt::Debug,
{
    let whole = drive(&mut make(), &[data], limits, classify, &mut on_item);
    let split = drive(
        &mut make(),
        &chunking.split(data),
        limits,
        classify,
        &mut on_item,
    );
    assert_eq!(whole, split, "one buffer and {chunking:?} reads differ");
    whole
}

/// A maximum frame length from a small table (from 0 to 1 MiB, around the edges that
/// matter: header widths, 125/126 for WebSocket, 16-bit lengths).
pub fn max_length(index: u8) -> usize {
    const TABLE: [usize; 16] = [
        0,
        1,
        2,
        3,
        4,
        5,
        8,
        16,
        125,
        126,
        255,
        256,
        1024,
        65_535,
        65_536,
        1 << 20,
    ];
    TABLE[usize::from(index) % TABLE.len()]
}

/// Feeds `encoded` to a fresh codec and returns the items, asserting no error.
pub fn decode_all<D>(mut codec: D, encoded: &[u8]) -> Vec<D::Item>
where
    D: Decoder,
    D::Error: std::fmt::Debug,
{
    let mut buffer = BytesMut::from(encoded);
    let mut items = Vec::new();
    loop {
        match codec.decode_eof(&mut buffer) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return items,
            Err(error) => panic!("{encoded:?} does not decode: {error:?}"),
        }
    }
}

/// The WebSocket codec's harness: a handler that answers the handshake and checks what
/// is decoded.
pub mod ws {
    use bytes::BytesMut;
    use tethernet_gateway::websocket::{WebSocketCodec, WsError, WsIn, WsOut};
    use tokio_util::codec::Encoder;

    use super::{whole_and_split, Chunking, ErrorClass, Event, Limits};

    /// A valid upgrade request (RFC 6455 §1.3).
    pub const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: server.example.com\r\n\
        Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    /// Largest payload of a control frame.
    const MAX_CONTROL: usize = 125;
    /// What the codec reserves at most for a payload in transit.
    const MAX_RESERVE: usize = 64 * 1024;

    fn classify(error: &WsError) -> ErrorClass {
        let code = error.close_code();
        assert!(matches!(code, 1002 | 1007 | 1009 | 1011), "{error}: {code}");
        // Every decoding error fails the connection.
        ErrorClass::Framing(format!("{code} {error}"))
    }

    fn valid_close_code(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// Answers a decoded request as the gateway does: Accept for a valid upgrade, an
    /// HTTP 400 otherwise; and answers pings and closes. Checks every item's bounds.
    fn answer(codec: &mut WebSocketCodec, item: &WsIn, max_message: usize, max_header: usize) {
        let mut out = BytesMut::new();
        match item {
            WsIn::Request(request) => {
                let names: usize = request.headers.iter().map(|(n, _)| n.len()).sum();
                let values: usize = request.headers.iter().map(|(_, v)| v.len()).sum();
                let head = request.method.len() + request.path.len() + names;
                assert!(head <= max_header, "request head over {max_header}");
                // Lossy conversion: an invalid byte becomes U+FFFD, 3 bytes.
                assert!(
                    values <= 3 * max_header,
                    "header values over 3 × {max_header}"
                );
                let _ = request.header("Sec-WebSocket-Key");
                match request.websocket_accept() {
                    Ok(Some(accept)) => {
                        assert_eq!(request.method, "GET");
                        assert_eq!(accept.len(), 28, "{accept:?}");
                        codec
                            .encode(WsOut::Accept { accept }, &mut out)
                            .expect("Accept answers a decoded request");
                        assert!(out.starts_with(b"HTTP/1.1 101 "));
                    }
                    Ok(None) | Err(_) => {
                        let body = bytes::Bytes::from_static(b"bad request");
                        let response = WsOut::Http {
                            status: 400,
                            content_type: "text/plain",
                            body,
                        };
                        codec.encode(response, &mut out).expect("a 400 answers");
                        assert!(out.starts_with(b"HTTP/1.1 400 "));
                    }
                }
            }
            WsIn::Text(text) => assert!(text.len() <= max_message, "text of {}", text.len()),
            WsIn::Binary(data) => assert!(data.len() <= max_message, "binary of {}", data.len()),
            WsIn::Ping(data) => {
                assert!(data.len() <= MAX_CONTROL, "ping of {}", data.len());
                codec
                    .encode(WsOut::Pong(data.clone()), &mut out)
                    .expect("a pong answers a ping");
                assert_eq!(out.len(), 2 + data.len());
            }
            WsIn::Pong(data) => assert!(data.len() <= MAX_CONTROL, "pong of {}", data.len()),
            WsIn::Close(close) => {
                if let Some((code, reason)) = close {
                    assert!(valid_close_code(*code), "close code {code}");
                    assert!(
                        reason.len() <= MAX_CONTROL - 2,
                        "reason of {}",
                        reason.len()
                    );
                }
                let reply = WsOut::Close(1000, String::new());
                codec.encode(reply, &mut out).expect("a close answers");
            }
        }
    }

    /// Runs a fresh codec over `data` (request head first) whole and cut into reads,
    /// answering as the gateway does, and returns what was decoded.
    pub fn run(
        data: &[u8],
        chunking: Chunking,
        max_message: usize,
        max_header: usize,
    ) -> Vec<Event<WsIn>> {
        let limits = Limits {
            // A request head; or a frame header (at most 14 bytes) and a payload.
            buffered: max_header.max(max_message + 13),
            reserve: max_message.min(MAX_RESERVE),
        };
        whole_and_split(
            || WebSocketCodec::new(max_message).max_header(max_header),
            data,
            chunking,
            &limits,
            classify,
            |codec, item| {
                answer(codec, &item, max_message, max_header);
                item
            },
        )
    }
}
