//! The two transports, as Tethernet pipelines ending in the same [`Session`]:
//!
//! ```text
//! TCP:       LengthFieldCodec ─▶ JsonFrames ─▶ (executor) Session
//! WebSocket: WebSocketCodec   ─▶ WsStage    ─▶ (executor) Session
//! ```
//!
//! Both write [`Out`]: JSON text (one frame with a 4-byte length prefix, or one text
//! frame), so a room's message is serialized once and shared by every member's queue.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tethernet::codec::{CodecError, LengthFieldCodec};
use tethernet::pipeline::Stage;
use tethernet::{Context, Error, Executor, Frame, Handler, Pipeline, Result};
use tokio_util::codec::{Decoder, Encoder};

use crate::node::{Node, Out};
use crate::protocol::ClientMessage;
use crate::session::Session;
use crate::websocket::{WebSocketCodec, WsError, WsIn, WsOut};

/// The browser page served at `GET /` on the WebSocket listener.
pub const PAGE: &str = include_str!("../assets/chat.html");

/// The bytes a WebSocket frame or response holds (for queue caps).
pub fn ws_size(out: &WsOut) -> usize {
    match out {
        WsOut::Text(text) => text.len(),
        WsOut::Binary(bytes) | WsOut::Ping(bytes) | WsOut::Pong(bytes) => bytes.len(),
        WsOut::Close(_, reason) => reason.len(),
        WsOut::Accept { accept } => accept.len() + 128,
        WsOut::Http { body, .. } => body.len() + 128,
    }
}

/// TCP framing: 4-byte big-endian length, then JSON.
pub struct TcpCodec(LengthFieldCodec);

impl TcpCodec {
    /// Frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> TcpCodec {
        TcpCodec(LengthFieldCodec::new(max_frame))
    }
}

impl Decoder for TcpCodec {
    type Item = Frame;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> std::result::Result<Option<Frame>, CodecError> {
        self.0.decode(src)
    }
    fn decode_eof(&mut self, src: &mut BytesMut) -> std::result::Result<Option<Frame>, CodecError> {
        self.0.decode_eof(src)
    }
}

impl Encoder<Out> for TcpCodec {
    type Error = CodecError;
    fn encode(&mut self, out: Out, dst: &mut BytesMut) -> std::result::Result<(), CodecError> {
        match out {
            Out::Json(text) => self.0.encode(text.as_bytes(), dst),
            // WebSocket frames never reach a TCP connection.
            Out::Ws(_) => Ok(()),
        }
    }
}

/// Parses each frame as a [`ClientMessage`]; a bad one gets a `bad_request` error and
/// the connection goes on.
pub struct JsonFrames;

impl Handler<Frame, Out> for JsonFrames {
    type Next = ClientMessage;

    async fn read(
        &mut self,
        ctx: &mut Context<'_, ClientMessage, Out>,
        frame: Frame,
    ) -> Result<()> {
        ctx.fire_read(parse(serde_json::from_slice::<ClientMessage>(&frame)))
            .await
    }
}

/// A parsed message, or the error in its place (answered by the session, in order).
fn parse(parsed: serde_json::Result<ClientMessage>) -> ClientMessage {
    parsed.unwrap_or_else(|error| ClientMessage::Invalid {
        reason: format!("not a valid message: {error}"),
    })
}

/// The TCP pipeline.
pub fn tcp_pipeline(
    node: &Arc<Node>,
    executor: &Executor,
    max_frame: usize,
) -> Pipeline<TcpCodec, impl Stage<Frame, Out>, Out> {
    Pipeline::builder(TcpCodec::new(max_frame))
        .handler(JsonFrames)
        .on(executor, Session::new(node.clone()))
        .build()
}

/// WebSocket framing over [`WebSocketCodec`], writing [`Out`].
pub struct WsCodec(WebSocketCodec);

impl Decoder for WsCodec {
    type Item = WsIn;
    type Error = WsError;
    fn decode(&mut self, src: &mut BytesMut) -> std::result::Result<Option<WsIn>, WsError> {
        self.0.decode(src)
    }
    fn decode_eof(&mut self, src: &mut BytesMut) -> std::result::Result<Option<WsIn>, WsError> {
        self.0.decode_eof(src)
    }
}

impl Encoder<Out> for WsCodec {
    type Error = WsError;
    fn encode(&mut self, out: Out, dst: &mut BytesMut) -> std::result::Result<(), WsError> {
        match out {
            Out::Json(text) => self.0.encode(WsOut::Text(text), dst),
            Out::Ws(frame) => self.0.encode(frame, dst),
        }
    }
}

/// The WebSocket side of a connection: the upgrade (or the chat page, or an error), then
/// ping/pong and the close handshake; text frames go on as [`ClientMessage`]s.
pub struct WsStage {
    path: Arc<str>,
    open: bool,
}

impl WsStage {
    /// Accepts upgrades on `path`.
    pub fn new(path: Arc<str>) -> WsStage {
        WsStage { path, open: false }
    }
}

fn http(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Out {
    Out::Ws(WsOut::Http {
        status,
        content_type,
        body: body.into(),
    })
}

impl Handler<WsIn, Out> for WsStage {
    type Next = ClientMessage;

    async fn read(
        &mut self,
        ctx: &mut Context<'_, ClientMessage, Out>,
        message: WsIn,
    ) -> Result<()> {
        match message {
            WsIn::Request(request) => {
                let path = request.path.split('?').next().unwrap_or("");
                if path == &*self.path {
                    match request.websocket_accept() {
                        Ok(Some(accept)) => {
                            self.open = true;
                            ctx.write(Out::Ws(WsOut::Accept { accept })).await
                        }
                        Ok(None) => {
                            ctx.write(http(
                                426,
                                "text/plain",
                                "this path takes WebSocket upgrades\n",
                            ))
                            .await?;
                            ctx.close();
                            Ok(())
                        }
                        Err(reason) => {
                            ctx.write(http(
                                400,
                                "text/plain",
                                format!("bad upgrade request: {reason}\n"),
                            ))
                            .await?;
                            ctx.close();
                            Ok(())
                        }
                    }
                } else if request.method == "GET" && (path == "/" || path == "/index.html") {
                    ctx.write(http(200, "text/html; charset=utf-8", PAGE))
                        .await?;
                    ctx.close();
                    Ok(())
                } else {
                    ctx.write(http(404, "text/plain", "not found\n")).await?;
                    ctx.close();
                    Ok(())
                }
            }
            WsIn::Text(text) => {
                ctx.fire_read(parse(serde_json::from_str::<ClientMessage>(&text)))
                    .await
            }
            WsIn::Binary(_) => {
                ctx.fire_read(ClientMessage::Invalid {
                    reason: "send JSON in text frames".into(),
                })
                .await
            }
            WsIn::Ping(payload) => ctx.write(Out::Ws(WsOut::Pong(payload))).await,
            WsIn::Pong(_) => Ok(()),
            WsIn::Close(close) => {
                // The close handshake, answered by the session after every request
                // before it (`send` then `close` from a browser stores the message).
                ctx.fire_read(ClientMessage::Closing {
                    code: close.map_or(1000, |(code, _)| code),
                })
                .await
            }
        }
    }

    async fn error(
        &mut self,
        ctx: &mut Context<'_, ClientMessage, Out>,
        error: &Error,
    ) -> Result<()> {
        // A protocol violation: say why with a close frame (if the connection was
        // upgraded) before the framework closes it.
        if let Some(ws) = error.codec_error::<WsError>() {
            let out = if self.open {
                Out::Ws(WsOut::Close(ws.close_code(), ws.to_string()))
            } else {
                let status = if matches!(ws, WsError::HeaderTooLarge { .. }) {
                    431
                } else {
                    400
                };
                http(status, "text/plain", format!("{ws}\n"))
            };
            let _ = ctx.write(out).await;
        }
        Ok(())
    }
}

/// The WebSocket pipeline.
pub fn ws_pipeline(
    node: &Arc<Node>,
    executor: &Executor,
    path: &Arc<str>,
    max_message: usize,
) -> Pipeline<WsCodec, impl Stage<WsIn, Out>, Out> {
    Pipeline::builder(WsCodec(WebSocketCodec::new(max_message)))
        .handler(WsStage::new(path.clone()))
        .on(executor, Session::new(node.clone()))
        .build()
}

/// Encodes a length-prefixed JSON frame (for clients and tests).
pub fn tcp_frame(json: &str) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(4 + json.len());
    out.put_u32(json.len() as u32);
    out.put_slice(json.as_bytes());
    out.to_vec()
}
