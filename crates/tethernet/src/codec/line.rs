//! Text lines: Netty's `LineBasedFrameDecoder` with UTF-8 decoding.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{utf8_to_string, CodecError};

/// A codec for UTF-8 text lines terminated by `\n` or `\r\n`.
///
/// Decoded items are the lines without their terminator. A line longer than
/// `max_line_length` bytes (terminator excluded) is rejected with
/// [`CodecError::FrameTooLong`] as soon as more than that many bytes are
/// buffered without a newline. A line that is not valid UTF-8 is consumed and
/// reported as [`CodecError::InvalidUtf8`]. At end of stream,
/// [`decode_eof`](Decoder::decode_eof) returns a last line that has no
/// terminator.
///
/// The encoder writes each line followed by `\n`. It rejects lines longer than
/// `max_line_length` bytes and lines that would not decode back to themselves
/// (containing `\n` or ending with `\r`).
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_line_length: usize,
    /// Number of bytes at the front of the buffer already known to hold no
    /// `\n`; the next search starts there.
    next_index: usize,
}

impl LineCodec {
    /// A codec for lines of at most `max_line_length` bytes, not counting the
    /// `\n` or `\r\n` terminator.
    pub fn new(max_line_length: usize) -> Self {
        Self {
            max_line_length,
            next_index: 0,
        }
    }

    /// The maximum line length in bytes, terminator excluded.
    pub fn max_line_length(&self) -> usize {
        self.max_line_length
    }

    /// Length of `line` without a trailing `\r`.
    fn content_length(line: &[u8]) -> usize {
        match line.last() {
            Some(b'\r') => line.len() - 1,
            _ => line.len(),
        }
    }

    /// Splits the first `length` bytes off `src`, drops `terminator_length`
    /// more, and decodes the line without a trailing `\r`.
    fn take_line(
        &mut self,
        src: &mut BytesMut,
        length: usize,
        terminator_length: usize,
    ) -> Result<String, CodecError> {
        self.next_index = 0;
        let line = src.split_to(length);
        src.advance(terminator_length);
        utf8_to_string(&line[..Self::content_length(&line)])
    }
}

impl Decoder for LineCodec {
    type Item = String;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, CodecError> {
        // A newline can be at most at index max + 1 (after max bytes and a `\r`).
        let search_end = src.len().min(self.max_line_length.saturating_add(2));
        let start = self.next_index.min(search_end);
        match src[start..search_end].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let newline = start + offset;
                let length = Self::content_length(&src[..newline]);
                if length > self.max_line_length {
                    return Err(CodecError::too_long(length, self.max_line_length));
                }
                self.take_line(src, newline, 1).map(Some)
            }
            None => {
                self.next_index = search_end;
                // Everything buffered belongs to the line, except a trailing
                // `\r` that may turn out to be part of the terminator.
                if Self::content_length(src) > self.max_line_length {
                    return Err(CodecError::too_long(src.len(), self.max_line_length));
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, CodecError> {
        match self.decode(src)? {
            Some(line) => Ok(Some(line)),
            None if src.is_empty() => Ok(None),
            // `decode` checked the length: this last, unterminated line fits.
            None => self.take_line(src, src.len(), 0).map(Some),
        }
    }
}

impl<S: AsRef<str>> Encoder<S> for LineCodec {
    type Error = CodecError;

    fn encode(&mut self, line: S, dst: &mut BytesMut) -> Result<(), CodecError> {
        let line = line.as_ref().as_bytes();
        if line.len() > self.max_line_length {
            return Err(CodecError::too_long(line.len(), self.max_line_length));
        }
        if line.contains(&b'\n') {
            return Err(CodecError::InvalidFrame(
                "line to encode contains a newline".to_owned(),
            ));
        }
        if line.last() == Some(&b'\r') {
            return Err(CodecError::InvalidFrame(
                "line to encode ends with a carriage return".to_owned(),
            ));
        }
        dst.reserve(line.len() + 1);
        dst.extend_from_slice(line);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_the_newline_search_where_it_stopped() {
        let mut codec = LineCodec::new(1024);
        let mut buf = BytesMut::new();
        for (fed, byte) in b"abcdef".iter().enumerate() {
            buf.put_u8(*byte);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            assert_eq!(codec.next_index, fed + 1);
        }
        buf.put_u8(b'\n');
        assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some("abcdef"));
        assert_eq!(codec.next_index, 0);
    }
}
