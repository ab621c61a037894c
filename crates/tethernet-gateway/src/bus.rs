//! How a stored message reaches the members of its room on every node.
//!
//! - **In-process** (the default, one node): publishing delivers to the node's own
//!   members at once.
//! - **Redis pub/sub** (a cluster): publishing is a `PUBLISH` on the room's channel; one
//!   subscriber connection per node holds one subscription per room that has local
//!   members. The subscriptions wanted are a set kept by the rooms ([`Bus::subscribe`],
//!   [`Bus::unsubscribe`]) that the subscriber task reconciles with Redis — no command
//!   queue, so nothing grows however fast rooms come and go. When the connection drops,
//!   the task reconnects with backoff, subscribes again to every room in the set, and
//!   tells local members of the gap ([`Node::announce_gap`]): they fetch what they
//!   missed from the store by sequence number. Intake is bounded: a message is handed to
//!   the room's members (each with its own capped queue) before the next one is read.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::node::Node;
use crate::protocol::ChatMessage;

/// Channel names on Redis: this prefix, then the room.
pub const CHANNEL_PREFIX: &str = "tethernet:room:";

/// The bus of a node.
pub struct Bus {
    kind: Kind,
    /// Rooms subscribed now (in-process: rooms with members).
    subscriptions: AtomicUsize,
    reconnects: AtomicU64,
}

enum Kind {
    Local,
    Redis(Arc<RedisShared>),
}

/// What the node and the subscriber task share.
pub struct RedisShared {
    client: redis::Client,
    /// A multiplexed connection, cloned by each publish (never held across an await).
    publisher: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// The rooms this node wants to be subscribed to.
    wanted: Mutex<HashSet<String>>,
    changed: Notify,
    /// The rooms Redis has confirmed subscriptions for.
    confirmed: Mutex<HashSet<String>>,
    confirmed_changed: Notify,
}

/// How long a publish, or a connection for one, may take before Redis counts as down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedisShared {
    fn wanted(&self) -> MutexGuard<'_, HashSet<String>> {
        lock(&self.wanted)
    }

    fn set_confirmed(&self, update: impl FnOnce(&mut HashSet<String>)) {
        update(&mut lock(&self.confirmed));
        self.confirmed_changed.notify_waiters();
    }
}

impl Bus {
    /// The in-process bus.
    pub fn local() -> Bus {
        Bus {
            kind: Kind::Local,
            subscriptions: AtomicUsize::new(0),
            reconnects: AtomicU64::new(0),
        }
    }

    /// A Redis bus on `url` (`redis://HOST:PORT`). Checks the server answers; the
    /// subscriber task is [`run_subscriber`], which the caller runs (and awaits).
    pub async fn redis(url: &str) -> Result<Bus, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let publisher = client.get_multiplexed_async_connection().await?;
        Ok(Bus {
            kind: Kind::Redis(Arc::new(RedisShared {
                client,
                publisher: Mutex::new(Some(publisher)),
                wanted: Mutex::new(HashSet::new()),
                changed: Notify::new(),
                confirmed: Mutex::new(HashSet::new()),
                confirmed_changed: Notify::new(),
            })),
            subscriptions: AtomicUsize::new(0),
            reconnects: AtomicU64::new(0),
        })
    }

    /// `in-process` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            Kind::Local => "in-process",
            Kind::Redis(_) => "redis",
        }
    }

    /// Wants a subscription for `room` (its first local member joined).
    pub fn subscribe(&self, room: &str) {
        match &self.kind {
            Kind::Local => {
                self.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Redis(shared) => {
                shared.wanted().insert(room.to_owned());
                shared.changed.notify_one();
            }
        }
    }

    /// No longer wants `room` (its last local member left).
    pub fn unsubscribe(&self, room: &str) {
        match &self.kind {
            Kind::Local => {
                self.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            Kind::Redis(shared) => {
                shared.wanted().remove(room);
                shared.changed.notify_one();
            }
        }
    }

    /// Waits (at most `limit`) until the node's subscription to `room` is in place, so
    /// that a client told it has joined receives every message published from then on.
    /// False if it was not confirmed in time (Redis down: the gap is announced later).
    pub async fn wait_subscribed(&self, room: &str, limit: Duration) -> bool {
        let Kind::Redis(shared) = &self.kind else {
            return true;
        };
        let wait = async {
            loop {
                let notified = shared.confirmed_changed.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if lock(&shared.confirmed).contains(room) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Subscriptions held now.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Times the subscriber reconnected.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Publishes a stored message to every node with members in its room. If Redis
    /// cannot take it, this node's members still get it, and other nodes' members learn
    /// of the gap when their subscriber reconnects.
    pub async fn publish(&self, node: &Node, message: &ChatMessage) {
        let Kind::Redis(shared) = &self.kind else {
            node.deliver(message);
            return;
        };
        let payload = serde_json::to_string(message).expect("messages serialize");
        let channel = format!("{CHANNEL_PREFIX}{}", message.room);
        // One attempt on the connection held, one more on a fresh connection; each
        // bounded in time, so a hung Redis cannot stall the node's senders.
        for attempt in 0..2 {
            let held = lock(&shared.publisher).clone();
            let connection = match held {
                Some(connection) => Some(connection),
                None => tokio::time::timeout(
                    REDIS_TIMEOUT,
                    shared.client.get_multiplexed_async_connection(),
                )
                .await
                .ok()
                .and_then(Result::ok),
            };
            let Some(mut connection) = connection else {
                continue;
            };
            let published = tokio::time::timeout(
                REDIS_TIMEOUT,
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&payload)
                    .query_async::<i64>(&mut connection),
            )
            .await;
            match published {
                Ok(Ok(_)) => {
                    *lock(&shared.publisher) = Some(connection);
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, attempt, room = %message.room, "publishing to Redis failed");
                }
                Err(_) => {
                    tracing::warn!(attempt, room = %message.room, "publishing to Redis timed out");
                }
            }
            *lock(&shared.publisher) = None;
        }
        // Redis is down: this node's members still get the message (without moving the
        // mark gap notices start from); other nodes' members are told of the gap when
        // their subscriber reconnects.
        node.deliver_local(message);
    }
}

/// The Redis subscriber of `node` (returns at once for the in-process bus): keeps the
/// subscriptions equal to the rooms wanted, delivers messages, reconnects. Runs until
/// `stop` completes.
pub async fn run_subscriber(node: Arc<Node>, stop: impl std::future::Future<Output = ()>) {
    let Kind::Redis(shared) = &node.bus.kind else {
        return;
    };
    let shared = shared.clone();
    let mut stop = std::pin::pin!(stop);
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        let connection = tokio::select! {
            _ = &mut stop => return,
            connection = shared.client.get_async_pubsub() => connection,
        };
        let (mut sink, mut stream) = match connection {
            Ok(pubsub) => pubsub.split(),
            Err(error) => {
                tracing::warn!(%error, retry_ms = backoff.as_millis() as u64, "cannot connect to Redis for pub/sub");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut subscribed: HashSet<String> = HashSet::new();
        node.bus.subscriptions.store(0, Ordering::Relaxed);
        shared.set_confirmed(HashSet::clear);
        if connected_before {
            node.bus.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("reconnected to Redis; resubscribing and announcing the gap");
        }
        let mut healthy = reconcile(&shared, &mut sink, &mut subscribed, &node).await;
        if healthy && connected_before {
            // Members may have missed messages while the subscription was down.
            node.announce_gap();
        }
        connected_before = true;
        while healthy {
            tokio::select! {
                _ = &mut stop => return,
                _ = shared.changed.notified() => {
                    healthy = reconcile(&shared, &mut sink, &mut subscribed, &node).await;
                }
                message = stream.next() => match message {
                    Some(message) => deliver(&node, &message),
                    None => {
                        tracing::warn!("the Redis pub/sub connection closed");
                        healthy = false;
                    }
                },
            }
        }
    }
}

/// Subscribes to rooms wanted and unsubscribes from the others; false if Redis failed.
async fn reconcile(
    shared: &RedisShared,
    sink: &mut redis::aio::PubSubSink,
    subscribed: &mut HashSet<String>,
    node: &Node,
) -> bool {
    let wanted = shared.wanted().clone();
    let add: Vec<String> = wanted.difference(subscribed).cloned().collect();
    let remove: Vec<String> = subscribed.difference(&wanted).cloned().collect();
    for room in add {
        if let Err(error) = sink.subscribe(format!("{CHANNEL_PREFIX}{room}")).await {
            tracing::warn!(%error, %room, "Redis SUBSCRIBE failed");
            return false;
        }
        shared.set_confirmed(|confirmed| {
            confirmed.insert(room.clone());
        });
        subscribed.insert(room);
    }
    for room in remove {
        if let Err(error) = sink.unsubscribe(format!("{CHANNEL_PREFIX}{room}")).await {
            tracing::warn!(%error, %room, "Redis UNSUBSCRIBE failed");
            return false;
        }
        shared.set_confirmed(|confirmed| {
            confirmed.remove(&room);
        });
        subscribed.remove(&room);
    }
    node.bus
        .subscriptions
        .store(subscribed.len(), Ordering::Relaxed);
    true
}

fn deliver(node: &Node, message: &redis::Msg) {
    let payload: Vec<u8> = match message.get_payload() {
        Ok(payload) => payload,
        Err(error) => {
            tracing::warn!(%error, "unreadable message from Redis");
            return;
        }
    };
    match serde_json::from_slice::<ChatMessage>(&payload) {
        Ok(message) => node.deliver(&message),
        Err(error) => tracing::warn!(%error, "a message from Redis is not a chat message"),
    }
}
