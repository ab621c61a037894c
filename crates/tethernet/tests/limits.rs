//! Server limits: connections above the maximum are refused politely (accepted and
//! closed at once, counted), and served again once a slot frees up; a connection's owned
//! tasks and tethered values are capped.

mod common;

use common::{default_server, frame, read_frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{global, Channel, Context, Handler, Pipeline, Result, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        ctx.write(f).await
    }
}

async fn echoes(client: &mut TcpStream) -> bool {
    if client.write_all(&frame(b"ping")).await.is_err() {
        return false;
    }
    read_frame(client).await.as_deref() == Some(&b"ping"[..])
}

#[tokio::test]
async fn connections_above_the_maximum_are_refused_until_a_slot_frees() {
    let server = start(Server::builder().io_threads(1).max_connections(3), || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Echo)
            .build()
    })
    .await;
    let mut admitted = Vec::new();
    for _ in 0..3 {
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        assert!(echoes(&mut client).await);
        admitted.push(client);
    }
    let refused_before = global().refused.get();
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        !echoes(&mut refused).await,
        "the fourth connection is closed at once"
    );
    assert_eq!(global().refused.get(), refused_before + 1);

    // One leaves; once the server has seen it go, a newcomer is served. (Each refused
    // try is closed at once; the loop is bounded.)
    drop(admitted.pop());
    let mut served = None;
    for _ in 0..200 {
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        if echoes(&mut client).await {
            served = Some(client);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        served.is_some(),
        "a freed slot never admitted a new connection"
    );
    server.stop().await;
}

#[tokio::test]
async fn owned_tasks_and_tethered_values_are_capped_per_connection() {
    let (tx, mut channels) = mpsc::channel(1);
    let server = start(default_server().max_owned_tasks(3), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Capture(tx.clone()))
            .build()
    })
    .await;
    let _client = TcpStream::connect(server.addr).await.unwrap();
    let channel = channels.recv().await.unwrap();
    for _ in 0..3 {
        channel.spawn(std::future::pending()).unwrap();
        channel.tether(()).unwrap();
    }
    assert!(
        channel.spawn(std::future::pending()).is_err(),
        "a 4th owned task"
    );
    assert!(channel.tether(()).is_err(), "a 4th tethered value");
    assert_eq!(channel.owned(), (3, 3));
    server.stop().await;
}

/// Hands each connection's channel to the test.
struct Capture(mpsc::Sender<Channel<Frame>>);

impl Handler<Frame, Frame> for Capture {
    type Next = Frame;
    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        self.0
            .send(ctx.channel().clone())
            .await
            .map_err(tethernet::Error::other)
    }
    async fn read(&mut self, _ctx: &mut Context<'_, Frame, Frame>, _f: Frame) -> Result<()> {
        Ok(())
    }
}

/// Connects from a given loopback source address.
async fn connect_from(source: &str, server: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

#[tokio::test]
async fn connections_above_the_per_address_maximum_are_refused_for_that_address_only() {
    let server = start(
        Server::builder()
            .io_threads(1)
            .max_connections_per_address(2),
        || {
            Pipeline::builder(LengthFieldCodec::new(1024))
                .handler(Echo)
                .build()
        },
    )
    .await;
    let refused_before = global().refused_per_address.get();
    let mut first = connect_from("127.0.0.1", server.addr).await;
    let mut second = connect_from("127.0.0.1", server.addr).await;
    assert!(echoes(&mut first).await && echoes(&mut second).await);
    let mut third = connect_from("127.0.0.1", server.addr).await;
    assert!(
        !echoes(&mut third).await,
        "a third from 127.0.0.1 is closed at once"
    );
    assert_eq!(global().refused_per_address.get(), refused_before + 1);

    // Another address is not affected.
    let mut elsewhere = connect_from("127.0.0.2", server.addr).await;
    assert!(
        echoes(&mut elsewhere).await,
        "127.0.0.2 has its own allowance"
    );

    // One of 127.0.0.1's connections goes; once the server has seen it, the address may
    // connect again. (Each refused try is closed at once; the loop is bounded.)
    drop(first);
    let mut served = false;
    for _ in 0..200 {
        let mut client = connect_from("127.0.0.1", server.addr).await;
        if echoes(&mut client).await {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        served,
        "a freed per-address slot never admitted a new connection"
    );
    drop((second, third, elsewhere));
    server.stop().await;
}

fn frame_timeout_server() -> tethernet::ServerBuilder {
    Server::builder()
        .io_threads(1)
        .frame_timeout(std::time::Duration::from_millis(300))
}

/// Reads until the server closes the connection; true if it did (within the hang guard).
async fn closed_by_server(client: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), client.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_peer_trickling_a_frame_is_closed_after_the_frame_timeout() {
    let server = start(frame_timeout_server(), || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Echo)
            .build()
    })
    .await;
    let timeouts_before = global().frame_timeouts.get();
    let mut slowloris = TcpStream::connect(server.addr).await.unwrap();
    let trickle = frame(b"slow");
    // One byte every 100 ms: each read makes progress, but the frame never completes
    // within 300 ms of its first byte.
    let (mut reader, mut writer) = slowloris.split();
    let trickling = async {
        for byte in &trickle {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let closed = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        matches!(reader.read(&mut buf).await, Ok(0) | Err(_))
    };
    let (closed, ()) = tokio::join!(closed, trickling);
    assert!(closed, "the trickling peer was closed, not answered");
    assert!(global().frame_timeouts.get() > timeouts_before);
    drop(slowloris);

    // A peer idle between whole frames is not affected, nor is one streaming many
    // frames whose reads end mid-frame.
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(
        echoes(&mut client).await,
        "an idle peer holds no partial frame"
    );
    let mut burst = Vec::new();
    for seq in 0..5_000u32 {
        burst.extend_from_slice(&frame(&common::numbered(0, seq, 100)));
    }
    let (mut reader, mut writer) = client.split();
    let sending = writer.write_all(&burst);
    let receiving = async {
        for seq in 0..5_000u32 {
            assert_eq!(
                read_frame(&mut reader).await.as_deref(),
                Some(&common::numbered(0, seq, 100)[..])
            );
        }
    };
    let (sent, ()) = tokio::join!(sending, receiving);
    sent.unwrap();
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_partial_frame_that_never_completes_is_closed() {
    let server = start(frame_timeout_server(), || {
        Pipeline::builder(LengthFieldCodec::new(1 << 20))
            .handler(Echo)
            .build()
    })
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    // A header announcing 1 KiB, then 10 bytes, then silence.
    client.write_all(&1024u32.to_be_bytes()).await.unwrap();
    client.write_all(&[0u8; 10]).await.unwrap();
    assert!(
        closed_by_server(&mut client).await,
        "held partial frame closed"
    );
    server.stop().await;
}
