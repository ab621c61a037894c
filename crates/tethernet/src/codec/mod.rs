//! Framing codecs: turning a byte stream into frames and frames back into bytes.
//!
//! Every codec here implements [`tokio_util::codec::Decoder`] and
//! [`tokio_util::codec::Encoder`], so it plugs into tokio_util's `Framed`,
//! `FramedRead` and `FramedWrite` as well as into Tethernet's pipeline. The
//! converse also holds: any tokio_util codec can be used wherever a codec is
//! expected, and the wrapping codecs ([`StringCodec`], `JsonCodec`) accept any
//! framing decoder whose frames are bytes (`AsRef<[u8]>`).
//!
//! The framing decoders yield [`Frame`](crate::Frame)s: cut from the read buffer
//! without copying, charged to their connection and watched for leaks (see
//! [`crate::leak`]). A third-party decoder can do the same with
//! [`Frame::split_from`](crate::Frame::split_from).
//!
//! # Bounded memory
//!
//! Every decoder has a **mandatory maximum frame length**, given to its
//! constructor; there is no way to build a decoder without one. A frame that
//! would exceed it is rejected with [`CodecError::FrameTooLong`] *before* it
//! is buffered: length-prefixed codecs check the announced length as soon as
//! the header has arrived, and delimiter-based codecs fail as soon as the bytes
//! buffered without a delimiter exceed the maximum, without waiting for the
//! delimiter. A peer therefore cannot make a connection buffer more than about
//! `max_frame_length` bytes. When the length of the next frame is known, the
//! decoder reserves exactly the room that frame needs in the read buffer.
//!
//! Decoders remember how far they have scanned, so feeding a frame one byte at
//! a time costs linear, not quadratic, time.
//!
//! # Netty equivalents
//!
//! | Tethernet codec        | Netty handler(s)                                             |
//! |------------------------|--------------------------------------------------------------|
//! | [`LengthFieldCodec`]   | `LengthFieldBasedFrameDecoder` + `LengthFieldPrepender`      |
//! | [`LineCodec`]          | `LineBasedFrameDecoder` + `StringDecoder`/`StringEncoder`    |
//! | [`DelimiterCodec`]     | `DelimiterBasedFrameDecoder`                                 |
//! | [`FixedLengthCodec`]   | `FixedLengthFrameDecoder`                                    |
//! | [`VarintLengthCodec`]  | `ProtobufVarint32FrameDecoder` + `ProtobufVarint32LengthFieldPrepender` |
//! | [`StringCodec`]        | `StringDecoder` + `StringEncoder` (UTF-8) over any framing   |
//! | `JsonCodec`            | `JsonObjectDecoder` + serde, over any framing (feature `json`) |
//!
//! # Errors
//!
//! All codecs report [`CodecError`]. Framing errors ([`CodecError::FrameTooLong`],
//! [`CodecError::InvalidFrame`]) leave the stream unsynchronised: the decoder
//! keeps returning the error and the connection should be closed. Content
//! errors ([`CodecError::InvalidUtf8`], `CodecError::Json`) are reported after
//! the offending frame has been consumed, so decoding could continue with the
//! next frame.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use tethernet::codec::LengthFieldCodec;
//! use tokio_util::codec::Decoder;
//!
//! // 4-byte big-endian length, then the payload.
//! let mut codec = LengthFieldCodec::new(1024);
//! let mut buf = BytesMut::from(&b"\x00\x00\x00\x05hello\x00\x00"[..]);
//! let frame = codec.decode(&mut buf).unwrap().unwrap();
//! assert_eq!(&frame[..], b"hello");
//! // Only half of the next header has arrived.
//! assert!(codec.decode(&mut buf).unwrap().is_none());
//! ```

mod delimiter;
mod fixed_length;
#[cfg(feature = "json")]
mod json;
mod length_field;
mod line;
mod string;
mod varint;

pub use delimiter::DelimiterCodec;
pub use fixed_length::FixedLengthCodec;
#[cfg(feature = "json")]
pub use json::JsonCodec;
pub use length_field::{LengthFieldCodec, LengthFieldCodecBuilder};
pub use line::LineCodec;
pub use string::StringCodec;
pub use varint::VarintLengthCodec;

/// Errors reported by the codecs of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame is longer than the codec's maximum frame length.
    ///
    /// Detected before the frame is buffered: from the length header for
    /// length-prefixed codecs, or as soon as more than the maximum has been
    /// buffered without a delimiter for delimiter-based codecs.
    #[error(
        "frame of {length} bytes exceeds the maximum frame length of {max} bytes; \
         raise the codec's max_frame_length or reject the peer"
    )]
    FrameTooLong {
        /// Length of the offending frame, as announced by its header, or, for
        /// delimiter-based codecs, the number of bytes buffered so far without
        /// a delimiter.
        length: u64,
        /// The maximum frame length that was exceeded.
        max: usize,
    },

    /// A frame that should hold text is not valid UTF-8.
    #[error("frame is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the longest valid UTF-8 prefix of the frame.
        valid_up_to: usize,
    },

    /// The input (or a value to encode) is malformed; the message says how.
    #[error("malformed frame: {0}")]
    InvalidFrame(String),

    /// A frame could not be deserialized into (or a value serialized from)
    /// the expected type.
    #[cfg(feature = "json")]
    #[error("frame is not valid JSON for the expected type: {0}")]
    Json(#[source] serde_json::Error),

    /// An I/O error from the underlying transport.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// Returns `true` if this is a [`CodecError::FrameTooLong`] error.
    pub fn is_frame_too_long(&self) -> bool {
        matches!(self, CodecError::FrameTooLong { .. })
    }

    /// Builds a [`CodecError::FrameTooLong`], saturating `length` to `u64`.
    pub(crate) fn too_long(length: impl TryInto<u64>, max: usize) -> Self {
        CodecError::FrameTooLong {
            length: length.try_into().unwrap_or(u64::MAX),
            max,
        }
    }

    /// The error for a stream that ended in the middle of a frame.
    pub(crate) fn truncated(buffered: usize) -> Self {
        CodecError::InvalidFrame(format!(
            "stream ended with {buffered} bytes of an incomplete frame buffered"
        ))
    }
}

/// Converts a frame to a `String`, or reports where it stops being UTF-8.
pub(crate) fn utf8_to_string(bytes: &[u8]) -> Result<String, CodecError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_owned()),
        Err(err) => Err(CodecError::InvalidUtf8 {
            valid_up_to: err.valid_up_to(),
        }),
    }
}
