//! The active phase: the read loop, and the one place a live connection's task waits.

use std::future::poll_fn;
use std::io;
use std::task::Poll;

use tokio::time::Instant;

use super::read::Reader;
use super::timers::{FrameTimer, IdleTimer};
use super::write::Writer;
use super::{ConnectionConfig, End, Socket};
use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::pipeline::context::{DirectSink, Io};
use crate::pipeline::{ChannelEvent, Event, PipelineCodec, Stage};
use crate::size::MessageSize;

/// Runs the active phase: hands every complete frame to the pipeline, writes what it
/// answers and what other tasks queue, and waits for the socket, the outbound queue, a
/// close request or a timer. Returns why the phase ended.
pub(super) async fn drive<T, R, C, S, W>(
    stream: &T,
    read_half: &mut R,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_, T, C, W>,
    stages: &mut S,
    channel: &Channel<W>,
    config: &ConnectionConfig,
) -> Result<End>
where
    T: Socket,
    R: tokio::io::AsyncRead + Unpin,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    let stats = channel.stats();
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
                        return Ok(End::Failed(error));
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    stats.count_read(frames);
                    return Ok(End::Failed(Error::Codec(Box::new(error))));
                }
            }
        }
        stats.count_read(frames);
        if channel.shared.close_requested() {
            return Ok(End::Asked);
        }
        reader.settle();
        if let Some(timer) = frame_timer.as_mut() {
            timer.update(reader.holds_partial_frame(), frames > 0);
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
            Box::pin(stages.user_event(&mut Io::direct(channel, writer), &event)).await?;
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
                return Ok(End::Failed(Error::FrameTimeout(timeout)));
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
            Wake::Read(Ok(0)) => {
                // End of stream: frames still buffered are handed on, then the phase ends.
                loop {
                    match reader.decode_eof(&mut writer.codec) {
                        Ok(Some(frame)) => {
                            stats.count_read(1);
                            stages.read(&mut Io::direct(channel, writer), frame).await?;
                        }
                        Ok(None) => return Ok(End::PeerEnded),
                        Err(error) => return Ok(End::Failed(Error::Codec(Box::new(error)))),
                    }
                }
            }
            Wake::Read(Ok(_)) => {
                if let Some(idle) = idle.as_mut() {
                    idle.read(Instant::now());
                }
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
