//! DelimiterCodec with a fuzzer-chosen delimiter of 1 to 4 bytes (self-overlapping ones
//! included), checked against a reference splitter over the whole input, and re-encoded.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tethernet::codec::DelimiterCodec;
use tethernet_fuzz::{codec_error_class, decode_all, max_length, split_config, whole_and_split};
use tethernet_fuzz::{Chunking, Event, Limits};
use tokio_util::codec::Encoder;

#[derive(Debug, Arbitrary)]
struct Config {
    delimiter_length: u8,
    /// Delimiter bytes, from a 4-letter alphabet half the time so that delimiters overlap
    /// themselves ("aa", "abab") and the input often contains them.
    delimiter: [u8; 4],
    alphabet: bool,
    max: u8,
    chunking: Chunking,
}

/// Position of the first `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The frames of the whole stream.
fn reference(data: &[u8], delimiter: &[u8], max: usize) -> Vec<Event<Vec<u8>>> {
    let too_long = Event::Framing(format!("too long (max {max})"));
    let mut events = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (frame, next) = match find(rest, delimiter) {
            Some(at) => (&rest[..at], &rest[at + delimiter.len()..]),
            None => (rest, &[][..]),
        };
        if frame.len() > max {
            events.push(too_long);
            return events;
        }
        events.push(Event::Item(frame.to_vec()));
        rest = next;
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = split_config::<Config>(data) else {
        return;
    };
    let length = usize::from(config.delimiter_length % 4) + 1;
    let delimiter: Vec<u8> = config.delimiter[..length]
        .iter()
        .map(|&b| if config.alphabet { b'a' + b % 4 } else { b })
        .collect();
    let max = max_length(config.max);
    // A frame of `max` bytes and all but the last byte of its delimiter.
    let limits = Limits {
        buffered: max.saturating_add(length - 1),
        reserve: 0,
    };
    let codec = || DelimiterCodec::new(&delimiter, max);
    let events = whole_and_split(
        codec,
        input,
        config.chunking,
        &limits,
        codec_error_class,
        |_, frame| {
            assert!(
                frame.len() <= max,
                "frame of {} bytes, max {max}",
                frame.len()
            );
            frame.to_vec()
        },
    );
    assert_eq!(events, reference(input, &delimiter, max), "{delimiter:?}");

    // What the encoder accepts decodes back to itself: decoded frames, and the input.
    let payloads = events.iter().filter_map(|event| match event {
        Event::Item(frame) => Some(&frame[..]),
        _ => None,
    });
    for payload in payloads.chain([input]) {
        let mut encoded = BytesMut::new();
        if codec().encode(payload, &mut encoded).is_ok() {
            let decoded = decode_all(codec(), &encoded);
            assert_eq!(decoded.len(), 1, "{delimiter:?} {payload:?}");
            assert_eq!(&decoded[0][..], payload, "{delimiter:?}");
        } else {
            assert!(encoded.is_empty(), "a refused payload wrote bytes");
        }
    }
});
