//! JSON values over any framing, with serde (feature `json`).

use std::fmt;
use std::marker::PhantomData;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use super::CodecError;

/// A codec that carries one JSON document of type `T` per frame of an inner
/// framing codec `C`.
///
/// The inner codec does the framing and enforces the maximum frame length; it
/// can be any decoder whose items are [`BytesMut`] frames and whose error
/// converts into [`CodecError`]. Each frame is deserialized with `serde_json`;
/// a frame that is not valid JSON for `T` is consumed and reported as
/// [`CodecError::Json`].
///
/// The encoder serializes values with `serde_json` and hands the bytes to the
/// inner codec's `Encoder<&[u8]>`. It is implemented both for `T` and for
/// `&T`, so values can be sent by value or by reference.
///
/// # Example
///
/// ```
/// use bytes::BytesMut;
/// use serde::{Deserialize, Serialize};
/// use tethernet::codec::{DelimiterCodec, JsonCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Ping {
///     seq: u32,
/// }
///
/// let mut codec = JsonCodec::<Ping, _>::new(DelimiterCodec::new(b"\n", 4096));
/// let mut buf = BytesMut::new();
/// codec.encode(&Ping { seq: 7 }, &mut buf).unwrap();
/// assert_eq!(&buf[..], b"{\"seq\":7}\n");
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Ping { seq: 7 }));
/// ```
pub struct JsonCodec<T, C> {
    inner: C,
    _type: PhantomData<fn(T) -> T>,
}

impl<T, C> JsonCodec<T, C> {
    /// Wraps the framing codec `inner`.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            _type: PhantomData,
        }
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

    /// Serializes `value` and encodes it as one frame of the inner codec.
    fn encode_value(&mut self, value: &T, dst: &mut BytesMut) -> Result<(), CodecError>
    where
        T: Serialize,
        C: for<'a> Encoder<&'a [u8]>,
        for<'a> <C as Encoder<&'a [u8]>>::Error: Into<CodecError>,
    {
        let json = serde_json::to_vec(value).map_err(CodecError::Json)?;
        self.inner.encode(&json[..], dst).map_err(Into::into)
    }
}

impl<T, C: fmt::Debug> fmt::Debug for JsonCodec<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonCodec")
            .field("type", &std::any::type_name::<T>())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<T, C: Clone> Clone for JsonCodec<T, C> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<T, C> Decoder for JsonCodec<T, C>
where
    T: DeserializeOwned,
    C: Decoder,
    C::Item: AsRef<[u8]>,
    C::Error: Into<CodecError>,
{
    type Item = T;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<T>, CodecError> {
        match self.inner.decode(src).map_err(Into::into)? {
            Some(frame) => serde_json::from_slice(frame.as_ref())
                .map(Some)
                .map_err(CodecError::Json),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<T>, CodecError> {
        match self.inner.decode_eof(src).map_err(Into::into)? {
            Some(frame) => serde_json::from_slice(frame.as_ref())
                .map(Some)
                .map_err(CodecError::Json),
            None => Ok(None),
        }
    }
}

impl<T, C> Encoder<T> for JsonCodec<T, C>
where
    T: Serialize,
    C: for<'a> Encoder<&'a [u8]>,
    for<'a> <C as Encoder<&'a [u8]>>::Error: Into<CodecError>,
{
    type Error = CodecError;

    fn encode(&mut self, value: T, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_value(&value, dst)
    }
}

impl<'v, T, C> Encoder<&'v T> for JsonCodec<T, C>
where
    T: Serialize,
    C: for<'a> Encoder<&'a [u8]>,
    for<'a> <C as Encoder<&'a [u8]>>::Error: Into<CodecError>,
{
    type Error = CodecError;

    fn encode(&mut self, value: &'v T, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_value(value, dst)
    }
}
