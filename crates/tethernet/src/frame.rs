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

use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::leak::{self, LeakKind};
use crate::stats::{ChannelStats, MemoryKind};
use crate::tether::Tether;

/// One read-buffer allocation of a connection, charged to it at full capacity until the
/// reader and every frame cut from the allocation have let go of it.
pub(crate) struct ReadAllocation {
    capacity: usize,
    stats: Arc<ChannelStats>,
}

impl ReadAllocation {
    pub(crate) fn new(capacity: usize, stats: &Arc<ChannelStats>) -> Arc<ReadAllocation> {
        stats.meter(MemoryKind::ReadBuffer).add(capacity);
        Arc::new(ReadAllocation {
            capacity,
            stats: stats.clone(),
        })
    }
}

impl Drop for ReadAllocation {
    fn drop(&mut self) {
        self.stats.meter(MemoryKind::ReadBuffer).sub(self.capacity);
    }
}

/// What frames decoded now belong to: set by the connection around each `decode` call.
pub(crate) struct DecodeScope {
    pub(crate) allocation: Arc<ReadAllocation>,
    pub(crate) tether: Arc<Tether>,
}

thread_local! {
    static SCOPE: RefCell<Option<DecodeScope>> = const { RefCell::new(None) };
    /// Frames created on this thread since the last sampled one.
    static SAMPLE_COUNTER: Cell<u32> = const { Cell::new(0) };
}

/// Runs `decode` with `scope` current, so frames it creates are charged and tracked.
/// The scope is moved in and out (no reference counting per call).
pub(crate) fn decoding<R>(scope: &mut Option<DecodeScope>, decode: impl FnOnce() -> R) -> R {
    if scope.is_none() {
        return decode();
    }
    SCOPE.with(|current| *current.borrow_mut() = scope.take());
    // Restored even if `decode` panics (the panic is reported by the connection).
    struct Restore<'a>(&'a mut Option<DecodeScope>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            *self.0 = SCOPE.with(|current| current.borrow_mut().take());
        }
    }
    let _restore = Restore(scope);
    decode()
}

/// Whether the next frame created on this thread is tracked for leaks.
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

/// A frame's entry in its connection's leak registry; removed when the frame is dropped.
struct Tracked {
    tether: Arc<Tether>,
    key: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tether.untrack(self.key);
    }
}

/// The bytes of one frame, cut without copying from its connection's read buffer.
///
/// Reads like a byte slice (`Deref<Target = [u8]>`); encoders of this crate accept it
/// (they take any `AsRef<[u8]>`), so a handler can write a frame straight back. Frames
/// created by the framework's codecs while a connection decodes are charged to that
/// connection (see the [module docs](self)); frames built from plain bytes
/// ([`Frame::from`]) belong to no connection.
pub struct Frame {
    bytes: BytesMut,
    allocation: Option<Arc<ReadAllocation>>,
    tracked: Option<Tracked>,
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
        SCOPE.with(|scope| match &*scope.borrow() {
            Some(scope) => {
                let tracked = sample().then(|| {
                    let key = scope.tether.track(
                        LeakKind::Frame,
                        bytes.len(),
                        scope.allocation.capacity,
                        site,
                        "tethernet::Frame",
                    );
                    key.map(|key| Tracked {
                        tether: scope.tether.clone(),
                        key,
                    })
                });
                Frame {
                    bytes,
                    allocation: Some(scope.allocation.clone()),
                    tracked: tracked.flatten(),
                }
            }
            None => Frame::from(bytes),
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
        let tracked = match (&self.tracked, &self.allocation) {
            (Some(tracked), Some(allocation)) if sample() => tracked
                .tether
                .track(
                    LeakKind::Frame,
                    bytes.len(),
                    allocation.capacity,
                    site,
                    "tethernet::Frame",
                )
                .map(|key| Tracked {
                    tether: tracked.tether.clone(),
                    key,
                }),
            _ => None,
        };
        Frame {
            bytes,
            allocation: self.allocation.clone(),
            tracked,
        }
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
        self.allocation.as_ref().map_or(0, |a| a.capacity)
    }

    /// Whether leak detection tracks this frame (see [`crate::leak`]).
    pub fn is_tracked(&self) -> bool {
        self.tracked.is_some()
    }
}

impl From<BytesMut> for Frame {
    /// A frame that belongs to no connection.
    fn from(bytes: BytesMut) -> Frame {
        Frame {
            bytes,
            allocation: None,
            tracked: None,
        }
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

/// The frame's own size plus its bytes. The read-buffer allocation it pins is counted
/// under [`MemoryKind::ReadBuffer`], so a queued frame's bytes appear there too.
impl crate::MessageSize for Frame {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.bytes.len()
    }
}
