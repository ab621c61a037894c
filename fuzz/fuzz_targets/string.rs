//! StringCodec over each framing codec: the same frames as the framing codec alone,
//! each converted as `std::str::from_utf8` would (characters split across reads
//! included), an invalid frame consumed and reported, and strings re-encoded.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tethernet::codec::{
    DelimiterCodec, FixedLengthCodec, LengthFieldCodec, StringCodec, VarintLengthCodec,
};
use tethernet_fuzz::{codec_error_class, decode_all, max_length, split_config, whole_and_split};
use tethernet_fuzz::{Chunking, Event, Limits};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Debug, Arbitrary)]
struct Config {
    framing: u8,
    max: u8,
    chunking: Chunking,
}

/// Runs `StringCodec<C>` and `C` over the input and compares them.
fn check<C>(make: impl Fn() -> C, input: &[u8], config: &Config, limits: &Limits)
where
    C: Decoder<Error = tethernet::codec::CodecError> + for<'a> Encoder<&'a [u8]>,
    C::Item: AsRef<[u8]>,
    for<'a> <C as Encoder<&'a [u8]>>::Error: Into<tethernet::codec::CodecError>,
{
    let strings = whole_and_split(
        || StringCodec::new(make()),
        input,
        config.chunking,
        limits,
        codec_error_class,
        |_, text| text,
    );
    let frames = whole_and_split(
        &make,
        input,
        config.chunking,
        limits,
        codec_error_class,
        |_, frame| frame.as_ref().to_vec(),
    );
    let expected: Vec<Event<String>> = frames
        .into_iter()
        .map(|event| match event {
            Event::Item(frame) => match String::from_utf8(frame) {
                Ok(text) => Event::Item(text),
                Err(err) => Event::Content(format!(
                    "invalid UTF-8 after {}",
                    err.utf8_error().valid_up_to()
                )),
            },
            Event::Content(class) => Event::Content(class),
            Event::Framing(class) => Event::Framing(class),
        })
        .collect();
    assert_eq!(strings, expected);
    for event in &strings {
        if let Event::Item(text) = event {
            let mut encoded = BytesMut::new();
            StringCodec::new(make())
                .encode(text, &mut encoded)
                .expect("a decoded string re-encodes");
            assert_eq!(
                decode_all(StringCodec::new(make()), &encoded),
                std::slice::from_ref(text)
            );
        }
    }
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
    match config.framing % 4 {
        0 => check(|| LengthFieldCodec::new(max), input, &config, &limits),
        1 => check(
            || DelimiterCodec::new(b"\r\n", max),
            input,
            &config,
            &limits,
        ),
        2 => check(|| VarintLengthCodec::new(max), input, &config, &limits),
        _ => check(
            || FixedLengthCodec::new(max.clamp(1, 64)),
            input,
            &config,
            &limits,
        ),
    }
});
