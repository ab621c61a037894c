//! The admin endpoints against a running Tethernet server with live connections: each
//! answers with well-formed content (Prometheus text that parses, JSON with the
//! documented fields, the dashboard page), over real sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tethernet::codec::LengthFieldCodec;
use tethernet::{Context, Frame, Handler, Pipeline, Result, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

struct Echo;

impl Handler<Frame, Frame> for Echo {
    type Next = Frame;
    async fn read(&mut self, ctx: &mut Context<'_, Frame, Frame>, f: Frame) -> Result<()> {
        ctx.write(f).await
    }
}

/// A plain HTTP/1.1 GET: (status, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let body = response[split + 4..].to_vec();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "bodies are sent whole"
    );
    (status, content_type, body)
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, content_type, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}");
    assert!(
        content_type.starts_with("application/json"),
        "{path}: {content_type}"
    );
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Parses Prometheus text exposition: every sample line is `name{labels} value`, every
/// metric has HELP and TYPE; returns samples by name with labels.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        assert!(typed.contains(name), "no TYPE before {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_with_well_formed_content() {
    let server = Server::builder()
        .io_threads(1)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addr();
    let admin = tethernet_admin::Admin::new()
        .metrics(|out| {
            out.push_str("# HELP app_things Things.\n# TYPE app_things gauge\napp_things 7\n")
        })
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin_addr = admin.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_until(
        || {
            Pipeline::builder(LengthFieldCodec::new(1 << 16))
                .handler(Echo)
                .build()
        },
        async {
            let _ = stopped.await;
        },
    ));
    let admin_serving = tokio::spawn(admin.serve_until(async {
        let _ = admin_stopped.await;
    }));

    // Live connections, one holding half a frame.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(&[0, 0, 1, 0, 1, 2, 3]).await.unwrap();
        clients.push(client);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let memory = get_json(admin_addr, "/debug/memory").await;
        if memory["connections"]["active"] == 3 && memory["bytes"]["decoder"] == 3 * 7 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections not seen: {memory}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // /metrics
    let (status, content_type, body) = get(admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = String::from_utf8(body).unwrap();
    let samples = parse_prometheus(&text);
    for name in [
        "tethernet_connections_active",
        "tethernet_connections_accepted_total",
        "tethernet_owned_tasks_active",
        "tethernet_tethered_resources_active",
        "tethernet_leaks_total",
        "tethernet_blocked_io_total",
        "tethernet_dropped_messages_total",
        "tethernet_slow_consumer_closes_total",
        "tethernet_allocator_allocated_bytes",
        "tethernet_allocator_resident_bytes",
        "process_resident_memory_bytes",
        "app_things",
    ] {
        assert!(samples.contains_key(name), "missing {name} in:\n{text}");
    }
    for kind in [
        "read_buffer",
        "decoder",
        "inbound_queue",
        "outbound_queue",
        "tethered",
    ] {
        let series = format!("tethernet_connection_bytes{{kind=\"{kind}\"}}");
        assert!(samples.contains_key(&series), "missing {series}");
    }
    assert_eq!(samples["tethernet_connections_active"], 3.0);
    assert_eq!(
        samples["tethernet_connection_bytes{kind=\"decoder\"}"],
        21.0
    );
    assert!(samples["tethernet_connection_bytes{kind=\"read_buffer\"}"] > 0.0);
    assert!(samples["tethernet_allocator_allocated_bytes"] > 0.0);
    assert!(samples["process_resident_memory_bytes"] > 0.0);
    assert!(
        !text.contains("peer") && !text.contains("channel="),
        "no per-connection labels"
    );

    // /debug/memory
    let memory = get_json(admin_addr, "/debug/memory").await;
    assert_eq!(memory["allocator"]["name"], "jemalloc");
    assert!(memory["allocator"]["resident"].as_u64().unwrap() > 0);
    assert!(memory["process"]["resident_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        memory["bytes"]["total"].as_u64().unwrap(),
        [
            "read_buffer",
            "decoder",
            "inbound_queue",
            "outbound_queue",
            "write_buffer",
            "tethered",
            "fired",
            "pending_writes",
            "tasks"
        ]
        .iter()
        .map(|k| memory["bytes"][k].as_u64().unwrap())
        .sum::<u64>()
    );

    // /debug/connections?top=N
    let top = get_json(admin_addr, "/debug/connections?top=2").await;
    let rows = top["connections"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(top["total_connections"], 3);
    for row in rows {
        assert!(row["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(row["bytes"]["decoder"], 7);
        assert!(row["total_bytes"].as_u64().unwrap() >= 7);
    }
    assert!(rows[0]["total_bytes"].as_u64() >= rows[1]["total_bytes"].as_u64());

    // /debug/leaks and /debug/blocked
    let leaks = get_json(admin_addr, "/debug/leaks").await;
    assert!(leaks["reports"].is_array());
    assert!(["off", "sampled", "paranoid"].contains(&leaks["level"].as_str().unwrap()));
    let blocked = get_json(admin_addr, "/debug/blocked").await;
    assert!(blocked["reports"].is_array());
    assert_eq!(blocked["threshold_ms"], 10);

    // /debug/pprof/heap: this build has no profiling feature, so a clear 501.
    let (status, _, body) = get(admin_addr, "/debug/pprof/heap").await;
    assert_eq!(status, 501);
    let message = String::from_utf8(body).unwrap();
    assert!(
        message.contains("profiling") && message.contains("_RJEM_MALLOC_CONF"),
        "{message}"
    );

    // The dashboard: self-contained HTML with its four charts.
    let (status, content_type, body) = get(admin_addr, "/").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    let page = String::from_utf8(body).unwrap();
    for chart in ["connections", "bytes", "memory", "faults"] {
        assert!(
            page.contains(&format!("data-chart=\"{chart}\"")),
            "chart {chart}"
        );
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external resources"
    );

    // Unknown paths are 404s; after the clients leave, the counters say so.
    assert_eq!(get(admin_addr, "/nope").await.0, 404);
    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let samples =
            parse_prometheus(&String::from_utf8(get(admin_addr, "/metrics").await.2).unwrap());
        if samples["tethernet_connections_active"] == 0.0
            && samples["tethernet_connection_bytes{kind=\"decoder\"}"] == 0.0
            && samples["tethernet_connection_bytes{kind=\"read_buffer\"}"] == 0.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters did not return to zero"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stop);
    drop(stop_admin);
    serving.await.unwrap().unwrap();
    admin_serving.await.unwrap().unwrap();
}

/// A GET with extra header lines: (status, the whole response).
async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    (
        response.split(' ').nth(1).unwrap().parse().unwrap(),
        response,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_loopback_rule_connection_cap_and_idle_timeout() {
    const TOKEN: &str = "a-long-enough-admin-token";
    // Not loopback: refused without a token, and a short token is refused anywhere.
    let error = tethernet_admin::Admin::new()
        .bind("0.0.0.0:0".parse().unwrap())
        .await
        .err()
        .expect("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("bearer token"), "{error}");
    let error = tethernet_admin::Admin::new()
        .bearer_token("short")
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("at least 16"), "{error}");
    let configured = tethernet_admin::Admin::new().bearer_token(TOKEN);
    assert!(!format!("{configured:?}").contains(TOKEN));

    let admin = configured
        .max_connections(2)
        .idle_timeout(Duration::from_secs(2))
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = admin.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(admin.serve_until(async {
        let _ = stopped.await;
    }));

    let right = format!("Authorization: Bearer {TOKEN}\r\n");
    for (path, headers, expected) in [
        ("/metrics", String::new(), 401),
        ("/nope", String::new(), 401),
        ("/metrics", "Authorization: Bearer nope\r\n".to_owned(), 401),
        (
            "/metrics",
            format!("Authorization: Bearer {TOKEN}!\r\n"),
            401,
        ),
        ("/metrics", format!("Authorization: {TOKEN}\r\n"), 401),
        ("/metrics", right.clone(), 200),
        ("/nope", right.clone(), 404),
    ] {
        let (status, response) = get_with(addr, path, &headers).await;
        assert_eq!(status, expected, "{path} {headers}: {response}");
        if status == 401 {
            assert!(response.contains("www-authenticate: Bearer"), "{response}");
        }
    }

    // Two idle connections hold both slots: a third is not served until one goes.
    let idle_a = TcpStream::connect(addr).await.unwrap();
    let mut idle_b = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = tokio::spawn({
        let right = right.clone();
        async move { get_with(addr, "/metrics", &right).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!third.is_finished(), "served beyond the cap of 2");
    drop(idle_a);
    assert_eq!(third.await.unwrap(), 200, "served once a slot is free");
    // The idle one is closed by the server after its idle timeout (2 s), not before.
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(20), idle_b.read(&mut byte))
        .await
        .expect("closed within the hang guard");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    drop(stop);
    serving.await.unwrap().unwrap();
}
