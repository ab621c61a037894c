//! Delimiter-terminated frames: Netty's `DelimiterBasedFrameDecoder`.

use crate::Frame;
use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::CodecError;

/// A codec for frames terminated by a fixed delimiter of one or more bytes.
///
/// Decoded items are the frames without their delimiter. A frame longer than
/// `max_frame_length` bytes (delimiter excluded) is rejected with
/// [`CodecError::FrameTooLong`] as soon as the buffered bytes show that no
/// delimiter can start within the first `max_frame_length + 1` bytes, without
/// waiting for the delimiter. At end of stream,
/// [`decode_eof`](Decoder::decode_eof) returns trailing bytes without a
/// delimiter as a last frame.
///
/// The encoder writes each payload followed by the delimiter. It rejects
/// payloads longer than `max_frame_length` and payloads that would not decode
/// back to themselves: those containing the delimiter and, for a delimiter
/// that overlaps itself such as `"abab"`, those ending with a part of it that
/// runs on into the appended delimiter (`"xab"`).
///
/// # Example
///
/// ```
/// use bytes::BytesMut;
/// use tethernet::codec::DelimiterCodec;
/// use tokio_util::codec::Decoder;
///
/// let mut codec = DelimiterCodec::new(b"\r\n", 64);
/// let mut buf = BytesMut::from(&b"PING\r\nPO"[..]);
/// assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"PING");
/// assert!(codec.decode(&mut buf).unwrap().is_none());
/// ```
#[derive(Debug, Clone)]
pub struct DelimiterCodec {
    delimiter: Bytes,
    max_frame_length: usize,
    /// Earliest position in the buffer at which the delimiter may still
    /// start; positions before it have been ruled out.
    next_index: usize,
}

impl DelimiterCodec {
    /// A codec for frames of at most `max_frame_length` bytes (delimiter
    /// excluded), each terminated by `delimiter`.
    ///
    /// # Panics
    ///
    /// Panics if `delimiter` is empty.
    pub fn new(delimiter: impl AsRef<[u8]>, max_frame_length: usize) -> Self {
        let delimiter = delimiter.as_ref();
        assert!(
            !delimiter.is_empty(),
            "DelimiterCodec: the delimiter must not be empty"
        );
        Self {
            delimiter: Bytes::copy_from_slice(delimiter),
            max_frame_length,
            next_index: 0,
        }
    }

    /// The delimiter.
    pub fn delimiter(&self) -> &[u8] {
        &self.delimiter
    }

    /// The maximum frame length in bytes, delimiter excluded.
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// Position of the first complete delimiter starting at or after `from`
    /// within `haystack`.
    fn find(&self, haystack: &[u8], from: usize) -> Option<usize> {
        let delimiter = &self.delimiter[..];
        let (&first, rest) = delimiter.split_first()?;
        let last_start = haystack.len().checked_sub(delimiter.len())?;
        let mut position = from;
        while position <= last_start {
            let offset = haystack[position..=last_start]
                .iter()
                .position(|&b| b == first)?;
            position += offset;
            if haystack[position + 1..position + delimiter.len()] == *rest {
                return Some(position);
            }
            position += 1;
        }
        None
    }

    /// Whether `payload` followed by the delimiter decodes back to `payload`:
    /// no delimiter may start inside it, not even one that runs on into the
    /// delimiter appended after it.
    fn is_unambiguous(&self, payload: &[u8]) -> bool {
        if self.find(payload, 0).is_some() {
            return false;
        }
        let delimiter = &self.delimiter[..];
        let tail_start = (payload.len() + 1).saturating_sub(delimiter.len());
        (tail_start..payload.len()).all(|start| {
            let overlap = payload.len() - start;
            !(delimiter.starts_with(&payload[start..])
                && delimiter[..delimiter.len() - overlap] == delimiter[overlap..])
        })
    }

    /// Earliest position at or after `from` where the tail of `buffered` is a
    /// proper prefix of the delimiter, i.e. where a delimiter could still
    /// start once more bytes arrive. `buffered.len()` if there is none.
    fn partial_match_start(&self, buffered: &[u8], from: usize) -> usize {
        let len = buffered.len();
        let first_candidate = (len + 1).saturating_sub(self.delimiter.len()).max(from);
        (first_candidate..len)
            .find(|&start| self.delimiter.starts_with(&buffered[start..]))
            .unwrap_or(len)
    }
}

impl Decoder for DelimiterCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let delimiter_length = self.delimiter.len();
        // A delimiter must start at or before index max to be acceptable.
        let search_end = src
            .len()
            .min(self.max_frame_length.saturating_add(delimiter_length));
        let start = self.next_index.min(search_end);
        if let Some(position) = self.find(&src[..search_end], start) {
            self.next_index = 0;
            let frame = Frame::split_from(src, position);
            src.advance(delimiter_length);
            return Ok(Some(frame));
        }
        if search_end < src.len() {
            // Every acceptable delimiter position has been ruled out.
            return Err(CodecError::too_long(src.len(), self.max_frame_length));
        }
        self.next_index = self.partial_match_start(src, start);
        if self.next_index > self.max_frame_length {
            return Err(CodecError::too_long(src.len(), self.max_frame_length));
        }
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            // Bytes that looked like the start of a delimiter belong to the
            // frame after all, so check the length again.
            None if src.len() > self.max_frame_length => {
                Err(CodecError::too_long(src.len(), self.max_frame_length))
            }
            None => {
                self.next_index = 0;
                Ok(Some(Frame::split_from(src, src.len())))
            }
        }
    }
}

impl<B: AsRef<[u8]>> Encoder<B> for DelimiterCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: B, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = payload.as_ref();
        if payload.len() > self.max_frame_length {
            return Err(CodecError::too_long(payload.len(), self.max_frame_length));
        }
        if !self.is_unambiguous(payload) {
            return Err(CodecError::InvalidFrame(
                "payload to encode contains the delimiter, or ends with bytes that \
                 form the delimiter together with the start of the delimiter"
                    .to_owned(),
            ));
        }
        dst.reserve(payload.len() + self.delimiter.len());
        dst.extend_from_slice(payload);
        dst.extend_from_slice(&self.delimiter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn resumes_the_delimiter_search_where_it_stopped() {
        let mut codec = DelimiterCodec::new(b"\r\n", 1024);
        let mut buf = BytesMut::new();
        for (fed, byte) in b"abcdef".iter().enumerate() {
            buf.put_u8(*byte);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            assert_eq!(codec.next_index, fed + 1);
        }
        // A trailing `\r` may start the delimiter: resume from it.
        buf.put_u8(b'\r');
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(codec.next_index, 6);
        buf.put_u8(b'\n');
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"abcdef");
        assert_eq!(codec.next_index, 0);
    }
}
