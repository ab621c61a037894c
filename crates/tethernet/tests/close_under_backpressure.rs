//! A close is never held hostage by backpressure: neither by a business handler waiting
//! for room in the outbound queue, nor by a handler waiting on a peer that stopped
//! reading. (Regression tests for two deadlocks found in review.)

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{Channel, Context, Executor, Handler, Pipeline, Result, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// On any frame, writes 1 KB messages until the connection refuses them.
struct Flood {
    wrote: Arc<AtomicU32>,
    channel: Arc<Mutex<Option<Channel<Frame>>>>,
}

impl Handler<Frame, Frame> for Flood {
    type Next = Frame;
    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        *self.channel.lock().unwrap() = Some(ctx.channel().clone());
        Ok(())
    }
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, _f: Frame) -> Result<()> {
        for _ in 0..100_000u32 {
            ctx.write(Frame::from(&[7u8; 1000][..])).await?;
            self.wrote.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

fn tight_server() -> tethernet::ServerBuilder {
    Server::builder()
        .io_threads(1)
        .outbound_queue_capacity(8 * 1024)
        .write_watermarks(4 * 1024, 8 * 1024)
        .send_buffer_size(16 * 1024)
        .close_timeout(Duration::from_millis(500))
}

/// Connects with a small receive buffer, starts the flood, and waits until the handler
/// is stuck (no progress for 300 ms: a stall detector, not a timing assertion).
async fn flood_until_stuck(
    addr: std::net::SocketAddr,
    wrote: &AtomicU32,
    channel: &Mutex<Option<Channel<Frame>>>,
) -> (TcpStream, Channel<Frame>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(&frame(b"go")).await.unwrap();
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = wrote.load(Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let channel = channel.lock().unwrap().clone().unwrap();
    (stream, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_not_held_by_an_executor_writer_waiting_for_room() {
    let (wrote, channel) = (Arc::new(AtomicU32::new(0)), Arc::new(Mutex::new(None)));
    let executor = Executor::builder("flood").threads(1).build().unwrap();
    let (w, c) = (wrote.clone(), channel.clone());
    let server = start(tight_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(4096))
            .on(
                &executor,
                Flood {
                    wrote: w.clone(),
                    channel: c.clone(),
                },
            )
            .build()
    })
    .await;
    let (mut stream, channel) = flood_until_stuck(server.addr, &wrote, &channel).await;
    channel.close();
    // The client reads on: the connection must finish closing.
    let reader = tokio::spawn(async move {
        let mut buffer = vec![0u8; 65536];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await
        {
            if n == 0 {
                break;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), channel.closed())
        .await
        .expect("the connection never finished closing");
    reader.await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_not_held_by_a_peer_that_stopped_reading() {
    let (wrote, channel) = (Arc::new(AtomicU32::new(0)), Arc::new(Mutex::new(None)));
    let (w, c) = (wrote.clone(), channel.clone());
    let server = start(tight_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(4096))
            .handler(Flood {
                wrote: w.clone(),
                channel: c.clone(),
            })
            .build()
    })
    .await;
    // The client never reads.
    let (_stream, channel) = flood_until_stuck(server.addr, &wrote, &channel).await;
    channel.close();
    tokio::time::timeout(Duration::from_secs(10), channel.closed())
        .await
        .expect("a close was held by a peer that does not read");
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown was held by a peer that does not read");
}
