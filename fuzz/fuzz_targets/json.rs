//! JsonCodec over length-prefixed and newline-delimited framing, as `serde_json::Value`
//! and as a typed struct: the same frames as the framing codec alone, each parsed as
//! `serde_json::from_slice` would (deep nesting included), bad ones consumed and
//! reported, and values re-encoded.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tethernet::codec::{CodecError, DelimiterCodec, JsonCodec, LengthFieldCodec};
use tethernet_fuzz::{codec_error_class, decode_all, max_length, split_config, whole_and_split};
use tethernet_fuzz::{Chunking, Event, Limits};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Debug, Arbitrary)]
struct Config {
    delimited: bool,
    max: u8,
    chunking: Chunking,
}

/// A typed message, with the serde features protocols use.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Typed {
    A {
        n: u32,
        #[serde(default)]
        s: Option<String>,
    },
    B {
        items: Vec<i64>,
        #[serde(default)]
        nested: Option<Box<Typed>>,
    },
}

/// Equal, with floats within a few units in the last place (serde_json parses floats
/// to the nearest value only with its `float_roundtrip` feature).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}

fn error_class<T>(event: &Event<T>) -> Option<&String> {
    match event {
        Event::Item(_) => None,
        Event::Content(class) | Event::Framing(class) => Some(class),
    }
}

fn check<C>(make: impl Fn() -> C, input: &[u8], config: &Config, limits: &Limits)
where
    C: Decoder<Error = CodecError> + for<'a> Encoder<&'a [u8]>,
    C::Item: AsRef<[u8]>,
    for<'a> <C as Encoder<&'a [u8]>>::Error: Into<CodecError>,
{
    let values = whole_and_split(
        || JsonCodec::<Value, C>::new(make()),
        input,
        config.chunking,
        limits,
        codec_error_class,
        |_, value| value,
    );
    let typed = whole_and_split(
        || JsonCodec::<Typed, C>::new(make()),
        input,
        config.chunking,
        limits,
        codec_error_class,
        |_, value| value,
    );
    let frames = whole_and_split(
        &make,
        input,
        config.chunking,
        limits,
        codec_error_class,
        |_, frame| frame.as_ref().to_vec(),
    );
    assert_eq!(values.len(), frames.len());
    assert_eq!(typed.len(), frames.len());
    for ((frame, value), typed) in frames.iter().zip(&values).zip(&typed) {
        match frame {
            Event::Item(frame) => {
                let expected = serde_json::from_slice::<Value>(frame).ok();
                match value {
                    Event::Item(value) => assert_eq!(Some(value), expected.as_ref()),
                    _ => assert!(expected.is_none(), "{value:?} for {frame:?}"),
                }
                // A typed message is also a JSON value.
                if let Event::Item(_) = typed {
                    assert!(matches!(value, Event::Item(_)));
                }
            }
            Event::Content(class) | Event::Framing(class) => {
                let class = Some(class);
                assert_eq!(error_class(value), class);
                assert_eq!(error_class(typed), class);
            }
        }
    }
    for event in &values {
        if let Event::Item(value) = event {
            let mut encoded = BytesMut::new();
            // Re-encoded text can be longer than the frame (`1E2` is `100.0`).
            if JsonCodec::<Value, C>::new(make())
                .encode(value, &mut encoded)
                .is_ok()
            {
                let decoded = decode_all(JsonCodec::<Value, C>::new(make()), &encoded);
                assert_eq!(decoded.len(), 1);
                assert!(same(&decoded[0], value), "{value} became {}", decoded[0]);
            }
        }
    }
    for event in &typed {
        if let Event::Item(value) = event {
            let mut encoded = BytesMut::new();
            if JsonCodec::<Typed, C>::new(make())
                .encode(value, &mut encoded)
                .is_ok()
            {
                let decoded = decode_all(JsonCodec::<Typed, C>::new(make()), &encoded);
                assert_eq!(decoded.iter().collect::<Vec<_>>(), [value]);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = split_config::<Config>(data) else {
        return;
    };
    let max = max_length(config.max);
    let limits = Limits {
        // A length header waits for 4 bytes even when `max` is smaller.
        buffered: max.max(4) + 1,
        reserve: max,
    };
    match config.delimited {
        false => check(|| LengthFieldCodec::new(max), input, &config, &limits),
        true => check(|| DelimiterCodec::new(b"\n", max), input, &config, &limits),
    }
});
