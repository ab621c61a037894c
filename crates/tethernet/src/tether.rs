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

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::Location;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::error::{Error, Result};
use crate::stats::global;

/// Identifies a tethered value or an owned task of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TetherKey(u64);

/// A value held for a connection until it closes (or is untethered).
struct Resource {
    _value: Box<dyn Any + Send>,
    #[allow(dead_code)] // read by leak reports (issue "memory you can see")
    created_at: &'static Location<'static>,
}

struct OwnedTask {
    /// `None` between spawning and recording the handle.
    abort: Option<AbortHandle>,
    #[allow(dead_code)] // read by leak reports (issue "memory you can see")
    created_at: &'static Location<'static>,
}

#[derive(Default)]
struct State {
    closed: bool,
    next_key: u64,
    tasks: HashMap<u64, OwnedTask>,
    resources: HashMap<u64, Resource>,
    on_close: HashMap<u64, Box<dyn FnOnce() + Send>>,
}

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
}

/// Default cap of live owned tasks per connection.
pub(crate) const DEFAULT_MAX_OWNED_TASKS: usize = 1024;

impl Tether {
    pub(crate) fn new(max_tasks: usize) -> Arc<Tether> {
        Arc::new(Tether {
            state: Mutex::new(State::default()),
            live_tasks: AtomicUsize::new(0),
            tasks_gone: Notify::new(),
            max_tasks,
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
            Error::Config("Channel::spawn needs a tokio runtime: call it from a task".into())
        })?;
        let key = {
            let mut state = self.lock();
            if state.closed {
                return Err(Error::Closed);
            }
            if state.tasks.len() >= self.max_tasks {
                return Err(Error::Config(format!(
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
                },
            );
            // Counted under the lock: a close racing with this spawn must see the task
            // as live, and wait for it.
            self.live_tasks.fetch_add(1, Ordering::AcqRel);
            global().owned_tasks.add(1);
            key
        };
        let guard = TaskGuard {
            tether: self.clone(),
            key,
        };
        // The join handle is let go on purpose: the task is owned through its abort
        // handle and its guard, and the connection waits for the guard at close.
        let handle = runtime.spawn(async move {
            let _guard = guard;
            future.await;
        });
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
        let created_at = Location::caller();
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Closed);
        }
        if state.resources.len() >= self.max_tasks {
            return Err(Error::Config(format!(
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
                created_at,
            },
        );
        global().tethered_resources.add(1);
        Ok(TetherKey(key))
    }

    /// Drops a tethered value now; false if there was none under `key`.
    pub(crate) fn untether(&self, key: TetherKey) -> bool {
        let removed = self.lock().resources.remove(&key.0);
        match removed {
            Some(resource) => {
                global().tethered_resources.sub(1);
                drop(resource);
                true
            }
            None => false,
        }
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

    /// Live owned tasks and tethered values of this connection.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (
            self.live_tasks.load(Ordering::Acquire),
            state.resources.len(),
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
            (
                std::mem::take(&mut state.tasks),
                std::mem::take(&mut state.resources),
                std::mem::take(&mut state.on_close),
            )
        };
        for task in tasks.values() {
            if let Some(abort) = &task.abort {
                abort.abort();
            }
        }
        global().tethered_resources.sub(resources.len());
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
struct TaskGuard {
    tether: Arc<Tether>,
    key: u64,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.tether.lock().tasks.remove(&self.key);
        global().owned_tasks.sub(1);
        if self.tether.live_tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tether.tasks_gone.notify_waiters();
        }
    }
}
