//! The write side of a connection: the codec, the write buffer with its watermarks and the
//! outbound queue other tasks write through (what Netty keeps in `ChannelOutboundBuffer`).
//!
//! Everything written reaches the socket through [`Writer::encode`]: handler writes on the
//! connection's own thread directly, other tasks' writes through the outbound queue
//! ([`Writer::encode_queued`]). The buffer stays within the high watermark plus one
//! message; over the high watermark the socket is not read, and a forced flush stops at
//! the low watermark.

use std::io;
use std::task::{ready, Context as TaskContext, Poll};

use bytes::{Buf, BytesMut};
use tokio_util::codec::Encoder;

use super::{ConnectionConfig, Socket};
use crate::buffers;
use crate::error::{Error, Result};
use crate::pipeline::context::DirectSink;
use crate::queue::ByteReceiver;
use crate::size::MessageSize;
use crate::stats::{ChannelStats, MemoryKind};

/// Size of a write buffer taken when a connection first has something to write.
const WRITE_BUFFER_SIZE: usize = 8 * 1024;

/// The write side: codec, write buffer and the outbound queue from other tasks.
pub(super) struct Writer<'a, T, C, W> {
    pub(super) stream: &'a T,
    /// The pipeline's codec; the read side decodes with it too.
    pub(super) codec: &'a mut C,
    buffer: BytesMut,
    /// Capacity last reported to the meter.
    accounted: usize,
    /// Where the charged allocation ends (0: none).
    end: usize,
    pub(super) outbound: ByteReceiver<W>,
    stats: &'a ChannelStats,
    /// Messages encoded since the counter was last published (once per wake-up, not
    /// per message: an atomic add per frame is measurable in the echo benchmark).
    written: u64,
    /// Set when bytes reach the socket; read (and cleared) by the idle timer.
    wrote: bool,
    high_watermark: usize,
    low_watermark: usize,
}

impl<'a, T, C, W> Writer<'a, T, C, W> {
    pub(super) fn new(
        stream: &'a T,
        codec: &'a mut C,
        outbound: ByteReceiver<W>,
        stats: &'a ChannelStats,
        config: &ConnectionConfig,
    ) -> Self {
        Writer {
            stream,
            codec,
            buffer: BytesMut::new(),
            accounted: 0,
            end: 0,
            outbound,
            stats,
            written: 0,
            wrote: false,
            high_watermark: config.write_high_watermark,
            low_watermark: config.write_low_watermark,
        }
    }

    /// Bytes encoded and not yet written to the socket.
    pub(super) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Whether bytes reached the socket since the last call (for the idle timer).
    pub(super) fn take_wrote(&mut self) -> bool {
        std::mem::take(&mut self.wrote)
    }

    /// Tells whether the connection's writability changes now: it holds more than the
    /// high watermark of outbound bytes (queued by other tasks plus buffered), or is back
    /// under the low watermark. `writable` is the flag handles read.
    pub(super) fn writability_change(
        &self,
        writable: &std::sync::atomic::AtomicBool,
    ) -> Option<bool> {
        use std::sync::atomic::Ordering;
        let pending = self.buffer.len() + self.stats.meter(MemoryKind::OutboundQueue).current();
        let was = writable.load(Ordering::Relaxed);
        if was && pending > self.high_watermark {
            writable.store(false, Ordering::Relaxed);
            Some(false)
        } else if !was && pending <= self.low_watermark {
            writable.store(true, Ordering::Relaxed);
            Some(true)
        } else {
            None
        }
    }
}

impl<T, C, W> Writer<'_, T, C, W>
where
    T: Socket,
    C: Encoder<W> + Send,
    <C as Encoder<W>>::Error: std::error::Error + Send + Sync + 'static,
    W: MessageSize + Send,
{
    /// Encodes what other tasks queued, while the buffer is under the high watermark.
    pub(super) fn encode_queued(&mut self) -> Result<()> {
        while !self.is_over_high_watermark() {
            let Some(message) = self.outbound.try_recv() else {
                break;
            };
            self.encode(message)?;
        }
        Ok(())
    }

    /// Writes until at most `limit` bytes are buffered; `Ok(false)` if the socket is full.
    pub(super) fn write_until(&mut self, limit: usize) -> Result<bool> {
        while self.buffer.len() > limit {
            match self.stream.try_write(&self.buffer) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    self.buffer.advance(n);
                    self.wrote = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error.into()),
            }
        }
        if limit == 0 && self.stream.has_pending_writes() && !self.stream.try_flush()? {
            return Ok(false);
        }
        Ok(true)
    }

    fn poll_write_until(&mut self, cx: &mut TaskContext<'_>, limit: usize) -> Poll<Result<()>> {
        loop {
            if self.write_until(limit)? {
                self.account();
                return Poll::Ready(Ok(()));
            }
            // What the buffer holds while the peer is not reading is counted now, not
            // once it drains.
            self.account();
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }

    /// Encodes everything other tasks queued, then writes it all out.
    pub(super) fn poll_flush_outbound(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        loop {
            self.encode_queued()?;
            ready!(self.poll_write_until(cx, 0))?;
            if self.outbound.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Releases an empty write buffer, so an idle connection holds none.
    pub(super) fn settle(&mut self) {
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            buffers::give(std::mem::take(&mut self.buffer));
        }
        self.account();
        self.stats.count_written(std::mem::take(&mut self.written));
    }

    /// Charges the write buffer's allocation. `BytesMut::capacity` counts from the
    /// first unwritten byte, so it shrinks as bytes are written out of the same
    /// allocation: the allocation is recognised by where it ends (as the reader does)
    /// and charged at the most capacity seen for it.
    fn account(&mut self) {
        let capacity = self.buffer.capacity();
        let end = if capacity == 0 {
            0
        } else {
            self.buffer.as_ptr() as usize + capacity
        };
        let allocated = if end != 0 && end == self.end {
            self.accounted.max(capacity)
        } else {
            capacity
        };
        self.end = end;
        if allocated != self.accounted {
            self.stats
                .meter(MemoryKind::WriteBuffer)
                .update(self.accounted, allocated);
            self.accounted = allocated;
        }
    }

    pub(super) fn release(&mut self) {
        buffers::give(std::mem::take(&mut self.buffer));
        self.account();
        self.stats.count_written(std::mem::take(&mut self.written));
    }

    /// Grows the write buffer for `hint` more bytes: doubling while that stays within
    /// the high watermark plus one message, to exactly what is needed past it.
    fn make_room(&mut self, hint: usize) {
        let capacity = self.buffer.capacity();
        let needed = self.buffer.len() + hint;
        let bound = self.high_watermark.max(WRITE_BUFFER_SIZE) + hint;
        // What `reserve` may allocate: double the allocation (bytes already written out
        // of it included), or the allocation plus what is asked for.
        let allocation = self.accounted.max(capacity);
        if allocation.saturating_mul(2).max(allocation + hint) <= bound {
            self.buffer.reserve(hint);
            return;
        }
        let target = needed.max(capacity.saturating_mul(2).min(bound));
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(&self.buffer);
        buffers::give(std::mem::replace(&mut self.buffer, grown));
    }
}

/// Releases the write buffer's charge however the connection task ends (see `Reader`).
impl<T, C, W> Drop for Writer<'_, T, C, W> {
    fn drop(&mut self) {
        buffers::give(std::mem::take(&mut self.buffer));
        self.stats
            .meter(MemoryKind::WriteBuffer)
            .sub(std::mem::take(&mut self.accounted));
    }
}

impl<T, C, W> DirectSink<W> for Writer<'_, T, C, W>
where
    T: Socket,
    C: Encoder<W> + Send,
    <C as Encoder<W>>::Error: std::error::Error + Send + Sync + 'static,
    W: MessageSize + Send,
{
    fn encode(&mut self, message: W) -> Result<()> {
        if self.buffer.capacity() == 0 {
            self.buffer = buffers::take(WRITE_BUFFER_SIZE);
        }
        // Make room for the message here rather than in the codec, whose `reserve`
        // doubles the buffer: past the high watermark that would hold up to twice it.
        // The buffer stays within the high watermark plus one message (as measured by
        // `MessageSize`, which is at least the encoded size for the crate's codecs).
        let hint = message.message_size();
        if self.buffer.capacity() - self.buffer.len() < hint {
            self.make_room(hint);
        }
        self.codec
            .encode(message, &mut self.buffer)
            .map_err(Error::codec)?;
        self.written += 1;
        Ok(())
    }

    fn is_over_high_watermark(&self) -> bool {
        self.buffer.len() > self.high_watermark
    }

    fn poll_flush_to_low_watermark(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        let limit = self.low_watermark;
        self.poll_write_until(cx, limit)
    }

    fn poll_flush(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.poll_write_until(cx, 0)
    }

    fn poll_serve_outbound(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        loop {
            if !self.buffer.is_empty() && !self.write_until(0)? {
                // The socket is full: wait for it; take no more while over the watermark.
                if self.stream.poll_write_ready(cx)?.is_ready() {
                    continue;
                }
                if self.is_over_high_watermark() {
                    return Poll::Pending;
                }
            }
            self.account();
            match self.outbound.poll_recv(cx) {
                Poll::Ready(Some(message)) => self.encode(message)?,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
