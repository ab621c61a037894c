//! One client's session: login, rooms, sending, history. Runs on a business executor
//! (its database calls never hold an I/O thread), one message at a time per connection.

use std::collections::HashMap;
use std::sync::Arc;

use tethernet::{Context, Handler, Result, TetherKey};

use crate::node::{Node, Out};
use crate::protocol::{valid_room, ClientMessage, ErrorCode, ServerMessage};
use crate::token::{self, Claims, TokenError};

/// Most messages in one history page.
pub const MAX_HISTORY_PAGE: u32 = 200;

/// How long a join waits for the node's bus subscription to the room.
const SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The session handler (one per connection).
pub struct Session {
    node: Arc<Node>,
    claims: Option<Claims>,
    /// Rooms joined, each with its membership tethered to the connection.
    rooms: HashMap<String, TetherKey>,
}

impl Session {
    /// A session of `node`.
    pub fn new(node: Arc<Node>) -> Session {
        Session {
            node,
            claims: None,
            rooms: HashMap::new(),
        }
    }
}

type Ctx<'a> = Context<'a, ClientMessage, Out>;

async fn reply(ctx: &mut Ctx<'_>, message: ServerMessage) -> Result<()> {
    ctx.write(Out::msg(&message)).await
}

async fn fail(ctx: &mut Ctx<'_>, code: ErrorCode, message: impl Into<String>) -> Result<()> {
    reply(ctx, ServerMessage::error(code, message)).await
}

impl Session {
    /// The logged-in user's claims, if `room` is valid and allowed; otherwise the error
    /// to send.
    fn check_room(&self, room: &str) -> std::result::Result<&Claims, (ErrorCode, String)> {
        let claims = self
            .claims
            .as_ref()
            .ok_or((ErrorCode::NotLoggedIn, "log in first".to_owned()))?;
        if !valid_room(room) {
            return Err((
                ErrorCode::BadRequest,
                "a room name is 1-64 letters, digits, '-', '_' or '.'".to_owned(),
            ));
        }
        if !claims.allows(room) {
            return Err((
                ErrorCode::Forbidden,
                format!("your token does not allow room `{room}`"),
            ));
        }
        Ok(claims)
    }
}

impl Handler<ClientMessage, Out> for Session {
    type Next = ClientMessage;

    async fn read(&mut self, ctx: &mut Ctx<'_>, message: ClientMessage) -> Result<()> {
        match message {
            ClientMessage::Login { token } => {
                if self.claims.is_some() {
                    return fail(ctx, ErrorCode::AlreadyLoggedIn, "already logged in").await;
                }
                match self.node.signer.verify(&token, token::now()) {
                    Ok(claims) => {
                        let welcome = ServerMessage::Welcome {
                            user: claims.user.clone(),
                            rooms: claims.rooms.clone(),
                        };
                        tracing::debug!(user = %claims.user, channel = %ctx.id(), "logged in");
                        self.claims = Some(claims);
                        reply(ctx, welcome).await
                    }
                    Err(TokenError::Expired) => {
                        fail(ctx, ErrorCode::TokenExpired, "the token has expired").await
                    }
                    Err(TokenError::Invalid) => {
                        fail(ctx, ErrorCode::InvalidToken, "the token is not valid").await
                    }
                }
            }
            ClientMessage::Join { room, since } => {
                if let Err((code, message)) = self.check_room(&room) {
                    return fail(ctx, code, message).await;
                }
                let newly_joined = !self.rooms.contains_key(&room);
                if newly_joined {
                    if self.rooms.len() >= self.node.limits.max_rooms_per_connection {
                        return fail(
                            ctx,
                            ErrorCode::TooManyRooms,
                            "too many rooms joined; leave one first",
                        )
                        .await;
                    }
                    let membership = self.node.join(&room, ctx.channel());
                    let key = ctx.tether(membership)?;
                    self.rooms.insert(room.clone(), key);
                    // Joined means every message published from now on reaches this
                    // client: wait for the node's bus subscription (Redis) to be in place.
                    if !self.node.bus.wait_subscribed(&room, SUBSCRIBE_WAIT).await {
                        tracing::warn!(%room, "the bus subscription is not confirmed yet; a gap notice follows when it is");
                    }
                }
                let latest = match self.node.store.latest(&room).await {
                    Ok(latest) => latest,
                    Err(error) => {
                        // Not joined after all.
                        if newly_joined {
                            if let Some(key) = self.rooms.remove(&room) {
                                ctx.channel().untether(key);
                            }
                        }
                        return self.unavailable(ctx, error).await;
                    }
                };
                reply(
                    ctx,
                    ServerMessage::Joined {
                        room: room.clone(),
                        seq: latest,
                    },
                )
                .await?;
                if let Some(since) = since.filter(|since| *since < latest) {
                    self.node
                        .counters
                        .recoveries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let missed = match self
                        .node
                        .store
                        .after(&room, since, self.node.limits.max_replay)
                        .await
                    {
                        Ok(missed) => missed,
                        Err(error) => return self.unavailable(ctx, error).await,
                    };
                    for message in missed {
                        reply(ctx, ServerMessage::Message(message)).await?;
                    }
                }
                Ok(())
            }
            ClientMessage::Leave { room } => match self.rooms.remove(&room) {
                Some(key) => {
                    ctx.channel().untether(key);
                    reply(ctx, ServerMessage::Left { room }).await
                }
                None => fail(ctx, ErrorCode::NotJoined, format!("not in room `{room}`")).await,
            },
            ClientMessage::Send {
                room,
                body,
                client_id,
            } => {
                let claims = match self.check_room(&room) {
                    Ok(claims) => claims,
                    Err((code, message)) => return fail(ctx, code, message).await,
                };
                if !self.rooms.contains_key(&room) {
                    return fail(
                        ctx,
                        ErrorCode::NotJoined,
                        format!("join room `{room}` first"),
                    )
                    .await;
                }
                if body.len() > self.node.limits.max_body
                    || client_id.as_ref().is_some_and(|id| id.len() > 128)
                {
                    return fail(
                        ctx,
                        ErrorCode::TooLarge,
                        format!(
                            "a body is at most {} bytes, a client id 128",
                            self.node.limits.max_body
                        ),
                    )
                    .await;
                }
                let user = claims.user.clone();
                match self
                    .node
                    .post(&room, &user, &body, client_id.as_deref())
                    .await
                {
                    Ok((message, duplicate)) => {
                        reply(
                            ctx,
                            ServerMessage::Ack {
                                room,
                                seq: message.seq,
                                client_id,
                                duplicate,
                            },
                        )
                        .await
                    }
                    Err(error) => self.unavailable(ctx, error).await,
                }
            }
            ClientMessage::History {
                room,
                before,
                limit,
            } => {
                if let Err((code, message)) = self.check_room(&room) {
                    return fail(ctx, code, message).await;
                }
                let limit = limit.unwrap_or(50).clamp(1, MAX_HISTORY_PAGE);
                match self.node.store.before(&room, before, limit).await {
                    Ok((messages, more)) => {
                        reply(
                            ctx,
                            ServerMessage::History {
                                room,
                                messages,
                                more,
                            },
                        )
                        .await
                    }
                    Err(error) => self.unavailable(ctx, error).await,
                }
            }
            ClientMessage::Ping { id } => reply(ctx, ServerMessage::Pong { id }).await,
            ClientMessage::Invalid { reason } => fail(ctx, ErrorCode::BadRequest, reason).await,
            ClientMessage::Closing { code } => {
                // Echo the peer's code when it is one a peer may send.
                let code = if matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999) {
                    code
                } else {
                    1000
                };
                ctx.write(Out::Ws(crate::websocket::WsOut::Close(code, String::new())))
                    .await?;
                ctx.close();
                Ok(())
            }
        }
    }
}

impl Session {
    async fn unavailable(&self, ctx: &mut Ctx<'_>, error: crate::store::StoreError) -> Result<()> {
        tracing::warn!(%error, channel = %ctx.id(), "a database call failed");
        fail(
            ctx,
            ErrorCode::Unavailable,
            "the message store is unavailable; try again",
        )
        .await
    }
}
