//! Servers for the soak's tests, in the test process (over loopback sockets and the
//! admin endpoints). Each test file is its own process: the figures are process-wide.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tethernet::codec::LengthFieldCodec;
use tethernet::{Context, Frame, Handler, Pipeline, Result, Server};
use tethernet_soak::{Config, FanoutSettings, Protocol, Scenario};
use tokio::sync::oneshot;

/// Frames seen by every echo connection of the process.
static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Frames kept forever by the leaky server.
pub static KEPT: Mutex<Vec<Frame>> = Mutex::new(Vec::new());

/// Echoes; with `leak_every` > 0, keeps every Nth frame (the deliberate leak).
struct Echo {
    leak_every: u64,
    seen: u64,
}

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, frame: Frame) -> Result<()> {
        self.seen += 1;
        let n = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if self.leak_every > 0 && n % self.leak_every == 0 {
            let copy = Frame::from(&frame[..]);
            KEPT.lock().unwrap().push(frame);
            return ctx.write(copy).await;
        }
        ctx.write(frame).await
    }
}

pub struct Running {
    pub target: SocketAddr,
    pub admin: SocketAddr,
    pub stop: oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn echo_server(leak_every: u64) -> Running {
    let server = Server::builder()
        .io_threads(1)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let target = server.local_addr();
    let admin = tethernet_admin::Admin::new()
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin_addr = admin.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (stop_admin, admin_stopped) = oneshot::channel::<()>();
        let serving = server.serve_until(
            move || {
                Pipeline::builder(LengthFieldCodec::new(1 << 20))
                    .handler(Echo {
                        leak_every,
                        seen: 0,
                    })
                    .build()
            },
            async {
                let _ = stopped.await;
                drop(stop_admin);
            },
        );
        let admin_serving = admin.serve_until(async {
            let _ = admin_stopped.await;
        });
        let (served, admin_served) = tokio::join!(serving, admin_serving);
        served.unwrap();
        admin_served.unwrap();
    });
    Running {
        target,
        admin: admin_addr,
        stop,
        task,
    }
}

pub fn config(
    target: SocketAddr,
    admin: SocketAddr,
    protocol: Protocol,
    scenario: Scenario,
    secs: u64,
) -> Config {
    Config {
        target,
        admin,
        protocol,
        scenario,
        clients: 6,
        duration: Duration::from_secs(secs),
        settle: Duration::from_secs(5),
        warmup: Duration::ZERO,
        report: None,
        secret: Some("soak-test-secret-0123456789".into()),
        progress: false,
        source_addresses: 1,
        fanout: FanoutSettings::default(),
    }
}
