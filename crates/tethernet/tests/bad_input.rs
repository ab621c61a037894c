//! Bad input against the echo example, run as a real process (`target/<profile>/examples/echo`
//! with `--frame-timeout-ms 500 --max-connections-per-address 50 --max-frame 65536`, leak
//! detection paranoid), watched through its admin endpoints (`/debug/memory`, `/metrics`).
//!
//! Every test holds a well-behaved *bystander* connection (from 127.0.0.3) through its
//! attacks: after each attack the bystander and a fresh client both get an echo, and at
//! the end, once everyone has left, `/debug/memory` shows 0 connections, 0 bytes of every
//! kind, 0 owned tasks, 0 tethered values and no leak report (polled with a 20 s hang
//! guard, never timed).
//!
//! | input | what the server does |
//! |---|---|
//! | length header `0xFFFFFFF0` (~4 GiB) plus 1 KiB of its body, sent at once | closes at once, echoes nothing; not a frame timeout; bytes held stay < 1 MiB |
//! | the same header trickled one byte per write | closed once the 4th header byte arrives |
//! | a 65,532-byte frame (4 + 65,532 = `--max-frame`) then a header of 65,533 | echoes the frame whole, then closes (frames are bounded header included) |
//! | header of 65,537 (just over `--max-frame` as a payload) | closes at once, echoes nothing; not a frame timeout |
//! | a whole frame, then a truncated one, then EOF (half-close) | echoes the whole frame, then a clean close (FIN, not RST) |
//! | 2 bytes of a header, then EOF | clean close, nothing echoed |
//! | slowloris: a header, then one byte every 200 ms | closed after the 500 ms frame timeout; `tethernet_frame_timeouts_total` +1 |
//! | whole frames with 200 ms pauses between them | served: each is echoed (no partial frame is held, no timeout) |
//! | 200 connections held from 127.0.0.1 (cap 50 per address) | 50 served, 150 closed at once, `tethernet_connections_refused_per_address_total` +150; 127.0.0.2 still served meanwhile; 127.0.0.1 served again once the flood leaves |
//! | 100 peers (100 source addresses) sending 1–10 KiB of seeded random bytes, some with a plausible length header, a third of them reset (RST) | no crash; each closed or answered; counters back to 0 |

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{frame, read_frame};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// A hang guard for anything awaited (not a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(20);

/// The echo example's executable, next to this test's (`target/<profile>/deps/..`).
///
/// `cargo test --test bad_input` does not build examples (only an unfiltered `cargo test`
/// does), so it is built here first through the cargo running the test (a no-op when it is
/// fresh), once per test process.
fn echo_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lives in target/<profile>/deps");
        let binary = profile_dir
            .join("examples")
            .join(format!("echo{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var_os("CARGO")
            .filter(|cargo| !cargo.is_empty())
            .or_else(|| option_env!("CARGO").map(Into::into));
        if let Some(cargo) = cargo {
            let mut build = Command::new(cargo);
            build
                .args(["build", "--quiet", "-p", "tethernet", "--example", "echo"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            // What cargo set for running this test is not the environment of a build:
            // build scripts that watch such variables (ring's watches
            // CARGO_MANIFEST_DIR) would rebuild here, then again in the next `cargo test`.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                let set_for_tests = [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&&*name)
                    || name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_");
                if set_for_tests {
                    build.env_remove(&*name);
                }
            }
            match profile_dir.file_name().and_then(|name| name.to_str()) {
                Some("debug") | None => {}
                Some("release") => {
                    build.arg("--release");
                }
                Some(profile) => {
                    build.args(["--profile", profile]);
                }
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building the echo example failed");
        }
        assert!(
            binary.is_file(),
            "the echo example is not at {} (build it with `cargo build -p tethernet --example echo`)",
            binary.display()
        );
        binary
    })
}

/// The echo example as a child process, killed (and reaped) on drop.
struct EchoServer {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    /// Everything it printed (its log), shown when a test fails.
    output: Arc<Mutex<Vec<String>>>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let mut child = Command::new(echo_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--frame-timeout-ms",
                "500",
                "--max-connections-per-address",
                "50",
                "--max-frame",
                "65536",
                "--leak-detection",
                "paranoid",
            ])
            .env("RUST_LOG", "info")
            .env("TETHERNET_LEAK_GRACE_MS", "1000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the echo example starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (lines, printed) = mpsc::channel();
        // Both pipes are drained until the process ends, so it never blocks on them.
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (pipe, lines) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                Some(lines),
            ),
            (Box::new(stderr), None),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(lines) = &lines {
                        let _ = lines.send(line.clone());
                    }
                    output.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let mut server = EchoServer {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            output,
        };
        // "echo listening on ADDR (...)", then "admin on http://ADDR/ (...)".
        let address = |line: &str, prefix: &str| -> Option<SocketAddr> {
            let rest = line.strip_prefix(prefix)?;
            rest.split([' ', '/']).next()?.parse().ok()
        };
        let (mut listening, mut admin) = (None, None);
        while listening.is_none() || admin.is_none() {
            let line = printed
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the echo example did not start"));
            listening = listening.or_else(|| address(&line, "echo listening on "));
            admin = admin.or_else(|| address(&line, "admin on http://"));
        }
        server.addr = listening.unwrap();
        server.admin = admin.unwrap();
        server
    }

    /// A plain HTTP/1.1 GET on the admin server: the body of a 200 response.
    async fn get(&self, path: &str) -> String {
        let exchange = async {
            let mut stream = TcpStream::connect(self.admin).await.unwrap();
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.admin
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            response
        };
        let response = tokio::time::timeout(HANG_GUARD, exchange)
            .await
            .expect("the admin server answers within the hang guard");
        let response = String::from_utf8(response).expect("a UTF-8 response");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        }
    }

    /// `/debug/memory`.
    async fn memory(&self) -> Value {
        serde_json::from_str(&self.get("/debug/memory").await).expect("JSON from /debug/memory")
    }

    /// One counter or gauge from `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} on /metrics"))
    }

    /// Whether the process is still running.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A fresh client from `source` sends a frame and gets it back.
    async fn serves_from(&self, source: &str) {
        let mut client = connect_from(source, self.addr).await;
        assert!(
            echoes(&mut client, b"hello from a good client").await,
            "a fresh client from {source} was not served"
        );
    }

    /// Waits until the server has `open` connections left.
    async fn connections_down_to(&self, open: u64, after: &str) {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let memory = self.memory().await;
            if memory["connections"]["active"] == open {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {} connections after {after}",
                memory["connections"]["active"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the server holds nothing: no connection, 0 bytes of every kind, no
    /// owned task or tethered value, no leak report.
    async fn settled(&self, after: &str) {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let memory = self.memory().await;
            let bytes = memory["bytes"].as_object().expect("bytes by kind");
            let clear = memory["connections"]["active"] == 0
                && bytes.values().all(|n| n == 0)
                && memory["owned_tasks"] == 0
                && memory["tethered_resources"] == 0;
            if clear {
                assert_eq!(memory["leaks_total"], 0, "leak reports after {after}");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the live counters did not come back to zero after {after}: {memory:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
            let from = output.len().saturating_sub(40);
            eprintln!("--- the echo example's last output:");
            for line in &output[from..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Decodes a chunked HTTP body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Connects from a given loopback source address.
async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let stream = tokio::time::timeout(HANG_GUARD, socket.connect(server))
        .await
        .expect("connected within the hang guard")
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `payload` as a frame; true if it comes back unchanged.
async fn echoes(client: &mut TcpStream, payload: &[u8]) -> bool {
    if client.write_all(&frame(payload)).await.is_err() {
        return false;
    }
    let echoed = tokio::time::timeout(HANG_GUARD, read_frame(client))
        .await
        .expect("an answer or a close within the hang guard");
    echoed.as_deref() == Some(payload)
}

/// How the server ended a connection.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// End of stream (FIN).
    Closed,
    /// Connection reset (RST).
    Reset,
}

/// Reads until the server ends the connection: what it sent before, and how it ended.
async fn until_closed(client: &mut TcpStream) -> (Vec<u8>, Ended) {
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(HANG_GUARD, client.read(&mut buf))
            .await
            .expect("the server closed the connection within the hang guard");
        match read {
            Ok(0) => return (received, Ended::Closed),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (received, Ended::Reset),
        }
    }
}

/// The bystander: connected before the attacks, it must be served after each of them.
struct Bystander {
    stream: TcpStream,
    exchanges: u32,
}

impl Bystander {
    async fn connect(server: &EchoServer) -> Bystander {
        let mut bystander = Bystander {
            stream: connect_from("127.0.0.3", server.addr).await,
            exchanges: 0,
        };
        bystander.still_served("connecting").await;
        bystander
    }

    async fn still_served(&mut self, after: &str) {
        self.exchanges += 1;
        let payload = format!("bystander #{}", self.exchanges);
        assert!(
            echoes(&mut self.stream, payload.as_bytes()).await,
            "the bystander was not served after {after}"
        );
    }
}

/// After an attack: the bystander and a fresh client are served.
async fn still_serving(server: &EchoServer, bystander: &mut Bystander, after: &str) {
    bystander.still_served(after).await;
    server.serves_from("127.0.0.2").await;
}

#[tokio::test]
async fn a_length_header_claiming_4_gib_closes_at_once_and_buffers_nothing() {
    let server = EchoServer::start().await;
    let mut bystander = Bystander::connect(&server).await;
    let timeouts_before = server.metric("tethernet_frame_timeouts_total").await;

    // The header and the start of the body it announces, in one write; the write side
    // stays open: only the server can end this.
    let mut attacker = connect_from("127.0.0.1", server.addr).await;
    let mut claim = 0xFFFF_FFF0u32.to_be_bytes().to_vec();
    claim.extend_from_slice(&[0x5A; 1024]);
    attacker.write_all(&claim).await.unwrap();
    let (echoed, _) = until_closed(&mut attacker).await;
    assert!(
        echoed.is_empty(),
        "nothing is echoed: {} bytes",
        echoed.len()
    );
    let memory = server.memory().await;
    let held = memory["bytes"]["total"].as_u64().unwrap();
    assert!(
        held < 1 << 20,
        "the server holds {held} bytes after a 4 GiB claim: {memory:#}"
    );
    assert_eq!(
        server.metric("tethernet_frame_timeouts_total").await,
        timeouts_before,
        "closed for its header, not by the frame timeout"
    );
    still_serving(&server, &mut bystander, "a 4 GiB length header").await;

    // The same header, one byte per write.
    let mut attacker = connect_from("127.0.0.1", server.addr).await;
    for byte in 0xFFFF_FFF0u32.to_be_bytes() {
        attacker.write_all(&[byte]).await.unwrap();
    }
    let (echoed, _) = until_closed(&mut attacker).await;
    assert!(echoed.is_empty());
    still_serving(&server, &mut bystander, "a 4 GiB header trickled").await;

    drop(bystander);
    server.settled("4 GiB length headers").await;
}

#[tokio::test]
async fn a_length_header_just_over_max_frame_closes_the_connection() {
    let server = EchoServer::start().await;
    let mut bystander = Bystander::connect(&server).await;
    let timeouts_before = server.metric("tethernet_frame_timeouts_total").await;

    // `--max-frame` bounds the whole frame, header included: 4 + 65,532 is the largest.
    // It is echoed; the next header, one byte over, ends the connection.
    let mut client = connect_from("127.0.0.1", server.addr).await;
    let largest: Vec<u8> = (0..65_532u32).map(|i| (i % 251) as u8).collect();
    let mut input = frame(&largest);
    input.extend_from_slice(&65_533u32.to_be_bytes());
    let (mut reader, mut writer) = client.split();
    let (written, (received, _)) = tokio::join!(writer.write_all(&input), async {
        let mut received = Vec::new();
        let ended = loop {
            let mut buf = [0u8; 16 * 1024];
            let read = tokio::time::timeout(HANG_GUARD, reader.read(&mut buf))
                .await
                .expect("the server closed the connection within the hang guard");
            match read {
                Ok(0) => break Ended::Closed,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(_) => break Ended::Reset,
            }
        };
        (received, ended)
    });
    written.unwrap();
    assert_eq!(
        received,
        frame(&largest),
        "the largest frame is echoed whole, then the connection closes"
    );
    drop(client);
    still_serving(&server, &mut bystander, "a header of max frame - 3").await;

    // 65,537: over the limit whichever way it is counted.
    let mut attacker = connect_from("127.0.0.1", server.addr).await;
    attacker
        .write_all(&(65_537u32).to_be_bytes())
        .await
        .unwrap();
    attacker.write_all(&[1; 100]).await.unwrap();
    let (echoed, _) = until_closed(&mut attacker).await;
    assert!(echoed.is_empty());
    assert_eq!(
        server.metric("tethernet_frame_timeouts_total").await,
        timeouts_before,
        "closed for their headers, not by the frame timeout"
    );
    still_serving(&server, &mut bystander, "a header of max frame + 1").await;

    drop(bystander);
    server.settled("headers over --max-frame").await;
}

#[tokio::test]
async fn a_truncated_frame_then_half_close_is_closed_cleanly() {
    let server = EchoServer::start().await;
    let mut bystander = Bystander::connect(&server).await;

    // A whole frame, then a header announcing 100 bytes and 10 of them, then EOF: the
    // whole frame is answered, then the server closes (FIN: it read everything).
    let mut client = connect_from("127.0.0.1", server.addr).await;
    let mut input = frame(b"whole");
    input.extend_from_slice(&100u32.to_be_bytes());
    input.extend_from_slice(&[7; 10]);
    client.write_all(&input).await.unwrap();
    client.shutdown().await.unwrap();
    let (received, ended) = until_closed(&mut client).await;
    assert_eq!(received, frame(b"whole"));
    assert_eq!(ended, Ended::Closed, "a clean close");
    still_serving(&server, &mut bystander, "a truncated frame and EOF").await;

    // Half a header, then EOF.
    let mut client = connect_from("127.0.0.1", server.addr).await;
    client.write_all(&[0, 0]).await.unwrap();
    client.shutdown().await.unwrap();
    let (received, ended) = until_closed(&mut client).await;
    assert!(received.is_empty());
    assert_eq!(ended, Ended::Closed, "a clean close");
    still_serving(&server, &mut bystander, "half a header and EOF").await;

    drop(bystander);
    server.settled("truncated frames").await;
}

#[tokio::test]
async fn a_slowloris_peer_is_closed_after_the_frame_timeout() {
    let server = EchoServer::start().await;
    let mut bystander = Bystander::connect(&server).await;
    let timeouts_before = server.metric("tethernet_frame_timeouts_total").await;

    // A header announcing 64 bytes, then one byte every 200 ms (the attack's pace): every
    // read makes progress, the frame never completes within 500 ms.
    let mut slowloris = connect_from("127.0.0.1", server.addr).await;
    slowloris.write_all(&64u32.to_be_bytes()).await.unwrap();
    let (mut reader, mut writer) = slowloris.split();
    let trickle = async {
        for sent in 0..64u8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(&[sent]).await.is_err() {
                return;
            }
        }
    };
    let closed = async {
        let mut received = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(HANG_GUARD, reader.read(&mut buf))
                .await
                .expect("the slowloris peer was closed within the hang guard")
            {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    // The trickle stops when its writes fail, or once the server has closed.
    let received = tokio::select! {
        received = closed => received,
        () = trickle => panic!("the whole trickled frame was taken: no frame timeout"),
    };
    assert!(received.is_empty(), "nothing echoed to the slowloris peer");
    drop(slowloris);
    assert_eq!(
        server.metric("tethernet_frame_timeouts_total").await,
        timeouts_before + 1,
        "counted as a frame timeout"
    );
    still_serving(&server, &mut bystander, "a slowloris peer").await;

    // Whole frames with pauses between them hold no partial frame: served, not timed out.
    let mut patient = connect_from("127.0.0.1", server.addr).await;
    for i in 0..4u8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(echoes(&mut patient, &[i; 32]).await, "paced frame {i}");
    }
    drop(patient);
    assert_eq!(
        server.metric("tethernet_frame_timeouts_total").await,
        timeouts_before + 1
    );
    still_serving(&server, &mut bystander, "paced whole frames").await;

    drop(bystander);
    server.settled("a slowloris peer").await;
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_capped_and_others_are_served() {
    let server = EchoServer::start().await;
    let mut bystander = Bystander::connect(&server).await;
    let refused_before = server
        .metric("tethernet_connections_refused_per_address_total")
        .await;

    // 200 connections from 127.0.0.1, all held; then each tries an echo.
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(connect_from("127.0.0.1", server.addr).await);
    }
    let mut tries = JoinSet::new();
    for (i, mut stream) in flood.into_iter().enumerate() {
        tries.spawn(async move {
            let payload = format!("flood #{i}");
            let served = echoes(&mut stream, payload.as_bytes()).await;
            if !served {
                // A refused one was closed by the server, not left hanging.
                let (received, _) = until_closed(&mut stream).await;
                assert!(received.is_empty());
            }
            (served, stream)
        });
    }
    let mut held = Vec::new();
    let mut served = 0;
    while let Some(tried) = tries.join_next().await {
        let (ok, stream) = tried.expect("a flood connection's task");
        served += usize::from(ok);
        held.push(stream);
    }
    assert_eq!(served, 50, "the per-address cap admits 50");
    assert_eq!(
        server
            .metric("tethernet_connections_refused_per_address_total")
            .await,
        refused_before + 150,
        "the 150 over the cap are counted"
    );

    // While the flood holds its 50: other addresses are served, 127.0.0.1 is not.
    still_serving(&server, &mut bystander, "a connection flood").await;
    let mut newcomer = connect_from("127.0.0.1", server.addr).await;
    assert!(
        !echoes(&mut newcomer, b"one more").await,
        "127.0.0.1 is at its cap"
    );
    assert_eq!(
        server
            .metric("tethernet_connections_refused_per_address_total")
            .await,
        refused_before + 151
    );

    // The flood leaves (half of it with RST); 127.0.0.1 has its allowance back.
    for (i, stream) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            stream.set_zero_linger().unwrap();
        }
    }
    drop(newcomer);
    server.connections_down_to(1, "the flood left").await;
    server.serves_from("127.0.0.1").await;
    still_serving(&server, &mut bystander, "the flood left").await;

    drop(bystander);
    server.settled("a connection flood").await;
}

#[tokio::test]
async fn random_garbage_from_many_peers_never_crashes_the_server() {
    let mut server = EchoServer::start().await;
    let mut bystander = Bystander::connect(&server).await;
    let mut rng = fastrand::Rng::with_seed(0x7E7E_BAD1_0000_0007);

    let mut peers = JoinSet::new();
    for peer in 0..100u32 {
        let mut garbage = vec![0u8; rng.usize(1024..=10 * 1024)];
        rng.fill(&mut garbage);
        if rng.bool() {
            // A plausible length header: the garbage is framed, maybe echoed, maybe cut.
            garbage[..4].copy_from_slice(&rng.u32(0..=65_532).to_be_bytes());
        }
        let reset = rng.u8(0..3) == 0;
        let addr = server.addr;
        peers.spawn(async move {
            // One source address each: the per-address cap is not what this tests.
            let source = format!("127.0.1.{}", peer + 1);
            let mut stream = connect_from(&source, addr).await;
            // The server may close before taking it all: write errors are expected.
            let _ = stream.write_all(&garbage).await;
            if reset {
                stream.set_zero_linger().unwrap();
                drop(stream);
            } else {
                let _ = stream.shutdown().await;
                until_closed(&mut stream).await;
            }
        });
    }
    while let Some(peer) = peers.join_next().await {
        peer.expect("a garbage peer's task");
    }
    assert!(server.running(), "the server survived the garbage");
    still_serving(&server, &mut bystander, "random garbage").await;

    drop(bystander);
    server.settled("random garbage").await;
    assert!(server.running());
}
