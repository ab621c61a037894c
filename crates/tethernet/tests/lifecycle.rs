//! Connection lifecycle: writes from other tasks through a `Channel`, bad input, handler
//! errors, and server shutdown with clients connected.

mod common;

use std::sync::{Arc, Mutex};

use common::{default_server, frame, read_frame, start};
use tethernet::codec::{CodecError, LengthFieldCodec};
use tethernet::pipeline::Stage;
use tethernet::Frame;
use tethernet::{Channel, Context, Error, Handler, MemoryKind, Pipeline, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Echoes, hands its channel to the test, reports errors, and fails on the frame "boom".
struct Probe {
    channels: mpsc::Sender<Channel<Frame>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Handler<Frame, Frame> for Probe {
    type Next = Frame;

    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        self.channels
            .send(ctx.channel().clone())
            .await
            .map_err(Error::other)
    }

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        if &f[..] == b"boom" {
            return Err(Error::other("the handler failed on purpose"));
        }
        if &f[..] == b"panic" {
            panic!("the handler panicked on purpose");
        }
        ctx.write(f).await
    }

    async fn error(&mut self, _ctx: &mut Context<'_, Frame, Frame>, error: &Error) -> Result<()> {
        let description = match error.codec_error::<CodecError>() {
            Some(codec) if codec.is_frame_too_long() => "frame too long".to_owned(),
            _ => error.to_string(),
        };
        self.errors.lock().unwrap().push(description);
        Ok(())
    }
}

/// A pipeline-making function names its stages with `impl Stage`.
fn probe_pipeline(
    channels: &mpsc::Sender<Channel<Frame>>,
    errors: &Arc<Mutex<Vec<String>>>,
) -> Pipeline<LengthFieldCodec, impl Stage<Frame, Frame>, Frame> {
    Pipeline::builder(LengthFieldCodec::new(1024))
        .handler(Probe {
            channels: channels.clone(),
            errors: errors.clone(),
        })
        .build()
}

/// A probe server and two clients: one that behaves, and one the test misbehaves with.
struct TwoClients {
    server: common::TestServer,
    errors: Arc<Mutex<Vec<String>>>,
    good: TcpStream,
    other: TcpStream,
    other_channel: Channel<Frame>,
}

async fn two_clients() -> TwoClients {
    let (tx, mut channels) = mpsc::channel(4);
    let errors = Arc::new(Mutex::new(Vec::new()));
    let server = start(default_server(), {
        let errors = errors.clone();
        move || probe_pipeline(&tx, &errors)
    })
    .await;
    let good = TcpStream::connect(server.addr).await.unwrap();
    channels.recv().await.unwrap();
    let other = TcpStream::connect(server.addr).await.unwrap();
    let other_channel = channels.recv().await.unwrap();
    TwoClients {
        server,
        errors,
        good,
        other,
        other_channel,
    }
}

impl TwoClients {
    /// The well-behaved client is still served; then the server stops cleanly.
    async fn assert_good_still_served_and_stop(mut self) {
        self.good.write_all(&frame(b"still here")).await.unwrap();
        assert_eq!(read_frame(&mut self.good).await.unwrap(), b"still here");
        self.server.stop().await;
    }
}

#[tokio::test]
async fn writes_from_another_task_arrive_in_order() {
    let (tx, mut channels) = mpsc::channel(4);
    let server = start(default_server(), {
        let errors = Arc::default();
        move || probe_pipeline(&tx, &errors)
    })
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let channel = channels.recv().await.unwrap();

    let writer = tokio::spawn(async move {
        for i in 0u32..2000 {
            channel
                .write(Frame::from(&i.to_be_bytes()[..]))
                .await
                .unwrap();
        }
        channel
    });
    for i in 0u32..2000 {
        let reply = read_frame(&mut client).await.expect("connection open");
        assert_eq!(reply, i.to_be_bytes(), "write {i} out of order");
    }
    let channel = writer.await.unwrap();
    // The cap counts what the messages hold (64 KiB); the meter also counts the
    // queue's unused slots, which at most double its inline part.
    assert!(channel.stats().meter(MemoryKind::OutboundQueue).peak() <= 2 * 64 * 1024);

    // A close from outside: the client sees the end of the stream, the handle sees closed.
    channel.close();
    channel.closed().await;
    assert!(read_frame(&mut client).await.is_none());
    assert_eq!(channel.stats().total_bytes(), 0);
    assert!(channel
        .write(Frame::from(&b"late"[..]))
        .await
        .unwrap_err()
        .is_closed());
    server.stop().await;
}

#[tokio::test]
async fn oversized_length_header_closes_only_that_connection() {
    let mut t = two_clients().await;
    // A header claiming 4 GiB: refused from the header alone, nothing of that size allocated.
    t.other.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    t.other
        .write_all(b"some bytes of the supposed frame")
        .await
        .unwrap();
    t.other_channel.closed().await;
    assert!(t.other_channel.stats().meter(MemoryKind::ReadBuffer).peak() < 128 * 1024);
    assert!(
        read_frame(&mut t.other).await.is_none(),
        "the bad client is disconnected"
    );
    assert_eq!(t.errors.lock().unwrap().as_slice(), ["frame too long"]);
    t.assert_good_still_served_and_stop().await;
}

#[tokio::test]
async fn handler_error_closes_only_that_connection() {
    let mut t = two_clients().await;
    t.other.write_all(&frame(b"before")).await.unwrap();
    t.other.write_all(&frame(b"boom")).await.unwrap();
    t.other.write_all(&frame(b"after")).await.unwrap();
    assert_eq!(read_frame(&mut t.other).await.unwrap(), b"before");
    assert!(
        read_frame(&mut t.other).await.is_none(),
        "nothing after the failure"
    );
    t.other_channel.closed().await;
    let errors = t.errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("the handler failed on purpose") && errors[0].contains("Probe"),
        "{errors:?}"
    );
    t.assert_good_still_served_and_stop().await;
}

#[tokio::test]
async fn shutdown_closes_connected_clients_and_returns() {
    let (tx, mut channels) = mpsc::channel(16);
    let server = start(default_server(), {
        let errors = Arc::default();
        move || probe_pipeline(&tx, &errors)
    })
    .await;
    let mut clients = Vec::new();
    let mut handles = Vec::new();
    for i in 0..10u8 {
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        client.write_all(&frame(&[i; 100])).await.unwrap();
        assert_eq!(read_frame(&mut client).await.unwrap(), [i; 100]);
        handles.push(channels.recv().await.unwrap());
        clients.push(client);
    }
    server.stop().await;
    for channel in &handles {
        assert!(channel.is_closed(), "{channel:?} still open after shutdown");
        assert_eq!(channel.stats().total_bytes(), 0);
    }
    for client in &mut clients {
        assert!(read_frame(client).await.is_none());
    }
}

#[tokio::test]
async fn handler_panic_closes_only_that_connection() {
    let mut t = two_clients().await;
    t.other.write_all(&frame(b"panic")).await.unwrap();
    // Handles learn that the connection is gone, and the peer is disconnected.
    tokio::time::timeout(std::time::Duration::from_secs(10), t.other_channel.closed())
        .await
        .expect("a handle must see the connection closed after a handler panic");
    assert!(read_frame(&mut t.other).await.is_none());
    // The pipeline was told, with the handler's name and the panic message.
    let errors = t.errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("Probe") && errors[0].contains("panicked on purpose"),
        "{errors:?}"
    );
    t.assert_good_still_served_and_stop().await;
}

/// Echoes with tokio-util's own codec: any `Decoder + Encoder` plugs in unchanged.
struct EchoBytes;

impl Handler<bytes::BytesMut, bytes::Bytes> for EchoBytes {
    type Next = bytes::BytesMut;
    async fn read(
        &mut self,
        ctx: &mut Context<'_, bytes::BytesMut, bytes::Bytes>,
        f: bytes::BytesMut,
    ) -> Result<()> {
        ctx.write(f.freeze()).await
    }
}

#[tokio::test]
async fn a_tokio_util_codec_plugs_in() {
    let server = start(default_server(), || {
        let codec = tokio_util::codec::LengthDelimitedCodec::builder()
            .max_frame_length(1024)
            .new_codec();
        Pipeline::builder(codec).handler(EchoBytes).build()
    })
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(&frame(b"from tokio-util")).await.unwrap();
    assert_eq!(read_frame(&mut client).await.unwrap(), b"from tokio-util");
    // Its own limit applies: a frame over 1024 bytes closes the connection.
    client.write_all(&frame(&[0; 2000])).await.unwrap();
    assert!(read_frame(&mut client).await.is_none());
    server.stop().await;
}
