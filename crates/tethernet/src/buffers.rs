//! A small per-thread pool of I/O buffers.
//!
//! An idle connection holds no read or write buffer (that is what keeps idle connections
//! cheap); a busy one takes a buffer when its socket is readable and gives it back when
//! the buffer is empty again. Without a pool, that is a `malloc` and a `free` per wake-up
//! and per buffer; with one, connections served by the same event loop reuse the same few
//! warm buffers, as Netty's pooled allocator does.
//!
//! The pool is bounded in count and in the size of each buffer it keeps, and is per
//! thread (no locks): each event loop serves its connections one at a time, so it needs
//! only a handful of buffers.

use std::cell::RefCell;

use bytes::BytesMut;

/// At most this many buffers are kept per thread.
const MAX_POOLED: usize = 16;
/// Buffers larger than this are freed instead of kept (a burst must not pin memory).
const MAX_POOLED_CAPACITY: usize = 64 * 1024;

/// One thread's pooled buffers, each with the bytes it adds to
/// [`GlobalStats::pooled_bytes`](crate::stats::GlobalStats::pooled_bytes).
struct Pool(Vec<(BytesMut, usize)>);

impl Drop for Pool {
    fn drop(&mut self) {
        let bytes: usize = self.0.iter().map(|(_, bytes)| bytes).sum();
        crate::stats::global().pooled_bytes.sub(bytes);
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool(Vec::new())) };
}

/// A buffer with room for at least `capacity` bytes.
pub(crate) fn take(capacity: usize) -> BytesMut {
    let pooled = POOL.with(|pool| pool.borrow_mut().0.pop());
    match pooled {
        Some((mut buffer, bytes)) => {
            crate::stats::global().pooled_bytes.sub(bytes);
            // Reclaims the buffer's whole allocation when nothing else shares it; a buffer
            // still shared with frames a handler holds gets a fresh allocation instead.
            buffer.reserve(capacity);
            buffer
        }
        None => BytesMut::with_capacity(capacity),
    }
}

/// Gives an emptied buffer back for reuse (or frees it).
pub(crate) fn give(mut buffer: BytesMut) {
    buffer.clear();
    let capacity = buffer.capacity();
    if capacity == 0 || capacity > MAX_POOLED_CAPACITY {
        return;
    }
    // `try_with`: a connection dropped while its thread shuts down frees its buffer.
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.0.len() < MAX_POOLED {
            crate::stats::global().pooled_bytes.add(capacity);
            pool.0.push((buffer, capacity));
        }
    });
}
