//! UDP with the pipeline model: replies go to the right peer, other tasks can write,
//! bad and oversized datagrams are dropped (counted) without harming the socket.

use std::time::Duration;

use tethernet::codec::{LengthFieldCodec, LineCodec};
use tethernet::udp::{Datagram, DatagramCodec, UdpEndpoint};
use tethernet::Frame;
use tethernet::{Context, Handler, Pipeline, Result};
use tokio::net::UdpSocket;

/// Answers every line with the same line in upper case.
struct Shout;

impl Handler<Datagram<String>, Datagram<String>> for Shout {
    type Next = Datagram<String>;
    async fn read(
        &mut self,
        ctx: &mut Context<'_, Datagram<String>, Datagram<String>>,
        d: Datagram<String>,
    ) -> Result<()> {
        ctx.write(Datagram::new(d.peer, d.message.to_uppercase()))
            .await
    }
}

async fn receive(socket: &UdpSocket) -> Vec<u8> {
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buffer))
        .await
        .expect("a reply")
        .unwrap();
    buffer.truncate(n);
    buffer
}

async fn client(server: std::net::SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket
}

#[tokio::test]
async fn replies_go_back_to_each_peer_and_other_tasks_can_write() {
    let pipeline = Pipeline::builder(DatagramCodec::new(LineCodec::new(64)))
        .handler(Shout)
        .build();
    let server = UdpEndpoint::builder()
        .bind("127.0.0.1:0", pipeline)
        .await
        .unwrap();
    let (alice, bob) = (
        client(server.local_addr()).await,
        client(server.local_addr()).await,
    );

    alice.send(b"hello\n").await.unwrap();
    bob.send(b"hi there").await.unwrap(); // no newline: the datagram ends the line
    assert_eq!(receive(&alice).await, b"HELLO\n");
    assert_eq!(receive(&bob).await, b"HI THERE\n");

    // Two lines in one datagram: two replies.
    alice.send(b"one\ntwo\n").await.unwrap();
    assert_eq!(receive(&alice).await, b"ONE\n");
    assert_eq!(receive(&alice).await, b"TWO\n");

    // Another task writes through the socket's channel, to any peer.
    let channel = server.channel().clone();
    let to = bob.local_addr().unwrap();
    tokio::spawn(async move { channel.write(Datagram::new(to, "pushed".to_owned())).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receive(&bob).await, b"pushed\n");
    server.close().await;
}

/// Echoes length-prefixed frames.
struct EchoFrames;

impl Handler<Datagram<Frame>, Datagram<Frame>> for EchoFrames {
    type Next = Datagram<Frame>;
    async fn read(
        &mut self,
        ctx: &mut Context<'_, Datagram<Frame>, Datagram<Frame>>,
        d: Datagram<Frame>,
    ) -> Result<()> {
        ctx.write(d).await
    }
}

#[tokio::test]
async fn bad_and_oversized_datagrams_are_dropped_and_the_socket_keeps_serving() {
    let pipeline = Pipeline::builder(DatagramCodec::new(LengthFieldCodec::new(256)))
        .handler(EchoFrames)
        .build();
    let server = UdpEndpoint::builder()
        .max_datagram_size(512)
        .bind("127.0.0.1:0", pipeline)
        .await
        .unwrap();
    let peer = client(server.local_addr()).await;
    let frame = |payload: &[u8]| {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    };

    // A truncated frame: the header claims 100 bytes, 3 follow.
    peer.send(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    // A header over the codec's maximum.
    peer.send(&u32::MAX.to_be_bytes()).await.unwrap();
    // A datagram over max_datagram_size.
    peer.send(&vec![7u8; 1000]).await.unwrap();
    // And then a good one: served.
    peer.send(&frame(b"good")).await.unwrap();
    assert_eq!(receive(&peer).await, frame(b"good"));
    assert_eq!(server.channel().stats().dropped_messages(), 3);
    assert!(!server.channel().is_closing());
    server.close().await;
}
