//! [`Frame`]: the bytes of one decoded frame, accounted to its connection and watched
//! for leaks.
//!
//! A frame is cut out of its connection's read buffer without copying, so it shares the
//! buffer's allocation: a 40-byte frame taken from a 64 KiB read buffer keeps all 64 KiB
//! alive for as long as it lives. The framework therefore charges each read-buffer
//! allocation, at its full capacity, to the connection that read into it
//! ([`MemoryKind::ReadBuffer`](crate::MemoryKind::ReadBuffer)), and keeps the charge
//! until the last frame cut from it is dropped — even after the connection has closed.
//! A frame kept forever shows up in the process-wide totals, and, when it is sampled by
//! leak detection ([`crate::leak`]), in a leak report naming the connection and where the
//! frame was created.
//!
//! Data meant to outlive its connection (a message stored in a cache, say) should be
//! [`detach`](Frame::detach)ed: copied into a buffer of exactly its size, which pins
//! nothing and is no longer the connection's.

use std::cell::Cell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::leak::{self, LeakKind};
use crate::stats::{ChannelStats, MemoryKind};
use crate::tether::Tether;

/// What a frame keeps alive: a read-buffer allocation of a connection, charged to it at
/// full capacity until the reader and every frame cut from it have let go of it; or, for a
/// frame sampled by leak detection, its leak record plus the allocation.
///
/// One pointer in every frame (so a frame is 40 bytes: moving frames through handler
/// futures stays cheap).
pub(crate) enum ReadAllocation {
    Allocation {
        /// Charged so far: the capacity when first seen, raised if the buffer later
        /// reclaims more of the same allocation.
        capacity: AtomicUsize,
        stats: Arc<ChannelStats>,
    },
    Tracked {
        allocation: Arc<ReadAllocation>,
        tether: Arc<Tether>,
        key: u64,
    },
}

impl ReadAllocation {
    pub(crate) fn new(capacity: usize, stats: &Arc<ChannelStats>) -> Arc<ReadAllocation> {
        stats.meter(MemoryKind::ReadBuffer).add(capacity);
        Arc::new(ReadAllocation::Allocation {
            capacity: AtomicUsize::new(capacity),
            stats: stats.clone(),
        })
    }

    /// Raises the charge to `capacity` if the allocation turned out bigger (only the
    /// connection's reader calls this).
    pub(crate) fn grow_to(&self, capacity: usize) {
        if let ReadAllocation::Allocation {
            capacity: charged,
            stats,
        } = self
        {
            let before = charged.load(Ordering::Relaxed);
            if capacity > before {
                charged.store(capacity, Ordering::Relaxed);
                stats.meter(MemoryKind::ReadBuffer).add(capacity - before);
            }
        }
    }

    /// The allocation itself (not a frame's record).
    fn allocation(self: &Arc<Self>) -> &Arc<ReadAllocation> {
        match &**self {
            ReadAllocation::Allocation { .. } => self,
            ReadAllocation::Tracked { allocation, .. } => allocation,
        }
    }

    fn capacity(&self) -> usize {
        match self {
            ReadAllocation::Allocation { capacity, .. } => capacity.load(Ordering::Relaxed),
            ReadAllocation::Tracked { allocation, .. } => allocation.capacity(),
        }
    }

    fn tether(&self) -> Option<&Arc<Tether>> {
        match self {
            ReadAllocation::Allocation { .. } => None,
            ReadAllocation::Tracked { tether, .. } => Some(tether),
        }
    }

    /// A frame's pin on `allocation`: with a leak record if this frame is sampled.
    #[inline]
    fn pin(
        allocation: &Arc<ReadAllocation>,
        tether: &Arc<Tether>,
        len: usize,
        site: &'static Location<'static>,
    ) -> Arc<ReadAllocation> {
        let allocation = allocation.allocation();
        if sample() {
            let capacity = allocation.capacity();
            if let Some(key) =
                tether.track(LeakKind::Frame, len, capacity, site, "tethernet::Frame")
            {
                return Arc::new(ReadAllocation::Tracked {
                    allocation: allocation.clone(),
                    tether: tether.clone(),
                    key,
                });
            }
        }
        allocation.clone()
    }
}

impl Drop for ReadAllocation {
    fn drop(&mut self) {
        match self {
            ReadAllocation::Allocation { capacity, stats } => stats
                .meter(MemoryKind::ReadBuffer)
                .sub(capacity.load(Ordering::Relaxed)),
            ReadAllocation::Tracked { tether, key, .. } => tether.untrack(*key),
        }
    }
}

/// What frames decoded now belong to: set by the connection around each `decode` call.
pub(crate) struct DecodeScope {
    pub(crate) allocation: Arc<ReadAllocation>,
    pub(crate) tether: Arc<Tether>,
}

thread_local! {
    /// A `Cell` (moved in and out, never borrowed): cheaper per frame than a `RefCell`.
    static SCOPE: Cell<Option<DecodeScope>> = const { Cell::new(None) };
    /// Frames created on this thread since the last sampled one.
    static SAMPLE_COUNTER: Cell<u32> = const { Cell::new(0) };
}

/// Runs `decode` with `scope` current, so frames it creates are charged and tracked.
/// The scope is moved in and out (no reference counting per call).
pub(crate) fn decoding<R>(scope: &mut Option<DecodeScope>, decode: impl FnOnce() -> R) -> R {
    if scope.is_none() {
        return decode();
    }
    SCOPE.with(|current| current.set(scope.take()));
    // Restored even if `decode` panics (the panic is reported by the connection).
    struct Restore<'a>(&'a mut Option<DecodeScope>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            *self.0 = SCOPE.with(Cell::take);
        }
    }
    let _restore = Restore(scope);
    decode()
}

/// Notes that `message`, if it is a [`Frame`] tracked for leaks, was handed to the
/// handler `handler` (interned id): a leak report names the last handler a frame was
/// given to (Netty's `touch`). Free for other message types (the type test is decided at
/// compile time) and for frames not sampled.
#[inline]
pub(crate) fn touch<T: 'static>(message: &T, handler: u32) {
    if let Some(frame) = (message as &dyn std::any::Any).downcast_ref::<Frame>() {
        if let Some(ReadAllocation::Tracked { tether, key, .. }) = frame.owner.as_deref() {
            tether.touch(*key, handler);
        }
    }
}

/// Whether the next frame created on this thread is tracked for leaks.
#[inline]
fn sample() -> bool {
    match leak::level() {
        leak::LeakDetection::Off => false,
        leak::LeakDetection::Paranoid => true,
        leak::LeakDetection::Sampled => SAMPLE_COUNTER.with(|counter| {
            let n = counter.get() + 1;
            if n >= leak::SAMPLE_INTERVAL {
                counter.set(0);
                true
            } else {
                counter.set(n);
                false
            }
        }),
    }
}

/// The bytes of one frame, cut without copying from its connection's read buffer.
///
/// Reads like a byte slice (`Deref<Target = [u8]>`); encoders of this crate accept it
/// (they take any `AsRef<[u8]>`), so a handler can write a frame straight back. Frames
/// built from plain bytes ([`Frame::from`]) belong to no connection.
///
/// A frame created by a codec while a connection decodes shares the connection's read
/// buffer allocation: a 40-byte frame taken from a 64 KiB read buffer keeps all 64 KiB
/// alive for as long as it lives. Each read-buffer allocation is therefore charged, at
/// its full capacity, to the connection that read into it
/// ([`MemoryKind::ReadBuffer`](crate::MemoryKind::ReadBuffer)), until the last frame cut
/// from it is dropped — even after the connection has closed. A frame kept forever shows
/// in the process-wide totals and, when leak detection samples it ([`crate::leak`]), in a
/// leak report naming the connection and where the frame was created. Data meant to
/// outlive its connection should be [`detach`](Frame::detach)ed.
pub struct Frame {
    bytes: BytesMut,
    owner: Option<Arc<ReadAllocation>>,
}

impl Frame {
    /// Cuts the first `len` bytes off `buffer` as a frame: what a decoder calls to
    /// produce a frame. While a connection is decoding, the frame is charged to it and
    /// (when sampled) tracked for leaks with the caller's location as its creation site.
    ///
    /// # Panics
    ///
    /// If `len > buffer.len()`.
    #[track_caller]
    pub fn split_from(buffer: &mut BytesMut, len: usize) -> Frame {
        let bytes = buffer.split_to(len);
        let site = Location::caller();
        SCOPE.with(|cell| {
            let current = cell.take();
            let owner = current.as_ref().map(|scope| {
                ReadAllocation::pin(&scope.allocation, &scope.tether, bytes.len(), site)
            });
            cell.set(current);
            Frame { bytes, owner }
        })
    }

    /// Cuts the first `at` bytes off this frame into a new frame charged and tracked as
    /// this one is (with the caller's location as its creation site).
    ///
    /// # Panics
    ///
    /// If `at > self.len()`.
    #[track_caller]
    pub fn split_to(&mut self, at: usize) -> Frame {
        let bytes = self.bytes.split_to(at);
        let site = Location::caller();
        let owner = self.owner.as_ref().map(|owner| match owner.tether() {
            Some(tether) => ReadAllocation::pin(owner, tether, bytes.len(), site),
            None => owner.clone(),
        });
        Frame { bytes, owner }
    }

    /// Drops the first `count` bytes.
    ///
    /// # Panics
    ///
    /// If `count > self.len()`.
    pub fn advance(&mut self, count: usize) {
        self.bytes.advance(count);
    }

    /// Keeps the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.bytes.truncate(len);
    }

    /// Copies the frame into a buffer of exactly its size that belongs to no connection
    /// and pins no read buffer: for data meant to outlive the connection.
    pub fn detach(self) -> Bytes {
        Bytes::copy_from_slice(&self.bytes)
    }

    /// Like [`detach`](Frame::detach), as a mutable buffer.
    pub fn detach_mut(self) -> BytesMut {
        BytesMut::from(&self.bytes[..])
    }

    /// The bytes of the read-buffer allocation this frame keeps alive (0 for a frame
    /// that belongs to no connection).
    pub fn retained_bytes(&self) -> usize {
        self.owner.as_ref().map_or(0, |owner| owner.capacity())
    }

    /// Whether leak detection tracks this frame (see [`crate::leak`]).
    pub fn is_tracked(&self) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|owner| owner.tether().is_some())
    }
}

impl From<BytesMut> for Frame {
    /// A frame that belongs to no connection.
    fn from(bytes: BytesMut) -> Frame {
        Frame { bytes, owner: None }
    }
}

impl From<&[u8]> for Frame {
    /// A copy that belongs to no connection.
    fn from(bytes: &[u8]) -> Frame {
        Frame::from(BytesMut::from(bytes))
    }
}

impl Clone for Frame {
    /// A copy that belongs to no connection (as [`Frame::detach`]).
    fn clone(&self) -> Frame {
        Frame::from(&self.bytes[..])
    }
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl DerefMut for Frame {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsMut<[u8]> for Frame {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.bytes, f)
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Frame {}

impl PartialEq<[u8]> for Frame {
    fn eq(&self, other: &[u8]) -> bool {
        self.bytes[..] == *other
    }
}

impl PartialEq<&[u8]> for Frame {
    fn eq(&self, other: &&[u8]) -> bool {
        self.bytes[..] == **other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Frame {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.bytes[..] == other[..]
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Frame {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.bytes[..] == other[..]
    }
}

/// The frame's own size plus its bytes, for queue caps. The read-buffer allocation it
/// pins is counted under [`MemoryKind::ReadBuffer`](crate::MemoryKind::ReadBuffer), so
/// a queued frame is charged only its struct there ([`MessageSize::charged_size`](crate::MessageSize::charged_size)).
impl crate::MessageSize for Frame {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.bytes.len()
    }

    /// A frame cut from a connection's read buffer is charged there; only its struct is
    /// charged again where it waits. A frame of its own (built from bytes) is charged in
    /// full.
    fn charged_size(&self) -> usize {
        if self.owner.is_some() {
            std::mem::size_of::<Self>()
        } else {
            self.message_size()
        }
    }
}
