//! Ownership (G2): what a connection starts or holds belongs to it.
//!
//! [`Channel::spawn`](crate::Channel::spawn) starts a task owned by the connection, and
//! [`Channel::tether`](crate::Channel::tether) hands it any value with cleanup (a
//! subscription guard, a timer handle, a lease). When the connection closes, its tasks are
//! cancelled and *awaited* — the connection is not gone until they are — and its tethered
//! values are dropped. Plain `tokio::spawn` is never needed inside a handler (in tokio,
//! dropping a `JoinHandle` detaches the task: that is the Rust `Task.Run`).
//!
//! Every task and resource records where it was created (`#[track_caller]`) and is
//! counted, per connection and process-wide ([`GlobalStats`](crate::stats::GlobalStats)).
//!
//! A value the application keeps itself but that belongs to a connection (a session
//! object kept in a map by user id, say) can be [`Channel::track`](crate::Channel::track)ed
//! instead: the connection does not hold it, but leak detection ([`crate::leak`]) reports
//! it if it is still alive after the connection closed.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::channel::ChannelId;
use crate::error::{Error, Result};
use crate::leak::{LeakKind, Record};
use crate::stats::{global, ChannelStats, MemoryKind};
use crate::tasks::TASK_OVERHEAD;

/// Identifies a tethered value or an owned task of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TetherKey(u64);

/// A value held for a connection until it closes (or is untethered).
struct Resource {
    _value: Box<dyn Any + Send>,
    /// Charged to the connection's [`MemoryKind::Tethered`] meter.
    bytes: usize,
}

struct OwnedTask {
    /// `None` between spawning and recording the handle.
    abort: Option<AbortHandle>,
    created_at: &'static Location<'static>,
    created: Instant,
}

#[derive(Default)]
struct State {
    closed: bool,
    next_key: u64,
    /// Live owned tasks; an entry goes when its task is dropped, so entries left after
    /// the connection closed are tasks that did not stop.
    tasks: Sparse<OwnedTask>,
    resources: Sparse<Resource>,
    on_close: Sparse<Box<dyn FnOnce() + Send>>,
    /// Frames and tracked values alive, for leak reports.
    tracked: Sparse<Record>,
}

/// A map by key that takes one word until its first entry: most connections own no task,
/// tether no value and register no hook, and every connection carries four of these (a
/// `HashMap` inline is six words even when empty; the box is the point).
#[allow(clippy::box_collection)]
struct Sparse<V>(Option<Box<HashMap<u64, V>>>);

impl<V> Default for Sparse<V> {
    fn default() -> Self {
        Sparse(None)
    }
}

impl<V> Sparse<V> {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, key: u64, value: V) {
        self.0
            .get_or_insert_with(Default::default)
            .insert(key, value);
    }

    fn get(&self, key: &u64) -> Option<&V> {
        self.0.as_ref()?.get(key)
    }

    fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        self.0.as_mut()?.get_mut(key)
    }

    /// Removes an entry; the map's allocation goes with its last entry.
    fn remove(&mut self, key: &u64) -> Option<V> {
        let map = self.0.as_mut()?;
        let removed = map.remove(key);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().flat_map(|map| map.values())
    }

    fn into_values(self) -> impl Iterator<Item = V> {
        self.0.into_iter().flat_map(|map| map.into_values())
    }
}

/// Most live records (frames and tracked values) kept per connection; past it, new ones
/// are not recorded (a connection with this many live frames is reported anyway).
const MAX_TRACKED: usize = 65_536;

/// Everything one connection owns besides its buffers and queues.
pub(crate) struct Tether {
    state: Mutex<State>,
    /// Owned tasks not yet dropped (finished, or cancelled and dropped by their runtime).
    live_tasks: AtomicUsize,
    /// Signalled when `live_tasks` reaches zero.
    tasks_gone: Notify,
    /// Caps the live owned tasks, and separately the tethered values, of one connection
    /// (G3: nothing a connection holds grows without bound).
    max_tasks: usize,
    stats: Arc<ChannelStats>,
    /// The connection, for the watchdog's reports on owned tasks.
    channel: ChannelId,
}

/// Default cap of live owned tasks per connection.
pub(crate) const DEFAULT_MAX_OWNED_TASKS: usize = 1024;

impl Tether {
    pub(crate) fn new(
        channel: ChannelId,
        max_tasks: usize,
        stats: Arc<ChannelStats>,
    ) -> Arc<Tether> {
        Arc::new(Tether {
            channel,
            state: Mutex::new(State::default()),
            live_tasks: AtomicUsize::new(0),
            tasks_gone: Notify::new(),
            max_tasks,
            stats,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts `future` on the current runtime as a task owned by the connection.
    #[track_caller]
    pub(crate) fn spawn<F>(self: &Arc<Self>, future: F) -> Result<TetherKey>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let created_at = Location::caller();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config("Channel::spawn needs a tokio runtime: call it from a task")
        })?;
        let key = {
            let mut state = self.lock();
            if state.closed {
                return Err(Error::closed());
            }
            if state.tasks.len() >= self.max_tasks {
                return Err(Error::config(format!(
                    "the connection already owns {} tasks (the cap); let some finish first",
                    self.max_tasks
                )));
            }
            let key = state.next_key;
            state.next_key += 1;
            state.tasks.insert(
                key,
                OwnedTask {
                    abort: None,
                    created_at,
                    created: Instant::now(),
                },
            );
            // Counted under the lock: a close racing with this spawn must see the task
            // as live, and wait for it.
            self.live_tasks.fetch_add(1, Ordering::AcqRel);
            global().owned_tasks.add(1);
            key
        };
        let guard = OwnedTaskGuard {
            tether: self.clone(),
            key,
        };
        // Counted as a framework task of this thread's loop (when the runtime is one)
        // and charged to the connection: the future's size plus the task's overhead.
        type Task<F> = crate::tasks::Counted<
            crate::tasks::Counted<crate::panics::Watched<F>, OwnedTaskGuard>,
            crate::tasks::TaskGuard,
        >;
        let bytes = std::mem::size_of::<Task<F>>() + TASK_OVERHEAD;
        let event_loop = crate::tasks::current_loop();
        let counted = crate::tasks::TaskGuard::new(event_loop, Some((self.stats.clone(), bytes)));
        let name = crate::blocking::intern_site(created_at);
        let task = crate::panics::watched(self.channel, name, future);
        // The join handle is let go on purpose: the task is owned through its abort
        // handle and its guard, and the connection waits for the guard at close.
        let handle = runtime.spawn(crate::tasks::Counted::new(
            counted,
            crate::tasks::Counted::new(guard, task),
        ));
        let mut state = self.lock();
        let closed = state.closed;
        match state.tasks.get_mut(&key) {
            Some(task) if !closed => task.abort = Some(handle.abort_handle()),
            // Already finished, or the connection closed meanwhile (then cancel it now).
            Some(_) => handle.abort(),
            None if closed => handle.abort(),
            None => {}
        }
        Ok(TetherKey(key))
    }

    /// Holds `value` until the connection closes or [`Tether::untether`] is called.
    #[track_caller]
    pub(crate) fn tether<T: Send + 'static>(&self, value: T) -> Result<TetherKey> {
        self.tether_bytes(value, std::mem::size_of::<T>())
    }

    /// Like [`Tether::tether`], charging `bytes`.
    #[track_caller]
    pub(crate) fn tether_bytes<T: Send + 'static>(
        &self,
        value: T,
        bytes: usize,
    ) -> Result<TetherKey> {
        let created_at = Location::caller();
        let mut state = self.lock();
        if state.closed {
            return Err(Error::closed());
        }
        if state.resources.len() >= self.max_tasks {
            return Err(Error::config(format!(
                "the connection already holds {} tethered values (the cap); untether some first",
                self.max_tasks
            )));
        }
        let key = state.next_key;
        state.next_key += 1;
        state.resources.insert(
            key,
            Resource {
                _value: Box::new(value),
                bytes,
            },
        );
        drop(state);
        tracing::trace!(%created_at, bytes, "value tethered");
        global().tethered_resources.add(1);
        self.stats.meter(MemoryKind::Tethered).add(bytes);
        Ok(TetherKey(key))
    }

    /// Drops a tethered value now; false if there was none under `key`.
    pub(crate) fn untether(&self, key: TetherKey) -> bool {
        let removed = self.lock().resources.remove(&key.0);
        match removed {
            Some(resource) => {
                global().tethered_resources.sub(1);
                self.stats.meter(MemoryKind::Tethered).sub(resource.bytes);
                drop(resource);
                true
            }
            None => false,
        }
    }

    /// Records something alive that belongs to the connection (a frame, a tracked value),
    /// for leak reports; `None` past the per-connection cap of records, and for a
    /// tracked value once the connection has closed (checked under the same lock as the
    /// close, so a value is either refused or seen by the leak watch).
    pub(crate) fn track(
        &self,
        kind: LeakKind,
        bytes: usize,
        retained: usize,
        created_at: &'static Location<'static>,
        type_name: &'static str,
    ) -> Option<u64> {
        let mut state = self.lock();
        if state.tracked.len() >= MAX_TRACKED || (kind == LeakKind::Tracked && state.closed) {
            return None;
        }
        let key = state.next_key;
        state.next_key += 1;
        state.tracked.insert(
            key,
            Record {
                kind,
                type_name,
                bytes,
                retained,
                created_at,
                created: Instant::now(),
                handler: 0,
            },
        );
        Some(key)
    }

    /// Notes the handler a tracked frame was last handed to.
    pub(crate) fn touch(&self, key: u64, handler: u32) {
        if let Some(record) = self.lock().tracked.get_mut(&key) {
            record.handler = handler;
        }
    }

    /// Forgets a record made by [`Tether::track`] (its value was dropped).
    pub(crate) fn untrack(&self, key: u64) {
        self.lock().tracked.remove(&key);
    }

    /// Whether anything recorded for leak reports is alive.
    pub(crate) fn has_live_records(&self) -> bool {
        let state = self.lock();
        !state.tasks.is_empty() || !state.tracked.is_empty()
    }

    /// Everything recorded for leak reports that is still alive: owned tasks, frames and
    /// tracked values.
    pub(crate) fn live_records(&self) -> Vec<Record> {
        let state = self.lock();
        let tasks = state.tasks.values().map(|task| Record {
            kind: LeakKind::Task,
            type_name: "task",
            bytes: 0,
            retained: 0,
            created_at: task.created_at,
            created: task.created,
            handler: 0,
        });
        tasks.chain(state.tracked.values().cloned()).collect()
    }

    /// Cancels an owned task; false if it had already finished.
    pub(crate) fn abort(&self, key: TetherKey) -> bool {
        let state = self.lock();
        match state.tasks.get(&key.0).and_then(|task| task.abort.as_ref()) {
            Some(abort) => {
                abort.abort();
                true
            }
            None => false,
        }
    }

    /// Runs `hook` when the connection closes (at once, returning `None`, if it already
    /// has). The key removes the hook again ([`Tether::remove_on_close`]).
    pub(crate) fn on_close(&self, hook: Box<dyn FnOnce() + Send>) -> Option<TetherKey> {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            hook();
            return None;
        }
        let key = state.next_key;
        state.next_key += 1;
        state.on_close.insert(key, hook);
        Some(TetherKey(key))
    }

    /// Forgets a close hook (so that hooks do not pile up on a long-lived connection).
    pub(crate) fn remove_on_close(&self, key: TetherKey) {
        let removed = self.lock().on_close.remove(&key.0);
        drop(removed);
    }

    /// Live owned tasks, and tethered plus tracked values, of this connection.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        let tracked = state
            .tracked
            .values()
            .filter(|record| record.kind == LeakKind::Tracked)
            .count();
        (
            self.live_tasks.load(Ordering::Acquire),
            state.resources.len() + tracked,
        )
    }

    /// Closes: cancels every owned task, drops every tethered value, runs the close
    /// hooks. Idempotent. Does not wait; see [`Tether::tasks_gone`].
    pub(crate) fn close(&self) {
        let (tasks, resources, hooks) = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            // Task entries stay until each task is dropped: one that outlives the close
            // is reported as a leak.
            let tasks: Vec<AbortHandle> = state
                .tasks
                .values()
                .filter_map(|task| task.abort.clone())
                .collect();
            (
                tasks,
                std::mem::take(&mut state.resources),
                std::mem::take(&mut state.on_close),
            )
        };
        for task in &tasks {
            task.abort();
        }
        global().tethered_resources.sub(resources.len());
        let bytes: usize = resources.values().map(|resource| resource.bytes).sum();
        self.stats.meter(MemoryKind::Tethered).sub(bytes);
        // Values and hooks run outside the lock: they may do anything.
        drop(resources);
        for hook in hooks.into_values() {
            hook();
        }
    }

    /// Completes once every owned task has been dropped.
    pub(crate) async fn tasks_gone(&self) {
        loop {
            let notified = self.tasks_gone.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.live_tasks.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Lives inside an owned task: when the task is dropped (finished or cancelled), it
/// uncounts it and forgets its handle.
struct OwnedTaskGuard {
    tether: Arc<Tether>,
    key: u64,
}

impl Drop for OwnedTaskGuard {
    fn drop(&mut self) {
        self.tether.lock().tasks.remove(&self.key);
        global().owned_tasks.sub(1);
        if self.tether.live_tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tether.tasks_gone.notify_waiters();
        }
    }
}

/// A value the application holds that belongs to a connection: counted against it
/// ([`MemoryKind::Tethered`], by its inline size, or by what
/// [`MessageSize`](crate::MessageSize) says when made with
/// [`Channel::track_sized`](crate::Channel::track_sized)) and reported by leak detection if it
/// is still alive a grace period after the connection closed. Made by
/// [`Channel::track`](crate::Channel::track); reads as the value (`Deref`).
///
/// [`Tracked::into_inner`] takes the value out deliberately, ending the tracking.
pub struct Tracked<T> {
    value: Option<T>,
    tether: Arc<Tether>,
    key: Option<u64>,
    /// Charged to the connection's [`MemoryKind::Tethered`] meter.
    bytes: usize,
}

impl<T> Tracked<T> {
    #[track_caller]
    pub(crate) fn new(tether: &Arc<Tether>, value: T, bytes: usize) -> Result<Tracked<T>> {
        let key = tether
            .track(
                LeakKind::Tracked,
                bytes,
                bytes,
                Location::caller(),
                std::any::type_name::<T>(),
            )
            .ok_or_else(|| {
                if tether.lock().closed {
                    Error::closed()
                } else {
                    Error::config(format!(
                        "the connection already has {MAX_TRACKED} live tracked values and frames (the cap)"
                    ))
                }
            })?;
        tether.stats.meter(MemoryKind::Tethered).add(bytes);
        global().tethered_resources.add(1);
        Ok(Tracked {
            value: Some(value),
            tether: tether.clone(),
            key: Some(key),
            bytes,
        })
    }

    /// Takes the value out: it no longer belongs to the connection.
    pub fn into_inner(mut self) -> T {
        self.value
            .take()
            .expect("a tracked value is present until dropped")
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.tether.untrack(key);
        }
        self.tether
            .stats
            .meter(MemoryKind::Tethered)
            .sub(self.bytes);
        global().tethered_resources.sub(1);
    }
}

impl<T> Deref for Tracked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .expect("a tracked value is present until dropped")
    }
}

impl<T> DerefMut for Tracked<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_mut()
            .expect("a tracked value is present until dropped")
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Tracked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tracked").field(&self.value).finish()
    }
}
