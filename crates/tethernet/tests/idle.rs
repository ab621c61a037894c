//! Idle detection: events fire at the configured times (tokio's paused clock, server on
//! the test's own runtime), and the heartbeat closes dead peers but not live ones.

mod common;

use std::time::Duration;

use common::start;
use tethernet::codec::LineCodec;
use tethernet::handlers::Heartbeat;
use tethernet::{
    ChannelEvent, Context, Event, EventLoopGroup, Handler, IdleState, IdleTimeouts, Pipeline,
    Result, Server,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Reports each idle event with the time since the connection became active.
struct RecordIdle {
    since: Option<Instant>,
    events: mpsc::Sender<(IdleState, Duration)>,
}

impl Handler<String, String> for RecordIdle {
    type Next = String;

    async fn active(&mut self, _ctx: &mut Context<'_, String, String>) -> Result<()> {
        self.since = Some(Instant::now());
        Ok(())
    }

    async fn read(&mut self, _ctx: &mut Context<'_, String, String>, _line: String) -> Result<()> {
        Ok(())
    }

    async fn user_event(
        &mut self,
        _ctx: &mut Context<'_, String, String>,
        event: &Event,
    ) -> Result<()> {
        if let Some(ChannelEvent::Idle(state)) = event.channel_event() {
            let _ = self
                .events
                .send((state, self.since.unwrap().elapsed()))
                .await;
        }
        Ok(())
    }
}

fn on_this_runtime(timeouts: IdleTimeouts) -> tethernet::ServerBuilder {
    Server::builder()
        .event_loop_group(EventLoopGroup::current())
        .idle_timeouts(timeouts)
}

#[tokio::test(start_paused = true)]
async fn idle_events_fire_at_the_configured_times() {
    let (tx, mut events) = mpsc::channel(16);
    let timeouts = IdleTimeouts {
        reader: Some(Duration::from_secs(3)),
        writer: Some(Duration::from_secs(5)),
        all: None,
    };
    let server = start(on_this_runtime(timeouts), move || {
        Pipeline::builder(LineCodec::new(128))
            .handler(RecordIdle {
                since: None,
                events: tx.clone(),
            })
            .build()
    })
    .await;
    let _silent = TcpStream::connect(server.addr).await.unwrap();

    let secs = Duration::from_secs;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(events.recv().await.unwrap());
    }
    assert_eq!(
        seen,
        [
            (IdleState::ReaderIdle, secs(3)),
            (IdleState::WriterIdle, secs(5)),
            (IdleState::ReaderIdle, secs(6)),
            (IdleState::ReaderIdle, secs(9)),
            (IdleState::WriterIdle, secs(10)),
        ]
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reading_resets_the_reader_idle_period() {
    let (tx, mut events) = mpsc::channel(16);
    let timeouts = IdleTimeouts {
        reader: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let server = start(on_this_runtime(timeouts), move || {
        Pipeline::builder(LineCodec::new(128))
            .handler(RecordIdle {
                since: None,
                events: tx.clone(),
            })
            .build()
    })
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    // Talk every 2 s for 10 s: never 3 s of silence.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.write_all(b"still here\n").await.unwrap();
    }
    let (state, at) = events.recv().await.unwrap();
    assert_eq!(state, IdleState::ReaderIdle);
    // Last read at 10 s: the next period ends at 13 s.
    assert_eq!(
        at,
        Duration::from_secs(13),
        "reader idle fired at {at:?} despite traffic"
    );
    server.stop().await;
}

fn heartbeat_server() -> tethernet::ServerBuilder {
    on_this_runtime(IdleTimeouts {
        writer: Some(Duration::from_secs(1)),
        reader: Some(Duration::from_secs(3)),
        all: None,
    })
}

/// Answers nothing: the heartbeat also passes lines on to the end of the pipeline.
fn heartbeat_pipeline(
) -> Pipeline<LineCodec, impl tethernet::pipeline::Stage<String, String>, String> {
    Pipeline::builder(LineCodec::new(128))
        .handler(Heartbeat::new(|| "PING".to_owned()))
        .build()
}

#[tokio::test(start_paused = true)]
async fn heartbeat_closes_a_dead_peer() {
    let server = start(heartbeat_server(), heartbeat_pipeline).await;
    let started = Instant::now();
    let mut lines = BufReader::new(TcpStream::connect(server.addr).await.unwrap()).lines();
    let mut pings = 0;
    while let Some(line) = lines.next_line().await.unwrap() {
        assert_eq!(line, "PING");
        pings += 1;
    }
    // Pinged every second, closed at the reader timeout since the peer never answered.
    assert!(pings >= 2, "only {pings} pings before the close");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_a_live_peer() {
    let server = start(heartbeat_server(), heartbeat_pipeline).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    // Answer every ping for 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pings = 0;
    while Instant::now() < deadline {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("a live peer is not closed");
        assert_eq!(line, "PING");
        pings += 1;
        writer.write_all(b"PONG\n").await.unwrap();
    }
    assert!(pings >= 9, "{pings} pings in 10 s");
    server.stop().await;
}
