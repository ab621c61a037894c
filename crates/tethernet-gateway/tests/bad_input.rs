//! Every bad input the gateway meets, in one place, and what it does with each. The
//! gateway runs in this process on its embedded defaults (`common::start_default`: SQLite
//! in a temporary directory, in-process bus).
//!
//! Every test holds a logged-in *bystander* (TCP, joined to `lobby`) through its attacks:
//! after each attack it still gets a `pong`. At the end two good clients (TCP and
//! WebSocket) still chat, the bystander receives their message, and once everyone has
//! left the live counters are back to zero: connections, bytes of every kind, owned tasks
//! and tethered values (`tethernet::global()`), rooms, bus subscriptions and database
//! connections in use (the node). The tests run one at a time (the global counters are
//! process-wide), and wait with a 20 s hang guard, never timed.
//!
//! | input | what the gateway does |
//! |---|---|
//! | **TCP frames** (4-byte length + JSON) | |
//! | length header `0xFFFFFFF0` (~4 GiB), before or after login | closes the connection, no reply; bytes held stay < 1 MiB |
//! | a `ping`, then a header of 65,533 (largest frame is 4 + 65,532 = `--max-frame`) | `pong`, then close |
//! | a `ping`, then a truncated frame, then EOF (half-close) | `pong`, then a clean close |
//! | a truncated frame, then RST | cleaned up (counters back to 0) |
//! | invalid UTF-8 inside a JSON string; a frame of non-UTF-8 bytes | `bad_request`, connection goes on |
//! | an empty frame; truncated JSON; `null`; 20,000 nested `[` (past serde_json's depth limit) | `bad_request` |
//! | wrong shape: an array, a string, no `type`, `room` a number, `join` without `room`, an unknown field, `"type":"Ping"` | `bad_request` |
//! | unknown type; the internal-only types `invalid` and `closing` | `bad_request` (clients cannot inject them) |
//! | bad room names: `a b`, empty, 65 characters, a NUL | `bad_request` |
//! | body of 4,097 bytes; 1,366 `€` (4,098 bytes); a `client_id` of 129; a body in a 65,532-byte frame | `too_large` (a body of 4,096 bytes is stored: `ack`) |
//! | all of the above pipelined | one reply each, in request order |
//! | **WebSocket** | |
//! | an unmasked client frame | close 1002, then EOF |
//! | reserved opcodes 0x3 and 0xB; RSV1 set without an extension | close 1002 |
//! | a pong of 126 bytes (control frame over 125) | close 1002 (a 125-byte ping is answered with its pong) |
//! | a ping with FIN=0, alone or in the middle of a fragmented text message | close 1002 |
//! | a continuation frame with no message | close 1002 |
//! | a close frame with code 1005 (never sent on the wire) | close 1002 |
//! | a text message with a UTF-16 surrogate (`ED A0 80`); invalid UTF-8 in the last fragment; in a close reason | close 1007 |
//! | a frame header announcing 2^40 bytes; two fragments of 40,000 bytes (max 65,536) | close 1009, before the payload is buffered |
//! | a binary frame | `bad_request`, connection goes on |
//! | garbage (`\0\xFF\xFE garbage`) instead of the upgrade request | HTTP 400, close |
//! | a TLS ClientHello, then EOF | HTTP 400, close |
//! | a request head of 16 KiB (max 8 KiB) | HTTP 431, close |
//! | upgrade with `Sec-WebSocket-Version: 8`; without `Sec-WebSocket-Key`; with `POST` | HTTP 400, close |
//! | `GET /ws` without upgrade headers | HTTP 426, close |
//! | **Random garbage** (seeded; a third of the peers reset) | |
//! | 40 TCP peers: 1–10 KiB of random bytes, half behind a plausible length header | closed (or answered, then closed); never a crash |
//! | 40 WebSocket peers: random bytes instead of the request | an HTTP error (400 or 431), close |
//! | 40 WebSocket peers: random bytes after a good upgrade | a close frame, then EOF |
//! | **Tokens** | |
//! | `history`/`send` before `login` | `not_logged_in` |
//! | claims changed under a valid signature; a signature changed; signed with another secret and expired | `invalid_token` (the signature is checked before the expiry) |
//! | a valid signature over claims that are not claims JSON | `invalid_token` |
//! | a correctly signed token past its `exp` | `token_expired` |
//! | garbage: empty, no dot, three parts, not base64, non-ASCII, 5,000 bytes (max 4,096) | `invalid_token`; a good login on the same connection then works |
//! | `token` a number | `bad_request` |
//! | a second `login` (another user's valid token) | `already_logged_in`; the first identity stays |
//! | `join`/`send`/`history` of a room not in the token's `rooms`; `join` with `rooms: []` | `forbidden` |
//! | `send`/`leave` of an allowed room not joined | `not_joined` |
//! | a forged token over WebSocket | `invalid_token` |

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{start_default, token_for, Messages, TcpClient, TestGateway, WsClient, SECRET};
use hmac::Mac as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A hang guard for anything awaited (not a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(20);

/// The framework's counters are process-wide: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connects from a given loopback source address.
async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let stream = tokio::time::timeout(HANG_GUARD, socket.connect(server))
        .await
        .expect("connected within the hang guard")
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A length-prefixed frame around raw bytes.
fn tcp_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// How the server ended a connection.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// End of stream (FIN).
    Closed,
    /// Connection reset (RST).
    Reset,
}

/// Reads until the server ends the connection: what it sent before, and how it ended.
async fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Ended) {
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .expect("the server closed the connection within the hang guard");
        match read {
            Ok(0) => return (received, Ended::Closed),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (received, Ended::Reset),
        }
    }
}

/// A TCP-frames client with raw access to its socket.
struct Peer {
    stream: TcpStream,
    pending: std::collections::VecDeque<Value>,
}

impl Messages for Peer {
    fn pending(&mut self) -> &mut std::collections::VecDeque<Value> {
        &mut self.pending
    }

    async fn read_from_socket(&mut self) -> Option<Value> {
        let read = async {
            let mut header = [0u8; 4];
            self.stream.read_exact(&mut header).await.ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(serde_json::from_slice(&body).expect("the gateway sends JSON"))
        };
        tokio::time::timeout(HANG_GUARD, read)
            .await
            .expect("a reply or a close within the hang guard")
    }
}

impl Peer {
    async fn connect(gateway: &TestGateway) -> Peer {
        Peer::connect_from("127.0.0.1", gateway).await
    }

    async fn connect_from(source: &str, gateway: &TestGateway) -> Peer {
        Peer {
            stream: connect_from(source, gateway.addrs.tcp).await,
            pending: Default::default(),
        }
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, message: Value) {
        self.raw(&tcp_frame(message.to_string().as_bytes())).await;
    }

    /// The next reply, which must be an error: its code.
    async fn error_code(&mut self) -> String {
        let reply = self.recv().await.expect("a reply, not a close");
        assert_eq!(reply["type"], "error", "{reply}");
        reply["code"].as_str().unwrap().to_owned()
    }

    async fn login(&mut self, token: &str) -> Value {
        self.send(json!({"type": "login", "token": token})).await;
        self.recv().await.expect("a reply to login")
    }

    /// `ping`, answered with its `pong`.
    async fn pings(&mut self, id: u64) {
        self.send(json!({"type": "ping", "id": id})).await;
        assert_eq!(self.expect("pong").await["id"], id);
    }
}

/// A logged-in client joined to `lobby`, held through the attacks.
struct Bystander {
    client: TcpClient,
    pings: u64,
}

impl Bystander {
    async fn join(gateway: &TestGateway) -> Bystander {
        let mut client = TcpClient::connect(gateway.addrs.tcp).await;
        assert_eq!(
            client.login(&token_for("bea", &["lobby"], 3600)).await["type"],
            "welcome"
        );
        client.join("lobby").await;
        Bystander { client, pings: 0 }
    }

    /// Still served after `attack`.
    async fn still_served(&mut self, attack: &str) {
        self.pings += 1;
        self.client
            .send(json!({"type": "ping", "id": self.pings}))
            .await;
        let pong = self.client.expect("pong").await;
        assert_eq!(pong["id"], self.pings, "the bystander after {attack}");
    }
}

/// A WebSocket connection with raw access to its socket: any frame, masked or not.
struct RawWs {
    stream: TcpStream,
}

/// A client frame; `mask` None sends it unmasked.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(masked | n as u8),
        n if n < 65536 => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame.
fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    ws_frame(fin, opcode, payload, Some([0x0b, 0xad, 0xf0, 0x0d]))
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl RawWs {
    /// Upgrades a fresh connection.
    async fn connect(gateway: &TestGateway) -> RawWs {
        let mut stream = connect_from("127.0.0.1", gateway.addrs.ws).await;
        stream.write_all(UPGRADE.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tokio::time::timeout(HANG_GUARD, stream.read_exact(&mut byte))
                .await
                .expect("an upgrade answer within the hang guard")
                .unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        RawWs { stream }
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next server frame: (opcode, payload); `None` once closed.
    async fn recv_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let read = async {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.ok()?;
            assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.stream.read_exact(&mut n).await.ok()?;
                    u64::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.stream.read_exact(&mut n).await.ok()?;
                    u64::from_be_bytes(n)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some((head[0] & 0x0f, payload))
        };
        tokio::time::timeout(HANG_GUARD, read)
            .await
            .expect("a frame or a close within the hang guard")
    }

    /// The next JSON text message (pongs skipped).
    async fn recv_json(&mut self) -> Value {
        loop {
            match self.recv_frame().await.expect("a message, not a close") {
                (0x1, text) => return serde_json::from_slice(&text).unwrap(),
                (0xA, _) => continue,
                (opcode, payload) => panic!("unexpected frame {opcode:#x}: {payload:?}"),
            }
        }
    }

    /// Reads up to the server's close frame: its code; then the server closes the TCP
    /// connection.
    async fn closed_with(mut self) -> u16 {
        let code = loop {
            match self.recv_frame().await.expect("a close frame before EOF") {
                (0x8, payload) => {
                    assert!(payload.len() >= 2, "a close frame with a code");
                    break u16::from_be_bytes([payload[0], payload[1]]);
                }
                (0x1 | 0xA, _) => continue,
                (opcode, payload) => panic!("unexpected frame {opcode:#x}: {payload:?}"),
            }
        };
        let (rest, _) = until_closed(&mut self.stream).await;
        assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
        code
    }
}

/// Sends `request` to the WebSocket port (then EOF if `half_close`): the status of the
/// HTTP response, read up to the server's close.
async fn http_status(gateway: &TestGateway, request: &[u8], half_close: bool) -> u16 {
    let mut stream = connect_from("127.0.0.1", gateway.addrs.ws).await;
    stream.write_all(request).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    // Over the limit, the server may close with some of the request unread (an RST
    // after its response): what arrived before counts.
    let (response, _) = until_closed(&mut stream).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(
        response.contains("Connection: close\r\n"),
        "the response says it closes: {response}"
    );
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Waits until the gateway holds nothing for anyone: no connection, no byte, no owned
/// task or tethered value, no room, no bus subscription, no database connection in use.
async fn settled(gateway: &TestGateway, after: &str) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let g = tethernet::global();
        let (pool, idle) = gateway.node.store.pool_stats();
        let figures = [
            ("connections", g.connections.get()),
            ("bytes", g.total_bytes()),
            ("owned tasks", g.owned_tasks.get()),
            ("tethered values", g.tethered_resources.get()),
            ("rooms", gateway.node.rooms_active()),
            ("bus subscriptions", gateway.node.bus.subscriptions()),
            (
                "database connections in use",
                (pool as usize).saturating_sub(idle),
            ),
        ];
        if figures.iter().all(|(_, n)| *n == 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live counters did not come back to zero after {after}: {figures:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two good clients (TCP and WebSocket) chat in `lobby`, the bystander hears them; then
/// everyone leaves and the counters come back to zero.
async fn good_clients_chat_then_all_is_released(
    gateway: TestGateway,
    mut bystander: Bystander,
    after: &str,
) {
    let mut tom = TcpClient::connect(gateway.addrs.tcp).await;
    assert_eq!(
        tom.login(&token_for("tom", &["lobby"], 3600)).await["type"],
        "welcome"
    );
    tom.join("lobby").await;
    let mut wendy = WsClient::connect(gateway.addrs.ws, "/ws").await;
    wendy
        .send(json!({"type": "login", "token": token_for("wendy", &["lobby"], 3600)}))
        .await;
    wendy.expect("welcome").await;
    wendy.send(json!({"type": "join", "room": "lobby"})).await;
    wendy.expect("joined").await;

    tom.send(json!({"type": "send", "room": "lobby", "body": format!("still here after {after}")}))
        .await;
    tom.expect("ack").await;
    let heard = wendy.expect("message").await;
    assert_eq!(
        (heard["sender"].as_str(), heard["body"].as_str()),
        (Some("tom"), Some(&*format!("still here after {after}")))
    );
    wendy
        .send(json!({"type": "send", "room": "lobby", "body": "me too"}))
        .await;
    wendy.expect("ack").await;
    assert_eq!(tom.expect("message").await["sender"], "tom");
    assert_eq!(tom.expect("message").await["body"], "me too");
    assert_eq!(
        bystander.client.expect("message").await["sender"],
        "tom",
        "the bystander hears the room"
    );
    assert_eq!(bystander.client.expect("message").await["sender"], "wendy");
    bystander.still_served(after).await;

    drop((tom, wendy, bystander));
    settled(&gateway, after).await;
    gateway.stop().await;
}

#[tokio::test]
async fn tcp_bad_frames_get_bad_request_or_too_large_in_order_and_the_connection_goes_on() {
    let _serial = SERIAL.lock().await;
    let gateway = start_default().await;
    let mut bystander = Bystander::join(&gateway).await;
    let mut ada = Peer::connect(&gateway).await;
    assert_eq!(
        ada.login(&token_for("ada", &["*"], 3600)).await["type"],
        "welcome"
    );
    ada.send(json!({"type": "join", "room": "lobby"})).await;
    ada.expect("joined").await;

    // The largest frame (4 + 65,532 bytes = --max-frame) is read; its body is too long.
    let prefix = r#"{"type":"send","room":"lobby","body":""#;
    let suffix = r#""}"#;
    let largest = format!(
        "{prefix}{}{suffix}",
        "x".repeat(65_532 - prefix.len() - suffix.len())
    );
    assert_eq!(largest.len(), 65_532);
    let euros = "€".repeat(1366);
    assert_eq!((euros.chars().count(), euros.len()), (1366, 4098));
    let nested_objects = format!("{}1{}", r#"{"a":"#.repeat(5000), "}".repeat(5000));

    let send = |body: &str, client_id: Option<String>| {
        let mut send = json!({"type": "send", "room": "lobby", "body": body});
        if let Some(id) = client_id {
            send["client_id"] = json!(id);
        }
        send.to_string().into_bytes()
    };
    let room_65 = json!({"type": "join", "room": "r".repeat(65)}).to_string();
    let raw = |text: &str| text.as_bytes().to_vec();
    let inputs: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "invalid UTF-8 in a string",
            b"{\"type\":\"ping\",\"id\":\"\xFF\xFE\"}".to_vec(),
            "bad_request",
        ),
        (
            "a frame of non-UTF-8 bytes",
            vec![0xC3, 0x28, 0xFF, 0x00, 0x80],
            "bad_request",
        ),
        ("an empty frame", vec![], "bad_request"),
        ("truncated JSON", raw(r#"{"type":"ping""#), "bad_request"),
        ("null", raw("null"), "bad_request"),
        (
            "20,000 nested arrays",
            raw(&"[".repeat(20_000)),
            "bad_request",
        ),
        ("5,000 nested objects", raw(&nested_objects), "bad_request"),
        ("an array", raw("[1,2,3]"), "bad_request"),
        ("a string", raw(r#""login""#), "bad_request"),
        ("no type", raw(r#"{"room":"lobby"}"#), "bad_request"),
        (
            "room a number",
            raw(r#"{"type":"send","room":5,"body":"x"}"#),
            "bad_request",
        ),
        (
            "join without a room",
            raw(r#"{"type":"join"}"#),
            "bad_request",
        ),
        (
            "an unknown field",
            raw(r#"{"type":"ping","id":1,"admin":true}"#),
            "bad_request",
        ),
        (
            "a type in capitals",
            raw(r#"{"type":"Ping"}"#),
            "bad_request",
        ),
        (
            "an unknown type",
            raw(r#"{"type":"shutdown"}"#),
            "bad_request",
        ),
        (
            "the internal type invalid",
            raw(r#"{"type":"invalid","reason":"x"}"#),
            "bad_request",
        ),
        (
            "the internal type closing",
            raw(r#"{"type":"closing","code":1000}"#),
            "bad_request",
        ),
        (
            "a room with a space",
            raw(r#"{"type":"join","room":"a b"}"#),
            "bad_request",
        ),
        (
            "an empty room",
            raw(r#"{"type":"join","room":""}"#),
            "bad_request",
        ),
        ("a room of 65 characters", raw(&room_65), "bad_request"),
        (
            "a room with a NUL",
            raw(r#"{"type":"history","room":"lobby\u0000"}"#),
            "bad_request",
        ),
        (
            "a body of 4,097 bytes",
            send(&"b".repeat(4097), None),
            "too_large",
        ),
        (
            "a body of 1,366 characters, 4,098 bytes",
            send(&euros, None),
            "too_large",
        ),
        (
            "a client_id of 129 bytes",
            send("hi", Some("c".repeat(129))),
            "too_large",
        ),
        ("a body in the largest frame", raw(&largest), "too_large"),
    ];
    // All at once: one reply each, in request order.
    let mut pipelined = Vec::new();
    for (_, payload, _) in &inputs {
        pipelined.extend(tcp_frame(payload));
    }
    ada.raw(&pipelined).await;
    for (what, _, code) in &inputs {
        assert_eq!(ada.error_code().await, *code, "{what}");
    }
    // The connection goes on; a body of exactly 4,096 bytes is stored.
    ada.pings(1).await;
    ada.send(json!({"type": "send", "room": "lobby", "body": "b".repeat(4096)}))
        .await;
    assert_eq!(ada.expect("ack").await["seq"], 1);
    assert_eq!(
        bystander.client.expect("message").await["body"]
            .as_str()
            .map(str::len),
        Some(4096)
    );
    bystander.still_served("bad frames").await;

    drop(ada);
    good_clients_chat_then_all_is_released(gateway, bystander, "bad TCP frames").await;
}

#[tokio::test]
async fn tcp_oversized_and_truncated_frames_close_the_connection() {
    let _serial = SERIAL.lock().await;
    let gateway = start_default().await;
    let mut bystander = Bystander::join(&gateway).await;

    // A header claiming ~4 GiB, before login and after: closed, no reply, nothing
    // buffered for it.
    for logged_in in [false, true] {
        let mut peer = Peer::connect(&gateway).await;
        if logged_in {
            assert_eq!(
                peer.login(&token_for("ada", &["lobby"], 3600)).await["type"],
                "welcome"
            );
        }
        let mut claim = 0xFFFF_FFF0u32.to_be_bytes().to_vec();
        claim.extend_from_slice(&[b'{'; 1024]);
        peer.raw(&claim).await;
        let (received, _) = until_closed(&mut peer.stream).await;
        assert!(received.is_empty(), "no reply to a 4 GiB header");
        let held = tethernet::global().total_bytes();
        assert!(held < 1 << 20, "{held} bytes held after a 4 GiB header");
        bystander.still_served("a 4 GiB header").await;
    }

    // One byte over the largest frame, after a good exchange: closed, no reply.
    let mut peer = Peer::connect(&gateway).await;
    peer.pings(1).await;
    peer.raw(&65_533u32.to_be_bytes()).await;
    let (received, _) = until_closed(&mut peer.stream).await;
    assert!(received.is_empty(), "no reply to an oversized header");
    bystander.still_served("a header of max frame - 3").await;

    // A truncated frame, then EOF, after a good exchange: a clean close.
    let mut peer = Peer::connect(&gateway).await;
    peer.pings(2).await;
    let mut input = 100u32.to_be_bytes().to_vec();
    input.extend_from_slice(br#"{"type":"#);
    peer.raw(&input).await;
    peer.stream.shutdown().await.unwrap();
    let (received, ended) = until_closed(&mut peer.stream).await;
    assert!(received.is_empty(), "no reply to a truncated frame");
    assert_eq!(ended, Ended::Closed, "a clean close");
    bystander.still_served("a truncated frame and EOF").await;

    // The same two, each right behind a request in one write: the connection closes;
    // the request may be answered first or not (requests queued for the session when
    // the connection fails are dropped; over TCP, wait for the replies you need).
    let pong = tcp_frame(br#"{"type":"pong","id":"first"}"#);
    for (what, tail) in [
        ("an oversized header", 65_533u32.to_be_bytes().to_vec()),
        ("a truncated frame and EOF", vec![0, 0, 0, 100, b'{']),
    ] {
        let mut peer = Peer::connect(&gateway).await;
        let mut input = tcp_frame(br#"{"type":"ping","id":"first"}"#);
        input.extend_from_slice(&tail);
        peer.raw(&input).await;
        peer.stream.shutdown().await.unwrap();
        let (received, _) = until_closed(&mut peer.stream).await;
        assert!(
            received.is_empty() || received == pong,
            "{what} behind a ping: at most the pong, then the close: {received:?}"
        );
        bystander.still_served(what).await;
    }

    // A truncated frame, then RST.
    let mut peer = Peer::connect(&gateway).await;
    peer.raw(&[0, 0, 1, 0, b'{']).await;
    peer.stream.set_zero_linger().unwrap();
    drop(peer);
    bystander.still_served("a truncated frame and RST").await;

    good_clients_chat_then_all_is_released(gateway, bystander, "oversized and truncated frames")
        .await;
}

#[tokio::test]
async fn websocket_framing_violations_close_with_the_rfc_code() {
    let _serial = SERIAL.lock().await;
    let gateway = start_default().await;
    let mut bystander = Bystander::join(&gateway).await;
    let text = |s: &str| s.as_bytes().to_vec();

    let violations: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "an unmasked text frame",
            ws_frame(true, 0x1, br#"{"type":"ping"}"#, None),
            1002,
        ),
        ("reserved opcode 0x3", masked(true, 0x3, b"x"), 1002),
        ("reserved control opcode 0xB", masked(true, 0xB, b""), 1002),
        (
            "RSV1 without an extension",
            masked(true, 0x40 | 0x1, br#"{"type":"ping"}"#),
            1002,
        ),
        ("a pong of 126 bytes", masked(true, 0xA, &[b'p'; 126]), 1002),
        ("a ping with FIN=0", masked(false, 0x9, b"ping"), 1002),
        (
            "a ping with FIN=0 amid a fragmented message",
            [
                masked(false, 0x1, br#"{"type":"#),
                masked(false, 0x9, b"ping"),
                masked(true, 0x0, br#""ping"}"#),
            ]
            .concat(),
            1002,
        ),
        (
            "a continuation with no message",
            masked(true, 0x0, b"orphan"),
            1002,
        ),
        (
            "a close frame with code 1005",
            masked(true, 0x8, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "a UTF-16 surrogate in a text message",
            masked(true, 0x1, b"{\"type\":\"ping\",\"id\":\"\xED\xA0\x80\"}"),
            1007,
        ),
        (
            "invalid UTF-8 in the last fragment",
            [
                masked(false, 0x1, &text(r#"{"type":"ping","id":""#)),
                masked(true, 0x0, b"\xFF\"}"),
            ]
            .concat(),
            1007,
        ),
        (
            "invalid UTF-8 in a close reason",
            masked(true, 0x8, b"\x03\xE8bye \xC0\xAF"),
            1007,
        ),
        (
            "a frame header announcing 2^40 bytes",
            // FIN, binary, masked, 64-bit length; no mask key or payload follows.
            [&[0x82u8, 0xFF][..], &(1u64 << 40).to_be_bytes()].concat(),
            1009,
        ),
        (
            "two fragments of 40,000 bytes",
            [
                masked(false, 0x1, &[b' '; 40_000]),
                masked(true, 0x0, &[b' '; 40_000]),
            ]
            .concat(),
            1009,
        ),
    ];
    for (what, bytes, code) in violations {
        let mut ws = RawWs::connect(&gateway).await;
        // Over the limit, the server closes before taking it all: the write may fail.
        let _ = ws.stream.write_all(&bytes).await;
        assert_eq!(ws.closed_with().await, code, "{what}");
        bystander.still_served(what).await;
    }

    // At the limits, and a binary frame: answered, and the connection goes on.
    let mut ws = RawWs::connect(&gateway).await;
    ws.raw(&masked(true, 0x9, &[b'p'; 125])).await;
    assert_eq!(ws.recv_frame().await.unwrap(), (0xA, vec![b'p'; 125]));
    ws.raw(&masked(true, 0x2, br#"{"type":"ping"}"#)).await;
    assert_eq!(
        ws.recv_json().await["code"],
        "bad_request",
        "a binary frame"
    );
    let forged = tethernet_gateway::token::Signer::new(b"not-the-gateway-secret")
        .unwrap()
        .sign(&tethernet_gateway::token::Claims {
            user: "mallory".into(),
            exp: i64::MAX,
            rooms: vec!["*".into()],
        });
    let login = json!({"type": "login", "token": forged}).to_string();
    ws.raw(&masked(true, 0x1, login.as_bytes())).await;
    assert_eq!(ws.recv_json().await["code"], "invalid_token");
    ws.raw(&masked(true, 0x1, br#"{"type":"ping","id":"web"}"#))
        .await;
    assert_eq!(ws.recv_json().await, json!({"type": "pong", "id": "web"}));
    ws.raw(&masked(true, 0x8, &1000u16.to_be_bytes())).await;
    assert_eq!(ws.closed_with().await, 1000, "the close handshake");
    bystander.still_served("WebSocket limits").await;

    good_clients_chat_then_all_is_released(gateway, bystander, "WebSocket violations").await;
}

#[tokio::test]
async fn websocket_bad_handshakes_get_an_http_error_and_a_close() {
    let _serial = SERIAL.lock().await;
    let gateway = start_default().await;
    let mut bystander = Bystander::join(&gateway).await;

    // The start of a TLS ClientHello (a wss client on the plain port), then EOF.
    let client_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5e, 0x11,
    ];
    let mut huge_head = b"GET /ws HTTP/1.1\r\nHost: gateway\r\nX-Padding: ".to_vec();
    huge_head.extend(std::iter::repeat_n(b'a', 16 * 1024));
    huge_head.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, bool, u16)> = vec![
        (
            "garbage instead of a request",
            b"\x00\xFF\xFE garbage \x01\x02\r\n\r\n".to_vec(),
            false,
            400,
        ),
        (
            "a TLS ClientHello, then EOF",
            client_hello.to_vec(),
            true,
            400,
        ),
        ("a request head of 16 KiB", huge_head, false, 431),
        (
            "Sec-WebSocket-Version: 8",
            UPGRADE.replace("Version: 13", "Version: 8").into_bytes(),
            false,
            400,
        ),
        (
            "no Sec-WebSocket-Key",
            UPGRADE
                .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")
                .into_bytes(),
            false,
            400,
        ),
        (
            "an upgrade with POST",
            UPGRADE.replacen("GET", "POST", 1).into_bytes(),
            false,
            400,
        ),
        (
            "GET /ws without upgrade headers",
            b"GET /ws HTTP/1.1\r\nHost: gateway\r\n\r\n".to_vec(),
            false,
            426,
        ),
    ];
    for (what, request, half_close, status) in cases {
        assert_eq!(
            http_status(&gateway, &request, half_close).await,
            status,
            "{what}"
        );
        bystander.still_served(what).await;
    }

    good_clients_chat_then_all_is_released(gateway, bystander, "bad handshakes").await;
}

/// A token whose signature is right over any `claims` text.
fn signed(claims: &[u8]) -> String {
    let body = URL_SAFE_NO_PAD.encode(claims);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{body}.{tag}")
}

#[tokio::test]
async fn bad_tokens_and_rooms_get_their_error_codes() {
    let _serial = SERIAL.lock().await;
    let gateway = start_default().await;
    let mut bystander = Bystander::join(&gateway).await;

    // Failed logins are limited per address: these come from two addresses, each under
    // the limit.
    let mut ada = Peer::connect_from("127.0.0.4", &gateway).await;
    ada.send(json!({"type": "history", "room": "lobby"})).await;
    assert_eq!(ada.error_code().await, "not_logged_in");
    ada.send(json!({"type": "send", "room": "lobby", "body": "hi"}))
        .await;
    assert_eq!(ada.error_code().await, "not_logged_in");

    let good = token_for("ada", &["lobby"], 3600);
    let (claims, signature) = good.split_once('.').unwrap();
    // The claims rewritten to allow every room, under the original signature.
    let widened = URL_SAFE_NO_PAD.encode(
        String::from_utf8(URL_SAFE_NO_PAD.decode(claims).unwrap())
            .unwrap()
            .replace(r#"["lobby"]"#, r#"["*"]"#),
    );
    assert_ne!(widened, claims);
    let mut flipped = signature.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let forged_and_expired = tethernet_gateway::token::Signer::new(b"not-the-gateway-secret")
        .unwrap()
        .sign(&tethernet_gateway::token::Claims {
            user: "ada".into(),
            exp: 1,
            rooms: vec!["*".into()],
        });
    for (what, token, code) in [
        (
            "claims widened",
            format!("{widened}.{signature}"),
            "invalid_token",
        ),
        (
            "signature changed",
            format!("{claims}.{}", String::from_utf8(flipped).unwrap()),
            "invalid_token",
        ),
        ("forged and expired", forged_and_expired, "invalid_token"),
        (
            "signed, but not claims JSON",
            signed(b"{\"user\":\"ada\"}"),
            "invalid_token",
        ),
        (
            "signed, expired",
            token_for("ada", &["lobby"], -1),
            "token_expired",
        ),
    ] {
        let reply = ada.login(&token).await;
        assert_eq!(reply["code"], code, "{what}: {reply}");
    }
    ada.send(json!({"type": "login", "token": 42})).await;
    assert_eq!(ada.error_code().await, "bad_request", "token a number");

    assert_eq!(ada.login(&good).await["type"], "welcome");
    let reply = ada.login(&token_for("bob", &["*"], 3600)).await;
    assert_eq!(reply["code"], "already_logged_in");
    for request in [
        json!({"type": "join", "room": "dev"}),
        json!({"type": "send", "room": "dev", "body": "let me in"}),
        json!({"type": "history", "room": "dev"}),
    ] {
        ada.send(request.clone()).await;
        assert_eq!(ada.error_code().await, "forbidden", "{request}");
    }
    for request in [
        json!({"type": "send", "room": "lobby", "body": "not yet"}),
        json!({"type": "leave", "room": "lobby"}),
    ] {
        ada.send(request.clone()).await;
        assert_eq!(ada.error_code().await, "not_joined", "{request}");
    }
    ada.send(json!({"type": "join", "room": "lobby"})).await;
    ada.expect("joined").await;
    ada.send(json!({"type": "send", "room": "lobby", "body": "who am I?"}))
        .await;
    ada.expect("ack").await;
    assert_eq!(
        bystander.client.expect("message").await["sender"],
        "ada",
        "the second login changed nothing"
    );
    bystander
        .still_served("forged, expired and foreign tokens")
        .await;

    // Garbage tokens; then a good one on the same connection.
    let mut eve = Peer::connect_from("127.0.0.5", &gateway).await;
    let long = format!("{}.{}", "A".repeat(5000), "A".repeat(43));
    for token in [
        "",
        "no-dot-at-all",
        "a.b.c",
        "!!!.???",
        "é.é",
        long.as_str(),
    ] {
        let reply = eve.login(token).await;
        assert_eq!(reply["code"], "invalid_token", "{token:.20}: {reply}");
    }
    assert_eq!(
        eve.login(&token_for("eve", &[], 3600)).await["type"],
        "welcome"
    );
    eve.send(json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(eve.error_code().await, "forbidden", "a token with no rooms");
    eve.pings(3).await;
    bystander.still_served("garbage tokens").await;

    drop((ada, eve));
    good_clients_chat_then_all_is_released(gateway, bystander, "bad tokens").await;
}

/// What a garbage peer sends, and how it leaves.
struct Garbage {
    bytes: Vec<u8>,
    reset: bool,
}

fn garbage(rng: &mut fastrand::Rng, framed: bool) -> Garbage {
    let mut bytes = vec![0u8; rng.usize(1024..=10 * 1024)];
    rng.fill(&mut bytes);
    if framed && rng.bool() {
        bytes[..4].copy_from_slice(&rng.u32(0..=65_532).to_be_bytes());
    }
    Garbage {
        bytes,
        reset: rng.u8(0..3) == 0,
    }
}

/// Sends the garbage, then resets, or half-closes and reads until the server closes:
/// what the server sent.
async fn spray(mut stream: TcpStream, garbage: Garbage) -> Option<Vec<u8>> {
    // The server may close before taking it all: write errors are expected.
    let _ = stream.write_all(&garbage.bytes).await;
    if garbage.reset {
        stream.set_zero_linger().unwrap();
        return None;
    }
    let _ = stream.shutdown().await;
    Some(until_closed(&mut stream).await.0)
}

#[tokio::test]
async fn random_garbage_on_both_ports_never_breaks_the_gateway() {
    let _serial = SERIAL.lock().await;
    let gateway = start_default().await;
    let mut bystander = Bystander::join(&gateway).await;
    let mut rng = fastrand::Rng::with_seed(0x6A7E_BAD1_0000_0042);
    let mut peers = tokio::task::JoinSet::new();
    for _ in 0..40 {
        // TCP frames.
        let (addr, bytes) = (gateway.addrs.tcp, garbage(&mut rng, true));
        peers.spawn(async move {
            spray(connect_from("127.0.0.1", addr).await, bytes).await;
        });
        // WebSocket, before the upgrade: an HTTP error.
        let (addr, bytes) = (gateway.addrs.ws, garbage(&mut rng, false));
        peers.spawn(async move {
            if let Some(response) = spray(connect_from("127.0.0.1", addr).await, bytes).await {
                let response = String::from_utf8_lossy(&response);
                assert!(
                    response.starts_with("HTTP/1.1 400 ") || response.starts_with("HTTP/1.1 431 "),
                    "{response}"
                );
            }
        });
    }
    while let Some(peer) = peers.join_next().await {
        peer.expect("a garbage peer's task");
    }
    // WebSocket, after a good upgrade: a close frame (whatever the code), then EOF.
    for _ in 0..40 {
        let mut ws = RawWs::connect(&gateway).await;
        let bytes = garbage(&mut rng, false);
        let _ = ws.stream.write_all(&bytes.bytes).await;
        if bytes.reset {
            ws.stream.set_zero_linger().unwrap();
            continue;
        }
        let _ = ws.stream.shutdown().await;
        let code = ws.closed_with().await;
        assert!(
            matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999),
            "close code {code}"
        );
    }
    bystander.still_served("random garbage").await;

    good_clients_chat_then_all_is_released(gateway, bystander, "random garbage").await;
}
