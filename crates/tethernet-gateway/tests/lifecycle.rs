//! The subscription lifecycle: after clients join and leave many rooms and disconnect
//! abruptly, rooms, bus subscriptions (Redis `PUBSUB NUMSUB` too) and the framework's
//! live counters are back to zero. (Alone in its process: it reads global counters.)
//!
//! Needs PostgreSQL (`TETHERNET_TEST_DATABASE_URL`) and Redis (`TETHERNET_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`).

mod common;

use std::time::Duration;

use common::{
    eventually, redis_url, settings, start, token_for, Messages, TcpClient, TestDatabase,
};
use serde_json::json;

async fn numsub(client: &redis::Client, channels: &[String]) -> Vec<i64> {
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let reply: Vec<redis::Value> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channels)
        .query_async(&mut connection)
        .await
        .unwrap();
    reply
        .chunks(2)
        .map(|pair| match &pair[1] {
            redis::Value::Int(n) => *n,
            other => panic!("unexpected NUMSUB reply {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_rooms_and_counters_return_to_zero() {
    let database = TestDatabase::create().await;
    let url = redis_url();
    let redis = redis::Client::open(url.as_str()).unwrap();
    redis
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is needed at {url} (TETHERNET_TEST_REDIS_URL): {e}"));
    let (mut settings, dir) = settings();
    settings.database_url = Some(database.url.clone());
    settings.bus_url = Some(url.clone());
    let gateway = start(settings, Some(dir)).await;
    let run = fastrand::u32(..);
    let rooms: Vec<String> = (0..12).map(|i| format!("life-{run}-{i}")).collect();
    let channels: Vec<String> = rooms
        .iter()
        .map(|r| format!("tethernet:room:{r}"))
        .collect();

    let mut clients = Vec::new();
    for c in 0..30usize {
        let mut client = TcpClient::connect(gateway.addrs.tcp).await;
        client
            .login(&token_for(&format!("u{c}"), &["*"], 3600))
            .await;
        for r in 0..4 {
            client.join(&rooms[(c + r * 3) % rooms.len()]).await;
        }
        // Leave one room explicitly.
        client
            .send(json!({"type": "leave", "room": rooms[c % rooms.len()]}))
            .await;
        client.expect("left").await;
        clients.push(client);
    }
    eventually("every room subscribed once", || {
        gateway.node.bus.subscriptions() == rooms.len()
    })
    .await;
    assert_eq!(gateway.node.rooms_active(), rooms.len());
    assert_eq!(
        numsub(&redis, &channels).await,
        vec![1; rooms.len()],
        "one subscription per room, not per client"
    );

    // Half leave abruptly (RST), half cleanly.
    for (i, client) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            client.set_zero_linger();
        }
        drop(client);
    }
    eventually("rooms and subscriptions back to zero", || {
        gateway.node.rooms_active() == 0 && gateway.node.bus.subscriptions() == 0
    })
    .await;
    let mut remaining = numsub(&redis, &channels).await;
    for _ in 0..100 {
        if remaining.iter().all(|n| *n == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        remaining = numsub(&redis, &channels).await;
    }
    assert_eq!(
        remaining,
        vec![0; rooms.len()],
        "PUBSUB NUMSUB after everyone left"
    );
    eventually("framework counters back to zero", || {
        let g = tethernet::global();
        g.connections.get() == 0 && g.tethered_resources.get() == 0 && g.owned_tasks.get() == 0
    })
    .await;
    println!(
        "after: rooms_active={} bus_subscriptions={} numsub={:?} connections={} tethered={} owned_tasks={}",
        gateway.node.rooms_active(),
        gateway.node.bus.subscriptions(),
        remaining,
        tethernet::global().connections.get(),
        tethernet::global().tethered_resources.get(),
        tethernet::global().owned_tasks.get()
    );
    gateway.stop().await;
    database.drop_now().await;
}
