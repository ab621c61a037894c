//! The read side of a connection: the read buffer, its sizing and its accounting.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::ConnectionConfig;
use crate::buffers;
use crate::frame::{DecodeScope, ReadAllocation};
use crate::stats::{ChannelStats, MemoryKind};
use crate::tether::Tether;

/// The read side: the read buffer, its sizing and its accounting.
///
/// Each allocation the buffer reads into is charged to the connection at full capacity
/// ([`ReadAllocation`]), shared with the frames cut from it, so that the charge lasts as
/// long as any of them keeps the allocation alive. An allocation is recognised by where
/// it ends (`ptr + capacity` of the buffer is unchanged by splitting frames off its
/// front, and changes when the buffer moves to a new allocation).
pub(super) struct Reader<'a> {
    buffer: BytesMut,
    /// The current allocation's charge and the connection's tether, made current around
    /// each `decode` call so that frames are charged and tracked.
    scope: Option<DecodeScope>,
    /// The end address of the allocation `scope` charges (0: none).
    fingerprint: usize,
    /// Bytes of a partial frame, moved from the read-buffer figure to the decoder's.
    decoder: usize,
    read_size: usize,
    config: &'a ConnectionConfig,
    stats: Arc<ChannelStats>,
    tether: Arc<Tether>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(
        config: &'a ConnectionConfig,
        stats: Arc<ChannelStats>,
        tether: Arc<Tether>,
    ) -> Reader<'a> {
        Reader {
            buffer: BytesMut::new(),
            scope: None,
            fingerprint: 0,
            decoder: 0,
            read_size: config.initial_read_size,
            config,
            stats,
            tether,
        }
    }

    /// Whether bytes of an unfinished frame are held.
    pub(super) fn holds_partial_frame(&self) -> bool {
        self.decoder > 0
    }

    pub(super) fn poll_read<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        source: &mut R,
        cx: &mut TaskContext<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() == 0 {
            self.buffer = buffers::take(self.read_size);
        }
        let spare = self.buffer.capacity() - self.buffer.len();
        if spare < self.read_size / 2 {
            self.buffer.reserve(self.read_size);
        }
        let spare = self.buffer.capacity() - self.buffer.len();
        let result = tokio_util::io::poll_read_buf(Pin::new(source), cx, &mut self.buffer);
        match &result {
            Poll::Ready(Ok(n)) => {
                // Adapt the read size as Netty's adaptive allocator does: grow while
                // reads fill the buffer, shrink when they use little of it.
                if *n == spare && self.read_size < self.config.max_read_size {
                    self.read_size = (self.read_size * 2).min(self.config.max_read_size);
                } else if *n < self.read_size / 8 && self.read_size > self.config.initial_read_size
                {
                    self.read_size /= 2;
                }
            }
            // Readiness was stale: do not hold a buffer while waiting.
            Poll::Pending => self.settle(),
            Poll::Ready(Err(_)) => {}
        }
        self.account();
        result
    }

    /// Decodes the next frame with this connection's accounting scope current.
    pub(super) fn decode<C: Decoder>(
        &mut self,
        codec: &mut C,
    ) -> std::result::Result<Option<C::Item>, C::Error> {
        let buffer = &mut self.buffer;
        crate::frame::decoding(&mut self.scope, || codec.decode(buffer))
    }

    /// Like [`Reader::decode`], at the end of the stream.
    pub(super) fn decode_eof<C: Decoder>(
        &mut self,
        codec: &mut C,
    ) -> std::result::Result<Option<C::Item>, C::Error> {
        let buffer = &mut self.buffer;
        crate::frame::decoding(&mut self.scope, || codec.decode_eof(buffer))
    }

    /// After decoding: what is left is a partial frame (the decoder's figure); release
    /// the buffer if it holds nothing, so an idle connection holds no read buffer.
    pub(super) fn settle(&mut self) {
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            self.let_go();
        }
        // After re-pinning: a codec's `reserve` may have moved the partial frame to a
        // new allocation, whose charge it is then taken from.
        self.account();
        self.set_decoder(self.buffer.len());
    }

    /// Gives the (empty) buffer back to the pool — unless frames still pin its
    /// allocation: reusing its tail would charge those bytes twice.
    fn let_go(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        let shared = self
            .scope
            .as_ref()
            .is_some_and(|scope| Arc::strong_count(&scope.allocation) > 1);
        if !shared {
            buffers::give(buffer);
        }
    }

    /// Charges a new allocation when the buffer has moved to one (the old charge stays
    /// with the frames that still pin the old allocation), and the growth of the current
    /// one when it grew in place (the same end, a lower start).
    fn account(&mut self) {
        let capacity = self.buffer.capacity();
        let fingerprint = if capacity == 0 {
            0
        } else {
            self.buffer.as_ptr() as usize + capacity
        };
        if fingerprint == self.fingerprint {
            if let Some(scope) = &self.scope {
                scope.allocation.grow_to(capacity);
            }
            return;
        }
        self.set_decoder(0);
        self.scope = (capacity > 0).then(|| DecodeScope {
            allocation: ReadAllocation::new(capacity, &self.stats),
            tether: self.tether.clone(),
        });
        self.fingerprint = fingerprint;
    }

    fn set_decoder(&mut self, bytes: usize) {
        if bytes != self.decoder {
            self.stats
                .meter(MemoryKind::Decoder)
                .update(self.decoder, bytes);
            self.stats
                .meter(MemoryKind::ReadBuffer)
                .update(bytes, self.decoder);
            self.decoder = bytes;
        }
    }

    pub(super) fn release(&mut self) {
        if self.buffer.capacity() > 0 {
            self.buffer.clear();
            self.let_go();
        }
        self.account();
    }
}

/// Releases the read side's charges however the connection task ends — including when
/// it is cancelled (a dropped client `Connection`, a runtime shutting down).
impl Drop for Reader<'_> {
    fn drop(&mut self) {
        self.release();
    }
}
