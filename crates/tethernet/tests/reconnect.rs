//! Client reconnect: a connection kept up across a server restart, with backoff.

mod common;

use std::time::Duration;

use common::{start, start_at};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{Backoff, Client, Context, Handler, Pipeline, Result, Server};
use tokio::sync::mpsc;

struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        ctx.write(f).await
    }
}

/// Client side: hands replies to the test.
struct Collect(mpsc::Sender<Frame>);

impl Handler<Frame, Frame> for Collect {
    type Next = Frame;
    async fn read(&mut self, _ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        self.0.send(f).await.map_err(tethernet::Error::other)
    }
}

fn echo_server() -> tethernet::ServerBuilder {
    Server::builder().io_threads(1)
}

#[tokio::test]
async fn reconnects_after_the_server_restarts() {
    let first = start(echo_server(), || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Echo)
            .build()
    })
    .await;
    let addr = first.addr;

    let (tx, mut replies) = mpsc::channel(8);
    let client = Client::builder().build().unwrap();
    let backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        ..Backoff::default()
    };
    let mut link = client.connect_with_retry(
        addr,
        move || {
            Pipeline::builder(LengthFieldCodec::new(1024))
                .handler(Collect(tx.clone()))
                .build()
        },
        backoff,
    );
    let channel = link.connected().await;
    channel.write(Frame::from(&b"one"[..])).await.unwrap();
    assert_eq!(&replies.recv().await.unwrap()[..], b"one");

    // The server goes away: the client notices and keeps trying.
    first.stop().await;
    channel.closed().await;
    let attempts_before = link.attempts();

    // A server comes back on the same address: the client is back without being asked.
    let second = start_at(echo_server(), addr, || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Echo)
            .build()
    })
    .await;
    let channel = tokio::time::timeout(Duration::from_secs(10), link.connected())
        .await
        .expect("reconnected");
    channel.write(Frame::from(&b"two"[..])).await.unwrap();
    assert_eq!(&replies.recv().await.unwrap()[..], b"two");
    assert!(link.attempts() > attempts_before);
    drop(link);
    second.stop().await;
}

#[test]
fn backoff_grows_exponentially_within_its_jitter_and_cap() {
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        multiplier: 2.0,
        jitter: 0.2,
    };
    for failures in 0..10u32 {
        let base = (100.0 * 2f64.powi(failures as i32)).min(2000.0);
        for _ in 0..50 {
            let delay = backoff.delay(failures).as_secs_f64() * 1000.0;
            assert!(
                delay >= base * 0.8 - 1e-6 && delay <= (base * 1.2).min(2000.0) + 1e-6,
                "{failures}: {delay} ms"
            );
        }
    }
}
