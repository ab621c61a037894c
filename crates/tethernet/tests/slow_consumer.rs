//! Slow consumers (G3 on the outbound side): one peer stops reading while the others keep
//! receiving broadcasts at full speed. The slow peer's queued bytes stay under its cap,
//! the group's policy fires for it (drop or close) and is counted, its handlers learn
//! that it became unwritable, and nobody else loses a message.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{
    Channel, ChannelEvent, ChannelGroup, Context, Event, Handler, MemoryKind, Overflow, Pipeline,
    Result, Server,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

const QUEUE_CAP: usize = 16 * 1024;
const ROUNDS: usize = 300;
const PER_ROUND: usize = 10;
const MESSAGE: usize = 1024;

/// Joins the group on connect and records writability changes.
struct Member {
    group: ChannelGroup<Bytes>,
    joined: Arc<Mutex<Vec<Channel<Bytes>>>>,
    writability: Arc<Mutex<Vec<bool>>>,
}

impl Handler<Frame, Bytes> for Member {
    type Next = Frame;

    async fn active(&mut self, ctx: &mut Context<'_, Frame, Bytes>) -> Result<()> {
        // Recorded before joining: the test waits on the group's size, then reads this.
        self.joined.lock().unwrap().push(ctx.channel().clone());
        self.group.add(ctx.channel());
        Ok(())
    }

    async fn read(&mut self, _ctx: &mut Context<'_, Frame, Bytes>, _f: Frame) -> Result<()> {
        Ok(())
    }

    async fn user_event(
        &mut self,
        _ctx: &mut Context<'_, Frame, Bytes>,
        event: &Event,
    ) -> Result<()> {
        if let Some(ChannelEvent::WritabilityChanged { writable }) = event.channel_event() {
            self.writability.lock().unwrap().push(writable);
        }
        Ok(())
    }
}

struct Outcome {
    slow: Channel<Bytes>,
    fast_received: Vec<usize>,
    writability: Vec<bool>,
    group_len_after: usize,
}

/// Three fast members and one that never reads; ROUNDS × PER_ROUND broadcasts, each round
/// waiting until every fast member has read it (they are never the bottleneck).
async fn run(policy: Overflow) -> Outcome {
    let group = ChannelGroup::<Bytes>::new("room", policy);
    let joined = Arc::new(Mutex::new(Vec::new()));
    let writability = Arc::new(Mutex::new(Vec::new()));
    let (g, j, w) = (group.clone(), joined.clone(), writability.clone());
    let server = start(
        Server::builder()
            .io_threads(2)
            .outbound_queue_capacity(QUEUE_CAP)
            .write_watermarks(8 * 1024, 16 * 1024)
            .send_buffer_size(16 * 1024)
            // The slow member never reads what is left at shutdown: do not wait long.
            .close_timeout(Duration::from_millis(300)),
        move || {
            Pipeline::builder(LengthFieldCodec::new(4096))
                .handler(Member {
                    group: g.clone(),
                    joined: j.clone(),
                    writability: w.clone(),
                })
                .build()
        },
    )
    .await;

    // The slow member first, with a small receive buffer so it fills quickly.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let _slow_client = socket.connect(server.addr).await.unwrap();
    eventually(
        "slow member joined",
        || group.len() == 1,
        tokio::task::yield_now,
    )
    .await;
    let slow = joined.lock().unwrap()[0].clone();
    let mut fast = Vec::new();
    for n in 0..3 {
        fast.push(TcpStream::connect(server.addr).await.unwrap());
        eventually(
            "fast member joined",
            || group.len() == n + 2,
            tokio::task::yield_now,
        )
        .await;
    }

    let frame_len = 4 + MESSAGE;
    let mut fast_received = vec![0; fast.len()];
    let mut buffer = vec![0u8; frame_len * PER_ROUND];
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let message = Bytes::from(vec![(round * PER_ROUND + i) as u8; MESSAGE]);
            group.broadcast(message);
        }
        for (client, received) in fast.iter_mut().zip(&mut fast_received) {
            client
                .read_exact(&mut buffer)
                .await
                .expect("a fast member missed messages");
            for i in 0..PER_ROUND {
                let frame = &buffer[i * frame_len..(i + 1) * frame_len];
                assert_eq!(
                    u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
                    MESSAGE
                );
                assert!(frame[4..]
                    .iter()
                    .all(|b| *b == (round * PER_ROUND + i) as u8));
            }
            *received += PER_ROUND;
        }
        let queued = slow.stats().meter(MemoryKind::OutboundQueue).peak();
        assert!(
            queued <= QUEUE_CAP,
            "slow member queued {queued} bytes, over its cap"
        );
    }
    if policy == Overflow::CloseSlowConsumer {
        tokio::time::timeout(Duration::from_secs(10), slow.closed())
            .await
            .expect("slow consumer closed");
    }
    let writability = writability.lock().unwrap().clone();
    let group_len_after = group.len();
    server.stop().await;
    Outcome {
        slow,
        fast_received,
        writability,
        group_len_after,
    }
}

#[tokio::test]
async fn drop_newest_keeps_the_slow_member_bounded_and_the_others_whole() {
    let outcome = run(Overflow::DropNewest).await;
    assert_eq!(outcome.fast_received, vec![ROUNDS * PER_ROUND; 3]);
    let dropped = outcome.slow.stats().dropped_messages();
    assert!(dropped > 0, "nothing was dropped for the slow member");
    assert!(dropped < (ROUNDS * PER_ROUND) as u64);
    assert!(outcome.slow.stats().meter(MemoryKind::OutboundQueue).peak() <= QUEUE_CAP);
    assert_eq!(
        outcome.writability.first(),
        Some(&false),
        "handlers learn it became unwritable"
    );
}

#[tokio::test]
async fn drop_oldest_evicts_queued_messages_instead() {
    let outcome = run(Overflow::DropOldest).await;
    assert_eq!(outcome.fast_received, vec![ROUNDS * PER_ROUND; 3]);
    assert!(outcome.slow.stats().dropped_messages() > 0);
    assert!(outcome.slow.stats().meter(MemoryKind::OutboundQueue).peak() <= QUEUE_CAP);
}

#[tokio::test]
async fn close_policy_disconnects_the_slow_member_only() {
    let before = tethernet::global().slow_consumer_closes.get();
    let outcome = run(Overflow::CloseSlowConsumer).await;
    assert_eq!(outcome.fast_received, vec![ROUNDS * PER_ROUND; 3]);
    assert!(outcome.slow.is_closed());
    assert!(
        tethernet::global().slow_consumer_closes.get() > before,
        "slow-consumer close counted"
    );
    assert_eq!(
        outcome.group_len_after, 3,
        "the closed member left the group"
    );
    assert_eq!(outcome.slow.stats().total_bytes(), 0);
}
