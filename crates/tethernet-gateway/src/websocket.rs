//! The server side of the WebSocket protocol (RFC 6455): the HTTP/1.1 upgrade
//! handshake and the frame layer, as one [`Decoder`] + [`Encoder`] value.
//!
//! A [`WebSocketCodec`] starts in the handshake state: it decodes one HTTP
//! request head into [`WsIn::Request`], then decodes nothing (returns
//! `Ok(None)`) until the handler has answered through the *same* codec (as
//! with tokio_util's `Framed`). Encoding [`WsOut::Accept`] writes
//! `101 Switching Protocols` and switches the decoder to frames; encoding
//! [`WsOut::Http`] writes a plain response, after which the connection should
//! be closed and input is ignored.
//!
//! Once open, the decoder yields whole messages (fragments reassembled,
//! payloads unmasked in place, text validated as UTF-8) and control frames,
//! also between the fragments of a message. After a Close frame, input is
//! ignored. The encoder writes unmasked, unfragmented server frames.
//!
//! Memory is bounded: a request head over `max_header` and a message over
//! `max_message` are rejected before they are buffered, the message from the
//! length in its frame header. Room for a payload still in transit is reserved
//! at most 64 KiB at a time, and the request head is scanned incrementally, so
//! input arriving one byte at a time costs linear time.
//!
//! Every decoding error fails the connection: the decoder keeps returning it.
//! [`WsError::close_code`] gives the code for the closing [`WsOut::Close`];
//! before the upgrade, answer with a [`WsOut::Http`] 400 instead. The encoder
//! still accepts that Close frame or response after a decoding error.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default largest HTTP request head: 8 KiB.
const DEFAULT_MAX_HEADER: usize = 8 * 1024;
/// Appended to the client's key to compute the accept value (RFC 6455 §1.3).
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Most room reserved in the read buffer at once for a payload in transit.
const MAX_RESERVE: usize = 64 * 1024;
/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A server-side WebSocket codec: HTTP upgrade handshake, then RFC 6455 frames.
///
/// See the [module documentation](self) for the life cycle of a connection.
#[derive(Debug)]
pub struct WebSocketCodec {
    max_message: usize,
    max_header: usize,
    state: State,
    /// `Accept` has been encoded: frames may be encoded from now on.
    upgraded: bool,
    /// A Close frame has been encoded: no frame may follow it.
    close_sent: bool,
    /// Header (already consumed) of the frame whose payload is awaited.
    header: Option<FrameHeader>,
    /// Opcode and bytes so far of a fragmented message being reassembled.
    partial: Option<(u8, BytesMut)>,
}

#[derive(Debug)]
enum State {
    /// Reading the request head; the first `scanned` bytes hold no `\r\n\r\n`.
    Handshake { scanned: usize },
    /// A request has been yielded; waiting for the answer to be encoded.
    Requested,
    /// Upgraded: decoding frames.
    Open,
    /// A Close frame has been decoded or an HTTP response encoded: input is ignored.
    Closed,
    /// Decoding failed; the error is reported again on every call.
    Failed(WsError),
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Payload length: at most `max_message`, or 125 for control frames.
    len: usize,
}

/// What the [`WebSocketCodec`] decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsIn {
    /// An HTTP request before the upgrade (any method; a body is not read).
    /// The handler decides: accept an upgrade to `path` with [`WsOut::Accept`],
    /// or answer with a page or an error with [`WsOut::Http`].
    Request(HttpRequest),
    /// A complete text message, fragments reassembled, validated as UTF-8.
    Text(String),
    /// A complete binary message, fragments reassembled.
    Binary(Bytes),
    /// A ping; answer it with a [`WsOut::Pong`] carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A Close frame with its status code and reason, if it had any. Further
    /// input is ignored; answer with [`WsOut::Close`] and close the connection.
    Close(Option<(u16, String)>),
}

/// What the [`WebSocketCodec`] encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOut {
    /// A text message, sent as one frame.
    Text(Arc<str>),
    /// A binary message, sent as one frame.
    Binary(Bytes),
    /// A ping, with at most 125 bytes of payload.
    Ping(Bytes),
    /// A pong, with at most 125 bytes of payload.
    Pong(Bytes),
    /// A Close frame with a status code and a reason, which is cut at a
    /// character boundary to the 123 bytes that fit. No frame may follow it.
    Close(u16, String),
    /// 101 Switching Protocols with `Sec-WebSocket-Accept: accept` (from
    /// [`HttpRequest::websocket_accept`]), answering a decoded
    /// [`WsIn::Request`]. After encoding it the codec decodes frames.
    Accept {
        /// The value of the `Sec-WebSocket-Accept` header.
        accept: String,
    },
    /// A plain HTTP response, e.g. a page or a 400; only before the upgrade.
    /// It says `Connection: close`: close the connection after it. Further
    /// input is ignored.
    Http {
        /// Status code, 200 to 599.
        status: u16,
        /// Value of the `Content-Type` header.
        content_type: &'static str,
        /// The response body.
        body: Bytes,
    },
}

/// An HTTP request head, as decoded before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target, e.g. `/chat?room=1`.
    pub path: String,
    /// The headers in order, names as sent; values that are not UTF-8 are
    /// converted lossily.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the comma-separated headers called `name` list `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// `Ok(Some(accept value))` when this is a valid WebSocket upgrade request
    /// (GET, `Upgrade: websocket`, `Connection` listing `upgrade`,
    /// `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key` that is a base64
    /// 16-byte nonce); `Err(reason)` for an invalid upgrade request; `Ok(None)`
    /// when it is not an upgrade request (no `Upgrade: websocket`).
    pub fn websocket_accept(&self) -> Result<Option<String>, String> {
        if !self.has_token("upgrade", "websocket") {
            return Ok(None);
        }
        if self.method != "GET" {
            return Err(format!("WebSocket upgrade with method {}", self.method));
        }
        if !self.has_token("connection", "upgrade") {
            return Err("WebSocket upgrade without Connection: upgrade".into());
        }
        match self.header("sec-websocket-version").map(str::trim) {
            Some("13") => {}
            Some(v) => return Err(format!("unsupported Sec-WebSocket-Version {v:?} (not 13)")),
            None => return Err("WebSocket upgrade without Sec-WebSocket-Version".into()),
        }
        let key = self.header("sec-websocket-key").map(str::trim);
        let key = key.ok_or("WebSocket upgrade without Sec-WebSocket-Key")?;
        match BASE64.decode(key) {
            Ok(nonce) if nonce.len() == 16 => Ok(Some(accept_key(key))),
            _ => Err(format!(
                "Sec-WebSocket-Key {key:?} is not a base64 16-byte nonce"
            )),
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WEBSOCKET_GUID);
    BASE64.encode(sha1.digest().bytes())
}

/// Errors of the [`WebSocketCodec`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The HTTP request head is longer than the codec's `max_header`.
    #[error("HTTP request head exceeds the maximum of {max} bytes")]
    HeaderTooLarge {
        /// The maximum that was exceeded.
        max: usize,
    },
    /// The HTTP request head is malformed; the message says how.
    #[error("malformed HTTP request: {0}")]
    BadRequest(String),
    /// The peer broke the framing rules of RFC 6455; the message says how.
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
    /// A text message or a close reason is not valid UTF-8.
    #[error("WebSocket text is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the longest valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// A message is longer than the codec's `max_message`; detected from a
    /// frame header, before the payload is buffered.
    #[error("WebSocket message of {length} bytes exceeds the maximum of {max} bytes")]
    MessageTooBig {
        /// Bytes of the message reassembled so far plus the length announced
        /// by the frame that made it too long.
        length: u64,
        /// The maximum that was exceeded.
        max: usize,
    },
    /// The application asked the encoder for something invalid or out of
    /// place (a frame before the upgrade or after a Close, a ping over 125
    /// bytes, ...); the message says what.
    #[error("cannot encode {0}")]
    InvalidOutput(String),
    /// An I/O error from the underlying transport.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl WsError {
    /// The status code for the Close frame that fails the connection: 1002
    /// (protocol error) for framing and malformed-request errors, 1007 for
    /// invalid UTF-8, 1009 for a message or request head too big, 1011
    /// (internal error) for encoder misuse and I/O errors.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::BadRequest(_) | WsError::Protocol(_) => 1002,
            WsError::InvalidUtf8 { .. } => 1007,
            WsError::HeaderTooLarge { .. } | WsError::MessageTooBig { .. } => 1009,
            WsError::InvalidOutput(_) | WsError::Io(_) => 1011,
        }
    }

    /// A copy of this error, to report again from a failed decoder.
    fn replay(&self) -> WsError {
        match self {
            WsError::HeaderTooLarge { max } => WsError::HeaderTooLarge { max: *max },
            WsError::BadRequest(m) => WsError::BadRequest(m.clone()),
            WsError::Protocol(m) => WsError::Protocol(m.clone()),
            WsError::InvalidUtf8 { valid_up_to } => WsError::InvalidUtf8 {
                valid_up_to: *valid_up_to,
            },
            WsError::MessageTooBig { length, max } => WsError::MessageTooBig {
                length: *length,
                max: *max,
            },
            WsError::InvalidOutput(m) => WsError::InvalidOutput(m.clone()),
            WsError::Io(e) => WsError::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// A protocol error unless `ok`.
fn ensure(ok: bool, message: &str) -> Result<(), WsError> {
    match ok {
        true => Ok(()),
        false => Err(WsError::Protocol(message.into())),
    }
}

fn invalid_output<T>(message: impl Into<String>) -> Result<T, WsError> {
    Err(WsError::InvalidOutput(message.into()))
}

fn utf8(bytes: &[u8]) -> Result<String, WsError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_owned()),
        Err(err) => Err(WsError::InvalidUtf8 {
            valid_up_to: err.valid_up_to(),
        }),
    }
}

/// Close codes an endpoint may send (RFC 6455 §7.4 and the IANA registry).
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl WebSocketCodec {
    /// A codec for reassembled messages (text or binary) of at most
    /// `max_message` bytes and request heads of at most 8 KiB.
    pub fn new(max_message: usize) -> Self {
        WebSocketCodec {
            max_message,
            max_header: DEFAULT_MAX_HEADER,
            state: State::Handshake { scanned: 0 },
            upgraded: false,
            close_sent: false,
            header: None,
            partial: None,
        }
    }

    /// Sets the largest HTTP request head, in bytes (default 8 KiB).
    pub fn max_header(mut self, bytes: usize) -> Self {
        self.max_header = bytes;
        self
    }

    /// Decodes the request head, scanning only the bytes not scanned before.
    fn decode_head(&mut self, scanned: usize, src: &mut BytesMut) -> Result<Option<WsIn>, WsError> {
        // The end of the head may straddle the previous end of the buffer.
        let from = scanned.saturating_sub(3).min(src.len());
        let found = src[from..].windows(4).position(|w| w == b"\r\n\r\n");
        let end = found.map_or(src.len(), |i| from + i + 4);
        if end > self.max_header {
            return Err(WsError::HeaderTooLarge {
                max: self.max_header,
            });
        }
        if found.is_none() {
            self.state = State::Handshake { scanned: src.len() };
            return Ok(None);
        }
        let request = parse_request(&src.split_to(end))?;
        self.state = State::Requested;
        Ok(Some(WsIn::Request(request)))
    }

    /// Decodes frames until one completes a message or is a control frame.
    fn decode_frames(&mut self, src: &mut BytesMut) -> Result<Option<WsIn>, WsError> {
        loop {
            let header = match self.header.take() {
                Some(header) => header,
                None => match self.parse_header(src)? {
                    Some(header) => header,
                    None => return Ok(None),
                },
            };
            if src.len() < header.len {
                src.reserve((header.len - src.len()).min(MAX_RESERVE));
                self.header = Some(header);
                return Ok(None);
            }
            let mut payload = src.split_to(header.len);
            unmask(&mut payload, header.mask);
            if let Some(item) = self.complete_frame(header, payload)? {
                return Ok(Some(item));
            }
        }
    }

    /// Validates the frame header at the front of `src` and consumes it once
    /// complete. Fails as soon as the bytes that show a violation have arrived.
    fn parse_header(&self, src: &mut BytesMut) -> Result<Option<FrameHeader>, WsError> {
        let &[b0, b1, ..] = &src[..] else {
            return Ok(None);
        };
        let (fin, opcode, control) = (b0 & 0x80 != 0, b0 & 0x0F, b0 & 0x08 != 0);
        ensure(b0 & 0x70 == 0, "RSV bits set without an extension")?;
        ensure(matches!(opcode, 0..=2 | 8..=10), "reserved opcode")?;
        let fragmenting = self.partial.is_some();
        let cont = opcode == OP_CONTINUATION;
        let start = opcode == OP_TEXT || opcode == OP_BINARY;
        ensure(!cont || fragmenting, "continuation without a message")?;
        ensure(!start || !fragmenting, "new message amid a fragmented one")?;
        ensure(fin || !control, "fragmented control frame")?;
        ensure(b1 & 0x80 != 0, "unmasked client frame")?;
        let (len, mask_at, minimal) = match b1 & 0x7F {
            126 => match src.get(2..4) {
                Some(mut field) => (u64::from(field.get_u16()), 4, 126),
                None => return Ok(None),
            },
            127 => match src.get(2..10) {
                Some(mut field) => (field.get_u64(), 10, 0x1_0000),
                None => return Ok(None),
            },
            len => (u64::from(len), 2, 0),
        };
        ensure(len >> 63 == 0, "64-bit frame length with the top bit set")?;
        ensure(len >= minimal, "frame length not minimally encoded")?;
        ensure(!control || len <= 125, "control frame over 125 bytes")?;
        let buffered = self.partial.as_ref().map_or(0, |(_, m)| m.len() as u64);
        let length = buffered.saturating_add(len);
        if !control && length > self.max_message as u64 {
            return Err(WsError::MessageTooBig {
                length,
                max: self.max_message,
            });
        }
        let Some(key) = src.get(mask_at..mask_at + 4) else {
            return Ok(None);
        };
        let mask = [key[0], key[1], key[2], key[3]];
        src.advance(mask_at + 4);
        // `len` fits usize: it is at most `max_message`, or 125.
        let len = len as usize;
        Ok(Some(FrameHeader {
            fin,
            opcode,
            mask,
            len,
        }))
    }

    /// Handles a whole unmasked frame: the item it completes, if any.
    fn complete_frame(
        &mut self,
        header: FrameHeader,
        payload: BytesMut,
    ) -> Result<Option<WsIn>, WsError> {
        match header.opcode {
            OP_PING => Ok(Some(WsIn::Ping(payload.freeze()))),
            OP_PONG => Ok(Some(WsIn::Pong(payload.freeze()))),
            OP_CLOSE => {
                self.state = State::Closed;
                self.partial = None;
                Ok(Some(WsIn::Close(parse_close(&payload)?)))
            }
            OP_CONTINUATION => {
                let Some((opcode, mut message)) = self.partial.take() else {
                    return Err(WsError::Protocol(
                        "continuation frame with no message to continue".into(),
                    ));
                };
                message.extend_from_slice(&payload);
                if header.fin {
                    return message_item(opcode, message);
                }
                self.partial = Some((opcode, message));
                Ok(None)
            }
            opcode if header.fin => message_item(opcode, payload),
            opcode => {
                self.partial = Some((opcode, BytesMut::from(&payload[..])));
                Ok(None)
            }
        }
    }
}

/// Parses a complete request head with httparse.
fn parse_request(head: &[u8]) -> Result<HttpRequest, WsError> {
    // One slot per line is always enough, and bounded by max_header.
    let lines = head.iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(WsError::BadRequest("incomplete head".into())),
        Err(err) => return Err(WsError::BadRequest(err.to_string())),
    }
    Ok(HttpRequest {
        method: request.method.unwrap_or_default().to_owned(),
        path: request.path.unwrap_or_default().to_owned(),
        headers: request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    })
}

/// Parses a Close frame's payload: nothing, or a status code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    let [high, low, reason @ ..] = payload else {
        ensure(payload.is_empty(), "close frame with a 1-byte payload")?;
        return Ok(None);
    };
    let code = u16::from_be_bytes([*high, *low]);
    ensure(
        is_valid_close_code(code),
        "close frame with an invalid code",
    )?;
    Ok(Some((code, utf8(reason)?)))
}

/// The item for a complete text or binary message.
fn message_item(opcode: u8, payload: BytesMut) -> Result<Option<WsIn>, WsError> {
    Ok(Some(match opcode {
        OP_TEXT => WsIn::Text(utf8(&payload)?),
        _ => WsIn::Binary(payload.freeze()),
    }))
}

/// XORs `payload` with the masking key, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Chunks are a multiple of 4 bytes long, so the key restarts at index 0.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Writes the header of an unmasked, final server frame.
fn put_header(dst: &mut BytesMut, opcode: u8, len: usize) {
    dst.reserve(10 + len);
    dst.put_u8(0x80 | opcode);
    if len < 126 {
        dst.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        dst.put_u8(126);
        dst.put_u16(len);
    } else {
        dst.put_u8(127);
        dst.put_u64(len as u64);
    }
}

/// The reason phrase of common status codes (HTTP/1.1 allows an empty one).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

impl Decoder for WebSocketCodec {
    type Item = WsIn;
    type Error = WsError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<WsIn>, WsError> {
        let result = match self.state {
            State::Handshake { scanned } => self.decode_head(scanned, src),
            State::Requested => return Ok(None),
            State::Open => self.decode_frames(src),
            State::Closed => {
                src.clear();
                return Ok(None);
            }
            State::Failed(ref err) => return Err(err.replay()),
        };
        if let Err(err) = &result {
            self.state = State::Failed(err.replay());
        }
        result
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<WsIn>, WsError> {
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        let err = match self.state {
            State::Handshake { .. } if !src.is_empty() => {
                WsError::BadRequest("connection closed inside the request head".into())
            }
            State::Open if !src.is_empty() || self.header.is_some() || self.partial.is_some() => {
                WsError::Protocol("connection closed inside a frame or message".into())
            }
            _ => return Ok(None),
        };
        self.state = State::Failed(err.replay());
        Err(err)
    }
}

impl Encoder<WsOut> for WebSocketCodec {
    type Error = WsError;

    fn encode(&mut self, item: WsOut, dst: &mut BytesMut) -> Result<(), WsError> {
        let (opcode, payload) = match &item {
            WsOut::Text(text) => (OP_TEXT, text.as_bytes()),
            WsOut::Binary(data) => (OP_BINARY, &data[..]),
            WsOut::Ping(data) => (OP_PING, &data[..]),
            WsOut::Pong(data) => (OP_PONG, &data[..]),
            WsOut::Close(_, reason) => (OP_CLOSE, reason.as_bytes()),
            WsOut::Accept { accept } => {
                if !matches!(self.state, State::Requested) {
                    return invalid_output("an Accept without a decoded request to answer");
                }
                if !accept
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                {
                    return invalid_output(format!("an Accept with value {accept:?}"));
                }
                dst.extend_from_slice(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Accept: ",
                );
                dst.extend_from_slice(accept.as_bytes());
                dst.extend_from_slice(b"\r\n\r\n");
                self.state = State::Open;
                self.upgraded = true;
                return Ok(());
            }
            WsOut::Http {
                status,
                content_type,
                body,
            } => {
                if self.upgraded {
                    return invalid_output("an HTTP response after the upgrade");
                }
                if !(200..=599).contains(status)
                    || content_type.bytes().any(|b| b.is_ascii_control())
                {
                    return invalid_output(format!("an HTTP response {status} {content_type:?}"));
                }
                let head = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    reason_phrase(*status),
                    body.len()
                );
                dst.reserve(head.len() + body.len());
                dst.extend_from_slice(head.as_bytes());
                dst.extend_from_slice(body);
                self.state = State::Closed;
                return Ok(());
            }
        };
        if !self.upgraded || self.close_sent {
            return invalid_output("a frame before the upgrade or after a Close frame");
        }
        if let WsOut::Close(code, reason) = &item {
            if !is_valid_close_code(*code) {
                return invalid_output(format!("a Close frame with code {code}"));
            }
            let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            put_header(dst, OP_CLOSE, 2 + end);
            dst.put_u16(*code);
            dst.extend_from_slice(&reason.as_bytes()[..end]);
            self.close_sent = true;
            return Ok(());
        }
        if opcode & 0x08 != 0 && payload.len() > MAX_CONTROL_PAYLOAD {
            return invalid_output(format!("a control frame of {} bytes", payload.len()));
        }
        put_header(dst, opcode, payload.len());
        dst.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REQUEST: &str =
        "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    /// The accept value for REQUEST's key, as printed in RFC 6455 §1.3.
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// A client frame masked with `mask`.
    fn frame_with(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => out.extend([0x80 | 126].iter().chain(&(n as u16).to_be_bytes())),
            n => out.extend([0x80 | 127].iter().chain(&(n as u64).to_be_bytes())),
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame_with(fin, opcode, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    fn request(head: &str) -> Result<HttpRequest, WsError> {
        match WebSocketCodec::new(1024).decode(&mut BytesMut::from(head.as_bytes()))? {
            Some(WsIn::Request(request)) => Ok(request),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// A codec that has completed the handshake.
    fn open(max_message: usize) -> WebSocketCodec {
        let mut codec = WebSocketCodec::new(max_message);
        let mut buf = BytesMut::from(REQUEST.as_bytes());
        assert!(matches!(codec.decode(&mut buf), Ok(Some(WsIn::Request(_)))));
        let accept = ACCEPT.to_string();
        encoded(&mut codec, WsOut::Accept { accept });
        codec
    }

    /// Decodes everything in `bytes` with a fresh open codec.
    fn decode_all(max_message: usize, bytes: &[u8]) -> Result<Vec<WsIn>, WsError> {
        let (mut codec, mut buf, mut items) = (open(max_message), BytesMut::from(bytes), vec![]);
        while let Some(item) = codec.decode(&mut buf)? {
            items.push(item);
        }
        Ok(items)
    }

    fn error_code(max_message: usize, bytes: &[u8]) -> u16 {
        match decode_all(max_message, bytes) {
            Err(err) => err.close_code(),
            Ok(items) => panic!("expected an error for {bytes:?}, got {items:?}"),
        }
    }

    fn encoded(codec: &mut WebSocketCodec, item: WsOut) -> Vec<u8> {
        let mut dst = BytesMut::new();
        codec.encode(item, &mut dst).unwrap();
        dst.to_vec()
    }

    fn refused(codec: &mut WebSocketCodec, item: WsOut) -> bool {
        codec.encode(item, &mut BytesMut::new()).is_err()
    }

    fn http(status: u16) -> WsOut {
        let (content_type, body) = ("text/plain", Bytes::from_static(b"no such page"));
        WsOut::Http {
            status,
            content_type,
            body,
        }
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), ACCEPT);
    }

    #[test]
    fn valid_handshake_then_frames() {
        let mut codec = WebSocketCodec::new(1024);
        let mut buf = BytesMut::from(REQUEST.as_bytes());
        buf.extend(frame(true, OP_TEXT, b"early"));
        let Some(WsIn::Request(request)) = codec.decode(&mut buf).unwrap() else {
            panic!("expected a request");
        };
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/chat")
        );
        assert_eq!(request.header("HOST"), Some("server.example.com"));
        assert_eq!(request.headers.len(), 5);
        let accept = request.websocket_accept().unwrap().unwrap();
        assert_eq!(accept, ACCEPT);
        // Nothing is decoded until the answer has been encoded.
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(
            encoded(&mut codec, WsOut::Accept { accept }),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(WsIn::Text("early".into()))
        );
    }

    #[test]
    fn invalid_upgrades_are_errors() {
        for (from, to, reason) in [
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", "Key"),
            ("Version: 13", "Version: 8", "Version"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", "Key"),
            ("GET", "POST", "POST"),
            ("keep-alive, Upgrade", "keep-alive", "Connection"),
        ] {
            let request = request(&REQUEST.replace(from, to)).unwrap();
            let err = request.websocket_accept().unwrap_err();
            assert!(err.contains(reason), "{from} -> {to}: {err}");
        }
    }

    #[test]
    fn plain_request_is_not_an_upgrade_and_gets_a_response() {
        let mut codec = WebSocketCodec::new(1024);
        let mut buf = BytesMut::from(&b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        let Some(WsIn::Request(request)) = codec.decode(&mut buf).unwrap() else {
            panic!("expected a request");
        };
        assert_eq!(
            (request.path.as_str(), request.websocket_accept()),
            ("/index.html", Ok(None))
        );
        assert_eq!(
            encoded(&mut codec, http(404)),
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\
              Connection: close\r\n\r\nno such page"
        );
        // Further input is ignored; frames cannot be sent.
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert!(codec.decode(&mut buf).unwrap().is_none() && buf.is_empty());
        assert!(refused(&mut codec, WsOut::Text("x".into())));
        assert!(encoded(&mut WebSocketCodec::new(1), http(299)).starts_with(b"HTTP/1.1 299 \r\n"));
    }

    #[test]
    fn oversize_and_malformed_heads_are_rejected() {
        // No end of head yet, but already more than max_header bytes.
        let mut codec = WebSocketCodec::new(1024).max_header(64);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX-Long: "[..]);
        buf.extend_from_slice(&[b'a'; 40]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"a");
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, WsError::HeaderTooLarge { max: 64 }), "{err}");
        assert_eq!(codec.decode(&mut buf).unwrap_err().close_code(), 1009);
        // A complete head that is too long.
        let mut codec = WebSocketCodec::new(1024).max_header(REQUEST.len() - 1);
        let mut buf = BytesMut::from(REQUEST.as_bytes());
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, WsError::HeaderTooLarge { .. }), "{err}");
        let err = request("GET / HTTP/1.1\r\nNo colon here\r\n\r\n").unwrap_err();
        assert!(matches!(err, WsError::BadRequest(_)), "{err}");
        // An HTTP error response is still allowed after a handshake error.
        assert!(encoded(&mut codec, http(431)).starts_with(b"HTTP/1.1 431 "));
    }

    #[test]
    fn rfc_masked_hello() {
        let items = decode_all(1024, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        assert_eq!(items.unwrap(), [WsIn::Text("Hello".into())]);
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let bytes = [
            frame(false, OP_TEXT, b"Hel"),
            frame_with(true, OP_PING, b"ping", [1, 2, 3, 4]),
            frame(false, OP_CONTINUATION, b""),
            frame_with(true, OP_CONTINUATION, b"lo", [9, 8, 7, 6]),
            frame(false, OP_BINARY, &[1, 2]),
            frame(true, OP_CONTINUATION, &[3]),
        ];
        let expected = [
            WsIn::Ping(Bytes::from_static(b"ping")),
            WsIn::Text("Hello".into()),
            WsIn::Binary(Bytes::from_static(&[1, 2, 3])),
        ];
        assert_eq!(decode_all(1024, &bytes.concat()).unwrap(), expected);
    }

    #[test]
    fn framing_violations_are_protocol_errors() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0x81, 0x02],                   // unmasked
            frame(true, OP_TEXT | 0x40, b"hi"), // reserved bit
            frame(true, 0x3, b""),              // reserved opcodes
            frame(true, 0xB, b""),
            frame(true, OP_PING, &[0; 126])[..4].to_vec(), // control frame too long
            frame(false, OP_PING, b""),                    // fragmented control frame
            frame(true, OP_CONTINUATION, b"x"),            // continuation of nothing
            [frame(false, OP_TEXT, b"a"), frame(true, OP_BINARY, b"b")].concat(),
            vec![0x82, 0xFE, 0, 5], // non-minimal 16-bit length
            vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 1, 0], // non-minimal 64-bit length
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1], // top bit set
            frame(true, OP_CLOSE, &[3]), // 1-byte close payload
            frame(true, OP_CLOSE, &[0x03, 0xED]), // close code 1005
        ];
        for bytes in cases {
            assert_eq!(error_code(1024, &bytes), 1002, "{bytes:?}");
        }
    }

    #[test]
    fn oversized_message_is_rejected_before_its_payload() {
        // A 16-bit length over the maximum, before the mask key and payload.
        let err = decode_all(1000, &[0x82, 0xFE, 0x03, 0xE9]).unwrap_err();
        assert!(matches!(err, WsError::MessageTooBig { length: 1001, .. }));
        assert_eq!(err.close_code(), 1009);
        // The reassembled size counts: 600 buffered + 600 announced.
        let first = frame(false, OP_BINARY, &[0; 600]);
        assert_eq!(
            error_code(1000, &[&first[..], &[0x80, 0xFE, 2, 0x58]].concat()),
            1009
        );
        assert_eq!(error_code(1 << 20, b"\x82\xFF\0\0\x01\0\0\0\0\0"), 1009);
        // Within the maximum, no more than MAX_RESERVE is reserved for 16 MiB announced.
        let mut codec = open(64 << 20);
        let mut buf = BytesMut::from(&[0x82, 0xFF, 0, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3, 4][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= 2 * MAX_RESERVE, "{}", buf.capacity());
    }

    #[test]
    fn invalid_utf8_is_1007() {
        assert_eq!(error_code(1024, &frame(true, OP_TEXT, &[0xC3, 0x28])), 1007);
        // A character split across fragments is fine; an invalid one is not.
        let split = [frame(false, OP_TEXT, &[0xC3]), frame(true, 0, &[0xA9])].concat();
        assert_eq!(decode_all(1024, &split).unwrap(), [WsIn::Text("é".into())]);
        let bad = [frame(false, OP_TEXT, b"ok"), frame(true, 0, &[0xFF])].concat();
        assert_eq!(error_code(1024, &bad), 1007);
        assert_eq!(
            error_code(1024, &frame(true, OP_CLOSE, b"\x03\xE8\xFF")),
            1007
        );
    }

    #[test]
    fn long_lengths() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        for (len, marker) in [(70_000, 127), (300, 126)] {
            let bytes = frame(true, OP_BINARY, &payload[..len]);
            assert_eq!(bytes[1], 0x80 | marker);
            let expected = [WsIn::Binary(payload[..len].to_vec().into())];
            assert_eq!(decode_all(len, &bytes).unwrap(), expected);
        }
    }

    #[test]
    fn input_after_close_is_ignored() {
        let close = frame(true, OP_CLOSE, b"\x03\xE8bye");
        let bytes = [close, frame(true, OP_TEXT, b"x"), b"junk".to_vec()].concat();
        let expected = [WsIn::Close(Some((1000, "bye".into())))];
        assert_eq!(decode_all(1024, &bytes).unwrap(), expected);
        let empty = decode_all(1024, &frame(true, OP_CLOSE, b""));
        assert_eq!(empty.unwrap(), [WsIn::Close(None)]);
    }

    #[test]
    fn errors_stick_and_eof_inside_a_frame_is_an_error() {
        let mut codec = open(1024);
        let bytes = [frame(true, OP_TEXT, &[0xFF]), frame(true, OP_TEXT, b"ok")].concat();
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..2 {
            let err = codec.decode(&mut buf).unwrap_err();
            assert!(matches!(err, WsError::InvalidUtf8 { valid_up_to: 0 }));
        }
        // The connection can still be closed properly.
        let close = encoded(&mut codec, WsOut::Close(1007, "bad".into()));
        assert_eq!(close[..2], [0x88, 5]);
        let mut buf = BytesMut::from(&frame(true, OP_TEXT, b"abc")[..8]);
        assert!(open(1024).decode_eof(&mut buf).is_err());
        let mut empty = BytesMut::new();
        assert!(open(1024).decode_eof(&mut empty).unwrap().is_none());
    }

    #[test]
    fn encoder_writes_unmasked_frames() {
        let mut codec = open(16);
        let text = encoded(&mut codec, WsOut::Text("Hello".into()));
        assert_eq!(text, b"\x81\x05Hello");
        let pong = encoded(&mut codec, WsOut::Pong(Bytes::from_static(b"p")));
        assert_eq!(pong, b"\x8A\x01p");
        assert_eq!(encoded(&mut codec, WsOut::Ping(Bytes::new())), b"\x89\x00");
        let big = encoded(&mut codec, WsOut::Binary(vec![1; 300].into()));
        assert_eq!((&big[..4], big.len()), (&[0x82, 126, 0x01, 0x2C][..], 304));
        let huge = encoded(&mut codec, WsOut::Binary(vec![1; 70_000].into()));
        assert_eq!(huge[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let close = encoded(&mut codec, WsOut::Close(1000, "bye".into()));
        assert_eq!(close, b"\x88\x05\x03\xE8bye");
        // A long reason is cut at a character boundary to fit 125 bytes.
        let close = encoded(&mut open(16), WsOut::Close(1001, "é".repeat(100)));
        assert_eq!(close[..4], [0x88, 124, 0x03, 0xE9]);
        assert!(std::str::from_utf8(&close[4..]).is_ok());
    }

    #[test]
    fn encoder_refuses_what_is_out_of_place() {
        let mut fresh = WebSocketCodec::new(16);
        assert!(refused(&mut fresh, WsOut::Text("x".into())));
        let accept = ACCEPT.to_string();
        assert!(refused(&mut fresh, WsOut::Accept { accept }));
        let mut codec = open(16);
        assert!(refused(&mut codec, WsOut::Ping(vec![0; 126].into())));
        assert!(refused(&mut codec, WsOut::Close(1005, String::new())));
        assert!(refused(&mut codec, http(200)));
        encoded(&mut codec, WsOut::Close(1000, String::new()));
        assert!(refused(&mut codec, WsOut::Text("late".into())));
    }

    /// Feeds `stream` in chunks of the given sizes (cycled), answering the
    /// request with Accept, and collects what is decoded.
    fn feed(stream: &[u8], chunks: &[usize]) -> Vec<WsIn> {
        let (mut codec, mut buf, mut items) = (WebSocketCodec::new(1024), BytesMut::new(), vec![]);
        let mut rest = stream;
        for &size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            buf.extend_from_slice(chunk);
            rest = tail;
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                if let WsIn::Request(request) = &item {
                    let accept = request.websocket_accept().unwrap().unwrap();
                    encoded(&mut codec, WsOut::Accept { accept });
                }
                items.push(item);
            }
        }
        items
    }

    proptest! {
        #[test]
        fn chunked_feeding_equals_whole_feeding(
            messages in prop::collection::vec((
                prop::option::of(".{0,40}"),
                prop::collection::vec(any::<u8>(), 0..300),
                prop::collection::vec(any::<prop::sample::Index>(), 0..4),
                any::<bool>(),
            ), 0..6),
            chunks in prop::collection::vec(1usize..20, 1..8),
            mask in any::<[u8; 4]>(),
        ) {
            let mut stream = REQUEST.as_bytes().to_vec();
            let mut expected = vec![WsIn::Request(request(REQUEST).unwrap())];
            for (text, binary, cuts, ping) in messages {
                // A text or binary message, cut into fragments, maybe with pings between.
                let (opcode, payload) = match &text {
                    Some(text) => (OP_TEXT, text.as_bytes().to_vec()),
                    None => (OP_BINARY, binary),
                };
                let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
                cuts.push(payload.len());
                cuts.sort_unstable();
                let mut start = 0;
                for (n, &cut) in cuts.iter().enumerate() {
                    let (op, last) = (if n == 0 { opcode } else { OP_CONTINUATION }, n + 1 == cuts.len());
                    stream.extend(frame_with(last, op, &payload[start..cut], mask));
                    if ping && !last {
                        stream.extend(frame_with(true, OP_PING, b"between", mask));
                        expected.push(WsIn::Ping(Bytes::from_static(b"between")));
                    }
                    start = cut;
                }
                expected.push(match text {
                    Some(text) => WsIn::Text(text),
                    None => WsIn::Binary(payload.into()),
                });
            }
            stream.extend(frame_with(true, OP_CLOSE, &[0x03, 0xE8], mask));
            stream.extend_from_slice(b"ignored after close");
            expected.push(WsIn::Close(Some((1000, String::new()))));
            prop_assert_eq!(&feed(&stream, &[stream.len()]), &expected);
            prop_assert_eq!(&feed(&stream, &[1]), &expected);
            prop_assert_eq!(&feed(&stream, &chunks), &expected);
        }
    }
}
