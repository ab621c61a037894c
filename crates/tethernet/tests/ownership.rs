//! G2 ownership: tasks a connection spawns and values it tethers are gone within a short
//! bound after it closes — after a clean close, an abrupt reset, a handler panic and a
//! close from the server — and the process-wide live counters return to exactly zero.
//! (One test, so that no other test in this process moves the global counters.)

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{default_server, eventually, frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{global, Channel, Context, Handler, Pipeline, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Counts its own drops: a stand-in for a subscription guard or a lease.
struct Resource(Arc<AtomicUsize>);

impl Drop for Resource {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// On connect: two owned tasks (one busy looping on a timer, one waiting forever, each
/// holding a resource) and two tethered resources. Panics on the frame "panic".
struct Owner {
    dropped: Arc<AtomicUsize>,
    channels: mpsc::Sender<Channel<Frame>>,
}

impl Handler<Frame, Frame> for Owner {
    type Next = Frame;

    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        let held = Resource(self.dropped.clone());
        ctx.spawn(async move {
            let _held = held;
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })?;
        let held = Resource(self.dropped.clone());
        ctx.spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        })?;
        ctx.tether(Resource(self.dropped.clone()))?;
        ctx.tether(Resource(self.dropped.clone()))?;
        self.channels
            .send(ctx.channel().clone())
            .await
            .map_err(tethernet::Error::other)
    }

    async fn read(&mut self, _ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        if &f[..] == b"panic" {
            panic!("the handler panicked on purpose");
        }
        Ok(())
    }
}

/// Every connection owns 4 droppable things: 2 in tasks, 2 tethered.
const OWNED: usize = 4;

async fn assert_all_released(
    what: &str,
    channel: &Channel<Frame>,
    dropped: &AtomicUsize,
    before: usize,
) {
    tokio::time::timeout(Duration::from_secs(10), channel.closed())
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection did not close"));
    eventually(
        &format!("{what}: owned tasks and tethered values released"),
        || channel.owned() == (0, 0) && dropped.load(Ordering::SeqCst) == before + OWNED,
        || tokio::time::sleep(Duration::from_millis(2)),
    )
    .await;
    assert_eq!(
        channel.stats().total_bytes(),
        0,
        "{what}: the connection still holds bytes"
    );
}

#[tokio::test]
async fn owned_tasks_and_tethered_values_go_with_their_connection() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (tx, mut channels) = mpsc::channel(4);
    let d = dropped.clone();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Owner {
                dropped: d.clone(),
                channels: tx.clone(),
            })
            .build()
    })
    .await;

    // 1. The client closes cleanly.
    let client = TcpStream::connect(server.addr).await.unwrap();
    let channel = channels.recv().await.unwrap();
    assert_eq!(channel.owned(), (2, 2));
    assert!(global().owned_tasks.get() >= 2 && global().tethered_resources.get() >= 2);
    drop(client);
    assert_all_released("clean close", &channel, &dropped, 0).await;

    // 2. The client resets the connection (RST, no FIN).
    let client = TcpStream::connect(server.addr).await.unwrap();
    let channel = channels.recv().await.unwrap();
    client.set_zero_linger().unwrap();
    drop(client);
    assert_all_released("abrupt reset", &channel, &dropped, OWNED).await;

    // 3. A handler panics.
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let channel = channels.recv().await.unwrap();
    client.write_all(&frame(b"panic")).await.unwrap();
    assert_all_released("handler panic", &channel, &dropped, 2 * OWNED).await;

    // 4. The server side closes it.
    let _client = TcpStream::connect(server.addr).await.unwrap();
    let channel = channels.recv().await.unwrap();
    channel.close();
    assert_all_released("server close", &channel, &dropped, 3 * OWNED).await;

    // A closed connection refuses new owned work.
    assert!(channel.spawn(async {}).unwrap_err().is_closed());
    assert!(channel.tether(()).unwrap_err().is_closed());

    server.stop().await;
    assert_eq!(global().owned_tasks.get(), 0, "owned tasks left running");
    assert_eq!(global().tethered_resources.get(), 0, "tethered values left");
    assert_eq!(global().connections.get(), 0, "connections left open");
}
