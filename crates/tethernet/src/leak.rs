//! Leak reports (G5): what outlived its connection, who owned it, and where it was made.
//!
//! Three things belong to a connection and must go when it closes: the [`Frame`]s
//! decoded from it, the tasks it owns ([`Channel::spawn`]) and the values tracked for it
//! ([`Channel::track`]). Each records where it was created (`#[track_caller]`) and which
//! connection it belongs to. When a connection closes, the framework watches what of it
//! is still alive; anything alive a grace period later ([`set_grace`] or
//! `TETHERNET_LEAK_GRACE_MS`, 10 s by default)
//! is reported **once**, as a [`LeakReport`] (connection, peer, kind, bytes, creation
//! site, age), logged as a warning, counted in [`GlobalStats::leaks`], and kept among the
//! [`reports`] (the latest 256).
//!
//! # Levels
//!
//! Owned tasks and tracked values are few and always recorded. Frames are many, so how
//! many of them are recorded is the level ([`LeakDetection`]), set with [`set_level`] or
//! the `TETHERNET_LEAK_DETECTION` environment variable (`off`, `sampled`, `paranoid`):
//!
//! - `sampled` (the default): one frame in [`SAMPLE_INTERVAL`] per I/O thread is
//!   recorded. A frame kept by mistake on every request is found quickly; the cost is a
//!   thread-local counter per frame (see `BENCHMARKS.md` for the measured overhead).
//! - `paranoid`: every frame is recorded (a lock per frame): for tests and for chasing a
//!   leak that sampling has found.
//! - `off`: no frame is recorded. Memory accounting stays on at every level.
//!
//! Checks run when connections close, when [`reports`] or [`check`] is called (the admin
//! endpoints do), and once a second in every [`Server`](crate::Server).
//!
//! [`Frame`]: crate::Frame
//! [`Channel::spawn`]: crate::Channel::spawn
//! [`Channel::track`]: crate::Channel::track
//! [`GlobalStats::leaks`]: crate::stats::GlobalStats::leaks

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::channel::{ChannelId, ChannelShared};
use crate::stats::global;
use crate::tether::Tether;

/// How many frames leak detection records (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakDetection {
    /// No frame is recorded (owned tasks and tracked values still are).
    Off,
    /// One frame in [`SAMPLE_INTERVAL`] is recorded. The default.
    Sampled,
    /// Every frame is recorded.
    Paranoid,
}

impl LeakDetection {
    /// The level's name, as `TETHERNET_LEAK_DETECTION` spells it.
    pub fn name(self) -> &'static str {
        match self {
            LeakDetection::Off => "off",
            LeakDetection::Sampled => "sampled",
            LeakDetection::Paranoid => "paranoid",
        }
    }
}

impl std::str::FromStr for LeakDetection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "disabled" | "0" => Ok(LeakDetection::Off),
            "sampled" | "simple" | "on" | "1" => Ok(LeakDetection::Sampled),
            "paranoid" | "all" | "2" => Ok(LeakDetection::Paranoid),
            other => Err(format!(
                "unknown leak detection level `{other}`: expected off, sampled or paranoid"
            )),
        }
    }
}

/// At the `sampled` level, one frame in this many is recorded.
pub const SAMPLE_INTERVAL: u32 = 128;

/// 0: not read yet; otherwise 1 + the level.
static LEVEL: AtomicU8 = AtomicU8::new(0);
/// 0: not read yet.
static GRACE_MS: AtomicU64 = AtomicU64::new(0);
const DEFAULT_GRACE_MS: u64 = 10_000;

/// The current level: as last set, or from `TETHERNET_LEAK_DETECTION` (sampled if unset
/// or unreadable).
#[inline]
pub fn level() -> LeakDetection {
    match LEVEL.load(Ordering::Relaxed) {
        1 => LeakDetection::Off,
        2 => LeakDetection::Sampled,
        3 => LeakDetection::Paranoid,
        _ => level_from_env(),
    }
}

#[cold]
fn level_from_env() -> LeakDetection {
    let level = match std::env::var("TETHERNET_LEAK_DETECTION") {
        Ok(value) => value.parse().unwrap_or_else(|error| {
            tracing::warn!(%error, "TETHERNET_LEAK_DETECTION ignored; using `sampled`");
            LeakDetection::Sampled
        }),
        Err(_) => LeakDetection::Sampled,
    };
    // A level set meanwhile wins.
    let _ = LEVEL.compare_exchange(0, encode(level), Ordering::Relaxed, Ordering::Relaxed);
    level
}

fn encode(level: LeakDetection) -> u8 {
    match level {
        LeakDetection::Off => 1,
        LeakDetection::Sampled => 2,
        LeakDetection::Paranoid => 3,
    }
}

/// Sets the level for the whole process (frames created from now on).
pub fn set_level(level: LeakDetection) {
    LEVEL.store(encode(level), Ordering::Relaxed);
}

/// How long after its connection closed something must still be alive to be reported:
/// as last set, or `TETHERNET_LEAK_GRACE_MS`, or 10 s.
pub fn grace() -> Duration {
    match GRACE_MS.load(Ordering::Relaxed) {
        0 => {
            let ms = env_millis("TETHERNET_LEAK_GRACE_MS").unwrap_or(DEFAULT_GRACE_MS);
            let _ = GRACE_MS.compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
            Duration::from_millis(ms)
        }
        ms => Duration::from_millis(ms),
    }
}

/// A positive number of milliseconds from the environment variable `name`, if set (an
/// unreadable value is logged and ignored).
pub(crate) fn env_millis(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Some(ms),
        _ => {
            tracing::warn!(%value, "{name} ignored: expected a positive number of milliseconds");
            None
        }
    }
}

/// Sets the grace period (10 s by default). Shorter finds leaks sooner but may report a
/// value that was about to be dropped (a task finishing its last write, say).
pub fn set_grace(grace: Duration) {
    GRACE_MS.store((grace.as_millis() as u64).max(1), Ordering::Relaxed);
}

/// What leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakKind {
    /// A [`Frame`](crate::Frame) decoded from the connection.
    Frame,
    /// A task the connection owned ([`Channel::spawn`](crate::Channel::spawn)) that did
    /// not stop (a task that never yields cannot be cancelled).
    Task,
    /// A value tracked for the connection ([`Channel::track`](crate::Channel::track)).
    Tracked,
    /// Tasks a handler of the connection started itself (a plain `tokio::spawn`) that
    /// may still run: its event loop still has unowned tasks alive ([`crate::tasks`]).
    UnownedTask,
    /// [`Channel`](crate::Channel) handles to the connection still held: each keeps the
    /// connection's shared state (its figures, its queue's state) alive.
    Handle,
}

impl LeakKind {
    /// A short snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            LeakKind::Frame => "frame",
            LeakKind::Task => "task",
            LeakKind::Tracked => "tracked",
            LeakKind::UnownedTask => "unowned_task",
            LeakKind::Handle => "handle",
        }
    }
}

/// Something still alive a grace period after its connection closed.
#[derive(Debug, Clone)]
pub struct LeakReport {
    /// The connection it belonged to.
    pub channel: ChannelId,
    /// That connection's peer.
    pub peer: SocketAddr,
    /// What it is.
    pub kind: LeakKind,
    /// Its type, as far as known.
    pub type_name: &'static str,
    /// Its own bytes (a frame's length; a tracked value's inline size; 0 for a task).
    pub bytes: usize,
    /// Bytes it keeps alive: for a frame, the whole read-buffer allocation it pins; for
    /// handles, the connection state they keep.
    pub retained: usize,
    /// How many things the report is about: 1, or the number of unowned tasks or handles.
    pub count: usize,
    /// Where it was created, where known (not for unowned tasks and handles).
    pub created_at: Option<&'static Location<'static>>,
    /// The handler involved, where known: the last handler a frame was handed to, the
    /// handler that started unowned tasks.
    pub handler: Option<&'static str>,
    /// Time from its creation to the report.
    pub age: Duration,
    /// Time from its connection's close to the report.
    pub closed_for: Duration,
    /// When the report was made.
    pub reported_at: Instant,
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.name())?;
        if self.count != 1 {
            write!(f, " x{}", self.count)?;
        }
        write!(
            f,
            " ({}) of connection {} (peer {}), {} bytes, retaining {} bytes",
            self.type_name, self.channel, self.peer, self.bytes, self.retained,
        )?;
        if let Some(site) = self.created_at {
            write!(f, ", created at {site}")?;
        }
        if let Some(handler) = self.handler {
            let role = match self.kind {
                LeakKind::UnownedTask => "started by",
                _ => "last handed to",
            };
            write!(f, ", {role} {handler}")?;
        }
        write!(
            f,
            ", {:.1} s old, alive {:.1} s after its connection closed",
            self.age.as_secs_f64(),
            self.closed_for.as_secs_f64(),
        )
    }
}

/// One live thing of a connection, as recorded by its tether.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) kind: LeakKind,
    pub(crate) type_name: &'static str,
    pub(crate) bytes: usize,
    pub(crate) retained: usize,
    pub(crate) created_at: &'static Location<'static>,
    pub(crate) created: Instant,
    /// The last handler a frame was handed to (interned id; 0: none yet).
    pub(crate) handler: u32,
}

/// A closed connection with things still alive, waiting for its grace period to pass.
struct Watch {
    channel: ChannelId,
    peer: SocketAddr,
    closed: Instant,
    tether: Arc<Tether>,
    /// Tasks its handlers started themselves.
    unowned: Vec<crate::tasks::UnownedSpawn>,
    /// Its shared state, to count the handles still held.
    shared: Weak<ChannelShared>,
}

/// Closed connections waiting to be checked, oldest first. Capped: past the cap, the
/// oldest are checked early (which can only report something that was about to go).
const MAX_WATCHED: usize = 65_536;
/// Closed connections in the watch list (read without the registry's lock).
static WATCHED: AtomicUsize = AtomicUsize::new(0);

/// Reports kept for [`reports`].
const MAX_REPORTS: usize = 256;

#[derive(Default)]
struct Registry {
    watched: VecDeque<Watch>,
    reports: VecDeque<LeakReport>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        watched: VecDeque::new(),
        reports: VecDeque::new(),
    });
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Called once when a connection has closed: if anything of it is still alive, watch it.
pub(crate) fn watch(shared: &Arc<ChannelShared>) {
    let now = Instant::now();
    let unowned = crate::tasks::take(shared.id);
    // The connection task still holds its own handle while it closes.
    let handles = shared.handles() > 1;
    if handles || !unowned.is_empty() || shared.tether.has_live_records() {
        let mut registry = registry();
        if registry.watched.len() >= MAX_WATCHED {
            let early = registry.watched.pop_front();
            WATCHED.fetch_sub(1, Ordering::Relaxed);
            drop(registry);
            if let Some(watch) = early {
                report(watch, now);
            }
            registry = self::registry();
        }
        WATCHED.fetch_add(1, Ordering::Relaxed);
        registry.watched.push_back(Watch {
            channel: shared.id,
            peer: shared.peer,
            closed: now,
            tether: shared.tether.clone(),
            unowned,
            shared: Arc::downgrade(shared),
        });
    }
    sweep(now);
}

/// Reports what is due; returns how many reports were made.
fn sweep(now: Instant) -> usize {
    // Most closes leave nothing behind: no lock on the shared registry then.
    if WATCHED.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    let grace = grace();
    let mut made = 0;
    loop {
        let due = {
            let mut registry = registry();
            match registry.watched.front() {
                Some(watch) if now.saturating_duration_since(watch.closed) >= grace => {
                    WATCHED.fetch_sub(1, Ordering::Relaxed);
                    registry.watched.pop_front()
                }
                _ => None,
            }
        };
        match due {
            Some(watch) => made += report(watch, now),
            None => return made,
        }
    }
}

fn report(watch: Watch, now: Instant) -> usize {
    let leftovers = watch.tether.live_records();
    let closed_for = now.saturating_duration_since(watch.closed);
    // Every report of this connection has these; each kind fills in the rest.
    let base = |kind, type_name, created: Instant| LeakReport {
        channel: watch.channel,
        peer: watch.peer,
        kind,
        type_name,
        bytes: 0,
        retained: 0,
        count: 1,
        created_at: None,
        handler: None,
        age: now.saturating_duration_since(created),
        closed_for,
        reported_at: now,
    };
    let mut reports: Vec<LeakReport> = leftovers
        .into_iter()
        .map(|record| LeakReport {
            bytes: record.bytes,
            retained: record.retained,
            created_at: Some(record.created_at),
            handler: (record.handler != 0).then(|| crate::blocking::name(record.handler)),
            ..base(record.kind, record.type_name, record.created)
        })
        .collect();
    for spawn in &watch.unowned {
        // The runtime does not say which tasks are alive: estimated from the loop's
        // counts (see `crate::tasks`).
        let alive = spawn.alive();
        if alive > 0 {
            reports.push(LeakReport {
                count: alive,
                handler: Some(spawn.handler),
                ..base(LeakKind::UnownedTask, "task (tokio::spawn)", spawn.first)
            });
        }
    }
    if let Some(shared) = watch.shared.upgrade() {
        let handles = shared.handles();
        if handles > 0 {
            let opened = now.checked_sub(shared.opened.elapsed()).unwrap_or(now);
            reports.push(LeakReport {
                retained: crate::channel::CLOSED_HANDLE_BYTES,
                count: handles,
                ..base(LeakKind::Handle, "tethernet::Channel", opened)
            });
        }
    }
    let made = reports.len();
    if made == 0 {
        return 0;
    }
    global().leaks.add(made as u64);
    for report in &reports {
        tracing::warn!(
            channel = %report.channel,
            peer = %report.peer,
            kind = report.kind.name(),
            bytes = report.bytes,
            retained = report.retained,
            created_at = report.created_at.map(tracing::field::display),
            handler = report.handler,
            "LEAK: {report}"
        );
    }
    let mut registry = registry();
    for report in reports {
        if registry.reports.len() >= MAX_REPORTS {
            registry.reports.pop_front();
        }
        registry.reports.push_back(report);
    }
    made
}

/// Checks now for anything due; returns how many new reports were made.
pub fn check() -> usize {
    crate::tasks::purge_closed();
    sweep(Instant::now())
}

/// The latest reports (up to 256), oldest first, after a [`check`].
pub fn reports() -> Vec<LeakReport> {
    check();
    registry().reports.iter().cloned().collect()
}

/// Closed connections still watched (something of theirs was alive at close and the
/// grace period has not passed).
pub fn watched() -> usize {
    WATCHED.load(Ordering::Relaxed)
}

/// Forgets the kept reports (the counter in [`GlobalStats`](crate::GlobalStats) stays).
pub fn clear_reports() {
    registry().reports.clear();
}
