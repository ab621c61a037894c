//! G1 order: every connection sees its replies in the order it sent the frames, also when
//! each frame passes business handlers on async and blocking executors with random jitter.

mod common;

use std::time::Duration;

use common::{default_server, frame, numbered, read_frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::pipeline::Stage;
use tethernet::Frame;
use tethernet::{Context, Executor, Handler, Pipeline, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CONNECTIONS: u32 = 8;
const FRAMES: u32 = 1500;

struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        ctx.write(f).await
    }
}

/// Waits a random 0..max_us, by async sleep or blocking sleep, then passes the frame on.
struct Jitter {
    max_us: u64,
    blocking: bool,
}

impl Handler<Frame, Frame> for Jitter {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        let wait = Duration::from_micros(fastrand::u64(0..self.max_us));
        if self.blocking {
            std::thread::sleep(wait);
        } else if fastrand::bool() {
            tokio::time::sleep(wait).await;
        } else {
            tokio::task::yield_now().await;
        }
        ctx.fire_read(f).await?;
        Ok(())
    }
}

/// Checks, per handler instance, that frames of its connection arrive in sequence; a
/// reordering fails the connection (the client then sees it closed early).
struct AssertSequence {
    next: Option<u32>,
}

impl Handler<Frame, Frame> for AssertSequence {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        let seq = u32::from_be_bytes(f[4..8].try_into().unwrap());
        if let Some(expected) = self.next {
            if seq != expected {
                return Err(tethernet::Error::other(format!(
                    "frame {seq} arrived where {expected} was expected"
                )));
            }
        }
        self.next = Some(seq + 1);
        ctx.fire_read(f).await?;
        Ok(())
    }
}

/// Sends FRAMES numbered frames on each of CONNECTIONS connections at once, while reading
/// the replies, and checks every reply is the frame sent, in order.
async fn run_clients(addr: std::net::SocketAddr) {
    let mut clients = tokio::task::JoinSet::new();
    for connection in 0..CONNECTIONS {
        clients.spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let send = async move {
                let mut batch = Vec::new();
                for seq in 0..FRAMES {
                    batch.extend(frame(&numbered(connection, seq, fastrand::usize(0..64))));
                    if batch.len() > 4096 || seq == FRAMES - 1 {
                        writer.write_all(&batch).await.unwrap();
                        batch.clear();
                    }
                }
                writer
            };
            let receive = async move {
                for seq in 0..FRAMES {
                    let reply = read_frame(&mut reader).await.unwrap_or_else(|| {
                        panic!("connection {connection} closed before reply {seq}")
                    });
                    assert_eq!(
                        reply[..4],
                        connection.to_be_bytes(),
                        "reply for another connection"
                    );
                    let got = u32::from_be_bytes(reply[4..8].try_into().unwrap());
                    assert_eq!(got, seq, "connection {connection}: reply out of order");
                    assert!(
                        reply[8..].iter().all(|b| *b == (seq % 251) as u8),
                        "payload changed"
                    );
                }
            };
            let (_writer, ()) = tokio::join!(send, receive);
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client failed");
    }
}

/// Codec, then on `executor`: jitter (async or blocking sleep, by the executor's flavour),
/// a sequence check, and the echo.
fn through_executor(
    executor: &Executor,
    max_us: u64,
) -> Pipeline<LengthFieldCodec, impl Stage<Frame, Frame>, Frame> {
    let blocking = executor.is_blocking();
    Pipeline::builder(LengthFieldCodec::new(1024))
        .on(executor, Jitter { max_us, blocking })
        .handler(AssertSequence { next: None })
        .handler(Echo)
        .build()
}

#[tokio::test]
async fn replies_in_order_through_async_executor_with_jitter() {
    let executor = Executor::builder("async-jitter")
        .threads(2)
        .build()
        .unwrap();
    let server = start(default_server(), move || through_executor(&executor, 300)).await;
    run_clients(server.addr).await;
    server.stop().await;
}

#[tokio::test]
async fn replies_in_order_through_blocking_executor_with_jitter() {
    let executor = Executor::builder("blocking-jitter")
        .threads(3)
        .blocking()
        .build()
        .unwrap();
    let server = start(default_server(), move || through_executor(&executor, 200)).await;
    run_clients(server.addr).await;
    server.stop().await;
}

#[tokio::test]
async fn replies_in_order_across_io_async_and_blocking_stages() {
    let business = Executor::builder("business").threads(2).build().unwrap();
    let legacy = Executor::builder("legacy")
        .threads(2)
        .blocking()
        .build()
        .unwrap();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(AssertSequence { next: None })
            .on(
                &business,
                Jitter {
                    max_us: 200,
                    blocking: false,
                },
            )
            .handler(AssertSequence { next: None })
            .on(
                &legacy,
                Jitter {
                    max_us: 100,
                    blocking: true,
                },
            )
            .handler(AssertSequence { next: None })
            .handler(Echo)
            .build()
    })
    .await;
    run_clients(server.addr).await;
    server.stop().await;
}

#[tokio::test]
async fn replies_in_order_on_the_io_thread() {
    let server = start(default_server(), || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(AssertSequence { next: None })
            .handler(Echo)
            .build()
    })
    .await;
    run_clients(server.addr).await;
    server.stop().await;
}
