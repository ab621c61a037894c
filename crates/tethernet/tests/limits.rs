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
