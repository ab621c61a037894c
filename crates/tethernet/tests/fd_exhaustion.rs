//! Running out of file descriptors (EMFILE) does not spin the accept loop: failed accepts
//! back off, and the server recovers once descriptors are free again. In its own test
//! binary: it lowers this process's descriptor limit.

mod common;

use std::time::Duration;

use common::{eventually, frame, read_frame, start};
use tethernet::codec::LengthFieldCodec;
use tethernet::Frame;
use tethernet::{global, Context, Handler, Pipeline, Result, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        ctx.write(f).await
    }
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_descriptor_limit(limit: u64) {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut current), 0);
        current.rlim_cur = limit.min(current.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &current), 0);
    }
}

#[tokio::test]
async fn exhausting_descriptors_backs_off_and_recovers() {
    let server = start(Server::builder().io_threads(1), || {
        Pipeline::builder(LengthFieldCodec::new(1024))
            .handler(Echo)
            .build()
    })
    .await;
    set_descriptor_limit(open_descriptors() + 24);

    // Each served connection costs two descriptors here (client and server side): soon
    // the server cannot accept, while the kernel still completes connections.
    let mut clients = Vec::new();
    while global().accept_errors.get() == 0 {
        match TcpStream::connect(server.addr).await {
            Ok(client) => clients.push(client),
            Err(_) => break, // the client side ran out first; the server's turn is next
        }
        tokio::task::yield_now().await;
        assert!(clients.len() < 100, "the descriptor limit never bit");
    }
    eventually(
        "accept fails for lack of descriptors",
        || global().accept_errors.get() > 0,
        || tokio::time::sleep(Duration::from_millis(10)),
    )
    .await;

    // While descriptors stay exhausted, failed accepts are paced, not spun.
    let before = global().accept_errors.get();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = global().accept_errors.get() - before;
    assert!(
        during <= 12,
        "{during} failed accepts in one second: the accept loop spins"
    );

    // Free descriptors: the server accepts again and serves a new client.
    clients.truncate(clients.len() / 2);
    set_descriptor_limit(4096);
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(&frame(b"back")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut client)).await;
    assert_eq!(reply.expect("served after recovery").unwrap(), b"back");
    drop(clients);
    server.stop().await;
}
