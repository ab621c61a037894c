//! The echo server: "4-byte big-endian length, then payload; every frame is sent back
//! unchanged". Tethernet's unit of speed (see `BENCHMARKS.md`).
//!
//! ```text
//! cargo run --release -p tethernet --example echo -- --listen 127.0.0.1:7007
//! cargo run --release -p tethernet --example echo -- --offload blocking --jitter-us 200
//! ```
//!
//! With `--offload async|blocking`, each frame first passes a business handler on an
//! executor that waits a random 0..N µs (async sleep or blocking sleep) before the frame is
//! echoed: replies still come back in order.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{Context, Executor, Handler, Pipeline, Result, Server};

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
    /// Pass each frame through a business handler on an executor before echoing it.
    #[arg(long, value_enum, default_value_t = Offload::None)]
    offload: Offload,
    /// With --offload: the business handler waits a random 0..N µs per frame.
    #[arg(long, default_value_t = 0)]
    jitter_us: u64,
    /// With --offload: executor threads; default: the number of cores.
    #[arg(long)]
    executor_threads: Option<usize>,
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
        ctx.fire_read(frame);
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
    let server = Server::builder()
        .io_threads(threads)
        .bind(args.listen.as_str())
        .await?;
    println!(
        "echo listening on {} ({} I/O threads, max frame {} bytes, offload {:?})",
        server.local_addr(),
        threads,
        args.max_frame,
        args.offload
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        println!("shutting down");
    };
    let max_frame = args.max_frame;
    match args.offload {
        Offload::None => {
            server
                .serve_until(
                    move || {
                        Pipeline::builder(LengthFieldCodec::new(max_frame))
                            .handler(Echo)
                            .build()
                    },
                    shutdown,
                )
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
            server
                .serve_until(
                    move || {
                        Pipeline::builder(LengthFieldCodec::new(max_frame))
                            .on(&executor, Jitter { max_us, blocking })
                            .handler(Echo)
                            .build()
                    },
                    shutdown,
                )
                .await
        }
    }
}
