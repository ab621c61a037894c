//! tethernet-soak: drive a Tethernet server from outside, watch it through its admin
//! endpoints, and say whether it came back to its memory baseline.
//!
//! Phases: warm-up → baseline snapshot → load → drain (clients closed) → settle (wait,
//! bounded, for the live counters to come back) → final snapshot → verdict. The verdict
//! holds when every live counter (connections, owned tasks, tethered values, bytes by
//! kind; for the gateway also rooms, bus subscriptions and database connections in use)
//! is back to its baseline exactly, no leak was reported, allocator and resident memory
//! are back within the stated tolerance, and the server still answers.
//!
//! The gateway's `fanout` scenario is also a benchmark (see [`fanout`]): deliveries per
//! second and delivery latency to every member of one room, and a verdict that fails on
//! any missing or duplicated delivery.

#![warn(missing_docs)]
// The one exception, `fdlimit::nofile_limit`, allows it for two libc calls.
#![deny(unsafe_code)]

pub mod fanout;
mod fdlimit;

pub use fanout::{FanoutReport, FanoutSettings};
pub use fdlimit::{check_fd_limit, fds_needed, raise_fd_limit, FdLimit, FD_HEADROOM};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Which protocol the target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// 4-byte big-endian length + payload, echoed back (the `echo` example).
    Echo,
    /// The gateway's TCP protocol (tokens minted with `--secret`).
    Gateway,
}

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Connect, one exchange, close (one in five closed abruptly with RST).
    Churn,
    /// Many messages on long-lived connections (gateway: into a few busy rooms).
    Storm,
    /// Clients that send and stop reading.
    Slow,
    /// Malformed input: huge length headers, truncated frames, slowloris, bad JSON/UTF-8.
    Bad,
    /// All of the above at once.
    Mixed,
    /// Hold the clients' connections idle; report resident bytes per connection.
    Idle,
    /// Gateway only: every client joins one room, a few send; deliveries per second,
    /// delivery latency, and every message delivered exactly once to every member.
    Fanout,
}

/// A soak run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's address.
    pub target: SocketAddr,
    /// Its admin server's address.
    pub admin: SocketAddr,
    /// Its protocol.
    pub protocol: Protocol,
    /// The load.
    pub scenario: Scenario,
    /// Concurrent clients.
    pub clients: usize,
    /// How long the load lasts.
    pub duration: Duration,
    /// At most this long for counters to come back after the load.
    pub settle: Duration,
    /// A warm-up load before the baseline (zero: a few exchanges only): the same
    /// clients for this long, then a drain and a settle, so that what a first load
    /// brings in for good (caches, allocator slabs, the binary's pages) is part of the
    /// baseline and the verdict asks whether more load grows it further.
    pub warmup: Duration,
    /// Where to write `report.json` and `chart.svg`.
    pub report: Option<PathBuf>,
    /// The gateway's token secret (gateway protocol).
    pub secret: Option<String>,
    /// Print progress lines.
    pub progress: bool,
    /// Spread client connections over this many loopback source addresses (127.0.0.1,
    /// 127.0.0.2, ...): one address gives at most ~28,000 concurrent connections to one
    /// port (the ephemeral port range).
    pub source_addresses: u8,
    /// The fan-out scenario's senders, rate and message cap.
    pub fanout: FanoutSettings,
}

/// Connects client `index` to the target, from its loopback source address.
async fn connect(config: &Config, index: usize) -> std::io::Result<TcpStream> {
    if config.source_addresses <= 1 {
        return TcpStream::connect(config.target).await;
    }
    let host = 1 + (index % usize::from(config.source_addresses)) as u8;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, host], 0)))?;
    socket.connect(config.target).await
}

/// Allocator bytes may end this far above baseline (fraction of baseline, at least 4 MiB).
pub const ALLOCATED_TOLERANCE: (f64, u64) = (0.10, 4 << 20);
/// Resident bytes may end this far above baseline (fraction of baseline, at least 16 MiB):
/// allocators keep freed pages mapped for reuse.
pub const RESIDENT_TOLERANCE: (f64, u64) = (0.25, 16 << 20);

/// What the admin endpoints say at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    /// Counters that must come back exactly.
    pub live: BTreeMap<String, u64>,
    /// Leak reports so far.
    pub leaks_total: u64,
    /// Allocator bytes allocated, if reported.
    pub allocated: Option<u64>,
    /// Process resident bytes, if reported.
    pub resident: Option<u64>,
}

/// One check of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// At baseline.
    pub baseline: String,
    /// At the end.
    pub last: String,
    /// Whether it holds.
    pub ok: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The protocol.
    pub protocol: Protocol,
    /// The scenario.
    pub scenario: Scenario,
    /// Clients.
    pub clients: usize,
    /// Operations completed (exchanges, messages, bad inputs sent).
    pub operations: u64,
    /// Client-side errors (refused connections, resets where none was expected).
    pub client_errors: u64,
    /// Phase boundaries: (name, milliseconds since start).
    pub phases: Vec<(String, u64)>,
    /// Snapshots, about one per second.
    pub samples: Vec<Snapshot>,
    /// The checks.
    pub checks: Vec<Check>,
    /// For the idle scenario: resident bytes per idle connection.
    pub idle_bytes_per_connection: Option<u64>,
    /// For the fan-out scenario: what it measured.
    pub fanout: Option<FanoutReport>,
    /// All checks hold.
    pub passed: bool,
}

/// A plain HTTP GET (the admin server is local and answers small documents).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "admin connect timed out")
        })??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "admin read timed out"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!(
            "admin {path}: unexpected response {}",
            text.lines().next().unwrap_or("")
        ))),
    }
}

/// Reads `/debug/memory` and the gateway's own gauges from `/metrics`.
pub async fn snapshot(admin: SocketAddr, started: Instant) -> std::io::Result<Snapshot> {
    let memory: serde_json::Value = serde_json::from_str(&http_get(admin, "/debug/memory").await?)
        .map_err(std::io::Error::other)?;
    let mut live = BTreeMap::new();
    live.insert(
        "connections".to_owned(),
        memory["connections"]["active"].as_u64().unwrap_or(0),
    );
    live.insert(
        "owned_tasks".to_owned(),
        memory["owned_tasks"].as_u64().unwrap_or(0),
    );
    live.insert(
        "tethered_resources".to_owned(),
        memory["tethered_resources"].as_u64().unwrap_or(0),
    );
    if let Some(bytes) = memory["bytes"].as_object() {
        for (kind, value) in bytes {
            if kind != "total" {
                live.insert(format!("bytes.{kind}"), value.as_u64().unwrap_or(0));
            }
        }
    }
    let metrics = http_get(admin, "/metrics").await?;
    for line in metrics.lines() {
        for name in [
            "gateway_rooms_active",
            "gateway_bus_subscriptions",
            "gateway_db_pool_in_use",
        ] {
            if let Some(value) = line
                .strip_prefix(name)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
            {
                live.insert(name.to_owned(), value as u64);
            }
        }
    }
    Ok(Snapshot {
        t_ms: started.elapsed().as_millis() as u64,
        live,
        leaks_total: memory["leaks_total"].as_u64().unwrap_or(0),
        allocated: memory["allocator"]["allocated"].as_u64(),
        resident: memory["process"]["resident_bytes"].as_u64(),
    })
}

/// Client-side tallies.
#[derive(Default)]
struct Tally {
    operations: AtomicU64,
    errors: AtomicU64,
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Messages a client sends for one exchange, and how many replies it waits for.
fn exchange(protocol: Protocol, token: &str, room: &str, n: u64) -> (Vec<u8>, usize) {
    match protocol {
        Protocol::Echo => {
            let payload = vec![b'x'; 16 + (n as usize % 500)];
            (frame(&payload), 1)
        }
        Protocol::Gateway => {
            let mut out = frame(
                serde_json::json!({"type": "login", "token": token})
                    .to_string()
                    .as_bytes(),
            );
            out.extend(frame(
                serde_json::json!({"type": "join", "room": room})
                    .to_string()
                    .as_bytes(),
            ));
            out.extend(frame(
                serde_json::json!({"type": "send", "room": room, "body": format!("m{n}")})
                    .to_string()
                    .as_bytes(),
            ));
            (out, 3)
        }
    }
}

/// One client of `scenario` until `deadline`.
async fn client(
    config: Arc<Config>,
    scenario: Scenario,
    index: usize,
    token: Arc<str>,
    tally: Arc<Tally>,
    deadline: Instant,
) {
    let room = format!("soak-{}", index % 10);
    let busy_room = format!("soak-busy-{}", index % 3);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        if scenario == Scenario::Fanout {
            // Run by `fanout::run_fanout`, never as independent clients.
            return;
        }
        let result: std::io::Result<()> = async {
            let mut stream = connect(&config, index).await?;
            match scenario {
                Scenario::Fanout => {}
                Scenario::Churn | Scenario::Mixed | Scenario::Idle => {
                    let (bytes, replies) = exchange(config.protocol, &token, &room, n);
                    stream.write_all(&bytes).await?;
                    for _ in 0..replies {
                        read_frame(&mut stream).await?;
                    }
                    tally.operations.fetch_add(1, Ordering::Relaxed);
                    if n % 5 == 0 {
                        stream.set_zero_linger()?;
                    }
                }
                Scenario::Storm => {
                    let (login, replies) = exchange(config.protocol, &token, &busy_room, n);
                    stream.write_all(&login).await?;
                    for _ in 0..replies {
                        read_frame(&mut stream).await?;
                    }
                    let (mut reader, mut writer) = stream.into_split();
                    let end = deadline.min(Instant::now() + Duration::from_secs(5));
                    let protocol = config.protocol;
                    let room = busy_room.clone();
                    let writing = async move {
                        let mut i = 0u64;
                        while Instant::now() < end {
                            i += 1;
                            let bytes = match protocol {
                                Protocol::Echo => frame(&[b's'; 64]),
                                Protocol::Gateway => frame(serde_json::json!({"type": "send", "room": room, "body": format!("storm {i}")}).to_string().as_bytes()),
                            };
                            writer.write_all(&bytes).await?;
                            if i % 16 == 0 {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                        writer.shutdown().await?;
                        Ok::<u64, std::io::Error>(i)
                    };
                    let reading = async {
                        let mut got = 0u64;
                        let mut header = [0u8; 4];
                        let mut body = Vec::new();
                        loop {
                            match reader.read_exact(&mut header).await {
                                Ok(_) => {}
                                Err(_) => return got,
                            }
                            body.resize(u32::from_be_bytes(header) as usize, 0);
                            if reader.read_exact(&mut body).await.is_err() {
                                return got;
                            }
                            got += 1;
                        }
                    };
                    let (sent, received) = tokio::join!(writing, reading);
                    tally.operations.fetch_add(sent? + received, Ordering::Relaxed);
                }
                Scenario::Slow => {
                    let (login, _) = exchange(config.protocol, &token, &busy_room, n);
                    stream.write_all(&login).await?;
                    let big = match config.protocol {
                        Protocol::Echo => frame(&vec![b'z'; 16 * 1024]),
                        Protocol::Gateway => frame(serde_json::json!({"type": "history", "room": busy_room, "limit": 200}).to_string().as_bytes()),
                    };
                    // Send, never read; then vanish.
                    for _ in 0..64 {
                        if tokio::time::timeout(Duration::from_millis(200), stream.write_all(&big)).await.is_err() {
                            break;
                        }
                        tally.operations.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    stream.set_zero_linger()?;
                }
                Scenario::Bad => {
                    let bad: Vec<u8> = match n % 5 {
                        0 => vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
                        1 => {
                            let mut truncated = (1000u32).to_be_bytes().to_vec();
                            truncated.extend_from_slice(&[7; 10]);
                            truncated
                        }
                        2 => frame(b"{not json"),
                        3 => frame(&[0xc3, 0x28, 0xa0, 0xa1]),
                        _ => {
                            // Slowloris: a header trickled a byte at a time.
                            for byte in (64u32).to_be_bytes() {
                                stream.write_all(&[byte]).await?;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Vec::new()
                        }
                    };
                    stream.write_all(&bad).await?;
                    tally.operations.fetch_add(1, Ordering::Relaxed);
                    let mut sink = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() && scenario != Scenario::Bad && scenario != Scenario::Slow {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn within(baseline: Option<u64>, last: Option<u64>, (fraction, floor): (f64, u64)) -> bool {
    match (baseline, last) {
        (Some(base), Some(last)) => last <= base + ((base as f64 * fraction) as u64).max(floor),
        _ => true,
    }
}

/// Whether the server still answers one exchange.
async fn answers(config: &Config, token: &str) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(config.target).await?;
        let bytes = match config.protocol {
            Protocol::Echo => frame(b"still there?"),
            Protocol::Gateway => {
                let mut out = frame(
                    serde_json::json!({"type": "login", "token": token})
                        .to_string()
                        .as_bytes(),
                );
                out.extend(frame(br#"{"type":"ping"}"#));
                out
            }
        };
        stream.write_all(&bytes).await?;
        let first = read_frame(&mut stream).await?;
        Ok::<bool, std::io::Error>(match config.protocol {
            Protocol::Echo => first == b"still there?",
            Protocol::Gateway => {
                let second = read_frame(&mut stream).await?;
                String::from_utf8_lossy(&second).contains("pong")
            }
        })
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), probe).await,
        Ok(Ok(true))
    )
}

/// Runs the soak and returns its report (written to `config.report` if set).
pub async fn run(config: Config) -> std::io::Result<Report> {
    let config = Arc::new(config);
    let started = Instant::now();
    let token: Arc<str> = match (config.protocol, &config.secret) {
        (Protocol::Gateway, Some(secret)) => {
            let signer = tethernet_gateway::token::Signer::new(secret.as_bytes())
                .map_err(std::io::Error::other)?;
            signer
                .sign(&tethernet_gateway::token::Claims {
                    user: "soak".into(),
                    exp: tethernet_gateway::token::now() + 24 * 3600,
                    rooms: vec!["*".into()],
                })
                .into()
        }
        (Protocol::Gateway, None) => {
            return Err(std::io::Error::other(
                "the gateway protocol needs --secret (the gateway's token secret)",
            ))
        }
        (Protocol::Echo, _) => "".into(),
    };
    if config.scenario == Scenario::Fanout && config.protocol != Protocol::Gateway {
        return Err(std::io::Error::other(
            "the fanout scenario needs --protocol gateway",
        ));
    }
    let mut phases = vec![("warm-up".to_owned(), 0)];
    let mut samples = Vec::new();
    let log = |line: String| {
        if config.progress {
            println!("{line}");
        }
    };
    // Warm-up: a few exchanges so lazily made state exists before the baseline.
    for _ in 0..3 {
        answers(&config, &token).await;
    }
    if !config.warmup.is_zero() && config.scenario.uses_clients() {
        warm_up(&config, &token, started, &mut samples, &log).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = snapshot(config.admin, started).await?;
    samples.push(baseline.clone());
    phases.push(("load".to_owned(), started.elapsed().as_millis() as u64));
    log(format!("baseline: {:?}", baseline.live));

    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + config.duration;
    let mut clients = JoinSet::new();
    let mut idle_bytes = None;
    let mut fanout_report = None;
    if config.scenario == Scenario::Fanout {
        let progress = Arc::new(fanout::FanoutProgress::default());
        let mut task = tokio::spawn(fanout::run_fanout(
            config.clone(),
            token.clone(),
            progress.clone(),
        ));
        let mut ticks = 0u64;
        let report = loop {
            tokio::select! {
                done = &mut task => break done.map_err(std::io::Error::other)?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            ticks += 1;
            let now = snapshot(config.admin, started).await?;
            log(format!(
                "{:>4}s {:<8}  joined {:>6}/{}  sent {:>8}  deliveries {:>10}  errors {:>4}  connections {:>6}  resident {}",
                ticks,
                progress.phase_name(),
                progress.joined.load(Ordering::Relaxed),
                config.clients,
                progress.sent.load(Ordering::Relaxed),
                progress.deliveries.load(Ordering::Relaxed),
                progress.errors.load(Ordering::Relaxed),
                now.live.get("connections").copied().unwrap_or(0),
                now.resident.map_or("-".to_owned(), mib)
            ));
            samples.push(now);
        };
        tally
            .operations
            .fetch_add(report.deliveries, Ordering::Relaxed);
        tally
            .errors
            .fetch_add(progress.errors.load(Ordering::Relaxed), Ordering::Relaxed);
        fanout_report = Some(report);
    } else if config.scenario == Scenario::Idle {
        let mut held = Vec::new();
        for index in 0..config.clients {
            // Only connections that completed their exchange are held and counted: one the
            // server refused (a per-address cap, say) would otherwise make the figure per
            // connection look smaller than it is.
            let answered = async {
                let mut stream = connect(&config, index).await?;
                let (bytes, replies) = exchange(config.protocol, &token, "soak-idle", 1);
                stream.write_all(&bytes).await?;
                for _ in 0..replies {
                    read_frame(&mut stream).await?;
                }
                std::io::Result::Ok(stream)
            };
            match answered.await {
                Ok(stream) => held.push(stream),
                Err(_) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let loaded = snapshot(config.admin, started).await?;
        if let (Some(before), Some(after)) = (baseline.resident, loaded.resident) {
            idle_bytes = Some(after.saturating_sub(before) / held.len().max(1) as u64);
        }
        samples.push(loaded);
        tally
            .operations
            .fetch_add(held.len() as u64, Ordering::Relaxed);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            samples.push(snapshot(config.admin, started).await?);
        }
        drop(held);
    } else {
        spawn_clients(&config, &token, &tally, deadline, &mut clients);
        let total = config.duration.as_secs().max(1);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = snapshot(config.admin, started).await?;
            let done =
                (total - deadline.saturating_duration_since(Instant::now()).as_secs()).min(total);
            let bar: String = (0..20)
                .map(|i| if i * total < done * 20 { '#' } else { '.' })
                .collect();
            log(format!(
                "[{bar}] {done:>3}/{total}s  connections {:>6}  ops {:>8}  errors {:>4}  resident {}",
                now.live.get("connections").copied().unwrap_or(0),
                tally.operations.load(Ordering::Relaxed),
                tally.errors.load(Ordering::Relaxed),
                now.resident.map_or("-".to_owned(), mib)
            ));
            samples.push(now);
        }
    }
    phases.push(("drain".to_owned(), started.elapsed().as_millis() as u64));
    // Clients stop by themselves at the deadline (each step is bounded); wait for them.
    while clients.join_next().await.is_some() {}
    phases.push(("settle".to_owned(), started.elapsed().as_millis() as u64));
    let settle_deadline = Instant::now() + config.settle;
    let mut last = snapshot(config.admin, started).await?;
    // Counters must come back exactly; memory within tolerance (allocators return freed
    // pages to the system on a timer: jemalloc's decay is about 10 s).
    let settled = |last: &Snapshot| {
        last.live == baseline.live
            && within(baseline.allocated, last.allocated, ALLOCATED_TOLERANCE)
            && within(baseline.resident, last.resident, RESIDENT_TOLERANCE)
    };
    while !settled(&last) && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = snapshot(config.admin, started).await?;
        samples.push(last.clone());
    }
    // Let allocator figures settle too (a second more), then the final snapshot.
    tokio::time::sleep(Duration::from_secs(1)).await;
    last = snapshot(config.admin, started).await?;
    samples.push(last.clone());
    phases.push(("final".to_owned(), started.elapsed().as_millis() as u64));

    let mut checks = Vec::new();
    for (name, base) in &baseline.live {
        let end = last.live.get(name).copied().unwrap_or(0);
        checks.push(Check {
            name: name.clone(),
            baseline: base.to_string(),
            last: end.to_string(),
            ok: end == *base,
        });
    }
    checks.push(Check {
        name: "leak reports".into(),
        baseline: baseline.leaks_total.to_string(),
        last: last.leaks_total.to_string(),
        ok: last.leaks_total == baseline.leaks_total,
    });
    checks.push(memory_check(
        "allocated",
        baseline.allocated,
        last.allocated,
        ALLOCATED_TOLERANCE,
    ));
    checks.push(memory_check(
        "resident",
        baseline.resident,
        last.resident,
        RESIDENT_TOLERANCE,
    ));
    if let Some(fanout) = &fanout_report {
        checks.extend(fanout_checks(fanout));
    }
    let alive = answers(&config, &token).await;
    checks.push(Check {
        name: "server answers".into(),
        baseline: "yes".into(),
        last: if alive { "yes" } else { "no" }.into(),
        ok: alive,
    });
    let passed = checks.iter().all(|c| c.ok);
    let report = Report {
        protocol: config.protocol,
        scenario: config.scenario,
        clients: config.clients,
        operations: tally.operations.load(Ordering::Relaxed),
        client_errors: tally.errors.load(Ordering::Relaxed),
        phases,
        samples,
        checks,
        idle_bytes_per_connection: idle_bytes,
        fanout: fanout_report,
        passed,
    };
    if let Some(dir) = &config.report {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(dir.join("chart.svg"), chart(&report))?;
    }
    Ok(report)
}

/// The fan-out scenario's checks: every member joined, every send acknowledged, every
/// member received every message exactly once.
fn fanout_checks(fanout: &FanoutReport) -> Vec<Check> {
    let check = |name: &str, expected: String, got: String, ok: bool| Check {
        name: name.into(),
        baseline: expected,
        last: got,
        ok,
    };
    vec![
        check(
            "fanout: members joined",
            fanout.members.to_string(),
            fanout.joined.to_string(),
            fanout.joined == fanout.members,
        ),
        check(
            "fanout: messages sent (acknowledged)",
            "> 0".into(),
            fanout.sent.to_string(),
            fanout.sent > 0,
        ),
        check(
            "fanout: sends refused or unacknowledged",
            "0".into(),
            fanout.send_failures.to_string(),
            fanout.send_failures == 0,
        ),
        check(
            "fanout: deliveries (members x messages)",
            fanout.expected.to_string(),
            fanout.deliveries.to_string(),
            fanout.deliveries == fanout.expected,
        ),
        check(
            "fanout: missing deliveries",
            "0".into(),
            fanout.missing.to_string(),
            fanout.missing == 0,
        ),
        check(
            "fanout: duplicated deliveries",
            "0".into(),
            fanout.duplicates.to_string(),
            fanout.duplicates == 0,
        ),
        check(
            "fanout: members disconnected early",
            "0".into(),
            fanout.members_lost.to_string(),
            fanout.members_lost == 0,
        ),
    ]
}

impl Scenario {
    /// Whether the scenario is run by [`client`] tasks (not idle or fanout).
    fn uses_clients(self) -> bool {
        !matches!(self, Scenario::Idle | Scenario::Fanout)
    }
}

/// Starts the scenario's clients, each bounded by `deadline`, owned by `clients`.
fn spawn_clients(
    config: &Arc<Config>,
    token: &Arc<str>,
    tally: &Arc<Tally>,
    deadline: Instant,
    clients: &mut JoinSet<()>,
) {
    let scenarios: Vec<Scenario> = match config.scenario {
        Scenario::Mixed => vec![
            Scenario::Churn,
            Scenario::Storm,
            Scenario::Slow,
            Scenario::Bad,
        ],
        other => vec![other],
    };
    for index in 0..config.clients {
        let scenario = scenarios[index % scenarios.len()];
        clients.spawn(client(
            config.clone(),
            scenario,
            index,
            token.clone(),
            tally.clone(),
            deadline,
        ));
    }
}

/// The warm-up load: the scenario's clients for `config.warmup`, then a wait (bounded by
/// `config.settle`) for the live counters to come back to zero, then one allocator decay
/// period (jemalloc's is 10 s) so that the baseline is taken at rest.
async fn warm_up(
    config: &Arc<Config>,
    token: &Arc<str>,
    started: Instant,
    samples: &mut Vec<Snapshot>,
    log: &impl Fn(String),
) -> std::io::Result<()> {
    let tally = Arc::new(Tally::default());
    let mut clients = JoinSet::new();
    spawn_clients(
        config,
        token,
        &tally,
        Instant::now() + config.warmup,
        &mut clients,
    );
    log(format!(
        "warm-up: {} clients for {}s",
        config.clients,
        config.warmup.as_secs()
    ));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            finished = clients.join_next() => if finished.is_none() { break },
            _ = every.tick() => samples.push(snapshot(config.admin, started).await?),
        }
    }
    let rest = Instant::now() + config.settle;
    loop {
        let now = snapshot(config.admin, started).await?;
        let at_rest = now.live.values().all(|value| *value == 0);
        samples.push(now);
        if at_rest || Instant::now() >= rest {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    Ok(())
}

/// A memory figure back within `tolerance` of its baseline.
fn memory_check(
    name: &str,
    baseline: Option<u64>,
    last: Option<u64>,
    tolerance: (f64, u64),
) -> Check {
    Check {
        name: format!(
            "{name} (within +{:.0}% or {})",
            tolerance.0 * 100.0,
            mib(tolerance.1)
        ),
        baseline: baseline.map_or("-".into(), mib),
        last: last.map_or("-".into(), mib),
        ok: within(baseline, last, tolerance),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The summary table.
pub fn summary(report: &Report) -> String {
    let mut out = format!(
        "{:?} / {:?}, {} clients: {} operations, {} client errors{}\n",
        report.protocol,
        report.scenario,
        report.clients,
        report.operations,
        report.client_errors,
        report
            .idle_bytes_per_connection
            .map_or(String::new(), |b| format!(
                ", {b} resident bytes per idle connection"
            ))
    );
    if let Some(fanout) = &report.fanout {
        out.push_str(&fanout::fanout_summary(fanout));
    }
    out.push_str(&format!(
        "{:<44} {:>14} {:>14}  {}\n",
        "check", "baseline", "final", "result"
    ));
    for check in &report.checks {
        out.push_str(&format!(
            "{:<44} {:>14} {:>14}  {}\n",
            check.name,
            check.baseline,
            check.last,
            if check.ok { "ok" } else { "FAIL" }
        ));
    }
    out.push_str(if report.passed {
        "verdict: PASS\n"
    } else {
        "verdict: FAIL\n"
    });
    out
}

/// An SVG chart of resident memory, allocated memory and connections over time, with
/// the phases marked.
pub fn chart(report: &Report) -> String {
    let (w, h, left, top, bottom) = (900.0, 360.0, 70.0, 30.0, 40.0);
    let t_max = report
        .samples
        .iter()
        .map(|s| s.t_ms)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: u64| left + (t as f64 / t_max) * (w - left - 20.0);
    let series = |f: &dyn Fn(&Snapshot) -> Option<u64>| -> (Vec<(u64, u64)>, u64) {
        let points: Vec<(u64, u64)> = report
            .samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t_ms, v)))
            .collect();
        let max = points.iter().map(|p| p.1).max().unwrap_or(1).max(1);
        (points, max)
    };
    let polyline = |points: &[(u64, u64)], max: u64, color: &str| {
        let coords: Vec<String> = points
            .iter()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    x(*t),
                    h - bottom - (*v as f64 / max as f64) * (h - top - bottom)
                )
            })
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            coords.join(" ")
        )
    };
    let (resident, rmax) = series(&|s| s.resident);
    let (allocated, _) = series(&|s| s.allocated);
    let (connections, cmax) = series(&|s| s.live.get("connections").copied());
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    svg.push_str(&format!(
        r#"<text x="{left}" y="18">{:?} / {:?}: resident (blue), allocated (orange) on the left axis up to {}; connections (green) up to {cmax}. Verdict: {}</text>"#,
        report.protocol,
        report.scenario,
        mib(rmax),
        if report.passed { "PASS" } else { "FAIL" }
    ));
    svg.push_str(&format!(
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#999"/>"##,
        h - bottom,
        w - 20.0,
        h - bottom
    ));
    for (name, t) in &report.phases {
        let px = x(*t);
        svg.push_str(&format!(r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{}" stroke="#bbb" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#555">{name}</text>"##, h - bottom, px + 3.0, h - bottom + 16.0));
    }
    svg.push_str(&polyline(&resident, rmax, "#2563eb"));
    svg.push_str(&polyline(&allocated, rmax, "#ea580c"));
    svg.push_str(&polyline(&connections, cmax, "#16a34a"));
    svg.push_str(&format!(
        r#"<text x="{}" y="{}">{:.0} s</text></svg>"#,
        w - 60.0,
        h - 6.0,
        t_max / 1000.0
    ));
    svg
}
