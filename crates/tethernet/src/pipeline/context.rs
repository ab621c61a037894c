//! [`Context`]: what a handler uses to write, pass messages on, and close.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use crate::channel::{Channel, ChannelId};
use crate::error::{Error, Result};
use crate::pipeline::stage::Stage;
use crate::pipeline::Event;
use crate::size::MessageSize;
use crate::stats::{ChannelStats, MemoryKind};

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

/// The connection as a stage reaches it during one event: its [`Channel`], and where
/// writes go (straight into the write buffer on the connection's I/O thread, through the
/// bounded outbound queue anywhere else). Made by the framework and handed down the chain
/// of stages; application code sees it only through [`Context`].
pub struct ConnectionIo<'a, W> {
    pub(crate) channel: &'a Channel<W>,
    pub(crate) sink: Sink<'a, W>,
}

impl<'a, W> ConnectionIo<'a, W> {
    pub(crate) fn direct(channel: &'a Channel<W>, sink: &'a mut dyn DirectSink<W>) -> Self {
        ConnectionIo {
            channel,
            sink: Sink::Direct(sink),
        }
    }

    pub(crate) fn queued(channel: &'a Channel<W>) -> Self {
        ConnectionIo {
            channel,
            sink: Sink::Queued,
        }
    }

    pub(crate) fn reborrow(&mut self) -> ConnectionIo<'_, W> {
        ConnectionIo {
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
    /// with [`Error::closed`] once a close is asked for: a peer that stopped reading must
    /// not hold a closing connection.
    pub(crate) async fn wait_for<F: Future>(&mut self, future: F) -> Result<F::Output> {
        self.wait(future, true).await
    }

    /// Like [`ConnectionIo::wait_for`], but also while closing: for the close path itself, which
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
                        return Poll::Ready(Err(Error::closed()));
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

/// A message or event on its way to the next stage, with the heap bytes it is charged
/// ([`MemoryKind::Fired`]) while it waits, beyond its slot in the buffer.
pub(crate) enum Forward<N> {
    Read(N, usize),
    Event(Event),
}

impl<N> Forward<N> {
    fn heap(&self) -> usize {
        match self {
            Forward::Read(_, bytes) => *bytes,
            Forward::Event(event) => event.size().saturating_sub(std::mem::size_of::<Event>()),
        }
    }
}

/// Messages a handler fired that the next stage has not taken yet: charged to the
/// connection while they wait (the buffer's slots at its capacity, plus what each
/// message holds beyond its slot), and handed on early once they pass the next stage's
/// capacity (so firing in a loop waits for the next stage instead of buffering).
pub(crate) struct Fired<N> {
    items: VecDeque<Forward<N>>,
    /// Heap bytes charged for `items`, beyond their slots.
    heap: usize,
    /// Bytes charged for the buffer's slots (its capacity).
    slots: usize,
    /// Where the charges go, once something was fired: a pipeline dropped without its
    /// close path (a cancelled connection task) still takes its charges back.
    stats: Option<Arc<ChannelStats>>,
}

impl<N> Default for Fired<N> {
    fn default() -> Self {
        Fired {
            items: VecDeque::new(),
            heap: 0,
            slots: 0,
            stats: None,
        }
    }
}

impl<N> Drop for Fired<N> {
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            stats.meter(MemoryKind::Fired).sub(self.heap + self.slots);
        }
    }
}

/// Above this many slots, the buffer is released once delivered.
const FIRED_KEEP: usize = 16;

impl<N> Fired<N> {
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// What the waiting messages hold, as measured against the next stage's capacity.
    fn held(&self) -> usize {
        self.heap + self.items.len() * std::mem::size_of::<Forward<N>>()
    }

    fn push(&mut self, item: Forward<N>, stats: &Arc<ChannelStats>) {
        if self.stats.is_none() {
            self.stats = Some(stats.clone());
        }
        let heap = item.heap();
        stats.meter(MemoryKind::Fired).add(heap);
        self.heap += heap;
        self.items.push_back(item);
        self.account_slots(stats);
    }

    fn pop(&mut self, stats: &ChannelStats) -> Option<Forward<N>> {
        let item = self.items.pop_front()?;
        let heap = item.heap();
        stats.meter(MemoryKind::Fired).sub(heap);
        self.heap -= heap;
        Some(item)
    }

    fn account_slots(&mut self, stats: &ChannelStats) {
        let slots = self.items.capacity() * std::mem::size_of::<Forward<N>>();
        if slots != self.slots {
            stats.meter(MemoryKind::Fired).update(self.slots, slots);
            self.slots = slots;
        }
    }

    /// After a delivery: a buffer grown by a burst is let go.
    fn shrink(&mut self, stats: &ChannelStats) {
        if self.items.is_empty() && self.items.capacity() > FIRED_KEEP {
            self.items = VecDeque::new();
        }
        self.account_slots(stats);
    }

    /// Drops what is waiting (the handler failed, or the connection is going away).
    pub(crate) fn clear(&mut self, stats: &ChannelStats) {
        stats
            .meter(MemoryKind::Fired)
            .sub(std::mem::take(&mut self.heap));
        self.items.clear();
        self.shrink(stats);
    }
}

/// Hands fired messages to `next`, in order, uncharging each as it goes. On an error the
/// rest are dropped.
pub(crate) async fn pass_on<M, W, S>(
    next: &mut S,
    io: &mut ConnectionIo<'_, W>,
    fired: &mut Fired<M>,
) -> Result<()>
where
    S: Stage<M, W>,
    M: Send + 'static,
    W: Send + 'static,
{
    let stats = io.channel.shared.stats.clone();
    let mut result = Ok(());
    while let Some(item) = fired.pop(&stats) {
        let delivered = match item {
            Forward::Read(message, _) => next.read(io, message).await,
            Forward::Event(event) => next.user_event(io, &event).await,
        };
        if let Err(error) = delivered {
            result = Err(error);
            fired.clear(&stats);
            break;
        }
    }
    fired.shrink(&stats);
    result
}

/// What follows a handler: the messages it fired and the next stage. A handler's
/// [`Context`] reaches both through one thin trait object (a boxed future on the slow
/// path only), so the context stays small: the future of every handler call holds it.
pub(crate) struct Downstream<N, S> {
    pub(crate) fired: Fired<N>,
    pub(crate) next: S,
}

/// [`Downstream`] as a [`Context`] sees it.
pub(crate) trait Down<N, W>: Send {
    /// The messages fired and not yet handed on.
    fn fired(&mut self) -> &mut Fired<N>;

    /// Hands on what was fired if it holds more than the next stage's capacity.
    fn over_capacity(&self) -> bool;

    /// Hands on what is waiting.
    fn pass_on<'a, 'b: 'a>(
        &'a mut self,
        io: &'a mut ConnectionIo<'b, W>,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;
}

impl<N, W, S> Down<N, W> for Downstream<N, S>
where
    S: Stage<N, W>,
    N: Send + 'static,
    W: Send + 'static,
{
    fn fired(&mut self) -> &mut Fired<N> {
        &mut self.fired
    }

    fn over_capacity(&self) -> bool {
        self.fired.held() > self.next.capacity()
    }

    fn pass_on<'a, 'b: 'a>(
        &'a mut self,
        io: &'a mut ConnectionIo<'b, W>,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>> {
        Box::pin(pass_on(&mut self.next, io, &mut self.fired))
    }
}

/// What a [`Handler`](crate::Handler) is given with each event: the connection, a way to
/// write to it, and a way to pass messages to the next stage.
///
/// `N` is the message type of the next stage, `W` the pipeline's outbound type.
pub struct Context<'a, N, W> {
    io: ConnectionIo<'a, W>,
    down: &'a mut dyn Down<N, W>,
}

impl<'a, N, W> Context<'a, N, W> {
    pub(crate) fn new(io: ConnectionIo<'a, W>, down: &'a mut dyn Down<N, W>) -> Self {
        Context { io, down }
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

    /// Fires a user event to the stages after this one, in order with fired messages.
    /// Charged by its [`Event::size`] while it waits, like a message (see
    /// [`fire_read`](Context::fire_read)).
    pub async fn fire_event(&mut self, event: Event) -> Result<()> {
        let stats = &self.io.channel.shared.stats;
        self.down.fired().push(Forward::Event(event), stats);
        self.hand_on_if_full().await
    }

    /// Hands what was fired to the next stage now if it holds more than the next stage's
    /// capacity: the handler waits for the next stage (backpressure) instead of piling
    /// messages up.
    async fn hand_on_if_full(&mut self) -> Result<()> {
        if self.down.over_capacity() {
            let mut io = self.io.reborrow();
            self.down.pass_on(&mut io).await?;
        }
        Ok(())
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

impl<N: MessageSize, W> Context<'_, N, W> {
    /// Passes `message` to the next stage. Messages are delivered in the order fired:
    /// once the current handler method has returned, or earlier, while this call waits,
    /// when what was fired passes the next stage's capacity (an executor's queue cap,
    /// 64 KiB otherwise). Until delivered, fired messages are charged to the connection
    /// ([`MemoryKind::Fired`]), measured by [`MessageSize`]. A handler that splits one
    /// frame into many messages therefore never holds more than about one capacity of
    /// them: firing waits for the next stage as a write waits for the socket.
    pub async fn fire_read(&mut self, message: N) -> Result<()> {
        // Its slot is charged with the buffer; what it holds beyond is charged here.
        let heap = message
            .charged_size()
            .saturating_sub(std::mem::size_of::<N>());
        let stats = &self.io.channel.shared.stats;
        self.down.fired().push(Forward::Read(message, heap), stats);
        self.hand_on_if_full().await
    }
}

impl<'a, N, W: MessageSize> Context<'a, N, W> {
    /// Writes `message` to the connection.
    ///
    /// On the connection's I/O thread the message is encoded straight into the write
    /// buffer, which is flushed at the end of the current read batch; when the buffer
    /// passes its high watermark, this call writes to the socket until it is back under
    /// the low watermark (so a handler's replies can never outgrow the buffer). On a
    /// business executor the message goes through the connection's outbound queue and this
    /// call waits while the queue is full. Either way, messages one handler writes reach
    /// the socket in the order written.
    #[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
    pub fn write<'s>(
        &'s mut self,
        message: W,
    ) -> impl Future<Output = Result<()>> + use<'s, 'a, N, W> {
        // An `async move` block rather than an `async fn`, which would keep `message`
        // twice in its state: this future is made for every message written.
        async move {
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
                                return Poll::Ready(Err(Error::closed()));
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
    }

    /// Writes everything buffered so far to the socket before returning (on the I/O
    /// thread). Elsewhere, writes are flushed by the I/O thread as soon as it takes them,
    /// so this returns at once.
    pub async fn flush(&mut self) -> Result<()> {
        match &mut self.io.sink {
            Sink::Direct(sink) => poll_fn(|cx| sink.poll_flush(cx)).await,
            Sink::Queued => {
                if self.io.channel.is_closed() {
                    Err(Error::closed())
                } else {
                    Ok(())
                }
            }
        }
    }
}
