//! Regression test: a client that sends its requests and then half-closes (shuts down its
//! write side, as `nc -N` does) gets every answer, also from handlers on a business
//! executor whose queue still held its requests when the end of stream arrived. Before,
//! the end of stream closed the connection at once and queued work was dropped.

mod common;

use std::time::Duration;

use common::{eventually, frame, read_frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::{global, Context, Executor, Frame, Handler, Pipeline, Result, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Takes a while per frame, so that frames queue up behind it.
struct SlowEcho;

impl Handler<Frame, Frame> for SlowEcho {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        ctx.write(frame).await
    }
}

/// Says goodbye when the connection ends.
struct Goodbye;

impl Handler<Frame, Frame> for Goodbye {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
        ctx.fire_read(frame).await?;
        Ok(())
    }
    async fn inactive(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        ctx.write(Frame::from(&b"BYE"[..])).await
    }
}

#[tokio::test]
async fn requests_sent_before_a_half_close_are_all_answered_in_order() {
    let business = Executor::builder("business").threads(1).build().unwrap();
    let server = start(Server::builder().io_threads(1), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Goodbye)
            .on(&business, SlowEcho)
            .build()
    })
    .await;

    let mut clients = Vec::new();
    for c in 0..4u8 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let mut requests = Vec::new();
            for i in 0..100u8 {
                requests.extend_from_slice(&frame(&[c, i]));
            }
            client.write_all(&requests).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answers = Vec::new();
            while let Some(answer) = read_frame(&mut client).await {
                answers.push(answer);
            }
            answers
        }));
    }
    for (c, client) in clients.into_iter().enumerate() {
        let answers = client.await.unwrap();
        let expected: Vec<Vec<u8>> = (0..100u8)
            .map(|i| vec![c as u8, i])
            .chain(std::iter::once(b"BYE".to_vec()))
            .collect();
        assert_eq!(
            answers, expected,
            "client {c}: every answer, in order, then goodbye"
        );
    }
    eventually(
        "connections and their bytes gone",
        || global().connections.get() == 0 && global().total_bytes() == 0,
        || tokio::time::sleep(Duration::from_millis(10)),
    )
    .await;
    assert_eq!(global().owned_tasks.get(), 0);
    server.stop().await;
}
