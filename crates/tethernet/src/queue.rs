//! A FIFO queue capped in bytes.
//!
//! Used for every hop between tasks: into a business executor, and into a connection's
//! outbound side from other tasks. Senders wait (or are refused, with `try_send`) while
//! the queued bytes would pass the cap, so memory is bounded whatever the message mix.
//! A message larger than the whole cap is admitted only into an empty queue, so the bound
//! is "cap, or one message".

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::size::MessageSize;
use crate::stats::{ChannelStats, MemoryKind};

/// Secondary bound on the number of queued messages (the byte cap is the real bound;
/// this keeps zero-sized messages from piling up).
const MAX_QUEUED_MESSAGES: usize = 64 * 1024;

/// Why `try_send` did not queue a message. The message is handed back.
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    /// The queue holds its cap of bytes.
    Full(T),
    /// The receiving side is gone.
    Closed(T),
}

struct Slot<T> {
    item: T,
    /// Bytes counted against the meter.
    bytes: usize,
    /// Permits taken from the semaphore (the bytes, clamped to the cap).
    permits: u32,
}

/// The sending half; cheap to clone.
pub(crate) struct ByteSender<T> {
    tx: mpsc::Sender<Slot<T>>,
    /// One permit per byte of free capacity.
    capacity: Arc<Semaphore>,
    cap: usize,
    stats: Arc<ChannelStats>,
    kind: MemoryKind,
}

impl<T> Clone for ByteSender<T> {
    fn clone(&self) -> Self {
        ByteSender {
            tx: self.tx.clone(),
            capacity: self.capacity.clone(),
            cap: self.cap,
            stats: self.stats.clone(),
            kind: self.kind,
        }
    }
}

/// The receiving half.
pub(crate) struct ByteReceiver<T> {
    rx: mpsc::Receiver<Slot<T>>,
    capacity: Arc<Semaphore>,
    stats: Arc<ChannelStats>,
    kind: MemoryKind,
}

/// Creates a queue holding at most `cap` bytes, counted on `stats` under `kind`.
pub(crate) fn byte_queue<T>(
    cap: usize,
    stats: Arc<ChannelStats>,
    kind: MemoryKind,
) -> (ByteSender<T>, ByteReceiver<T>) {
    let cap = cap.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let (tx, rx) = mpsc::channel(MAX_QUEUED_MESSAGES);
    let capacity = Arc::new(Semaphore::new(cap));
    (
        ByteSender {
            tx,
            capacity: capacity.clone(),
            cap,
            stats: stats.clone(),
            kind,
        },
        ByteReceiver {
            rx,
            capacity,
            stats,
            kind,
        },
    )
}

impl<T: MessageSize> ByteSender<T> {
    fn permits_for(&self, bytes: usize) -> u32 {
        bytes.clamp(1, self.cap) as u32
    }

    /// Queues `item`, waiting while the queue is full. Hands the item back if the
    /// receiving side is gone.
    pub(crate) async fn send(&self, item: T) -> Result<(), T> {
        let bytes = item.message_size();
        let permits = self.permits_for(bytes);
        let Ok(permit) = self.capacity.acquire_many(permits).await else {
            return Err(item);
        };
        let Ok(slot) = self.tx.reserve().await else {
            return Err(item);
        };
        permit.forget();
        self.stats.meter(self.kind).add(bytes);
        slot.send(Slot {
            item,
            bytes,
            permits,
        });
        Ok(())
    }

    /// Queues `item` if there is room now.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let bytes = item.message_size();
        let permits = self.permits_for(bytes);
        let permit = match self.capacity.try_acquire_many(permits) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(TrySendError::Closed(item)),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full(item)),
        };
        let slot = match self.tx.try_reserve() {
            Ok(slot) => slot,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(TrySendError::Closed(item)),
            Err(mpsc::error::TrySendError::Full(())) => return Err(TrySendError::Full(item)),
        };
        permit.forget();
        self.stats.meter(self.kind).add(bytes);
        slot.send(Slot {
            item,
            bytes,
            permits,
        });
        Ok(())
    }
}

impl<T> ByteReceiver<T> {
    fn release(&self, slot: Slot<T>) -> T {
        // Uncount before freeing room, so the meter never shows more than the cap.
        self.stats.meter(self.kind).sub(slot.bytes);
        self.capacity.add_permits(slot.permits as usize);
        slot.item
    }

    /// The next message, or `None` when every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        let slot = self.rx.recv().await?;
        Some(self.release(slot))
    }

    /// The next message if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        let slot = self.rx.try_recv().ok()?;
        Some(self.release(slot))
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Refuses further messages and wakes every waiting sender; queued messages stay
    /// until received or dropped.
    pub(crate) fn close(&mut self) {
        self.capacity.close();
        self.rx.close();
    }

    /// Closes the queue and drops everything in it, returning how many messages were dropped.
    pub(crate) fn close_and_discard(&mut self) -> usize {
        self.close();
        let mut dropped = 0;
        while let Ok(slot) = self.rx.try_recv() {
            drop(self.release(slot));
            dropped += 1;
        }
        dropped
    }
}

impl<T> Drop for ByteReceiver<T> {
    fn drop(&mut self) {
        self.close_and_discard();
    }
}

impl<T> ByteReceiver<T> {
    /// Polls for the next message (see [`ByteReceiver::recv`]).
    pub(crate) fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(slot)) => std::task::Poll::Ready(Some(self.release(slot))),
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
