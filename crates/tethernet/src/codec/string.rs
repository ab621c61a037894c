//! UTF-8 strings over any framing: Netty's `StringDecoder` and `StringEncoder`.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::{utf8_to_string, CodecError};

/// A codec that turns the frames of an inner framing codec into UTF-8
/// `String`s and back.
///
/// The inner codec does the framing and enforces the maximum frame length. It
/// can be any decoder whose items are [`BytesMut`] frames and whose error
/// converts into [`CodecError`], such as [`LengthFieldCodec`] or tokio_util's
/// `LengthDelimitedCodec`. A frame that is not valid UTF-8 is consumed and
/// reported as [`CodecError::InvalidUtf8`].
///
/// The encoder accepts anything that is `AsRef<str>` (`&str`, `String`, ...)
/// and hands its bytes to the inner codec's `Encoder<&[u8]>` implementation,
/// which all framing codecs of this module have.
///
/// [`LengthFieldCodec`]: super::LengthFieldCodec
///
/// # Example
///
/// ```
/// use bytes::BytesMut;
/// use tethernet::codec::{LengthFieldCodec, StringCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = StringCodec::new(LengthFieldCodec::new(1024));
/// let mut buf = BytesMut::new();
/// codec.encode("héllo", &mut buf).unwrap();
/// assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some("héllo"));
/// ```
#[derive(Debug, Clone)]
pub struct StringCodec<C> {
    inner: C,
}

impl<C> StringCodec<C> {
    /// Wraps the framing codec `inner`.
    pub fn new(inner: C) -> Self {
        Self { inner }
    }

    /// The inner framing codec.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The inner framing codec, mutably.
    pub fn inner_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the inner framing codec.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C> Decoder for StringCodec<C>
where
    C: Decoder,
    C::Item: AsRef<[u8]>,
    C::Error: Into<CodecError>,
{
    type Item = String;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, CodecError> {
        match self.inner.decode(src).map_err(Into::into)? {
            Some(frame) => utf8_to_string(frame.as_ref()).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, CodecError> {
        match self.inner.decode_eof(src).map_err(Into::into)? {
            Some(frame) => utf8_to_string(frame.as_ref()).map(Some),
            None => Ok(None),
        }
    }
}

impl<C, S> Encoder<S> for StringCodec<C>
where
    C: for<'a> Encoder<&'a [u8]>,
    for<'a> <C as Encoder<&'a [u8]>>::Error: Into<CodecError>,
    S: AsRef<str>,
{
    type Error = CodecError;

    fn encode(&mut self, text: S, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.inner
            .encode(text.as_ref().as_bytes(), dst)
            .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::LengthDelimitedCodec;

    #[test]
    fn decodes_frames_of_a_tokio_util_codec() {
        let mut codec = StringCodec::new(LengthDelimitedCodec::new());
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x02hi\x00\x00\x00\x01\xFF"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some("hi"));
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::InvalidUtf8 { valid_up_to: 0 }));
        assert!(buf.is_empty());
    }
}
