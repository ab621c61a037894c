//! What the dashboard is for: an echo server whose handler misbehaves on purpose, so that
//! leak reports, blocked event loops and unowned tasks show up live on the admin server.
//!
//! ```text
//! cargo run --release -p tethernet --example misbehave -- --leak-every 100 --spawn-every 100 --block-every 400
//! # then open http://127.0.0.1:9100/ and put load on 127.0.0.1:7009 (scripts/echo_check.py 7009 800)
//! ```
//!
//! - `--leak-every N` keeps every Nth frame forever: a leak report names the line that cut
//!   it and the handler it was last handed to;
//! - `--block-every N` blocks the event loop for 25 ms: the watchdog names the handler;
//! - `--spawn-every N` starts a plain `tokio::spawn` task that holds a copy of the frame
//!   for 60 s, the fire-and-forget `Task.Run` of the story Tethernet comes from: counted
//!   per event loop as unowned, attributed to this handler, reported once it outlives its
//!   connection.
//!
//! Same protocol as the `echo` example (4-byte big-endian length, then payload).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use tethernet::codec::LengthFieldCodec;
use tethernet::{Context, Frame, Handler, Pipeline, Result, Server};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

#[derive(Parser, Debug)]
#[command(about = "An echo server that leaks, blocks and spawns on purpose, for the dashboard")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7009")]
    listen: String,
    /// The admin server (metrics, /debug/*, dashboard).
    #[arg(long, default_value = "127.0.0.1:9100")]
    admin: std::net::SocketAddr,
    /// Keep every Nth frame forever (0 = never).
    #[arg(long, default_value_t = 100)]
    leak_every: u64,
    /// Block the event loop for 25 ms on every Nth frame (0 = never).
    #[arg(long, default_value_t = 400)]
    block_every: u64,
    /// Start an unowned task holding the frame for 60 s on every Nth frame (0 = never).
    #[arg(long, default_value_t = 100)]
    spawn_every: u64,
}

/// Frames kept forever by `--leak-every`.
static LEAKED: Mutex<Vec<Frame>> = Mutex::new(Vec::new());
static FRAMES_SEEN: AtomicU64 = AtomicU64::new(0);

/// Echoes, and misbehaves on every Nth frame as configured.
struct Misbehave {
    leak_every: u64,
    block_every: u64,
    spawn_every: u64,
}

fn every(n: u64, count: u64) -> bool {
    n > 0 && count % n == 0
}

impl Handler<Frame, Frame> for Misbehave {
    type Next = Frame;

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, mut frame: Frame) -> Result<()> {
        let count = FRAMES_SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        if every(self.block_every, count) {
            std::thread::sleep(Duration::from_millis(25));
        }
        if every(self.spawn_every, count) {
            // What G2 forbids, done on purpose: nobody owns this task.
            let copy = frame.clone().detach();
            drop(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(copy);
            }));
        }
        if every(self.leak_every, count) {
            // Cut here (so leak reports point at this line), kept forever, echoed as a copy.
            let kept = frame.split_to(frame.len());
            frame = Frame::from(&kept[..]);
            LEAKED.lock().unwrap_or_else(|e| e.into_inner()).push(kept);
        }
        ctx.write(frame).await
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let server = Server::builder().bind(args.listen.as_str()).await?;
    let admin = tethernet_admin::Admin::new().bind(args.admin).await?;
    println!(
        "misbehaving echo on {}; dashboard on http://{}/",
        server.local_addr(),
        admin.local_addr()
    );
    let (leak_every, block_every, spawn_every) =
        (args.leak_every, args.block_every, args.spawn_every);
    let stop = CancellationToken::new();
    let serve = async {
        let result = server
            .serve_until(
                move || {
                    Pipeline::builder(LengthFieldCodec::new(1 << 20))
                        .handler(Misbehave {
                            leak_every,
                            block_every,
                            spawn_every,
                        })
                        .build()
                },
                stop.cancelled(),
            )
            .await;
        stop.cancel();
        result
    };
    let on_signal = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => println!("shutting down"),
            _ = stop.cancelled() => {}
        }
        stop.cancel();
    };
    let (served, admin_served, ()) = tokio::join!(
        serve,
        admin.serve_until(stop.clone().cancelled_owned()),
        on_signal
    );
    if let Err(error) = admin_served {
        eprintln!("admin server failed: {error}");
    }
    served
}
