//! The echo server: "4-byte big-endian length, then payload; every frame is sent back
//! unchanged". Tethernet's unit of speed (see `BENCHMARKS.md`) and the server the soak tool
//! measures.
//!
//! ```text
//! cargo run --release -p tethernet --example echo -- --listen 127.0.0.1:7007
//! cargo run --release -p tethernet --example echo -- --admin 127.0.0.1:9100
//! ```
//!
//! With `--admin ADDR`, the admin server (metrics, debugging endpoints, dashboard at `/`)
//! listens there. Business work on an executor is the `offload` example; leaks, blocking
//! and unowned tasks shown on the dashboard are the `misbehave` example.

use std::time::Duration;

use clap::Parser;
use tethernet::codec::LengthFieldCodec;
use tethernet::leak::LeakDetection;
use tethernet::{Context, Frame, Handler, Pipeline, Result, Server};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

#[derive(Parser, Debug)]
#[command(about = "Tethernet echo server: 4-byte big-endian length + payload, echoed back")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7007")]
    listen: String,
    /// I/O threads (event loops); default: the number of cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Largest frame accepted, in bytes; a longer length header closes the connection.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame: usize,
    /// Close a connection that starts a frame and does not finish it within this many ms
    /// (slowloris defence; 0 = off).
    #[arg(long, default_value_t = 0)]
    frame_timeout_ms: u64,
    /// Most connections open at once.
    #[arg(long, default_value_t = tethernet::server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most connections open at once from one IP address (0 = no cap beyond
    /// --max-connections).
    #[arg(long, default_value_t = 0)]
    max_connections_per_address: usize,
    /// The listen backlog (default: the framework's, `DEFAULT_BACKLOG`).
    #[arg(long)]
    backlog: Option<u32>,
    /// Serve the admin endpoints (metrics, /debug/*, dashboard) on this address.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Leak detection level: off, sampled or paranoid (default: TETHERNET_LEAK_DETECTION,
    /// else sampled).
    #[arg(long)]
    leak_detection: Option<LeakDetection>,
}

/// Writes every frame back unchanged.
struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
        ctx.write(frame).await
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut builder = Server::builder()
        .io_threads(threads)
        .max_connections(args.max_connections);
    if args.frame_timeout_ms > 0 {
        builder = builder.frame_timeout(Duration::from_millis(args.frame_timeout_ms));
    }
    if args.max_connections_per_address > 0 {
        builder = builder.max_connections_per_address(args.max_connections_per_address);
    }
    if let Some(backlog) = args.backlog {
        builder = builder.backlog(backlog);
    }
    if let Some(level) = args.leak_detection {
        tethernet::leak::set_level(level);
    }
    let server = builder.bind(args.listen.as_str()).await?;
    println!(
        "echo listening on {} ({} I/O threads, max frame {} bytes)",
        server.local_addr(),
        threads,
        args.max_frame
    );
    let admin = match args.admin {
        Some(addr) => {
            let admin = tethernet_admin::Admin::new().bind(addr).await?;
            println!(
                "admin on http://{}/ (metrics at /metrics)",
                admin.local_addr()
            );
            Some(admin)
        }
        None => None,
    };
    let max_frame = args.max_frame;
    let stop = CancellationToken::new();
    let serve = async {
        let result = server
            .serve_until(
                move || {
                    Pipeline::builder(LengthFieldCodec::new(max_frame))
                        .handler(Echo)
                        .build()
                },
                stop.cancelled(),
            )
            .await;
        stop.cancel();
        result
    };
    let admin = async {
        match admin {
            Some(admin) => admin.serve_until(stop.clone().cancelled_owned()).await,
            None => Ok(()),
        }
    };
    let on_signal = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => println!("shutting down"),
            _ = stop.cancelled() => {}
        }
        stop.cancel();
    };
    let (served, admin_served, ()) = tokio::join!(serve, admin, on_signal);
    if let Err(error) = admin_served {
        eprintln!("admin server failed: {error}");
    }
    served
}
