//! Integration tests for the framing codecs of `tethernet::codec`.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
#[cfg(feature = "json")]
use serde::{Deserialize, Serialize};
use tethernet::codec::*;
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Encodes every item into one buffer.
fn encode_all<E, I>(codec: &mut E, items: impl IntoIterator<Item = I>) -> BytesMut
where
    E: Encoder<I>,
    E::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    for item in items {
        codec.encode(item, &mut buf).expect("encode failed");
    }
    buf
}

/// Feeds `input` to `codec` in chunks of the given sizes (cycled; the whole
/// input at once if `chunks` is empty), decoding after every chunk, then
/// signals end of stream.
fn decode_chunked<D: Decoder>(
    codec: &mut D,
    input: &[u8],
    chunks: &[usize],
) -> Result<Vec<D::Item>, D::Error> {
    let mut items = Vec::new();
    let mut buf = BytesMut::new();
    let mut sizes = chunks.iter().copied().filter(|&n| n > 0).cycle();
    let mut rest = input;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(item) = codec.decode(&mut buf)? {
            items.push(item);
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf)? {
        items.push(item);
    }
    assert!(buf.is_empty(), "bytes left over after end of stream");
    Ok(items)
}

/// Feeds `input` one byte at a time.
fn decode_bytewise<D: Decoder>(codec: &mut D, input: &[u8]) -> Result<Vec<D::Item>, D::Error> {
    decode_chunked(codec, input, &[1])
}

/// Decodes a buffer holding all of `input` at once.
fn decode_whole<D: Decoder>(codec: &mut D, input: &[u8]) -> Result<Vec<D::Item>, D::Error> {
    decode_chunked(codec, input, &[])
}

fn frames(items: &[tethernet::Frame]) -> Vec<Vec<u8>> {
    items.iter().map(|item| item.to_vec()).collect()
}

fn payloads() -> Vec<Vec<u8>> {
    vec![
        b"hello".to_vec(),
        Vec::new(),
        b"world!".to_vec(),
        (0..=255).collect(),
        vec![0; 1000],
    ]
}

// ---------------------------------------------------------------------------
// CodecError
// ---------------------------------------------------------------------------

#[test]
fn error_messages_are_descriptive() {
    let err = CodecError::FrameTooLong {
        length: 5000,
        max: 1024,
    };
    assert!(err.is_frame_too_long());
    assert_eq!(
        err.to_string(),
        "frame of 5000 bytes exceeds the maximum frame length of 1024 bytes; \
         raise the codec's max_frame_length or reject the peer"
    );
    let err = CodecError::InvalidUtf8 { valid_up_to: 3 };
    assert!(!err.is_frame_too_long());
    assert_eq!(
        err.to_string(),
        "frame is not valid UTF-8 (valid up to byte 3)"
    );
    let err = CodecError::InvalidFrame("bad".into());
    assert!(err.to_string().contains("bad"));
    let err = CodecError::from(std::io::Error::other("boom"));
    assert!(matches!(err, CodecError::Io(_)));
    assert_eq!(err.to_string(), "boom");
}

// ---------------------------------------------------------------------------
// LengthFieldCodec
// ---------------------------------------------------------------------------

#[test]
fn length_field_new_writes_4_byte_big_endian_length_then_payload() {
    let mut codec = LengthFieldCodec::new(1024);
    let buf = encode_all(&mut codec, [&b"hello"[..], b""]);
    assert_eq!(&buf[..], b"\x00\x00\x00\x05hello\x00\x00\x00\x00");
    let decoded = decode_whole(&mut codec, &buf).unwrap();
    assert_eq!(frames(&decoded), vec![b"hello".to_vec(), Vec::new()]);
}

#[test]
fn length_field_round_trips_coalesced_and_bytewise() {
    let mut codec = LengthFieldCodec::new(4096);
    let buf = encode_all(&mut codec, payloads());
    assert_eq!(frames(&decode_whole(&mut codec, &buf).unwrap()), payloads());
    assert_eq!(
        frames(&decode_bytewise(&mut codec, &buf).unwrap()),
        payloads()
    );
}

#[test]
fn length_field_round_trips_every_width_and_byte_order() {
    for width in [1, 2, 3, 4, 8] {
        for little in [false, true] {
            let builder = LengthFieldCodec::builder(4096)
                .length_field_length(width)
                .initial_bytes_to_strip(width);
            let mut codec = if little {
                builder.little_endian().build()
            } else {
                builder.big_endian().build()
            };
            let payload = vec![0xAB; 200];
            let buf = encode_all(&mut codec, [&payload[..], b"x"]);
            let mut header = vec![0; width];
            if little {
                header[0] = 200;
            } else {
                header[width - 1] = 200;
            }
            assert_eq!(&buf[..width], &header[..], "width {width}, little {little}");
            assert_eq!(buf.len(), 2 * width + 201);
            let decoded = decode_bytewise(&mut codec, &buf).unwrap();
            assert_eq!(frames(&decoded), vec![payload.clone(), b"x".to_vec()]);
        }
    }
}

#[test]
fn length_field_encoder_subtracts_the_length_adjustment() {
    // Length field counts itself (Netty: lengthAdjustment = -2).
    let mut codec = LengthFieldCodec::builder(64)
        .length_field_length(2)
        .length_adjustment(-2)
        .initial_bytes_to_strip(2)
        .build();
    let buf = encode_all(&mut codec, [&b"HELLO, WORLD"[..]]);
    assert_eq!(&buf[..], b"\x00\x0EHELLO, WORLD");
    assert_eq!(
        frames(&decode_whole(&mut codec, &buf).unwrap()),
        vec![b"HELLO, WORLD".to_vec()]
    );
}

/// Decodes `input` with `codec` and checks it yields exactly `expected`.
fn assert_netty_example(mut codec: LengthFieldCodec, input: &[u8], expected: &[u8]) {
    let decoded = decode_whole(&mut codec, input).unwrap();
    assert_eq!(frames(&decoded), vec![expected.to_vec()]);
    let decoded = decode_bytewise(&mut codec, input).unwrap();
    assert_eq!(frames(&decoded), vec![expected.to_vec()]);
}

#[test]
fn netty_example_2_byte_length_offset_0_no_strip() {
    let codec = LengthFieldCodec::builder(1024)
        .length_field_length(2)
        .build();
    let frame = b"\x00\x0CHELLO, WORLD";
    assert_netty_example(codec, frame, frame);
}

#[test]
fn netty_example_2_byte_length_offset_0_strip_header() {
    let codec = LengthFieldCodec::builder(1024)
        .length_field_length(2)
        .initial_bytes_to_strip(2)
        .build();
    assert_netty_example(codec, b"\x00\x0CHELLO, WORLD", b"HELLO, WORLD");
}

#[test]
fn netty_example_2_byte_length_counting_the_whole_message() {
    let codec = LengthFieldCodec::builder(1024)
        .length_field_length(2)
        .length_adjustment(-2)
        .build();
    let frame = b"\x00\x0EHELLO, WORLD";
    assert_netty_example(codec, frame, frame);
}

#[test]
fn netty_example_3_byte_length_at_end_of_5_byte_header() {
    let codec = LengthFieldCodec::builder(1024)
        .length_field_offset(2)
        .length_field_length(3)
        .build();
    let frame = b"\xCA\xFE\x00\x00\x0CHELLO, WORLD";
    assert_netty_example(codec, frame, frame);
}

#[test]
fn netty_example_3_byte_length_at_start_of_5_byte_header() {
    let codec = LengthFieldCodec::builder(1024)
        .length_field_length(3)
        .length_adjustment(2)
        .build();
    let frame = b"\x00\x00\x0C\xCA\xFEHELLO, WORLD";
    assert_netty_example(codec, frame, frame);
}

#[test]
fn netty_example_2_byte_length_at_offset_1_strip_first_3_bytes() {
    let codec = LengthFieldCodec::builder(1024)
        .length_field_offset(1)
        .length_field_length(2)
        .length_adjustment(1)
        .initial_bytes_to_strip(3)
        .build();
    assert_netty_example(codec, b"\xCA\x00\x0C\xFEHELLO, WORLD", b"\xFEHELLO, WORLD");
}

#[test]
fn netty_example_2_byte_whole_length_at_offset_1_strip_first_3_bytes() {
    let codec = LengthFieldCodec::builder(1024)
        .length_field_offset(1)
        .length_field_length(2)
        .length_adjustment(-3)
        .initial_bytes_to_strip(3)
        .build();
    assert_netty_example(codec, b"\xCA\x00\x10\xFEHELLO, WORLD", b"\xFEHELLO, WORLD");
}

#[test]
fn length_field_max_applies_to_the_whole_frame() {
    // 4-byte header + 12-byte payload = 16 bytes.
    let input = b"\x00\x00\x00\x0CHELLO, WORLD";
    let mut codec = LengthFieldCodec::new(16);
    assert_eq!(decode_whole(&mut codec, input).unwrap().len(), 1);
    let mut codec = LengthFieldCodec::new(15);
    let err = decode_whole(&mut codec, input).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLong {
                length: 16,
                max: 15
            }
        ),
        "{err:?}"
    );
}

#[test]
fn length_field_rejects_gigabyte_header_without_buffering() {
    let mut codec = LengthFieldCodec::new(1 << 20);
    let mut buf = BytesMut::from(&b"\xFF\xFF\xFF\xFF"[..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(err.is_frame_too_long());
    assert!(
        matches!(err, CodecError::FrameTooLong { length, max } if length == 0xFFFF_FFFF + 4 && max == 1 << 20),
        "{err:?}"
    );
    assert!(buf.capacity() < 1024, "buffer grew to {}", buf.capacity());
    // The decoder stays failed rather than resynchronising on garbage.
    assert!(codec.decode(&mut buf).unwrap_err().is_frame_too_long());

    // An 8-byte field claiming u64::MAX must not overflow either.
    let mut codec = LengthFieldCodec::builder(1 << 20)
        .length_field_length(8)
        .length_adjustment(100)
        .build();
    let mut buf = BytesMut::from(&[0xFF; 8][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLong {
                length: u64::MAX,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(buf.capacity() < 1024, "buffer grew to {}", buf.capacity());
}

#[test]
fn length_field_reserves_room_for_exactly_the_announced_frame() {
    let mut codec = LengthFieldCodec::new(1 << 20);
    let mut buf = BytesMut::from(&b"\x00\x01\x00\x00abc"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() >= 4 + 65536, "capacity {}", buf.capacity());
    buf.put_bytes(b'x', 65536 - 3);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.len(), 65536);
    assert!(buf.is_empty());
}

#[test]
fn length_field_rejects_negative_adjusted_length() {
    let mut codec = LengthFieldCodec::builder(1024)
        .length_field_length(2)
        .length_adjustment(-4)
        .build();
    let mut buf = BytesMut::from(&b"\x00\x02ab"[..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
}

#[test]
fn length_field_rejects_frame_shorter_than_bytes_to_strip() {
    let mut codec = LengthFieldCodec::builder(1024)
        .length_field_length(2)
        .initial_bytes_to_strip(8)
        .build();
    let mut buf = BytesMut::from(&b"\x00\x02ab"[..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
}

#[test]
fn length_field_reports_truncated_frame_at_eof() {
    let mut codec = LengthFieldCodec::new(1024);
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x05hel"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    let err = codec.decode_eof(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
}

#[test]
fn length_field_encoder_rejects_oversized_payloads() {
    let mut codec = LengthFieldCodec::new(16);
    let mut buf = BytesMut::new();
    codec.encode(&[0u8; 12][..], &mut buf).unwrap();
    let err = codec.encode(&[0u8; 13][..], &mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLong {
                length: 17,
                max: 16
            }
        ),
        "{err:?}"
    );
    assert_eq!(buf.len(), 16, "nothing written for the rejected payload");

    // Payload that does not fit in a 1-byte length field.
    let mut codec = LengthFieldCodec::builder(1 << 20)
        .length_field_length(1)
        .initial_bytes_to_strip(1)
        .build();
    codec.encode(vec![0u8; 255], &mut buf).unwrap();
    let err = codec.encode(vec![0u8; 256], &mut buf).unwrap_err();
    assert!(err.is_frame_too_long(), "{err:?}");
}

#[test]
#[should_panic(expected = "length_field_length must be 1, 2, 3, 4 or 8")]
fn length_field_builder_rejects_unsupported_width() {
    let _ = LengthFieldCodec::builder(1024)
        .length_field_length(5)
        .build();
}

// ---------------------------------------------------------------------------
// LineCodec
// ---------------------------------------------------------------------------

#[test]
fn line_round_trips_coalesced_and_bytewise() {
    let lines = ["hello", "", "wörld", "a b c"];
    let mut codec = LineCodec::new(64);
    let buf = encode_all(&mut codec, lines);
    assert_eq!(&buf[..], "hello\n\nwörld\na b c\n".as_bytes());
    assert_eq!(decode_whole(&mut codec, &buf).unwrap(), lines);
    assert_eq!(decode_bytewise(&mut codec, &buf).unwrap(), lines);
}

#[test]
fn line_strips_carriage_returns_and_returns_last_line_at_eof() {
    let mut codec = LineCodec::new(64);
    let input = b"one\r\ntwo\nthree";
    assert_eq!(
        decode_bytewise(&mut codec, input).unwrap(),
        ["one", "two", "three"]
    );
    let mut buf = BytesMut::from(&b"last\r"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(codec.decode_eof(&mut buf).unwrap().as_deref(), Some("last"));
    assert!(codec.decode_eof(&mut buf).unwrap().is_none());
}

#[test]
fn line_rejects_max_plus_one_bytes_without_newline() {
    let mut codec = LineCodec::new(8);
    let mut buf = BytesMut::from(&b"12345678"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    buf.put_u8(b'9');
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLong { length: 9, max: 8 }),
        "{err:?}"
    );
}

#[test]
fn line_of_exactly_max_bytes_with_crlf_is_accepted() {
    let mut codec = LineCodec::new(8);
    let mut buf = BytesMut::from(&b"12345678\r"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    buf.put_u8(b'\n');
    assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some("12345678"));
    // Nine bytes, then `\r\n`, is one too many.
    let mut buf = BytesMut::from(&b"123456789\r\n"[..]);
    assert!(codec.decode(&mut buf).unwrap_err().is_frame_too_long());
}

#[test]
fn line_reports_invalid_utf8_and_continues_with_next_line() {
    let mut codec = LineCodec::new(64);
    let mut buf = BytesMut::from(&b"ok\nab\xFFcd\nnext\n"[..]);
    assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some("ok"));
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::InvalidUtf8 { valid_up_to: 2 }),
        "{err:?}"
    );
    assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some("next"));
}

#[test]
fn line_encoder_rejects_oversized_and_ambiguous_lines() {
    let mut codec = LineCodec::new(4);
    let mut buf = BytesMut::new();
    assert!(codec
        .encode("12345", &mut buf)
        .unwrap_err()
        .is_frame_too_long());
    let err = codec.encode("a\nb", &mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
    let err = codec.encode("ab\r", &mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
    assert!(buf.is_empty());
    codec.encode(String::from("1234"), &mut buf).unwrap();
    assert_eq!(&buf[..], b"1234\n");
}

// ---------------------------------------------------------------------------
// DelimiterCodec
// ---------------------------------------------------------------------------

#[test]
fn delimiter_round_trips_multi_byte_delimiter() {
    let items: Vec<Vec<u8>> = vec![
        b"alpha".to_vec(),
        Vec::new(),
        b"with \r and \n alone".to_vec(),
        b"ends with \n".to_vec(),
    ];
    let mut codec = DelimiterCodec::new(b"\r\n", 64);
    assert_eq!(codec.delimiter(), b"\r\n");
    let buf = encode_all(&mut codec, &items);
    assert_eq!(
        &buf[..],
        b"alpha\r\n\r\nwith \r and \n alone\r\nends with \n\r\n"
    );
    assert_eq!(frames(&decode_whole(&mut codec, &buf).unwrap()), items);
    assert_eq!(frames(&decode_bytewise(&mut codec, &buf).unwrap()), items);
}

#[test]
fn delimiter_returns_trailing_bytes_at_eof() {
    let mut codec = DelimiterCodec::new(b"||", 16);
    let decoded = decode_bytewise(&mut codec, b"a||b|").unwrap();
    assert_eq!(frames(&decoded), vec![b"a".to_vec(), b"b|".to_vec()]);
}

#[test]
fn delimiter_rejects_max_plus_one_bytes_without_delimiter() {
    let mut codec = DelimiterCodec::new(b"\r\n", 8);
    let mut buf = BytesMut::from(&b"12345678"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    buf.put_u8(b'9');
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLong { length: 9, max: 8 }),
        "{err:?}"
    );
}

#[test]
fn delimiter_waits_when_the_tail_may_start_the_delimiter() {
    let mut codec = DelimiterCodec::new(b"\r\n", 8);
    let mut buf = BytesMut::from(&b"12345678\r"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    buf.put_u8(b'\n');
    assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"12345678");
    // The same bytes, but a `\r` not followed by `\n`.
    let mut buf = BytesMut::from(&b"12345678\r"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    buf.put_u8(b'x');
    assert!(codec.decode(&mut buf).unwrap_err().is_frame_too_long());
}

#[test]
fn delimiter_checks_the_length_of_a_last_frame_ending_like_a_delimiter() {
    let mut codec = DelimiterCodec::new(b"\r\n", 8);
    let mut buf = BytesMut::from(&b"12345678\r"[..]);
    // Fine so far: the `\r` may start the delimiter.
    assert!(codec.decode(&mut buf).unwrap().is_none());
    // But at end of stream it belongs to a 9-byte frame.
    let err = codec.decode_eof(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLong { length: 9, max: 8 }),
        "{err:?}"
    );
}

#[test]
fn delimiter_handles_self_overlapping_delimiters() {
    let mut codec = DelimiterCodec::new(b"abab", 16);
    let decoded = decode_bytewise(&mut codec, b"xabababy").unwrap();
    // First occurrence wins: "x" + "abab", then "aby" at EOF.
    assert_eq!(frames(&decoded), vec![b"x".to_vec(), b"aby".to_vec()]);
    let mut buf = BytesMut::new();
    // "xab" + "abab" would decode as "x": the encoder refuses it.
    let err = codec.encode(&b"xab"[..], &mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
    codec.encode(&b"xa"[..], &mut buf).unwrap();
    assert_eq!(
        frames(&decode_whole(&mut codec, &buf).unwrap()),
        vec![b"xa".to_vec()]
    );
}

#[test]
fn delimiter_encoder_rejects_oversized_and_ambiguous_payloads() {
    let mut codec = DelimiterCodec::new(b";", 4);
    let mut buf = BytesMut::new();
    assert!(codec
        .encode(&b"12345"[..], &mut buf)
        .unwrap_err()
        .is_frame_too_long());
    let err = codec.encode(&b"a;b"[..], &mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
    assert!(buf.is_empty());
}

#[test]
#[should_panic(expected = "delimiter must not be empty")]
fn delimiter_must_not_be_empty() {
    let _ = DelimiterCodec::new(b"", 16);
}

// ---------------------------------------------------------------------------
// FixedLengthCodec
// ---------------------------------------------------------------------------

#[test]
fn fixed_length_round_trips_and_reserves_the_frame() {
    let items = vec![b"abcd".to_vec(), b"efgh".to_vec(), vec![0; 4]];
    let mut codec = FixedLengthCodec::new(4);
    assert_eq!(codec.frame_length(), 4);
    let buf = encode_all(&mut codec, &items);
    assert_eq!(buf.len(), 12);
    assert_eq!(frames(&decode_whole(&mut codec, &buf).unwrap()), items);
    assert_eq!(frames(&decode_bytewise(&mut codec, &buf).unwrap()), items);

    let mut codec = FixedLengthCodec::new(4096);
    let mut buf = BytesMut::from(&b"ab"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() >= 4096, "capacity {}", buf.capacity());
}

#[test]
fn fixed_length_encoder_rejects_wrong_sizes() {
    let mut codec = FixedLengthCodec::new(4);
    let mut buf = BytesMut::new();
    for payload in [&b"abc"[..], b"abcde", b""] {
        let err = codec.encode(payload, &mut buf).unwrap_err();
        assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
    }
    assert!(buf.is_empty());
}

#[test]
fn fixed_length_reports_truncated_frame_at_eof() {
    let mut codec = FixedLengthCodec::new(4);
    let err = decode_whole(&mut codec, b"abcdef").unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
}

// ---------------------------------------------------------------------------
// VarintLengthCodec
// ---------------------------------------------------------------------------

#[test]
fn varint_writes_protobuf_varint_lengths() {
    let mut codec = VarintLengthCodec::new(1 << 20);
    let cases: [(usize, &[u8]); 5] = [
        (0, &[0x00]),
        (1, &[0x01]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (300, &[0xAC, 0x02]),
    ];
    for (length, header) in cases {
        let buf = encode_all(&mut codec, [vec![9u8; length]]);
        assert_eq!(&buf[..header.len()], header, "length {length}");
        assert_eq!(buf.len(), header.len() + length);
    }
    let buf = encode_all(&mut codec, [vec![0u8; 16384]]);
    assert_eq!(&buf[..3], &[0x80, 0x80, 0x01]);
}

#[test]
fn varint_round_trips_coalesced_and_bytewise() {
    let mut codec = VarintLengthCodec::new(4096);
    let buf = encode_all(&mut codec, payloads());
    assert_eq!(frames(&decode_whole(&mut codec, &buf).unwrap()), payloads());
    assert_eq!(
        frames(&decode_bytewise(&mut codec, &buf).unwrap()),
        payloads()
    );
}

#[test]
fn varint_rejects_huge_announced_length_without_buffering() {
    let mut codec = VarintLengthCodec::new(1024);
    // 0xFFFF_FFFF as a varint.
    let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLong {
                length: 0xFFFF_FFFF,
                max: 1024
            }
        ),
        "{err:?}"
    );
    assert!(buf.capacity() < 1024, "buffer grew to {}", buf.capacity());
    // Just over the limit.
    let mut buf = BytesMut::from(&[0x81, 0x08][..]);
    assert!(codec.decode(&mut buf).unwrap_err().is_frame_too_long());
}

#[test]
fn varint_reserves_room_for_exactly_the_announced_frame() {
    let mut codec = VarintLengthCodec::new(1 << 20);
    // 65536 as a varint, then the first payload byte.
    let mut buf = BytesMut::from(&[0x80, 0x80, 0x04, b'a'][..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() >= 3 + 65536, "capacity {}", buf.capacity());
    buf.put_bytes(b'x', 65535);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.len(), 65536);
    assert_eq!(frame[0], b'a');
    assert!(buf.is_empty());
}

#[test]
fn varint_rejects_malformed_prefixes() {
    let mut codec = VarintLengthCodec::new(1024);
    // More than 5 bytes.
    let mut buf = BytesMut::from(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
    // Detected as soon as the fifth byte says another one follows.
    let mut buf = BytesMut::from(&[0xFF; 5][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
    // Five bytes, but more than 32 bits.
    let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::InvalidFrame(_)), "{err:?}");
    // Incomplete prefix: wait for more.
    let mut buf = BytesMut::from(&[0x80, 0x80][..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
}

#[test]
fn varint_encoder_rejects_oversized_payloads() {
    let mut codec = VarintLengthCodec::new(10);
    let mut buf = BytesMut::new();
    codec.encode(&[0u8; 10][..], &mut buf).unwrap();
    let err = codec.encode(&[0u8; 11][..], &mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLong {
                length: 11,
                max: 10
            }
        ),
        "{err:?}"
    );
    assert_eq!(buf.len(), 11);
}

// ---------------------------------------------------------------------------
// StringCodec
// ---------------------------------------------------------------------------

#[test]
fn string_round_trips_over_length_field_and_delimiter_framing() {
    let texts = ["héllo", "", "wörld ✓"];
    let mut codec = StringCodec::new(LengthFieldCodec::new(1024));
    let buf = encode_all(&mut codec, texts);
    assert_eq!(&buf[..4], b"\x00\x00\x00\x06");
    assert_eq!(decode_bytewise(&mut codec, &buf).unwrap(), texts);

    let mut codec = StringCodec::new(DelimiterCodec::new(b"\0", 64));
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let buf = encode_all(&mut codec, &owned);
    assert_eq!(decode_whole(&mut codec, &buf).unwrap(), texts);
}

#[test]
fn string_reports_invalid_utf8_and_inner_limits() {
    let mut codec = StringCodec::new(VarintLengthCodec::new(8));
    let mut buf = BytesMut::from(&b"\x03a\xC3(\x02ok"[..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::InvalidUtf8 { valid_up_to: 1 }),
        "{err:?}"
    );
    assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some("ok"));

    let mut buf = BytesMut::from(&b"\x09"[..]);
    assert!(codec.decode(&mut buf).unwrap_err().is_frame_too_long());
    assert!(codec
        .encode("123456789", &mut BytesMut::new())
        .unwrap_err()
        .is_frame_too_long());
}

// ---------------------------------------------------------------------------
// JsonCodec
// ---------------------------------------------------------------------------

#[cfg(feature = "json")]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Message {
    id: u32,
    text: String,
    tags: Vec<String>,
}

#[cfg(feature = "json")]
fn messages() -> Vec<Message> {
    vec![
        Message {
            id: 1,
            text: "hello\nworld".into(),
            tags: vec!["a".into()],
        },
        Message {
            id: 2,
            text: String::new(),
            tags: Vec::new(),
        },
    ]
}

#[cfg(feature = "json")]
#[test]
fn json_round_trips_by_value_and_by_reference() {
    let mut codec = JsonCodec::<Message, _>::new(LengthFieldCodec::new(4096));
    let mut buf = BytesMut::new();
    let [first, second]: [Message; 2] = messages().try_into().unwrap();
    codec.encode(&first, &mut buf).unwrap();
    codec.encode(second, &mut buf).unwrap();
    assert_eq!(decode_bytewise(&mut codec, &buf).unwrap(), messages());

    // Over newline framing: serde_json escapes newlines inside strings.
    let mut codec = JsonCodec::<Message, _>::new(DelimiterCodec::new(b"\n", 4096));
    let buf = encode_all(&mut codec, messages());
    assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 2);
    assert_eq!(decode_whole(&mut codec, &buf).unwrap(), messages());
}

#[cfg(feature = "json")]
#[test]
fn json_reports_invalid_documents_and_continues() {
    let mut codec = JsonCodec::<Message, _>::new(DelimiterCodec::new(b"\n", 4096));
    let mut buf =
        BytesMut::from(&b"{\"id\": 1}\nnot json\n{\"id\":3,\"text\":\"x\",\"tags\":[]}\n"[..]);
    // Valid JSON, wrong shape.
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::Json(_)), "{err:?}");
    assert!(err.to_string().starts_with("frame is not valid JSON"));
    // Not JSON at all.
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::Json(_)), "{err:?}");
    let message = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(message.id, 3);
}

#[cfg(feature = "json")]
#[test]
fn json_encoder_respects_inner_max_frame_length() {
    let mut codec = JsonCodec::<Message, _>::new(VarintLengthCodec::new(16));
    let err = codec
        .encode(&messages()[0], &mut BytesMut::new())
        .unwrap_err();
    assert!(err.is_frame_too_long(), "{err:?}");
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

fn payload_lists() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8)
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..80, 0..16)
}

/// Feeds arbitrary bytes to `codec`, which must not panic, loop forever, or
/// return frames longer than `max`.
fn feed_garbage<D: Decoder>(
    codec: &mut D,
    input: &[u8],
    chunks: &[usize],
    item_length: impl Fn(&D::Item) -> usize,
    max: usize,
) {
    let mut buf = BytesMut::new();
    let mut sizes = chunks.iter().copied().cycle();
    let mut rest = input;
    let mut budget = 2 * input.len() + 16;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            assert!(budget > 0, "decoder made no progress");
            budget -= 1;
            match codec.decode(&mut buf) {
                Ok(Some(item)) => assert!(item_length(&item) <= max),
                Ok(None) => break,
                Err(_) => {
                    // Calling again after an error must not panic either.
                    let _ = codec.decode(&mut buf);
                    let _ = codec.decode_eof(&mut buf);
                    return;
                }
            }
        }
    }
    loop {
        assert!(budget > 0, "decoder made no progress at end of stream");
        budget -= 1;
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => assert!(item_length(&item) <= max),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Garbage made of few distinct bytes, so delimiters and small lengths occur.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        prop::collection::vec(
            prop::sample::select(vec![0u8, 1, 2, 0x80, 0xFF, b'\r', b'\n', b'{', b'"']),
            0..400
        ),
    ]
}

fn length_field_configs() -> impl Strategy<Value = LengthFieldCodec> {
    (
        0usize..300,
        0usize..5,
        prop::sample::select(vec![1usize, 2, 3, 4, 8]),
        -20i64..20,
        0usize..16,
        any::<bool>(),
    )
        .prop_map(|(max, offset, width, adjustment, strip, little)| {
            let builder = LengthFieldCodec::builder(max)
                .length_field_offset(offset)
                .length_field_length(width)
                .length_adjustment(adjustment)
                .initial_bytes_to_strip(strip);
            if little {
                builder.little_endian().build()
            } else {
                builder.build()
            }
        })
}

proptest! {
    #[test]
    fn prop_length_field_round_trips(
        items in payload_lists(),
        chunks in chunk_sizes(),
        width in prop::sample::select(vec![2usize, 3, 4, 8]),
        adjustment in -8i64..=0,
        little in any::<bool>(),
    ) {
        let builder = LengthFieldCodec::builder(1024)
            .length_field_length(width)
            .length_adjustment(adjustment)
            .initial_bytes_to_strip(width);
        let mut codec = if little { builder.little_endian().build() } else { builder.build() };
        let buf = encode_all(&mut codec, &items);
        prop_assert_eq!(frames(&decode_chunked(&mut codec, &buf, &chunks).unwrap()), items);
    }

    #[test]
    fn prop_length_field_new_round_trips(items in payload_lists(), chunks in chunk_sizes()) {
        let mut codec = LengthFieldCodec::new(1024);
        let buf = encode_all(&mut codec, &items);
        prop_assert_eq!(buf.len(), items.iter().map(|i| 4 + i.len()).sum::<usize>());
        prop_assert_eq!(frames(&decode_chunked(&mut codec, &buf, &chunks).unwrap()), items);
    }

    #[test]
    fn prop_varint_round_trips(
        items in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20_000), 0..4),
        chunks in prop::collection::vec(1usize..5000, 0..16),
    ) {
        let mut codec = VarintLengthCodec::new(20_000);
        let buf = encode_all(&mut codec, &items);
        prop_assert_eq!(frames(&decode_chunked(&mut codec, &buf, &chunks).unwrap()), items);
    }

    #[test]
    fn prop_line_round_trips(
        lines in prop::collection::vec("[^\r\n]{0,40}", 0..10),
        chunks in chunk_sizes(),
        crlf in any::<bool>(),
    ) {
        let mut codec = LineCodec::new(160);
        let mut buf = BytesMut::new();
        for line in &lines {
            if crlf {
                buf.extend_from_slice(line.as_bytes());
                buf.extend_from_slice(b"\r\n");
            } else {
                codec.encode(line, &mut buf).unwrap();
            }
        }
        prop_assert_eq!(decode_chunked(&mut codec, &buf, &chunks).unwrap(), lines);
    }

    #[test]
    fn prop_delimiter_round_trips(
        delimiter in prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 1..4),
        items in prop::collection::vec(
            prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c', b'd']), 0..30),
            0..10,
        ),
        chunks in chunk_sizes(),
    ) {
        let mut codec = DelimiterCodec::new(&delimiter, 30);
        // Everything the encoder accepts must decode back to itself.
        let mut buf = BytesMut::new();
        let mut accepted = Vec::new();
        for item in items {
            match codec.encode(&item, &mut buf) {
                Ok(()) => accepted.push(item),
                Err(CodecError::InvalidFrame(_)) => {
                    let contains = item.windows(delimiter.len()).any(|w| w == &delimiter[..]);
                    let mut extended = item.clone();
                    extended.extend_from_slice(&delimiter[..delimiter.len() - 1]);
                    let straddles = extended.windows(delimiter.len()).any(|w| w == &delimiter[..]);
                    prop_assert!(contains || straddles, "rejected {:?}", item);
                }
                Err(err) => prop_assert!(false, "unexpected error {:?}", err),
            }
        }
        prop_assert_eq!(frames(&decode_chunked(&mut codec, &buf, &chunks).unwrap()), accepted);
    }

    #[test]
    fn prop_fixed_length_round_trips(
        (length, items) in (1usize..40).prop_flat_map(|length| {
            (Just(length), prop::collection::vec(prop::collection::vec(any::<u8>(), length), 0..10))
        }),
        chunks in chunk_sizes(),
    ) {
        let mut codec = FixedLengthCodec::new(length);
        let buf = encode_all(&mut codec, &items);
        prop_assert_eq!(frames(&decode_chunked(&mut codec, &buf, &chunks).unwrap()), items);
    }

    #[test]
    fn prop_length_field_survives_garbage(
        mut codec in length_field_configs(),
        input in garbage(),
        chunks in chunk_sizes(),
    ) {
        let max = codec.max_frame_length();
        feed_garbage(&mut codec, &input, &chunks, |f: &tethernet::Frame| f.len(), max);
    }

    #[test]
    fn prop_varint_survives_garbage(max in 0usize..300, input in garbage(), chunks in chunk_sizes()) {
        feed_garbage(&mut VarintLengthCodec::new(max), &input, &chunks, |f: &tethernet::Frame| f.len(), max);
    }

    #[test]
    fn prop_line_survives_garbage(max in 0usize..64, input in garbage(), chunks in chunk_sizes()) {
        feed_garbage(&mut LineCodec::new(max), &input, &chunks, |l: &String| l.len(), max);
    }

    #[test]
    fn prop_delimiter_survives_garbage(
        delimiter in prop::collection::vec(prop::sample::select(vec![0u8, 1, b'\n']), 1..4),
        max in 0usize..64,
        input in garbage(),
        chunks in chunk_sizes(),
    ) {
        let mut codec = DelimiterCodec::new(&delimiter, max);
        feed_garbage(&mut codec, &input, &chunks, |f: &tethernet::Frame| f.len(), max);
    }

    #[test]
    fn prop_fixed_length_survives_garbage(length in 1usize..64, input in garbage(), chunks in chunk_sizes()) {
        let mut codec = FixedLengthCodec::new(length);
        feed_garbage(&mut codec, &input, &chunks, |f: &tethernet::Frame| f.len(), length);
    }

    #[test]
    fn prop_string_survives_garbage(max in 0usize..64, input in garbage(), chunks in chunk_sizes()) {
        let mut codec = StringCodec::new(VarintLengthCodec::new(max));
        feed_garbage(&mut codec, &input, &chunks, |s: &String| s.len(), max);
    }

    #[cfg(feature = "json")]
    #[test]
    fn prop_json_survives_garbage(max in 0usize..64, input in garbage(), chunks in chunk_sizes()) {
        let mut codec = JsonCodec::<Message, _>::new(DelimiterCodec::new(b"\n", max));
        feed_garbage(&mut codec, &input, &chunks, |_: &Message| 0, max);
    }
}
