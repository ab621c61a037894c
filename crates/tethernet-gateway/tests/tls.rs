//! The gateway over TLS, end to end: with `--tls-cert`/`--tls-key`, TCP frames and
//! WebSocket (wss) both run over rustls; a TCP client and a WebSocket client chat in one
//! room; a plain-text client is refused; a missing half of the TLS settings is a clear
//! start-up error. The certificate is made by rcgen for each run.

mod common;

use std::sync::Arc;

use common::{settings, start, token_for};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Writes a self-signed certificate for `localhost` into `dir`; the connector trusts it.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, TlsConnector) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    (cert_path, key_path, TlsConnector::from(Arc::new(config)))
}

async fn connect(connector: &TlsConnector, addr: std::net::SocketAddr) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake with the gateway")
}

async fn send_frame<S: AsyncWrite + Unpin>(stream: &mut S, value: Value) {
    let text = value.to_string();
    let mut frame = (text.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(text.as_bytes());
    stream.write_all(&frame).await.unwrap();
}

async fn recv_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Value {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// The next TCP message of `kind`, skipping others.
async fn expect_frame<S: AsyncRead + Unpin>(stream: &mut S, kind: &str) -> Value {
    loop {
        let message = recv_frame(stream).await;
        assert_ne!(message["type"], "error", "waiting for {kind}: {message}");
        if message["type"] == kind {
            return message;
        }
    }
}

async fn ws_upgrade(stream: &mut Tls) {
    let request = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade over TLS: {head}");
}

async fn ws_send(stream: &mut Tls, value: Value) {
    let payload = value.to_string().into_bytes();
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
}

/// The next WebSocket text message of `kind`.
async fn ws_expect(stream: &mut Tls, kind: &str) -> Value {
    loop {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.unwrap();
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                stream.read_exact(&mut n).await.unwrap();
                u16::from_be_bytes(n) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        if head[0] & 0x0f != 0x1 {
            continue;
        }
        let message: Value = serde_json::from_slice(&payload).unwrap();
        assert_ne!(message["type"], "error", "waiting for {kind}: {message}");
        if message["type"] == kind {
            return message;
        }
    }
}

#[tokio::test]
async fn tcp_and_websocket_clients_chat_over_tls() {
    let (mut settings, dir) = settings();
    let (cert, key, connector) = certificate(dir.path());
    settings.tls_cert = Some(cert);
    settings.tls_key = Some(key);
    let gateway = start(settings, Some(dir)).await;

    let mut ada = connect(&connector, gateway.addrs.tcp).await;
    send_frame(
        &mut ada,
        json!({"type": "login", "token": token_for("ada", &["lobby"], 60)}),
    )
    .await;
    expect_frame(&mut ada, "welcome").await;
    send_frame(&mut ada, json!({"type": "join", "room": "lobby"})).await;
    expect_frame(&mut ada, "joined").await;

    let mut bob = connect(&connector, gateway.addrs.ws).await;
    ws_upgrade(&mut bob).await;
    ws_send(
        &mut bob,
        json!({"type": "login", "token": token_for("bob", &["lobby"], 60)}),
    )
    .await;
    ws_expect(&mut bob, "welcome").await;
    ws_send(&mut bob, json!({"type": "join", "room": "lobby"})).await;
    ws_expect(&mut bob, "joined").await;

    send_frame(
        &mut ada,
        json!({"type": "send", "room": "lobby", "body": "over tls"}),
    )
    .await;
    let pushed = ws_expect(&mut bob, "message").await;
    assert_eq!(pushed["body"], "over tls");
    assert_eq!(pushed["sender"], "ada");
    ws_send(
        &mut bob,
        json!({"type": "send", "room": "lobby", "body": "wss back"}),
    )
    .await;
    loop {
        let message = expect_frame(&mut ada, "message").await;
        if message["body"] == "wss back" {
            assert_eq!(message["sender"], "bob");
            break;
        }
    }

    // A client speaking plain frames to the TLS listener is not served.
    let mut plain = TcpStream::connect(gateway.addrs.tcp).await.unwrap();
    send_frame(&mut plain, json!({"type": "ping"})).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        plain.read_to_end(&mut answer),
    )
    .await
    .expect("the listener closes a plain-text client");
    assert!(
        !String::from_utf8_lossy(&answer).contains("pong"),
        "plain text was answered"
    );

    drop((ada, bob, plain));
    gateway.stop().await;
}

#[tokio::test]
async fn half_a_tls_configuration_is_a_clear_error() {
    let (mut settings, dir) = settings();
    let (cert, _key, _) = certificate(dir.path());
    settings.tls_cert = Some(cert);
    let error = tethernet_gateway::gateway::Gateway::bind(&settings)
        .await
        .err()
        .expect("refused");
    assert!(error.contains("--tls-key"), "{error}");

    let (mut settings, dir) = common::settings();
    settings.tls_cert = Some(dir.path().join("missing-cert.pem"));
    settings.tls_key = Some(dir.path().join("missing-key.pem"));
    let error = tethernet_gateway::gateway::Gateway::bind(&settings)
        .await
        .err()
        .expect("refused");
    assert!(error.contains("missing-cert.pem"), "{error}");
}
