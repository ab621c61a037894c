//! Accounting on the less travelled paths: a codec that moves the read buffer, a buffer
//! that grows in place, a client connection dropped mid-flight, UDP datagrams, and a
//! handler that blocks after an `await`. Each looks only at its own connection's
//! figures, so the tests can share a process.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{default_server, eventually, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::udp::{Datagram, DatagramCodec, UdpEndpoint};
use tethernet::{blocking, Channel, Client, Context, Frame, Handler, MemoryKind, Pipeline, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

struct Grab(Arc<Mutex<Vec<Channel<Frame>>>>);
impl Handler<Frame, Frame> for Grab {
    type Next = Frame;
    async fn active(&mut self, ctx: &mut Context<'_, Frame, Frame>) -> Result<()> {
        self.0.lock().unwrap().push(ctx.channel().clone());
        Ok(())
    }
    async fn read(&mut self, _ctx: &mut Context<'_, Frame, Frame>, _f: Frame) -> Result<()> {
        Ok(())
    }
}

fn of(c: &Channel<Frame>, kind: MemoryKind) -> usize {
    c.info().bytes.iter().find(|(k, _)| *k == kind).unwrap().1
}

/// A partial frame bigger than the read buffer's spare room: the codec's `reserve`
/// moves the buffer to a new allocation; the partial frame still counts as decoder bytes.
#[tokio::test]
async fn decoder_figure_after_codec_reserve() {
    let channels = Arc::new(Mutex::new(Vec::new()));
    let c2 = channels.clone();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1 << 20))
            .handler(Grab(c2.clone()))
            .build()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = (100_000u32).to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(7u8, 3000));
    s.write_all(&bytes).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = channels.lock().unwrap()[0].clone();
    println!("info: {:?}", c.info().bytes);
    assert_eq!(
        of(&c, MemoryKind::Decoder),
        3004,
        "partial frame bytes under decoder"
    );
    drop(s);
    server.stop().await;
}

/// Dropping a client `Connection` cancels its task mid-flight (a partial frame read, the
/// write buffer full): every meter still returns to zero.
#[tokio::test]
async fn a_dropped_client_connection_releases_every_charge() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // A partial frame for the client's decoder, then never read.
        let mut bytes = (1000u32).to_be_bytes().to_vec();
        bytes.extend([1u8; 300]);
        s.write_all(&bytes).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let client = Client::builder().io_threads(1).build().unwrap();
    let channels = Arc::new(Mutex::new(Vec::new()));
    let conn = client
        .connect(
            addr,
            Pipeline::builder(LengthFieldCodec::new(1 << 20))
                .handler(Grab(channels.clone()))
                .build(),
        )
        .await
        .unwrap();
    let channel = conn.channel().clone();
    // Fill the socket and the write buffer.
    let writer = channel.clone();
    let flood = tokio::spawn(async move {
        for _ in 0..2000 {
            if writer.write(Frame::from(&[9u8; 8192][..])).await.is_err() {
                return;
            }
        }
    });
    eventually(
        "write buffer and decoder charged",
        || of(&channel, MemoryKind::WriteBuffer) > 0 && of(&channel, MemoryKind::Decoder) > 0,
        || tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    println!("before drop: {:?}", channel.info().bytes);
    drop(conn);
    channel.closed().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after: Vec<(MemoryKind, usize)> = MemoryKind::ALL
        .iter()
        .map(|k| (*k, channel.stats().meter(*k).current()))
        .collect();
    println!("after drop: {after:?}");
    flood.abort();
    peer.abort();
    assert!(after.iter().all(|(_, n)| *n == 0), "after drop: {after:?}");
}

/// Keeps every datagram's frame.
struct Keep(Arc<Mutex<Vec<Frame>>>);
impl Handler<Datagram<Frame>, Datagram<Frame>> for Keep {
    type Next = Datagram<Frame>;
    async fn read(
        &mut self,
        _ctx: &mut Context<'_, Datagram<Frame>, Datagram<Frame>>,
        d: Datagram<Frame>,
    ) -> Result<()> {
        self.0.lock().unwrap().push(d.message);
        Ok(())
    }
}

/// Frames decoded from UDP datagrams pin the datagram buffer: charged and tracked as on
/// TCP.
#[tokio::test]
async fn udp_frames_are_charged_and_tracked() {
    tethernet::leak::set_level(tethernet::leak::LeakDetection::Paranoid);
    let kept = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(DatagramCodec::new(LengthFieldCodec::new(60_000)))
        .handler(Keep(kept.clone()))
        .build();
    let server = UdpEndpoint::builder()
        .max_datagram_size(60_000)
        .bind("127.0.0.1:0", pipeline)
        .await
        .unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut d = 4u32.to_be_bytes().to_vec();
    d.extend(b"tiny");
    sock.send_to(&d, server.local_addr()).await.unwrap();
    eventually(
        "frame kept",
        || !kept.lock().unwrap().is_empty(),
        || tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    let f = &kept.lock().unwrap()[0];
    let info = server.channel().info();
    println!(
        "retained={} tracked={} conn={:?}",
        f.retained_bytes(),
        f.is_tracked(),
        info.bytes
    );
    assert!(
        f.retained_bytes() >= 60_000,
        "a 4-byte UDP frame pins its datagram buffer"
    );
    assert!(f.is_tracked(), "paranoid level: every frame is tracked");
    let read_buffer = info
        .bytes
        .iter()
        .find(|(k, _)| *k == MemoryKind::ReadBuffer)
        .unwrap()
        .1;
    assert!(read_buffer >= 60_000, "{info:?}");
}

/// Awaits, then blocks its event loop.
struct AwaitThenBlock(Arc<Mutex<Vec<tethernet::ChannelId>>>);
impl Handler<Frame, Frame> for AwaitThenBlock {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, _f: Frame) -> Result<()> {
        self.0.lock().unwrap().push(ctx.channel().id());
        tokio::time::sleep(Duration::from_millis(1)).await;
        std::thread::sleep(Duration::from_millis(80));
        Ok(())
    }
}

/// Blocking after an `await` is still reported under the handler's name.
#[tokio::test]
async fn blocking_after_an_await_is_reported_by_name() {
    blocking::set_threshold(Duration::from_millis(10));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let i2 = ids.clone();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(AwaitThenBlock(i2.clone()))
            .build()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&common::frame(b"x")).await.unwrap();
    eventually(
        "id",
        || !ids.lock().unwrap().is_empty(),
        || tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    let id = ids.lock().unwrap()[0];
    let mut mine = Vec::new();
    eventually(
        "a report",
        || {
            mine = blocking::reports()
                .into_iter()
                .filter(|r| r.channel == id)
                .collect();
            !mine.is_empty()
        },
        || tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    println!("{mine:?}");
    assert!(
        mine[0].handler.ends_with("AwaitThenBlock"),
        "reported as {}",
        mine[0].handler
    );
    drop(s);
    server.stop().await;
}

/// A buffer that reclaims more of its allocation in place (same end, lower start) has
/// the growth charged: frames of several sizes with partial frames in between never
/// drive the read-buffer figure below zero.
#[tokio::test]
async fn a_buffer_grown_in_place_is_charged_for_its_growth() {
    let channels = Arc::new(Mutex::new(Vec::new()));
    let c2 = channels.clone();
    let server = start(default_server().io_threads(1), move || {
        Pipeline::builder(LengthFieldCodec::new(1 << 20))
            .handler(Grab(c2.clone()))
            .build()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let pause = || tokio::time::sleep(Duration::from_millis(150));
    // 1: A (2000) + B header (20000) + 996 bytes of B.
    let mut b = 2000u32.to_be_bytes().to_vec();
    b.extend([1u8; 2000]);
    b.extend(20000u32.to_be_bytes());
    b.extend([2u8; 996]);
    s.write_all(&b).await.unwrap();
    pause().await;
    let c = channels.lock().unwrap()[0].clone();
    println!("1: {:?}", c.info().bytes);
    // 2: 18000 more of B.
    s.write_all(&[2u8; 18000]).await.unwrap();
    pause().await;
    println!("2: {:?}", c.info().bytes);
    // 3: the rest of B (1004) + C header (43000) + 500 of C.
    let mut b = vec![2u8; 1004];
    b.extend(43000u32.to_be_bytes());
    b.extend([3u8; 500]);
    s.write_all(&b).await.unwrap();
    pause().await;
    println!("3: {:?}", c.info().bytes);
    // 4: 42400 more of C (still partial).
    s.write_all(&vec![3u8; 42400]).await.unwrap();
    pause().await;
    let d = c.info().bytes;
    println!("4: {d:?}");
    assert!(d.iter().all(|(_, n)| *n < 1 << 40), "{d:?}");
    assert_eq!(of(&c, MemoryKind::Decoder), 4 + 500 + 42_400);
    drop(s);
    server.stop().await;
}
