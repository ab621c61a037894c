//! G3 bounds with TCP backpressure: a business handler that cannot keep up and a client
//! that writes as fast as it can. The connection's queued bytes never pass the executor's
//! cap, the server stops reading so the client's writes stall, and once the handler
//! catches up every frame is delivered, in order.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, frame, numbered, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{Channel, Context, Executor, Handler, MemoryKind, Pipeline, Result, Server};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

const QUEUE_CAP: usize = 16 * 1024;
const FRAME_PADDING: usize = 1016; // 1 KiB payloads
const TOTAL_FRAMES: u32 = 8 * 1024; // 8 MiB in all

/// Handles one frame per permit of `gate`, checking sequence numbers.
struct Gated {
    gate: Arc<Semaphore>,
    handled: Arc<AtomicU32>,
    channel: Arc<Mutex<Option<Channel<Frame>>>>,
}

impl Handler<Frame, Frame> for Gated {
    type Next = Frame;

    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        *self.channel.lock().unwrap() = Some(ctx.channel().clone());
        Ok(())
    }

    async fn read(&mut self, _ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        self.gate.acquire().await.expect("gate closed").forget();
        let seq = u32::from_be_bytes(f[4..8].try_into().unwrap());
        let expected = self.handled.load(Ordering::SeqCst);
        assert_eq!(seq, expected, "frames handled out of order");
        self.handled.store(expected + 1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn slow_handler_stalls_the_client_without_growing_memory() {
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicU32::new(0));
    let channel = Arc::new(Mutex::new(None));
    let executor = Executor::builder("slow")
        .threads(1)
        .queue_capacity(QUEUE_CAP)
        .build()
        .unwrap();
    let (g, h, c) = (gate.clone(), handled.clone(), channel.clone());
    let server = start(
        Server::builder().io_threads(1).recv_buffer_size(32 * 1024),
        move || {
            Pipeline::builder(LengthFieldCodec::new(4096))
                .on(
                    &executor,
                    Gated {
                        gate: g.clone(),
                        handled: h.clone(),
                        channel: c.clone(),
                    },
                )
                .build()
        },
    )
    .await;

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(32 * 1024).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut bytes: Vec<u8> = Vec::new();
    for seq in 0..TOTAL_FRAMES {
        bytes.extend(frame(&numbered(0, seq, FRAME_PADDING)));
    }

    // Write without waiting until the socket refuses more for a while: the stall.
    let mut written = 0;
    loop {
        match stream.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let more =
                    tokio::time::timeout(Duration::from_millis(500), stream.writable()).await;
                if more.is_err() {
                    break; // no room for half a second: the server stopped reading
                }
            }
            Err(e) => panic!("write failed: {e}"),
        }
        assert!(
            written < bytes.len(),
            "the client was never stalled: everything was accepted"
        );
    }
    assert!(
        written < bytes.len() / 2,
        "stalled only after {written} bytes"
    );

    let server_channel = channel
        .lock()
        .unwrap()
        .clone()
        .expect("handler saw the connection");
    // Queued frames are charged their slots here; their bytes are charged to the read
    // buffers they were cut from (checked below).
    let queue = server_channel.stats().meter(MemoryKind::InboundQueue);
    assert!(
        queue.current() > 0,
        "frames should wait in the queue while stalled"
    );
    assert!(
        queue.peak() <= QUEUE_CAP,
        "queue peak {} passed the cap {QUEUE_CAP}",
        queue.peak()
    );
    let read_buffer = server_channel
        .stats()
        .meter(MemoryKind::ReadBuffer)
        .current();
    assert!(
        read_buffer <= 64 * 1024 + 4096,
        "read buffer grew to {read_buffer} while paused"
    );

    // Let the handler catch up: everything arrives, in order, and the queue stays bounded.
    gate.add_permits(TOTAL_FRAMES as usize);
    let write_rest = async {
        while written < bytes.len() {
            stream.writable().await.unwrap();
            match stream.try_write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
    };
    write_rest.await;
    eventually(
        "all frames handled",
        || handled.load(Ordering::SeqCst) == TOTAL_FRAMES,
        || tokio::time::sleep(Duration::from_millis(10)),
    )
    .await;
    assert!(
        queue.peak() <= QUEUE_CAP,
        "queue peak {} passed the cap {QUEUE_CAP}",
        queue.peak()
    );
    assert_eq!(server_channel.stats().messages_read(), TOTAL_FRAMES as u64);
    drop(stream);
    server_channel.closed().await;
    assert_eq!(
        server_channel.stats().total_bytes(),
        0,
        "a closed connection holds no bytes"
    );
    server.stop().await;
}
