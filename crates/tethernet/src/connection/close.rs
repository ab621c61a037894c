//! The draining and closing phases of a connection.

use std::future::poll_fn;

use tokio::time::Instant;

use super::write::Writer;
use super::{ConnectionConfig, Socket};
use crate::channel::Channel;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::context::ConnectionIo;
use crate::pipeline::{ChannelEvent, Event, PipelineCodec, Stage};
use crate::size::MessageSize;

/// The draining phase, after the peer ended its stream (it has said all it will, and may
/// still be reading): business executors run the messages already queued for it (capped
/// in bytes), and their replies are written before handlers hear of the close, so a
/// client that sends its requests and half-closes gets every answer. One close timeout
/// covers both. (Any other close drops queued business work, G2.)
pub(super) async fn drain<T, C, S, W>(
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
    let deadline = Instant::now() + config.close_timeout;
    let drained = {
        let mut io = ConnectionIo::direct(channel, writer);
        tokio::time::timeout_at(deadline, stages.drain(&mut io)).await
    };
    match drained {
        Ok(Ok(())) => {
            // The executors' replies are queued: write them before anything the handlers
            // say on `inactive`.
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

/// The closing phase: executors stop taking the connection's work and other tasks'
/// writes are refused; handlers hear of the error that ended the connection (if any), of
/// a server shutdown, and `inactive`; the tasks the connection owns are cancelled and
/// awaited; what was queued before is flushed within the close timeout.
pub(super) async fn close<T, C, S, W>(
    outcome: Result<()>,
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
    channel.close();
    let socket_healthy = !outcome.as_ref().is_err_and(Error::is_io);
    if let Err(error) = &outcome {
        match error.kind() {
            ErrorKind::Io => {
                tracing::debug!(channel = %channel.id(), %error, "connection failed")
            }
            ErrorKind::Codec | ErrorKind::FrameTimeout => {
                tracing::debug!(channel = %channel.id(), %error, "closing the connection after bad input")
            }
            ErrorKind::Closed => {}
            _ => {
                tracing::warn!(channel = %channel.id(), %error, "closing the connection after an error")
            }
        }
        if !error.is_closed() {
            stages
                .error(&mut ConnectionIo::direct(channel, writer), error)
                .await;
        }
    }
    if channel.shared.shutting_down() {
        let event = Event::new(ChannelEvent::ShutdownRequested);
        if let Err(error) = stages
            .user_event(&mut ConnectionIo::direct(channel, writer), &event)
            .await
        {
            tracing::debug!(channel = %channel.id(), %error, "a handler failed on the shutdown event");
        }
    }
    if let Err(error) = stages
        .inactive(&mut ConnectionIo::direct(channel, writer))
        .await
    {
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
