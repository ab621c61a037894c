//! The [`Channel`]: a cloneable handle to one connection, usable from any task.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::queue::{ByteSender, TrySendError};
use crate::size::MessageSize;
use crate::stats::ChannelStats;

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
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What every handle to one connection shares.
pub(crate) struct ChannelShared {
    pub(crate) id: ChannelId,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) stats: Arc<ChannelStats>,
    /// Set when anyone asks the connection to close (or the server shuts down): the
    /// connection task flushes what is queued, tells its handlers, and closes. Read per
    /// frame on the hot path, so a plain atomic (a `CancellationToken` takes a lock).
    pub(crate) close_requested: AtomicBool,
    /// The connection task's waker, woken by a close request. Registered once per
    /// connection (a task's waker does not change), so waiting costs no lock.
    pub(crate) close_waker: Mutex<Option<Waker>>,
    /// Cancelled once the connection task has finished and the socket is closed.
    pub(crate) closed: CancellationToken,
}

impl ChannelShared {
    /// True once a close was asked for through a handle or seen by the connection task.
    pub(crate) fn close_requested(&self) -> bool {
        self.close_requested.load(Ordering::Relaxed)
    }

    pub(crate) fn request_close(&self) {
        if !self.close_requested.swap(true, Ordering::AcqRel) {
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
        Channel {
            shared: self.shared.clone(),
            outbound: self.outbound.clone(),
        }
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
        self.shared.closed.is_cancelled()
    }

    /// Completes when the connection is fully closed and its task has finished.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }
}

impl<W: MessageSize> Channel<W> {
    /// Queues `message` for writing, waiting while the outbound queue is full.
    ///
    /// Fails with [`Error::Closed`] if the connection is closed or closes while waiting.
    pub async fn write(&self, message: W) -> Result<()> {
        if self.shared.close_requested() {
            return Err(Error::Closed);
        }
        // A closed connection closes its queue, which wakes this wait with an error.
        self.outbound.send(message).await.map_err(|_| Error::Closed)
    }

    /// Queues `message` if the outbound queue has room now; fails with [`Error::Full`]
    /// (dropping the message) if not, or [`Error::Closed`]. For writers that must never
    /// wait, such as a broadcast to many connections.
    pub fn try_write(&self, message: W) -> Result<()> {
        if self.shared.close_requested() {
            return Err(Error::Closed);
        }
        match self.outbound.try_send(message) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Full),
            Err(TrySendError::Closed(_)) => Err(Error::Closed),
        }
    }
}
