//! The active phase: the read loop, and the one place a live connection's task waits.

use std::future::{poll_fn, Future};
use std::io;
use std::task::Poll;

use std::mem::size_of;

use tokio::time::{Instant, Sleep};

use super::read::Reader;
use super::timers::{FrameTimer, IdleTimer};
use super::write::Writer;
use super::{boxed, ConnectionConfig, End, Socket};
use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::pipeline::context::{ConnectionIo, DirectSink};
use crate::pipeline::{ChannelEvent, Event, PipelineCodec, Stage};
use crate::size::MessageSize;

/// Runs the active phase: hands every complete frame to the pipeline, writes what it
/// answers and what other tasks queue, and waits for the socket, the outbound queue, a
/// close request or a timer. Returns why the phase ended.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async
/// fn` keeps its arguments twice in its state (as captured, and as locals), the block
/// uses the captured ones in place. The same holds for `serve` and `run`.
#[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
pub(super) fn drive<'a, 'r, 'w, T, R, C, S, W>(
    stream: &'a T,
    read_half: &'a mut R,
    reader: &'a mut Reader<'r>,
    writer: &'a mut Writer<'w, T, C, W>,
    stages: &'a mut S,
    channel: &'a Channel<W>,
    config: &'a ConnectionConfig,
) -> impl Future<Output = Result<End>> + use<'a, 'r, 'w, T, R, C, S, W>
where
    T: Socket,
    R: tokio::io::AsyncRead + Unpin,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    async move {
        // One timer per connection, only when idle detection is on (boxed: a connection
        // without it does not carry its room).
        let mut idle = config
            .idle
            .map(|timeouts| Box::new(IdleTimer::new(timeouts)));
        // A deadline for the partial frame held, only when a frame timeout is set (boxed,
        // as the idle timer is).
        let mut frame_timer = config
            .frame_timeout
            .map(|timeout| Box::new(FrameTimer::new(timeout)));
        // The timers' boxes are the connection's task memory, until it closes (its
        // closed guard takes the task charge back).
        let timers = idle
            .as_ref()
            .map_or(0, |_| size_of::<IdleTimer>() + size_of::<Sleep>())
            + frame_timer
                .as_ref()
                .map_or(0, |_| size_of::<FrameTimer>() + size_of::<Sleep>());
        channel.shared.add_task_bytes(timers);
        // The waker registered for close requests; re-registered only if it changes.
        let mut close_waker: Option<std::task::Waker> = None;
        boxed(
            channel.stats(),
            stages.active(&mut ConnectionIo::direct(channel, writer)),
        )
        .await?;
        // Frames read before a wake-up of this loop: none at first.
        let mut frames = 0;
        loop {
            reader.settle();
            if let Some(timer) = frame_timer.as_mut() {
                timer.update(
                    reader.holds_partial_frame(),
                    std::mem::take(&mut frames) > 0,
                );
            }
            writer.write_until(0)?;
            writer.settle();
            if let Some(idle) = idle.as_mut() {
                if writer.take_wrote() {
                    idle.wrote(Instant::now());
                }
            }
            if let Some(writable) = writer.writability_change(&channel.shared.writable) {
                let event = Event::new(ChannelEvent::WritabilityChanged { writable });
                boxed(
                    channel.stats(),
                    stages.user_event(&mut ConnectionIo::direct(channel, writer), &event),
                )
                .await?;
            }

            // Wait for the next thing to do. Polling readiness directly (rather than
            // `select!` over `readable()`, `writable()` and `recv()` futures) keeps no waiter
            // state in the task: this await point is where idle connections spend their life,
            // so its size is what each of them costs.
            let under_watermark = !writer.is_over_high_watermark();
            let has_pending_writes = writer.buffered() > 0 || stream.has_pending_writes();
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
                    if idle.poll_check(cx) {
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
                Wake::Closing => return Ok(End::Asked),
                Wake::FrameTimeout => {
                    crate::stats::global().frame_timeouts.add(1);
                    let timeout = config.frame_timeout.unwrap_or_default();
                    return Ok(End::Failed(Error::frame_timeout(timeout)));
                }
                Wake::IdleCheck => {
                    if let Some(timer) = idle.as_mut() {
                        for state in timer.due(Instant::now()).into_iter().flatten() {
                            let event = Event::new(ChannelEvent::Idle(state));
                            boxed(
                                channel.stats(),
                                stages
                                    .user_event(&mut ConnectionIo::direct(channel, writer), &event),
                            )
                            .await?;
                        }
                    }
                }
                Wake::Read(Ok(read)) => {
                    let end_of_stream = read == 0;
                    if let (Some(idle), false) = (idle.as_mut(), end_of_stream) {
                        idle.read(Instant::now());
                    }
                    // Handling frames takes the handlers' futures, laid out in a box made
                    // for this wake-up and freed after it: the connection task keeps only
                    // what waiting needs, which is what every idle connection costs.
                    let (handed, end) = boxed(
                        channel.stats(),
                        hand_on(end_of_stream, reader, writer, stages, channel),
                    )
                    .await;
                    if let Some(end) = end {
                        return Ok(end);
                    }
                    frames = handed;
                }
                Wake::Read(Err(error)) => return Ok(End::Failed(error.into())),
                Wake::Writable(ready) => ready?,
                Wake::Outbound(message) => {
                    writer.encode(message)?;
                    writer.encode_queued()?;
                }
            }
        }
    }
}

/// Hands every complete frame in the read buffer to the pipeline, one at a time (at the
/// end of the stream, the last ones the codec makes of what is left). A stage that cannot
/// take a frame (an executor's queue is full) holds this loop, so nothing more is read
/// until it can. Returns the frames handed on, and why the active phase ends, if it does.
async fn hand_on<T, C, S, W>(
    end_of_stream: bool,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_, T, C, W>,
    stages: &mut S,
    channel: &Channel<W>,
) -> (u64, Option<End>)
where
    T: Socket,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    let mut frames = 0;
    let end = loop {
        if channel.shared.close_requested() {
            break Some(End::Asked);
        }
        let decoded = if end_of_stream {
            reader.decode_eof(writer.codec)
        } else {
            reader.decode(writer.codec)
        };
        match decoded {
            Ok(Some(frame)) => {
                frames += 1;
                if let Err(error) = stages
                    .read(&mut ConnectionIo::direct(channel, writer), frame)
                    .await
                {
                    break Some(End::Failed(error));
                }
            }
            Ok(None) => break end_of_stream.then_some(End::PeerEnded),
            Err(error) => break Some(End::Failed(Error::codec(error))),
        }
    };
    channel.stats().count_read(frames);
    (frames, end)
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
