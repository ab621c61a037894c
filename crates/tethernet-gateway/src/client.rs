//! A small terminal client over TCP: type a line to send it to the current room;
//! `/join ROOM`, `/leave`, `/history`, `/quit`.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::protocol::ServerMessage;

/// Runs the client until `/quit`, end of input, or the server closes.
pub fn run(addr: SocketAddr, token: &str, room: &str) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(chat(addr, token, room))
}

fn line(value: serde_json::Value) -> bytes::Bytes {
    bytes::Bytes::from(value.to_string())
}

async fn chat(addr: SocketAddr, token: &str, room: &str) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(1 << 20)
        .new_codec();
    let mut server = Framed::new(stream, codec);
    server
        .send(line(serde_json::json!({"type": "login", "token": token})))
        .await?;
    let mut room = room.to_owned();
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut sent = 0u64;
    loop {
        tokio::select! {
            typed = input.next_line() => {
                let Some(typed) = typed? else { return Ok(()) };
                let typed = typed.trim();
                let request = if typed == "/quit" {
                    return Ok(());
                } else if let Some(next) = typed.strip_prefix("/join ") {
                    room = next.trim().to_owned();
                    serde_json::json!({"type": "join", "room": room})
                } else if typed == "/leave" {
                    serde_json::json!({"type": "leave", "room": room})
                } else if typed == "/history" {
                    serde_json::json!({"type": "history", "room": room, "limit": 20})
                } else if typed.is_empty() {
                    continue;
                } else {
                    sent += 1;
                    serde_json::json!({"type": "send", "room": room, "body": typed, "client_id": format!("cli-{}-{sent}", std::process::id())})
                };
                server.send(line(request)).await?;
            }
            frame = server.next() => {
                let Some(frame) = frame else {
                    println!("* the server closed the connection");
                    return Ok(());
                };
                let frame = frame?;
                match serde_json::from_slice::<ServerMessage>(&frame) {
                    Ok(message) => show(&message, &room, &mut server).await?,
                    Err(_) => println!("* {}", String::from_utf8_lossy(&frame)),
                }
            }
        }
    }
}

async fn show(
    message: &ServerMessage,
    room: &str,
    server: &mut Framed<TcpStream, LengthDelimitedCodec>,
) -> std::io::Result<()> {
    match message {
        ServerMessage::Welcome { user, .. } => {
            println!("* logged in as {user}; joining {room}");
            server
                .send(line(serde_json::json!({"type": "join", "room": room})))
                .await?;
        }
        ServerMessage::Joined { room, seq } => println!("* joined {room} (latest #{seq})"),
        ServerMessage::Left { room } => println!("* left {room}"),
        ServerMessage::Message(m) => println!("[{}] #{} {}: {}", m.room, m.seq, m.sender, m.body),
        ServerMessage::History { messages, more, .. } => {
            for m in messages {
                println!("[{}] #{} {}: {}", m.room, m.seq, m.sender, m.body);
            }
            if *more {
                println!("* (older messages exist)");
            }
        }
        ServerMessage::Ack { .. } | ServerMessage::Pong { .. } => {}
        ServerMessage::Gap { room, after } => {
            println!("* may have missed messages in {room} after #{after}; catching up");
            server
                .send(line(
                    serde_json::json!({"type": "join", "room": room, "since": after}),
                ))
                .await?;
        }
        ServerMessage::Error { code, message } => println!("! {code:?}: {message}"),
    }
    Ok(())
}
