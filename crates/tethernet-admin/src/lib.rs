//! The admin HTTP server of a Tethernet process: where its memory is, which connection
//! holds it, and what outlived its connection — live.
//!
//! | Route | Content |
//! |---|---|
//! | `GET /metrics` | Prometheus text: connections, bytes by kind, owned tasks, tethered values, leaks, blocked I/O, drops, allocator and resident memory (no per-connection labels) |
//! | `GET /debug/memory` | JSON: totals by kind, counters, allocator and process figures |
//! | `GET /debug/connections?top=N` | JSON: the N connections holding the most bytes (default 10), with their breakdown |
//! | `GET /debug/leaks` | JSON: the latest leak reports ([`tethernet::leak`]) |
//! | `GET /debug/blocked` | JSON: the latest blocked-event-loop reports ([`tethernet::blocking`]) |
//! | `GET /debug/pprof/heap` | a jemalloc heap profile (pprof format) with the `profiling` feature, else a 501 saying how to enable it |
//! | `GET /` | a self-contained dashboard (live charts and tables, no CDN) |
//!
//! Every figure comes from counters kept incrementally by the framework; only
//! `/debug/connections` scans the live connections.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let admin = tethernet_admin::Admin::new().bind("127.0.0.1:9100".parse().unwrap()).await?;
//! println!("admin on http://{}", admin.local_addr());
//! admin.serve_until(std::future::pending()).await
//! # }
//! ```
//!
//! Binaries install jemalloc as their allocator (feature `jemalloc`, on by default) so
//! that allocator figures are available:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;
//! # fn main() {}
//! ```

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod alloc;
mod render;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Query;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

pub use alloc::{allocator_stats, process_resident_bytes, AllocatorStats};
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc;

/// Adds lines of Prometheus text to `/metrics` (an application's own metrics).
pub type MetricsHook = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The admin server's configuration: the framework's routes, plus what the application
/// adds.
#[derive(Clone, Default)]
pub struct Admin {
    hooks: Vec<MetricsHook>,
    extra: Option<Router>,
}

const DASHBOARD: &str = include_str!("../assets/dashboard.html");

impl Admin {
    /// The framework's routes only.
    pub fn new() -> Admin {
        Admin::default()
    }

    /// Appends the application's own metrics to `/metrics`.
    pub fn metrics(mut self, hook: impl Fn(&mut String) + Send + Sync + 'static) -> Admin {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Adds the application's own routes.
    pub fn merge(mut self, router: Router) -> Admin {
        self.extra = Some(match self.extra.take() {
            Some(extra) => extra.merge(router),
            None => router,
        });
        self
    }

    /// The routes, to mount in an existing axum server.
    pub fn router(self) -> Router {
        let hooks = self.hooks;
        let router = Router::new()
            .route("/", get(|| async { Html(DASHBOARD) }))
            .route(
                "/metrics",
                get(move || {
                    let hooks = hooks.clone();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            render::metrics(&hooks),
                        )
                    }
                }),
            )
            .route("/debug/memory", get(|| async { Json(render::memory()) }))
            .route(
                "/debug/connections",
                get(|Query(query): Query<TopQuery>| async move {
                    Json(render::connections(query.top.unwrap_or(10).min(1000)))
                }),
            )
            .route("/debug/leaks", get(|| async { Json(render::leaks()) }))
            .route("/debug/blocked", get(|| async { Json(render::blocked()) }))
            .route("/debug/pprof/heap", get(heap_profile));
        match self.extra {
            Some(extra) => router.merge(extra),
            None => router,
        }
    }

    /// Binds the admin server. Meant for loopback (the default address of every
    /// Tethernet binary): the endpoints are not authenticated, and a warning is logged
    /// for any other address.
    pub async fn bind(self, addr: SocketAddr) -> io::Result<AdminServer> {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the admin server is bound to a non-loopback address; its endpoints are not authenticated");
        }
        let listener = TcpListener::bind(addr).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot bind the admin server to {addr}: {error}"),
            )
        })?;
        Ok(AdminServer {
            listener,
            router: self.router(),
        })
    }
}

#[derive(serde::Deserialize)]
struct TopQuery {
    top: Option<usize>,
}

/// A bound admin server.
pub struct AdminServer {
    listener: TcpListener,
    router: Router,
}

impl AdminServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then waits for open requests to finish.
    pub async fn serve_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn heap_profile() -> Response {
    match alloc::heap_profile().await {
        Ok(profile) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"heap.pb.gz\"",
                ),
            ],
            profile,
        )
            .into_response(),
        Err((status, message)) => (status, message).into_response(),
    }
}

/// The text `/metrics` serves (without application hooks).
pub fn metrics_text() -> String {
    render::metrics(&[])
}
