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
//! **Access.** The endpoints tell a lot about a process: by default they are for
//! loopback. With [`Admin::bearer_token`] every request needs `Authorization: Bearer
//! TOKEN` (compared in constant time; others get a 401); [`Admin::bind`] refuses any
//! non-loopback address without one. At most [`Admin::max_connections`] HTTP connections
//! are served at once (more wait in the listen backlog), and a connection with no traffic
//! for [`Admin::idle_timeout`] is closed.
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

pub use alloc::{allocator_stats, process_resident_bytes, purge_in_background, AllocatorStats};
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc;

/// Adds lines of Prometheus text to `/metrics` (an application's own metrics).
pub type MetricsHook = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The admin server's configuration: the framework's routes, plus what the application
/// adds. `Debug` does not show the bearer token.
#[derive(Clone)]
pub struct Admin {
    hooks: Vec<MetricsHook>,
    extra: Option<Router>,
    token: Option<Arc<[u8]>>,
    max_connections: usize,
    idle_timeout: Duration,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            hooks: Vec::new(),
            extra: None,
            token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("metrics_hooks", &self.hooks.len())
            .field("bearer_token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// Default of [`Admin::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default of [`Admin::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl Admin {
    /// The framework's routes only.
    pub fn new() -> Admin {
        Admin::default()
    }

    /// Requires `Authorization: Bearer TOKEN` on every request (at least
    /// [`MIN_TOKEN_LEN`] bytes; checked at [`bind`](Admin::bind)). Needed to bind to an
    /// address other than loopback.
    pub fn bearer_token(mut self, token: impl AsRef<[u8]>) -> Admin {
        self.token = Some(token.as_ref().into());
        self
    }

    /// At most `n` HTTP connections served at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`]); more wait in the listen backlog.
    pub fn max_connections(mut self, n: usize) -> Admin {
        self.max_connections = n.max(1);
        self
    }

    /// Closes a connection that neither sends nor receives anything for `timeout`
    /// (default [`DEFAULT_IDLE_TIMEOUT`]), so idle keep-alive connections cannot hold
    /// every slot.
    pub fn idle_timeout(mut self, timeout: Duration) -> Admin {
        self.idle_timeout = timeout;
        self
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

    /// The routes, to mount in an existing axum server (behind the bearer token check,
    /// if one is set).
    pub fn router(self) -> Router {
        let token = self.token;
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
        let router = match self.extra {
            Some(extra) => router.merge(extra),
            None => router,
        };
        match token {
            Some(token) => {
                router.layer(axum::middleware::from_fn_with_state(token, require_bearer))
            }
            None => router,
        }
    }

    /// Binds the admin server. Without a bearer token only a loopback address is
    /// accepted (the default of every Tethernet binary); any other fails with
    /// [`io::ErrorKind::InvalidInput`], as does a token shorter than [`MIN_TOKEN_LEN`].
    pub async fn bind(self, addr: SocketAddr) -> io::Result<AdminServer> {
        let refuse = |message: String| Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        match &self.token {
            None if !addr.ip().is_loopback() => {
                return refuse(format!(
                    "refusing to serve the admin endpoints unauthenticated on {addr}, which is not a loopback address: set a bearer token (Admin::bearer_token) or bind to 127.0.0.1"
                ))
            }
            Some(token) if token.len() < MIN_TOKEN_LEN => {
                return refuse(format!(
                    "the admin bearer token is {} bytes; use at least {MIN_TOKEN_LEN} random bytes",
                    token.len()
                ))
            }
            _ => {}
        }
        // A server that shows its memory should also give freed memory back.
        alloc::purge_in_background();
        let listener = TcpListener::bind(addr).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot bind the admin server to {addr}: {error}"),
            )
        })?;
        Ok(AdminServer {
            listener: Limited {
                listener,
                slots: Arc::new(Semaphore::new(self.max_connections)),
                idle: self.idle_timeout,
            },
            router: self.router(),
        })
    }
}

/// Lets through requests with `Authorization: Bearer TOKEN`; others get a 401.
async fn require_bearer(State(token): State<Arc<[u8]>>, request: Request, next: Next) -> Response {
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match offered {
        Some(offered) if constant_time_eq(offered, &token) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"tethernet-admin\"")],
            "this admin server needs `Authorization: Bearer TOKEN` with the token it was started with\n",
        )
            .into_response(),
    }
}

/// Compares in time that depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(std::hint::black_box(x ^ y));
    }
    diff == 0
}

/// The admin listener: accepts a connection only when one of `max_connections` slots is
/// free; each connection holds its slot until it closes.
struct Limited {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl axum::serve::Listener for Limited {
    type Io = SlotStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SlotStream, SocketAddr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        let idle = self.idle;
        (
            SlotStream {
                stream,
                _slot: slot,
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An admin connection: its slot, and an idle deadline pushed back by every read or
/// write; past it, reads and writes fail (and hyper closes the connection).
struct SlotStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl SlotStream {
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.deadline.as_mut().reset(Instant::now() + self.idle);
                Poll::Ready(result)
            }
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "admin connection idle past its timeout",
                )))
            }
        }
    }
}

impl AsyncRead for SlotStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.poll_io(cx, poll)
    }
}

impl AsyncWrite for SlotStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.poll_io(cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.poll_io(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.poll_io(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[derive(serde::Deserialize)]
struct TopQuery {
    top: Option<usize>,
}

/// A bound admin server.
pub struct AdminServer {
    listener: Limited,
    router: Router,
}

impl AdminServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .listener
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
