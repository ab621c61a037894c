//! Fixed-size frames: Netty's `FixedLengthFrameDecoder`.

use crate::Frame;
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::CodecError;

/// A codec for frames that all have the same length.
///
/// The decoder splits the stream into frames of exactly `frame_length` bytes,
/// which is also its maximum frame length: it never buffers more than one
/// frame's worth of bytes for a frame. The encoder writes payloads as they
/// are and rejects any payload whose length is not `frame_length` with
/// [`CodecError::InvalidFrame`].
#[derive(Debug, Clone)]
pub struct FixedLengthCodec {
    frame_length: usize,
}

impl FixedLengthCodec {
    /// A codec for frames of exactly `frame_length` bytes.
    ///
    /// # Panics
    ///
    /// Panics if `frame_length` is 0.
    pub fn new(frame_length: usize) -> Self {
        assert!(
            frame_length > 0,
            "FixedLengthCodec: frame_length must be greater than 0"
        );
        Self { frame_length }
    }

    /// The length of every frame.
    pub fn frame_length(&self) -> usize {
        self.frame_length
    }
}

impl Decoder for FixedLengthCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if src.len() < self.frame_length {
            // Make room for exactly the rest of this frame.
            src.reserve(self.frame_length - src.len());
            return Ok(None);
        }
        Ok(Some(Frame::split_from(src, self.frame_length)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::truncated(src.len())),
        }
    }
}

impl<B: AsRef<[u8]>> Encoder<B> for FixedLengthCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: B, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = payload.as_ref();
        if payload.len() != self.frame_length {
            return Err(CodecError::InvalidFrame(format!(
                "payload of {} bytes does not match the fixed frame length of {} bytes",
                payload.len(),
                self.frame_length
            )));
        }
        dst.extend_from_slice(payload);
        Ok(())
    }
}
