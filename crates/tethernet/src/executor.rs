//! Ordered business executors: where slow or blocking handlers run, off the I/O threads.
//!
//! A handler placed on an [`Executor`] with [`PipelineBuilder::on`](crate::PipelineBuilder::on)
//! still sees its connection's events strictly in order: each connection gets one *drainer*
//! task on the executor that takes the connection's messages from a queue one at a time and
//! awaits the handler for each. The queue is capped in bytes; when it is full the I/O side
//! stops decoding and reading the socket (TCP backpressure) and resumes when the handler
//! catches up. The drainer belongs to the connection: when the connection closes, queued
//! messages are dropped (counted), the handlers' `inactive` runs, and the connection waits
//! for the drainer to finish before it is gone. The exception is the peer's end of stream
//! (it has sent all it will and may still be reading): the queued messages run first, within
//! the close timeout, and their replies are written ([`Stage::drain`]).
//!
//! Two flavours:
//! - **async**: `threads` event loops; each connection is pinned to one of them. Handlers
//!   must not block; they may await (a database client, a timer) and other connections'
//!   handlers run meanwhile.
//! - **blocking**: handler calls run on a pool of at most `threads` OS threads (tokio's
//!   blocking pool), one call per connection at a time, so a handler may block (a
//!   synchronous database driver, `std::thread::sleep`) without stalling other connections
//!   pinned nowhere in particular: any free thread takes the next connection that has work.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::event_loop::EventLoopGroup;
use crate::pipeline::context::ConnectionIo;
use crate::pipeline::stage::{Append, Stage};
use crate::pipeline::Event;
use crate::queue::{byte_queue, ByteReceiver, ByteSender, TrySendError};
use crate::size::MessageSize;
use crate::stats::{Charge, MemoryKind};

/// Default cap of each connection's queue into an executor.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Async,
    Blocking,
}

/// A named pool where handlers run off the I/O threads; cheap to clone.
///
/// ```no_run
/// use tethernet::Executor;
///
/// // Four threads for handlers that await slow things.
/// let db = Executor::builder("db").threads(4).build()?;
/// // Eight threads for handlers that block.
/// let legacy = Executor::builder("legacy").threads(8).blocking().build()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Executor {
    inner: Arc<ExecutorInner>,
}

struct ExecutorInner {
    name: String,
    flavour: Flavour,
    /// Async: the loops connections are pinned to. Blocking: one loop that runs the
    /// drainers, whose blocking pool (capped at `threads`) runs the handler calls.
    loops: EventLoopGroup,
    queue_capacity: usize,
}

/// Configures an [`Executor`].
#[derive(Debug, Clone)]
pub struct ExecutorBuilder {
    name: String,
    threads: usize,
    flavour: Flavour,
    queue_capacity: usize,
}

impl Executor {
    /// Starts configuring an executor called `name` (used for thread names and reports).
    pub fn builder(name: impl Into<String>) -> ExecutorBuilder {
        ExecutorBuilder {
            name: name.into(),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            flavour: Flavour::Async,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }

    /// The executor's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// True for the blocking flavour.
    pub fn is_blocking(&self) -> bool {
        self.inner.flavour == Flavour::Blocking
    }

    /// The per-connection queue cap, in bytes.
    pub fn queue_capacity(&self) -> usize {
        self.inner.queue_capacity
    }
}

impl ExecutorBuilder {
    /// Worker threads (default: the number of cores).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Handlers on this executor may block: each call runs on a blocking thread.
    pub fn blocking(mut self) -> Self {
        self.flavour = Flavour::Blocking;
        self
    }

    /// Caps each connection's queue into this executor, in bytes (default 64 KiB). When a
    /// connection's queue is full, that connection stops reading its socket.
    pub fn queue_capacity(mut self, bytes: usize) -> Self {
        self.queue_capacity = bytes.max(1);
        self
    }

    /// Starts the executor's threads.
    pub fn build(self) -> io::Result<Executor> {
        if self.threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("executor `{}` needs at least one thread", self.name),
            ));
        }
        let loops = match self.flavour {
            Flavour::Async => EventLoopGroup::new(&self.name, self.threads)?,
            Flavour::Blocking => {
                EventLoopGroup::with_blocking_threads(&self.name, 1, Some(self.threads))?
            }
        };
        Ok(Executor {
            inner: Arc::new(ExecutorInner {
                name: self.name,
                flavour: self.flavour,
                loops,
                queue_capacity: self.queue_capacity,
            }),
        })
    }
}

/// What crosses into an executor.
enum Item<M> {
    Read(M),
    Event(Event),
    /// Answered once everything queued before it has run ([`Stage::drain`]).
    Barrier(tokio::sync::oneshot::Sender<()>),
}

impl<M: MessageSize> MessageSize for Item<M> {
    fn message_size(&self) -> usize {
        match self {
            Item::Read(message) => message.message_size(),
            Item::Event(event) => std::mem::size_of::<Self>() + event.size(),
            Item::Barrier(_) => std::mem::size_of::<Self>(),
        }
    }

    fn charged_size(&self) -> usize {
        match self {
            Item::Read(message) => message.charged_size(),
            _ => self.message_size(),
        }
    }
}

enum OffloadState<S, M> {
    /// Built, not yet started: the segment waits for the connection to become active.
    Idle(S),
    Running {
        queue: ByteSender<Item<M>>,
        drainer: JoinHandle<()>,
    },
    Finished,
}

/// The pipeline stage that hands messages to a segment of handlers running on an
/// [`Executor`] (see the module docs). Appears in the types of pipelines; built by
/// [`PipelineBuilder::on`](crate::PipelineBuilder::on).
pub struct Offload<S, M, W> {
    executor: Executor,
    state: OffloadState<S, M>,
    _types: PhantomData<fn(W)>,
}

impl<S, M, W> Offload<S, M, W> {
    pub(crate) fn new(executor: Executor, segment: S) -> Self {
        Offload {
            executor,
            state: OffloadState::Idle(segment),
            _types: PhantomData,
        }
    }
}

impl<S, M, W> Drop for Offload<S, M, W> {
    fn drop(&mut self) {
        // The drainer belongs to the connection: never leave it running detached (this
        // only matters when the connection task itself is cancelled mid-way).
        if let OffloadState::Running { drainer, .. } = &self.state {
            drainer.abort();
        }
    }
}

impl<S, M, W> crate::pipeline::stage::sealed::Sealed for Offload<S, M, W> {}

impl<S, M, W, X> Append<X> for Offload<S, M, W>
where
    S: Append<X>,
{
    type Output = Offload<S::Output, M, W>;
    fn append(mut self, x: X) -> Self::Output {
        let state = std::mem::replace(&mut self.state, OffloadState::Finished);
        let OffloadState::Idle(segment) = state else {
            unreachable!("pipelines are only appended to before they start");
        };
        Offload::new(self.executor.clone(), segment.append(x))
    }
}

impl<S, M, W> Stage<M, W> for Offload<S, M, W>
where
    S: Stage<M, W>,
    M: MessageSize + Send + 'static,
    W: MessageSize + Send + 'static,
{
    async fn active(&mut self, io: &mut ConnectionIo<'_, W>) -> Result<()> {
        let state = std::mem::replace(&mut self.state, OffloadState::Finished);
        let OffloadState::Idle(segment) = state else {
            return Ok(());
        };
        let (queue, receiver) = byte_queue(
            self.executor.inner.queue_capacity,
            io.channel.shared.stats.clone(),
            MemoryKind::InboundQueue,
        );
        let (handle, event_loop) = self.executor.inner.loops.next_loop();
        let drainer = Drainer {
            segment: Some(segment),
            receiver,
            channel: io.channel.clone(),
            blocking: self
                .executor
                .is_blocking()
                .then(|| (handle.clone(), event_loop.clone())),
            executor: self.executor.inner.name.clone(),
        };
        // The drainer is the connection's task on the executor: counted on its loop and
        // charged to the connection (its future holds the segment's handler futures).
        let drainer = crate::tasks::spawn_counted(
            handle,
            event_loop,
            Some(&io.channel.shared.stats),
            drainer.run(),
        );
        self.state = OffloadState::Running { queue, drainer };
        Ok(())
    }

    async fn read(&mut self, io: &mut ConnectionIo<'_, W>, message: M) -> Result<()> {
        let OffloadState::Running { queue, .. } = &self.state else {
            return Err(Error::closed());
        };
        let item = match queue.try_send(Item::Read(message)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(Error::closed()),
            Err(TrySendError::Full(item)) => item,
        };
        // Waiting for room: the message is still the connection's.
        let stats = io.channel.shared.stats.clone();
        let _waiting = Charge::new(&stats, MemoryKind::Fired, item.charged_size());
        match io.wait_for(queue.send(item)).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::closed()),
        }
    }

    async fn user_event(&mut self, io: &mut ConnectionIo<'_, W>, event: &Event) -> Result<()> {
        let OffloadState::Running { queue, .. } = &self.state else {
            return Ok(());
        };
        let item = Item::Event(event.clone());
        let stats = io.channel.shared.stats.clone();
        let _waiting = Charge::new(&stats, MemoryKind::Fired, item.charged_size());
        let send = queue.send(item);
        if io.channel.is_closing() {
            // An event on the close path (the shutdown notice): the drainer is dropping
            // queued messages, so room comes quickly; wait for it within the close timeout.
            let limit = io.channel.shared.close_timeout;
            let _ = io
                .serve_outbound_while(tokio::time::timeout(limit, send))
                .await?;
        } else {
            let _ = io.wait_for(send).await?;
        }
        Ok(())
    }

    async fn inactive(&mut self, io: &mut ConnectionIo<'_, W>) -> Result<()> {
        let state = std::mem::replace(&mut self.state, OffloadState::Finished);
        match state {
            OffloadState::Running { queue, drainer } => {
                drop(queue);
                // The connection is closing (its flag is set before `inactive`), so the
                // drainer finishes its current call, drops the rest, runs the segment's
                // `inactive`, and ends. Wait for it — it is owned by this connection —
                // while serving the outbound side (its current call may be waiting for
                // room there), and no longer than the close timeout.
                let mut drainer = AbortOnDrop(drainer);
                let limit = io.channel.shared.close_timeout;
                let finished = io
                    .serve_outbound_while(tokio::time::timeout(limit, &mut drainer.0))
                    .await;
                match finished {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(error))) if error.is_panic() => {
                        tracing::error!(executor = %self.executor.name(), "a handler on the executor panicked");
                    }
                    Ok(Ok(Err(_))) => {}
                    Ok(Err(_elapsed)) => {
                        tracing::warn!(executor = %self.executor.name(), "the executor's handlers did not finish within the close timeout; cancelling them");
                    }
                    Err(error) => {
                        tracing::debug!(%error, "the socket failed while the executor's handlers finished");
                    }
                }
                Ok(())
            }
            OffloadState::Idle(segment) => {
                drop(segment);
                Ok(())
            }
            OffloadState::Finished => Ok(()),
        }
    }

    async fn drain(&mut self, io: &mut ConnectionIo<'_, W>) -> Result<()> {
        let OffloadState::Running { queue, .. } = &self.state else {
            return Ok(());
        };
        // A barrier behind what is queued: answered when the drainer reaches it, so
        // every earlier message has run through the segment (which may itself offload
        // further: the barrier then passes on from there).
        let (done, ran) = tokio::sync::oneshot::channel();
        if io.wait_for(queue.send(Item::Barrier(done))).await?.is_err() {
            return Err(Error::closed());
        }
        match io.serve_outbound_while(ran).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::closed()),
        }
    }

    fn capacity(&self) -> usize {
        self.executor.inner.queue_capacity
    }

    async fn error(&mut self, _io: &mut ConnectionIo<'_, W>, _error: &Error) {
        // Errors are reported to the segment where they happen; the executor's segment
        // learns that the connection is closing through `inactive`.
    }
}

/// Aborts a task when dropped: a task owned by a connection never runs on detached.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The per-connection task on an executor: runs the segment's events one at a time.
struct Drainer<S, M, W> {
    /// `None` only while a blocking call has it.
    segment: Option<S>,
    receiver: ByteReceiver<Item<M>>,
    channel: Channel<W>,
    /// For the blocking flavour: the runtime whose blocking pool runs the calls, and its
    /// loop's task figures (a task a blocking handler starts lands on that loop).
    blocking: Option<(Handle, Option<Arc<crate::tasks::LoopStats>>)>,
    executor: String,
}

/// One event for the segment.
enum Step<M> {
    Active,
    Item(Item<M>),
    /// Wait for the segment's own offloaded work (a nested executor).
    Drain,
    Inactive,
}

impl<S, M, W> Drainer<S, M, W>
where
    S: Stage<M, W>,
    M: MessageSize + Send + 'static,
    W: MessageSize + Send + 'static,
{
    async fn run(mut self) {
        let mut failed = self.step(Step::Active).await.is_err();
        // The connection closes this queue's only sender when it closes (after setting
        // its close flag), so `recv` wakes up for the close too.
        // Once the connection is closing, queued messages are dropped unread, but events
        // (such as the shutdown notice) still reach the handlers. The loop ends when the
        // connection lets go of the queue, in its close path.
        let mut dropped = 0;
        while !failed {
            let Some(item) = self.receiver.recv().await else {
                break;
            };
            if self.channel.shared.close_requested() {
                if let Item::Read(_) = item {
                    dropped += 1;
                    continue;
                }
            }
            if let Item::Barrier(done) = item {
                failed = self.step(Step::Drain).await.is_err();
                let _ = done.send(());
                continue;
            }
            // The message being handled is still the connection's inbound work.
            let stats = self.channel.shared.stats.clone();
            let _handling = Charge::new(&stats, MemoryKind::InboundQueue, item.charged_size());
            failed = self.step(Step::Item(item)).await.is_err();
        }
        dropped += self.receiver.close_and_discard();
        if dropped > 0 {
            tracing::debug!(channel = %self.channel.id(), executor = %self.executor, dropped, "connection closed; dropped its queued business work");
        }
        let _ = self.step(Step::Inactive).await;
    }

    /// Runs one event through the segment, inline (async flavour) or on a blocking thread.
    async fn step(&mut self, step: Step<M>) -> Result<()> {
        let Some(mut segment) = self.segment.take() else {
            return Err(Error::closed());
        };
        let result = match &self.blocking {
            None => {
                let result = crate::panics::guarded(
                    self.channel.id(),
                    run_step(&mut segment, &self.channel, step),
                )
                .await;
                self.segment = Some(segment);
                result
            }
            Some((handle, event_loop)) => {
                let channel = self.channel.clone();
                let runtime = handle.clone();
                let event_loop = event_loop.clone();
                let call = tokio::task::spawn_blocking(move || {
                    // The pool's threads belong to this executor's runtime alone.
                    if let Some(event_loop) = event_loop {
                        crate::tasks::install(event_loop);
                    }
                    let result = runtime.block_on(crate::panics::guarded(
                        channel.id(),
                        run_step(&mut segment, &channel, step),
                    ));
                    (segment, result)
                });
                match call.await {
                    Ok((segment, result)) => {
                        self.segment = Some(segment);
                        result
                    }
                    Err(error) => {
                        if error.is_panic() {
                            tracing::error!(channel = %self.channel.id(), executor = %self.executor, "a blocking handler panicked; closing the connection");
                        }
                        self.channel.close();
                        return Err(Error::closed());
                    }
                }
            }
        };
        if let Err(error) = &result {
            tracing::debug!(channel = %self.channel.id(), executor = %self.executor, %error, "closing the connection after a handler error");
            self.channel.close();
        }
        result
    }
}

async fn run_step<S, M, W>(segment: &mut S, channel: &Channel<W>, step: Step<M>) -> Result<()>
where
    S: Stage<M, W>,
    M: Send + 'static,
    W: MessageSize + Send + 'static,
{
    let mut io = ConnectionIo::queued(channel);
    let result = match step {
        Step::Active => segment.active(&mut io).await,
        Step::Item(Item::Read(message)) => segment.read(&mut io, message).await,
        Step::Item(Item::Event(event)) => segment.user_event(&mut io, &event).await,
        Step::Item(Item::Barrier(_)) => Ok(()),
        Step::Drain => segment.drain(&mut io).await,
        Step::Inactive => segment.inactive(&mut io).await,
    };
    if let Err(error) = &result {
        if !error.is_closed() {
            segment.error(&mut io, error).await;
        }
    }
    result
}
