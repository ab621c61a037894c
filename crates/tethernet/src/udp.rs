//! UDP: the same pipeline model on a datagram socket.
//!
//! One pipeline per socket (not per peer: UDP has no connections). Each received datagram
//! is decoded on its own by the pipeline's codec, wrapped in a [`DatagramCodec`]: the
//! datagram is a complete unit, so a codec that needs more bytes than the datagram holds
//! reports it, and that datagram is dropped (counted) — a bad datagram from one peer never
//! closes the socket. Handlers receive [`Datagram`]s (message and peer) and write
//! `Datagram`s.
//!
//! Bounds are the same as for TCP: writes from other tasks go through the byte-capped
//! outbound queue ([`Channel::write`] waits, [`Channel::offer`] applies a policy), and
//! datagrams the kernel cannot take at once wait in a queue capped at the high watermark;
//! past it, new datagrams are dropped and counted (UDP promises no delivery; memory must
//! not pay for that).
//!
//! ```no_run
//! use tethernet::codec::LineCodec;
//! use tethernet::udp::{Datagram, DatagramCodec, UdpEndpoint};
//! use tethernet::{Context, Handler, Pipeline, Result};
//!
//! /// Answers every line with the same line in upper case.
//! struct Shout;
//!
//! impl Handler<Datagram<String>, Datagram<String>> for Shout {
//!     type Next = Datagram<String>;
//!     async fn read(
//!         &mut self,
//!         ctx: &mut Context<'_, Datagram<String>, Datagram<String>>,
//!         d: Datagram<String>,
//!     ) -> Result<()> {
//!         ctx.write(Datagram::new(d.peer, d.message.to_uppercase())).await
//!     }
//! }
//!
//! # async fn run() -> Result<()> {
//! let socket = UdpEndpoint::builder()
//!     .bind("127.0.0.1:7020", Pipeline::builder(DatagramCodec::new(LineCodec::new(512))).handler(Shout).build())
//!     .await?;
//! socket.closed().await;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder};

use crate::buffers;
use crate::channel::Channel;
use crate::connection::{channel_for, ClosedGuard, ConnectionConfig};
use crate::error::{Error, Result};
use crate::frame::{DecodeScope, ReadAllocation};
use crate::pipeline::context::{ConnectionIo, DirectSink};
use crate::pipeline::{Pipeline, PipelineCodec, Stage};
use crate::queue::ByteReceiver;
use crate::size::MessageSize;
use crate::stats::{ChannelStats, MemoryKind};

/// A message and the peer it came from or goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<T> {
    /// The remote address.
    pub peer: SocketAddr,
    /// The message.
    pub message: T,
}

impl<T> Datagram<T> {
    /// A message for (or from) `peer`.
    pub fn new(peer: SocketAddr, message: T) -> Self {
        Datagram { peer, message }
    }
}

impl<T: MessageSize> MessageSize for Datagram<T> {
    fn message_size(&self) -> usize {
        std::mem::size_of::<SocketAddr>() + self.message.message_size()
    }
}

/// Adapts a stream codec to datagrams: decodes each datagram on its own into
/// `Datagram<Item>`, and encodes `Datagram<W>` as one datagram to its peer.
#[derive(Debug, Clone)]
pub struct DatagramCodec<C> {
    inner: C,
    /// The codec as configured, to start afresh after a datagram it rejected (a stream
    /// codec keeps state, such as a pending frame length, that must not leak into the
    /// next datagram).
    fresh: C,
    /// The peer of the datagram being decoded.
    from: Option<SocketAddr>,
    /// The peer of the datagram just encoded.
    to: Option<SocketAddr>,
}

impl<C: Clone> DatagramCodec<C> {
    /// Wraps `inner`; its maximum frame length still applies within each datagram.
    pub fn new(inner: C) -> Self {
        DatagramCodec {
            fresh: inner.clone(),
            inner,
            from: None,
            to: None,
        }
    }

    /// Forgets whatever the codec kept from the last datagram.
    fn reset(&mut self) {
        self.inner = self.fresh.clone();
    }
}

impl<C: Decoder> DatagramCodec<C> {
    /// Tags a frame the inner codec decoded with the peer it came from.
    fn tagged(
        &self,
        decoded: Result<Option<C::Item>, C::Error>,
    ) -> Result<Option<Datagram<C::Item>>, C::Error> {
        // The socket task sets the peer before decoding each datagram.
        let Some(peer) = self.from else {
            return Ok(None);
        };
        Ok(decoded?.map(|message| Datagram { peer, message }))
    }
}

impl<C: Decoder> Decoder for DatagramCodec<C> {
    type Item = Datagram<C::Item>;
    type Error = C::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, C::Error> {
        let decoded = self.inner.decode(src);
        self.tagged(decoded)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, C::Error> {
        let decoded = self.inner.decode_eof(src);
        self.tagged(decoded)
    }
}

impl<C: Encoder<W>, W> Encoder<Datagram<W>> for DatagramCodec<C> {
    type Error = C::Error;

    fn encode(&mut self, item: Datagram<W>, dst: &mut BytesMut) -> Result<(), C::Error> {
        self.to = Some(item.peer);
        self.inner.encode(item.message, dst)
    }
}

/// Configures and binds a UDP socket with a pipeline.
#[derive(Debug, Clone)]
pub struct UdpEndpointBuilder {
    config: ConnectionConfig,
    max_datagram_size: usize,
}

/// Binds UDP sockets that run a pipeline; see the module docs.
#[derive(Debug)]
pub struct UdpEndpoint;

impl UdpEndpoint {
    /// Starts configuring a UDP socket.
    pub fn builder() -> UdpEndpointBuilder {
        UdpEndpointBuilder {
            config: ConnectionConfig::default(),
            max_datagram_size: 2048,
        }
    }
}

impl UdpEndpointBuilder {
    /// Largest datagram accepted (default 2048 bytes, at most 65,507); a larger one is
    /// dropped and counted. Also the size of the receive buffer.
    pub fn max_datagram_size(mut self, bytes: usize) -> Self {
        self.max_datagram_size = bytes.clamp(1, 65_507);
        self
    }

    /// Caps the queue of datagrams written by other tasks (default 64 KiB).
    pub fn outbound_queue_capacity(mut self, bytes: usize) -> Self {
        self.config.outbound_queue_capacity = bytes.max(1);
        self
    }

    /// Caps the datagrams waiting for the kernel to take them (default 64 KiB); past
    /// it, new datagrams are dropped and counted.
    pub fn send_queue_capacity(mut self, bytes: usize) -> Self {
        self.config.write_high_watermark = bytes.max(1);
        self.config.write_low_watermark = bytes / 2;
        self
    }

    /// Binds `addr` and runs `pipeline` on the socket, in a task owned by the returned
    /// handle (on the current runtime).
    pub async fn bind<C, S, W>(
        self,
        addr: impl tokio::net::ToSocketAddrs,
        pipeline: Pipeline<DatagramCodec<C>, S, Datagram<W>>,
    ) -> Result<UdpHandle<W>>
    where
        DatagramCodec<C>: PipelineCodec<Datagram<W>>,
        S: Stage<<DatagramCodec<C> as Decoder>::Item, Datagram<W>>,
        W: MessageSize + Send + 'static,
        C: Clone + Send + 'static,
    {
        let socket = UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        let (channel, outbound) = channel_for(local, local, &self.config);
        let config = Arc::new(self.config);
        let task_channel = channel.clone();
        let max_datagram = self.max_datagram_size;
        let counted = crate::tasks::TaskGuard::new(crate::tasks::current_loop(), None);
        let task = tokio::spawn(async move {
            let _counted = counted;
            run(
                socket,
                pipeline,
                task_channel,
                outbound,
                config,
                max_datagram,
            )
            .await
        });
        Ok(UdpHandle {
            channel,
            local,
            task: Some(task),
        })
    }
}

/// A bound UDP socket running its pipeline; owns the socket's task.
pub struct UdpHandle<W> {
    channel: Channel<Datagram<W>>,
    local: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl<W> UdpHandle<W> {
    /// The socket's handle: write datagrams to any peer from any task.
    pub fn channel(&self) -> &Channel<Datagram<W>> {
        &self.channel
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Closes gracefully (flushing what is queued) and waits for the task to end.
    pub async fn close(mut self) {
        self.channel.close();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the socket has closed.
    pub async fn closed(&self) {
        self.channel.closed().await
    }
}

impl<W> Drop for UdpHandle<W> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The socket task.
async fn run<C, S, W>(
    socket: UdpSocket,
    pipeline: Pipeline<DatagramCodec<C>, S, Datagram<W>>,
    channel: Channel<Datagram<W>>,
    outbound: ByteReceiver<Datagram<W>>,
    config: Arc<ConnectionConfig>,
    max_datagram: usize,
) where
    DatagramCodec<C>: PipelineCodec<Datagram<W>>,
    S: Stage<<DatagramCodec<C> as Decoder>::Item, Datagram<W>>,
    W: MessageSize + Send + 'static,
    C: Clone + Send + 'static,
{
    let _closed = ClosedGuard::new(&channel.shared, &config);
    let Pipeline {
        codec, mut stages, ..
    } = pipeline;
    let stats = channel.shared.stats.clone();
    let mut sink = Sink {
        socket: &socket,
        codec,
        scratch: BytesMut::new(),
        waiting: VecDeque::new(),
        waiting_bytes: 0,
        high_watermark: config.write_high_watermark,
        low_watermark: config.write_low_watermark,
        outbound,
        stats: &stats,
    };
    let outcome = crate::panics::guarded(
        channel.id(),
        serve(&socket, &mut sink, &mut stages, &channel, max_datagram),
    )
    .await;
    channel.close();
    if let Err(error) = &outcome {
        tracing::warn!(socket = %channel.local_addr(), %error, "UDP socket failed");
        stages
            .error(&mut ConnectionIo::direct(&channel, &mut sink), error)
            .await;
    }
    if let Err(error) = stages
        .inactive(&mut ConnectionIo::direct(&channel, &mut sink))
        .await
    {
        tracing::debug!(%error, "a handler failed while the UDP socket closed");
    }
    let tether = &channel.shared.tether;
    tether.close();
    let _ = tokio::time::timeout(config.close_timeout, tether.tasks_gone()).await;
    let flush = poll_fn(|cx| sink.poll_drain(cx));
    let _ = tokio::time::timeout(config.close_timeout, flush).await;
    sink.outbound.close_and_discard();
    stats
        .meter(MemoryKind::WriteBuffer)
        .sub(std::mem::take(&mut sink.waiting_bytes));
}

/// What woke the socket task.
enum Wake<W> {
    Closing,
    Received(io::Result<(BytesMut, SocketAddr)>),
    Sendable(io::Result<()>),
    Outbound(W),
}

async fn serve<C, S, W>(
    socket: &UdpSocket,
    sink: &mut Sink<'_, DatagramCodec<C>, W>,
    stages: &mut S,
    channel: &Channel<Datagram<W>>,
    max_datagram: usize,
) -> Result<()>
where
    DatagramCodec<C>: PipelineCodec<Datagram<W>>,
    S: Stage<<DatagramCodec<C> as Decoder>::Item, Datagram<W>>,
    W: MessageSize + Send + 'static,
    C: Clone + Send + 'static,
{
    let stats = sink.stats;
    stages
        .active(&mut ConnectionIo::direct(channel, sink))
        .await?;
    let mut close_waker: Option<std::task::Waker> = None;
    loop {
        let under_watermark = !sink.is_over_high_watermark();
        let has_waiting = !sink.waiting.is_empty();
        let wake = poll_fn(|cx| {
            if channel.shared.poll_close(cx, &mut close_waker) {
                return Poll::Ready(Wake::Closing);
            }
            // Until readiness is really pending: a stale readiness ends in `WouldBlock`,
            // which clears it, and only polling again registers for the next datagram.
            if under_watermark {
                loop {
                    match socket.poll_recv_ready(cx) {
                        Poll::Pending => break,
                        Poll::Ready(Err(error)) => return Poll::Ready(Wake::Received(Err(error))),
                        Poll::Ready(Ok(())) => {
                            // One byte more than the largest datagram, to tell a truncated one.
                            let mut buffer = buffers::take(max_datagram + 1);
                            match socket.try_recv_buf_from(&mut buffer) {
                                Ok((_, peer)) => {
                                    return Poll::Ready(Wake::Received(Ok((buffer, peer))))
                                }
                                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                                    buffers::give(buffer)
                                }
                                Err(error) => return Poll::Ready(Wake::Received(Err(error))),
                            }
                        }
                    }
                }
            }
            if has_waiting {
                if let Poll::Ready(ready) = socket.poll_send_ready(cx) {
                    return Poll::Ready(Wake::Sendable(ready));
                }
            }
            if under_watermark {
                if let Poll::Ready(Some(message)) = sink.outbound.poll_recv(cx) {
                    return Poll::Ready(Wake::Outbound(message));
                }
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Closing => return Ok(()),
            Wake::Received(Err(error)) => {
                // ICMP errors surface here (a peer's port was closed): not the socket's end.
                tracing::debug!(%error, "UDP receive error");
            }
            Wake::Received(Ok((mut datagram, peer))) => {
                if datagram.len() > max_datagram {
                    stats.count_dropped(1);
                    tracing::debug!(%peer, max_datagram, "dropped an oversized datagram");
                } else {
                    deliver(&mut datagram, peer, sink, stages, channel).await?;
                }
                buffers::give(datagram);
            }
            Wake::Sendable(ready) => {
                ready?;
                sink.send_waiting()?;
            }
            Wake::Outbound(message) => {
                sink.encode(message)?;
                while !sink.is_over_high_watermark() {
                    let Some(message) = sink.outbound.try_recv() else {
                        break;
                    };
                    sink.encode(message)?;
                }
            }
        }
    }
}

/// Decodes one datagram and hands its messages to the pipeline; a datagram the codec
/// rejects is dropped and counted.
async fn deliver<C, S, W>(
    datagram: &mut BytesMut,
    peer: SocketAddr,
    sink: &mut Sink<'_, DatagramCodec<C>, W>,
    stages: &mut S,
    channel: &Channel<Datagram<W>>,
) -> Result<()>
where
    DatagramCodec<C>: PipelineCodec<Datagram<W>>,
    S: Stage<<DatagramCodec<C> as Decoder>::Item, Datagram<W>>,
    W: MessageSize + Send + 'static,
    C: Clone + Send + 'static,
{
    sink.codec.from = Some(peer);
    // The datagram's buffer is charged to the socket's channel while frames cut from it
    // live, and frames are tracked for leaks, as on TCP connections.
    let mut scope = Some(DecodeScope {
        allocation: ReadAllocation::new(datagram.capacity(), &channel.shared.stats),
        tether: channel.shared.tether.clone(),
    });
    loop {
        let decoded = crate::frame::decoding(&mut scope, || match sink.codec.decode(datagram) {
            Ok(None) => sink.codec.decode_eof(datagram),
            other => other,
        });
        match decoded {
            Ok(Some(message)) => {
                sink.stats.count_read(1);
                stages
                    .read(&mut ConnectionIo::direct(channel, sink), message)
                    .await?;
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                sink.stats.count_dropped(1);
                tracing::debug!(%peer, %error, "dropped a datagram the codec rejected");
                // The codec may hold state from the bad datagram; it starts afresh.
                datagram.clear();
                sink.codec.reset();
                return Ok(());
            }
        }
    }
}

/// Releases the waiting datagrams' charge however the socket task ends (also when it
/// is cancelled).
impl<C, W> Drop for Sink<'_, C, W> {
    fn drop(&mut self) {
        self.stats
            .meter(MemoryKind::WriteBuffer)
            .sub(std::mem::take(&mut self.waiting_bytes));
    }
}

/// The socket's send side.
struct Sink<'a, C, W> {
    socket: &'a UdpSocket,
    codec: C,
    scratch: BytesMut,
    /// Encoded datagrams the kernel could not take yet, in order.
    waiting: VecDeque<(Bytes, SocketAddr)>,
    waiting_bytes: usize,
    high_watermark: usize,
    low_watermark: usize,
    outbound: ByteReceiver<Datagram<W>>,
    stats: &'a ChannelStats,
}

impl<C, W> Sink<'_, DatagramCodec<C>, W>
where
    DatagramCodec<C>: Encoder<Datagram<W>, Error: std::error::Error + Send + Sync + 'static>,
    C: Send,
    W: Send,
{
    /// Sends waiting datagrams until the kernel refuses one.
    fn send_waiting(&mut self) -> Result<bool> {
        while let Some((bytes, peer)) = self.waiting.front() {
            match self.socket.try_send_to(bytes, *peer) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                // A peer-specific failure (unreachable): drop that datagram, go on.
                Err(error) => tracing::debug!(%peer, %error, "UDP send failed"),
            }
            let (bytes, _) = self.waiting.pop_front().expect("front exists");
            self.waiting_bytes -= bytes.len();
            self.stats.meter(MemoryKind::WriteBuffer).sub(bytes.len());
        }
        Ok(true)
    }

    fn poll_send_until(&mut self, cx: &mut TaskContext<'_>, limit: usize) -> Poll<Result<()>> {
        loop {
            if self.waiting_bytes <= limit || self.send_waiting()? {
                return Poll::Ready(Ok(()));
            }
            std::task::ready!(self.socket.poll_send_ready(cx))?;
        }
    }

    /// Encodes what other tasks queued and sends everything.
    fn poll_drain(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        while let Some(message) = self.outbound.try_recv() {
            self.encode(message)?;
        }
        self.poll_send_until(cx, 0)
    }
}

impl<C, W> DirectSink<Datagram<W>> for Sink<'_, DatagramCodec<C>, W>
where
    DatagramCodec<C>: Encoder<Datagram<W>, Error: std::error::Error + Send + Sync + 'static>,
    C: Send,
    W: Send,
{
    fn encode(&mut self, message: Datagram<W>) -> Result<()> {
        self.scratch.clear();
        self.codec
            .encode(message, &mut self.scratch)
            .map_err(Error::codec)?;
        let peer = self.codec.to.take().expect("the codec recorded the peer");
        self.stats.count_written(1);
        if self.waiting.is_empty() {
            match self.socket.try_send_to(&self.scratch, peer) {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    tracing::debug!(%peer, %error, "UDP send failed");
                    return Ok(());
                }
            }
        }
        if self.waiting_bytes + self.scratch.len() > self.high_watermark {
            // UDP promises no delivery: past the cap, drop rather than grow.
            self.stats.count_dropped(1);
            return Ok(());
        }
        let bytes = self.scratch.split().freeze();
        self.waiting_bytes += bytes.len();
        self.stats.meter(MemoryKind::WriteBuffer).add(bytes.len());
        self.waiting.push_back((bytes, peer));
        Ok(())
    }

    fn is_over_high_watermark(&self) -> bool {
        self.waiting_bytes > self.high_watermark
    }

    fn poll_flush_to_low_watermark(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        let limit = self.low_watermark;
        self.poll_send_until(cx, limit)
    }

    fn poll_flush(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.poll_send_until(cx, 0)
    }

    fn poll_serve_outbound(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        loop {
            if !self.waiting.is_empty() && !self.send_waiting()? {
                if self.socket.poll_send_ready(cx)?.is_ready() {
                    continue;
                }
                if self.is_over_high_watermark() {
                    return Poll::Pending;
                }
            }
            match self.outbound.poll_recv(cx) {
                Poll::Ready(Some(message)) => self.encode(message)?,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
