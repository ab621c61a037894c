//! Live byte counters, per connection and process-wide (G4, G6).
//!
//! Each connection owns a [`ChannelStats`]: one [`Meter`] per kind of memory the framework
//! holds for it. Queues and buffers update their meter when they grow or shrink, and every
//! meter update also moves the process-wide total of its kind ([`GlobalStats::bytes`]), so
//! totals are always current: reading them costs a few atomic loads, never a scan.
//!
//! Buffers are counted by what they *retain*, not by their length: a 40-byte
//! [`Frame`](crate::Frame) cut from a 64 KiB read buffer keeps the whole 64 KiB
//! allocation alive, and the connection is charged 64 KiB until the last frame cut from
//! it is dropped.
//!
//! [`connections`] lists the live connections with their figures (a scan, for debugging
//! endpoints such as "the ten connections holding the most memory").

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::channel::{ChannelId, ChannelShared};

/// How many kinds of memory are counted ([`MemoryKind::ALL`]).
pub const KINDS: usize = 9;

/// The kinds of memory the framework holds for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemoryKind {
    /// Socket read buffers: the one being read into, and older ones still pinned by
    /// frames cut from them (counted at their full capacity), less [`MemoryKind::Decoder`].
    ReadBuffer,
    /// Decoder cumulation: the bytes of a partial frame kept until the rest arrives.
    Decoder,
    /// Messages queued for the connection's business executors, not yet handled.
    InboundQueue,
    /// Messages queued by other tasks for writing, not yet encoded.
    OutboundQueue,
    /// Encoded bytes waiting for the socket to accept them (the write buffer's capacity).
    WriteBuffer,
    /// Values tethered to or tracked for the connection ([`Channel::tether`],
    /// [`Channel::track`]): their inline size, or what [`MessageSize`](crate::MessageSize)
    /// says for values given with [`Channel::tether_sized`] and [`Channel::track_sized`].
    ///
    /// [`Channel::tether`]: crate::Channel::tether
    /// [`Channel::track`]: crate::Channel::track
    /// [`Channel::tether_sized`]: crate::Channel::tether_sized
    /// [`Channel::track_sized`]: crate::Channel::track_sized
    Tethered,
    /// Messages and events a handler fired ([`Context::fire_read`](crate::Context::fire_read))
    /// that the next stage has not taken yet.
    Fired,
    /// Writes waiting for room in the outbound queue ([`Channel::write`](crate::Channel::write)
    /// while the queue is full): the message is held by the waiting writer.
    PendingWrites,
    /// The memory of the tasks that run the connection: its connection task, its
    /// executor drainers and the tasks it owns ([`Channel::spawn`](crate::Channel::spawn)),
    /// each counted at the size of its future plus the runtime's per-task header.
    Tasks,
}

impl MemoryKind {
    /// Every kind, in a stable order.
    pub const ALL: [MemoryKind; KINDS] = [
        MemoryKind::ReadBuffer,
        MemoryKind::Decoder,
        MemoryKind::InboundQueue,
        MemoryKind::OutboundQueue,
        MemoryKind::WriteBuffer,
        MemoryKind::Tethered,
        MemoryKind::Fired,
        MemoryKind::PendingWrites,
        MemoryKind::Tasks,
    ];

    /// A short snake_case name, as used in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::ReadBuffer => "read_buffer",
            MemoryKind::Decoder => "decoder",
            MemoryKind::InboundQueue => "inbound_queue",
            MemoryKind::OutboundQueue => "outbound_queue",
            MemoryKind::WriteBuffer => "write_buffer",
            MemoryKind::Tethered => "tethered",
            MemoryKind::Fired => "fired",
            MemoryKind::PendingWrites => "pending_writes",
            MemoryKind::Tasks => "tasks",
        }
    }

    fn index(self) -> usize {
        match self {
            MemoryKind::ReadBuffer => 0,
            MemoryKind::Decoder => 1,
            MemoryKind::InboundQueue => 2,
            MemoryKind::OutboundQueue => 3,
            MemoryKind::WriteBuffer => 4,
            MemoryKind::Tethered => 5,
            MemoryKind::Fired => 6,
            MemoryKind::PendingWrites => 7,
            MemoryKind::Tasks => 8,
        }
    }
}

/// A live byte count of one kind for one connection, and the highest value it has
/// reached. Every change also moves the process-wide total of its kind.
#[derive(Debug)]
pub struct Meter {
    current: AtomicUsize,
    peak: AtomicUsize,
    kind: MemoryKind,
}

impl Meter {
    /// Bytes held now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The most bytes held at any moment since the connection opened.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The kind of memory this meter counts.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    fn new(kind: MemoryKind) -> Meter {
        Meter {
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            kind,
        }
    }

    pub(crate) fn add(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        global().bytes(self.kind).add(bytes);
    }

    pub(crate) fn sub(&self, bytes: usize) {
        if bytes != 0 {
            self.current.fetch_sub(bytes, Ordering::Relaxed);
            global().bytes(self.kind).sub(bytes);
        }
    }

    /// Replaces an old figure with a new one (for buffers that are resized in place).
    pub(crate) fn update(&self, old: usize, new: usize) {
        if new > old {
            self.add(new - old);
        } else {
            self.sub(old - new);
        }
    }
}

/// Charges `bytes` of one kind to a connection until dropped.
pub(crate) struct Charge<'a> {
    meter: &'a Meter,
    bytes: usize,
}

impl<'a> Charge<'a> {
    pub(crate) fn new(stats: &'a ChannelStats, kind: MemoryKind, bytes: usize) -> Charge<'a> {
        let meter = stats.meter(kind);
        meter.add(bytes);
        Charge { meter, bytes }
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.meter.sub(self.bytes);
    }
}

/// The live memory figures of one connection.
#[derive(Debug)]
pub struct ChannelStats {
    meters: [Meter; KINDS],
    messages_read: AtomicU64,
    messages_written: AtomicU64,
    dropped_messages: AtomicU64,
}

impl Default for ChannelStats {
    fn default() -> Self {
        ChannelStats {
            meters: MemoryKind::ALL.map(Meter::new),
            messages_read: AtomicU64::new(0),
            messages_written: AtomicU64::new(0),
            dropped_messages: AtomicU64::new(0),
        }
    }
}

impl ChannelStats {
    /// The meter for one kind of memory.
    pub fn meter(&self, kind: MemoryKind) -> &Meter {
        &self.meters[kind.index()]
    }

    /// Bytes held now, by kind.
    pub fn bytes_by_kind(&self) -> [(MemoryKind, usize); KINDS] {
        MemoryKind::ALL.map(|kind| (kind, self.meter(kind).current()))
    }

    /// Total bytes held now, across kinds.
    pub fn total_bytes(&self) -> usize {
        MemoryKind::ALL
            .iter()
            .map(|k| self.meter(*k).current())
            .sum()
    }

    /// Frames decoded from the socket.
    pub fn messages_read(&self) -> u64 {
        self.messages_read.load(Ordering::Relaxed)
    }

    /// Messages encoded for the socket.
    pub fn messages_written(&self) -> u64 {
        self.messages_written.load(Ordering::Relaxed)
    }

    /// Messages to this connection dropped by an overflow policy.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped_messages.load(Ordering::Relaxed)
    }

    pub(crate) fn count_dropped(&self, messages: u64) {
        if messages > 0 {
            self.dropped_messages.fetch_add(messages, Ordering::Relaxed);
            global().dropped_messages.add(messages);
        }
    }

    pub(crate) fn count_read(&self, messages: u64) {
        if messages > 0 {
            self.messages_read.fetch_add(messages, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_written(&self, messages: u64) {
        if messages > 0 {
            self.messages_written.fetch_add(messages, Ordering::Relaxed);
        }
    }
}

/// A process-wide gauge (goes up and down).
#[derive(Debug, Default)]
pub struct Gauge(AtomicUsize);

impl Gauge {
    /// The current value.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
    pub(crate) fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A process-wide counter (only goes up).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// Totals across every connection of the process, kept incrementally (reading them costs
/// a few atomic loads, never a scan).
#[derive(Debug, Default)]
pub struct GlobalStats {
    /// Open connections (servers and clients).
    pub connections: Gauge,
    /// Connections accepted by servers.
    pub accepted: Counter,
    /// Connections refused because a server was at its connection cap.
    pub refused: Counter,
    /// Connections refused because their peer's address was at the server's
    /// per-address cap ([`ServerBuilder::max_connections_per_address`](crate::server::ServerBuilder::max_connections_per_address)).
    pub refused_per_address: Counter,
    /// Connections closed because a frame was not completed in time
    /// ([`ServerBuilder::frame_timeout`](crate::server::ServerBuilder::frame_timeout)).
    pub frame_timeouts: Counter,
    /// TLS handshakes that failed or did not finish within their timeout.
    pub tls_handshake_failures: Counter,
    /// Failed `accept` calls (such as running out of file descriptors).
    pub accept_errors: Counter,
    /// Messages dropped by an overflow policy (drop newest / drop oldest).
    pub dropped_messages: Counter,
    /// Connections closed because they did not read fast enough.
    pub slow_consumer_closes: Counter,
    /// Writes refused because waiting for room would have taken their connection past
    /// its memory budget.
    pub budget_refusals: Counter,
    /// Live tasks owned by connections ([`Channel::spawn`](crate::Channel::spawn)).
    pub owned_tasks: Gauge,
    /// Live values tethered to connections ([`Channel::tether`](crate::Channel::tether)).
    pub tethered_resources: Gauge,
    /// Leak reports made ([`crate::leak`]): values still alive a grace period after
    /// their connection closed.
    pub leaks: Counter,
    /// Bytes of I/O buffers kept in the event loops' pools for reuse (at most 16 of at
    /// most 64 KiB per thread): the framework's, not any connection's.
    pub pooled_bytes: Gauge,
    /// Tasks handlers started themselves (a plain `tokio::spawn`) on Tethernet's event
    /// loops, nobody owning them ([`crate::tasks`]).
    pub unowned_tasks_started: Counter,
    /// Times a handler kept an I/O thread busy past the blocking threshold
    /// ([`crate::blocking`]).
    pub blocked_io: Counter,
    bytes: [Gauge; KINDS],
}

impl GlobalStats {
    /// Bytes of one kind held for all connections of the process (including memory
    /// still pinned by connections that have closed: that is what a leak looks like).
    pub fn bytes(&self, kind: MemoryKind) -> &Gauge {
        &self.bytes[kind.index()]
    }

    /// Bytes of every kind, summed.
    pub fn total_bytes(&self) -> usize {
        self.bytes.iter().map(Gauge::get).sum()
    }
}

static GLOBAL: std::sync::OnceLock<GlobalStats> = std::sync::OnceLock::new();

/// The process-wide totals.
pub fn global() -> &'static GlobalStats {
    GLOBAL.get_or_init(GlobalStats::default)
}

/// What a live connection holds, as listed by [`connections`].
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The connection's id.
    pub id: ChannelId,
    /// The remote address.
    pub peer: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
    /// Time since the connection opened.
    pub age: Duration,
    /// Bytes held now, by kind.
    pub bytes: [(MemoryKind, usize); KINDS],
    /// Bytes held now, all kinds.
    pub total_bytes: usize,
    /// Live tasks the connection owns.
    pub owned_tasks: usize,
    /// Live values tethered to or tracked for the connection.
    pub tethered_resources: usize,
    /// Tasks its handlers started themselves, nobody owning them ([`crate::tasks`]).
    pub unowned_tasks_started: u64,
    /// Live [`Channel`](crate::Channel) handles to it (the connection's own included).
    pub handles: usize,
    /// Frames decoded so far.
    pub messages_read: u64,
    /// Messages encoded so far.
    pub messages_written: u64,
}

const SHARDS: usize = 16;

/// The live connections of the process, sharded to keep opening and closing cheap under
/// churn. Entries are weak: the registry never keeps a connection alive.
struct Live {
    shards: [Mutex<std::collections::HashMap<u64, Weak<ChannelShared>>>; SHARDS],
}

fn live() -> &'static Live {
    static LIVE: std::sync::OnceLock<Live> = std::sync::OnceLock::new();
    LIVE.get_or_init(|| Live {
        shards: std::array::from_fn(|_| Mutex::new(Default::default())),
    })
}

fn shard(
    id: ChannelId,
) -> std::sync::MutexGuard<'static, std::collections::HashMap<u64, Weak<ChannelShared>>> {
    live().shards[id.as_u64() as usize % SHARDS]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn register(shared: &Arc<ChannelShared>) {
    global().connections.add(1);
    shard(shared.id).insert(shared.id.as_u64(), Arc::downgrade(shared));
}

/// Whether the connection is open (registered).
pub(crate) fn is_live(id: ChannelId) -> bool {
    shard(id).contains_key(&id.as_u64())
}

pub(crate) fn unregister(shared: &ChannelShared) {
    shard(shared.id).remove(&shared.id.as_u64());
    global().connections.sub(1);
}

/// The live connections of one server (for its shutdown).
pub(crate) fn live_of_server(server: u64) -> Vec<Arc<ChannelShared>> {
    let mut found = Vec::new();
    for shard in &live().shards {
        let shard = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        found.extend(
            shard
                .values()
                .filter_map(Weak::upgrade)
                .filter(|shared| shared.server == server),
        );
    }
    found
}

/// The live connections, holding the most bytes first; at most `limit` of them.
///
/// A scan of every connection: meant for debugging endpoints, not for metrics scrapes
/// (process-wide totals are in [`global`]).
pub fn connections(limit: usize) -> Vec<ConnectionInfo> {
    let mut all = Vec::new();
    for shard in &live().shards {
        let entries: Vec<Arc<ChannelShared>> = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        all.extend(entries.iter().map(|shared| shared.info()));
    }
    all.sort_by(|a, b| b.total_bytes.cmp(&a.total_bytes).then(a.id.cmp(&b.id)));
    all.truncate(limit);
    all
}
