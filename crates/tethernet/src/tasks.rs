//! Tasks on Tethernet's event loops: the ones the framework and the connections own, and
//! the ones nobody owns (G2, G4, G5).
//!
//! A plain `tokio::spawn` inside a handler is the Rust form of the fire-and-forget
//! `Task.Run` that this project was born from: the task is detached, nothing waits for
//! it, nothing cancels it when its connection closes, and whatever it holds stays alive.
//! Tethernet cannot forbid it, but on its own runtimes it can see it:
//!
//! - **Counted per loop.** Every task the framework starts on an event loop (connection
//!   tasks, executor drainers, tasks owned through [`Channel::spawn`]) is counted; the
//!   runtime knows how many tasks are alive in all. The difference is the loop's
//!   *unowned* tasks ([`LoopInfo::unowned_tasks`], on `/metrics` and the dashboard).
//! - **Attributed.** Around every poll of a connection (its I/O task, or its drainer on
//!   an executor) and of an owned task, the framework reads the loop's alive-task count;
//!   a rise that the framework's own spawns do not explain is tasks a handler started
//!   itself. They are recorded against the connection and the last handler that ran in
//!   that poll ([`unowned_spawns`], [`ConnectionInfo::unowned_tasks_started`]): exact
//!   when one handler ran, the last of them when a batch of frames went through several.
//! - **Reported.** When a connection that started unowned tasks has been closed for the
//!   leak grace period and its loop still has unowned tasks alive, a
//!   [`LeakKind::UnownedTask`] report names the connection, the handler and how many of
//!   its tasks still run. The runtime does not say *which* tasks are alive, so that
//!   figure is an estimate from the loop's counts: what is alive beyond what was alive
//!   before the handler started them and what other handlers started since, at most
//!   what it started. Short-lived tasks (a database pool's release work, say) are
//!   therefore not reported once they are done, even beside a library's long-lived
//!   background tasks.
//!
//! What is not seen: tasks started on another runtime (`Handle::spawn` onto a
//! runtime that is not a Tethernet event loop), tasks started by tasks (only handler
//! calls are watched), and tasks started by handlers on a blocking executor's threads
//! other than through its loop. Use [`Channel::spawn`] instead: owned tasks are cancelled
//! and awaited at close, and never reported unless they outlive it.
//!
//! [`Channel::spawn`]: crate::Channel::spawn
//! [`ConnectionInfo::unowned_tasks_started`]: crate::ConnectionInfo::unowned_tasks_started
//! [`LeakKind::UnownedTask`]: crate::leak::LeakKind::UnownedTask

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::runtime::{Handle, RuntimeMetrics};

use crate::channel::ChannelId;
use crate::stats::{ChannelStats, MemoryKind};

/// Bytes a tokio task costs besides its future: the task cell's header, scheduler
/// handle, id and trailer. Measured with a counting allocator: 176 B per task on x86_64
/// with tokio 1.54 (`tests/accounting_truth.rs` checks it).
pub const TASK_OVERHEAD: usize = 176;

/// The figures of one event loop.
pub(crate) struct LoopStats {
    name: String,
    metrics: RuntimeMetrics,
    /// Live tasks the framework started on this loop (connection tasks, drainers, owned
    /// tasks).
    framework: AtomicUsize,
    /// Tasks handlers started themselves on this loop, since it started.
    unowned_started: AtomicU64,
}

impl LoopStats {
    pub(crate) fn new(name: String, handle: &Handle) -> Arc<LoopStats> {
        let stats = Arc::new(LoopStats {
            name,
            metrics: handle.metrics(),
            framework: AtomicUsize::new(0),
            unowned_started: AtomicU64::new(0),
        });
        let mut loops = loops();
        loops.retain(|entry| entry.strong_count() > 0);
        loops.push(Arc::downgrade(&stats));
        stats
    }

    /// Tasks alive on the loop that the framework did not start.
    pub(crate) fn unowned(&self) -> usize {
        let framework = self.framework.load(Ordering::Acquire);
        self.metrics.num_alive_tasks().saturating_sub(framework)
    }

    fn info(&self) -> LoopInfo {
        let framework = self.framework.load(Ordering::Acquire);
        let alive = self.metrics.num_alive_tasks();
        LoopInfo {
            name: self.name.clone(),
            alive_tasks: alive,
            framework_tasks: framework,
            unowned_tasks: alive.saturating_sub(framework),
            unowned_started: self.unowned_started.load(Ordering::Relaxed),
        }
    }
}

fn loops() -> MutexGuard<'static, Vec<Weak<LoopStats>>> {
    static LOOPS: Mutex<Vec<Weak<LoopStats>>> = Mutex::new(Vec::new());
    LOOPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one event loop runs now, as listed by [`event_loops`].
#[derive(Debug, Clone)]
pub struct LoopInfo {
    /// The loop's thread name (`{group}-{index}`).
    pub name: String,
    /// Tasks alive on the loop's runtime.
    pub alive_tasks: usize,
    /// Of those, tasks the framework started: connection tasks, executor drainers, tasks
    /// owned by connections.
    pub framework_tasks: usize,
    /// Tasks nobody owns: started by handlers or other code with a plain `tokio::spawn`.
    pub unowned_tasks: usize,
    /// Tasks handler calls on this loop started themselves, since the loop started.
    pub unowned_started: u64,
}

/// Every live event loop of the process (servers, clients and executors).
pub fn event_loops() -> Vec<LoopInfo> {
    let live: Vec<Arc<LoopStats>> = loops().iter().filter_map(Weak::upgrade).collect();
    live.iter().map(|stats| stats.info()).collect()
}

/// Unowned tasks alive on every event loop of the process.
pub fn unowned_total() -> usize {
    let live: Vec<Arc<LoopStats>> = loops().iter().filter_map(Weak::upgrade).collect();
    live.iter().map(|stats| stats.unowned()).sum()
}

/// What a thread knows of the event loop it runs (one thread-local: a handler poll
/// reads it twice, so one access each time).
struct LoopLocal {
    /// The event loop this thread runs, if it runs one.
    stats: OnceCell<Arc<LoopStats>>,
    /// Rises in the alive-task count already explained on this thread: framework spawns
    /// onto this thread's loop and unowned spawns already recorded (by a nested call).
    explained: Cell<u64>,
}

thread_local! {
    static LOOP: LoopLocal = const {
        LoopLocal {
            stats: OnceCell::new(),
            explained: Cell::new(0),
        }
    };
}

/// Makes `stats` this thread's loop (once; later calls are ignored).
pub(crate) fn install(stats: Arc<LoopStats>) {
    LOOP.with(|current| {
        let _ = current.stats.set(stats);
    });
}

/// This thread's loop, if it runs one.
pub(crate) fn current_loop() -> Option<Arc<LoopStats>> {
    LOOP.with(|current| current.stats.get().cloned())
}

fn explain(count: u64) {
    LOOP.with(|current| current.explained.set(current.explained.get() + count));
}

/// A snapshot taken before a handler poll; `0`s when the thread runs no loop.
#[derive(Clone, Copy)]
pub(crate) struct Before {
    alive: usize,
    explained: u64,
}

/// Before a handler poll: the loop's alive tasks and what is explained so far.
#[inline]
pub(crate) fn before() -> Option<Before> {
    LOOP.with(|current| {
        current.stats.get().map(|stats| Before {
            alive: stats.metrics.num_alive_tasks(),
            explained: current.explained.get(),
        })
    })
}

/// After a handler poll: records tasks the handler started itself, if any.
#[inline]
pub(crate) fn after(before: Option<Before>, handler: &'static str) {
    let Some(before) = before else { return };
    LOOP.with(|current| {
        let Some(stats) = current.stats.get() else {
            return;
        };
        let alive = stats.metrics.num_alive_tasks();
        if alive > before.alive {
            rose(stats, current, before, alive, handler);
        }
    })
}

/// The loop's task count rose during a handler poll: by framework spawns (explained), or
/// by tasks the handler started itself.
#[cold]
fn rose(
    stats: &Arc<LoopStats>,
    current: &LoopLocal,
    before: Before,
    alive: usize,
    handler: &'static str,
) {
    let explained = current.explained.get() - before.explained;
    let started = (alive - before.alive) as u64;
    if started > explained {
        // What was unowned before the poll (framework tasks started in it aside).
        let framework = stats.framework.load(Ordering::Relaxed) as u64;
        let framework_before = framework.saturating_sub(explained) as usize;
        let unowned_before = before.alive.saturating_sub(framework_before);
        record(stats, handler, started - explained, unowned_before);
    }
}

#[cold]
fn record(stats: &Arc<LoopStats>, handler: &'static str, count: u64, unowned_before: usize) {
    let channel = crate::blocking::current_channel();
    explain(count);
    let started_before = stats.unowned_started.fetch_add(count, Ordering::Relaxed);
    crate::stats::global().unowned_tasks_started.add(count);
    let mut ledger = ledger();
    let now = Instant::now();
    let full = ledger.by_channel.len() >= MAX_LEDGER;
    if full && !ledger.by_channel.contains_key(&channel) {
        return;
    }
    let entries = ledger.by_channel.entry(channel).or_default();
    if let Some(entry) = entries
        .iter_mut()
        .find(|entry| entry.handler == handler && Arc::ptr_eq(&entry.event_loop, stats))
    {
        entry.count += count;
    } else if entries.len() < MAX_PER_CHANNEL {
        entries.push(UnownedSpawn {
            event_loop: stats.clone(),
            handler,
            count,
            first: now,
            unowned_before,
            started_before,
        });
    }
    drop(ledger);
    tracing::debug!(
        channel = %ChannelId::from_u64(channel),
        handler,
        tasks = count,
        event_loop = %stats.name,
        "a handler started tasks nobody owns (use ctx.spawn: owned tasks end with their connection)"
    );
}

/// Connections with unowned spawns recorded; past it, spawns are counted but not listed.
const MAX_LEDGER: usize = 16_384;
/// Distinct (handler, loop) entries kept per connection.
const MAX_PER_CHANNEL: usize = 16;

/// Tasks one handler of one connection started itself on one loop.
#[derive(Clone)]
pub(crate) struct UnownedSpawn {
    pub(crate) event_loop: Arc<LoopStats>,
    pub(crate) handler: &'static str,
    pub(crate) count: u64,
    pub(crate) first: Instant,
    /// Unowned tasks alive on the loop just before the first of these was started.
    unowned_before: usize,
    /// The loop's count of handler-started tasks then.
    started_before: u64,
}

impl UnownedSpawn {
    /// How many of these tasks are alive at least, as far as the loop's figures tell:
    /// what is alive on the loop beyond what was alive before they started and what
    /// other handlers started since, capped at how many they were. (Tasks that were alive
    /// before and ended since may hide some; tasks started since by code that is not a
    /// handler call may be counted as theirs.)
    pub(crate) fn alive(&self) -> usize {
        let loop_ = &self.event_loop;
        let others = loop_
            .unowned_started
            .load(Ordering::Relaxed)
            .saturating_sub(self.started_before)
            .saturating_sub(self.count) as usize;
        loop_
            .unowned()
            .saturating_sub(self.unowned_before)
            .saturating_sub(others)
            .min(self.count as usize)
    }
}

#[derive(Default)]
struct Ledger {
    by_channel: HashMap<u64, Vec<UnownedSpawn>>,
}

fn ledger() -> MutexGuard<'static, Ledger> {
    static LEDGER: std::sync::OnceLock<Mutex<Ledger>> = std::sync::OnceLock::new();
    LEDGER
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tasks the connection's handlers started themselves, so far.
pub(crate) fn started_by(channel: ChannelId) -> u64 {
    ledger()
        .by_channel
        .get(&channel.as_u64())
        .map_or(0, |entries| entries.iter().map(|entry| entry.count).sum())
}

/// Forgets records of connections that are no longer open (spawns recorded after their
/// close, by work that ran on past it): called with the periodic leak check.
pub(crate) fn purge_closed() {
    let mut ledger = ledger();
    if ledger.by_channel.is_empty() {
        return;
    }
    ledger
        .by_channel
        .retain(|channel, _| crate::stats::is_live(ChannelId::from_u64(*channel)));
}

/// Takes the connection's records (at close; the leak watch keeps them from then on).
pub(crate) fn take(channel: ChannelId) -> Vec<UnownedSpawn> {
    ledger()
        .by_channel
        .remove(&channel.as_u64())
        .unwrap_or_default()
}

/// A handler's unowned spawns, as listed by [`unowned_spawns`].
#[derive(Debug, Clone)]
pub struct UnownedSpawnInfo {
    /// The connection whose handler started them.
    pub channel: ChannelId,
    /// The handler (its type name).
    pub handler: &'static str,
    /// The event loop they run on.
    pub event_loop: String,
    /// How many it started.
    pub count: u64,
    /// Time since the first of them was started.
    pub since_first: std::time::Duration,
}

/// Unowned spawns by handlers of live connections (closed connections' spawns move to
/// the leak watch, [`crate::leak`]); at most `limit`, most tasks first.
pub fn unowned_spawns(limit: usize) -> Vec<UnownedSpawnInfo> {
    let now = Instant::now();
    let mut all: Vec<UnownedSpawnInfo> = ledger()
        .by_channel
        .iter()
        .flat_map(|(channel, entries)| {
            entries.iter().map(move |entry| UnownedSpawnInfo {
                channel: ChannelId::from_u64(*channel),
                handler: entry.handler,
                event_loop: entry.event_loop.name.clone(),
                count: entry.count,
                since_first: now.saturating_duration_since(entry.first),
            })
        })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then(a.channel.cmp(&b.channel)));
    all.truncate(limit);
    all
}

/// Lives in a task the framework started: counts it as the framework's on its loop and
/// charges its memory to its connection, until the task is dropped.
pub(crate) struct TaskGuard {
    event_loop: Option<Arc<LoopStats>>,
    charge: Option<(Arc<ChannelStats>, usize)>,
}

impl TaskGuard {
    /// Counts a task about to be spawned on `event_loop`; `charge` is the connection it
    /// belongs to and the bytes its future holds.
    pub(crate) fn new(
        event_loop: Option<Arc<LoopStats>>,
        charge: Option<(Arc<ChannelStats>, usize)>,
    ) -> TaskGuard {
        if let Some(stats) = &event_loop {
            stats.framework.fetch_add(1, Ordering::AcqRel);
            // A spawn onto this thread's own loop explains a rise in its alive count.
            let own =
                LOOP.with(|current| current.stats.get().is_some_and(|c| Arc::ptr_eq(c, stats)));
            if own {
                explain(1);
            }
        }
        if let Some((stats, bytes)) = &charge {
            stats.meter(MemoryKind::Tasks).add(*bytes);
        }
        TaskGuard { event_loop, charge }
    }
}

/// Starts a connection's task: counted as the framework's on `event_loop`, its memory
/// (the whole future: pipeline, handler futures in flight, connection state; and the
/// runtime's overhead) charged to the connection until it is marked closed.
pub(crate) fn connection_task<F: Future>(
    event_loop: Option<Arc<LoopStats>>,
    shared: &Arc<crate::channel::ChannelShared>,
    future: F,
) -> Counted<F, (TaskGuard, crate::channel::TaskCharge)> {
    let bytes =
        std::mem::size_of::<Counted<F, (TaskGuard, crate::channel::TaskCharge)>>() + TASK_OVERHEAD;
    let guard = (TaskGuard::new(event_loop, None), shared.charge_task(bytes));
    Counted::new(guard, future)
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(stats) = &self.event_loop {
            stats.framework.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some((stats, bytes)) = &self.charge {
            stats.meter(MemoryKind::Tasks).sub(*bytes);
        }
    }
}

/// Starts `future` on `handle` as a framework task of `event_loop`, charging its memory
/// (the future's size plus [`TASK_OVERHEAD`]) to `stats` if given.
pub(crate) fn spawn_counted<F>(
    handle: &Handle,
    event_loop: Option<Arc<LoopStats>>,
    stats: Option<&Arc<ChannelStats>>,
    future: F,
) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let bytes = std::mem::size_of::<Counted<F, TaskGuard>>() + TASK_OVERHEAD;
    let guard = TaskGuard::new(event_loop, stats.map(|stats| (stats.clone(), bytes)));
    handle.spawn(Counted::new(guard, future))
}

pin_project_lite::pin_project! {
    /// A task's future with a guard that lives as long as the task (a [`TaskGuard`]).
    /// A struct, not an `async` wrapper, which would hold the future twice.
    pub(crate) struct Counted<F, G> {
        guard: G,
        #[pin]
        future: F,
    }
}

impl<F, G> Counted<F, G> {
    pub(crate) fn new(guard: G, future: F) -> Counted<F, G> {
        Counted { guard, future }
    }
}

impl<F: Future, G> Future for Counted<F, G> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().future.poll(cx)
    }
}
