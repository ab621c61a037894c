//! TLS end to end: a pipeline served over rustls behaves as over TCP (frames in order,
//! large writes flushed, backpressure), and the handshake is bounded — a peer that sends
//! nothing or garbage is closed and counted, and handshakes in progress are capped.
//! Certificates are made for each test with rcgen.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, frame, numbered, read_frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::tls::TlsSettings;
use tethernet::{global, Context, Frame, Handler, MemoryKind, Pipeline, Result, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// The tests read process-wide figures: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        ctx.write(f).await
    }
}

/// A self-signed certificate for `localhost`, as the server's settings and the client's
/// trust anchor.
fn certificate() -> (TlsSettings, TlsConnector) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    let settings =
        TlsSettings::from_pem(cert.pem().as_bytes(), key_pair.serialize_pem().as_bytes())
            .expect("the generated certificate loads");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (settings, TlsConnector::from(Arc::new(client)))
}

fn echo_pipeline(
) -> Pipeline<LengthFieldCodec, impl tethernet::pipeline::Stage<Frame, Frame>, Frame> {
    Pipeline::builder(LengthFieldCodec::new(1 << 20))
        .handler(Echo)
        .build()
}

async fn connect(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

async fn back_to_zero() {
    eventually(
        "every connection closed and its bytes released",
        || global().connections.get() == 0 && global().total_bytes() == 0,
        || tokio::time::sleep(Duration::from_millis(10)),
    )
    .await;
}

#[tokio::test]
async fn frames_echo_in_order_over_tls_small_and_large() {
    let _serial = SERIAL.lock().await;
    let (settings, connector) = certificate();
    let server = start(Server::builder().io_threads(2).tls(settings), echo_pipeline).await;

    let mut clients = Vec::new();
    for connection in 0..4u32 {
        let connector = connector.clone();
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let stream = connect(&connector, addr).await;
            let (mut reader, mut writer) = tokio::io::split(stream);
            // Sizes from a few bytes to 200 KiB: bigger than the write buffer's high
            // watermark and rustls's record buffer, so writes wait for the socket.
            let sizes = [1usize, 100, 4096, 70_000, 200_000, 17, 65_536];
            let sender = tokio::spawn(async move {
                for seq in 0..50u32 {
                    let padding = sizes[seq as usize % sizes.len()];
                    writer
                        .write_all(&frame(&numbered(connection, seq, padding)))
                        .await
                        .unwrap();
                }
                writer
            });
            for seq in 0..50u32 {
                let padding = sizes[seq as usize % sizes.len()];
                let echoed = read_frame(&mut reader).await.expect("an echoed frame");
                assert_eq!(
                    echoed,
                    numbered(connection, seq, padding),
                    "frame {seq} of {connection}"
                );
            }
            let mut writer = sender.await.unwrap();
            writer.shutdown().await.unwrap();
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "nothing after the last echo");
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    back_to_zero().await;
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_not_read_from_and_is_still_served_after() {
    let _serial = SERIAL.lock().await;
    let (settings, connector) = certificate();
    // Small kernel buffers on both sides, so that the echoes back cannot all hide in
    // them and the server's own write buffer must fill.
    let server = start(
        Server::builder()
            .io_threads(1)
            .send_buffer_size(16 * 1024)
            .tls(settings),
        echo_pipeline,
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Write 8 MiB without reading: the server's writes back fill the socket and its
    // write buffer; it must then stop reading (the writer blocks) rather than buffer.
    let payload = vec![7u8; 64 * 1024];
    let writing = tokio::spawn(async move {
        for _ in 0..128 {
            writer.write_all(&frame(&payload)).await.unwrap();
        }
        writer
    });
    eventually(
        "the server's write buffer to fill",
        || global().bytes(MemoryKind::WriteBuffer).get() > 0,
        || tokio::time::sleep(Duration::from_millis(10)),
    )
    .await;
    assert!(
        global().bytes(MemoryKind::WriteBuffer).get() <= 256 * 1024,
        "the write buffer stays near its high watermark: {}",
        global().bytes(MemoryKind::WriteBuffer).get()
    );
    // Now read everything: all 128 frames come back intact.
    for _ in 0..128 {
        let echoed = read_frame(&mut reader).await.expect("echo");
        assert_eq!(echoed.len(), 64 * 1024);
        assert!(echoed.iter().all(|&b| b == 7));
    }
    drop(writing.await.unwrap());
    drop(reader);
    back_to_zero().await;
    server.stop().await;
}

#[tokio::test]
async fn silent_and_garbage_peers_are_closed_and_counted() {
    let _serial = SERIAL.lock().await;
    let (settings, connector) = certificate();
    let settings = settings.handshake_timeout(Duration::from_millis(300));
    let server = start(Server::builder().io_threads(1).tls(settings), echo_pipeline).await;
    let failures = global().tls_handshake_failures.get();

    // Sends nothing: closed once the handshake timeout passes.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("the server closes a silent peer");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not answered: {read:?}"
    );

    // Plain-text frames instead of a ClientHello: a TLS alert or a close, nothing echoed.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(&frame(b"not a client hello"))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), garbage.read_to_end(&mut answer))
        .await
        .expect("the server closes a garbage peer");
    assert!(
        !answer.windows(18).any(|w| w == b"not a client hello"),
        "garbage is never echoed"
    );

    assert!(global().tls_handshake_failures.get() >= failures + 2);
    // The server still serves a real client.
    let mut client = connect(&connector, server.addr).await;
    client.write_all(&frame(b"still here")).await.unwrap();
    assert_eq!(read_frame(&mut client).await.unwrap(), b"still here");
    drop(client);
    drop((silent, garbage));
    back_to_zero().await;
    server.stop().await;
}

#[tokio::test]
async fn handshakes_in_progress_are_capped() {
    let _serial = SERIAL.lock().await;
    let (settings, connector) = certificate();
    let settings = settings
        .max_concurrent_handshakes(1)
        .handshake_timeout(Duration::from_secs(30));
    let server = start(Server::builder().io_threads(1).tls(settings), echo_pipeline).await;

    // A peer that connects and says nothing holds the only handshake turn.
    let stalled = TcpStream::connect(server.addr).await.unwrap();
    let waiting = tokio::spawn({
        let connector = connector.clone();
        let addr = server.addr;
        async move { connect(&connector, addr).await }
    });
    // While it holds the turn, the real client's handshake does not complete.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second handshake ran beside the first"
    );
    // The stalled peer goes; its handshake fails at once and the turn passes on.
    drop(stalled);
    let mut client = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting handshake gets its turn")
        .unwrap();
    client.write_all(&frame(b"my turn")).await.unwrap();
    assert_eq!(read_frame(&mut client).await.unwrap(), b"my turn");
    drop(client);
    back_to_zero().await;
    server.stop().await;
}

#[test]
fn bad_certificate_files_are_clear_errors() {
    let error = TlsSettings::from_pem(b"not pem", b"not pem").unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    let rcgen::CertifiedKey { cert, .. } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let error =
        TlsSettings::from_pem(cert.pem().as_bytes(), other.serialize_pem().as_bytes()).unwrap_err();
    assert!(error.to_string().contains("do not fit"), "{error}");
    let error =
        TlsSettings::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/cert.pem"),
        "{error}"
    );
}
