//! One client's session: login, rooms, sending, history. Runs on a business executor
//! (its database calls never hold an I/O thread), one message at a time per connection.
//!
//! Access control: a connection must log in within the login deadline (an owned timer
//! closes it otherwise); failed logins are counted per address and, past the limit, refused
//! with `rate_limited` and the connection closed; every request naming a room (`join`,
//! `send`, `history`) is checked against the token's `rooms` claim.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tethernet::{Channel, Context, Handler, Overflow, Result, TetherKey};

use crate::node::{Node, Out};
use crate::protocol::{valid_room, ClientMessage, ErrorCode, ServerMessage};
use crate::store::StoreError;
use crate::token::{self, Claims, TokenError};
use crate::websocket::WsOut;

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
    /// The owned timer that closes the connection if it does not log in in time.
    login_deadline: Option<TetherKey>,
}

impl Session {
    /// A session of `node`.
    pub fn new(node: Arc<Node>) -> Session {
        Session {
            node,
            claims: None,
            rooms: HashMap::new(),
            login_deadline: None,
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

/// Says why (an error, and over WebSocket a close frame with 1008 "policy violation"),
/// then closes the connection. Never waits: a peer that does not read is closed anyway.
fn refuse_and_close(channel: &Channel<Out>, code: ErrorCode, message: &str) {
    let _ = channel.offer(
        Out::msg(&ServerMessage::error(code, message)),
        Overflow::DropNewest,
    );
    // The TCP codec writes no WebSocket frames.
    let _ = channel.offer(
        Out::Ws(WsOut::Close(1008, message.to_owned())),
        Overflow::DropNewest,
    );
    channel.close();
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

    async fn active(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        if let Some(limit) = self.node.limits.login_timeout {
            let channel = ctx.channel().clone();
            let node = self.node.clone();
            // Owned by the connection: cancelled when it closes, aborted at login.
            self.login_deadline = Some(ctx.spawn(async move {
                tokio::time::sleep(limit).await;
                node.counters
                    .login_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let message = format!(
                    "no login within {} ms of connecting: send `login` with a token first",
                    limit.as_millis()
                );
                refuse_and_close(&channel, ErrorCode::LoginTimeout, &message);
            })?);
        }
        Ok(())
    }

    async fn read(&mut self, ctx: &mut Ctx<'_>, message: ClientMessage) -> Result<()> {
        match message {
            ClientMessage::Login { token } => {
                if self.claims.is_some() {
                    return fail(ctx, ErrorCode::AlreadyLoggedIn, "already logged in").await;
                }
                let ip = ctx.peer_addr().ip();
                let logins = &self.node.logins;
                if !logins.allowed(ip, Instant::now()) {
                    self.node
                        .counters
                        .logins_rate_limited
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(peer = %ctx.peer_addr(), "login refused: too many failed logins from this address");
                    let message = format!(
                        "too many failed logins from your address (at most {} in {} s): wait, then log in with a valid token",
                        self.node.limits.login_failures,
                        self.node.limits.login_window.as_secs()
                    );
                    refuse_and_close(ctx.channel(), ErrorCode::RateLimited, &message);
                    return Ok(());
                }
                let verified = self.node.signer.verify(&token, token::now());
                if verified.is_err() {
                    logins.failed(ip, Instant::now());
                    self.node
                        .counters
                        .login_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                match verified {
                    Ok(claims) => {
                        if let Some(deadline) = self.login_deadline.take() {
                            ctx.channel().abort(deadline);
                        }
                        let welcome = ServerMessage::Welcome {
                            user: claims.user.clone(),
                            rooms: claims.rooms.clone(),
                        };
                        tracing::debug!(user = %claims.user, channel = %ctx.id(), "logged in");
                        self.claims = Some(claims);
                        reply(ctx, welcome).await
                    }
                    Err(TokenError::Expired) => {
                        fail(
                            ctx,
                            ErrorCode::TokenExpired,
                            "the token has expired: get a new one",
                        )
                        .await
                    }
                    Err(TokenError::Invalid) => {
                        fail(
                            ctx,
                            ErrorCode::InvalidToken,
                            "the token is not valid (malformed, or signed with another secret)",
                        )
                        .await
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
                        match fit_page(room, messages, more, self.node.limits.max_reply) {
                            Some(page) => reply(ctx, page).await,
                            None => {
                                fail(
                                    ctx,
                                    ErrorCode::TooLarge,
                                    "a stored message is larger than a frame (--max-frame): raise --max-frame",
                                )
                                .await
                            }
                        }
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

/// A history page whose JSON fits in `max_bytes` (a frame): the oldest messages are left
/// out (and `more` set) until it does; `None` when not even the newest fits.
fn fit_page(
    room: String,
    mut messages: Vec<crate::protocol::ChatMessage>,
    mut more: bool,
    max_bytes: usize,
) -> Option<ServerMessage> {
    let size = |m: &crate::protocol::ChatMessage| {
        serde_json::to_string(m).map_or(0, |json| json.len() + 1)
    };
    let mut total = 64 + room.len() + messages.iter().map(size).sum::<usize>();
    let mut skip = 0;
    while total > max_bytes && skip < messages.len() {
        total -= size(&messages[skip]);
        skip += 1;
        more = true;
    }
    if skip == messages.len() && skip > 0 {
        return None;
    }
    messages.drain(..skip);
    Some(ServerMessage::History {
        room,
        messages,
        more,
    })
}

impl Session {
    /// Answers a failed store call: `storage_full` when out of space, else `unavailable`.
    async fn unavailable(&self, ctx: &mut Ctx<'_>, error: StoreError) -> Result<()> {
        tracing::warn!(%error, channel = %ctx.id(), "a database call failed");
        let (code, message) = match error {
            StoreError::Full(_) => (
                ErrorCode::StorageFull,
                "the message store is out of space: nothing was stored; reading (join, history) still works; try again later".to_owned(),
            ),
            StoreError::Timeout(limit) => (
                ErrorCode::Unavailable,
                format!(
                    "the message store did not answer within {} ms; try again (a send retried with the same client_id is stored once)",
                    limit.as_millis()
                ),
            ),
            _ => (
                ErrorCode::Unavailable,
                "the message store is unavailable; try again (a send retried with the same client_id is stored once)".to_owned(),
            ),
        };
        fail(ctx, code, message).await
    }
}
