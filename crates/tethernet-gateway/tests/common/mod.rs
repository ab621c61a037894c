//! A gateway started in the test process on ephemeral loopback ports, and clients for
//! both transports speaking the real protocol over real sockets.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::Connection;

use serde_json::{json, Value};
use tethernet_gateway::config::Settings;
use tethernet_gateway::gateway::{Addresses, Gateway};
use tethernet_gateway::node::Node;
use tethernet_gateway::token::{self, Claims, Signer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const SECRET: &str = "gateway-test-secret-0123456789";

/// A gateway running in this process.
pub struct TestGateway {
    pub addrs: Addresses,
    pub node: std::sync::Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
    _data: Option<tempfile::TempDir>,
}

impl TestGateway {
    pub async fn stop(mut self) {
        drop(self.stop.take());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Settings on ephemeral ports with a private SQLite database.
pub fn settings() -> (Settings, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        ws: Some("127.0.0.1:0".parse().unwrap()),
        admin: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_owned()),
        secret: Some(SECRET.into()),
        io_threads: Some(2),
        ..Settings::default()
    };
    (settings, dir)
}

pub async fn start(settings: Settings, data: Option<tempfile::TempDir>) -> TestGateway {
    let gateway = Gateway::bind(&settings).await.expect("gateway starts");
    let addrs = gateway.addresses();
    let node = gateway.node().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));
    TestGateway {
        addrs,
        node,
        stop: Some(stop),
        task: Some(task),
        _data: data,
    }
}

pub async fn start_default() -> TestGateway {
    let (settings, dir) = settings();
    start(settings, Some(dir)).await
}

pub fn token_for(user: &str, rooms: &[&str], valid_secs: i64) -> String {
    Signer::new(SECRET.as_bytes()).unwrap().sign(&Claims {
        user: user.into(),
        exp: token::now() + valid_secs,
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
    })
}

/// A hang guard for reads (not a timing assertion).
const READ_LIMIT: Duration = Duration::from_secs(20);

/// What both test clients share: messages read while waiting for another kind stay
/// queued, in order.
#[allow(async_fn_in_trait)]
pub trait Messages {
    /// Messages read but not yet taken.
    fn pending(&mut self) -> &mut std::collections::VecDeque<Value>;

    /// The next message from the socket; `None` when the server closed.
    async fn read_from_socket(&mut self) -> Option<Value>;

    /// The next message; `None` when the server closed.
    async fn recv(&mut self) -> Option<Value> {
        match self.pending().pop_front() {
            Some(message) => Some(message),
            None => self.read_from_socket().await,
        }
    }

    /// The first message of `kind` (others read meanwhile stay queued, in order).
    async fn expect(&mut self, kind: &str) -> Value {
        if let Some(at) = self.pending().iter().position(|m| m["type"] == kind) {
            return self.pending().remove(at).unwrap();
        }
        loop {
            let message = self
                .read_from_socket()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
            if message["type"] == kind {
                return message;
            }
            assert_ne!(
                message["type"], "error",
                "while waiting for {kind}: {message}"
            );
            self.pending().push_back(message);
        }
    }
}

impl Messages for TcpClient {
    fn pending(&mut self) -> &mut std::collections::VecDeque<Value> {
        &mut self.pending
    }
    async fn read_from_socket(&mut self) -> Option<Value> {
        self.read_message().await
    }
}

impl Messages for WsClient {
    fn pending(&mut self) -> &mut std::collections::VecDeque<Value> {
        &mut self.pending
    }
    async fn read_from_socket(&mut self) -> Option<Value> {
        self.read_message().await
    }
}

/// A client over TCP frames.
pub struct TcpClient {
    stream: TcpStream,
    /// Messages read while waiting for another kind, in order.
    pending: std::collections::VecDeque<Value>,
}

impl TcpClient {
    pub async fn connect(addr: SocketAddr) -> TcpClient {
        TcpClient {
            stream: TcpStream::connect(addr).await.unwrap(),
            pending: Default::default(),
        }
    }

    pub async fn send(&mut self, value: Value) {
        let text = value.to_string();
        let mut frame = (text.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(text.as_bytes());
        self.stream.write_all(&frame).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn read_message(&mut self) -> Option<Value> {
        tokio::time::timeout(READ_LIMIT, async {
            let mut header = [0u8; 4];
            self.stream.read_exact(&mut header).await.ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(serde_json::from_slice(&body).unwrap())
        })
        .await
        .expect("a reply within the hang guard")
    }

    pub async fn login(&mut self, token: &str) -> Value {
        self.send(json!({"type": "login", "token": token})).await;
        self.recv().await.unwrap()
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room})).await;
        self.expect("joined").await
    }

    /// Shuts down the sending side (a half-close); the client can still read.
    pub async fn shutdown_write(&mut self) {
        self.stream.shutdown().await.unwrap();
    }

    pub fn set_zero_linger(&self) {
        self.stream.set_zero_linger().unwrap();
    }
}

/// A minimal WebSocket client (RFC 6455: masked frames, text messages).
pub struct WsClient {
    stream: TcpStream,
    pending: std::collections::VecDeque<Value>,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> WsClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "accept key: {head}"
        );
        WsClient {
            stream,
            pending: Default::default(),
        }
    }

    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], fin: bool) {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    pub async fn send(&mut self, value: Value) {
        self.send_frame(0x1, value.to_string().as_bytes(), true)
            .await;
    }

    /// The next frame from the server: (opcode, payload); `None` when closed.
    pub async fn recv_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(READ_LIMIT, async {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.ok()?;
            assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.stream.read_exact(&mut n).await.ok()?;
                    u16::from_be_bytes(n) as usize
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.stream.read_exact(&mut n).await.ok()?;
                    u64::from_be_bytes(n) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some((head[0] & 0x0f, payload))
        })
        .await
        .expect("a frame within the hang guard")
    }

    /// The next JSON message from the socket (skipping pongs).
    async fn read_message(&mut self) -> Option<Value> {
        loop {
            let (opcode, payload) = self.recv_frame().await?;
            match opcode {
                0x1 => return Some(serde_json::from_slice(&payload).unwrap()),
                0xA => continue,
                0x8 => return None,
                other => panic!("unexpected opcode {other}"),
            }
        }
    }
}

/// Polls `condition` until it holds (a hang guard of 20 s, not a timing assertion).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(unused_imports)]
pub use serde_json::json as j;

pub fn database_url() -> String {
    std::env::var("TETHERNET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("TETHERNET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh PostgreSQL database, dropped on drop.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let admin_url = database_url();
        let name = format!("tethernet_gw_{}_{}", std::process::id(), fastrand::u32(..));
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL is needed at {admin_url} (TETHERNET_TEST_DATABASE_URL): {e}")
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').unwrap().0;
        TestDatabase {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }

    pub async fn drop_now(self) {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await;
    }
}

/// A private redis-server on its own port, killed on drop.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start(port: u16) -> PrivateRedis {
        let binary =
            std::env::var("TETHERNET_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {binary} (TETHERNET_TEST_REDIS_SERVER): {e}"));
        let redis = PrivateRedis {
            port,
            child: Some(child),
        };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {port} did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the [`FaultProxy`] does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards both ways.
    Pass,
    /// Holds everything (a database that stopped answering, or a black-holed network):
    /// connections stay open and accepted, bytes wait in the sockets until `Pass`.
    Stall,
    /// Closes every proxied connection and each new one at once (a database that is
    /// down).
    Cut,
}

/// Most connections the proxy relays at once (more are closed at accept).
const MAX_PROXIED: usize = 64;

/// A TCP proxy on a loopback port in front of a real service, for fault tests: real
/// sockets, relays owned by the proxy's task (a `JoinSet`, aborted when the proxy is
/// dropped), at most [`MAX_PROXIED`] connections.
pub struct FaultProxy {
    pub addr: SocketAddr,
    link: tokio::sync::watch::Sender<Link>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (link, watch) = tokio::sync::watch::channel(Link::Pass);
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn(proxy_accept(listener, upstream, watch, open.clone()));
        FaultProxy {
            addr,
            link,
            open,
            task,
        }
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Connections relayed now.
    pub fn connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_accept(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
    watch: tokio::sync::watch::Receiver<Link>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut relays = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if *watch.borrow() == Link::Cut || relays.len() >= MAX_PROXIED {
                    drop(client);
                    continue;
                }
                relays.spawn(relay(client, upstream, watch.clone(), open.clone()));
            }
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// Counts a relayed connection while it lives.
struct Open(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut watch: tokio::sync::watch::Receiver<Link>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    // A stalled service does not even complete its handshake: connect only when passing.
    if !passing(&mut watch).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _open = Open(open);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either side ending ends both (the halves drop: both sockets close).
    tokio::select! {
        () = pump(client_read, server_write, watch.clone()) => {}
        () = pump(server_read, client_write, watch) => {}
    }
}

/// Waits while stalled; false once cut.
async fn passing(watch: &mut tokio::sync::watch::Receiver<Link>) -> bool {
    loop {
        match *watch.borrow_and_update() {
            Link::Pass => return true,
            Link::Cut => return false,
            Link::Stall => {}
        }
        if watch.changed().await.is_err() {
            return false;
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut watch: tokio::sync::watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !passing(&mut watch).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = watch.changed() => continue,
        };
        // Bytes read just as the link stalled wait for it too.
        if !passing(&mut watch).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The address of the PostgreSQL server a URL names.
pub async fn postgres_addr(url: &str) -> SocketAddr {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url).unwrap();
    let host = options.get_host().to_owned();
    let mut addrs = tokio::net::lookup_host((host, options.get_port()))
        .await
        .unwrap();
    addrs
        .next()
        .unwrap_or_else(|| panic!("cannot resolve the host of {url}"))
}

/// `url` with its host and port replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let start = url.find("://").expect("a URL") + 3;
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host_start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    format!("{}{addr}{}", &url[..host_start], &url[end..])
}

/// A plain HTTP/1.1 GET with extra header lines: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(READ_LIMIT, stream.read_to_end(&mut response))
        .await
        .expect("an HTTP answer within the hang guard")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

/// One gauge or counter from the gateway's `/metrics`.
pub async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let (status, text) = http_get(admin, "/metrics", &[]).await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} on /metrics"))
}

/// The database pool on `/metrics`: (connections, idle, in use).
pub async fn pool_figures(admin: SocketAddr) -> (u64, u64, u64) {
    (
        metric(admin, "gateway_db_pool_connections").await,
        metric(admin, "gateway_db_pool_idle").await,
        metric(admin, "gateway_db_pool_in_use").await,
    )
}

/// The next reply that is not a push (`message`, `gap`); pushes read meanwhile are kept.
pub async fn answer<C: Messages>(client: &mut C) -> Value {
    if let Some(at) = client
        .pending()
        .iter()
        .position(|m| m["type"] != "message" && m["type"] != "gap")
    {
        return client.pending().remove(at).unwrap();
    }
    loop {
        let message = client
            .read_from_socket()
            .await
            .expect("closed while waiting for a reply");
        if message["type"] == "message" || message["type"] == "gap" {
            client.pending().push_back(message);
        } else {
            return message;
        }
    }
}
