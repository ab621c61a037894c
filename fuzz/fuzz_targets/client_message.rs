//! The gateway's client message parser: `ClientMessage` from JSON bytes, as the TCP
//! transport parses frames (`from_slice`) and the WebSocket one text (`from_str`); no
//! panic, both agree, and the queue-cap size of a message and the error text given back
//! to the client stay proportional to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tethernet::MessageSize;
use tethernet_gateway::protocol::{valid_room, ClientMessage};

fuzz_target!(|data: &[u8]| {
    let parsed = serde_json::from_slice::<ClientMessage>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let from_str = serde_json::from_str::<ClientMessage>(text);
        match (&parsed, &from_str) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("from_slice {parsed:?} but from_str {from_str:?}"),
        }
    }
    match parsed {
        Ok(message) => {
            let size = message.message_size();
            assert!(size >= std::mem::size_of::<ClientMessage>());
            // A ping id is counted at 16 bytes per character of its JSON text, which can
            // be a few times longer than the input (`9e15` is `9000000000000000.0`).
            assert!(
                size <= std::mem::size_of::<ClientMessage>() + 128 * data.len(),
                "{size} bytes for {} bytes of input",
                data.len()
            );
            match &message {
                ClientMessage::Login { token } => assert!(token.len() <= data.len()),
                ClientMessage::Join { room, .. }
                | ClientMessage::Leave { room }
                | ClientMessage::History { room, .. } => {
                    assert!(room.len() <= data.len());
                    let _ = valid_room(room);
                }
                ClientMessage::Send {
                    room,
                    body,
                    client_id,
                } => {
                    assert!(room.len() + body.len() <= data.len());
                    assert!(client_id.as_ref().map_or(0, String::len) <= data.len());
                    let _ = valid_room(room);
                }
                ClientMessage::Ping { .. } => {}
                ClientMessage::Invalid { .. } | ClientMessage::Closing { .. } => {
                    panic!("{message:?} is made by the transports, never parsed")
                }
            }
        }
        Err(error) => {
            // What the transports answer with (`bad_request`): it may quote the input
            // (an unknown type or field, escaped), but no more than a few times over.
            let reason = format!("not a valid message: {error}");
            assert!(
                reason.len() <= 1024 + 10 * data.len(),
                "{} bytes of error for {} bytes of input",
                reason.len(),
                data.len()
            );
        }
    }
});
