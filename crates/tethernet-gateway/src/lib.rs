//! tethernet-gateway: a chat/push gateway on Tethernet.
//!
//! ```text
//!  TCP / WebSocket ─▶ transport (codec, JSON) ─▶ Session (business executor)
//!                                                  │ store (SQLite / PostgreSQL)
//!                                                  ▼
//!                                         Node ─▶ Bus (in-process / Redis) ─▶ Node::deliver
//!                                                                             ─▶ room members
//! ```
//!
//! - [`config`]: flags, environment and TOML; [`gateway`]: binding and serving a node.
//! - [`transport`] and [`websocket`]: the two pipelines; [`session`]: the protocol.
//! - [`node`]: rooms with local members; [`bus`]: fan-out across nodes.
//! - [`store`]: messages and sequence numbers; [`token`]: signed login tokens.
//! - [`protocol`]: the messages (see `docs/PROTOCOL.md`); [`client`]: a terminal client.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bus;
pub mod client;
pub mod config;
pub mod gateway;
pub mod node;
pub mod protocol;
pub mod session;
pub mod store;
pub mod token;
pub mod transport;
pub mod websocket;
