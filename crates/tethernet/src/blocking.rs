//! Blocking detection: a handler that keeps an event-loop thread busy too long.
//!
//! An event loop serves thousands of connections one poll at a time; a handler that
//! blocks it (a synchronous database call, a `thread::sleep`, a long computation) stalls
//! every one of them. As Vert.x's blocked-thread checker does, each
//! [`EventLoopGroup`](crate::EventLoopGroup) runs one watchdog thread that looks at its
//! loops every quarter of the threshold: a loop still inside the same connection poll
//! for longer than the threshold ([`set_threshold`]; 10 ms by default, or
//! `TETHERNET_BLOCKING_THRESHOLD_MS`) is reported — the handler running at that moment,
//! the connection and the thread — once per blocking poll, logged as a warning, counted in
//! [`GlobalStats::blocked_io`](crate::stats::GlobalStats::blocked_io) and kept among the
//! [`reports`] (the latest 256). Work that must block belongs on a blocking executor
//! ([`Executor::builder`](crate::Executor::builder)`.blocking()`), whose threads are not
//! watched.
//!
//! The cost on the hot path is a few relaxed atomic stores per poll and per handler call;
//! no clock is read.

use std::cell::{Cell, OnceCell};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::channel::ChannelId;
use crate::stats::global;

static THRESHOLD_US: AtomicU64 = AtomicU64::new(0);
const DEFAULT_THRESHOLD: Duration = Duration::from_millis(10);

/// How long one poll may keep an event loop busy before it is reported.
pub fn threshold() -> Duration {
    match THRESHOLD_US.load(Ordering::Relaxed) {
        0 => {
            let threshold = crate::leak::env_millis("TETHERNET_BLOCKING_THRESHOLD_MS")
                .map_or(DEFAULT_THRESHOLD, Duration::from_millis);
            let _ = THRESHOLD_US.compare_exchange(
                0,
                threshold.as_micros() as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            threshold
        }
        us => Duration::from_micros(us),
    }
}

/// Sets the threshold for every watchdog of the process (at least 1 ms).
pub fn set_threshold(threshold: Duration) {
    let us = threshold.max(Duration::from_millis(1)).as_micros() as u64;
    THRESHOLD_US.store(us, Ordering::Relaxed);
}

/// A poll that kept an event loop busy past the threshold.
#[derive(Debug, Clone)]
pub struct BlockedReport {
    /// The handler running when the loop was seen blocked (its type name), or
    /// `"(framework code)"`.
    pub handler: &'static str,
    /// The connection being served.
    pub channel: ChannelId,
    /// The event-loop thread.
    pub thread: String,
    /// How long the poll had been running when last seen (to within a quarter of the
    /// threshold); updated until the poll ends.
    pub blocked: Duration,
    /// When the block was first reported.
    pub at: Instant,
}

const MAX_REPORTS: usize = 256;

fn recent() -> MutexGuard<'static, VecDeque<BlockedReport>> {
    static RECENT: Mutex<VecDeque<BlockedReport>> = Mutex::new(VecDeque::new());
    RECENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The latest reports (up to 256), oldest first.
pub fn reports() -> Vec<BlockedReport> {
    recent().iter().cloned().collect()
}

/// Handler names by interned id (id 0 is framework code).
fn names() -> MutexGuard<'static, (Vec<&'static str>, BTreeMap<&'static str, u32>)> {
    static NAMES: Mutex<(Vec<&'static str>, BTreeMap<&'static str, u32>)> =
        Mutex::new((Vec::new(), BTreeMap::new()));
    let mut names = NAMES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if names.0.is_empty() {
        names.0.push(FRAMEWORK);
    }
    names
}

thread_local! {
    /// Names this thread has interned, by address and length: building a pipeline per connection
    /// takes no shared lock once its handler types are known.
    static INTERNED: std::cell::RefCell<std::collections::HashMap<(usize, usize), u32>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A small number standing for a handler name, so a thread can publish which handler it
/// runs with one atomic store. Called once per handler when a pipeline is built.
pub(crate) fn intern(name: &'static str) -> u32 {
    let key = (name.as_ptr() as usize, name.len());
    if let Some(id) = INTERNED.with(|cache| cache.borrow().get(&key).copied()) {
        return id;
    }
    let id = intern_shared(name);
    INTERNED.with(|cache| cache.borrow_mut().insert(key, id));
    id
}

fn intern_shared(name: &'static str) -> u32 {
    let mut names = names();
    if let Some(id) = names.1.get(name) {
        return *id;
    }
    let id = names.0.len() as u32;
    names.0.push(name);
    names.1.insert(name, id);
    id
}

/// The name and interned id of a task spawned at `site`: "task spawned at FILE:LINE:COL".
/// One string per spawn site in the program, made once.
pub(crate) fn intern_site(site: &'static std::panic::Location<'static>) -> (&'static str, u32) {
    /// A spawn site (file address, line, column) and its name and id.
    type Sites = std::collections::HashMap<(usize, u32, u32), (&'static str, u32)>;
    thread_local! {
        static SITES: std::cell::RefCell<Sites> = std::cell::RefCell::new(Sites::new());
    }
    let key = (site.file().as_ptr() as usize, site.line(), site.column());
    if let Some(found) = SITES.with(|sites| sites.borrow().get(&key).copied()) {
        return found;
    }
    let mut names = names();
    let label = format!("task spawned at {site}");
    let found = match names.1.get(label.as_str()) {
        Some(id) => (names.0[*id as usize], *id),
        None => {
            // Bounded by the spawn sites in the program's code.
            let label: &'static str = Box::leak(label.into_boxed_str());
            let id = names.0.len() as u32;
            names.0.push(label);
            names.1.insert(label, id);
            (label, id)
        }
    };
    drop(names);
    SITES.with(|sites| sites.borrow_mut().insert(key, found));
    found
}

pub(crate) fn name(id: u32) -> &'static str {
    names().0.get(id as usize).copied().unwrap_or(FRAMEWORK)
}

/// What one event-loop thread publishes for its watchdog.
pub(crate) struct Slot {
    /// Odd while a connection poll runs; bumped at its start and at its end.
    seq: AtomicU64,
    handler: AtomicU32,
    channel: AtomicU64,
    thread: String,
}

impl Slot {
    pub(crate) fn new(thread: String) -> Arc<Slot> {
        Arc::new(Slot {
            seq: AtomicU64::new(0),
            handler: AtomicU32::new(0),
            channel: AtomicU64::new(0),
            thread,
        })
    }
}

/// What runs on this thread now: the handler's name (read after a panic) and interned
/// id, and the event loop's slot (published to the watchdog), in one thread-local so a
/// handler poll costs one access to name itself and one to restore what ran before.
struct Current {
    name: Cell<&'static str>,
    id: Cell<u32>,
    /// The last handler that ran during the current connection poll (for attributing
    /// tasks a handler starts itself, checked once per connection poll).
    last: Cell<&'static str>,
    slot: OnceCell<Arc<Slot>>,
}

thread_local! {
    static CURRENT: Current = const {
        Current {
            name: Cell::new(FRAMEWORK),
            id: Cell::new(0),
            last: Cell::new(FRAMEWORK),
            slot: OnceCell::new(),
        }
    };
}

/// The name used when no handler is running.
pub(crate) const FRAMEWORK: &str = "(framework code)";

/// The handler running on this thread (or [`FRAMEWORK`]).
pub(crate) fn running() -> &'static str {
    CURRENT.with(|current| current.name.get())
}

/// The connection this thread serves now (0: none).
pub(crate) fn current_channel() -> u64 {
    CURRENT.with(|current| {
        current
            .slot
            .get()
            .map_or(0, |slot| slot.channel.load(Ordering::Relaxed))
    })
}

/// Makes `slot` this thread's: called once, first thing on an event-loop thread.
pub(crate) fn install(slot: Arc<Slot>) {
    CURRENT.with(|current| {
        let _ = current.slot.set(slot);
    });
}

/// Marks the thread busy serving `channel` until the guard is dropped.
#[inline]
pub(crate) fn busy(channel: ChannelId) -> Busy {
    CURRENT.with(|current| {
        current.name.set(FRAMEWORK);
        current.id.set(0);
        current.last.set(FRAMEWORK);
        match current.slot.get() {
            // Not nested in another poll of this thread (the parity says idle).
            Some(slot) if slot.seq.load(Ordering::Relaxed) % 2 == 0 => {
                slot.channel.store(channel.as_u64(), Ordering::Relaxed);
                slot.handler.store(0, Ordering::Relaxed);
                slot.seq.fetch_add(1, Ordering::Release);
                Busy(true)
            }
            _ => Busy(false),
        }
    })
}

/// See [`busy`].
pub(crate) struct Busy(bool);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0 {
            CURRENT.with(|current| {
                if let Some(slot) = current.slot.get() {
                    slot.seq.fetch_add(1, Ordering::Release);
                }
            });
        }
    }
}

/// Names the handler about to run (and publishes its id to the watchdog); returns what
/// ran before, to restore with another call.
#[inline]
pub(crate) fn entering(name: &'static str, id: u32) -> (&'static str, u32) {
    CURRENT.with(|current| {
        if let Some(slot) = current.slot.get() {
            slot.handler.store(id, Ordering::Relaxed);
        }
        if id != 0 {
            current.last.set(name);
        }
        (current.name.replace(name), current.id.replace(id))
    })
}

/// The last handler that ran during the current connection poll (or [`FRAMEWORK`]).
pub(crate) fn last_handler() -> &'static str {
    CURRENT.with(|current| current.last.get())
}

/// The watchdog of one event-loop group: a thread, stopped and joined on drop.
pub(crate) struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn start(name: &str, slots: Vec<Arc<Slot>>) -> std::io::Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::Builder::new()
            .name(format!("{name}-watchdog"))
            .spawn(move || watch(&slots, &stopped))?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Per slot: the poll last seen running, since when, and whether it was reported.
#[derive(Default, Clone, Copy)]
struct Seen {
    seq: u64,
    since: Option<Instant>,
    reported: bool,
}

fn watch(slots: &[Arc<Slot>], stop: &AtomicBool) {
    let mut seen = vec![Seen::default(); slots.len()];
    while !stop.load(Ordering::Relaxed) {
        let threshold = threshold();
        thread::park_timeout(threshold / 4);
        let now = Instant::now();
        for (slot, seen) in slots.iter().zip(seen.iter_mut()) {
            let seq = slot.seq.load(Ordering::Acquire);
            if seq != seen.seq || seq % 2 == 0 {
                if seen.reported {
                    finish(slot, seen, now);
                }
                *seen = Seen {
                    seq,
                    since: (seq % 2 == 1).then_some(now),
                    reported: false,
                };
                continue;
            }
            let Some(since) = seen.since else { continue };
            // The same poll is still running: it has been for at least `now - since`.
            let blocked = now - since;
            if blocked >= threshold && !seen.reported {
                seen.reported = true;
                let report = BlockedReport {
                    handler: name(slot.handler.load(Ordering::Relaxed)),
                    channel: ChannelId::from_u64(slot.channel.load(Ordering::Relaxed)),
                    thread: slot.thread.clone(),
                    blocked,
                    at: now,
                };
                global().blocked_io.add(1);
                tracing::warn!(
                    handler = report.handler,
                    channel = %report.channel,
                    thread = %report.thread,
                    blocked_ms = blocked.as_millis() as u64,
                    "a handler is blocking an event loop (move blocking work to a blocking executor)"
                );
                let mut recent = recent();
                if recent.len() >= MAX_REPORTS {
                    recent.pop_front();
                }
                recent.push_back(report);
            }
        }
    }
}

/// Records how long a reported poll ran in the end (to within a tick).
fn finish(slot: &Slot, seen: &Seen, now: Instant) {
    let Some(since) = seen.since else { return };
    let mut recent = recent();
    if let Some(report) = recent
        .iter_mut()
        .rev()
        .find(|report| report.thread == slot.thread)
    {
        report.blocked = report.blocked.max(now - since);
    }
}
