//! Pipelines: a codec, then handlers, with the message types between them checked by the
//! compiler.
//!
//! ```text
//!  socket ─▶ read buffer ─▶ codec.decode ─▶ handler ─▶ handler ─▶ [executor queue] ─▶ handler ─▶ …
//!  socket ◀─ write buffer ◀─ codec.encode ◀─ ctx.write (I/O thread)  ◀─ outbound queue ◀─ ctx.write / Channel::write
//! ```
//!
//! Build one per connection with [`Pipeline::builder`]:
//!
//! ```
//! use tethernet::Frame;
//! use tethernet::codec::LengthFieldCodec;
//! use tethernet::{Context, Handler, Pipeline, Result};
//!
//! struct Echo;
//!
//! impl Handler<Frame, Frame> for Echo {
//!     type Next = Frame;
//!     async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
//!         ctx.write(frame).await
//!     }
//! }
//!
//! let pipeline = Pipeline::builder(LengthFieldCodec::new(1 << 20)).handler(Echo).build();
//! # let _ = pipeline;
//! ```

pub(crate) mod context;
mod handler;
pub(crate) mod stage;

use std::marker::PhantomData;

use tokio_util::codec::{Decoder, Encoder};

pub use context::Context;
pub use handler::{ChannelEvent, Event, Handler, IdleState};
pub use stage::{Append, Node, Stage, Tail};

use crate::executor::{Executor, Offload};
use crate::size::MessageSize;

/// What a pipeline's codec must be: any `tokio_util::codec` `Decoder + Encoder<W>` whose
/// frames can move between threads and whose errors can be reported. Implemented for
/// every such type; it only names the bounds once.
pub trait PipelineCodec<W>:
    Decoder<Item: Send + 'static, Error: std::error::Error + Send + Sync + 'static>
    + Encoder<W, Error: std::error::Error + Send + Sync + 'static>
    + Send
    + 'static
{
}

impl<T, W> PipelineCodec<W> for T where
    T: Decoder<Item: Send + 'static, Error: std::error::Error + Send + Sync + 'static>
        + Encoder<W, Error: std::error::Error + Send + Sync + 'static>
        + Send
        + 'static
{
}

/// A connection's codec and handler chain, ready to run. Made per connection by the
/// factory given to [`Server::serve`](crate::Server::serve) or
/// [`Client::connect`](crate::Client::connect).
pub struct Pipeline<C, S, W> {
    pub(crate) codec: C,
    pub(crate) stages: S,
    _write: PhantomData<fn(W)>,
}

impl Pipeline<(), Tail, ()> {
    /// Starts a pipeline whose frames are decoded and encoded by `codec`: any
    /// `tokio_util::codec` `Decoder + Encoder`, such as the ones in [`crate::codec`].
    pub fn builder<C, W>(codec: C) -> PipelineBuilder<C, C::Item, W, Tail>
    where
        C: Decoder,
    {
        PipelineBuilder {
            codec,
            stages: Tail,
            _types: PhantomData,
        }
    }
}

/// Adds handlers to a pipeline, in order. `M` is the message type the next handler
/// receives; `W` is the pipeline's outbound type.
pub struct PipelineBuilder<C, M, W, S> {
    codec: C,
    stages: S,
    _types: PhantomData<fn(M, W)>,
}

impl<C, M, W, S> PipelineBuilder<C, M, W, S>
where
    M: Send + 'static,
    W: Send + 'static,
{
    /// Adds `handler`. It runs where the previous stage runs: on the connection's I/O
    /// thread, or on the executor of the latest [`on`](Self::on).
    pub fn handler<H>(self, handler: H) -> PipelineBuilder<C, H::Next, W, S::Output>
    where
        H: Handler<M, W>,
        S: Append<Node<H, M, W, Tail>>,
    {
        PipelineBuilder {
            codec: self.codec,
            stages: self.stages.append(Node::new(handler, Tail)),
            _types: PhantomData,
        }
    }

    /// Adds `handler` on `executor`: it, and the handlers added after it, run there, off
    /// the I/O threads, still in order per connection. Messages reach it through a queue
    /// capped at [`Executor::queue_capacity`] bytes per connection; while the queue is
    /// full the connection stops reading its socket.
    pub fn on<H>(self, executor: &Executor, handler: H) -> PipelineBuilder<C, H::Next, W, S::Output>
    where
        H: Handler<M, W>,
        M: MessageSize,
        S: Append<Offload<Node<H, M, W, Tail>, M, W>>,
    {
        PipelineBuilder {
            codec: self.codec,
            stages: self
                .stages
                .append(Offload::new(executor.clone(), Node::new(handler, Tail))),
            _types: PhantomData,
        }
    }

    /// Finishes the pipeline.
    pub fn build(self) -> Pipeline<C, S, W>
    where
        C: Decoder + Encoder<W>,
    {
        Pipeline {
            codec: self.codec,
            stages: self.stages,
            _write: PhantomData,
        }
    }
}
