//! Tethernet: a Netty-style network application framework for tokio whose memory is
//! **bounded and attributed**.
//!
//! # Layout
//!
//! Data enters at the socket and flows left to right; replies flow back (the design, the
//! guarantees G1–G7 and where each is enforced: `docs/DESIGN.md` in the repository).
//!
//! ```text
//!  Server / Client ──▶ event loop ──▶ connection task ──▶ codec ──▶ pipeline stages ──▶ executors
//!   (server.rs,        (event_loop.rs) (connection/)      (codec/)   (pipeline/)         (executor.rs)
//!    client.rs)
//!
//!  socket ◀── write buffer ◀── codec.encode ◀── ctx.write on the I/O thread
//!                                           ◀── outbound queue ◀── Channel::write / ctx.write on an executor
//! ```
//!
//! - [`server`] and [`client`]: bind or connect, and hand each connection to an event loop.
//! - [`event_loop`]: a group of threads, each with a single-threaded runtime; a connection
//!   lives on one loop (the Netty model, chosen for fairness under many busy connections).
//! - [`connection`](crate::Channel) (private module): the per-connection task — read buffer,
//!   decode, pipeline, encode, write buffer — and where read and write bounds are enforced.
//! - [`pipeline`]: [`Handler`], [`Context`], [`Pipeline`] and its builder; the typed chain of
//!   stages.
//! - [`executor`]: ordered business executors (async and blocking) behind per-connection
//!   queues capped in bytes (G1 order, G3 bounds).
//! - [`codec`]: frame codecs, each with a mandatory maximum frame length.
//! - [`channel`]: [`Channel`], the handle to a connection usable from any task; its
//!   outbound overflow policies ([`Overflow`]).
//! - [`tether`]: what a connection owns — tasks ([`Channel::spawn`]) and values
//!   ([`Channel::tether`]) that go when it closes (G2).
//! - [`tasks`]: the tasks on each event loop, owned or not; tasks a handler starts with a
//!   plain `tokio::spawn` are counted, attributed and reported.
//! - [`group`]: [`ChannelGroup`], broadcast that respects each member's bounds.
//! - [`handlers`]: ready-made handlers ([`handlers::Heartbeat`]).
//! - [`reconnect`]: client connections kept up with backoff; [`udp`]: the same model on
//!   datagram sockets.
//! - `tls` (feature `tls`): rustls on server connections, handshakes bounded in time and number.
//! - [`stats`] and [`size`]: live per-connection byte counters, process-wide totals
//!   ([`global`]), the list of live connections, and how messages are measured.
//! - [`Frame`] (private module `frame`): decoded bytes charged at the read buffer they
//!   pin and tracked for leaks; [`leak`]: leak reports; [`blocking`]: the watchdog that
//!   reports handlers blocking an event loop.
//!
//! # Example
//!
//! ```no_run
//! use tethernet::Frame;
//! use tethernet::codec::LengthFieldCodec;
//! use tethernet::{Context, Handler, Pipeline, Result, Server};
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
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<()> {
//!     let server = Server::builder().bind("127.0.0.1:7007").await?;
//!     server
//!         .serve(|| Pipeline::builder(LengthFieldCodec::new(1 << 20)).handler(Echo).build())
//!         .await
//! }
//! ```

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod blocking;
mod buffers;
pub mod channel;
pub mod client;
pub mod codec;
mod connection;
pub mod error;
pub mod event_loop;
pub mod executor;
mod frame;
pub mod group;
pub mod handlers;
pub mod leak;
mod panics;
pub mod pipeline;
mod queue;
pub mod reconnect;
pub mod server;
pub mod size;
pub mod stats;
pub mod tasks;
pub mod tether;
#[cfg(feature = "tls")]
pub mod tls;
pub mod udp;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

pub use channel::{Channel, ChannelId, Offered, Overflow};
pub use client::{Client, ClientBuilder, Connection};
pub use connection::IdleTimeouts;
pub use error::{Error, ErrorKind, Result};
pub use event_loop::EventLoopGroup;
pub use executor::{Executor, ExecutorBuilder};
pub use frame::Frame;
pub use group::{Broadcast, ChannelGroup};
pub use pipeline::{
    ChannelEvent, Context, Event, Handler, IdleState, Pipeline, PipelineBuilder, PipelineCodec,
};
pub use reconnect::{Backoff, Reconnecting};
pub use server::{Server, ServerBuilder};
pub use size::MessageSize;
pub use stats::{global, ChannelStats, ConnectionInfo, GlobalStats, MemoryKind, Meter};
pub use tether::{TetherKey, Tracked};
