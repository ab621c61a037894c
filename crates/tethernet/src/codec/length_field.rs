//! Frames carrying a length field: Netty's `LengthFieldBasedFrameDecoder` and
//! `LengthFieldPrepender`.

use crate::Frame;
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::CodecError;

/// A codec for frames whose length is given by a binary length field.
///
/// Decoding follows Netty's `LengthFieldBasedFrameDecoder` exactly. Once
/// `length_field_offset + length_field_length` bytes are buffered, the unsigned
/// length field is read and the length of the whole frame is computed as
///
/// ```text
/// frame length = field value + length_adjustment + length_field_offset + length_field_length
/// ```
///
/// The frame length is checked against `max_frame_length` right away, before
/// any of the frame's body is buffered. Once the whole frame has arrived, its
/// first `initial_bytes_to_strip` bytes are dropped and the rest is returned
/// (as a zero-copy [`BytesMut`] split off the read buffer).
///
/// Encoding follows Netty's `LengthFieldPrepender`: it writes a length field of
/// the configured width and byte order whose value is
/// `payload.len() - length_adjustment`, followed by the payload. With
/// `length_field_offset == 0` and `initial_bytes_to_strip ==
/// length_field_length`, decoding what was encoded yields the original
/// payloads. Any header bytes that other configurations expect (before or
/// after the length field) are not written by the encoder; include the ones
/// after the field at the start of the payload. The encoder enforces the same
/// limit as the decoder: the encoded frame (length field plus payload) may not
/// exceed `max_frame_length`, so every frame it writes can be read back by a
/// decoder with the same configuration.
///
/// [`LengthFieldCodec::new`] gives the most common layout, a 4-byte big-endian
/// length followed by the payload; use [`LengthFieldCodec::builder`] for the
/// others.
///
/// # Example
///
/// Netty's "2 bytes length field at offset 1 in the middle of 4 bytes header,
/// strip the first header field and the length field":
///
/// ```
/// use bytes::BytesMut;
/// use tethernet::codec::LengthFieldCodec;
/// use tokio_util::codec::Decoder;
///
/// let mut codec = LengthFieldCodec::builder(1024)
///     .length_field_offset(1)
///     .length_field_length(2)
///     .length_adjustment(1)
///     .initial_bytes_to_strip(3)
///     .build();
/// let mut buf = BytesMut::from(&b"\xCA\x00\x0C\xFEHELLO, WORLD"[..]);
/// let frame = codec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(&frame[..], b"\xFEHELLO, WORLD");
/// ```
#[derive(Debug, Clone)]
pub struct LengthFieldCodec {
    max_frame_length: usize,
    length_field_offset: usize,
    length_field_length: usize,
    length_adjustment: i64,
    initial_bytes_to_strip: usize,
    big_endian: bool,
    /// Length of the frame at the front of the buffer, once its header has
    /// been read and validated.
    pending_frame_length: Option<usize>,
}

/// Builder for a [`LengthFieldCodec`], created by [`LengthFieldCodec::builder`].
///
/// Defaults: offset 0, 4-byte big-endian length field, adjustment 0, and
/// nothing stripped (unlike [`LengthFieldCodec::new`], which strips the
/// length field).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LengthFieldCodecBuilder {
    max_frame_length: usize,
    length_field_offset: usize,
    length_field_length: usize,
    length_adjustment: i64,
    initial_bytes_to_strip: usize,
    big_endian: bool,
}

impl LengthFieldCodec {
    /// A codec for frames made of a 4-byte big-endian length and then that
    /// many payload bytes; decoded items are the payloads.
    ///
    /// `max_frame_length` bounds the whole frame, length field included, so
    /// the largest payload is `max_frame_length - 4` bytes.
    pub fn new(max_frame_length: usize) -> Self {
        Self::builder(max_frame_length)
            .initial_bytes_to_strip(4)
            .build()
    }

    /// Starts configuring a codec whose frames are at most `max_frame_length`
    /// bytes long (as Netty counts them: header included, before stripping).
    pub fn builder(max_frame_length: usize) -> LengthFieldCodecBuilder {
        LengthFieldCodecBuilder {
            max_frame_length,
            length_field_offset: 0,
            length_field_length: 4,
            length_adjustment: 0,
            initial_bytes_to_strip: 0,
            big_endian: true,
        }
    }

    /// The maximum frame length, header included.
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// True for the most common shape, what [`LengthFieldCodec::new`] makes: a 4-byte
    /// big-endian length of the payload at offset 0, no adjustment, the header stripped.
    /// Decoding and encoding take a shorter path for it (the echo benchmark's hot path).
    fn is_plain_prefix(&self) -> bool {
        self.length_field_offset == 0
            && self.length_field_length == 4
            && self.big_endian
            && self.length_adjustment == 0
            && self.initial_bytes_to_strip == 4
    }

    /// [`Decoder::decode`] for the plain prefix shape, when no frame length is pending.
    fn decode_plain_prefix(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(header) = src.get(..4) else {
            return Ok(None);
        };
        let payload_length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let frame_length = 4 + u64::from(payload_length);
        if frame_length > self.max_frame_length as u64 {
            return Err(CodecError::too_long(frame_length, self.max_frame_length));
        }
        // Fits usize: it is at most `max_frame_length`.
        let frame_length = frame_length as usize;
        if src.len() < frame_length {
            self.pending_frame_length = Some(frame_length);
            src.reserve(frame_length - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(Frame::split_from(src, frame_length - 4)))
    }

    /// Offset of the end of the length field from the start of the frame.
    fn length_field_end(&self) -> usize {
        self.length_field_offset + self.length_field_length
    }

    /// Largest value the length field can hold.
    fn max_field_value(&self) -> u64 {
        match self.length_field_length {
            8 => u64::MAX,
            width => (1u64 << (8 * width)) - 1,
        }
    }

    /// Reads the length field from `field`, which is exactly as long as it.
    fn read_field(&self, mut field: &[u8]) -> u64 {
        match (self.length_field_length, self.big_endian) {
            (1, _) => u64::from(field.get_u8()),
            (2, true) => u64::from(field.get_u16()),
            (2, false) => u64::from(field.get_u16_le()),
            (4, true) => u64::from(field.get_u32()),
            (4, false) => u64::from(field.get_u32_le()),
            (8, true) => field.get_u64(),
            (8, false) => field.get_u64_le(),
            (width, true) => field.get_uint(width),
            (width, false) => field.get_uint_le(width),
        }
    }

    /// Writes `value`, which fits, as the length field.
    fn write_field(&self, value: u64, dst: &mut BytesMut) {
        // Truncating casts are fine: `value` fits in the field's width.
        match (self.length_field_length, self.big_endian) {
            (1, _) => dst.put_u8(value as u8),
            (2, true) => dst.put_u16(value as u16),
            (2, false) => dst.put_u16_le(value as u16),
            (4, true) => dst.put_u32(value as u32),
            (4, false) => dst.put_u32_le(value as u32),
            (8, true) => dst.put_u64(value),
            (8, false) => dst.put_u64_le(value),
            (width, true) => dst.put_uint(value, width),
            (width, false) => dst.put_uint_le(value, width),
        }
    }

    /// Computes and validates the length of the frame whose header is at the
    /// front of `src` (which holds at least the whole header).
    fn frame_length(&self, src: &[u8]) -> Result<usize, CodecError> {
        let end = self.length_field_end();
        let value = self.read_field(&src[self.length_field_offset..end]);
        // i128 holds every combination of u64, i64 and usize without overflow.
        let frame_length = i128::from(value) + i128::from(self.length_adjustment) + end as i128;
        if frame_length < end as i128 {
            return Err(CodecError::InvalidFrame(format!(
                "adjusted frame length ({frame_length}) is less than the end of the length \
                 field ({end}); length field value {value}, length adjustment {}",
                self.length_adjustment
            )));
        }
        if frame_length > self.max_frame_length as i128 {
            return Err(CodecError::too_long(frame_length, self.max_frame_length));
        }
        // The frame length is at most `max_frame_length`, so it fits in usize.
        let frame_length = frame_length as usize;
        if frame_length < self.initial_bytes_to_strip {
            return Err(CodecError::InvalidFrame(format!(
                "frame length ({frame_length}) is less than initial_bytes_to_strip ({})",
                self.initial_bytes_to_strip
            )));
        }
        Ok(frame_length)
    }
}

impl LengthFieldCodecBuilder {
    /// Number of bytes before the length field (default 0).
    pub fn length_field_offset(mut self, offset: usize) -> Self {
        self.length_field_offset = offset;
        self
    }

    /// Width of the length field in bytes: 1, 2, 3, 4 or 8 (default 4).
    ///
    /// Other widths make [`build`](Self::build) panic.
    pub fn length_field_length(mut self, length: usize) -> Self {
        self.length_field_length = length;
        self
    }

    /// Value added to the length field to get the number of bytes that follow
    /// it (default 0). Negative when the field counts the header too, positive
    /// when more header bytes follow the field but are not counted.
    pub fn length_adjustment(mut self, adjustment: i64) -> Self {
        self.length_adjustment = adjustment;
        self
    }

    /// Number of bytes removed from the start of each decoded frame
    /// (default 0). Set it to `length_field_offset + length_field_length` to
    /// get the frame without its header.
    pub fn initial_bytes_to_strip(mut self, strip: usize) -> Self {
        self.initial_bytes_to_strip = strip;
        self
    }

    /// Reads and writes the length field in little-endian byte order.
    pub fn little_endian(mut self) -> Self {
        self.big_endian = false;
        self
    }

    /// Reads and writes the length field in big-endian (network) byte order,
    /// the default.
    pub fn big_endian(mut self) -> Self {
        self.big_endian = true;
        self
    }

    /// Builds the codec.
    ///
    /// # Panics
    ///
    /// Panics if the length field length is not 1, 2, 3, 4 or 8, or if
    /// `length_field_offset + length_field_length` overflows `usize`.
    pub fn build(self) -> LengthFieldCodec {
        assert!(
            matches!(self.length_field_length, 1 | 2 | 3 | 4 | 8),
            "LengthFieldCodec: length_field_length must be 1, 2, 3, 4 or 8 bytes, not {}",
            self.length_field_length
        );
        assert!(
            self.length_field_offset
                .checked_add(self.length_field_length)
                .is_some(),
            "LengthFieldCodec: length_field_offset ({}) is too large",
            self.length_field_offset
        );
        LengthFieldCodec {
            max_frame_length: self.max_frame_length,
            length_field_offset: self.length_field_offset,
            length_field_length: self.length_field_length,
            length_adjustment: self.length_adjustment,
            initial_bytes_to_strip: self.initial_bytes_to_strip,
            big_endian: self.big_endian,
            pending_frame_length: None,
        }
    }
}

impl Decoder for LengthFieldCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if self.is_plain_prefix() && self.pending_frame_length.is_none() {
            return self.decode_plain_prefix(src);
        }
        let frame_length = match self.pending_frame_length {
            Some(length) => length,
            None => {
                if src.len() < self.length_field_end() {
                    return Ok(None);
                }
                let length = self.frame_length(src)?;
                self.pending_frame_length = Some(length);
                length
            }
        };
        if src.len() < frame_length {
            // Make room for exactly the rest of this frame.
            src.reserve(frame_length - src.len());
            return Ok(None);
        }
        self.pending_frame_length = None;
        let mut frame = Frame::split_from(src, frame_length);
        frame.advance(self.initial_bytes_to_strip);
        Ok(Some(frame))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::truncated(src.len())),
        }
    }
}

impl<B: AsRef<[u8]>> Encoder<B> for LengthFieldCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: B, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = payload.as_ref();
        let fits = payload
            .len()
            .checked_add(4)
            .is_some_and(|n| n <= self.max_frame_length);
        if self.is_plain_prefix() && fits {
            // The common shape (see `is_plain_prefix`): no adjustment to apply. Lengths
            // that do not fit the u32 field fall through to the general path's error.
            if let Ok(length) = u32::try_from(payload.len()) {
                dst.reserve(4 + payload.len());
                dst.extend_from_slice(&length.to_be_bytes());
                dst.extend_from_slice(payload);
                return Ok(());
            }
        }
        let width = self.length_field_length;
        let frame_length = width.saturating_add(payload.len());
        if frame_length > self.max_frame_length {
            return Err(CodecError::too_long(frame_length, self.max_frame_length));
        }
        let value = payload.len() as i128 - i128::from(self.length_adjustment);
        if value < 0 {
            return Err(CodecError::InvalidFrame(format!(
                "payload of {} bytes is shorter than the length adjustment ({})",
                payload.len(),
                self.length_adjustment
            )));
        }
        let max_value = self.max_field_value();
        if value > i128::from(max_value) {
            // The largest frame the length field can describe.
            let largest =
                i128::from(max_value) + i128::from(self.length_adjustment) + width as i128;
            let largest = usize::try_from(largest).unwrap_or(usize::MAX);
            return Err(CodecError::too_long(frame_length, largest));
        }
        dst.reserve(frame_length);
        self.write_field(value as u64, dst);
        dst.extend_from_slice(payload);
        Ok(())
    }
}
