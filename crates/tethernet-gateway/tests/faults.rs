//! Faults of the store, against real services (no mocks): PostgreSQL slow (a row lock held
//! by another session), stalled (a proxy that holds every byte) and cut off (a proxy that
//! closes everything), then back; SQLite out of space (a page quota: `SQLITE_FULL`), then
//! space again. Each time the client gets an error with a code within a bounded time,
//! nothing hangs, the pool's figures come back (in use to 0), service resumes with the
//! next sequence number, and no stored message is lost.
//!
//! Needs PostgreSQL (`TETHERNET_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; the test creates and drops its own database).

mod common;

use std::time::{Duration, Instant};

use common::{
    answer, pool_figures, postgres_addr, settings, start, token_for, via, FaultProxy, Link,
    TcpClient, TestDatabase,
};
use serde_json::{json, Value};
use sqlx::Connection;

/// The gateway's bound of a database call in these tests.
const DB_TIMEOUT_MS: u64 = 1000;
/// What a client may wait for its error at most: the bound plus scheduling slack. (The
/// property under test, not a hang guard.)
const ERROR_WITHIN: Duration = Duration::from_millis(DB_TIMEOUT_MS + 1500);

/// Sends and waits for the reply (ack or error): (reply, how long it took).
async fn send(client: &mut TcpClient, body: &str, client_id: &str) -> (Value, Duration) {
    let started = Instant::now();
    client
        .send(json!({"type": "send", "room": "lobby", "body": body, "client_id": client_id}))
        .await;
    let reply = answer(client).await;
    (reply, started.elapsed())
}

async fn acked(client: &mut TcpClient, body: &str, client_id: &str) -> i64 {
    let (reply, _) = send(client, body, client_id).await;
    assert_eq!(reply["type"], "ack", "{body}: {reply}");
    assert_eq!(reply["duplicate"], false, "{reply}");
    reply["seq"].as_i64().unwrap()
}

fn refused(reply: &Value, took: Duration, code: &str) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert!(
        took < ERROR_WITHIN,
        "the error took {took:?} (bound {ERROR_WITHIN:?})"
    );
}

/// The pool's figures once nothing is in use (a connection goes back to the pool in a
/// task of its own), or as they are after 10 s.
async fn settled(admin: std::net::SocketAddr) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let figures = pool_figures(admin).await;
        if figures.2 == 0 || Instant::now() > deadline {
            return figures;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every sequence number in the room's history, paging back while `more`.
async fn history_seqs(client: &mut TcpClient) -> Vec<i64> {
    let mut seqs = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        client
            .send(json!({"type": "history", "room": "lobby", "limit": 200, "before": before}))
            .await;
        let page = answer(client).await;
        assert_eq!(page["type"], "history", "{page}");
        let mut got: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        got.append(&mut seqs);
        seqs = got;
        if page["more"] != true {
            return seqs;
        }
        before = seqs.first().copied();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slow_stalled_and_cut_off_then_back() {
    let database = TestDatabase::create().await;
    let proxy = FaultProxy::start(postgres_addr(&database.url).await).await;
    let (mut settings, dir) = settings();
    settings.database_url = Some(via(&database.url, proxy.addr));
    settings.db_timeout_ms = Some(DB_TIMEOUT_MS);
    settings.db_pool = Some(4);
    let gateway = start(settings, Some(dir)).await;
    let admin = gateway.addrs.admin.unwrap();
    let figures = |phase: &'static str| async move {
        let (size, idle, in_use) = pool_figures(admin).await;
        println!("  pool {phase:<28} connections={size} idle={idle} in_use={in_use}");
        (size, idle, in_use)
    };

    // Six clients in the room: more than the pool has connections.
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut client = TcpClient::connect(gateway.addrs.tcp).await;
        client
            .login(&token_for(&format!("u{i}"), &["lobby"], 3600))
            .await;
        client.join("lobby").await;
        clients.push(client);
    }
    let mut stored = Vec::new();
    for body in ["one", "two", "three"] {
        stored.push(acked(&mut clients[0], body, body).await);
    }
    assert_eq!(stored, [1, 2, 3]);
    println!(
        "PostgreSQL through a proxy, db timeout {DB_TIMEOUT_MS} ms, pool of 4; 3 messages stored"
    );
    figures("before any fault").await;

    // 1. Slow: another session holds the room's sequence row; the server cancels the
    //    waiting statement (statement_timeout), the connection stays usable.
    let mut locker = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT last_seq FROM rooms WHERE room = 'lobby' FOR UPDATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let (reply, took) = send(&mut clients[0], "four", "four").await;
    println!("slow (row locked elsewhere): send -> {reply} after {took:?}");
    refused(&reply, took, "unavailable");
    assert_eq!(
        history_seqs(&mut clients[1]).await,
        [1, 2, 3],
        "reads go on meanwhile"
    );
    figures("while slow, just after").await;
    let (_, idle, in_use) = settled(admin).await;
    figures("while slow, settled").await;
    assert_eq!(in_use, 0);
    assert!(
        idle >= 1,
        "a cancelled statement does not cost the connection"
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    stored.push(acked(&mut clients[0], "four", "four").await);
    assert_eq!(stored[3], 4, "the retry gets the next number");

    // 2. Stalled: nothing answers, connections stay open. Every client gets its error
    //    within the bound, and the pool gives back every connection while the stall
    //    lasts (a connection abandoned on a dead socket must not keep its permit).
    proxy.set(Link::Stall);
    let started = Instant::now();
    let mut replies = Vec::new();
    for client in clients.iter_mut() {
        client
            .send(
                json!({"type": "send", "room": "lobby", "body": "stalled", "client_id": "stalled"}),
            )
            .await;
    }
    for client in clients.iter_mut() {
        replies.push((answer(client).await, started.elapsed()));
    }
    for (reply, took) in &replies {
        refused(reply, *took, "unavailable");
    }
    println!(
        "stalled: 6 concurrent sends -> {} after {:?} .. {:?}",
        replies[0].0,
        replies.iter().map(|r| r.1).min().unwrap(),
        replies.iter().map(|r| r.1).max().unwrap()
    );
    let (reply, took) = {
        let started = Instant::now();
        clients[1]
            .send(json!({"type": "history", "room": "lobby"}))
            .await;
        (answer(&mut clients[1]).await, started.elapsed())
    };
    println!("stalled: history -> {} after {took:?}", reply["code"]);
    refused(&reply, took, "unavailable");
    figures("stalled, just after the errors").await;
    let during = settled(admin).await;
    figures("still stalled, settled").await;
    // Every connection a request used was let go. One may still be held by sqlx's own
    // ping when a connection is returned, which has no time limit (it runs after the
    // gateway's bounded ping): it goes when the link does, checked below.
    assert!(
        during.2 <= 1,
        "at most sqlx's release ping holds a connection while the database is stalled: {during:?}"
    );
    proxy.set(Link::Pass);
    let seq = acked(&mut clients[2], "after the stall", "stalled").await;
    stored.push(seq);
    assert_eq!(
        seq, 5,
        "the stalled sends stored nothing; a retry stores once"
    );
    figures("stall over").await;

    // 3. Cut off: every connection closed, new ones refused.
    proxy.set(Link::Cut);
    let (reply, took) = send(&mut clients[3], "cut", "cut").await;
    println!("cut off: send -> {reply} after {took:?}");
    refused(&reply, took, "unavailable");
    let during = settled(admin).await;
    figures("while cut off, settled").await;
    assert_eq!(during.2, 0);
    assert_eq!(proxy.connections(), 0);
    proxy.set(Link::Pass);
    stored.push(acked(&mut clients[3], "cut", "cut").await);
    assert_eq!(stored[5], 6);

    // Nothing stored was lost, nothing stored twice, no gap; the pool settles.
    assert_eq!(history_seqs(&mut clients[4]).await, [1, 2, 3, 4, 5, 6]);
    let (count, max): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), MAX(seq) FROM messages WHERE room = 'lobby'")
            .fetch_one(&mut locker)
            .await
            .unwrap();
    assert_eq!((count, max), (6, 6));
    let after = settled(admin).await;
    figures("after").await;
    assert_eq!(after.2, 0);
    assert!(after.0 <= 4);
    println!("history after: seqs 1..=6, {count} rows in PostgreSQL");

    drop(clients);
    drop(locker);
    gateway.stop().await;
    drop(proxy);
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_out_of_space_refuses_writes_keeps_reads_and_recovers() {
    let (mut settings, dir) = settings();
    // A quota of 24 pages (96 KiB) on the embedded database.
    settings.sqlite_max_pages = Some(24);
    let db_path = dir.path().join("gateway.db");
    let gateway = start(settings, Some(dir)).await;
    let mut ada = TcpClient::connect(gateway.addrs.tcp).await;
    ada.login(&token_for("ada", &["lobby"], 3600)).await;
    ada.join("lobby").await;

    let body = "x".repeat(2000);
    let mut stored = Vec::new();
    let (full, took) = loop {
        let (reply, took) = send(&mut ada, &body, &format!("m{}", stored.len() + 1)).await;
        if reply["type"] == "ack" {
            stored.push(reply["seq"].as_i64().unwrap());
            assert!(stored.len() < 200, "the quota never filled");
            continue;
        }
        break (reply, took);
    };
    println!(
        "SQLite, quota of 24 pages: {} messages of 2000 bytes stored, then: {full} after {took:?}",
        stored.len()
    );
    refused(&full, took, "storage_full");
    assert!(stored.len() >= 3);
    assert_eq!(stored, (1..=stored.len() as i64).collect::<Vec<_>>());
    let attempted = format!("m{}", stored.len() + 1);

    // Reads go on, for this client and others; other clients' writes get the same error.
    assert_eq!(history_seqs(&mut ada).await, stored);
    let mut bob = TcpClient::connect(gateway.addrs.tcp).await;
    assert_eq!(
        bob.login(&token_for("bob", &["lobby"], 3600)).await["type"],
        "welcome"
    );
    assert_eq!(bob.join("lobby").await["seq"], stored.len());
    assert_eq!(history_seqs(&mut bob).await, stored);
    let (reply, took) = send(&mut bob, "from bob", "b1").await;
    refused(&reply, took, "storage_full");
    bob.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(answer(&mut bob).await["type"], "pong");

    // No corruption, everything stored is there: the store's own check and an
    // independent connection to the file.
    assert_eq!(gateway.node.store.integrity_check().await.unwrap(), "ok");
    let mut file = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut file)
        .await
        .unwrap();
    let (count, max): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), MAX(seq) FROM messages WHERE room = 'lobby'")
            .fetch_one(&mut file)
            .await
            .unwrap();
    println!("while full: integrity_check={check}, {count} rows, max seq {max}");
    assert_eq!(check, "ok");
    assert_eq!((count, max), (stored.len() as i64, stored.len() as i64));
    drop(file);

    // Space again (the quota raised, as an operator freeing the disk): the retry is
    // stored with the next number.
    gateway.node.store.set_sqlite_max_pages(0);
    let seq = acked(&mut ada, &body, &attempted).await;
    println!("space again: the retry is stored as #{seq}");
    assert_eq!(seq, stored.len() as i64 + 1);
    let seq = acked(&mut bob, "from bob", "b1").await;
    assert_eq!(seq, stored.len() as i64 + 2);
    assert_eq!(gateway.node.store.integrity_check().await.unwrap(), "ok");
    let mut all = stored.clone();
    all.extend([seq - 1, seq]);
    assert_eq!(history_seqs(&mut ada).await, all);
    drop((ada, bob));
    gateway.stop().await;
}
