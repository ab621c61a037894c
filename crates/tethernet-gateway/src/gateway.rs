//! Starting and stopping a node: bind the listeners, then serve until told to stop.
//! Every task is owned here and awaited (the servers, the admin server, the Redis
//! subscriber, the history pruner).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tethernet::{EventLoopGroup, Executor, Server};
use tokio_util::sync::CancellationToken;

use crate::bus::{run_subscriber, Bus};
use crate::config::Settings;
use crate::node::{Limits, Node};
use crate::store::{redact, Store, StoreOptions};
use crate::token::Signer;
use crate::transport::{tcp_pipeline, ws_pipeline};

/// A node with its listeners bound, ready to serve.
pub struct Gateway {
    node: Arc<Node>,
    tcp: Server,
    ws: Server,
    admin: Option<tethernet_admin::AdminServer>,
    executor: Executor,
    ws_path: Arc<str>,
    max_frame: usize,
    history_keep: i64,
    history_max_age_ms: i64,
}

/// Where a bound gateway listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// TCP frames.
    pub tcp: SocketAddr,
    /// WebSocket.
    pub ws: SocketAddr,
    /// Admin server, if on.
    pub admin: Option<SocketAddr>,
}

impl Gateway {
    /// Connects the store and the bus and binds the listeners.
    pub async fn bind(settings: &Settings) -> Result<Gateway, String> {
        let data_dir = settings.data_dir();
        let database_url = match &settings.database_url {
            Some(url) => url.clone(),
            None => Store::sqlite_url(&data_dir).map_err(|e| e.to_string())?,
        };
        let store_options = StoreOptions {
            max_connections: settings.db_pool.unwrap_or(8),
            timeout: Duration::from_millis(settings.db_timeout_ms.unwrap_or(5000)),
            sqlite_max_pages: settings.sqlite_max_pages,
        };
        let store = Store::connect(&database_url, &store_options)
            .await
            .map_err(|e| {
                let url = redact(&database_url);
                format!("cannot open the database {url}: {e} (is it running and reachable? see --database-url)")
            })?;
        let signer = Signer::new(&settings.secret()?)?;
        let bus = match &settings.bus_url {
            Some(url) => Bus::redis(url)
                .await
                .map_err(|e| format!("cannot connect to the bus {}: {e}", redact(url)))?,
            None => Bus::local(),
        };
        let limits = Limits {
            max_body: settings.max_body.unwrap_or(4096),
            max_rooms_per_connection: settings.max_rooms.unwrap_or(64),
            slow_member: settings.slow_member()?,
            max_reply: settings.max_frame.unwrap_or(64 * 1024).saturating_sub(4),
            login_failures: settings.login_failures.unwrap_or(10),
            login_timeout: Some(settings.login_timeout_ms.unwrap_or(10_000))
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            ..Limits::default()
        };
        let node = Node::new(store, signer, bus, limits);
        let io_threads = settings
            .io_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let group = EventLoopGroup::new("gateway-io", io_threads).map_err(|e| e.to_string())?;
        let executor = Executor::builder("gateway-sessions")
            .threads(settings.executor_threads.unwrap_or(2))
            .queue_capacity(256 * 1024)
            .build()
            .map_err(|e| e.to_string())?;
        let max_connections = settings.max_connections.unwrap_or(10_000);
        let tcp_addr = settings
            .tcp
            .unwrap_or_else(|| "127.0.0.1:7000".parse().expect("an address"));
        let ws_addr = settings
            .ws
            .unwrap_or_else(|| "127.0.0.1:7001".parse().expect("an address"));
        let tls = settings.tls()?;
        let listener = |group: EventLoopGroup| {
            let mut builder = Server::builder()
                .event_loop_group(group)
                .max_connections(max_connections)
                .max_connections_per_address(settings.max_connections_per_address.unwrap_or(1000));
            let frame_timeout_ms = settings.frame_timeout_ms.unwrap_or(10_000);
            if frame_timeout_ms > 0 {
                builder = builder.frame_timeout(Duration::from_millis(frame_timeout_ms));
            }
            if let Some(tls) = &tls {
                builder = builder.tls(tls.clone());
            }
            builder
        };
        let tcp = listener(group.clone())
            .bind(tcp_addr)
            .await
            .map_err(|e| format!("cannot listen on {tcp_addr} (TCP): {e}"))?;
        let ws = listener(group)
            .bind(ws_addr)
            .await
            .map_err(|e| format!("cannot listen on {ws_addr} (WebSocket): {e}"))?;
        let admin = match settings.admin()? {
            Some(addr) => {
                let metrics_node = node.clone();
                let mut admin = tethernet_admin::Admin::new()
                    .metrics(move |out| metrics_node.render_metrics(out));
                if let Some(token) = &settings.admin_token {
                    admin = admin.bearer_token(token);
                }
                Some(
                    admin.bind(addr).await.map_err(|e| match e.kind() {
                        std::io::ErrorKind::InvalidInput => format!(
                            "--admin {addr}: {e}; for the gateway: set TETHERNET_GATEWAY_ADMIN_TOKEN (or --admin-token), or use --admin 127.0.0.1:PORT"
                        ),
                        _ => e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let history_days = settings.history_days.unwrap_or(30);
        Ok(Gateway {
            node,
            tcp,
            ws,
            admin,
            executor,
            ws_path: settings
                .ws_path
                .clone()
                .unwrap_or_else(|| "/ws".into())
                .into(),
            max_frame: settings.max_frame.unwrap_or(64 * 1024),
            history_keep: settings.history_keep.unwrap_or(10_000).max(1),
            history_max_age_ms: history_days.clamp(0, 100 * 365) * 24 * 3600 * 1000,
        })
    }

    /// Where it listens.
    pub fn addresses(&self) -> Addresses {
        Addresses {
            tcp: self.tcp.local_addr(),
            ws: self.ws.local_addr(),
            admin: self.admin.as_ref().map(|a| a.local_addr()),
        }
    }

    /// The node (for tests and metrics).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until `stop` completes; then closes every connection (each flushes what it
    /// has), stops the subscriber and the admin server, and closes the database pool.
    pub async fn serve(self, stop: impl Future<Output = ()>) -> Result<(), String> {
        let token = CancellationToken::new();
        let Gateway {
            node,
            tcp,
            ws,
            admin,
            executor,
            ws_path,
            max_frame,
            history_keep,
            history_max_age_ms,
        } = self;
        let tcp_node = node.clone();
        let tcp_executor = executor.clone();
        let tcp_serving = tcp.serve_until(
            move || tcp_pipeline(&tcp_node, &tcp_executor, max_frame),
            token.clone().cancelled_owned(),
        );
        let ws_node = node.clone();
        let ws_executor = executor.clone();
        let ws_serving = ws.serve_until(
            move || ws_pipeline(&ws_node, &ws_executor, &ws_path, max_frame),
            token.clone().cancelled_owned(),
        );
        let admin_serving = async {
            match admin {
                Some(admin) => admin
                    .serve_until(token.clone().cancelled_owned())
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        };
        let subscriber = run_subscriber(node.clone(), token.clone().cancelled_owned());
        let pruner = prune(
            node.clone(),
            history_keep,
            history_max_age_ms,
            token.clone(),
        );
        let signal = async {
            tokio::select! {
                _ = stop => {}
                _ = token.cancelled() => {}
            }
            token.cancel();
        };
        let (tcp_result, ws_result, admin_result, (), (), ()) = tokio::join!(
            tcp_serving,
            ws_serving,
            admin_serving,
            subscriber,
            pruner,
            signal
        );
        node.store.close().await;
        tcp_result.map_err(|e| format!("TCP server: {e}"))?;
        ws_result.map_err(|e| format!("WebSocket server: {e}"))?;
        admin_result.map_err(|e| format!("admin server: {e}"))
    }
}

/// Prunes old history every minute until cancelled.
async fn prune(node: Arc<Node>, keep: i64, max_age_ms: i64, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        match node.store.prune(keep, max_age_ms, now).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned old history"),
            Err(error) => tracing::warn!(%error, "pruning history failed"),
        }
    }
}
