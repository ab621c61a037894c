//! FixedLengthCodec: frames of exactly the configured length, a truncated one at the end
//! of the stream an error, and frames re-encoded to their own bytes.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tethernet::codec::FixedLengthCodec;
use tethernet_fuzz::{codec_error_class, max_length, split_config, whole_and_split};
use tethernet_fuzz::{Chunking, Event, Limits};
use tokio_util::codec::Encoder;

#[derive(Debug, Arbitrary)]
struct Config {
    small: bool,
    length: u8,
    chunking: Chunking,
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = split_config::<Config>(data) else {
        return;
    };
    let length = match config.small {
        true => usize::from(config.length % 16) + 1,
        false => max_length(config.length).max(1),
    };
    let limits = Limits {
        buffered: length - 1,
        reserve: length,
    };
    let events = whole_and_split(
        || FixedLengthCodec::new(length),
        input,
        config.chunking,
        &limits,
        codec_error_class,
        |_, frame| frame.to_vec(),
    );
    let mut expected: Vec<Event<Vec<u8>>> = input
        .chunks_exact(length)
        .map(|frame| Event::Item(frame.to_vec()))
        .collect();
    if input.len() % length != 0 {
        expected.push(Event::Framing("invalid frame".into()));
    }
    assert_eq!(events, expected);

    let mut encoded = BytesMut::new();
    for event in &events {
        if let Event::Item(frame) = event {
            FixedLengthCodec::new(length)
                .encode(&frame[..], &mut encoded)
                .expect("a frame re-encodes");
        }
    }
    assert_eq!(&encoded[..], &input[..encoded.len()]);
    let result = FixedLengthCodec::new(length).encode(input, &mut BytesMut::new());
    assert_eq!(result.is_ok(), input.len() == length);
});
