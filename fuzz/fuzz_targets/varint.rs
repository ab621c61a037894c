//! VarintLengthCodec: base-128 varint32 length prefixes (non-minimal, over-long and
//! over-32-bit ones included), checked against a reference decoder, and re-encoded.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tethernet::codec::VarintLengthCodec;
use tethernet_fuzz::{codec_error_class, decode_all, max_length, split_config, whole_and_split};
use tethernet_fuzz::{Chunking, Event, Limits};
use tokio_util::codec::Encoder;

#[derive(Debug, Arbitrary)]
struct Config {
    max: u8,
    chunking: Chunking,
}

/// The frames of the whole stream.
fn reference(data: &[u8], max: usize) -> Vec<Event<Vec<u8>>> {
    let invalid = Event::Framing("invalid frame".into());
    let mut events = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // The header ends at the first byte without the high bit, within 5 bytes.
        let Some(last) = rest.iter().take(5).position(|&b| b & 0x80 == 0) else {
            events.push(invalid);
            return events;
        };
        let value = rest[..=last]
            .iter()
            .rev()
            .fold(0u64, |value, &b| (value << 7) | u64::from(b & 0x7F));
        if value > u64::from(u32::MAX) {
            events.push(invalid);
            return events;
        }
        if value > max as u64 {
            events.push(Event::Framing(format!("too long (max {max})")));
            return events;
        }
        let (header, length) = (last + 1, value as usize);
        if rest.len() < header + length {
            events.push(invalid);
            return events;
        }
        events.push(Event::Item(rest[header..header + length].to_vec()));
        rest = &rest[header + length..];
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = split_config::<Config>(data) else {
        return;
    };
    let max = max_length(config.max);
    let limits = Limits {
        buffered: max + 5,
        reserve: max + 5,
    };
    let events = whole_and_split(
        || VarintLengthCodec::new(max),
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
    assert_eq!(events, reference(input, max));

    let payloads = events.iter().filter_map(|event| match event {
        Event::Item(frame) => Some(&frame[..]),
        _ => None,
    });
    for payload in payloads.chain([input]) {
        let mut encoded = BytesMut::new();
        let result = VarintLengthCodec::new(max).encode(payload, &mut encoded);
        assert_eq!(result.is_ok(), payload.len() <= max, "{result:?}");
        if result.is_ok() {
            let decoded = decode_all(VarintLengthCodec::new(max), &encoded);
            assert_eq!(decoded.len(), 1);
            assert_eq!(&decoded[0][..], payload);
        }
    }
});
