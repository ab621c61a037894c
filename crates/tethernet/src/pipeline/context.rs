//! [`Context`]: what a handler uses to write, pass messages on, and close.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::{Context as TaskContext, Poll};

use crate::channel::{Channel, ChannelId};
use crate::error::{Error, Result};
use crate::pipeline::Event;
use crate::size::MessageSize;
use crate::stats::ChannelStats;

/// The connection's socket side as seen from a handler on its I/O thread: encode straight
/// into the write buffer, flush when it passes the high watermark, and — while waiting on
/// anything else — keep writing what other tasks queued, so nothing deadlocks.
pub(crate) trait DirectSink<W>: Send {
    /// Encodes `message` into the write buffer.
    fn encode(&mut self, message: W) -> Result<()>;

    /// True when the write buffer holds more than its high watermark.
    fn is_over_high_watermark(&self) -> bool;

    /// Writes to the socket until the write buffer is at or below its low watermark.
    fn poll_flush_to_low_watermark(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>>;

    /// Writes everything buffered.
    fn poll_flush(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>>;

    /// Takes messages other tasks queued for this connection, encodes and writes them.
    /// Never completes with `Ok`: it is polled beside something the connection waits for.
    fn poll_serve_outbound(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>>;
}

/// Where a stage's writes go.
pub(crate) enum Sink<'a, W> {
    /// On the connection's I/O thread: straight into the write buffer.
    Direct(&'a mut dyn DirectSink<W>),
    /// Anywhere else (a business executor): through the bounded outbound queue.
    Queued,
}

/// What the framework hands down the chain of stages for one event.
pub struct Io<'a, W> {
    pub(crate) channel: &'a Channel<W>,
    pub(crate) sink: Sink<'a, W>,
}

impl<'a, W> Io<'a, W> {
    pub(crate) fn direct(channel: &'a Channel<W>, sink: &'a mut dyn DirectSink<W>) -> Self {
        Io {
            channel,
            sink: Sink::Direct(sink),
        }
    }

    pub(crate) fn queued(channel: &'a Channel<W>) -> Self {
        Io {
            channel,
            sink: Sink::Queued,
        }
    }

    pub(crate) fn reborrow(&mut self) -> Io<'_, W> {
        Io {
            channel: self.channel,
            sink: match &mut self.sink {
                Sink::Direct(sink) => Sink::Direct(&mut **sink),
                Sink::Queued => Sink::Queued,
            },
        }
    }

    /// Waits for `future`; on the I/O thread, keeps serving the outbound side meanwhile
    /// (a business executor blocked on a full outbound queue must be able to make progress
    /// while this connection waits for room in that executor's inbound queue). Gives up
    /// with [`Error::Closed`] once a close is asked for: a peer that stopped reading must
    /// not hold a closing connection.
    pub(crate) async fn wait_for<F: Future>(&mut self, future: F) -> Result<F::Output> {
        self.wait(future, true).await
    }

    /// Like [`Io::wait_for`], but also while closing: for the close path itself, which
    /// bounds the wait with the close timeout.
    pub(crate) async fn serve_outbound_while<F: Future>(&mut self, future: F) -> Result<F::Output> {
        self.wait(future, false).await
    }

    async fn wait<F: Future>(&mut self, future: F, give_up_on_close: bool) -> Result<F::Output> {
        let shared = &self.channel.shared;
        match &mut self.sink {
            Sink::Queued => Ok(future.await),
            Sink::Direct(sink) => {
                let mut future = pin!(future);
                let mut registered = None;
                poll_fn(|cx| {
                    if let Poll::Ready(output) = future.as_mut().poll(cx) {
                        return Poll::Ready(Ok(output));
                    }
                    if give_up_on_close && shared.poll_close(cx, &mut registered) {
                        return Poll::Ready(Err(Error::Closed));
                    }
                    match sink.poll_serve_outbound(cx) {
                        Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                        _ => Poll::Pending,
                    }
                })
                .await
            }
        }
    }
}

/// A message or event on its way to the next stage.
pub(crate) enum Forward<N> {
    Read(N),
    Event(Event),
}

/// What a [`Handler`](crate::Handler) is given with each event: the connection, a way to
/// write to it, and a way to pass messages to the next stage.
///
/// `N` is the message type of the next stage, `W` the pipeline's outbound type.
pub struct Context<'a, N, W> {
    io: Io<'a, W>,
    forward: &'a mut Vec<Forward<N>>,
}

impl<'a, N, W> Context<'a, N, W> {
    pub(crate) fn new(io: Io<'a, W>, forward: &'a mut Vec<Forward<N>>) -> Self {
        Context { io, forward }
    }

    /// The connection this event belongs to. Clone it to write from another task.
    pub fn channel(&self) -> &Channel<W> {
        self.io.channel
    }

    /// The connection's id.
    pub fn id(&self) -> ChannelId {
        self.io.channel.id()
    }

    /// The remote address.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.io.channel.peer_addr()
    }

    /// The connection's live memory figures.
    pub fn stats(&self) -> &ChannelStats {
        self.io.channel.stats()
    }

    /// Passes `message` to the next stage. Messages are delivered in the order fired,
    /// once the current handler method has returned.
    pub fn fire_read(&mut self, message: N) {
        self.forward.push(Forward::Read(message));
    }

    /// Fires a user event to the stages after this one, in order with fired messages.
    pub fn fire_event(&mut self, event: Event) {
        self.forward.push(Forward::Event(event));
    }

    /// Asks the connection to close once this event is handled: writes made before are
    /// flushed first (within the close timeout).
    pub fn close(&mut self) {
        self.io.channel.close();
    }

    /// Starts a task owned by this connection (see [`Channel::spawn`]): cancelled and
    /// awaited when the connection closes. Use it instead of `tokio::spawn`.
    #[track_caller]
    pub fn spawn<F>(&self, future: F) -> Result<crate::TetherKey>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.io.channel.spawn(future)
    }

    /// Holds `value` until the connection closes (see [`Channel::tether`]).
    #[track_caller]
    pub fn tether<T: Send + 'static>(&self, value: T) -> Result<crate::TetherKey> {
        self.io.channel.tether(value)
    }

    /// True once a close has been asked for.
    pub fn is_closing(&self) -> bool {
        self.io.channel.is_closing()
    }
}

impl<N, W: MessageSize> Context<'_, N, W> {
    /// Writes `message` to the connection.
    ///
    /// On the connection's I/O thread the message is encoded straight into the write
    /// buffer, which is flushed at the end of the current read batch; when the buffer
    /// passes its high watermark, this call writes to the socket until it is back under
    /// the low watermark (so a handler's replies can never outgrow the buffer). On a
    /// business executor the message goes through the connection's outbound queue and this
    /// call waits while the queue is full. Either way, messages one handler writes reach
    /// the socket in the order written.
    pub async fn write(&mut self, message: W) -> Result<()> {
        match &mut self.io.sink {
            Sink::Direct(sink) => {
                sink.encode(message)?;
                if sink.is_over_high_watermark() {
                    // Waits for the peer to read, but not past a close request: a peer
                    // that stopped reading must not hold a closing connection.
                    let shared = &self.io.channel.shared;
                    let mut registered = None;
                    poll_fn(|cx| {
                        if let Poll::Ready(flushed) = sink.poll_flush_to_low_watermark(cx) {
                            return Poll::Ready(flushed);
                        }
                        if shared.poll_close(cx, &mut registered) {
                            return Poll::Ready(Err(Error::Closed));
                        }
                        Poll::Pending
                    })
                    .await?;
                }
                Ok(())
            }
            Sink::Queued => self.io.channel.write(message).await,
        }
    }

    /// Writes everything buffered so far to the socket before returning (on the I/O
    /// thread). Elsewhere, writes are flushed by the I/O thread as soon as it takes them,
    /// so this returns at once.
    pub async fn flush(&mut self) -> Result<()> {
        match &mut self.io.sink {
            Sink::Direct(sink) => poll_fn(|cx| sink.poll_flush(cx)).await,
            Sink::Queued => {
                if self.io.channel.is_closed() {
                    Err(Error::Closed)
                } else {
                    Ok(())
                }
            }
        }
    }
}
