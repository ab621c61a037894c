//! How handlers are chained: typed nodes, each calling the next.
//!
//! A built pipeline is a nested value `Node<H1, .., Node<H2, .., Tail>>`; every call is
//! static (no boxing, no dynamic dispatch), so a pipeline costs what its handlers cost.
//! Messages a handler fires are buffered in its node and handed to the next node, in
//! order, once the handler returns. An [`Offload`](crate::executor::Offload) node moves the
//! rest of the chain onto a business executor.

use std::future::Future;
use std::marker::PhantomData;

use crate::error::{Error, Result};
use crate::pipeline::context::{pass_on, ConnectionIo, Context, Downstream, Fired};
use crate::pipeline::{Event, Handler};

/// One link of a built pipeline: what `impl Stage<..>` names in the type of a pipeline a
/// function returns. Application code implements [`Handler`] instead.
///
/// Sealed: only the framework's nodes implement it ([`Node`], [`Tail`] and the executor's
/// [`Offload`](crate::executor::Offload)), because the guarantees rest on every stage
/// keeping them: a message is handed on only when the next stage has room (its
/// [`capacity`](Stage::capacity)), in order, charged while it waits, and `drain` finishes
/// the work handed to executors before a half-closed connection closes.
pub trait Stage<In, W>: sealed::Sealed + Send + 'static {
    /// Delivers a message.
    fn read(
        &mut self,
        io: &mut ConnectionIo<'_, W>,
        message: In,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The connection is active.
    fn active(&mut self, io: &mut ConnectionIo<'_, W>) -> impl Future<Output = Result<()>> + Send;
    /// The connection is closing.
    fn inactive(&mut self, io: &mut ConnectionIo<'_, W>)
        -> impl Future<Output = Result<()>> + Send;
    /// A user event.
    fn user_event(
        &mut self,
        io: &mut ConnectionIo<'_, W>,
        event: &Event,
    ) -> impl Future<Output = Result<()>> + Send;
    /// An error; every handler sees it.
    fn error(
        &mut self,
        io: &mut ConnectionIo<'_, W>,
        error: &Error,
    ) -> impl Future<Output = ()> + Send;
    /// Completes once the work handed to business executors so far has run (after the
    /// peer's end of stream, before the close).
    fn drain(&mut self, io: &mut ConnectionIo<'_, W>) -> impl Future<Output = Result<()>> + Send;
    /// Bytes of messages a previous handler may fire for this stage before they are
    /// handed over during its call ([`Context::fire_read`](crate::Context::fire_read)).
    fn capacity(&self) -> usize {
        DEFAULT_FIRE_CAPACITY
    }
}

/// What a handler may fire before it waits for the next stage, unless that stage says
/// otherwise (an executor: its queue cap).
pub(crate) const DEFAULT_FIRE_CAPACITY: usize = 64 * 1024;

/// Adds a stage at the end of a chain (type-level list append), as
/// [`PipelineBuilder`](crate::PipelineBuilder) grows a pipeline. Sealed, for the reason
/// [`Stage`] is.
pub trait Append<X>: sealed::Sealed {
    /// The chain with `X` at its end.
    type Output;
    /// Appends `x`.
    fn append(self, x: X) -> Self::Output;
}

/// Keeps [`Stage`] and [`Append`] to the framework's own nodes.
pub(crate) mod sealed {
    /// Implemented by the framework's nodes only.
    pub trait Sealed {}
}

impl sealed::Sealed for Tail {}
impl<H, In, W, N> sealed::Sealed for Node<H, In, W, N>
where
    H: Handler<In, W>,
    In: Send + 'static,
    W: Send + 'static,
{
}

/// The end of a chain: messages that reach it are dropped. Appears in the types of
/// pipelines; built by [`Pipeline::builder`](crate::Pipeline::builder).
#[derive(Debug, Default)]
pub struct Tail;

impl<M: Send + 'static, W: Send + 'static> Stage<M, W> for Tail {
    async fn read(&mut self, io: &mut ConnectionIo<'_, W>, _message: M) -> Result<()> {
        tracing::trace!(channel = %io.channel.id(), "a message reached the end of the pipeline and was dropped");
        Ok(())
    }
    async fn active(&mut self, _io: &mut ConnectionIo<'_, W>) -> Result<()> {
        Ok(())
    }
    async fn inactive(&mut self, _io: &mut ConnectionIo<'_, W>) -> Result<()> {
        Ok(())
    }
    async fn user_event(&mut self, _io: &mut ConnectionIo<'_, W>, _event: &Event) -> Result<()> {
        Ok(())
    }
    async fn error(&mut self, _io: &mut ConnectionIo<'_, W>, _error: &Error) {}
    async fn drain(&mut self, _io: &mut ConnectionIo<'_, W>) -> Result<()> {
        Ok(())
    }
}

impl<X> Append<X> for Tail {
    type Output = X;
    fn append(self, x: X) -> X {
        x
    }
}

/// A handler and the rest of the chain after it. Appears in the types of pipelines; built
/// by [`PipelineBuilder::handler`](crate::PipelineBuilder::handler).
pub struct Node<H, In, W, N>
where
    H: Handler<In, W>,
    In: Send + 'static,
    W: Send + 'static,
{
    handler: H,
    /// The messages the handler fired during the current call (delivered after it
    /// returns, or during the call past the next stage's capacity), and the next stage.
    down: Downstream<H::Next, N>,
    /// The handler's name, interned for blocking detection.
    name_id: u32,
    _types: PhantomData<fn(In, W)>,
}

impl<H, In, W, N> Node<H, In, W, N>
where
    H: Handler<In, W>,
    In: Send + 'static,
    W: Send + 'static,
{
    pub(crate) fn new(handler: H, next: N) -> Self {
        Node {
            handler,
            down: Downstream {
                fired: Fired::default(),
                next,
            },
            name_id: crate::blocking::intern(std::any::type_name::<H>()),
            _types: PhantomData,
        }
    }
}

impl<H, In, W, N> Node<H, In, W, N>
where
    H: Handler<In, W>,
    In: Send + 'static,
    W: Send + 'static,
    N: Stage<H::Next, W>,
{
    /// Hands what the handler fired to the next stage, in order.
    async fn deliver(&mut self, io: &mut ConnectionIo<'_, W>) -> Result<()> {
        if self.down.fired.is_empty() {
            return Ok(());
        }
        pass_on(&mut self.down.next, io, &mut self.down.fired).await
    }

    fn name() -> &'static str {
        std::any::type_name::<H>()
    }
}

fn tag(error: Error, handler: &'static str) -> Error {
    error.with_handler(handler)
}

impl<H, In, W, N> Stage<In, W> for Node<H, In, W, N>
where
    H: Handler<In, W>,
    In: Send + 'static,
    W: Send + 'static,
    N: Stage<H::Next, W>,
{
    // A plain function returning an `async move` block, not an `async fn`: an `async fn`
    // keeps its arguments twice in its state, and this future is moved (copied) into its
    // caller's state once per message.
    #[allow(clippy::manual_async_fn)] // an `async fn` would keep its arguments twice
    fn read(
        &mut self,
        io: &mut ConnectionIo<'_, W>,
        message: In,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            // A frame remembers the last handler it was handed to, for leak reports.
            crate::frame::touch(&message, self.name_id);
            let mut ctx = Context::new(io.reborrow(), &mut self.down);
            let result = crate::panics::named(
                Self::name(),
                self.name_id,
                std::pin::pin!(self.handler.read(&mut ctx, message)),
            )
            .await;
            if let Err(error) = result {
                self.down.fired.clear(&io.channel.shared.stats);
                return Err(tag(error, Self::name()));
            }
            // Checked here rather than in `deliver`: building and dropping its future for
            // every frame that is not passed on is measurable in the echo benchmark.
            if self.down.fired.is_empty() {
                return Ok(());
            }
            self.deliver(io).await
        }
    }

    async fn active(&mut self, io: &mut ConnectionIo<'_, W>) -> Result<()> {
        let mut ctx = Context::new(io.reborrow(), &mut self.down);
        crate::panics::named(
            Self::name(),
            self.name_id,
            std::pin::pin!(self.handler.active(&mut ctx)),
        )
        .await
        .map_err(|e| tag(e, Self::name()))?;
        self.down.next.active(io).await?;
        self.deliver(io).await
    }

    async fn inactive(&mut self, io: &mut ConnectionIo<'_, W>) -> Result<()> {
        let mut ctx = Context::new(io.reborrow(), &mut self.down);
        let result = crate::panics::named(
            Self::name(),
            self.name_id,
            std::pin::pin!(self.handler.inactive(&mut ctx)),
        )
        .await;
        // Nothing more is delivered once the connection is going away.
        self.down.fired.clear(&io.channel.shared.stats);
        // Later stages are told even if this handler failed: each owns state to release.
        let next = self.down.next.inactive(io).await;
        result.map_err(|e| tag(e, Self::name())).and(next)
    }

    async fn user_event(&mut self, io: &mut ConnectionIo<'_, W>, event: &Event) -> Result<()> {
        let mut ctx = Context::new(io.reborrow(), &mut self.down);
        crate::panics::named(
            Self::name(),
            self.name_id,
            std::pin::pin!(self.handler.user_event(&mut ctx, event)),
        )
        .await
        .map_err(|e| tag(e, Self::name()))?;
        self.deliver(io).await?;
        self.down.next.user_event(io, event).await
    }

    async fn error(&mut self, io: &mut ConnectionIo<'_, W>, error: &Error) {
        let mut ctx = Context::new(io.reborrow(), &mut self.down);
        if let Err(failure) = crate::panics::named(
            Self::name(),
            self.name_id,
            std::pin::pin!(self.handler.error(&mut ctx, error)),
        )
        .await
        {
            tracing::debug!(handler = Self::name(), %failure, "handler failed while handling an error");
        }
        self.down.fired.clear(&io.channel.shared.stats);
        self.down.next.error(io, error).await
    }

    async fn drain(&mut self, io: &mut ConnectionIo<'_, W>) -> Result<()> {
        // Handlers on this thread have finished their calls; what they fired was handed
        // on. Only later executors can hold work.
        self.down.next.drain(io).await
    }
}

impl<H, In, W, N, X> Append<X> for Node<H, In, W, N>
where
    H: Handler<In, W>,
    In: Send + 'static,
    W: Send + 'static,
    N: Append<X>,
{
    type Output = Node<H, In, W, N::Output>;
    fn append(self, x: X) -> Self::Output {
        Node {
            handler: self.handler,
            down: Downstream {
                fired: Fired::default(),
                next: self.down.next.append(x),
            },
            name_id: self.name_id,
            _types: PhantomData,
        }
    }
}
