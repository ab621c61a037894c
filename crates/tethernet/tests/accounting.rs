//! G4 accounting: every kind of memory the framework holds for connections goes up under
//! load — read buffers, decoder cumulation, inbound (business) queues, outbound queues,
//! write buffers, tethered values — is visible per connection and in the process-wide
//! totals, and returns to exactly zero when every connection has closed. Also: a small
//! frame kept by a handler is charged at the full read buffer it pins.
//! (One test, so that nothing else in this process moves the totals.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{default_server, eventually, frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::{global, Channel, Context, Executor, Frame, Handler, MemoryKind, Pipeline, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// On the I/O thread: tethers a value; keeps frames that say "keep"; on "flood", has an
/// owned task write 2 MiB through the outbound queue (to a client that does not read).
struct Front {
    channels: Arc<Mutex<Vec<Channel<Frame>>>>,
    kept: Vec<Frame>,
}

impl Handler<Frame, Frame> for Front {
    type Next = Frame;

    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        ctx.tether([0u8; 256])?;
        self.channels.lock().unwrap().push(ctx.channel().clone());
        Ok(())
    }

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        match &f[..] {
            b"keep" => self.kept.push(f),
            b"flood" => {
                let channel = ctx.channel().clone();
                ctx.spawn(async move {
                    for _ in 0..256 {
                        if channel.write(Frame::from(&[7u8; 8192][..])).await.is_err() {
                            return;
                        }
                    }
                })?;
            }
            _ => ctx.fire_read(f).await?,
        }
        Ok(())
    }
}

/// On a business executor: waits for a permit per frame (so frames queue up before it).
struct Gated(Arc<Semaphore>);

impl Handler<Frame, Frame> for Gated {
    type Next = Frame;

    async fn read(&mut self, _ctx: &mut Context<'_, Frame, Frame>, _f: Frame) -> Result<()> {
        self.0
            .acquire()
            .await
            .map_err(tethernet::Error::other)?
            .forget();
        Ok(())
    }
}

fn totals() -> Vec<(MemoryKind, usize)> {
    MemoryKind::ALL
        .iter()
        .map(|kind| (*kind, global().bytes(*kind).get()))
        .collect()
}

#[tokio::test]
async fn bytes_by_kind_rise_under_load_and_return_to_zero() {
    let gate = Arc::new(Semaphore::new(0));
    let channels = Arc::new(Mutex::new(Vec::new()));
    let executor = Executor::builder("business")
        .threads(1)
        .queue_capacity(1 << 20)
        .build()
        .unwrap();
    let (handler_gate, handler_channels) = (gate.clone(), channels.clone());
    let server = start(default_server().send_buffer_size(16 * 1024), move || {
        Pipeline::builder(LengthFieldCodec::new(1 << 16))
            .handler(Front {
                channels: handler_channels.clone(),
                kept: Vec::new(),
            })
            .on(&executor, Gated(handler_gate.clone()))
            .build()
    })
    .await;

    // A: half a frame (decoder cumulation, and the read buffer holding it).
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    let mut half = frame(&[1u8; 1000]);
    half.truncate(300);
    partial.write_all(&half).await.unwrap();
    // B: frames the gated executor handler has not taken yet (inbound queue).
    let mut queued = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..50 {
        queued.write_all(&frame(&[2u8; 512])).await.unwrap();
    }
    // C: asks for a flood and never reads (write buffer, outbound queue).
    let mut flooded = TcpStream::connect(server.addr).await.unwrap();
    flooded.write_all(&frame(b"flood")).await.unwrap();
    // D: a 4-byte frame the handler keeps (pins its whole read buffer).
    let mut keeper = TcpStream::connect(server.addr).await.unwrap();
    keeper.write_all(&frame(b"keep")).await.unwrap();

    eventually(
        "every kind of memory to be held (fired messages pass at once here: see fired.rs)",
        || {
            channels.lock().unwrap().len() == 4
                && totals()
                    .iter()
                    .all(|(kind, bytes)| *bytes > 0 || *kind == MemoryKind::Fired)
        },
        || tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    let under_load = totals();
    println!("under load: {under_load:?}");

    // Per connection: each connection's own figures say what it holds.
    let infos: Vec<_> = channels.lock().unwrap().iter().map(|c| c.info()).collect();
    assert_eq!(infos.len(), 4);
    let of = |info: &tethernet::ConnectionInfo, kind: MemoryKind| {
        info.bytes.iter().find(|(k, _)| *k == kind).unwrap().1
    };
    let partial_info = infos
        .iter()
        .find(|i| of(i, MemoryKind::Decoder) == 300)
        .expect("the connection holding 300 bytes of a partial frame");
    assert!(of(partial_info, MemoryKind::ReadBuffer) > 0);
    assert!(infos.iter().any(|i| of(i, MemoryKind::InboundQueue) > 0));
    assert!(infos.iter().any(|i| of(i, MemoryKind::OutboundQueue) > 0));
    for info in &infos {
        assert_eq!(of(info, MemoryKind::Tethered), 256, "{info:?}");
        assert_eq!(
            info.total_bytes,
            info.bytes.iter().map(|(_, n)| n).sum::<usize>()
        );
    }
    // The kept 4-byte frame is charged at the full allocation it pins.
    // Found by its address (the client's local address is the server side's peer), once
    // its frame has been read.
    let keeper_addr = keeper.local_addr().unwrap();
    let keeper_channel = channels
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.peer_addr() == keeper_addr)
        .cloned()
        .expect("the keeper connection");
    eventually(
        "the keeper's frame to be read",
        || keeper_channel.info().messages_read == 1,
        || tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    let keeper_info = &keeper_channel.info();
    assert!(
        of(keeper_info, MemoryKind::ReadBuffer) >= 4096,
        "a kept 4-byte frame pins its read buffer: {keeper_info:?}"
    );
    // The listing puts the biggest holder first.
    let top = tethernet::stats::connections(2);
    assert_eq!(top.len(), 2);
    assert!(top[0].total_bytes >= top[1].total_bytes);

    // Everyone leaves; the gate opens so the in-flight executor call can finish.
    gate.add_permits(10_000);
    drop((partial, queued, flooded, keeper));
    channels.lock().unwrap().clear();
    server.stop().await;
    eventually(
        "every total back to zero",
        || {
            totals().iter().all(|(_, bytes)| *bytes == 0)
                && global().connections.get() == 0
                && global().owned_tasks.get() == 0
                && global().tethered_resources.get() == 0
        },
        || tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    assert_eq!(global().total_bytes(), 0);
}
