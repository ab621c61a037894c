//! Frames prefixed by a base-128 varint length: Netty's
//! `ProtobufVarint32FrameDecoder` and `ProtobufVarint32LengthFieldPrepender`.

use crate::Frame;
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::CodecError;

/// Longest encoding of a 32-bit varint.
const MAX_VARINT_LENGTH: usize = 5;

/// A codec for frames made of a protobuf-style varint32 length and then that
/// many payload bytes.
///
/// The length is an unsigned base-128 varint, least significant group first,
/// with the high bit of each byte set on all but the last byte (the encoding
/// protobuf uses to delimit messages). Decoded items are the payloads.
///
/// `max_frame_length` bounds the payload (the varint header is not counted).
/// A header announcing a longer payload is rejected with
/// [`CodecError::FrameTooLong`] as soon as it has arrived. A varint longer than
/// 5 bytes or above `u32::MAX` is rejected with [`CodecError::InvalidFrame`].
/// The encoder rejects payloads longer than `max_frame_length` or `u32::MAX`.
///
/// # Example
///
/// ```
/// use bytes::BytesMut;
/// use tethernet::codec::VarintLengthCodec;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = VarintLengthCodec::new(1024);
/// let mut buf = BytesMut::new();
/// codec.encode(vec![7u8; 300], &mut buf).unwrap();
/// assert_eq!(&buf[..2], &[0xAC, 0x02]); // 300 as a varint
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 300);
/// ```
#[derive(Debug, Clone)]
pub struct VarintLengthCodec {
    max_frame_length: usize,
    /// Header and payload lengths of the frame at the front of the buffer,
    /// once its header has been read and validated.
    pending: Option<(usize, usize)>,
}

impl VarintLengthCodec {
    /// A codec for payloads of at most `max_frame_length` bytes.
    pub fn new(max_frame_length: usize) -> Self {
        Self {
            max_frame_length,
            pending: None,
        }
    }

    /// The maximum payload length in bytes.
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// Reads the varint at the front of `src`: `(header length, value)`, or
    /// `None` if it is incomplete.
    fn read_varint(src: &[u8]) -> Result<Option<(usize, u32)>, CodecError> {
        let mut value: u64 = 0;
        for (index, &byte) in src.iter().take(MAX_VARINT_LENGTH).enumerate() {
            value |= u64::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                return match u32::try_from(value) {
                    Ok(value) => Ok(Some((index + 1, value))),
                    Err(_) => Err(CodecError::InvalidFrame(format!(
                        "varint length prefix {value} does not fit in 32 bits"
                    ))),
                };
            }
        }
        if src.len() >= MAX_VARINT_LENGTH {
            return Err(CodecError::InvalidFrame(format!(
                "varint length prefix is longer than {MAX_VARINT_LENGTH} bytes"
            )));
        }
        Ok(None)
    }
}

impl Decoder for VarintLengthCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let (header_length, payload_length) = match self.pending {
            Some(pending) => pending,
            None => {
                let Some((header_length, value)) = Self::read_varint(src)? else {
                    return Ok(None);
                };
                let payload_length = usize::try_from(value).unwrap_or(usize::MAX);
                if payload_length > self.max_frame_length {
                    return Err(CodecError::too_long(value, self.max_frame_length));
                }
                self.pending = Some((header_length, payload_length));
                (header_length, payload_length)
            }
        };
        // Only overflows on 32-bit targets with a limit near usize::MAX.
        let Some(frame_length) = header_length.checked_add(payload_length) else {
            return Err(CodecError::too_long(payload_length, self.max_frame_length));
        };
        if src.len() < frame_length {
            // Make room for exactly the rest of this frame.
            src.reserve(frame_length - src.len());
            return Ok(None);
        }
        self.pending = None;
        src.advance(header_length);
        Ok(Some(Frame::split_from(src, payload_length)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::truncated(src.len())),
        }
    }
}

impl<B: AsRef<[u8]>> Encoder<B> for VarintLengthCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: B, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = payload.as_ref();
        let max = self
            .max_frame_length
            .min(usize::try_from(u32::MAX).unwrap_or(usize::MAX));
        if payload.len() > max {
            return Err(CodecError::too_long(payload.len(), max));
        }
        dst.reserve(MAX_VARINT_LENGTH + payload.len());
        let mut value = payload.len();
        while value >= 0x80 {
            dst.put_u8((value as u8 & 0x7F) | 0x80);
            value >>= 7;
        }
        dst.put_u8(value as u8);
        dst.extend_from_slice(payload);
        Ok(())
    }
}
