//! Business work off the I/O thread: each frame passes a handler on an [`Executor`] that
//! waits a random 0..N µs (an async sleep, or a blocking one on a blocking executor)
//! before the frame is echoed on the I/O thread. Replies still come back in order, and
//! the executor's queue is capped per connection: a peer that sends faster than the
//! business work runs stops being read.
//!
//! ```text
//! cargo run --release -p tethernet --example offload -- --mode blocking --jitter-us 200
//! ```
//!
//! Same protocol as the `echo` example (4-byte big-endian length, then payload).

use std::time::Duration;

use clap::{Parser, ValueEnum};
use tethernet::codec::LengthFieldCodec;
use tethernet::{Context, Executor, Frame, Handler, Pipeline, Result, Server};

#[derive(Parser, Debug)]
#[command(about = "Echo through a business executor, in order")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7008")]
    listen: String,
    /// I/O threads (event loops); default: the number of cores.
    #[arg(long)]
    threads: Option<usize>,
    /// How the business handler waits.
    #[arg(long, value_enum, default_value_t = Mode::Async)]
    mode: Mode,
    /// The business handler waits a random 0..N µs per frame.
    #[arg(long, default_value_t = 100)]
    jitter_us: u64,
    /// Executor threads; default: the number of cores.
    #[arg(long)]
    executor_threads: Option<usize>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// An async executor; the wait is `tokio::time::sleep`.
    Async,
    /// A blocking executor; the wait is `std::thread::sleep`.
    Blocking,
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
        ctx.fire_read(frame).await
    }
}

/// Writes every frame back, on the I/O thread.
struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
        ctx.write(frame).await
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let blocking = args.mode == Mode::Blocking;
    let mut executor = Executor::builder("business");
    if let Some(n) = args.executor_threads {
        executor = executor.threads(n);
    }
    if blocking {
        executor = executor.blocking();
    }
    let executor = executor.build()?;
    let server = Server::builder()
        .io_threads(threads)
        .bind(args.listen.as_str())
        .await?;
    println!(
        "offload echo listening on {} ({:?} executor, jitter 0..{} µs)",
        server.local_addr(),
        args.mode,
        args.jitter_us
    );
    let max_us = args.jitter_us;
    server
        .serve_until(
            move || {
                Pipeline::builder(LengthFieldCodec::new(1 << 20))
                    .on(&executor, Jitter { max_us, blocking })
                    .handler(Echo)
                    .build()
            },
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await
}
