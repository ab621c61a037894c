//! A FIFO queue capped in bytes.
//!
//! Used for every hop between tasks: into a business executor, and into a connection's
//! outbound side from other tasks. Senders wait (or are refused, with `try_send`) while
//! the queued bytes would pass the cap, so memory is bounded whatever the message mix.
//! A message larger than the whole cap is admitted only into an empty queue, so the bound
//! is "cap, or one message". Every message takes at least one byte of the cap, so the cap
//! also bounds the number of queued messages.
//!
//! Written for idle connections as much as busy ones: an empty queue holds no buffer
//! (tokio's `mpsc` allocates a 32-slot block up front, which cost ~1.6 KB per connection),
//! and a queue that grew in a burst gives its buffer back once drained.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Semaphore;

use crate::size::MessageSize;
use crate::stats::{ChannelStats, MemoryKind};

/// Above this many slots of capacity, a drained queue releases its buffer.
const KEEP_SLOTS: usize = 16;

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
    /// Bytes counted against the meter: what the message holds beyond its slot
    /// ([`MessageSize::charged_size`] less its inline size).
    bytes: usize,
    /// Permits taken from the semaphore (the bytes, clamped to the cap).
    permits: u32,
}

struct State<T> {
    items: VecDeque<Slot<T>>,
    /// Bytes charged for the slots of `items` (its capacity).
    slots: usize,
    /// The receiver, waiting for an item.
    receiver: Option<Waker>,
    /// Set when the receiver closes the queue (or is dropped).
    closed: bool,
    /// Live senders; the receiver sees the end of the queue when it reaches zero.
    senders: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// One permit per byte of free capacity.
    room: Semaphore,
    cap: usize,
    stats: Arc<ChannelStats>,
    kind: MemoryKind,
}

impl<T> Shared<T> {
    /// Charges the slots the queue's buffer has room for (its capacity): what the
    /// messages hold inline. Each message is charged what it holds beyond its slot.
    fn account_slots(&self, state: &mut State<T>) {
        let slots = state.items.capacity() * std::mem::size_of::<Slot<T>>();
        if slots != state.slots {
            self.stats.meter(self.kind).update(state.slots, slots);
            state.slots = slots;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a single push or pop), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a message holds beyond its slot in the queue (its slot is charged with the
/// queue's buffer).
fn heap_of<T: MessageSize>(item: &T) -> usize {
    item.charged_size().saturating_sub(std::mem::size_of::<T>())
}

/// The sending half; cheap to clone.
pub(crate) struct ByteSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half.
pub(crate) struct ByteReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// Creates a queue holding at most `cap` bytes, counted on `stats` under `kind`.
pub(crate) fn byte_queue<T>(
    cap: usize,
    stats: Arc<ChannelStats>,
    kind: MemoryKind,
) -> (ByteSender<T>, ByteReceiver<T>) {
    let cap = cap.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            slots: 0,
            receiver: None,
            closed: false,
            senders: 1,
        }),
        room: Semaphore::new(cap),
        cap,
        stats,
        kind,
    });
    (
        ByteSender {
            shared: shared.clone(),
        },
        ByteReceiver { shared },
    )
}

impl<T> Clone for ByteSender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        ByteSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for ByteSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.receiver.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T: MessageSize> ByteSender<T> {
    fn permits_for(&self, bytes: usize) -> u32 {
        bytes.clamp(1, self.shared.cap) as u32
    }

    /// Adds a message whose room is already taken; hands it back if the queue is closed.
    fn push(&self, item: T, bytes: usize, permits: u32) -> Result<(), T> {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed {
                drop(state);
                self.shared.room.add_permits(permits as usize);
                return Err(item);
            }
            self.shared.stats.meter(self.shared.kind).add(bytes);
            state.items.push_back(Slot {
                item,
                bytes,
                permits,
            });
            self.shared.account_slots(&mut state);
            state.receiver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting while the queue is full. Hands the item back if the
    /// receiving side is gone.
    pub(crate) async fn send(&self, item: T) -> Result<(), T> {
        let permits = self.permits_for(item.message_size());
        let bytes = heap_of(&item);
        match self.shared.room.acquire_many(permits).await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(item),
        }
        self.push(item, bytes, permits)
    }

    /// Queues `item`, evicting the oldest queued messages to make room. Returns the
    /// outcome and how many messages were evicted (on every path: room freed by eviction
    /// can go to senders already waiting, so the item may still be refused).
    pub(crate) fn send_evicting(&self, item: T) -> (Result<(), TrySendError<T>>, usize) {
        let permits = self.permits_for(item.message_size());
        let bytes = heap_of(&item);
        let mut evicted = Vec::new();
        let outcome = loop {
            match self.shared.room.try_acquire_many(permits) {
                Ok(permit) => {
                    permit.forget();
                    break Ok(());
                }
                Err(tokio::sync::TryAcquireError::Closed) => break Err(false),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    let oldest = {
                        let mut state = self.shared.lock();
                        let oldest = state.items.pop_front();
                        self.shared.account_slots(&mut state);
                        oldest
                    };
                    match oldest {
                        Some(slot) => {
                            self.shared.stats.meter(self.shared.kind).sub(slot.bytes);
                            self.shared.room.add_permits(slot.permits as usize);
                            evicted.push(slot.item);
                        }
                        None => break Err(true),
                    }
                }
            }
        };
        let count = evicted.len();
        // Evicted messages are dropped outside the lock: their destructors may do anything.
        drop(evicted);
        let result = match outcome {
            Ok(()) => self
                .push(item, bytes, permits)
                .map_err(TrySendError::Closed),
            Err(true) => Err(TrySendError::Full(item)),
            Err(false) => Err(TrySendError::Closed(item)),
        };
        (result, count)
    }

    /// Queues `item` if there is room now.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let permits = self.permits_for(item.message_size());
        let bytes = heap_of(&item);
        match self.shared.room.try_acquire_many(permits) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(TrySendError::Closed(item)),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full(item)),
        }
        self.push(item, bytes, permits)
            .map_err(TrySendError::Closed)
    }
}

impl<T> ByteReceiver<T> {
    /// Takes the next slot out of the locked state, uncounting it and freeing its room.
    fn pop(&self, state: &mut State<T>) -> Option<T> {
        let slot = state.items.pop_front()?;
        if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
            state.items = VecDeque::new();
            self.shared.account_slots(state);
        }
        // Uncount before freeing room, so the meter never shows more than the cap.
        self.shared.stats.meter(self.shared.kind).sub(slot.bytes);
        self.shared.room.add_permits(slot.permits as usize);
        Some(slot.item)
    }

    /// Polls for the next message; `Ready(None)` when every sender is gone and the queue
    /// is empty, or the queue was closed and drained.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some(item) = self.pop(&mut state) {
            return Poll::Ready(Some(item));
        }
        if state.closed || state.senders == 0 {
            return Poll::Ready(None);
        }
        match &state.receiver {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.receiver = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next message, or `None` when every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        let mut state = self.shared.lock();
        self.pop(&mut state)
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.shared.lock().items.is_empty()
    }

    /// Refuses further messages and wakes every waiting sender; queued messages stay
    /// until received or dropped.
    ///
    /// The receiver's waker is let go: senders (a [`Channel`](crate::Channel) handle kept
    /// after its connection closed) must not keep the receiving task's memory alive
    /// through it.
    pub(crate) fn close(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.receiver.take()
        };
        drop(waker);
        self.shared.room.close();
    }

    /// Closes the queue and drops everything in it, returning how many messages were dropped.
    pub(crate) fn close_and_discard(&mut self) -> usize {
        self.close();
        let items = {
            let mut state = self.shared.lock();
            let items = std::mem::take(&mut state.items);
            self.shared.account_slots(&mut state);
            items
        };
        let dropped = items.len();
        let bytes: usize = items.iter().map(|slot| slot.bytes).sum();
        self.shared.stats.meter(self.shared.kind).sub(bytes);
        // Messages are dropped outside the lock: their destructors may do anything.
        drop(items);
        dropped
    }
}

impl<T> Drop for ByteReceiver<T> {
    fn drop(&mut self) {
        self.close_and_discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(
        cap: usize,
    ) -> (
        ByteSender<Vec<u8>>,
        ByteReceiver<Vec<u8>>,
        Arc<ChannelStats>,
    ) {
        let stats = Arc::new(ChannelStats::default());
        let (tx, rx) = byte_queue(cap, stats.clone(), MemoryKind::OutboundQueue);
        (tx, rx, stats)
    }

    fn bytes(n: usize) -> Vec<u8> {
        vec![0; n]
    }

    #[tokio::test]
    async fn refuses_beyond_the_cap_and_frees_room_on_receive() {
        let (tx, mut rx, stats) = queue(1000);
        tx.try_send(bytes(400)).unwrap();
        tx.try_send(bytes(400))
            .unwrap_or_else(|_| panic!("room for two"));
        assert!(matches!(
            tx.try_send(bytes(400)),
            Err(TrySendError::Full(_))
        ));
        // What the messages hold beyond their slots, plus the slots of the buffer.
        let slots = rx.shared.lock().slots;
        assert_eq!(
            slots,
            rx.shared.lock().items.capacity() * std::mem::size_of::<Slot<Vec<u8>>>()
        );
        assert_eq!(
            stats.meter(MemoryKind::OutboundQueue).current(),
            2 * 400 + slots
        );
        assert_eq!(rx.recv().await.unwrap().len(), 400);
        tx.try_send(bytes(400))
            .unwrap_or_else(|_| panic!("room again"));
        assert!(stats.meter(MemoryKind::OutboundQueue).peak() <= 1000 + slots);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_cap_passes_an_empty_queue_alone() {
        let (tx, mut rx, _) = queue(100);
        tx.send(bytes(5000)).await.unwrap();
        assert!(matches!(tx.try_send(bytes(1)), Err(TrySendError::Full(_))));
        assert_eq!(rx.recv().await.unwrap().len(), 5000);
        tx.try_send(bytes(1))
            .unwrap_or_else(|_| panic!("room again"));
    }

    #[tokio::test]
    async fn waiting_sender_resumes_in_order_when_room_frees() {
        let (tx, mut rx, _) = queue(200);
        let sender = tokio::spawn(async move {
            for i in 0..50u8 {
                tx.send(vec![i; 100]).await.unwrap();
            }
        });
        for i in 0..50u8 {
            assert_eq!(rx.recv().await.unwrap()[0], i);
        }
        sender.await.unwrap();
        assert!(rx.recv().await.is_none(), "all senders gone");
    }

    #[tokio::test]
    async fn evicting_send_drops_the_oldest_to_make_room() {
        let (tx, mut rx, stats) = queue(1000);
        for i in 0..4u8 {
            tx.try_send(vec![i; 200]).unwrap_or_else(|_| panic!("room"));
        }
        // 4 x ~224 bytes queued; a 400-byte message needs the two oldest gone.
        let (result, evicted) = tx.send_evicting(vec![9; 400]);
        assert!(result.is_ok());
        assert_eq!(evicted, 2);
        assert_eq!(rx.recv().await.unwrap()[0], 2);
        assert_eq!(rx.recv().await.unwrap()[0], 3);
        assert_eq!(rx.recv().await.unwrap()[0], 9);
        let slots = rx.shared.lock().slots;
        assert!(stats.meter(MemoryKind::OutboundQueue).peak() <= 1000 + slots);
        // Empty: only the (small, kept) buffer's slots are charged.
        assert_eq!(stats.meter(MemoryKind::OutboundQueue).current(), slots);
        drop(rx);
        assert_eq!(stats.meter(MemoryKind::OutboundQueue).current(), 0);
    }

    #[tokio::test]
    async fn closing_wakes_waiting_senders_and_discards_with_accounting() {
        let (tx, mut rx, stats) = queue(100);
        tx.try_send(bytes(50)).unwrap_or_else(|_| panic!("room"));
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(bytes(90)).await.is_err() }
        });
        tokio::task::yield_now().await;
        assert_eq!(rx.close_and_discard(), 1);
        assert!(
            waiting.await.unwrap(),
            "a waiting sender is refused once closed"
        );
        assert_eq!(stats.meter(MemoryKind::OutboundQueue).current(), 0);
        assert!(matches!(
            tx.try_send(bytes(1)),
            Err(TrySendError::Closed(_))
        ));
    }
}
