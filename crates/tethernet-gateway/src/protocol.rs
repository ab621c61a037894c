//! The gateway's messages: JSON objects tagged by `"type"`, the same over TCP (4-byte
//! big-endian length prefix) and WebSocket (one text frame each). `docs/PROTOCOL.md`
//! describes them for client authors.

use serde::{Deserialize, Serialize};

/// Longest room name accepted.
pub const MAX_ROOM_LEN: usize = 64;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Authenticate with a token minted by `tethernet-gateway token`.
    Login {
        /// The signed token.
        token: String,
    },
    /// Join a room; with `since`, also receive the messages after that sequence number.
    Join {
        /// The room.
        room: String,
        /// The last sequence number the client has seen in this room.
        #[serde(default)]
        since: Option<i64>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: String,
    },
    /// Post a message to a room the client has joined.
    Send {
        /// The room.
        room: String,
        /// The text.
        body: String,
        /// A client-chosen id: a retry with the same id is acknowledged with the first
        /// sequence number and stored once.
        #[serde(default)]
        client_id: Option<String>,
    },
    /// Page back through a room's history.
    History {
        /// The room.
        room: String,
        /// Only messages with a sequence number below this (default: the newest).
        #[serde(default)]
        before: Option<i64>,
        /// How many at most (default 50, at most 200).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Liveness check.
    Ping {
        /// Echoed back.
        #[serde(default)]
        id: Option<serde_json::Value>,
    },
    /// (Made by the transport, never sent by clients.) A frame that was not a valid
    /// message: answered with `bad_request` in its place among the replies.
    #[serde(skip)]
    Invalid {
        /// Why.
        reason: String,
    },
    /// (Made by the WebSocket transport.) The peer sent a close frame: the close is
    /// answered after every request before it.
    #[serde(skip)]
    Closing {
        /// The peer's close code.
        code: u16,
    },
}

/// Measured for the executor queue's byte cap: the message and the strings it owns.
impl tethernet::MessageSize for ClientMessage {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + match self {
                ClientMessage::Login { token } => token.capacity(),
                ClientMessage::Join { room, .. }
                | ClientMessage::Leave { room }
                | ClientMessage::History { room, .. } => room.capacity(),
                ClientMessage::Send {
                    room,
                    body,
                    client_id,
                } => {
                    room.capacity()
                        + body.capacity()
                        + client_id.as_ref().map_or(0, String::capacity)
                }
                // A ping id is arbitrary JSON: counted generously (a parsed value takes
                // far more memory than its text).
                ClientMessage::Ping { id } => id.as_ref().map_or(0, |id| 16 * id.to_string().len()),
                ClientMessage::Invalid { reason } => reason.capacity(),
                ClientMessage::Closing { .. } => 0,
            }
    }
}

/// A stored message, as pushed to room members and returned by history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The room.
    pub room: String,
    /// Its sequence number in the room: 1, 2, 3... with no gaps.
    pub seq: i64,
    /// Who sent it.
    pub sender: String,
    /// The text.
    pub body: String,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub time: i64,
}

/// What the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Login accepted.
    Welcome {
        /// The user.
        user: String,
        /// The rooms the token allows (`*` for any).
        rooms: Vec<String>,
    },
    /// Joined a room; `seq` is its newest sequence number.
    Joined {
        /// The room.
        room: String,
        /// The newest sequence number in the room (0 when empty).
        seq: i64,
    },
    /// Left a room.
    Left {
        /// The room.
        room: String,
    },
    /// A message was stored.
    Ack {
        /// The room.
        room: String,
        /// Its sequence number.
        seq: i64,
        /// The client id sent with it, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// True when this was a retry of a message already stored.
        duplicate: bool,
    },
    /// A message in a joined room (pushed).
    Message(ChatMessage),
    /// A page of history, oldest first.
    History {
        /// The room.
        room: String,
        /// The messages.
        messages: Vec<ChatMessage>,
        /// True when older messages exist.
        more: bool,
    },
    /// Messages after `after` may have been missed (the bus was interrupted): fetch them
    /// with `join` + `since`, or `history`.
    Gap {
        /// The room.
        room: String,
        /// The last sequence number this node had delivered before the interruption.
        after: i64,
    },
    /// Reply to `ping`.
    Pong {
        /// The ping's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<serde_json::Value>,
    },
    /// A request failed.
    Error {
        /// A stable, machine-readable code (see [`ErrorCode`]).
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

/// Error codes (`docs/PROTOCOL.md` lists when each is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a valid message.
    BadRequest,
    /// Login first.
    NotLoggedIn,
    /// Already logged in.
    AlreadyLoggedIn,
    /// The token's signature or format is wrong.
    InvalidToken,
    /// The token has expired.
    TokenExpired,
    /// The token does not allow this room.
    Forbidden,
    /// Join the room first.
    NotJoined,
    /// The request is too large (a body, a room name).
    TooLarge,
    /// The database failed or did not answer in time; try again.
    Unavailable,
    /// The database is out of space: nothing was stored; reads still work.
    StorageFull,
    /// Too many rooms joined.
    TooManyRooms,
    /// Too many failed logins from this address; the connection is closed.
    RateLimited,
    /// No login within the login deadline; the connection is closed.
    LoginTimeout,
}

impl ServerMessage {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages serialize")
    }
}

/// Checks a room name: 1–64 characters of letters, digits, `-`, `_`, `.`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"join","room":"lobby","since":3}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                room: "lobby".into(),
                since: Some(3)
            }
        );
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"send","room":"a","body":"hi"}"#).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Send {
                client_id: None,
                ..
            }
        ));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"leave","room":"a","x":1}"#).is_err()
        );
    }

    #[test]
    fn server_messages_serialize_flat() {
        let m = ServerMessage::Message(ChatMessage {
            room: "lobby".into(),
            seq: 7,
            sender: "ada".into(),
            body: "hi".into(),
            time: 1,
        });
        assert_eq!(
            m.to_json(),
            r#"{"type":"message","room":"lobby","seq":7,"sender":"ada","body":"hi","time":1}"#
        );
        assert_eq!(
            ServerMessage::error(ErrorCode::NotJoined, "join first").to_json(),
            r#"{"type":"error","code":"not_joined","message":"join first"}"#
        );
        for (code, text) in [
            (ErrorCode::StorageFull, "storage_full"),
            (ErrorCode::RateLimited, "rate_limited"),
            (ErrorCode::LoginTimeout, "login_timeout"),
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), text);
        }
    }

    #[test]
    fn room_names() {
        assert!(valid_room("lobby-1.dev_x"));
        assert!(!valid_room(""));
        assert!(!valid_room("a b"));
        assert!(!valid_room(&"x".repeat(65)));
    }
}
