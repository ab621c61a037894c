//! Two gateway nodes sharing PostgreSQL and Redis: cross-node delivery; Redis killed and
//! restarted mid-run (a private redis-server on its own port) — nodes resubscribe,
//! clients are told about the gap and recover it from history, nothing stored is lost.
//!
//! Needs PostgreSQL (`TETHERNET_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; each test creates and drops its own
//! database) and the `redis-server` binary (`TETHERNET_TEST_REDIS_SERVER`); the shared
//! Redis at `TETHERNET_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) is used for the
//! lifecycle test.

mod common;

use common::{
    eventually, settings, start, token_for, Messages, PrivateRedis, TcpClient, TestDatabase,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_across_and_recover_after_a_redis_restart() {
    let database = TestDatabase::create().await;
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let mut redis = PrivateRedis::start(port).await;
    let node = |url: String| {
        let (mut settings, dir) = settings();
        settings.database_url = Some(database.url.clone());
        settings.bus_url = Some(url);
        (settings, dir)
    };
    let (settings_a, dir_a) = node(redis.url());
    let (settings_b, dir_b) = node(redis.url());
    let a = start(settings_a, Some(dir_a)).await;
    let b = start(settings_b, Some(dir_b)).await;

    let mut ada = TcpClient::connect(a.addrs.tcp).await;
    let mut bob = TcpClient::connect(b.addrs.tcp).await;
    ada.login(&token_for("ada", &["lobby"], 3600)).await;
    bob.login(&token_for("bob", &["lobby"], 3600)).await;
    ada.join("lobby").await;
    bob.join("lobby").await;
    eventually("both nodes subscribed", || {
        a.node.bus.subscriptions() == 1 && b.node.bus.subscriptions() == 1
    })
    .await;

    // Cross-node delivery.
    ada.send(json!({"type": "send", "room": "lobby", "body": "over the bus"}))
        .await;
    assert_eq!(ada.expect("ack").await["seq"], 1);
    let got = bob.expect("message").await;
    println!("node B delivered, from node A: {got}");
    assert_eq!(
        (got["body"].as_str(), got["sender"].as_str()),
        (Some("over the bus"), Some("ada"))
    );

    // Redis goes away; Ada keeps talking (stored in PostgreSQL; her own node delivers).
    redis.kill();
    for body in ["during 1", "during 2", "during 3"] {
        ada.send(json!({"type": "send", "room": "lobby", "body": body}))
            .await;
        ada.expect("ack").await;
    }
    // Redis comes back on the same port: the nodes resubscribe and announce the gap.
    let _redis = PrivateRedis::start(port).await;
    let gap = bob.expect("gap").await;
    println!("after the Redis restart, node B told Bob: {gap}");
    assert_eq!(gap["room"], "lobby");
    let after = gap["after"].as_i64().unwrap();
    assert_eq!(after, 1, "Bob's node had delivered #1 before the outage");
    bob.send(json!({"type": "join", "room": "lobby", "since": after}))
        .await;
    assert_eq!(bob.expect("joined").await["seq"], 4);
    let mut recovered = Vec::new();
    while recovered.len() < 3 {
        let message = bob.expect("message").await;
        if message["seq"].as_i64().unwrap() > after {
            recovered.push(message["body"].as_str().unwrap().to_owned());
        }
    }
    println!("Bob recovered from the store: {recovered:?}");
    assert_eq!(recovered, ["during 1", "during 2", "during 3"]);
    eventually("both nodes resubscribed", || {
        a.node.bus.subscriptions() == 1 && b.node.bus.subscriptions() == 1
    })
    .await;
    assert!(b.node.bus.reconnects() >= 1);

    // And the bus works again.
    ada.send(json!({"type": "send", "room": "lobby", "body": "after"}))
        .await;
    ada.expect("ack").await;
    loop {
        let message = bob.expect("message").await;
        if message["body"] == "after" {
            assert_eq!(message["seq"], 5);
            break;
        }
    }
    // Nothing stored was lost.
    bob.send(json!({"type": "history", "room": "lobby"})).await;
    let history = bob.expect("history").await;
    let seqs: Vec<i64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    println!(
        "history: {seqs:?}; node B reconnects: {}; subscriptions A/B: {}/{}",
        b.node.bus.reconnects(),
        a.node.bus.subscriptions(),
        b.node.bus.subscriptions()
    );
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);

    drop((ada, bob));
    a.stop().await;
    b.stop().await;
    database.drop_now().await;
}
