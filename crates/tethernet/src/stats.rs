//! Live byte counters for one connection.
//!
//! Each connection owns a [`ChannelStats`]: one [`Meter`] per kind of memory the framework
//! holds for it. Queues and buffers update their meter when they grow or shrink, so the
//! figures are always current and cost one relaxed atomic add per change.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The kinds of memory the framework holds for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemoryKind {
    /// The socket read buffer, including a partial frame waiting for more bytes.
    ReadBuffer,
    /// Messages queued for the connection's business executors, not yet handled.
    InboundQueue,
    /// Messages queued by other tasks for writing, not yet encoded.
    OutboundQueue,
    /// Encoded bytes waiting for the socket to accept them.
    WriteBuffer,
}

impl MemoryKind {
    /// Every kind, in a stable order.
    pub const ALL: [MemoryKind; 4] = [
        MemoryKind::ReadBuffer,
        MemoryKind::InboundQueue,
        MemoryKind::OutboundQueue,
        MemoryKind::WriteBuffer,
    ];

    /// A short snake_case name, as used in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::ReadBuffer => "read_buffer",
            MemoryKind::InboundQueue => "inbound_queue",
            MemoryKind::OutboundQueue => "outbound_queue",
            MemoryKind::WriteBuffer => "write_buffer",
        }
    }
}

/// A live byte count and the highest value it has reached.
#[derive(Debug, Default)]
pub struct Meter {
    current: AtomicUsize,
    peak: AtomicUsize,
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

    pub(crate) fn add(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: usize) {
        if bytes != 0 {
            self.current.fetch_sub(bytes, Ordering::Relaxed);
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

/// The live memory figures of one connection.
#[derive(Debug, Default)]
pub struct ChannelStats {
    read_buffer: Meter,
    inbound_queue: Meter,
    outbound_queue: Meter,
    write_buffer: Meter,
    messages_read: AtomicU64,
    messages_written: AtomicU64,
    dropped_messages: AtomicU64,
}

impl ChannelStats {
    /// The meter for one kind of memory.
    pub fn meter(&self, kind: MemoryKind) -> &Meter {
        match kind {
            MemoryKind::ReadBuffer => &self.read_buffer,
            MemoryKind::InboundQueue => &self.inbound_queue,
            MemoryKind::OutboundQueue => &self.outbound_queue,
            MemoryKind::WriteBuffer => &self.write_buffer,
        }
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
    /// Failed `accept` calls (such as running out of file descriptors).
    pub accept_errors: Counter,
    /// Messages dropped by an overflow policy (drop newest / drop oldest).
    pub dropped_messages: Counter,
    /// Connections closed because they did not read fast enough.
    pub slow_consumer_closes: Counter,
    /// Live tasks owned by connections ([`Channel::spawn`](crate::Channel::spawn)).
    pub owned_tasks: Gauge,
    /// Live values tethered to connections ([`Channel::tether`](crate::Channel::tether)).
    pub tethered_resources: Gauge,
}

static GLOBAL: std::sync::OnceLock<GlobalStats> = std::sync::OnceLock::new();

/// The process-wide totals.
pub fn global() -> &'static GlobalStats {
    GLOBAL.get_or_init(GlobalStats::default)
}
