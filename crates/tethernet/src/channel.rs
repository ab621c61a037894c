//! The [`Channel`]: a cloneable handle to one connection, usable from any task.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::queue::{ByteSender, TrySendError};
use crate::size::MessageSize;
use crate::stats::{global, ChannelStats, ConnectionInfo, MemoryKind};
use crate::tether::{Tether, TetherKey, Tracked};

/// What [`Channel::offer`] does when the outbound queue is full. (The fourth policy,
/// waiting, is [`Channel::write`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the message being offered (for fan-out where the newest can be skipped).
    DropNewest,
    /// Drop the oldest queued messages to make room (for fan-out where the latest state
    /// matters most).
    DropOldest,
    /// Drop the message and close the connection as a slow consumer.
    CloseSlowConsumer,
}

/// What [`Channel::offer`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued.
    Queued,
    /// Queued after dropping this many older messages.
    QueuedDroppingOldest(usize),
    /// Dropped: the queue was full.
    DroppedNewest,
    /// Dropped, and the connection is closing as a slow consumer.
    ClosedSlowConsumer,
}

/// A connection's identity, unique within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(u64);

impl ChannelId {
    pub(crate) fn next() -> ChannelId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ChannelId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub(crate) fn from_u64(id: u64) -> ChannelId {
        ChannelId(id)
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Values of [`ChannelShared::close_request`], ordered: a later reason overrides an
/// earlier one.
pub(crate) const OPEN: u8 = 0;
pub(crate) const CLOSE_ASKED: u8 = 1;
pub(crate) const SHUTTING_DOWN: u8 = 2;

/// What every handle to one connection shares.
pub(crate) struct ChannelShared {
    pub(crate) id: ChannelId,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) opened: std::time::Instant,
    pub(crate) stats: Arc<ChannelStats>,
    /// Whether, and why, the connection was asked to close: [`OPEN`], [`CLOSE_ASKED`]
    /// (through a handle or by the connection task) or [`SHUTTING_DOWN`] (by a server
    /// shutting down). The connection task then flushes what is queued, tells its
    /// handlers, and closes. Read per frame on the hot path, so a plain atomic (a
    /// `CancellationToken` takes a lock).
    pub(crate) close_request: AtomicU8,
    /// How long closing may wait on the peer or on the connection's own work.
    pub(crate) close_timeout: std::time::Duration,
    /// Cleared while the connection holds more than its high watermark of outbound bytes
    /// (queued plus buffered), set again below the low watermark. Kept by the connection
    /// task, which tells its handlers when it changes.
    pub(crate) writable: AtomicBool,
    /// Tasks and values the connection owns (G2).
    pub(crate) tether: Arc<Tether>,
    /// The connection task's waker, woken by a close request. Registered once per
    /// connection (a task's waker does not change), so waiting costs no lock.
    pub(crate) close_waker: Mutex<Option<Waker>>,
    /// Set once the connection task has finished and the socket is closed.
    pub(crate) closed: ClosedSignal,
    /// Live [`Channel`] values (the connection task's own included): handles held after
    /// the close are reported ([`crate::leak`]).
    pub(crate) handles: AtomicUsize,
    /// The server the connection belongs to (0: none), to find its connections in the
    /// registry of live connections when it shuts down.
    pub(crate) server: u64,
    /// The per-connection memory budget, all kinds together: a write that would wait for
    /// room past it fails with an error of kind [`ErrorKind::Limit`](crate::ErrorKind::Limit).
    pub(crate) budget: usize,
    /// Bytes charged for the connection task itself ([`MemoryKind::Tasks`]), taken back
    /// as the connection is marked closed (the task's memory goes an instant later).
    pub(crate) task_bytes: AtomicUsize,
}

/// Set once, when the connection task has finished and the socket is closed; wakes every
/// task waiting for it. (Inline in the shared state: a `CancellationToken` would be a
/// separate 112-byte allocation per connection.)
#[derive(Default)]
pub(crate) struct ClosedSignal {
    set: AtomicBool,
    notify: Notify,
}

impl ClosedSignal {
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Sets the signal and wakes every waiter. Idempotent.
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Completes once the signal is set.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a `set` between the two is not missed.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Takes back the connection task's charge when dropped (however the task ends).
pub(crate) struct TaskCharge(pub(crate) Arc<ChannelShared>);

impl Drop for TaskCharge {
    fn drop(&mut self) {
        self.0.release_task();
    }
}

/// At most what a [`Channel`] handle keeps alive once its connection has closed: the
/// shared state, its figures, its tether and the outbound queue's state, all emptied at
/// close (the connection task, its buffers and its pipeline are gone: the queue lets go
/// of the task's waker when it closes). Measured with a counting allocator: 1,059 B on
/// x86_64 (`tests/accounting_truth.rs` checks the bound).
pub const CLOSED_HANDLE_BYTES: usize = 1088;

impl ChannelShared {
    /// Charges the connection task's memory to the connection.
    pub(crate) fn charge_task(self: &Arc<Self>, bytes: usize) -> TaskCharge {
        self.add_task_bytes(bytes);
        TaskCharge(self.clone())
    }

    /// Adds memory the connection task holds until it ends (boxes it made for itself) to
    /// its task charge, taken back with the rest as the connection is marked closed.
    pub(crate) fn add_task_bytes(&self, bytes: usize) {
        if bytes > 0 {
            self.stats.meter(MemoryKind::Tasks).add(bytes);
            self.task_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Takes the connection task's charge back (idempotent).
    pub(crate) fn release_task(&self) {
        let bytes = self.task_bytes.swap(0, Ordering::Relaxed);
        self.stats.meter(MemoryKind::Tasks).sub(bytes);
    }

    /// Live [`Channel`] values.
    pub(crate) fn handles(&self) -> usize {
        self.handles.load(Ordering::Relaxed)
    }

    /// What the connection holds now.
    pub(crate) fn info(&self) -> ConnectionInfo {
        let (owned_tasks, tethered_resources) = self.tether.counts();
        let bytes = self.stats.bytes_by_kind();
        ConnectionInfo {
            id: self.id,
            peer: self.peer,
            local: self.local,
            age: self.opened.elapsed(),
            total_bytes: bytes.iter().map(|(_, n)| n).sum(),
            bytes,
            owned_tasks,
            tethered_resources,
            unowned_tasks_started: crate::tasks::started_by(self.id),
            handles: self.handles(),
            messages_read: self.stats.messages_read(),
            messages_written: self.stats.messages_written(),
        }
    }

    /// True once a close was asked for through a handle or seen by the connection task.
    pub(crate) fn close_requested(&self) -> bool {
        self.close_request.load(Ordering::Relaxed) != OPEN
    }

    /// True when the close was asked for by a server shutting down.
    pub(crate) fn shutting_down(&self) -> bool {
        self.close_request.load(Ordering::Relaxed) == SHUTTING_DOWN
    }

    /// Marks the connection as closing without waking its task (the task itself, as it
    /// ends).
    pub(crate) fn mark_closing(&self) {
        let _ = self.close_request.compare_exchange(
            OPEN,
            CLOSE_ASKED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Asks the connection to close because its server shuts down.
    pub(crate) fn request_shutdown(&self) {
        self.request(SHUTTING_DOWN);
    }

    /// Asks the connection to close.
    pub(crate) fn request_close(&self) {
        self.request(CLOSE_ASKED);
    }

    fn request(&self, reason: u8) {
        // A shutdown marks a connection already closing too: its handlers hear of it.
        if self.close_request.fetch_max(reason, Ordering::AcqRel) == OPEN {
            let waker = self
                .close_waker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// For the connection task's wait: true once a close was asked for; until then, makes
    /// sure a close request wakes this task. `registered` is the task's record of the
    /// waker it registered (re-registered only if it changes, so waiting takes no lock).
    pub(crate) fn poll_close(
        &self,
        cx: &mut std::task::Context<'_>,
        registered: &mut Option<Waker>,
    ) -> bool {
        if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.register_close_waker(cx.waker());
            *registered = Some(cx.waker().clone());
        }
        self.close_requested()
    }

    /// Registers the connection task's waker for close requests.
    pub(crate) fn register_close_waker(&self, waker: &Waker) {
        *self
            .close_waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(waker.clone());
    }
}

/// A handle to one connection: its identity, its live figures, and the ordered, bounded
/// way to write to it and close it from any task.
///
/// Writes through a `Channel` go through the connection's outbound queue, which is capped
/// in bytes (see [`ServerBuilder::outbound_queue_capacity`](crate::ServerBuilder::outbound_queue_capacity)):
/// [`write`](Channel::write) waits while it is full, so a fast producer cannot grow memory
/// without bound. Messages written by one task reach the socket in the order written.
///
/// `W` is the pipeline's outbound message type (what its codec encodes).
pub struct Channel<W> {
    pub(crate) shared: Arc<ChannelShared>,
    pub(crate) outbound: ByteSender<W>,
}

impl<W> Clone for Channel<W> {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Channel {
            shared: self.shared.clone(),
            outbound: self.outbound.clone(),
        }
    }
}

impl<W> Drop for Channel<W> {
    fn drop(&mut self) {
        self.shared.handles.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<W> fmt::Debug for Channel<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("closing", &self.shared.close_requested())
            .finish()
    }
}

impl<W> Channel<W> {
    /// The connection's id.
    pub fn id(&self) -> ChannelId {
        self.shared.id
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The connection's live memory figures.
    pub fn stats(&self) -> &ChannelStats {
        &self.shared.stats
    }

    /// Asks the connection to close: what is already queued is flushed (within the close
    /// timeout), handlers are told, then the socket is closed. Returns at once; await
    /// [`closed`](Channel::closed) to wait for the end.
    pub fn close(&self) {
        self.shared.request_close();
    }

    /// True once a close has been asked for (by anyone, or by the peer going away).
    pub fn is_closing(&self) -> bool {
        self.shared.close_requested()
    }

    /// True once the connection is fully closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_set()
    }

    /// True while the connection holds less than its high watermark of outbound bytes
    /// (after going over it, it becomes writable again below the low watermark). Handlers
    /// are told when this changes ([`ChannelEvent::WritabilityChanged`](crate::ChannelEvent)).
    pub fn is_writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
    }

    /// Starts `future` as a task owned by this connection, on the current runtime: it is
    /// cancelled when the connection closes, and the connection is not gone until the task
    /// is. Fails once the connection is closed, or when it already owns its cap of tasks.
    #[track_caller]
    pub fn spawn<F>(&self, future: F) -> Result<TetherKey>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.shared.tether.spawn(future)
    }

    /// Cancels a task started with [`spawn`](Channel::spawn); false if it already ended.
    pub fn abort(&self, task: TetherKey) -> bool {
        self.shared.tether.abort(task)
    }

    /// Holds `value` for this connection: it is dropped when the connection closes (or at
    /// [`untether`](Channel::untether)). It is charged its inline size
    /// ([`MemoryKind::Tethered`]); see
    /// [`tether_sized`](Channel::tether_sized) to charge what it owns. For subscription guards, timers, leases — anything
    /// whose cleanup must not outlive the connection. Fails once the connection is closed,
    /// or when it already holds its cap of tethered values.
    #[track_caller]
    pub fn tether<T: Send + 'static>(&self, value: T) -> Result<TetherKey> {
        self.shared.tether.tether(value)
    }

    /// Like [`tether`](Channel::tether), charging what `value` says it holds
    /// ([`MessageSize`]: its inline size plus the heap memory it owns) instead of its
    /// inline size alone.
    #[track_caller]
    pub fn tether_sized<T: MessageSize + Send + 'static>(&self, value: T) -> Result<TetherKey> {
        let bytes = value.message_size();
        self.shared.tether.tether_bytes(value, bytes)
    }

    /// Drops a tethered value now; false if there was none under `key`.
    pub fn untether(&self, key: TetherKey) -> bool {
        self.shared.tether.untether(key)
    }

    /// Marks `value` as belonging to this connection while the caller keeps it: it is
    /// counted against the connection (by its inline size: see
    /// [`track_sized`](Channel::track_sized) to count what it owns) and, if still alive a grace
    /// period after the connection closed, reported as a leak with the caller's location
    /// ([`crate::leak`]). Fails with [`Error::closed`] once the connection has closed.
    #[track_caller]
    pub fn track<T>(&self, value: T) -> Result<Tracked<T>> {
        Tracked::new(&self.shared.tether, value, std::mem::size_of::<T>())
    }

    /// Like [`track`](Channel::track), charging what `value` says it holds
    /// ([`MessageSize`]) when it is tracked. The charge is fixed then: a value that grows
    /// afterwards is not charged more.
    #[track_caller]
    pub fn track_sized<T: MessageSize>(&self, value: T) -> Result<Tracked<T>> {
        let bytes = value.message_size();
        Tracked::new(&self.shared.tether, value, bytes)
    }

    /// What the connection holds now: bytes by kind, owned tasks, tethered values.
    pub fn info(&self) -> ConnectionInfo {
        self.shared.info()
    }

    /// Live tasks owned by this connection and values tethered to it.
    pub fn owned(&self) -> (usize, usize) {
        self.shared.tether.counts()
    }

    /// Completes when the connection is fully closed and its task has finished.
    pub async fn closed(&self) {
        self.shared.closed.wait().await
    }
}

impl<W: MessageSize> Channel<W> {
    /// Queues `message` for writing, waiting while the outbound queue is full.
    ///
    /// While the connection is closing, writes are still taken and flushed within the
    /// close timeout (a goodbye from a handler on an executor, say). Fails with
    /// [`Error::closed`] once the connection has closed its queue, also while waiting.
    ///
    /// While it waits, the message is charged to the connection
    /// ([`MemoryKind::PendingWrites`]), and a write that
    /// would wait past the connection's memory budget (all kinds together; see
    /// [`ServerBuilder::max_connection_memory`](crate::ServerBuilder::max_connection_memory))
    /// fails at once with an error of kind [`ErrorKind::Limit`](crate::ErrorKind::Limit) instead: however many tasks write to a peer
    /// that does not read, what they hold is bounded.
    pub async fn write(&self, message: W) -> Result<()> {
        match self.outbound.try_send(message) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(Error::closed()),
            // Boxed: the waiting path's state (the message, its charge, the queue's
            // waiter) stays out of every writer's future, which the fast path keeps
            // small (a handler's `ctx.write` future holds this one inline).
            Err(TrySendError::Full(message)) => Box::pin(self.write_waiting(message)).await,
        }
    }

    /// The slow path of [`write`](Channel::write): the queue is full.
    async fn write_waiting(&self, message: W) -> Result<()> {
        let bytes = message.charged_size();
        let stats = self.stats();
        let held = stats.total_bytes();
        if held + bytes > self.shared.budget {
            stats.count_dropped(1);
            global().budget_refusals.add(1);
            return Err(Error::limit("connection memory budget", self.shared.budget));
        }
        let _pending = crate::stats::Charge::new(stats, MemoryKind::PendingWrites, bytes);
        self.outbound
            .send(message)
            .await
            .map_err(|_| Error::closed())
    }

    /// Queues `message` if the outbound queue has room now; fails with an error of kind [`ErrorKind::Full`](crate::ErrorKind::Full)
    /// if not (the message is dropped and counted), or [`Error::closed`]. The same as
    /// `offer(message, Overflow::DropNewest)`, as a `Result`.
    pub fn try_write(&self, message: W) -> Result<()> {
        match self.offer(message, Overflow::DropNewest)? {
            Offered::Queued => Ok(()),
            _ => Err(Error::full()),
        }
    }

    /// Queues `message` without waiting; when the outbound queue is full, `policy` says
    /// what gives. For writers that must never wait on one peer, such as a broadcast to
    /// many. Every drop and every slow-consumer close is counted (per connection in
    /// [`ChannelStats::dropped_messages`], and process-wide).
    pub fn offer(&self, message: W, policy: Overflow) -> Result<Offered> {
        if self.shared.close_requested() {
            return Err(Error::closed());
        }
        let outcome = match policy {
            Overflow::DropOldest => {
                let (result, evicted) = self.outbound.send_evicting(message);
                self.stats().count_dropped(evicted as u64);
                match result {
                    Ok(()) if evicted == 0 => Ok(Offered::Queued),
                    Ok(()) => Ok(Offered::QueuedDroppingOldest(evicted)),
                    Err(error) => Err(error),
                }
            }
            Overflow::DropNewest | Overflow::CloseSlowConsumer => {
                self.outbound.try_send(message).map(|()| Offered::Queued)
            }
        };
        match outcome {
            Ok(offered) => Ok(offered),
            Err(TrySendError::Closed(_)) => Err(Error::closed()),
            Err(TrySendError::Full(_)) => {
                self.stats().count_dropped(1);
                if policy == Overflow::CloseSlowConsumer {
                    global().slow_consumer_closes.add(1);
                    tracing::debug!(channel = %self.id(), peer = %self.peer_addr(), "closing a slow consumer: its outbound queue is full");
                    self.close();
                    Ok(Offered::ClosedSlowConsumer)
                } else {
                    Ok(Offered::DroppedNewest)
                }
            }
        }
    }
}
