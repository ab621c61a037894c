//! Inputs from fuzzing the codecs (`fuzz/`, run with `scripts/fuzz.sh`): the nasty ones
//! the fuzzers' corpora show are interesting, and any input that ever crashed a target.
//! Each must give a clear error (or the right frames), never a panic, and must not make
//! the decoder reserve the size a header claims: the read buffer's capacity stays small.

use bytes::BytesMut;
use serde_json::Value;
use tethernet::codec::{
    CodecError, DelimiterCodec, FixedLengthCodec, JsonCodec, LengthFieldCodec, LineCodec,
    StringCodec, VarintLengthCodec,
};
use tokio_util::codec::Decoder;

/// Most a read buffer may grow to in these tests: far below any size a header claims.
const SMALL: usize = 64 * 1024;

/// What [`feed`] saw: the items (and content errors), the error that ended the stream if
/// any, and the largest capacity the read buffer reached.
type Fed<D> = (
    Vec<Result<<D as Decoder>::Item, String>>,
    Option<CodecError>,
    usize,
);

/// Feeds `reads` one after the other, decoding after each, then ends the stream: the
/// items, then the first error if there was one (content errors, after which decoding
/// goes on, are collected with the items).
fn feed<D>(codec: &mut D, reads: &[&[u8]]) -> Fed<D>
where
    D: Decoder<Error = CodecError>,
{
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut max_capacity = 0;
    let mut step = |codec: &mut D, buf: &mut BytesMut, eof: bool| loop {
        let result = match eof {
            false => codec.decode(buf),
            true => codec.decode_eof(buf),
        };
        max_capacity = max_capacity.max(buf.capacity());
        match result {
            Ok(Some(item)) => items.push(Ok(item)),
            Ok(None) => return None,
            Err(err @ (CodecError::InvalidUtf8 { .. } | CodecError::Json(_))) => {
                items.push(Err(err.to_string()))
            }
            Err(err) => return Some(err),
        }
    };
    for read in reads {
        buf.extend_from_slice(read);
        if let Some(err) = step(codec, &mut buf, false) {
            // Framing errors stick: the stream is unsynchronised.
            assert!(codec.decode(&mut buf).is_err(), "recovered after {err}");
            return (items, Some(err), max_capacity);
        }
    }
    let err = step(codec, &mut buf, true);
    if err.is_none() {
        assert!(buf.is_empty(), "{} bytes left at the end", buf.len());
    }
    (items, err, max_capacity)
}

fn frames(items: Vec<Result<tethernet::Frame, String>>) -> Vec<Vec<u8>> {
    items
        .into_iter()
        .map(|item| item.unwrap().to_vec())
        .collect()
}

#[test]
fn length_header_claiming_4_gib_is_refused_without_reserving_it() {
    let mut codec = LengthFieldCodec::new(1 << 20);
    let (items, err, capacity) = feed(&mut codec, &[b"\xFF\xFF\xFF\xFF", &[0; 1024]]);
    assert!(items.is_empty());
    let err = err.expect("an error");
    assert!(
        matches!(
            err,
            CodecError::FrameTooLong {
                length: 0x1_0000_0003,
                max: 1_048_576
            }
        ),
        "{err}"
    );
    assert!(capacity < SMALL, "capacity {capacity}");
    // The same header trickled in, one byte per read, behind a good frame.
    let mut codec = LengthFieldCodec::new(1 << 20);
    let input = [&b"\x00\x00\x00\x02hi"[..], b"\xFF\xFF\xFF\xFF"].concat();
    let reads: Vec<&[u8]> = input.chunks(1).collect();
    let (items, err, capacity) = feed(&mut codec, &reads);
    assert_eq!(frames(items), [b"hi"]);
    assert!(err.unwrap().is_frame_too_long());
    assert!(capacity < SMALL, "capacity {capacity}");
}

#[test]
fn eight_byte_length_fields_at_the_extremes_do_not_overflow() {
    // u64::MAX plus the largest positive adjustment: too long, not an overflow.
    let mut codec = LengthFieldCodec::builder(1 << 20)
        .length_field_length(8)
        .length_adjustment(i64::MAX)
        .little_endian()
        .build();
    let (items, err, capacity) = feed(&mut codec, &[&[0xFF; 8]]);
    assert!(items.is_empty() && err.unwrap().is_frame_too_long());
    assert!(capacity < SMALL, "capacity {capacity}");
    // The most negative adjustment: shorter than the header, not an underflow.
    let mut codec = LengthFieldCodec::builder(1 << 20)
        .length_field_offset(8)
        .length_field_length(8)
        .length_adjustment(i64::MIN)
        .build();
    let (_, err, _) = feed(&mut codec, &[&[0; 16]]);
    assert!(matches!(err, Some(CodecError::InvalidFrame(_))), "{err:?}");
    // A 3-byte field read big- and little-endian.
    for (codec, expected) in [
        (
            LengthFieldCodec::builder(64).length_field_length(3),
            &b"\x00\x00\x02ab"[..],
        ),
        (
            LengthFieldCodec::builder(64)
                .length_field_length(3)
                .little_endian(),
            &b"\x02\x00\x00ab"[..],
        ),
    ] {
        let mut codec = codec.initial_bytes_to_strip(3).build();
        let (items, err, _) = feed(&mut codec, &[expected]);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(frames(items), [b"ab"]);
    }
}

#[test]
fn stripping_more_than_the_frame_is_an_error_not_a_panic() {
    let mut codec = LengthFieldCodec::builder(1 << 20)
        .length_field_length(1)
        .initial_bytes_to_strip(240_000)
        .build();
    let (items, err, _) = feed(&mut codec, &[b"\x05hello"]);
    assert!(items.is_empty());
    assert!(matches!(err, Some(CodecError::InvalidFrame(_))), "{err:?}");
}

#[test]
fn header_behind_a_long_offset_waits_then_fails_on_max() {
    // max (4) is below the header's end (9 + 2): the header is still waited for, then
    // the frame is refused.
    let mut codec = LengthFieldCodec::builder(4)
        .length_field_offset(9)
        .length_field_length(2)
        .build();
    let (items, err, _) = feed(&mut codec, &[&[0; 10], &[0]]);
    assert!(items.is_empty() && err.unwrap().is_frame_too_long());
}

#[test]
fn varint_of_10_bytes_is_refused_at_the_5th() {
    let ten = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    let mut codec = VarintLengthCodec::new(1 << 20);
    let (items, err, capacity) = feed(&mut codec, &ten.chunks(1).collect::<Vec<_>>());
    assert!(items.is_empty());
    let err = err.unwrap();
    assert!(
        matches!(&err, CodecError::InvalidFrame(m) if m.contains("longer than 5 bytes")),
        "{err}"
    );
    assert!(capacity < SMALL, "capacity {capacity}");
}

#[test]
fn varint_over_32_bits_or_claiming_4_gib_is_refused() {
    // Five bytes whose last has bits above bit 31.
    let (_, err, _) = feed(
        &mut VarintLengthCodec::new(1 << 20),
        &[&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F]],
    );
    assert!(matches!(err, Some(CodecError::InvalidFrame(ref m)) if m.contains("32 bits")));
    // u32::MAX (4 GiB - 1): too long, and nothing reserved.
    let (_, err, capacity) = feed(
        &mut VarintLengthCodec::new(1 << 20),
        &[&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F], &[0; 100]],
    );
    assert!(
        matches!(
            err,
            Some(CodecError::FrameTooLong {
                length: 0xFFFF_FFFF,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(capacity < SMALL, "capacity {capacity}");
}

#[test]
fn non_minimal_varints_are_accepted() {
    // 0 as two bytes, 1 as five bytes.
    let input = [0x80, 0x00, 0x81, 0x80, 0x80, 0x80, 0x00, b'x'];
    let (items, err, _) = feed(&mut VarintLengthCodec::new(16), &[&input]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames(items), [&b""[..], b"x"]);
}

#[test]
fn invalid_utf8_split_across_reads() {
    // A character split across reads is fine; a truncated one is an error for its frame
    // only, and the next frame decodes.
    let mut codec = StringCodec::new(LengthFieldCodec::new(64));
    let reads: [&[u8]; 4] = [
        b"\x00\x00\x00\x02\xC3",
        b"\xA9\x00\x00\x00\x02a",
        b"\xE2",
        b"\x00\x00\x00\x01z",
    ];
    let (items, err, _) = feed(&mut codec, &reads);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].as_deref(), Ok("é"));
    assert!(
        items[1]
            .as_ref()
            .unwrap_err()
            .contains("valid up to byte 1"),
        "{items:?}"
    );
    assert_eq!(items[2].as_deref(), Ok("z"));
    // The same with lines: a 3-byte character split over three reads, then an invalid
    // one (a lone continuation byte).
    let mut codec = LineCodec::new(64);
    let (items, err, _) = feed(
        &mut codec,
        &[b"\xE2", b"\x82", b"\xAC\n\x82", b"\r", b"\nok"],
    );
    assert!(err.is_none(), "{err:?}");
    assert_eq!(items[0].as_deref(), Ok("€"));
    assert!(items[1]
        .as_ref()
        .unwrap_err()
        .contains("valid up to byte 0"));
    assert_eq!(items[2].as_deref(), Ok("ok"));
}

#[test]
fn lines_and_delimited_frames_without_end_fail_at_max() {
    let megabyte = vec![b'a'; 1 << 20];
    let reads: Vec<&[u8]> = megabyte.chunks(4096).collect();
    let (_, err, capacity) = feed(&mut LineCodec::new(1024), &reads);
    assert!(err.unwrap().is_frame_too_long());
    assert!(capacity < SMALL, "capacity {capacity}");
    let (_, err, capacity) = feed(&mut DelimiterCodec::new(b"\r\n", 1024), &reads);
    assert!(err.unwrap().is_frame_too_long());
    assert!(capacity < SMALL, "capacity {capacity}");
    // max bytes and a `\r` wait for the `\n`; one more byte does not.
    let mut codec = LineCodec::new(3);
    let (items, err, _) = feed(&mut codec, &[b"abc\r", b"\n"]);
    assert!(err.is_none());
    assert_eq!(items[0].as_deref(), Ok("abc"));
    let (_, err, _) = feed(&mut LineCodec::new(3), &[b"abc\r", b"x"]);
    assert!(err.unwrap().is_frame_too_long());
}

#[test]
fn self_overlapping_delimiters_split_at_the_first_occurrence() {
    // "abab" overlaps itself: "aababab" is "a", then "ab" left over.
    let mut codec = DelimiterCodec::new(b"abab", 8);
    let reads: Vec<&[u8]> = b"aababab".chunks(1).collect();
    let (items, err, _) = feed(&mut codec, &reads);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames(items), [&b"a"[..], b"ab"]);
    // "aa": a run of a's is a run of empty frames.
    let (items, err, _) = feed(&mut DelimiterCodec::new(b"aa", 0), &[b"aaaaa"]);
    assert!(
        matches!(err, Some(CodecError::FrameTooLong { .. })),
        "{err:?}"
    );
    assert_eq!(frames(items), [b"", b""]);
}

#[test]
fn json_nested_10000_deep_is_an_error_for_its_frame_only() {
    let deep = [
        vec![b'['; 10_000],
        vec![b']'; 10_000],
        b"\n{\"a\":1}\n".to_vec(),
    ]
    .concat();
    let mut codec = JsonCodec::<Value, _>::new(DelimiterCodec::new(b"\n", 1 << 20));
    let (items, err, _) = feed(&mut codec, &[&deep]);
    assert!(err.is_none(), "{err:?}");
    assert!(
        items[0].as_ref().unwrap_err().contains("recursion limit"),
        "{items:?}"
    );
    assert_eq!(items[1].as_ref().unwrap(), &serde_json::json!({"a": 1}));
}

#[test]
fn fixed_length_reserves_one_frame_at_most() {
    let mut codec = FixedLengthCodec::new(16);
    let (items, err, capacity) = feed(&mut codec, &[&[1; 20], &[2; 12], &[3; 5]]);
    let second = [&[1; 4][..], &[2; 12]].concat();
    assert_eq!(frames(items), [vec![1; 16], second]);
    assert!(matches!(err, Some(CodecError::InvalidFrame(_))), "{err:?}");
    assert!(capacity < 1024, "capacity {capacity}");
}
