//! [`Client`]: connect out and run a pipeline on the connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::channel::Channel;
use crate::connection::{self, ConnectionConfig};
use crate::error::Result;
use crate::event_loop::EventLoopGroup;
use crate::pipeline::{Pipeline, PipelineCodec, Stage};
use crate::size::MessageSize;

/// Opens connections whose pipelines run on the client's event loops.
#[derive(Clone)]
pub struct Client {
    group: EventLoopGroup,
    config: Arc<ConnectionConfig>,
}

/// Configures a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    io_threads: usize,
    group: Option<EventLoopGroup>,
    config: ConnectionConfig,
}

impl ClientBuilder {
    /// I/O threads (default 1).
    pub fn io_threads(mut self, threads: usize) -> Self {
        self.io_threads = threads;
        self
    }

    /// Runs connections on an existing group.
    pub fn event_loop_group(mut self, group: EventLoopGroup) -> Self {
        self.group = Some(group);
        self
    }

    /// Caps the outbound queue of each connection, in bytes (default 64 KiB).
    pub fn outbound_queue_capacity(mut self, bytes: usize) -> Self {
        self.config.outbound_queue_capacity = bytes.max(1);
        self
    }

    /// The memory budget of each connection, all kinds together (default 4 MiB; see
    /// [`ServerBuilder::max_connection_memory`](crate::ServerBuilder::max_connection_memory)).
    pub fn max_connection_memory(mut self, bytes: usize) -> Self {
        self.config.max_connection_memory = bytes.max(1);
        self
    }

    /// How long a closing connection may spend flushing what is queued (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Starts the client's event loops.
    pub fn build(self) -> Result<Client> {
        let group = match self.group {
            Some(group) => group,
            None => EventLoopGroup::new("tethernet-client", self.io_threads)?,
        };
        Ok(Client {
            group,
            config: Arc::new(self.config),
        })
    }
}

impl Client {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            io_threads: 1,
            group: None,
            config: ConnectionConfig::default(),
        }
    }

    /// Connects to `addr` and runs `pipeline` on the connection.
    ///
    /// The returned [`Connection`] owns the connection's task: dropping it closes the
    /// connection at once; [`Connection::close`] closes it gracefully.
    pub async fn connect<C, S, W>(
        &self,
        addr: impl tokio::net::ToSocketAddrs,
        pipeline: Pipeline<C, S, W>,
    ) -> Result<Connection<W>>
    where
        C: PipelineCodec<W>,
        S: Stage<C::Item, W>,
        W: MessageSize + Send + 'static,
    {
        let stream = TcpStream::connect(addr).await?;
        let (channel, outbound) = connection::new_channel(&stream, &self.config)?;
        let stream = stream.into_std()?;
        let config = self.config.clone();
        let task_channel = channel.clone();
        let (handle, event_loop) = self.group.next_loop();
        let shared = channel.shared.clone();
        let run = async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    connection::run(stream, pipeline, task_channel, outbound, config).await
                }
                Err(error) => {
                    tracing::debug!(%error, "could not register a connected socket");
                    task_channel.shared.closed.set();
                }
            }
        };
        // Counted as the framework's task on its loop; its memory charged to the
        // connection.
        let task = handle.spawn(crate::tasks::connection_task(event_loop, &shared, run));
        drop(shared);
        Ok(Connection {
            channel,
            task: Some(task),
            _group: self.group.clone(),
        })
    }
}

/// An open client connection; owns its task.
pub struct Connection<W> {
    channel: Channel<W>,
    task: Option<JoinHandle<()>>,
    /// Keeps the event loop running while the connection lives.
    _group: EventLoopGroup,
}

impl<W> Connection<W> {
    /// The connection's handle, to write or to pass to other tasks.
    pub fn channel(&self) -> &Channel<W> {
        &self.channel
    }

    /// Closes gracefully (flushing what is queued) and waits until the task has ended.
    pub async fn close(mut self) {
        self.channel.close();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the connection has closed (by either side) and its task has ended.
    pub async fn closed(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl<W> Drop for Connection<W> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
