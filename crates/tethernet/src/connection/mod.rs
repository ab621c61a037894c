//! The connection task: one per connection, on its event loop.
//!
//! ```text
//!   readable ─▶ read buffer ─▶ codec.decode ─▶ stages.read ─┐   (one frame at a time, in order)
//!                                                           ▼
//!   socket ◀─ try_write ◀─ write buffer ◀─ codec.encode ◀─ ctx.write on this thread
//!                                      ◀─ codec.encode ◀─ outbound queue ◀─ Channel::write elsewhere
//! ```
//!
//! A connection lives through three [`Phase`]s, in order, each once: **active** (the read
//! loop, [`drive`]), **draining** (only when the peer ended its stream: the work it asked
//! for is finished and answered, [`close::drain`]) and **closing** (handlers are told,
//! owned tasks stopped, the last writes flushed, [`close::close`]). The modules:
//!
//! - `drive`: the active phase, the one place the task waits while a connection lives;
//! - `read`: the read buffer, its sizing and its accounting ([`read::Reader`]);
//! - `write`: the codec, the write buffer with its watermarks and the outbound queue from
//!   other tasks ([`write::Writer`], Netty's `ChannelOutboundBuffer`);
//! - `timers`: idle detection and the partial-frame timeout;
//! - `close`: the draining and closing phases;
//! - `socket`: what the task needs of a transport (TCP directly, TLS through `crate::tls`).
//!
//! Bounds enforced here (G3): a frame is decoded only when the stages can take it (an
//! executor's full queue stops decoding, and so reading); the socket is read only while
//! the write buffer is under its high watermark (a peer that does not read stops being
//! read from); the outbound queue is capped in bytes. Memory while idle: the read buffer is
//! released whenever it holds no partial frame, and the write buffer whenever it is empty.

mod close;
mod drive;
mod read;
mod socket;
mod timers;
mod write;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::channel::{Channel, ChannelId, ChannelShared};
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, PipelineCodec, Stage};
use crate::queue::{byte_queue, ByteReceiver};
use crate::size::MessageSize;
use crate::stats::{ChannelStats, MemoryKind};
use crate::tether::{Tether, DEFAULT_MAX_OWNED_TASKS};

pub(crate) use socket::Socket;
pub use timers::IdleTimeouts;

use read::Reader;
use write::Writer;

/// Per-connection limits and buffer sizes, shared by the connections of a server or client.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionConfig {
    /// Cap of the queue other tasks write through ([`Channel::write`]).
    pub(crate) outbound_queue_capacity: usize,
    /// Above this many buffered bytes, writers flush before going on and the socket is
    /// not read.
    pub(crate) write_high_watermark: usize,
    /// A flush forced by the high watermark stops here.
    pub(crate) write_low_watermark: usize,
    /// First read size; grows (doubling) while reads fill the buffer, up to the max.
    pub(crate) initial_read_size: usize,
    pub(crate) max_read_size: usize,
    /// How long a closing connection may spend flushing what is queued.
    pub(crate) close_timeout: Duration,
    pub(crate) nodelay: bool,
    /// Cap of live tasks a connection may own.
    pub(crate) max_owned_tasks: usize,
    /// Idle detection, if on.
    pub(crate) idle: Option<IdleTimeouts>,
    /// A partial frame must be completed within this long, if set (slowloris defence).
    pub(crate) frame_timeout: Option<Duration>,
    /// The memory budget of one connection, all kinds together.
    pub(crate) max_connection_memory: usize,
    /// The server the connections belong to, if any (clients and UDP endpoints: none).
    pub(crate) server: Option<Arc<ServerState>>,
}

/// What a server's connections share with it: its identity in the registry of live
/// connections ([`crate::stats`]) and whether it is shutting down.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) id: u64,
    /// Set once the server shuts down: a connection that registers afterwards is asked to
    /// close at once (see [`ClosedGuard::new`]).
    pub(crate) closing: AtomicBool,
}

impl ServerState {
    pub(crate) fn new() -> Arc<ServerState> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(ServerState {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            closing: AtomicBool::new(false),
        })
    }

    /// Asks every connection of this server to close, and those still to come.
    pub(crate) fn shut_down(&self) {
        // SeqCst here and in `ClosedGuard::new`: either the scan below sees a connection
        // registered concurrently, or that connection sees the flag.
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for shared in crate::stats::live_of_server(self.id) {
            shared.request_shutdown();
        }
    }
}

/// Default per-connection memory budget.
pub(crate) const DEFAULT_CONNECTION_MEMORY: usize = 4 << 20;

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            outbound_queue_capacity: 64 * 1024,
            write_high_watermark: 64 * 1024,
            write_low_watermark: 32 * 1024,
            initial_read_size: 4 * 1024,
            max_read_size: 64 * 1024,
            close_timeout: Duration::from_secs(5),
            nodelay: true,
            max_owned_tasks: DEFAULT_MAX_OWNED_TASKS,
            idle: None,
            frame_timeout: None,
            max_connection_memory: DEFAULT_CONNECTION_MEMORY,
            server: None,
        }
    }
}

/// Creates the handle and the outbound queue of a new connection.
pub(crate) fn new_channel<W>(
    stream: &TcpStream,
    config: &ConnectionConfig,
) -> io::Result<(Channel<W>, ByteReceiver<W>)> {
    Ok(channel_for(
        stream.peer_addr()?,
        stream.local_addr()?,
        config,
    ))
}

/// Creates the handle and the outbound queue of a new connection or socket.
pub(crate) fn channel_for<W>(
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    config: &ConnectionConfig,
) -> (Channel<W>, ByteReceiver<W>) {
    let stats = Arc::new(ChannelStats::default());
    let (outbound, receiver) = byte_queue(
        config.outbound_queue_capacity,
        stats.clone(),
        MemoryKind::OutboundQueue,
    );
    let id = ChannelId::next();
    let shared = Arc::new(ChannelShared {
        id,
        peer,
        local,
        opened: std::time::Instant::now(),
        tether: Tether::new(id, config.max_owned_tasks, stats.clone()),
        stats,
        close_request: AtomicU8::new(0),
        close_timeout: config.close_timeout,
        writable: AtomicBool::new(true),
        close_waker: Mutex::new(None),
        closed: Default::default(),
        handles: AtomicUsize::new(1),
        server: config.server.as_ref().map_or(0, |server| server.id),
        budget: config.max_connection_memory,
        task_bytes: AtomicUsize::new(0),
    });
    (Channel { shared, outbound }, receiver)
}

/// Runs one connection to its end.
#[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
pub(crate) fn run<C, S, W>(
    mut stream: TcpStream,
    mut pipeline: Pipeline<C, S, W>,
    channel: Channel<W>,
    outbound: ByteReceiver<W>,
    config: Arc<ConnectionConfig>,
) -> impl Future<Output = ()>
where
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    async move {
        // Declared before the socket so that it runs last, after the socket is closed.
        let _closed = ClosedGuard::new(&channel.shared, &config);
        let _ = stream.set_nodelay(config.nodelay);
        // Reads go through the read half's `AsyncRead`, which clears readiness after a short
        // read (the socket is drained) and so saves a failing `recv` per batch; everything
        // else uses the stream directly.
        let (mut read_half, write_half) = stream.split();
        let socket: &TcpStream = write_half.as_ref();
        serve(
            socket,
            &mut read_half,
            &mut pipeline.codec,
            &mut pipeline.stages,
            &channel,
            outbound,
            &config,
        )
        .await;
    }
}

/// Runs one TLS connection to its end (the handshake is done).
#[cfg(feature = "tls")]
pub(crate) async fn run_tls<C, S, W>(
    stream: crate::tls::ServerStream,
    mut pipeline: Pipeline<C, S, W>,
    channel: Channel<W>,
    outbound: ByteReceiver<W>,
    config: Arc<ConnectionConfig>,
) where
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    let _closed = ClosedGuard::new(&channel.shared, &config);
    let socket = crate::tls::TlsSocket::new(stream);
    let mut read_half = socket.read_half();
    serve(
        &socket,
        &mut read_half,
        &mut pipeline.codec,
        &mut pipeline.stages,
        &channel,
        outbound,
        &config,
    )
    .await;
}

pin_project_lite::pin_project! {
    /// Work of the connection task that lives in a box of its own (handler calls, the
    /// draining and closing phases), charged to the connection as task memory
    /// ([`MemoryKind::Tasks`]) while it waits: work that completes within one poll, as most
    /// handler calls do, is never charged, and idle connections carry none of it (G4).
    pub(super) struct Charged<'a, F> {
        #[pin]
        future: F,
        stats: &'a ChannelStats,
        charged: usize,
    }

    impl<'a, F> PinnedDrop for Charged<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.stats.meter(MemoryKind::Tasks).sub(*this.charged);
        }
    }
}

impl<F: Future> Future for Charged<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let poll = this.future.poll(cx);
        if poll.is_pending() && *this.charged == 0 {
            *this.charged = std::mem::size_of::<Self>();
            this.stats.meter(MemoryKind::Tasks).add(*this.charged);
        }
        poll
    }
}

/// `future` in a box, charged to the connection while it waits (see [`Charged`]).
pub(super) fn boxed<'a, F: Future>(stats: &'a ChannelStats, future: F) -> Pin<Box<Charged<'a, F>>> {
    Box::pin(Charged {
        future,
        stats,
        charged: 0,
    })
}

/// Where a connection is in its life. The task goes through the phases in this order,
/// each at most once.
enum Phase {
    /// Reading, handling and writing ([`drive::drive`]).
    Active,
    /// The peer ended its stream: the work it asked for is finished and answered before
    /// the close ([`close::drain`]).
    Draining,
    /// Handlers are told (of the error that ended the connection, if any), owned tasks
    /// are stopped and the last writes flushed ([`close::close`]).
    Closing(Result<()>),
}

/// Why the active phase ended.
enum End {
    /// A close was asked for (through a handle, a handler, or a server shutting down).
    Asked,
    /// The peer ended its stream, and every frame before it was handed on.
    PeerEnded,
    /// The connection failed: the socket, the codec, a handler or the frame timeout.
    Failed(Error),
}

/// The connection's life on a socket: its phases in order, then its buffers released.
///
/// The codec and the stages are borrowed from the caller's pipeline, not moved in: a value
/// moved from one future's state into another's keeps its room in both.
#[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
fn serve<'a, T, R, C, S, W>(
    socket: &'a T,
    read_half: &'a mut R,
    codec: &'a mut C,
    stages: &'a mut S,
    channel: &'a Channel<W>,
    outbound: ByteReceiver<W>,
    config: &'a ConnectionConfig,
) -> impl Future<Output = ()> + 'a
where
    T: Socket,
    R: tokio::io::AsyncRead + Unpin,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    async move {
        let stats = &channel.shared.stats;
        let mut writer = Writer::new(socket, codec, outbound, stats, config);
        let mut reader = Reader::new(config, stats.clone(), channel.shared.tether.clone());

        // Each phase's future is made inside the `guarded` call, never bound to a local
        // first: a future moved out of a local still takes room in the task's layout.
        let mut phase = Phase::Active;
        loop {
            phase = match phase {
                Phase::Active => {
                    let id = channel.id();
                    match crate::panics::guarded(
                        id,
                        drive::drive(
                            socket,
                            read_half,
                            &mut reader,
                            &mut writer,
                            stages,
                            channel,
                            config,
                        ),
                    )
                    .await
                    {
                        Ok(End::PeerEnded) if !channel.shared.close_requested() => Phase::Draining,
                        Ok(End::PeerEnded | End::Asked) => Phase::Closing(Ok(())),
                        Ok(End::Failed(error)) | Err(error) => Phase::Closing(Err(error)),
                    }
                }
                // The draining and closing steps run once per connection, in boxes: their
                // state (handler futures, the close timer) stays out of the connection task,
                // which every idle connection pays for.
                Phase::Draining => {
                    let drained = crate::panics::guarded(
                        channel.id(),
                        boxed(stats, async {
                            close::drain(&mut writer, stages, channel, config).await;
                            Ok(())
                        }),
                    )
                    .await;
                    Phase::Closing(drained)
                }
                Phase::Closing(outcome) => {
                    let closed = crate::panics::guarded(
                        channel.id(),
                        boxed(stats, async {
                            close::close(outcome, &mut writer, stages, channel, config).await;
                            Ok(())
                        }),
                    )
                    .await;
                    if let Err(error) = closed {
                        // The rest of the close still happens: buffers released, queue
                        // emptied, and the closed guard cancels what the connection owns.
                        tracing::error!(channel = %channel.id(), %error, "a handler panicked while the connection closed");
                    }
                    break;
                }
            };
        }
        writer.outbound.close_and_discard();
        reader.release();
        writer.release();
    }
}

/// Marks the connection closed when its task ends, however it ends (a panicking handler
/// unwinds through here too): every handle sees the close, and the waker registered for
/// close requests — which refers to this task — is let go, so a handle outliving the
/// connection does not keep the task's memory alive.
pub(crate) struct ClosedGuard<'a>(&'a Arc<ChannelShared>);

impl<'a> ClosedGuard<'a> {
    /// Counts and lists the connection as open until the guard is dropped. A connection
    /// of a server that is already shutting down is asked to close at once.
    pub(crate) fn new(
        shared: &'a Arc<ChannelShared>,
        config: &ConnectionConfig,
    ) -> ClosedGuard<'a> {
        crate::stats::register(shared);
        let closing = config
            .server
            .as_ref()
            .is_some_and(|server| server.closing.load(std::sync::atomic::Ordering::SeqCst));
        if closing {
            shared.request_shutdown();
        }
        ClosedGuard(shared)
    }
}

impl Drop for ClosedGuard<'_> {
    fn drop(&mut self) {
        // Normally done by the close path already; this covers a panic.
        self.0.tether.close();
        // The task ends now: figures read after `closed` show none of it.
        self.0.release_task();
        crate::stats::unregister(self.0);
        // Whatever of the connection is still alive now is watched for leaks.
        crate::leak::watch(self.0);
        self.0.mark_closing();
        self.0
            .close_waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        self.0.closed.set();
    }
}
