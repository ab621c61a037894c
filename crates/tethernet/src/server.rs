//! [`Server`]: accept connections and run a pipeline for each.

use std::collections::HashMap;
use std::future::{pending, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::connection::{self, ConnectionConfig};
use crate::error::{Error, Result};
use crate::event_loop::EventLoopGroup;
use crate::pipeline::{Pipeline, PipelineCodec, Stage};
use crate::size::MessageSize;
use crate::stats::global;

/// Configures a [`Server`].
///
/// ```no_run
/// # use tethernet::Frame;
/// # use tethernet::{codec::LengthFieldCodec, Context, Handler, Pipeline, Result, Server};
/// # struct Echo;
/// # impl Handler<Frame, Frame> for Echo {
/// #     type Next = Frame;
/// #     async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> { ctx.write(f).await }
/// # }
/// # async fn run() -> Result<()> {
/// let server = Server::builder().io_threads(2).bind("127.0.0.1:7007").await?;
/// server
///     .serve(|| Pipeline::builder(LengthFieldCodec::new(1 << 20)).handler(Echo).build())
///     .await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    io_threads: usize,
    group: Option<EventLoopGroup>,
    config: ConnectionConfig,
    backlog: u32,
    recv_buffer_size: Option<u32>,
    send_buffer_size: Option<u32>,
    max_connections: usize,
    max_connections_per_address: usize,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsSettings>,
}

/// Default cap on a server's open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl std::fmt::Debug for EventLoopGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoopGroup")
            .field("name", &self.name())
            .field("threads", &self.len())
            .finish()
    }
}

/// Default listen backlog. With 1,024, a storm of 2,000 clients connecting at once
/// overflowed the listen queue in 2 runs of 4 (483 drops, +1 s); with 4,096, in none of 4
/// (`BENCHMARKS.md`).
pub const DEFAULT_BACKLOG: u32 = 4096;

pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ServerBuilder {
    /// I/O threads (event loops) for the server's connections (default: the number of
    /// cores). Each connection is served by one of them for its whole life.
    pub fn io_threads(mut self, threads: usize) -> Self {
        self.io_threads = threads;
        self
    }

    /// Serves connections on an existing group (shared with other servers or clients)
    /// instead of starting one.
    pub fn event_loop_group(mut self, group: EventLoopGroup) -> Self {
        self.group = Some(group);
        self
    }

    /// Caps, in bytes, each connection's queue of messages written by other tasks through
    /// [`Channel::write`](crate::Channel::write) (default 64 KiB).
    pub fn outbound_queue_capacity(mut self, bytes: usize) -> Self {
        self.config.outbound_queue_capacity = bytes.max(1);
        self
    }

    /// Write buffer watermarks in bytes (default 64 KiB / 32 KiB): above `high`, a
    /// handler's write flushes down to `low` before returning, and the socket is not read.
    pub fn write_watermarks(mut self, low: usize, high: usize) -> Self {
        self.config.write_low_watermark = low.min(high);
        self.config.write_high_watermark = high.max(1);
        self
    }

    /// How long a closing connection may spend flushing what is queued (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Idle detection for every connection (off by default): handlers receive
    /// [`ChannelEvent::Idle`](crate::ChannelEvent::Idle) events. See also
    /// [`Heartbeat`](crate::handlers::Heartbeat).
    pub fn idle_timeouts(mut self, timeouts: crate::IdleTimeouts) -> Self {
        self.config.idle = Some(timeouts);
        self
    }

    /// Caps the live tasks each connection may own through
    /// [`Channel::spawn`](crate::Channel::spawn), and likewise the values it may hold
    /// through [`Channel::tether`](crate::Channel::tether) (default 1024 each).
    pub fn max_owned_tasks(mut self, tasks: usize) -> Self {
        self.config.max_owned_tasks = tasks;
        self
    }

    /// The memory budget of each connection, in bytes, all kinds together (default
    /// 4 MiB; see [`MemoryKind`](crate::MemoryKind)). Waiting is where memory piles up
    /// unseen, so the budget is checked where a connection's work would wait: a
    /// [`Channel::write`](crate::Channel::write) that finds the outbound queue full fails
    /// with an error of kind [`ErrorKind::Limit`](crate::ErrorKind::Limit) instead of waiting when the connection
    /// already holds its budget.
    pub fn max_connection_memory(mut self, bytes: usize) -> Self {
        self.config.max_connection_memory = bytes.max(1);
        self
    }

    /// Sets `TCP_NODELAY` on accepted sockets (default true).
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// The kernel's receive buffer size for accepted sockets (`SO_RCVBUF`).
    pub fn recv_buffer_size(mut self, bytes: u32) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// The kernel's send buffer size for accepted sockets (`SO_SNDBUF`).
    pub fn send_buffer_size(mut self, bytes: u32) -> Self {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// Caps the connections open at once (default 10,000). Above it, new connections are
    /// accepted and closed at once (counted in [`GlobalStats::refused`](crate::GlobalStats)),
    /// so clients fail fast instead of waiting in the listen backlog.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.min(Semaphore::MAX_PERMITS);
        self
    }

    /// Caps the connections open at once from one IP address (default: no cap beyond
    /// [`max_connections`](Self::max_connections)). Above it, a new connection from that
    /// address is accepted and closed at once (counted in
    /// [`GlobalStats::refused_per_address`](crate::GlobalStats)), so one client cannot
    /// take every slot. Clients behind one NAT or proxy share an address: size it for them.
    pub fn max_connections_per_address(mut self, connections: usize) -> Self {
        self.max_connections_per_address = connections.max(1);
        self
    }

    /// Closes a connection whose peer starts a frame and does not finish it within
    /// `timeout` (off by default): a slowloris peer trickling bytes holds its partial
    /// frame, and a slot, for at most this long. The pipeline is told with
    /// an error of kind [`ErrorKind::FrameTimeout`](crate::ErrorKind::FrameTimeout); counted in
    /// [`GlobalStats::frame_timeouts`](crate::GlobalStats).
    pub fn frame_timeout(mut self, timeout: Duration) -> Self {
        self.config.frame_timeout = Some(timeout);
        self
    }

    /// Serves TLS (rustls) on every accepted connection: the handshake runs on the
    /// connection's event loop, bounded by the settings' handshake timeout and cap on
    /// concurrent handshakes, before the pipeline sees the connection.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, settings: crate::tls::TlsSettings) -> Self {
        self.tls = Some(settings);
        self
    }

    /// The listen backlog (default [`DEFAULT_BACKLOG`], 4,096; the kernel caps it at
    /// `net.core.somaxconn`). A burst of connections larger than the backlog overflows
    /// the listen queue and costs each refused client a SYN retransmit (about a second).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Binds the listening socket and starts the I/O threads.
    pub async fn bind(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Server> {
        let mut last_error = None;
        for addr in tokio::net::lookup_host(addr).await? {
            match self.listen(addr) {
                Ok(listener) => {
                    let group = match self.group {
                        Some(group) => group,
                        None => EventLoopGroup::new("tethernet-io", self.io_threads)?,
                    };
                    let mut config = self.config;
                    config.server = Some(crate::connection::ServerState::new());
                    return Ok(Server {
                        listener,
                        group,
                        config: Arc::new(config),
                        slots: Arc::new(Semaphore::new(self.max_connections)),
                        max_connections: self.max_connections,
                        per_address: Arc::new(AddressSlots::new(self.max_connections_per_address)),
                        #[cfg(feature = "tls")]
                        tls: self.tls.map(crate::tls::Handshakes::new),
                    });
                }
                Err(error) => last_error = Some((addr, error)),
            }
        }
        Err(match last_error {
            Some((addr, error)) => Error::config(format!(
                "cannot listen on {addr}: {error} (is another process using the port?)"
            )),
            None => Error::config("the listen address resolved to nothing"),
        })
    }

    fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if let Some(size) = self.recv_buffer_size {
            socket.set_recv_buffer_size(size)?;
        }
        if let Some(size) = self.send_buffer_size {
            socket.set_send_buffer_size(size)?;
        }
        socket.bind(addr)?;
        socket.listen(self.backlog)
    }
}

/// A bound server: accepts connections and runs a pipeline for each on its event loops.
pub struct Server {
    listener: TcpListener,
    group: EventLoopGroup,
    config: Arc<ConnectionConfig>,
    /// One permit per connection the server may hold at once.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Open connections per peer IP address, under their own cap.
    per_address: Arc<AddressSlots>,
    /// TLS settings and the cap on concurrent handshakes, when serving TLS.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Handshakes>,
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            io_threads: default_threads(),
            group: None,
            config: ConnectionConfig::default(),
            backlog: DEFAULT_BACKLOG,
            recv_buffer_size: None,
            send_buffer_size: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: usize::MAX,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// Serves until the process ends. `pipeline` is called once per connection.
    pub async fn serve<F, C, S, W>(self, pipeline: F) -> Result<()>
    where
        F: Fn() -> Pipeline<C, S, W> + Send + Sync + 'static,
        C: PipelineCodec<W>,
        S: Stage<C::Item, W>,
        W: MessageSize + Send + 'static,
    {
        self.serve_until(pipeline, pending()).await
    }

    /// Serves until `shutdown` completes; then stops accepting, asks every connection to
    /// close (each flushes what is queued, within its close timeout, and tells its
    /// handlers), and returns once every connection task has finished.
    pub async fn serve_until<F, C, S, W>(
        self,
        pipeline: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()>
    where
        F: Fn() -> Pipeline<C, S, W> + Send + Sync + 'static,
        C: PipelineCodec<W>,
        S: Stage<C::Item, W>,
        W: MessageSize + Send + 'static,
    {
        let pipeline = Arc::new(pipeline);
        // Every connection task is owned here; none is detached.
        let mut connections = JoinSet::new();
        let mut shutdown = pin!(shutdown);
        let mut backoff = AcceptBackoff::default();
        // While set, accepting is paused (after a failed accept) until this instant.
        let mut paused_until: Option<tokio::time::Instant> = None;
        // Leak checks for connections that closed a grace period ago (crate::leak).
        let mut leak_checks = tokio::time::interval(Duration::from_secs(1));
        leak_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(finished) = connections.join_next() => report(finished),
                _ = leak_checks.tick() => {
                    crate::leak::check();
                }
                _ = tokio::time::sleep_until(paused_until.unwrap_or_else(tokio::time::Instant::now)), if paused_until.is_some() => {
                    paused_until = None;
                }
                accepted = self.listener.accept(), if paused_until.is_none() => match accepted {
                    Ok((stream, peer)) => {
                        backoff.reset();
                        global().accepted.add(1);
                        let Some(permit) = self.admit() else {
                            global().refused.add(1);
                            tracing::debug!(%peer, limit = self.max_connections, "refusing a connection: the server is at its connection limit");
                            drop(stream);
                            continue;
                        };
                        let Some(address_slot) = self.per_address.admit(peer.ip()) else {
                            global().refused_per_address.add(1);
                            tracing::debug!(%peer, limit = self.per_address.limit, "refusing a connection: its address is at the per-address connection limit");
                            drop(stream);
                            continue;
                        };
                        if let Err(error) = self.start(stream, (permit, address_slot), &pipeline, &mut connections) {
                            tracing::debug!(%error, "could not hand an accepted connection to an event loop");
                        }
                    }
                    Err(error) => {
                        // EMFILE, ENFILE, ENOBUFS...: retrying at once would spin a core.
                        global().accept_errors.add(1);
                        let pause = backoff.next();
                        tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "accept failed; pausing before the next accept");
                        paused_until = Some(tokio::time::Instant::now() + pause);
                    }
                },
            }
        }
        drop(self.listener);
        // Every connection of this server is asked to close, and any that registers from
        // now on (one accepted but not yet running) closes at once.
        if let Some(server) = &self.config.server {
            server.shut_down();
        }
        while let Some(finished) = connections.join_next().await {
            report(finished);
        }
        Ok(())
    }

    /// A slot under the connection cap, if one is free.
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    fn start<F, C, S, W>(
        &self,
        stream: TcpStream,
        permit: (OwnedSemaphorePermit, AddressSlot),
        pipeline: &Arc<F>,
        connections: &mut JoinSet<()>,
    ) -> io::Result<()>
    where
        F: Fn() -> Pipeline<C, S, W> + Send + Sync + 'static,
        C: PipelineCodec<W>,
        S: Stage<C::Item, W>,
        W: MessageSize + Send + 'static,
    {
        // The socket moves to its event loop's reactor.
        let stream = stream.into_std()?;
        let pipeline = pipeline.clone();
        let config = self.config.clone();
        #[cfg(feature = "tls")]
        let tls = self.tls.clone();
        let (handle, event_loop) = self.group.next_loop();
        let (channel, outbound) = match (stream.peer_addr(), stream.local_addr()) {
            (Ok(peer), Ok(local)) => connection::channel_for(peer, local, &config),
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, "accepted socket closed before it was served");
                return Ok(());
            }
        };
        let shared = channel.shared.clone();
        let task = async move {
            // Held for the connection's life: its slots under the connection caps. Borrowed,
            // not moved into a local: a moved capture would take room twice in the task.
            let _slots = &permit;
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, "could not register an accepted socket");
                    return;
                }
            };
            // A TLS connection's handshake and session live in a box of their own, so
            // that plain TCP connections do not pay for their layout in every task.
            #[cfg(feature = "tls")]
            if let Some(tls) = tls {
                let shared = channel.shared.clone();
                let tls_connection = Box::pin(async move {
                    let _ = stream.set_nodelay(config.nodelay);
                    let peer = channel.peer_addr();
                    let Some(stream) = tls.accept(stream, peer).await else {
                        return;
                    };
                    connection::run_tls(stream, pipeline(), channel, outbound, config).await;
                });
                // Its box is the connection's task memory (given back when it closes).
                shared.add_task_bytes(std::mem::size_of_val(&*tls_connection));
                drop(shared);
                tls_connection.await;
                return;
            }
            connection::run(stream, pipeline(), channel, outbound, config).await;
        };
        // Counted as the framework's task on its loop (not an unowned one), and its
        // memory charged to the connection.
        let fut = crate::tasks::connection_task(event_loop, &shared, task);
        drop(shared);
        connections.spawn_on(fut, handle);
        Ok(())
    }
}

fn report(finished: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(error) = finished {
        if error.is_panic() {
            tracing::error!("a connection task panicked; that connection was closed");
        }
    }
}

/// Open connections per peer IP address. The map holds an entry only while that
/// address has a connection open, so it is bounded by the server's connection cap.
struct AddressSlots {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressSlots {
    fn new(limit: usize) -> AddressSlots {
        AddressSlots {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `address`, if it is under the cap.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        if self.limit == usize::MAX {
            return Some(AddressSlot(None));
        }
        let mut open = self.lock();
        let count = open.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot(Some((self.clone(), address))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection's place under the per-address cap, given back when it closes.
struct AddressSlot(Option<(Arc<AddressSlots>, IpAddr)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((slots, address)) = self.0.take() {
            let mut open = slots.lock();
            if let Some(count) = open.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&address);
                }
            }
        }
    }
}

/// Pauses between failing accepts (EMFILE, ENFILE, ENOBUFS) so the loop does not spin.
#[derive(Default)]
struct AcceptBackoff {
    current: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let next = match self.current {
            None => Self::FIRST,
            Some(current) => (current * 2).min(Self::MAX),
        };
        self.current = Some(next);
        next
    }

    fn reset(&mut self) {
        self.current = None;
    }
}
