//! LineCodec: lines terminated by `\n` or `\r\n`, checked against a reference splitter
//! over the whole input, and re-encoded.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tethernet::codec::LineCodec;
use tethernet_fuzz::{codec_error_class, decode_all, max_length, split_config, whole_and_split};
use tethernet_fuzz::{Chunking, Event, Limits};
use tokio_util::codec::Encoder;

#[derive(Debug, Arbitrary)]
struct Config {
    max: u8,
    chunking: Chunking,
}

/// A line without its trailing `\r`, as text or as the UTF-8 error.
fn text(line: &[u8]) -> Event<String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match std::str::from_utf8(line) {
        Ok(text) => Event::Item(text.to_owned()),
        Err(err) => Event::Content(format!("invalid UTF-8 after {}", err.valid_up_to())),
    }
}

/// The lines of the whole stream.
fn reference(data: &[u8], max: usize) -> Vec<Event<String>> {
    let too_long = Event::Framing(format!("too long (max {max})"));
    let mut events = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(newline) => (&rest[..newline], &rest[newline + 1..]),
            None => (rest, &[][..]),
        };
        if line.strip_suffix(b"\r").unwrap_or(line).len() > max {
            events.push(too_long);
            return events;
        }
        events.push(text(line));
        rest = next;
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = split_config::<Config>(data) else {
        return;
    };
    let max = max_length(config.max);
    // A line of `max` bytes and its `\r`, waiting for the `\n`.
    let limits = Limits {
        buffered: max.saturating_add(1),
        reserve: 0,
    };
    let events = whole_and_split(
        || LineCodec::new(max),
        input,
        config.chunking,
        &limits,
        codec_error_class,
        |_, line| {
            assert!(line.len() <= max, "line of {} bytes, max {max}", line.len());
            assert!(!line.contains('\n'));
            line
        },
    );
    assert_eq!(events, reference(input, max));

    // Every decoded line re-encodes unless it ends with `\r`, and decodes back.
    for event in &events {
        if let Event::Item(line) = event {
            let mut encoded = BytesMut::new();
            let result = LineCodec::new(max).encode(line, &mut encoded);
            assert_eq!(
                result.is_ok(),
                !line.ends_with('\r'),
                "{line:?}: {result:?}"
            );
            if result.is_ok() {
                assert_eq!(
                    decode_all(LineCodec::new(max), &encoded),
                    std::slice::from_ref(line)
                );
            }
        }
    }
});
