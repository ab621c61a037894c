//! Ready-made handlers.

use crate::error::Result;
use crate::pipeline::{ChannelEvent, Context, Event, Handler, IdleState};
use crate::size::MessageSize;

/// Keeps a connection alive and drops dead peers, driven by idle events.
///
/// Pair it with [`ServerBuilder::idle_timeouts`](crate::ServerBuilder::idle_timeouts): on
/// `WriterIdle` (or `AllIdle`) it writes the message `ping` makes; on `ReaderIdle` — the
/// peer sent nothing, not even a pong, for the reader timeout — it closes the connection.
/// Messages pass through unchanged.
///
/// ```
/// use std::time::Duration;
/// use tethernet::codec::LineCodec;
/// use tethernet::handlers::Heartbeat;
/// use tethernet::{IdleTimeouts, Pipeline, Server};
///
/// let builder = Server::builder().idle_timeouts(IdleTimeouts {
///     writer: Some(Duration::from_secs(15)), // ping after 15 s of silence from us
///     reader: Some(Duration::from_secs(45)), // dead after 45 s of silence from the peer
///     ..Default::default()
/// });
/// let pipeline = || {
///     Pipeline::builder(LineCodec::new(1024))
///         .handler(Heartbeat::new(|| "PING".to_owned()))
///         .build()
/// };
/// # let _ = (builder, pipeline);
/// ```
pub struct Heartbeat<F> {
    ping: F,
}

impl<F> Heartbeat<F> {
    /// Sends what `ping` makes when the connection has written nothing for a while.
    pub fn new(ping: F) -> Self {
        Heartbeat { ping }
    }
}

impl<M, W, F> Handler<M, W> for Heartbeat<F>
where
    M: MessageSize + Send + 'static,
    W: MessageSize + Send + 'static,
    F: FnMut() -> W + Send + 'static,
{
    type Next = M;

    async fn read(&mut self, ctx: &mut Context<'_, M, W>, message: M) -> Result<()> {
        ctx.fire_read(message).await
    }

    async fn user_event(&mut self, ctx: &mut Context<'_, M, W>, event: &Event) -> Result<()> {
        match event.channel_event() {
            Some(ChannelEvent::Idle(IdleState::WriterIdle | IdleState::AllIdle)) => {
                let ping = (self.ping)();
                ctx.write(ping).await
            }
            Some(ChannelEvent::Idle(IdleState::ReaderIdle)) => {
                tracing::debug!(channel = %ctx.id(), peer = %ctx.peer_addr(), "closing a dead peer: nothing read within the reader idle timeout");
                ctx.close();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
