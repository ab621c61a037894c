//! The connection task: one per connection, on its event loop.
//!
//! ```text
//!   readable ─▶ read buffer ─▶ codec.decode ─▶ stages.read ─┐   (one frame at a time, in order)
//!                                                           ▼
//!   socket ◀─ try_write ◀─ write buffer ◀─ codec.encode ◀─ ctx.write on this thread
//!                                      ◀─ codec.encode ◀─ outbound queue ◀─ Channel::write elsewhere
//! ```
//!
//! Bounds enforced here (G3): a frame is decoded only when the stages can take it (an
//! executor's full queue stops decoding, and so reading); the socket is read only while
//! the write buffer is under its high watermark (a peer that does not read stops being
//! read from); the outbound queue is capped in bytes. Memory while idle: the read buffer is
//! released whenever it holds no partial frame, and the write buffer whenever it is empty.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::buffers;
use crate::channel::{Channel, ChannelId, ChannelShared};
use crate::error::{Error, Result};
use crate::frame::{DecodeScope, ReadAllocation};
use crate::pipeline::context::{DirectSink, Io};
use crate::pipeline::{ChannelEvent, Event, IdleState, Pipeline, PipelineCodec, Stage};
use crate::queue::{byte_queue, ByteReceiver};
use crate::size::MessageSize;
use crate::stats::{ChannelStats, MemoryKind};
use crate::tether::{Tether, DEFAULT_MAX_OWNED_TASKS};

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
        }
    }
}

/// Size of a write buffer taken when a connection first has something to write.
const WRITE_BUFFER_SIZE: usize = 8 * 1024;

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
        close_requested: AtomicBool::new(false),
        close_timeout: config.close_timeout,
        writable: AtomicBool::new(true),
        shutting_down: AtomicBool::new(false),
        close_waker: Mutex::new(None),
        closed: CancellationToken::new(),
        handles: std::sync::atomic::AtomicUsize::new(1),
        budget: config.max_connection_memory,
        task_bytes: std::sync::atomic::AtomicUsize::new(0),
    });
    (Channel { shared, outbound }, receiver)
}

/// The socket as the connection task uses it, shared by the read loop and the write
/// side. TCP implements it directly, at no cost; TLS wraps a rustls session
/// (`crate::tls`). Reads go through a separate [`AsyncRead`](tokio::io::AsyncRead) half.
pub(crate) trait Socket: Sync {
    /// Ready when a read may make progress (it may still find nothing).
    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>>;
    /// Writes without waiting; `WouldBlock` when the socket is full.
    fn try_write(&self, buffer: &[u8]) -> io::Result<usize>;
    /// Ready when the socket can take more bytes.
    fn poll_write_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>>;
    /// Whether the transport holds written bytes that are not on the socket yet (TLS
    /// records waiting for room).
    fn has_pending_writes(&self) -> bool {
        false
    }
    /// Pushes those bytes out without waiting; `Ok(false)` when the socket is full.
    fn try_flush(&self) -> io::Result<bool> {
        Ok(true)
    }
    /// Last words before the socket closes (a TLS close_notify), best effort.
    fn shutdown(&self) {}
}

impl Socket for TcpStream {
    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn try_write(&self, buffer: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buffer)
    }

    fn poll_write_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }
}

/// Runs one connection to its end.
pub(crate) async fn run<C, S, W>(
    stream: TcpStream,
    pipeline: Pipeline<C, S, W>,
    channel: Channel<W>,
    outbound: ByteReceiver<W>,
    config: Arc<ConnectionConfig>,
) where
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    // Declared before the socket so that it runs last, after the socket is closed.
    let _closed = ClosedGuard::new(&channel.shared);
    let mut stream = stream;
    let _ = stream.set_nodelay(config.nodelay);
    // Reads go through the read half's `AsyncRead`, which clears readiness after a short
    // read (the socket is drained) and so saves a failing `recv` per batch; everything
    // else uses the stream directly.
    let (mut read_half, write_half) = stream.split();
    let socket: &TcpStream = write_half.as_ref();
    serve(socket, &mut read_half, pipeline, &channel, outbound, config).await;
}

/// Runs one TLS connection to its end (the handshake is done).
#[cfg(feature = "tls")]
pub(crate) async fn run_tls<C, S, W>(
    stream: crate::tls::ServerStream,
    pipeline: Pipeline<C, S, W>,
    channel: Channel<W>,
    outbound: ByteReceiver<W>,
    config: Arc<ConnectionConfig>,
) where
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    let _closed = ClosedGuard::new(&channel.shared);
    let socket = crate::tls::TlsSocket::new(stream);
    let mut read_half = socket.read_half();
    serve(
        &socket,
        &mut read_half,
        pipeline,
        &channel,
        outbound,
        config,
    )
    .await;
}

/// The connection's life on a socket: the read loop, then the close.
async fn serve<T, R, C, S, W>(
    socket: &T,
    read_half: &mut R,
    pipeline: Pipeline<C, S, W>,
    channel: &Channel<W>,
    outbound: ByteReceiver<W>,
    config: Arc<ConnectionConfig>,
) where
    T: Socket,
    R: tokio::io::AsyncRead + Unpin,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    let Pipeline {
        codec, mut stages, ..
    } = pipeline;
    let stats = channel.shared.stats.clone();
    let mut writer = Writer {
        stream: socket,
        codec,
        buffer: BytesMut::new(),
        accounted: 0,
        end: 0,
        outbound,
        stats: &stats,
        written: 0,
        wrote: false,
        high_watermark: config.write_high_watermark,
        low_watermark: config.write_low_watermark,
    };
    let mut reader = Reader {
        buffer: BytesMut::new(),
        scope: None,
        fingerprint: 0,
        decoder: 0,
        read_size: config.initial_read_size,
        end_of_stream: false,
        config: &config,
        stats: stats.clone(),
        tether: channel.shared.tether.clone(),
    };

    let outcome = crate::panics::guarded(
        channel.id(),
        drive(
            socket,
            read_half,
            &mut reader,
            &mut writer,
            &mut stages,
            channel,
            &config,
        ),
    )
    .await;
    // The closing steps run once per connection; boxing them keeps their state (handler
    // futures, the close timer) out of the connection task, which every idle connection
    // pays for.
    let closing = crate::panics::guarded(channel.id(), async {
        // The peer ended its stream: the work it asked for is finished before the close.
        let ended = reader.end_of_stream && outcome.is_ok();
        Box::pin(close(
            outcome,
            ended,
            &mut writer,
            &mut stages,
            channel,
            &config,
        ))
        .await;
        Ok(())
    })
    .await;
    if let Err(error) = closing {
        // The rest of the close still happens: buffers released, queue emptied, and the
        // closed guard cancels what the connection owns.
        tracing::error!(channel = %channel.id(), %error, "a handler panicked while the connection closed");
    }
    writer.outbound.close_and_discard();
    reader.release();
    writer.release();
}

/// Marks the connection closed when its task ends, however it ends (a panicking handler
/// unwinds through here too): every handle sees the close, and the waker registered for
/// close requests — which refers to this task — is let go, so a handle outliving the
/// connection does not keep the task's memory alive.
pub(crate) struct ClosedGuard<'a>(&'a Arc<ChannelShared>);

impl<'a> ClosedGuard<'a> {
    /// Counts and lists the connection as open until the guard is dropped.
    pub(crate) fn new(shared: &'a Arc<ChannelShared>) -> ClosedGuard<'a> {
        crate::stats::register(shared);
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
        self.0.close_requested.store(true, Ordering::Relaxed);
        self.0
            .close_waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        self.0.closed.cancel();
    }
}

/// Tells the pipeline the connection is going away and flushes what is left.
///
/// When the peer ended its stream (`end_of_stream`: it has said all it will, and may
/// still be reading), the work it asked for is finished first: business executors run
/// the messages already queued for it (capped in bytes, within the close timeout) and
/// their replies are written before handlers hear of the close, so a client that sends
/// its requests and half-closes gets every answer. Any other close (asked for, an error,
/// a shutdown) drops queued business work (G2).
async fn close<T, C, S, W>(
    outcome: Result<()>,
    end_of_stream: bool,
    writer: &mut Writer<'_, T, C, W>,
    stages: &mut S,
    channel: &Channel<W>,
    config: &ConnectionConfig,
) where
    T: Socket,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    let finish_first = end_of_stream
        && !channel.shared.close_requested()
        && !channel.shared.shutting_down.load(Ordering::Relaxed);
    if finish_first {
        // One close timeout for finishing the work and writing its answers.
        let deadline = Instant::now() + config.close_timeout;
        let drained = {
            let mut io = Io::direct(channel, writer);
            tokio::time::timeout_at(deadline, stages.drain(&mut io)).await
        };
        match drained {
            Ok(Ok(())) => {
                // The executors' replies are queued: write them before anything the
                // handlers say on `inactive`.
                let flush = poll_fn(|cx| writer.poll_flush_outbound(cx));
                if tokio::time::timeout_at(deadline, flush).await.is_err() {
                    tracing::debug!(channel = %channel.id(), "the peer did not take the answers to its last requests in time");
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(channel = %channel.id(), %error, "finishing the work queued before the peer's end of stream failed")
            }
            Err(_) => {
                tracing::debug!(channel = %channel.id(), "the work queued before the peer's end of stream did not finish within the close timeout; dropping the rest")
            }
        }
    }
    // From here on the connection is closing: executors stop taking its work, other
    // tasks' writes are refused, and no more frames are read.
    channel.close();
    let socket_healthy = !matches!(outcome, Err(Error::Io(_)));
    if let Err(error) = &outcome {
        match error {
            Error::Io(e) => {
                tracing::debug!(channel = %channel.id(), error = %e, "connection failed")
            }
            Error::Codec(_) | Error::FrameTimeout(_) => {
                tracing::debug!(channel = %channel.id(), %error, "closing the connection after bad input")
            }
            Error::Closed => {}
            _ => {
                tracing::warn!(channel = %channel.id(), %error, "closing the connection after an error")
            }
        }
        if !error.is_closed() {
            stages.error(&mut Io::direct(channel, writer), error).await;
        }
    }
    if channel.shared.shutting_down.load(Ordering::Relaxed) {
        let event = Event::new(ChannelEvent::ShutdownRequested);
        if let Err(error) = stages
            .user_event(&mut Io::direct(channel, writer), &event)
            .await
        {
            tracing::debug!(channel = %channel.id(), %error, "a handler failed on the shutdown event");
        }
    }
    if let Err(error) = stages.inactive(&mut Io::direct(channel, writer)).await {
        tracing::debug!(channel = %channel.id(), %error, "a handler failed while the connection closed");
    }
    // What the connection owns goes with it: tasks are cancelled and awaited, tethered
    // values dropped. A task that never yields cannot be cancelled; it is reported.
    let tether = &channel.shared.tether;
    tether.close();
    if tokio::time::timeout(config.close_timeout, tether.tasks_gone())
        .await
        .is_err()
    {
        tracing::warn!(channel = %channel.id(), "tasks owned by the connection did not stop within the close timeout (a task that never yields cannot be cancelled)");
    }
    if socket_healthy {
        // Flush what handlers and other tasks queued before the close, within the timeout.
        let flush = poll_fn(|cx| writer.poll_flush_outbound(cx));
        if tokio::time::timeout(config.close_timeout, flush)
            .await
            .is_err()
        {
            tracing::debug!(channel = %channel.id(), "the peer did not take the last writes in time");
        }
        writer.stream.shutdown();
    }
}

/// The read loop. Returns when the connection should close: `Ok` for a close asked for or
/// the peer's end of stream, `Err` for a failure.
async fn drive<T, R, C, S, W>(
    stream: &T,
    read_half: &mut R,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_, T, C, W>,
    stages: &mut S,
    channel: &Channel<W>,
    config: &ConnectionConfig,
) -> Result<()>
where
    T: Socket,
    R: tokio::io::AsyncRead + Unpin,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    let stats = writer.stats;
    // One timer per connection, only when idle detection is on.
    let mut idle = config.idle.map(IdleTimer::new);
    // A deadline for the partial frame held, only when a frame timeout is set.
    let mut frame_timer = config.frame_timeout.map(FrameTimer::new);
    // The waker registered for close requests; re-registered only if it changes.
    let mut close_waker: Option<std::task::Waker> = None;
    Box::pin(stages.active(&mut Io::direct(channel, writer))).await?;
    loop {
        // Hand every complete frame to the pipeline, one at a time. A stage that cannot
        // take a frame (an executor's queue is full) holds this loop, so nothing more is
        // read until it can.
        let mut frames = 0;
        while !channel.shared.close_requested() {
            match reader.decode(&mut writer.codec) {
                Ok(Some(frame)) => {
                    frames += 1;
                    if let Err(error) = stages.read(&mut Io::direct(channel, writer), frame).await {
                        stats.count_read(frames);
                        return Err(error);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    stats.count_read(frames);
                    return Err(Error::Codec(Box::new(error)));
                }
            }
        }
        stats.count_read(frames);
        if channel.shared.close_requested() {
            return Ok(());
        }
        reader.settle();
        if let Some(timer) = frame_timer.as_mut() {
            timer.update(reader.decoder > 0, frames > 0);
        }
        writer.write_until(0)?;
        writer.settle();
        if let Some(idle) = idle.as_mut() {
            if std::mem::take(&mut writer.wrote) {
                idle.wrote(Instant::now());
            }
        }
        if let Some(writable) = writability_change(channel, writer) {
            let event = Event::new(ChannelEvent::WritabilityChanged { writable });
            Box::pin(stages.user_event(&mut Io::direct(channel, writer), &event)).await?;
        }

        // Wait for the next thing to do. Polling readiness directly (rather than
        // `select!` over `readable()`, `writable()` and `recv()` futures) keeps no waiter
        // state in the task: this await point is where idle connections spend their life,
        // so its size is what each of them costs.
        let under_watermark = !writer.is_over_high_watermark();
        let has_pending_writes = !writer.buffer.is_empty() || stream.has_pending_writes();
        if let Some(timer) = frame_timer.as_mut() {
            // Time spent not reading (the peer is not reading our writes) is not the
            // peer's delay: the partial frame's clock starts again.
            timer.pause(!under_watermark);
        }
        let wake = poll_fn(|cx| {
            if channel.shared.poll_close(cx, &mut close_waker) {
                return Poll::Ready(Wake::Closing);
            }
            if let Some(timer) = frame_timer.as_mut() {
                if timer.poll_expired(cx) {
                    return Poll::Ready(Wake::FrameTimeout);
                }
            }
            if let Some(idle) = idle.as_mut() {
                if idle.sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::IdleCheck);
                }
            }
            // Readiness first, so that a buffer is taken only when there is data to read.
            if under_watermark {
                if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                    if let Err(error) = ready {
                        return Poll::Ready(Wake::Read(Err(error)));
                    }
                    if let Poll::Ready(read) = reader.poll_read(read_half, cx) {
                        return Poll::Ready(Wake::Read(read));
                    }
                }
            }
            if has_pending_writes {
                if let Poll::Ready(ready) = stream.poll_write_ready(cx) {
                    return Poll::Ready(Wake::Writable(ready));
                }
            }
            if under_watermark {
                if let Poll::Ready(Some(message)) = writer.outbound.poll_recv(cx) {
                    return Poll::Ready(Wake::Outbound(message));
                }
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Closing => return Ok(()),
            Wake::FrameTimeout => {
                crate::stats::global().frame_timeouts.add(1);
                let timeout = config.frame_timeout.unwrap_or_default();
                return Err(Error::FrameTimeout(timeout));
            }
            Wake::IdleCheck => {
                if let Some(timer) = idle.as_mut() {
                    for state in timer.due(Instant::now()).into_iter().flatten() {
                        let event = Event::new(ChannelEvent::Idle(state));
                        Box::pin(stages.user_event(&mut Io::direct(channel, writer), &event))
                            .await?;
                    }
                }
            }
            Wake::Read(read) => {
                if let (Some(idle), Ok(1..)) = (idle.as_mut(), &read) {
                    idle.read(Instant::now());
                }
                match read {
                    Ok(0) => {
                        // End of stream: frames still buffered are handed on, then close.
                        loop {
                            match reader.decode_eof(&mut writer.codec) {
                                Ok(Some(frame)) => {
                                    stats.count_read(1);
                                    stages.read(&mut Io::direct(channel, writer), frame).await?;
                                }
                                Ok(None) => {
                                    reader.end_of_stream = true;
                                    return Ok(());
                                }
                                Err(error) => return Err(Error::Codec(Box::new(error))),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            Wake::Writable(ready) => ready?,
            Wake::Outbound(message) => {
                writer.encode(message)?;
                while !writer.is_over_high_watermark() {
                    let Some(message) = writer.outbound.try_recv() else {
                        break;
                    };
                    writer.encode(message)?;
                }
            }
        }
    }
}

/// What woke the connection task.
enum Wake<W> {
    Closing,
    /// A partial frame was held past the frame timeout.
    FrameTimeout,
    /// The idle timer fired: some idle state may be due.
    IdleCheck,
    /// Bytes read into the read buffer (0 at the end of the stream).
    Read(io::Result<usize>),
    Writable(io::Result<()>),
    Outbound(W),
}

/// Tells whether the connection's writability changes now: it holds more than the high
/// watermark of outbound bytes (queued by other tasks plus buffered), or is back under the
/// low watermark.
fn writability_change<T, C, W>(channel: &Channel<W>, writer: &Writer<'_, T, C, W>) -> Option<bool> {
    let pending = writer.buffer.len() + channel.stats().meter(MemoryKind::OutboundQueue).current();
    let writable = channel.shared.writable.load(Ordering::Relaxed);
    if writable && pending > writer.high_watermark {
        channel.shared.writable.store(false, Ordering::Relaxed);
        Some(false)
    } else if !writable && pending <= writer.low_watermark {
        channel.shared.writable.store(true, Ordering::Relaxed);
        Some(true)
    } else {
        None
    }
}

/// The frame timeout of one connection: armed while a partial frame is held, re-armed
/// whenever a frame completes. Its sleep is made the first time a partial frame is held
/// and kept, so connections that never hold one pay nothing but the `Option`.
struct FrameTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl FrameTimer {
    fn new(timeout: Duration) -> FrameTimer {
        FrameTimer {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// After a decoding pass: `partial` when bytes of an unfinished frame are held,
    /// `progressed` when frames completed in the pass.
    fn update(&mut self, partial: bool, progressed: bool) {
        if !partial {
            self.armed = false;
            return;
        }
        if self.armed && !progressed {
            return;
        }
        let deadline = Instant::now() + self.timeout;
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.armed = true;
    }

    /// While `paused` (the socket is not being read), the clock does not run out; it
    /// restarts on the next pass.
    fn pause(&mut self, paused: bool) {
        if paused {
            self.armed = false;
        }
    }

    fn poll_expired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        self.armed
            && self
                .sleep
                .as_mut()
                .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

/// Idle detection timeouts (Netty's `IdleStateHandler`), as a connection setting: one
/// timer per connection, whatever is configured. `None` turns a state off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// Fire [`IdleState::ReaderIdle`] after this long without reading anything.
    pub reader: Option<Duration>,
    /// Fire [`IdleState::WriterIdle`] after this long without writing anything.
    pub writer: Option<Duration>,
    /// Fire [`IdleState::AllIdle`] after this long without reading or writing.
    pub all: Option<Duration>,
}

/// The idle timer of one connection: when each side last saw activity (or last fired),
/// and one sleep re-armed to the earliest deadline. Activity only moves the marks; a
/// timer that wakes early finds nothing due and re-arms, so there is at most one
/// spurious wake-up per period.
struct IdleTimer {
    timeouts: IdleTimeouts,
    reader_mark: Instant,
    writer_mark: Instant,
    all_mark: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    fn new(timeouts: IdleTimeouts) -> IdleTimer {
        let now = Instant::now();
        let mut timer = IdleTimer {
            timeouts,
            reader_mark: now,
            writer_mark: now,
            all_mark: now,
            sleep: Box::pin(tokio::time::sleep_until(now)),
        };
        let next = timer.next_deadline();
        timer.sleep.as_mut().reset(next);
        timer
    }

    fn read(&mut self, now: Instant) {
        self.reader_mark = now;
        self.all_mark = now;
    }

    fn wrote(&mut self, now: Instant) {
        self.writer_mark = now;
        self.all_mark = now;
    }

    fn deadlines(&self) -> [(IdleState, Option<Instant>); 3] {
        [
            (
                IdleState::ReaderIdle,
                self.timeouts.reader.map(|t| self.reader_mark + t),
            ),
            (
                IdleState::WriterIdle,
                self.timeouts.writer.map(|t| self.writer_mark + t),
            ),
            (
                IdleState::AllIdle,
                self.timeouts.all.map(|t| self.all_mark + t),
            ),
        ]
    }

    fn next_deadline(&self) -> Instant {
        self.deadlines()
            .iter()
            .filter_map(|(_, deadline)| *deadline)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 3600))
    }

    /// The states due at `now`, in order; each fired state starts a new period.
    fn due(&mut self, now: Instant) -> [Option<IdleState>; 3] {
        let mut fired = [None; 3];
        for (slot, (state, deadline)) in self.deadlines().into_iter().enumerate() {
            if deadline.is_some_and(|deadline| deadline <= now) {
                fired[slot] = Some(state);
                match state {
                    IdleState::ReaderIdle => self.reader_mark = now,
                    IdleState::WriterIdle => self.writer_mark = now,
                    IdleState::AllIdle => self.all_mark = now,
                }
            }
        }
        let next = self.next_deadline();
        self.sleep.as_mut().reset(next);
        fired
    }
}

/// The read side: the read buffer, its sizing and its accounting.
///
/// Each allocation the buffer reads into is charged to the connection at full capacity
/// ([`ReadAllocation`]), shared with the frames cut from it, so that the charge lasts as
/// long as any of them keeps the allocation alive. An allocation is recognised by where
/// it ends (`ptr + capacity` of the buffer is unchanged by splitting frames off its
/// front, and changes when the buffer moves to a new allocation).
struct Reader<'a> {
    buffer: BytesMut,
    /// The current allocation's charge and the connection's tether, made current around
    /// each `decode` call so that frames are charged and tracked.
    scope: Option<DecodeScope>,
    /// The end address of the allocation `scope` charges (0: none).
    fingerprint: usize,
    /// Bytes of a partial frame, moved from the read-buffer figure to the decoder's.
    decoder: usize,
    read_size: usize,
    /// Set when the peer ended its stream (and every frame before it was handed on).
    end_of_stream: bool,
    config: &'a ConnectionConfig,
    stats: Arc<ChannelStats>,
    tether: Arc<Tether>,
}

impl Reader<'_> {
    fn poll_read<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        source: &mut R,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() == 0 {
            self.buffer = buffers::take(self.read_size);
        }
        let spare = self.buffer.capacity() - self.buffer.len();
        if spare < self.read_size / 2 {
            self.buffer.reserve(self.read_size);
        }
        let spare = self.buffer.capacity() - self.buffer.len();
        let result = tokio_util::io::poll_read_buf(Pin::new(source), cx, &mut self.buffer);
        match &result {
            Poll::Ready(Ok(n)) => {
                // Adapt the read size as Netty's adaptive allocator does: grow while
                // reads fill the buffer, shrink when they use little of it.
                if *n == spare && self.read_size < self.config.max_read_size {
                    self.read_size = (self.read_size * 2).min(self.config.max_read_size);
                } else if *n < self.read_size / 8 && self.read_size > self.config.initial_read_size
                {
                    self.read_size /= 2;
                }
            }
            // Readiness was stale: do not hold a buffer while waiting.
            Poll::Pending => self.settle(),
            Poll::Ready(Err(_)) => {}
        }
        self.account();
        result
    }

    /// Decodes the next frame with this connection's accounting scope current.
    fn decode<C: Decoder>(
        &mut self,
        codec: &mut C,
    ) -> std::result::Result<Option<C::Item>, C::Error> {
        let buffer = &mut self.buffer;
        crate::frame::decoding(&mut self.scope, || codec.decode(buffer))
    }

    /// Like [`Reader::decode`], at the end of the stream.
    fn decode_eof<C: Decoder>(
        &mut self,
        codec: &mut C,
    ) -> std::result::Result<Option<C::Item>, C::Error> {
        let buffer = &mut self.buffer;
        crate::frame::decoding(&mut self.scope, || codec.decode_eof(buffer))
    }

    /// After decoding: what is left is a partial frame (the decoder's figure); release
    /// the buffer if it holds nothing, so an idle connection holds no read buffer.
    fn settle(&mut self) {
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            self.let_go();
        }
        // After re-pinning: a codec's `reserve` may have moved the partial frame to a
        // new allocation, whose charge it is then taken from.
        self.account();
        self.set_decoder(self.buffer.len());
    }

    /// Gives the (empty) buffer back to the pool — unless frames still pin its
    /// allocation: reusing its tail would charge those bytes twice.
    fn let_go(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        let shared = self
            .scope
            .as_ref()
            .is_some_and(|scope| Arc::strong_count(&scope.allocation) > 1);
        if !shared {
            buffers::give(buffer);
        }
    }

    /// Charges a new allocation when the buffer has moved to one (the old charge stays
    /// with the frames that still pin the old allocation), and the growth of the current
    /// one when it grew in place (the same end, a lower start).
    fn account(&mut self) {
        let capacity = self.buffer.capacity();
        let fingerprint = if capacity == 0 {
            0
        } else {
            self.buffer.as_ptr() as usize + capacity
        };
        if fingerprint == self.fingerprint {
            if let Some(scope) = &self.scope {
                scope.allocation.grow_to(capacity);
            }
            return;
        }
        self.set_decoder(0);
        self.scope = (capacity > 0).then(|| DecodeScope {
            allocation: ReadAllocation::new(capacity, &self.stats),
            tether: self.tether.clone(),
        });
        self.fingerprint = fingerprint;
    }

    fn set_decoder(&mut self, bytes: usize) {
        if bytes != self.decoder {
            self.stats
                .meter(MemoryKind::Decoder)
                .update(self.decoder, bytes);
            self.stats
                .meter(MemoryKind::ReadBuffer)
                .update(bytes, self.decoder);
            self.decoder = bytes;
        }
    }

    fn release(&mut self) {
        if self.buffer.capacity() > 0 {
            self.buffer.clear();
            self.let_go();
        }
        self.account();
    }
}

/// Releases the read side's charges however the connection task ends — including when
/// it is cancelled (a dropped client `Connection`, a runtime shutting down).
impl Drop for Reader<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The write side: codec, write buffer and the outbound queue from other tasks.
struct Writer<'a, T, C, W> {
    stream: &'a T,
    codec: C,
    buffer: BytesMut,
    /// Capacity last reported to the meter.
    accounted: usize,
    /// Where the charged allocation ends (0: none).
    end: usize,
    outbound: ByteReceiver<W>,
    stats: &'a ChannelStats,
    /// Messages encoded since the counter was last published (once per wake-up, not
    /// per message: an atomic add per frame is measurable in the echo benchmark).
    written: u64,
    /// Set when bytes reach the socket; read (and cleared) by the idle timer.
    wrote: bool,
    high_watermark: usize,
    low_watermark: usize,
}

impl<T, C, W> Writer<'_, T, C, W>
where
    T: Socket,
    C: Encoder<W> + Send,
    <C as Encoder<W>>::Error: std::error::Error + Send + Sync + 'static,
    W: MessageSize + Send,
{
    /// Writes until at most `limit` bytes are buffered; `Ok(false)` if the socket is full.
    fn write_until(&mut self, limit: usize) -> Result<bool> {
        while self.buffer.len() > limit {
            match self.stream.try_write(&self.buffer) {
                Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.buffer.advance(n);
                    self.wrote = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error.into()),
            }
        }
        if limit == 0 && self.stream.has_pending_writes() && !self.stream.try_flush()? {
            return Ok(false);
        }
        Ok(true)
    }

    fn poll_write_until(&mut self, cx: &mut TaskContext<'_>, limit: usize) -> Poll<Result<()>> {
        loop {
            if self.write_until(limit)? {
                self.account();
                return Poll::Ready(Ok(()));
            }
            // What the buffer holds while the peer is not reading is counted now, not
            // once it drains.
            self.account();
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }

    /// Encodes everything other tasks queued, then writes it all out.
    fn poll_flush_outbound(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        loop {
            while !self.is_over_high_watermark() {
                let Some(message) = self.outbound.try_recv() else {
                    break;
                };
                self.encode(message)?;
            }
            ready!(self.poll_write_until(cx, 0))?;
            if self.outbound.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Releases an empty write buffer, so an idle connection holds none.
    fn settle(&mut self) {
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            buffers::give(std::mem::take(&mut self.buffer));
        }
        self.account();
        self.stats.count_written(std::mem::take(&mut self.written));
    }

    /// Charges the write buffer's allocation. `BytesMut::capacity` counts from the
    /// first unwritten byte, so it shrinks as bytes are written out of the same
    /// allocation: the allocation is recognised by where it ends (as the reader does)
    /// and charged at the most capacity seen for it.
    fn account(&mut self) {
        let capacity = self.buffer.capacity();
        let end = if capacity == 0 {
            0
        } else {
            self.buffer.as_ptr() as usize + capacity
        };
        let allocated = if end != 0 && end == self.end {
            self.accounted.max(capacity)
        } else {
            capacity
        };
        self.end = end;
        if allocated != self.accounted {
            self.stats
                .meter(MemoryKind::WriteBuffer)
                .update(self.accounted, allocated);
            self.accounted = allocated;
        }
    }

    fn release(&mut self) {
        buffers::give(std::mem::take(&mut self.buffer));
        self.account();
        self.stats.count_written(std::mem::take(&mut self.written));
    }

    /// Grows the write buffer for `hint` more bytes: doubling while that stays within
    /// the high watermark plus one message, to exactly what is needed past it.
    fn make_room(&mut self, hint: usize) {
        let capacity = self.buffer.capacity();
        let needed = self.buffer.len() + hint;
        let bound = self.high_watermark.max(WRITE_BUFFER_SIZE) + hint;
        // What `reserve` may allocate: double the allocation (bytes already written out
        // of it included), or the allocation plus what is asked for.
        let allocation = self.accounted.max(capacity);
        if allocation.saturating_mul(2).max(allocation + hint) <= bound {
            self.buffer.reserve(hint);
            return;
        }
        let target = needed.max(capacity.saturating_mul(2).min(bound));
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(&self.buffer);
        buffers::give(std::mem::replace(&mut self.buffer, grown));
    }
}

/// Releases the write buffer's charge however the connection task ends (see `Reader`).
impl<T, C, W> Drop for Writer<'_, T, C, W> {
    fn drop(&mut self) {
        buffers::give(std::mem::take(&mut self.buffer));
        self.stats
            .meter(MemoryKind::WriteBuffer)
            .sub(std::mem::take(&mut self.accounted));
    }
}

impl<T, C, W> DirectSink<W> for Writer<'_, T, C, W>
where
    T: Socket,
    C: Encoder<W> + Send,
    <C as Encoder<W>>::Error: std::error::Error + Send + Sync + 'static,
    W: MessageSize + Send,
{
    fn encode(&mut self, message: W) -> Result<()> {
        if self.buffer.capacity() == 0 {
            self.buffer = buffers::take(WRITE_BUFFER_SIZE);
        }
        // Make room for the message here rather than in the codec, whose `reserve`
        // doubles the buffer: past the high watermark that would hold up to twice it.
        // The buffer stays within the high watermark plus one message (as measured by
        // `MessageSize`, which is at least the encoded size for the crate's codecs).
        let hint = message.message_size();
        if self.buffer.capacity() - self.buffer.len() < hint {
            self.make_room(hint);
        }
        self.codec
            .encode(message, &mut self.buffer)
            .map_err(|error| Error::Codec(Box::new(error)))?;
        self.written += 1;
        Ok(())
    }

    fn is_over_high_watermark(&self) -> bool {
        self.buffer.len() > self.high_watermark
    }

    fn poll_flush_to_low_watermark(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        let limit = self.low_watermark;
        self.poll_write_until(cx, limit)
    }

    fn poll_flush(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.poll_write_until(cx, 0)
    }

    fn poll_serve_outbound(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        loop {
            if !self.buffer.is_empty() && !self.write_until(0)? {
                // The socket is full: wait for it; take no more while over the watermark.
                if self.stream.poll_write_ready(cx)?.is_ready() {
                    continue;
                }
                if self.is_over_high_watermark() {
                    return Poll::Pending;
                }
            }
            self.account();
            match self.outbound.poll_recv(cx) {
                Poll::Ready(Some(message)) => self.encode(message)?,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
