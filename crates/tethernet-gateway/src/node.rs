//! One gateway node: its rooms with local members, its store, its bus, its counters.
//!
//! A room exists on a node while it has local members. Its first local member subscribes
//! the node to the room on the bus, its last one unsubscribes it: one subscription per
//! room per node, never one per client. A message is stored, then published; every node
//! subscribed to the room (this one included) delivers it to its local members through
//! a [`ChannelGroup`], whose overflow policy handles members that do not keep up.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tethernet::{Channel, ChannelGroup, MessageSize, Overflow};

use crate::bus::Bus;
use crate::protocol::{ChatMessage, ServerMessage};
use crate::store::Store;
use crate::token::Signer;

/// What the gateway writes to a connection: JSON text shared by every member it goes to,
/// or a transport's own frames (WebSocket control frames, the HTTP handshake).
#[derive(Debug, Clone)]
pub enum Out {
    /// One JSON message.
    Json(Arc<str>),
    /// A WebSocket frame or HTTP response (WebSocket transport only).
    Ws(crate::websocket::WsOut),
}

impl Out {
    /// A server message as JSON.
    pub fn msg(message: &ServerMessage) -> Out {
        Out::Json(message.to_json().into())
    }
}

impl MessageSize for Out {
    fn message_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + match self {
                // Counted in full for every member it is queued for (see `Arc<str>`).
                Out::Json(text) => text.len(),
                Out::Ws(frame) => crate::transport::ws_size(frame),
            }
    }
}

/// Limits of a node, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub max_body: usize,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
    /// Most messages replayed for a `join` with `since` (older ones: `history`).
    pub max_replay: u32,
    /// What a room does with a member whose outbound queue is full.
    pub slow_member: Overflow,
    /// Largest reply, in bytes of JSON (a frame): history pages are cut to fit.
    pub max_reply: usize,
    /// Failed logins allowed per address (IPv6: per /64) in `login_window`; further
    /// logins are refused with `rate_limited` and the connection closed. 0: no limit.
    pub login_failures: u32,
    /// The window `login_failures` counts in.
    pub login_window: Duration,
    /// A connection that has not logged in this long after it opened is closed
    /// (`login_timeout`); `None`: no deadline.
    pub login_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 4096,
            max_rooms_per_connection: 64,
            max_replay: 1000,
            slow_member: Overflow::CloseSlowConsumer,
            max_reply: 64 * 1024 - 4,
            login_failures: 10,
            login_window: Duration::from_secs(60),
            login_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// Most addresses the login limiter tracks at once (about 64 bytes each).
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Failed logins per address in a fixed window, in a table capped at
/// [`MAX_TRACKED_ADDRESSES`] entries: expired windows are pruned (at most once per window,
/// and whenever the table is full), and when it is still full the entry with the oldest
/// window makes room. IPv6 addresses count per /64 (one host's usual allocation); an
/// IPv4-mapped address counts as its IPv4 address.
pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    table: Mutex<LimiterTable>,
}

struct LimiterTable {
    windows: HashMap<IpAddr, (Instant, u32)>,
    pruned: Option<Instant>,
}

impl LoginLimiter {
    /// At most `max_failures` (0: no limit) per `window`, tracking at most `capacity`
    /// addresses.
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> LoginLimiter {
        LoginLimiter {
            max_failures,
            window,
            capacity: capacity.max(1),
            table: Mutex::new(LimiterTable {
                windows: HashMap::new(),
                pruned: None,
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, LimiterTable> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key `ip` counts under.
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            },
        }
    }

    /// Whether `ip` may try to log in at `now`.
    pub fn allowed(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return true;
        }
        match self.table().windows.get(&Self::key(ip)) {
            Some((start, failures)) => {
                now.duration_since(*start) >= self.window || *failures < self.max_failures
            }
            None => true,
        }
    }

    /// Counts a failed login from `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        let key = Self::key(ip);
        let window = self.window;
        let mut table = self.table();
        let due = table
            .pruned
            .is_none_or(|pruned| now.duration_since(pruned) >= window);
        let full = table.windows.len() >= self.capacity && !table.windows.contains_key(&key);
        if due || full {
            table
                .windows
                .retain(|_, (start, _)| now.duration_since(*start) < window);
            table.pruned = Some(now);
        }
        if table.windows.len() >= self.capacity && !table.windows.contains_key(&key) {
            let oldest = table
                .windows
                .iter()
                .min_by_key(|(_, (start, _))| *start)
                .map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                table.windows.remove(&oldest);
            }
        }
        let entry = table.windows.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.table().windows.len()
    }
}

/// Live counters, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages stored and published by this node.
    pub published: AtomicU64,
    /// Message deliveries queued for local members.
    pub delivered: AtomicU64,
    /// Deliveries dropped or refused (slow members).
    pub dropped: AtomicU64,
    /// Gap notices sent after a bus interruption, plus `join`s with `since` replayed.
    pub recoveries: AtomicU64,
    /// Logins refused for a bad or expired token.
    pub login_failures: AtomicU64,
    /// Logins refused because their address had too many failures.
    pub logins_rate_limited: AtomicU64,
    /// Connections closed for not logging in in time.
    pub login_timeouts: AtomicU64,
}

/// A room with local members.
pub struct Room {
    name: String,
    members: ChannelGroup<Out>,
    /// The newest sequence number delivered here (for gap notices).
    last_delivered: AtomicI64,
}

/// The shared state of a node.
pub struct Node {
    /// Message storage.
    pub store: Store,
    /// Token checks.
    pub signer: Signer,
    /// How messages reach other nodes.
    pub bus: Bus,
    /// Limits.
    pub limits: Limits,
    /// Counters.
    pub counters: Counters,
    /// Failed logins per address.
    pub logins: LoginLimiter,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
}

/// A connection's membership of a room: dropping it leaves the room (and, for the last
/// local member, unsubscribes the node). Tethered to the connection, so it cannot
/// outlive it.
pub struct Membership {
    node: Weak<Node>,
    room: Arc<Room>,
    channel: tethernet::ChannelId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.room.members.remove(self.channel);
        if let Some(node) = self.node.upgrade() {
            node.release_room(&self.room);
        }
    }
}

impl Node {
    /// A node over `store`, `signer` and `bus`.
    pub fn new(store: Store, signer: Signer, bus: Bus, limits: Limits) -> Arc<Node> {
        Arc::new(Node {
            store,
            signer,
            bus,
            logins: LoginLimiter::new(
                limits.login_failures,
                limits.login_window,
                MAX_TRACKED_ADDRESSES,
            ),
            limits,
            counters: Counters::default(),
            rooms: Mutex::new(HashMap::new()),
        })
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rooms with local members.
    pub fn rooms_active(&self) -> usize {
        self.rooms().len()
    }

    /// Adds `channel` to `room`; the first local member subscribes the node.
    ///
    /// Membership and subscription change under the rooms lock, so a join racing with
    /// the last member's leave on another thread either keeps the room or makes a new one
    /// (and a subscription wanted for it), never a member in a room the node forgot.
    pub fn join(self: &Arc<Self>, room: &str, channel: &Channel<Out>) -> Membership {
        let mut rooms = self.rooms();
        let room = match rooms.get(room) {
            Some(existing) => existing.clone(),
            None => {
                let created = Arc::new(Room {
                    name: room.to_owned(),
                    members: ChannelGroup::new(room, self.limits.slow_member),
                    last_delivered: AtomicI64::new(0),
                });
                rooms.insert(room.to_owned(), created.clone());
                self.bus.subscribe(room);
                created
            }
        };
        room.members.add(channel);
        drop(rooms);
        Membership {
            node: Arc::downgrade(self),
            room,
            channel: channel.id(),
        }
    }

    /// Forgets `room` when its last local member has gone.
    fn release_room(&self, room: &Arc<Room>) {
        let mut rooms = self.rooms();
        if let Some(current) = rooms.get(&room.name) {
            if Arc::ptr_eq(current, room) && current.members.is_empty() {
                rooms.remove(&room.name);
                self.bus.unsubscribe(&room.name);
            }
        }
    }

    /// Delivers a message from the bus to the room's local members.
    pub fn deliver(&self, message: &ChatMessage) {
        self.deliver_inner(message, true);
    }

    /// Delivers a message this node stored to its own members while the bus is down;
    /// the mark gap notices start from stays where the bus left it.
    pub fn deliver_local(&self, message: &ChatMessage) {
        self.deliver_inner(message, false);
    }

    fn deliver_inner(&self, message: &ChatMessage, from_bus: bool) {
        let Some(room) = self.rooms().get(&message.room).cloned() else {
            return;
        };
        if from_bus {
            room.last_delivered
                .fetch_max(message.seq, Ordering::Relaxed);
        }
        let out = Out::msg(&ServerMessage::Message(message.clone()));
        let report = room.members.broadcast(out);
        self.counters
            .delivered
            .fetch_add(report.queued as u64, Ordering::Relaxed);
        self.counters.dropped.fetch_add(
            (report.dropped + report.dropped_oldest + report.closed_slow) as u64,
            Ordering::Relaxed,
        );
    }

    /// Tells the local members of every room that messages may have been missed (the bus
    /// was interrupted); they recover them from the store by sequence number.
    pub fn announce_gap(&self) {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        for room in rooms {
            let after = room.last_delivered.load(Ordering::Relaxed);
            let notice = Out::msg(&ServerMessage::Gap {
                room: room.name.clone(),
                after,
            });
            let report = room.members.broadcast(notice);
            self.counters
                .recoveries
                .fetch_add(report.queued as u64, Ordering::Relaxed);
        }
    }

    /// Stores and publishes a message; returns it and whether it was a retry.
    pub async fn post(
        &self,
        room: &str,
        sender: &str,
        body: &str,
        client_id: Option<&str>,
    ) -> Result<(ChatMessage, bool), crate::store::StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let (message, duplicate) = self
            .store
            .append(room, sender, body, client_id, now)
            .await?;
        if !duplicate {
            self.counters.published.fetch_add(1, Ordering::Relaxed);
            self.bus.publish(self, &message).await;
        }
        Ok((message, duplicate))
    }

    /// Prometheus lines for the gateway's own metrics.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let (size, idle) = self.store.pool_stats();
        metric(
            "gateway_rooms_active",
            "gauge",
            "Rooms with members on this node.",
            self.rooms_active() as u64,
        );
        metric(
            "gateway_bus_subscriptions",
            "gauge",
            "Bus subscriptions held by this node (one per active room).",
            self.bus.subscriptions() as u64,
        );
        metric(
            "gateway_messages_published_total",
            "counter",
            "Messages stored and published by this node.",
            self.counters.published.load(Ordering::Relaxed),
        );
        metric(
            "gateway_messages_delivered_total",
            "counter",
            "Message deliveries queued for local members.",
            self.counters.delivered.load(Ordering::Relaxed),
        );
        metric(
            "gateway_messages_dropped_total",
            "counter",
            "Deliveries dropped for members that did not keep up.",
            self.counters.dropped.load(Ordering::Relaxed),
        );
        metric(
            "gateway_recoveries_total",
            "counter",
            "Gap notices sent after bus interruptions and joins replayed from a sequence number.",
            self.counters.recoveries.load(Ordering::Relaxed),
        );
        for (name, help, counter) in [
            (
                "gateway_login_failures_total",
                "Logins refused for a bad or expired token.",
                &self.counters.login_failures,
            ),
            (
                "gateway_logins_rate_limited_total",
                "Logins refused because their address had too many failures.",
                &self.counters.logins_rate_limited,
            ),
            (
                "gateway_login_timeouts_total",
                "Connections closed for not logging in in time.",
                &self.counters.login_timeouts,
            ),
        ] {
            metric(name, "counter", help, counter.load(Ordering::Relaxed));
        }
        metric(
            "gateway_login_limiter_addresses",
            "gauge",
            "Addresses with recent failed logins (capped).",
            self.logins.tracked() as u64,
        );
        metric(
            "gateway_bus_reconnects_total",
            "counter",
            "Times the bus connection was re-established.",
            self.bus.reconnects(),
        );
        metric(
            "gateway_db_pool_connections",
            "gauge",
            "Database pool connections open.",
            u64::from(size),
        );
        metric(
            "gateway_db_pool_idle",
            "gauge",
            "Database pool connections idle.",
            idle as u64,
        );
        metric(
            "gateway_db_pool_in_use",
            "gauge",
            "Database pool connections in use.",
            u64::from(size).saturating_sub(idle as u64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_limiter_counts_per_window_and_stays_capped() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60), 4);
        let t0 = Instant::now();
        let ada: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.allowed(ada, t0));
            limiter.failed(ada, t0);
        }
        assert!(!limiter.allowed(ada, t0 + Duration::from_secs(59)));
        // The same host over IPv4-mapped IPv6 is the same address.
        assert!(!limiter.allowed("::ffff:10.0.0.1".parse().unwrap(), t0));
        assert!(
            limiter.allowed(ada, t0 + Duration::from_secs(60)),
            "a new window"
        );
        // IPv6 counts per /64.
        for host in ["2001:db8::1", "2001:db8::2", "2001:db8:0:0:ffff::3"] {
            limiter.failed(host.parse().unwrap(), t0);
        }
        assert!(!limiter.allowed("2001:db8::99".parse().unwrap(), t0));
        assert!(limiter.allowed("2001:db8:0:1::1".parse().unwrap(), t0));
        assert_eq!(limiter.tracked(), 2);
        // Capped: many addresses never grow the table past its capacity; the oldest
        // window makes room.
        for i in 0..100u32 {
            limiter.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_millis(u64::from(i)),
            );
            assert!(limiter.tracked() <= 4);
        }
        assert!(limiter.allowed(ada, t0), "evicted");
        // Expired windows are pruned.
        limiter.failed(ada, t0 + Duration::from_secs(3600));
        assert_eq!(limiter.tracked(), 1);
        // 0 disables it.
        let off = LoginLimiter::new(0, Duration::from_secs(60), 4);
        off.failed(ada, t0);
        assert!(off.allowed(ada, t0) && off.tracked() == 0);
    }
}
