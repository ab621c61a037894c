//! Blocking detection: a handler that blocks an event-loop thread is reported by name,
//! with its connection; the same work on a blocking executor is not.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{default_server, eventually, frame, read_frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::{blocking, global, ChannelId, Context, Executor, Frame, Handler, Pipeline, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sleeps 60 ms in a synchronous call (a stand-in for a blocking database driver), then
/// echoes. Placed on the event loop it blocks it; on a blocking executor it is fine.
struct SlowLookup {
    ids: Arc<Mutex<Vec<ChannelId>>>,
}

impl Handler<Frame, Frame> for SlowLookup {
    type Next = Frame;

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        self.ids.lock().unwrap().push(ctx.channel().id());
        std::thread::sleep(Duration::from_millis(60));
        ctx.write(f).await
    }
}

/// The same work under another name, for the blocking executor.
struct SlowLookupOffloaded(SlowLookup);

impl Handler<Frame, Frame> for SlowLookupOffloaded {
    type Next = Frame;

    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        self.0.read(ctx, f).await
    }
}

async fn exchange(addr: std::net::SocketAddr, frames: usize) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    for i in 0..frames {
        let payload = format!("lookup {i}");
        client.write_all(&frame(payload.as_bytes())).await.unwrap();
        assert_eq!(read_frame(&mut client).await.unwrap(), payload.as_bytes());
    }
}

#[tokio::test]
async fn a_handler_blocking_an_event_loop_is_reported_by_name() {
    blocking::set_threshold(Duration::from_millis(10));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let handler_ids = ids.clone();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(SlowLookup {
                ids: handler_ids.clone(),
            })
            .build()
    })
    .await;
    let before = global().blocked_io.get();
    exchange(server.addr, 3).await;
    let id = ids.lock().unwrap()[0];
    let mut mine = Vec::new();
    eventually(
        "three blocked-I/O reports for the connection",
        || {
            mine = blocking::reports()
                .into_iter()
                .filter(|report| report.channel == id)
                .collect();
            mine.len() == 3
        },
        || tokio::time::sleep(Duration::from_millis(20)),
    )
    .await;
    for report in &mine {
        assert!(
            report.handler.ends_with("::SlowLookup"),
            "reported handler: {}",
            report.handler
        );
        assert!(
            report.thread.starts_with("tethernet-io"),
            "{}",
            report.thread
        );
        assert!(report.blocked >= Duration::from_millis(10), "{report:?}");
    }
    assert!(global().blocked_io.get() >= before + 3);
    server.stop().await;
}

#[tokio::test]
async fn the_same_work_on_a_blocking_executor_is_not_reported() {
    blocking::set_threshold(Duration::from_millis(10));
    let executor = Executor::builder("lookups")
        .threads(2)
        .blocking()
        .build()
        .unwrap();
    let ids = Arc::new(Mutex::new(Vec::new()));
    let handler_ids = ids.clone();
    let server = start(default_server(), move || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .on(
                &executor,
                SlowLookupOffloaded(SlowLookup {
                    ids: handler_ids.clone(),
                }),
            )
            .build()
    })
    .await;
    exchange(server.addr, 3).await;
    // Longer than the watchdog needs to see a block (a quarter of the threshold per look).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = ids.lock().unwrap()[0];
    let mine: Vec<_> = blocking::reports()
        .into_iter()
        .filter(|report| report.channel == id || report.handler.ends_with("SlowLookupOffloaded"))
        .collect();
    assert!(mine.is_empty(), "nothing blocked an event loop: {mine:?}");
    server.stop().await;
}
