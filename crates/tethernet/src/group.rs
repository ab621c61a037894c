//! Channel groups: named sets of connections to broadcast to.
//!
//! A broadcast never waits on a member: each message is *offered* to each member with the
//! group's [`Overflow`] policy, so one slow member can neither block nor bloat the others
//! (its own outbound queue is capped; what does not fit is dropped or closes it, counted).
//! Members leave the group when their connection closes.
//!
//! To encode a broadcast once, make the pipeline's outbound type a shared buffer
//! (`bytes::Bytes`): serialize the message once, and every member's queue holds the same
//! bytes (a reference count, not a copy) until its codec frames them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::channel::{Channel, ChannelId, Offered, Overflow};
use crate::size::MessageSize;
use crate::tether::TetherKey;

/// A named set of connections; cheap to clone.
pub struct ChannelGroup<W> {
    inner: Arc<GroupInner<W>>,
}

impl<W> Clone for ChannelGroup<W> {
    fn clone(&self) -> Self {
        ChannelGroup {
            inner: self.inner.clone(),
        }
    }
}

struct GroupInner<W> {
    name: String,
    policy: Overflow,
    members: Mutex<Members<W>>,
}

/// The members of a group, each with the key of the close hook that removes it.
type Members<W> = HashMap<ChannelId, (Channel<W>, Option<TetherKey>)>;

impl<W> GroupInner<W> {
    fn lock(&self) -> MutexGuard<'_, Members<W>> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What one broadcast did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Broadcast {
    /// Members the message was queued for.
    pub queued: usize,
    /// Older messages dropped to make room (policy [`Overflow::DropOldest`]).
    pub dropped_oldest: usize,
    /// Members whose queue was full, so the message was dropped for them.
    pub dropped: usize,
    /// Members closed as slow consumers (policy [`Overflow::CloseSlowConsumer`]).
    pub closed_slow: usize,
}

impl<W: MessageSize + Clone + Send + 'static> ChannelGroup<W> {
    /// An empty group whose broadcasts use `policy` for members whose queue is full.
    pub fn new(name: impl Into<String>, policy: Overflow) -> Self {
        ChannelGroup {
            inner: Arc::new(GroupInner {
                name: name.into(),
                policy,
                members: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Adds a connection; it leaves by itself when it closes. False if it was a member.
    pub fn add(&self, channel: &Channel<W>) -> bool {
        let id = channel.id();
        let mut members = self.inner.lock();
        if members.contains_key(&id) {
            return false;
        }
        members.insert(id, (channel.clone(), None));
        drop(members);
        let group: Weak<GroupInner<W>> = Arc::downgrade(&self.inner);
        let hook = channel.shared.tether.on_close(Box::new(move || {
            if let Some(group) = group.upgrade() {
                group.lock().remove(&id);
            }
        }));
        if let Some(member) = self.inner.lock().get_mut(&id) {
            member.1 = hook;
        }
        true
    }

    /// Removes a connection; false if it was not a member.
    pub fn remove(&self, id: ChannelId) -> bool {
        let removed = self.inner.lock().remove(&id);
        match removed {
            Some((channel, hook)) => {
                if let Some(hook) = hook {
                    channel.shared.tether.remove_on_close(hook);
                }
                true
            }
            None => false,
        }
    }

    /// True if the connection is a member.
    pub fn contains(&self, id: ChannelId) -> bool {
        self.inner.lock().contains_key(&id)
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// True when the group has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offers `message` to every member (see the module docs). Never waits.
    pub fn broadcast(&self, message: W) -> Broadcast {
        self.broadcast_where(message, |_| true)
    }

    /// Offers `message` to every member but `sender`.
    pub fn broadcast_except(&self, message: W, sender: ChannelId) -> Broadcast {
        self.broadcast_where(message, |id| id != sender)
    }

    fn broadcast_where(&self, message: W, include: impl Fn(ChannelId) -> bool) -> Broadcast {
        // Offers never wait and never call back into the group, so they can run under
        // the lock; that saves copying the member list per broadcast.
        let members = self.inner.lock();
        let mut report = Broadcast::default();
        for (id, (channel, _)) in members.iter() {
            if !include(*id) {
                continue;
            }
            match channel.offer(message.clone(), self.inner.policy) {
                Ok(Offered::Queued) => report.queued += 1,
                Ok(Offered::QueuedDroppingOldest(n)) => {
                    report.queued += 1;
                    report.dropped_oldest += n;
                }
                Ok(Offered::DroppedNewest) => report.dropped += 1,
                Ok(Offered::ClosedSlowConsumer) => report.closed_slow += 1,
                // Closing; it leaves the group when its close completes.
                Err(_) => {}
            }
        }
        report
    }
}
