//! LengthFieldCodec in fuzzer-chosen configurations (offset, width, adjustment, strip,
//! byte order, maximum), checked against a reference decoder over the whole input, and
//! re-encoded where the configuration round-trips.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tethernet::codec::LengthFieldCodec;
use tethernet_fuzz::{codec_error_class, max_length, split_config, whole_and_split, Chunking};
use tethernet_fuzz::{decode_all, Event, Limits};
use tokio_util::codec::Encoder;

#[derive(Debug, Arbitrary)]
struct Config {
    /// `LengthFieldCodec::new(max)` (the fast path) instead of the builder.
    plain: bool,
    offset: u8,
    width: u8,
    adjustment: Adjustment,
    strip: u8,
    little_endian: bool,
    max: u8,
    chunking: Chunking,
}

#[derive(Debug, Arbitrary)]
enum Adjustment {
    Small(i8),
    Any(i64),
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    offset: usize,
    width: usize,
    adjustment: i64,
    strip: usize,
    little_endian: bool,
    max: usize,
}

impl Shape {
    fn new(config: &Config) -> Shape {
        let max = max_length(config.max);
        if config.plain {
            return Shape {
                offset: 0,
                width: 4,
                adjustment: 0,
                strip: 4,
                little_endian: false,
                max,
            };
        }
        let offset = usize::from(config.offset % 9);
        let width = [1, 2, 3, 4, 8][usize::from(config.width % 5)];
        let end = offset + width;
        // Mostly around the header's end; sometimes anything.
        let strip = match config.strip {
            s @ 0..=239 => usize::from(s) % (end + 4),
            s => usize::from(s) * 1000,
        };
        let adjustment = match config.adjustment {
            Adjustment::Small(a) => i64::from(a),
            Adjustment::Any(a) => a,
        };
        Shape {
            offset,
            width,
            adjustment,
            strip,
            little_endian: config.little_endian,
            max,
        }
    }

    fn codec(&self, plain: bool) -> LengthFieldCodec {
        if plain {
            return LengthFieldCodec::new(self.max);
        }
        let builder = LengthFieldCodec::builder(self.max)
            .length_field_offset(self.offset)
            .length_field_length(self.width)
            .length_adjustment(self.adjustment)
            .initial_bytes_to_strip(self.strip);
        match self.little_endian {
            true => builder.little_endian(),
            false => builder.big_endian(),
        }
        .build()
    }

    fn end(&self) -> usize {
        self.offset + self.width
    }

    fn read_field(&self, field: &[u8]) -> u64 {
        let mut bytes = field.to_vec();
        if self.little_endian {
            bytes.reverse();
        }
        // Most significant byte first.
        bytes
            .iter()
            .fold(0u64, |value, &b| (value << 8) | u64::from(b))
    }

    /// Netty's algorithm, written plainly, over the whole stream.
    fn reference(&self, data: &[u8]) -> Vec<Event<Vec<u8>>> {
        let invalid = || Event::Framing("invalid frame".into());
        let too_long = || Event::Framing(format!("too long (max {})", self.max));
        let mut events = Vec::new();
        let mut rest = data;
        let end = self.end();
        while !rest.is_empty() {
            if rest.len() < end {
                events.push(invalid());
                return events;
            }
            let value = self.read_field(&rest[self.offset..end]);
            let frame = i128::from(value) + i128::from(self.adjustment) + end as i128;
            if frame < end as i128 {
                events.push(invalid());
                return events;
            }
            if frame > self.max as i128 {
                events.push(too_long());
                return events;
            }
            let frame = frame as usize;
            if frame < self.strip || rest.len() < frame {
                events.push(invalid());
                return events;
            }
            events.push(Event::Item(rest[self.strip..frame].to_vec()));
            rest = &rest[frame..];
        }
        events
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = split_config::<Config>(data) else {
        return;
    };
    let shape = Shape::new(&config);
    let limits = Limits {
        // Waiting for a header, or for the rest of a frame of at most `max`.
        buffered: shape.max.max(shape.end()),
        reserve: shape.max,
    };
    let events = whole_and_split(
        || shape.codec(config.plain),
        input,
        config.chunking,
        &limits,
        codec_error_class,
        |_, frame| {
            assert!(
                frame.len() + shape.strip <= shape.max,
                "{} bytes after stripping {} exceed max {}",
                frame.len(),
                shape.strip,
                shape.max
            );
            frame.to_vec()
        },
    );
    assert_eq!(events, shape.reference(input), "{shape:?}");

    // Offset 0 and the header stripped: re-encoding a frame gives back its bytes.
    let round_trips = shape.offset == 0 && shape.strip == shape.width;
    if round_trips {
        let mut consumed = 0;
        for event in &events {
            if let Event::Item(payload) = event {
                let mut encoded = BytesMut::new();
                shape
                    .codec(config.plain)
                    .encode(&payload[..], &mut encoded)
                    .expect("a decoded frame re-encodes");
                let original = &input[consumed..consumed + encoded.len()];
                assert_eq!(&encoded[..], original, "{shape:?}");
                consumed += encoded.len();
            }
        }
    }

    // The input as a payload: encoded if and only if it fits; decodes back when the
    // configuration round-trips.
    let mut encoded = BytesMut::new();
    let result = shape.codec(config.plain).encode(input, &mut encoded);
    let value = input.len() as i128 - i128::from(shape.adjustment);
    let max_value = match shape.width {
        8 => i128::from(u64::MAX),
        width => (1i128 << (8 * width)) - 1,
    };
    let fits = shape.width + input.len() <= shape.max && value >= 0 && value <= max_value;
    assert_eq!(result.is_ok(), fits, "{shape:?}: {result:?}");
    if fits {
        assert_eq!(encoded.len(), shape.width + input.len());
        if round_trips {
            let decoded = decode_all(shape.codec(config.plain), &encoded);
            assert_eq!(decoded.len(), 1);
            assert_eq!(&decoded[0][..], input);
        }
    } else {
        assert!(encoded.is_empty(), "a refused payload wrote bytes");
    }
});
