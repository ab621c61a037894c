//! Access control against a running gateway: failed logins limited per address (then
//! `rate_limited` and a close), the login deadline, room permissions on every request that
//! names a room, the admin server's bearer token, and secrets kept out of logs, `Debug`
//! output and `--help`.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{
    answer, http_get, metric, settings, start, start_default, token_for, Messages, TcpClient,
    WsClient,
};
use serde_json::json;
use tethernet_gateway::gateway::Gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_address_then_refused_and_closed() {
    let (mut settings, dir) = settings();
    settings.login_failures = Some(3);
    let gateway = start(settings, Some(dir)).await;
    let admin = gateway.addrs.admin.unwrap();
    let good = token_for("ada", &["lobby"], 3600);

    let mut client = TcpClient::connect(gateway.addrs.tcp).await;
    for _ in 0..3 {
        assert_eq!(client.login("not.a-token").await["code"], "invalid_token");
    }
    // The fourth attempt is refused even with a valid token, and the connection closed.
    let refused = client.login(&good).await;
    println!("4th login from 127.0.0.1: {refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("wait"));
    assert!(client.recv().await.is_none(), "closed after rate_limited");

    // A new connection from the same address: the same.
    let mut again = TcpClient::connect(gateway.addrs.tcp).await;
    assert_eq!(again.login(&good).await["code"], "rate_limited");
    assert!(again.recv().await.is_none());
    // Over WebSocket: the error, then a close frame with 1008 (policy violation).
    let mut web = WsClient::connect(gateway.addrs.ws, "/ws").await;
    web.send(json!({"type": "login", "token": good})).await;
    assert_eq!(web.recv().await.unwrap()["code"], "rate_limited");
    let (opcode, payload) = web.recv_frame().await.expect("a close frame");
    assert_eq!(
        (opcode, u16::from_be_bytes([payload[0], payload[1]])),
        (0x8, 1008)
    );

    assert_eq!(metric(admin, "gateway_login_failures_total").await, 3);
    assert_eq!(metric(admin, "gateway_logins_rate_limited_total").await, 3);
    assert_eq!(metric(admin, "gateway_login_limiter_addresses").await, 1);
    assert_eq!(gateway.node.logins.tracked(), 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_log_in_in_time_is_closed() {
    let (mut settings, dir) = settings();
    settings.login_timeout_ms = Some(500);
    let gateway = start(settings, Some(dir)).await;
    let admin = gateway.addrs.admin.unwrap();

    let started = Instant::now();
    let mut silent = TcpClient::connect(gateway.addrs.tcp).await;
    let mut chatty = TcpClient::connect(gateway.addrs.tcp).await;
    let mut member = TcpClient::connect(gateway.addrs.tcp).await;
    assert_eq!(
        member.login(&token_for("ada", &["lobby"], 3600)).await["type"],
        "welcome"
    );
    let mut web = WsClient::connect(gateway.addrs.ws, "/ws").await;
    // Talking without logging in does not help.
    chatty.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(chatty.recv().await.unwrap()["type"], "pong");

    let told = silent.recv().await.expect("an error before the close");
    let took = started.elapsed();
    println!("no login: {told} after {took:?}");
    assert_eq!(told["code"], "login_timeout");
    assert!(silent.recv().await.is_none(), "then closed");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(answer(&mut chatty).await["code"], "login_timeout");
    assert!(chatty.recv().await.is_none());
    assert_eq!(web.recv().await.unwrap()["code"], "login_timeout");
    let (opcode, payload) = web.recv_frame().await.expect("a close frame");
    assert_eq!(
        (opcode, u16::from_be_bytes([payload[0], payload[1]])),
        (0x8, 1008)
    );

    // A client that logged in stays.
    tokio::time::sleep(Duration::from_millis(700)).await;
    member.send(json!({"type": "ping", "id": 2})).await;
    assert_eq!(member.recv().await.unwrap()["type"], "pong");
    assert_eq!(metric(admin, "gateway_login_timeouts_total").await, 3);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_not_in_the_token_are_refused_on_join_send_and_history() {
    let gateway = start_default().await;
    let mut ada = TcpClient::connect(gateway.addrs.tcp).await;
    ada.login(&token_for("ada", &["lobby"], 3600)).await;
    let mut root = TcpClient::connect(gateway.addrs.tcp).await;
    root.login(&token_for("root", &["*"], 3600)).await;
    root.join("dev").await;
    root.send(json!({"type": "send", "room": "dev", "body": "secret plans"}))
        .await;
    assert_eq!(root.expect("ack").await["seq"], 1);

    // Without joining first, and after a refused join: forbidden, not not_joined.
    for request in [
        json!({"type": "send", "room": "dev", "body": "let me in"}),
        json!({"type": "send", "room": "dev", "body": "retry", "client_id": "x"}),
        json!({"type": "history", "room": "dev"}),
        json!({"type": "history", "room": "dev", "before": 100, "limit": 5}),
        json!({"type": "join", "room": "dev"}),
        json!({"type": "join", "room": "dev", "since": 0}),
        json!({"type": "join", "room": "Lobby"}),
        json!({"type": "send", "room": "dev", "body": "after a refused join"}),
    ] {
        ada.send(request.clone()).await;
        let reply = ada.recv().await.unwrap();
        assert_eq!(reply["code"], "forbidden", "{request} -> {reply}");
        assert!(reply["message"]
            .as_str()
            .unwrap()
            .contains("does not allow"));
    }
    // Her own room works, with the usual order of checks.
    ada.send(json!({"type": "send", "room": "lobby", "body": "hi"}))
        .await;
    assert_eq!(ada.recv().await.unwrap()["code"], "not_joined");
    ada.join("lobby").await;
    ada.send(json!({"type": "send", "room": "lobby", "body": "hi"}))
        .await;
    assert_eq!(ada.expect("ack").await["seq"], 1);
    // Nothing she tried reached dev.
    root.send(json!({"type": "history", "room": "dev"})).await;
    let page = root.expect("history").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    // A token with no rooms allows none; over WebSocket the same.
    let mut web = WsClient::connect(gateway.addrs.ws, "/ws").await;
    web.send(json!({"type": "login", "token": token_for("nobody", &[], 3600)}))
        .await;
    assert_eq!(web.expect("welcome").await["rooms"], json!([]));
    for request in [
        json!({"type": "join", "room": "lobby"}),
        json!({"type": "send", "room": "lobby", "body": "x"}),
        json!({"type": "history", "room": "lobby"}),
    ] {
        web.send(request).await;
        assert_eq!(web.recv().await.unwrap()["code"], "forbidden");
    }
    gateway.stop().await;
}

const ADMIN_TOKEN: &str = "admin-token-for-the-access-test-7f3a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_needs_its_bearer_token_when_one_is_set() {
    // Loopback without a token: open.
    let open = start_default().await;
    let (status, body) = http_get(open.addrs.admin.unwrap(), "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("gateway_db_pool_in_use"));
    open.stop().await;

    // A token configured: no token or a wrong one is a 401, the right one a 200.
    let (mut with_token, dir) = settings();
    with_token.admin_token = Some(ADMIN_TOKEN.into());
    let gateway = start(with_token, Some(dir)).await;
    let admin = gateway.addrs.admin.unwrap();
    let right = format!("Bearer {ADMIN_TOKEN}");
    let longer = format!("Bearer {ADMIN_TOKEN}x");
    let shorter = format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    for (path, headers, expected) in [
        ("/metrics", vec![], 401),
        ("/nope", vec![], 401),
        ("/metrics", vec![("Authorization", "Bearer wrong")], 401),
        ("/metrics", vec![("Authorization", longer.as_str())], 401),
        ("/metrics", vec![("Authorization", shorter.as_str())], 401),
        ("/metrics", vec![("Authorization", ADMIN_TOKEN)], 401),
        ("/metrics", vec![("Authorization", right.as_str())], 200),
        (
            "/debug/memory",
            vec![("Authorization", right.as_str())],
            200,
        ),
        ("/", vec![("Authorization", right.as_str())], 200),
    ] {
        let (status, body) = http_get(admin, path, &headers).await;
        assert_eq!(status, expected, "{path} {headers:?}: {body}");
        if expected == 401 {
            assert!(body.contains("Authorization: Bearer"), "{body}");
        }
    }
    gateway.stop().await;

    // Not loopback: refused without a token, with a message saying what to do.
    let (mut exposed, _dir) = settings();
    exposed.admin = Some("0.0.0.0:0".into());
    let error = Gateway::bind(&exposed).await.err().expect("refused");
    println!("--admin 0.0.0.0:0 without a token: {error}");
    assert!(
        error.contains("TETHERNET_GATEWAY_ADMIN_TOKEN") && error.contains("loopback"),
        "{error}"
    );
    exposed.admin_token = Some("short".into());
    let error = Gateway::bind(&exposed).await.err().expect("refused");
    assert!(error.contains("at least 16"), "{error}");
    // With one it serves, and wants it.
    exposed.admin_token = Some(ADMIN_TOKEN.into());
    let gateway = start(exposed, None).await;
    let port = gateway.addrs.admin.unwrap().port();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(http_get(local, "/metrics", &[]).await.0, 401);
    assert_eq!(
        http_get(local, "/metrics", &[("Authorization", right.as_str())])
            .await
            .0,
        200
    );
    gateway.stop().await;
}

/// Everything logged in this test process, at every level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init()
            .expect("the only subscriber of this test binary");
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_debug_output_or_help() {
    let logs = captured_logs();
    let secret = format!("token-secret-{:016x}", fastrand::u64(..));
    let admin_token = format!("admin-secret-{:016x}", fastrand::u64(..));
    let password = format!("pw{:016x}", fastrand::u64(..));
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::settings().0;
    settings.data_dir = Some(dir.path().to_owned());
    settings.secret = Some(secret.clone());
    settings.admin_token = Some(admin_token.clone());
    let debug = format!("{settings:?}");

    // A database URL with a password that cannot be reached: the error names it without
    // the password.
    let mut unreachable = settings.clone();
    unreachable.database_url = Some(format!("postgres://ada:{password}@127.0.0.1:1/db"));
    unreachable.db_timeout_ms = Some(300);
    let error = Gateway::bind(&unreachable)
        .await
        .err()
        .expect("no database");
    println!("unreachable database: {error}");
    assert!(error.contains("ada:***@127.0.0.1:1"), "{error}");
    let debug_unreachable = format!("{unreachable:?}");

    // Logins good and bad, a wrong admin token, the admin pages.
    let signer = tethernet_gateway::token::Signer::new(secret.as_bytes()).unwrap();
    let login_token = signer.sign(&tethernet_gateway::token::Claims {
        user: "ada".into(),
        exp: tethernet_gateway::token::now() + 3600,
        rooms: vec!["lobby".into()],
    });
    let gateway = start(settings.clone(), None).await;
    let mut ada = TcpClient::connect(gateway.addrs.tcp).await;
    assert_eq!(ada.login(&login_token).await["type"], "welcome");
    ada.join("lobby").await;
    let mut eve = TcpClient::connect(gateway.addrs.tcp).await;
    let forged = format!("{}x", &login_token[..login_token.len() - 1]);
    assert_eq!(eve.login(&forged).await["code"], "invalid_token");
    let admin = gateway.addrs.admin.unwrap();
    let wrong = format!("Bearer {admin_token}-not");
    assert_eq!(
        http_get(admin, "/metrics", &[("Authorization", wrong.as_str())])
            .await
            .0,
        401
    );
    drop((ada, eve));
    gateway.stop().await;

    // --help with the secrets in the environment.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tethernet-gateway"))
        .arg("--help")
        .env("TETHERNET_GATEWAY_SECRET", &secret)
        .env("TETHERNET_GATEWAY_ADMIN_TOKEN", &admin_token)
        .env(
            "TETHERNET_GATEWAY_DATABASE_URL",
            format!("postgres://ada:{password}@db/x"),
        )
        .env("TETHERNET_GATEWAY_TOKEN", &login_token)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("--admin-token"), "{help}");

    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("logged in"),
        "the capture sees the session's events"
    );
    println!(
        "captured {} bytes of logs (all levels) from this process; Settings Debug: {debug}",
        logged.len()
    );
    for (what, text) in [
        ("the logs", &logged),
        ("Settings Debug", &debug),
        ("Settings Debug (database URL)", &debug_unreachable),
        ("the bind error", &error),
        ("--help", &help),
    ] {
        for (name, value) in [
            ("the token secret", &secret),
            ("the admin token", &admin_token),
            ("the database password", &password),
            ("a login token", &login_token),
        ] {
            assert!(!text.contains(value.as_str()), "{name} appears in {what}");
        }
    }
}
