//! The echo server: "4-byte big-endian length, then payload; every frame is sent back
//! unchanged". Tethernet's unit of speed (see `BENCHMARKS.md`).
//!
//! ```text
//! cargo run --release -p tethernet --example echo -- --listen 127.0.0.1:7007
//! cargo run --release -p tethernet --example echo -- --offload blocking --jitter-us 200
//! cargo run --release -p tethernet --example echo -- --admin 127.0.0.1:9100
//! ```
//!
//! With `--offload async|blocking`, each frame first passes a business handler on an
//! executor that waits a random 0..N µs (async sleep or blocking sleep) before the frame is
//! echoed: replies still come back in order.
//!
//! With `--admin ADDR`, the admin server (metrics, debugging endpoints, dashboard at `/`)
//! listens there. `--leak-every N`, `--spawn-every N` and `--block-every N` misbehave on
//! purpose, to see leak reports, unowned tasks and blocking reports appear.

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use clap::{Parser, ValueEnum};
use tethernet::codec::LengthFieldCodec;
use tethernet::leak::LeakDetection;
use tethernet::pipeline::Stage;
use tethernet::{Context, Executor, Frame, Handler, Pipeline, PipelineCodec, Result, Server};
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
    /// Pass each frame through a business handler on an executor before echoing it.
    #[arg(long, value_enum, default_value_t = Offload::None)]
    offload: Offload,
    /// With --offload: the business handler waits a random 0..N µs per frame.
    #[arg(long, default_value_t = 0)]
    jitter_us: u64,
    /// With --offload: executor threads; default: the number of cores.
    #[arg(long)]
    executor_threads: Option<usize>,
    /// Serve the admin endpoints (metrics, /debug/*, dashboard) on this address.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Leak detection level: off, sampled or paranoid (default: TETHERNET_LEAK_DETECTION,
    /// else sampled).
    #[arg(long)]
    leak_detection: Option<LeakDetection>,
    /// Misbehave: keep every Nth frame forever (to see leak reports; 0 = never).
    #[arg(long, default_value_t = 0)]
    leak_every: u64,
    /// Misbehave: block the event loop for 25 ms on every Nth frame (to see blocking
    /// reports; 0 = never).
    #[arg(long, default_value_t = 0)]
    block_every: u64,
    /// Misbehave: on every Nth frame, start a plain `tokio::spawn` task that holds a copy
    /// of the frame for 60 s (the fire-and-forget `Task.Run` of the story; to see unowned
    /// tasks counted and reported; 0 = never).
    #[arg(long, default_value_t = 0)]
    spawn_every: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Offload {
    /// Echo on the I/O thread.
    None,
    /// Through an async executor (the wait is `tokio::time::sleep`).
    Async,
    /// Through a blocking executor (the wait is `std::thread::sleep`).
    Blocking,
}

/// Writes every frame back unchanged.
struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
        ctx.write(frame).await
    }
}

/// Frames kept forever by `--leak-every`.
static LEAKED: Mutex<Vec<Frame>> = Mutex::new(Vec::new());
static FRAMES_SEEN: AtomicU64 = AtomicU64::new(0);

/// Echoes, but keeps a copy of every Nth frame's bytes forever (`--leak-every`), starts a
/// task nobody owns (`--spawn-every`) or blocks the event loop on every Nth frame
/// (`--block-every`).
struct Misbehave {
    leak_every: u64,
    block_every: u64,
    spawn_every: u64,
}

impl Handler<Frame, Frame> for Misbehave {
    type Next = Frame;

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, mut frame: Frame) -> Result<()> {
        let n = FRAMES_SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        if self.block_every > 0 && n % self.block_every == 0 {
            std::thread::sleep(Duration::from_millis(25));
        }
        if self.spawn_every > 0 && n % self.spawn_every == 0 {
            // What G2 forbids, done on purpose: nobody owns this task.
            let copy = frame.clone().detach();
            drop(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(copy);
            }));
        }
        if self.leak_every > 0 && n % self.leak_every == 0 {
            // Cut here (so leak reports point at this line), kept forever, echoed as a copy.
            let kept = frame.split_to(frame.len());
            frame = Frame::from(&kept[..]);
            LEAKED.lock().unwrap_or_else(|e| e.into_inner()).push(kept);
        }
        ctx.write(frame).await
    }
}

/// Stands in for business work: waits a random 0..max µs, then passes the frame on.
struct Jitter {
    max_us: u64,
    blocking: bool,
}

impl Handler<Frame, Frame> for Jitter {
    type Next = Frame;

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
        if self.max_us > 0 {
            let wait = Duration::from_micros(fastrand::u64(0..self.max_us));
            if self.blocking {
                std::thread::sleep(wait);
            } else {
                tokio::time::sleep(wait).await;
            }
        }
        ctx.fire_read(frame).await?;
        Ok(())
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
    let server = builder.bind(args.listen.as_str()).await?;
    println!(
        "echo listening on {} ({} I/O threads, max frame {} bytes, offload {:?})",
        server.local_addr(),
        threads,
        args.max_frame,
        args.offload
    );
    if let Some(level) = args.leak_detection {
        tethernet::leak::set_level(level);
    }
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
    let stop = CancellationToken::new();
    let max_frame = args.max_frame;
    let (leak_every, block_every, spawn_every) =
        (args.leak_every, args.block_every, args.spawn_every);
    match args.offload {
        Offload::None if leak_every == 0 && block_every == 0 && spawn_every == 0 => {
            run(server, admin, stop, move || {
                Pipeline::builder(LengthFieldCodec::new(max_frame))
                    .handler(Echo)
                    .build()
            })
            .await
        }
        Offload::None => {
            run(server, admin, stop, move || {
                Pipeline::builder(LengthFieldCodec::new(max_frame))
                    .handler(Misbehave {
                        leak_every,
                        block_every,
                        spawn_every,
                    })
                    .build()
            })
            .await
        }
        Offload::Async | Offload::Blocking => {
            let blocking = args.offload == Offload::Blocking;
            let mut executor = Executor::builder("business");
            if let Some(n) = args.executor_threads {
                executor = executor.threads(n);
            }
            if blocking {
                executor = executor.blocking();
            }
            let executor = executor.build()?;
            let max_us = args.jitter_us;
            run(server, admin, stop, move || {
                Pipeline::builder(LengthFieldCodec::new(max_frame))
                    .on(&executor, Jitter { max_us, blocking })
                    .handler(Echo)
                    .build()
            })
            .await
        }
    }
}

/// Serves (and the admin server, if any) until Ctrl-C; both are awaited.
async fn run<F, C, S>(
    server: Server,
    admin: Option<tethernet_admin::AdminServer>,
    stop: CancellationToken,
    pipeline: F,
) -> Result<()>
where
    F: Fn() -> Pipeline<C, S, Frame> + Send + Sync + 'static,
    C: PipelineCodec<Frame>,
    S: Stage<C::Item, Frame>,
{
    let signal = stop.clone();
    let on_signal = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => println!("shutting down"),
            _ = signal.cancelled() => {}
        }
        signal.cancel();
    };
    let admin = async {
        match admin {
            Some(admin) => admin.serve_until(stop.clone().cancelled_owned()).await,
            None => Ok(()),
        }
    };
    let serve = async {
        let result = server.serve_until(pipeline, stop.cancelled()).await;
        stop.cancel();
        result
    };
    let (served, admin_served, ()) = tokio::join!(serve, admin, on_signal);
    if let Err(error) = admin_served {
        eprintln!("admin server failed: {error}");
    }
    served
}
