//! Graceful shutdown: with clients connected and business work in flight, shutdown stops
//! accepting, tells the handlers — on the I/O thread and on executors — who may say
//! goodbye, closes every connection, and returns only when nothing is left running.

mod common;

use std::time::Duration;

use common::{default_server, frame, read_frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{global, ChannelEvent, Context, Event, Executor, Handler, Pipeline, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// On the I/O thread: says goodbye when the server shuts down; passes frames on.
struct Goodbye;

impl Handler<Frame, Frame> for Goodbye {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        ctx.fire_read(f).await?;
        Ok(())
    }
    async fn user_event(
        &mut self,
        ctx: &mut Context<'_, Frame, Frame>,
        event: &Event,
    ) -> Result<()> {
        if event.channel_event() == Some(ChannelEvent::ShutdownRequested) {
            ctx.write(Frame::from(&b"BYE"[..])).await?;
        }
        Ok(())
    }
}

/// On an executor: slow business work, then the echo; says its own goodbye too.
struct SlowEcho;

impl Handler<Frame, Frame> for SlowEcho {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ctx.spawn(async { std::future::pending::<()>().await })?;
        ctx.write(f).await
    }
    async fn user_event(
        &mut self,
        ctx: &mut Context<'_, Frame, Frame>,
        event: &Event,
    ) -> Result<()> {
        if event.channel_event() == Some(ChannelEvent::ShutdownRequested) {
            ctx.write(Frame::from(&b"BYE FROM THE EXECUTOR"[..]))
                .await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_with_work_in_flight_says_goodbye_and_leaves_nothing_running() {
    let business = Executor::builder("business").threads(2).build().unwrap();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Goodbye)
            .on(&business, SlowEcho)
            .build()
    })
    .await;
    let addr = server.addr;

    let mut clients = Vec::new();
    for c in 0..5u8 {
        let mut client = TcpStream::connect(addr).await.unwrap();
        for i in 0..50u8 {
            client.write_all(&frame(&[c, i])).await.unwrap();
        }
        // Work is in flight: the first reply has come back, most are still queued.
        assert_eq!(read_frame(&mut client).await.unwrap(), [c, 0]);
        clients.push(client);
    }

    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("shutdown completes");

    for (c, client) in clients.iter_mut().enumerate() {
        let mut next = 1u8;
        let mut said_bye = false;
        let mut executor_said_bye = false;
        while let Some(reply) = read_frame(client).await {
            if reply == b"BYE" {
                said_bye = true;
            } else if reply == b"BYE FROM THE EXECUTOR" {
                executor_said_bye = true;
            } else {
                assert_eq!(reply, [c as u8, next], "replies stay in order to the end");
                next += 1;
            }
        }
        assert!(said_bye, "client {c} got no goodbye");
        assert!(
            executor_said_bye,
            "client {c} got no goodbye from the executor's handler"
        );
        assert!(
            next < 50,
            "queued work was dropped, not finished: {next} replies"
        );
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    assert_eq!(global().connections.get(), 0);
    assert_eq!(global().owned_tasks.get(), 0);
}
