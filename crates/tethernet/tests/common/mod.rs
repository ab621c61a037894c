//! Helpers shared by the integration tests: a server on an ephemeral port that stops when
//! the test says so, and raw-socket frame I/O for the length-prefixed protocol.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;

use tethernet::pipeline::Stage;
use tethernet::{MessageSize, Pipeline, PipelineCodec, Server};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running test server; `stop` shuts it down and waits until every connection is gone.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<tethernet::Result<()>>>,
}

impl TestServer {
    pub async fn stop(mut self) {
        drop(self.stop.take());
        let result = self
            .task
            .take()
            .unwrap()
            .await
            .expect("server task panicked");
        result.expect("server failed");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub async fn start<F, C, S, W>(builder: tethernet::ServerBuilder, pipeline: F) -> TestServer
where
    F: Fn() -> Pipeline<C, S, W> + Send + Sync + 'static,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    start_at(builder, "127.0.0.1:0".parse().unwrap(), pipeline).await
}

/// Like [`start`], on a given address.
pub async fn start_at<F, C, S, W>(
    builder: tethernet::ServerBuilder,
    addr: SocketAddr,
    pipeline: F,
) -> TestServer
where
    F: Fn() -> Pipeline<C, S, W> + Send + Sync + 'static,
    C: PipelineCodec<W>,
    S: Stage<C::Item, W>,
    W: MessageSize + Send + 'static,
{
    let server = builder.bind(addr).await.expect("bind");
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_until(pipeline, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

pub fn default_server() -> tethernet::ServerBuilder {
    Server::builder().io_threads(2)
}

/// Encodes one length-prefixed frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A payload carrying a connection number and a sequence number, plus `padding` bytes.
pub fn numbered(connection: u32, seq: u32, padding: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + padding);
    out.extend_from_slice(&connection.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend(std::iter::repeat_n((seq % 251) as u8, padding));
    out
}

/// Reads one length-prefixed frame; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("read failed: {e}"),
    }
    let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
    reader
        .read_exact(&mut payload)
        .await
        .expect("truncated frame");
    Some(payload)
}

/// Waits for `condition`, re-checking whenever `tick` completes; panics after `what`
/// has not happened for 20 s (a hang guard, not a timing assertion).
pub async fn eventually<Fut: Future<Output = ()>>(
    what: &str,
    mut condition: impl FnMut() -> bool,
    mut tick: impl FnMut() -> Fut,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tick().await;
    }
}
