//! The [`Handler`] trait: what application code implements.

use std::any::Any;
use std::fmt;
use std::future::{ready, Future};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::pipeline::Context;
use crate::size::MessageSize;

/// Events the framework fires through a connection's pipeline, delivered to every
/// handler's [`Handler::user_event`] as an [`Event`]; read them with
/// [`Event::channel_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// The connection went over its high watermark of outbound bytes (`false`), or came
    /// back under its low watermark (`true`). See [`Channel::is_writable`](crate::Channel::is_writable).
    WritabilityChanged {
        /// The new state.
        writable: bool,
    },
    /// Nothing was read, written, or either, for the configured time (Netty's
    /// `IdleStateEvent`). Fires again after each further period of the same idleness.
    Idle(IdleState),
    /// The server is shutting down: the connection closes after this event. Handlers may
    /// still write (a goodbye); it is flushed within the close timeout.
    ShutdownRequested,
}

/// Which side of a connection has been idle (see [`ChannelEvent::Idle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdleState {
    /// Nothing was read for the reader timeout.
    ReaderIdle,
    /// Nothing was written for the writer timeout.
    WriterIdle,
    /// Nothing was read or written for the all-idle timeout.
    AllIdle,
}

/// An event that is not a message: fired by a handler for the stages after it.
///
/// Cheap to clone; carries any `Send + Sync` value. Measured like a message
/// ([`MessageSize`]) when it is made, and charged that much wherever it waits (fired,
/// or queued for an executor), like a message.
#[derive(Clone)]
pub struct Event {
    value: Arc<dyn Any + Send + Sync>,
    size: usize,
}

/// The bookkeeping of the `Arc` an event's value lives in (two counters).
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();

impl Event {
    /// Wraps a value as an event.
    pub fn new<T: Any + Send + Sync + MessageSize>(value: T) -> Event {
        let size = std::mem::size_of::<Event>() + ARC_HEADER + value.message_size();
        Event {
            value: Arc::new(value),
            size,
        }
    }

    /// The bytes the event holds: its value's [`MessageSize`], its handle and its
    /// allocation's header. Counted in full for every holder, as shared messages are.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The value, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.value.downcast_ref()
    }

    /// The framework event this is, if it is one.
    pub fn channel_event(&self) -> Option<ChannelEvent> {
        self.downcast_ref::<ChannelEvent>().copied()
    }

    /// True if the value is a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.value.is::<T>()
    }
}

impl MessageSize for ChannelEvent {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

impl MessageSize for Event {
    fn message_size(&self) -> usize {
        self.size
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Event(..)")
    }
}

/// One stage of a connection's pipeline.
///
/// A pipeline is a codec followed by handlers. Each connection gets its own handler
/// values, so a handler keeps per-connection state in `self`. `In` is the message type
/// the handler receives (the codec's decoded frame, or the previous handler's `Next`);
/// `W` is the pipeline's outbound type (what its codec encodes). Types between stages are
/// checked when the pipeline is built.
///
/// A handler may answer ([`Context::write`]), pass a message on — unchanged or
/// transformed — to the next stage ([`Context::fire_read`]), or close the connection
/// ([`Context::close`]).
///
/// # Order
///
/// Events of one connection reach a handler one at a time, in arrival order: the next
/// `read` starts only after the previous one has returned, also when the handler runs on a
/// business [`Executor`](crate::Executor). Lifecycle events (`active`, `inactive`) and user
/// events reach every handler in pipeline order; a handler does not need to pass them on.
///
/// # Backpressure
///
/// While `read` runs, the connection reads no more frames for this handler. A handler on
/// an I/O thread must therefore not wait for slow things (a database, a lock held by slow
/// code, `std::thread::sleep`): place it on an [`Executor`](crate::Executor) with
/// [`PipelineBuilder::on`](crate::PipelineBuilder::on). There, its per-connection queue is
/// capped in bytes, and when it is full the connection stops reading the socket until the
/// handler catches up.
///
/// # Errors
///
/// Returning an error from any method closes the connection: the handlers of the segment
/// where it happened are told through [`Handler::error`] first.
///
/// # Example
///
/// ```
/// use tethernet::Frame;
/// use tethernet::{Context, Handler, Result};
///
/// /// Sends every frame back unchanged.
/// struct Echo;
///
/// impl Handler<Frame, Frame> for Echo {
///     type Next = Frame;
///
///     async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
///         ctx.write(frame).await
///     }
/// }
/// ```
pub trait Handler<In, W>: Send + 'static
where
    In: Send + 'static,
    W: Send + 'static,
{
    /// The message type this handler passes to the next stage.
    type Next: Send + 'static;

    /// A message arrived.
    fn read(
        &mut self,
        ctx: &mut Context<'_, Self::Next, W>,
        message: In,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The connection is open and the pipeline is ready; called before any `read`.
    fn active(
        &mut self,
        ctx: &mut Context<'_, Self::Next, W>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = ctx;
        ready(Ok(()))
    }

    /// The connection is closing; called once, after the last `read`. Writes made here are
    /// flushed if the peer is still there.
    fn inactive(
        &mut self,
        ctx: &mut Context<'_, Self::Next, W>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = ctx;
        ready(Ok(()))
    }

    /// An event fired by an earlier handler (see [`Context::fire_event`]). The default
    /// does nothing; the event reaches later handlers either way.
    fn user_event(
        &mut self,
        ctx: &mut Context<'_, Self::Next, W>,
        event: &Event,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, event);
        ready(Ok(()))
    }

    /// A handler or the codec failed; the connection closes after every handler of the
    /// segment has seen the error. A handler may still write (an error reply, say).
    fn error(
        &mut self,
        ctx: &mut Context<'_, Self::Next, W>,
        error: &Error,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, error);
        ready(Ok(()))
    }
}
