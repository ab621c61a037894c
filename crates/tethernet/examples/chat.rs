//! A line-based chat room on a channel group, with an idle timeout.
//!
//! ```text
//! cargo run --release -p tethernet --example chat -- --listen 127.0.0.1:7010
//! nc 127.0.0.1 7010        # in two or more terminals
//! ```
//!
//! The first line a client sends is its name; every later line goes to everyone else in
//! the room (`/quit` leaves). A broadcast is offered to each member without waiting: a
//! member that stops reading fills only its own capped queue, and then the slow-consumer
//! policy applies to it alone (`--slow-policy`). Connections silent for `--idle-secs` are
//! closed. Every `--stats-secs` the server prints its live counters.
//!
//! Size `--queue-bytes` above the largest burst one sender can cause: the lines of one
//! socket read (up to 64 KiB) are fanned out at once, so a member whose queue is smaller
//! than that can overflow during a burst even while it reads as fast as it can.

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tethernet::codec::LineCodec;
use tethernet::{
    global, ChannelEvent, ChannelGroup, Context, Event, Handler, IdleState, IdleTimeouts, Overflow,
    Pipeline, Result, Server,
};

#[derive(Parser, Debug)]
#[command(about = "Tethernet chat room: one line per message, first line is your name")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7010")]
    listen: String,
    /// I/O threads (event loops); default: the number of cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Close connections that send nothing for this many seconds.
    #[arg(long, default_value_t = 300)]
    idle_secs: u64,
    /// What happens to a member whose outbound queue is full.
    #[arg(long, value_enum, default_value_t = SlowPolicy::Close)]
    slow_policy: SlowPolicy,
    /// Each member's outbound queue cap, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    queue_bytes: usize,
    /// Print the server's counters this often (0: never).
    #[arg(long, default_value_t = 5)]
    stats_secs: u64,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum SlowPolicy {
    /// Close the slow member's connection.
    Close,
    /// Drop the new message for that member.
    DropNewest,
    /// Drop the member's oldest queued messages.
    DropOldest,
}

impl From<SlowPolicy> for Overflow {
    fn from(policy: SlowPolicy) -> Overflow {
        match policy {
            SlowPolicy::Close => Overflow::CloseSlowConsumer,
            SlowPolicy::DropNewest => Overflow::DropNewest,
            SlowPolicy::DropOldest => Overflow::DropOldest,
        }
    }
}

/// Longest accepted line, in bytes; a longer one closes the connection.
const MAX_LINE: usize = 1024;

/// One member of the room. Lines are `Arc<str>`: a broadcast is built once and shared by
/// every member's queue.
struct Member {
    room: ChannelGroup<Arc<str>>,
    name: Option<String>,
}

impl Handler<String, Arc<str>> for Member {
    type Next = String;

    async fn active(&mut self, ctx: &mut Context<'_, String, Arc<str>>) -> Result<()> {
        ctx.write("Welcome! What is your name?".into()).await
    }

    async fn read(&mut self, ctx: &mut Context<'_, String, Arc<str>>, line: String) -> Result<()> {
        let line = line.trim();
        let Some(name) = &self.name else {
            if line.is_empty() || line.len() > 32 || line.contains(char::is_whitespace) {
                return ctx
                    .write("Names are 1-32 characters, no spaces. Your name?".into())
                    .await;
            }
            self.name = Some(line.to_owned());
            self.room.add(ctx.channel());
            let online = self.room.len();
            ctx.write(format!("Hello {line}! {online} online. /quit leaves.").into())
                .await?;
            self.room
                .broadcast_except(format!("* {line} joined").into(), ctx.id());
            return Ok(());
        };
        if line == "/quit" {
            ctx.write("Bye!".into()).await?;
            ctx.close();
        } else if !line.is_empty() {
            self.room
                .broadcast_except(format!("{name}: {line}").into(), ctx.id());
        }
        Ok(())
    }

    async fn user_event(
        &mut self,
        ctx: &mut Context<'_, String, Arc<str>>,
        event: &Event,
    ) -> Result<()> {
        if event.channel_event() == Some(ChannelEvent::Idle(IdleState::ReaderIdle)) {
            ctx.write("* closing: idle for too long".into()).await?;
            ctx.close();
        }
        Ok(())
    }

    async fn inactive(&mut self, ctx: &mut Context<'_, String, Arc<str>>) -> Result<()> {
        if let Some(name) = &self.name {
            self.room.remove(ctx.id());
            self.room.broadcast(format!("* {name} left").into());
        }
        Ok(())
    }
}

fn print_stats(room: &ChannelGroup<Arc<str>>) {
    let g = global();
    println!(
        "stats: connections={} room_members={} dropped_messages={} slow_consumer_closes={} \
         refused={} owned_tasks={} tethered_resources={}",
        g.connections.get(),
        room.len(),
        g.dropped_messages.get(),
        g.slow_consumer_closes.get(),
        g.refused.get(),
        g.owned_tasks.get(),
        g.tethered_resources.get(),
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let room = ChannelGroup::<Arc<str>>::new("lobby", args.slow_policy.into());
    let mut builder = Server::builder()
        .outbound_queue_capacity(args.queue_bytes)
        .idle_timeouts(IdleTimeouts {
            reader: Some(Duration::from_secs(args.idle_secs)),
            ..Default::default()
        });
    if let Some(threads) = args.threads {
        builder = builder.io_threads(threads);
    }
    let server = builder.bind(args.listen.as_str()).await?;
    println!(
        "chat listening on {} (slow consumers: {:?}, idle timeout {} s)",
        server.local_addr(),
        args.slow_policy,
        args.idle_secs
    );
    let pipeline_room = room.clone();
    let serve = server.serve_until(
        move || {
            Pipeline::builder(LineCodec::new(MAX_LINE))
                .handler(Member {
                    room: pipeline_room.clone(),
                    name: None,
                })
                .build()
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
            println!("shutting down");
        },
    );
    // The counters are printed beside the server, in this task: when the server stops,
    // so does the printing.
    let stats = async {
        if args.stats_secs == 0 {
            return std::future::pending().await;
        }
        let mut every = tokio::time::interval(Duration::from_secs(args.stats_secs));
        loop {
            every.tick().await;
            print_stats(&room);
        }
    };
    let result = tokio::select! {
        result = serve => result,
        never = stats => never,
    };
    print_stats(&room);
    result
}
