//! End to end against a running gateway (SQLite, in-process bus), over TCP and
//! WebSocket: login (good, bad, expired), join, send, receive, history, recovery after a
//! reconnect, idempotent retries, and the WebSocket protocol's own duties.

mod common;

use common::{start_default, token_for, Messages, TcpClient, WsClient};
use serde_json::json;

#[tokio::test]
async fn login_good_bad_and_expired() {
    let gateway = start_default().await;
    let mut client = TcpClient::connect(gateway.addrs.tcp).await;
    client.send(json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(client.recv().await.unwrap()["code"], "not_logged_in");
    let reply = client.login("not.a-token").await;
    assert_eq!(reply["code"], "invalid_token");
    // Signed with another secret.
    let forged = tethernet_gateway::token::Signer::new(b"some-other-secret-of-16")
        .unwrap()
        .sign(&tethernet_gateway::token::Claims {
            user: "eve".into(),
            exp: i64::MAX,
            rooms: vec!["*".into()],
        });
    assert_eq!(client.login(&forged).await["code"], "invalid_token");
    assert_eq!(
        client.login(&token_for("ada", &["lobby"], -10)).await["code"],
        "token_expired"
    );
    let welcome = client.login(&token_for("ada", &["lobby"], 3600)).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["user"], "ada");
    assert_eq!(
        client.login(&token_for("ada", &["lobby"], 3600)).await["code"],
        "already_logged_in"
    );
    // The token allows lobby only.
    client.send(json!({"type": "join", "room": "secret"})).await;
    assert_eq!(client.recv().await.unwrap()["code"], "forbidden");
    client
        .send(json!({"type": "send", "room": "lobby", "body": "x"}))
        .await;
    assert_eq!(client.recv().await.unwrap()["code"], "not_joined");
    // Bad input gets a clear error and the connection goes on.
    client
        .send_raw(&[0, 0, 0, 5, b'{', b'o', b'o', b'p', b's'])
        .await;
    assert_eq!(client.recv().await.unwrap()["code"], "bad_request");
    client.send(json!({"type": "ping", "id": 7})).await;
    assert_eq!(
        client.recv().await.unwrap(),
        json!({"type": "pong", "id": 7})
    );
    gateway.stop().await;
}

#[tokio::test]
async fn two_clients_chat_with_history_and_idempotent_retries() {
    let gateway = start_default().await;
    let mut ada = TcpClient::connect(gateway.addrs.tcp).await;
    let mut bob = TcpClient::connect(gateway.addrs.tcp).await;
    ada.login(&token_for("ada", &["*"], 3600)).await;
    bob.login(&token_for("bob", &["lobby"], 3600)).await;
    assert_eq!(ada.join("lobby").await["seq"], 0);
    bob.join("lobby").await;

    ada.send(json!({"type": "send", "room": "lobby", "body": "hello bob", "client_id": "a-1"}))
        .await;
    let ack = ada.expect("ack").await;
    assert_eq!(
        ack,
        json!({"type": "ack", "room": "lobby", "seq": 1, "client_id": "a-1", "duplicate": false})
    );
    let pushed = bob.expect("message").await;
    assert_eq!(pushed["sender"], "ada");
    assert_eq!(pushed["body"], "hello bob");
    assert_eq!(pushed["seq"], 1);
    assert!(pushed["time"].as_i64().unwrap() > 1_700_000_000_000);
    // The sender gets its own message too.
    assert_eq!(ada.expect("message").await["seq"], 1);

    // A retry with the same client id: acknowledged with the first sequence number, not
    // stored or pushed again.
    ada.send(json!({"type": "send", "room": "lobby", "body": "hello bob", "client_id": "a-1"}))
        .await;
    let retry = ada.expect("ack").await;
    assert_eq!(
        (retry["seq"].as_i64(), retry["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    bob.send(json!({"type": "send", "room": "lobby", "body": "hi ada"}))
        .await;
    assert_eq!(bob.expect("ack").await["seq"], 2);
    let next = ada.expect("message").await;
    assert_eq!(
        (next["seq"].as_i64(), next["sender"].as_str()),
        (Some(2), Some("bob")),
        "no duplicate was pushed"
    );

    // History pages, oldest first.
    for i in 3..=7 {
        ada.send(json!({"type": "send", "room": "lobby", "body": format!("m{i}")}))
            .await;
        assert_eq!(ada.expect("ack").await["seq"], i);
    }
    ada.send(json!({"type": "history", "room": "lobby", "limit": 3}))
        .await;
    let page = ada.expect("history").await;
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!((seqs, page["more"].as_bool()), (vec![5, 6, 7], Some(true)));
    ada.send(json!({"type": "history", "room": "lobby", "before": 5, "limit": 10}))
        .await;
    let page = ada.expect("history").await;
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        (seqs, page["more"].as_bool()),
        (vec![1, 2, 3, 4], Some(false))
    );

    // Leave: no more pushes.
    bob.send(json!({"type": "leave", "room": "lobby"})).await;
    bob.expect("left").await;
    assert_eq!(gateway.node.rooms_active(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_reconnecting_client_recovers_what_it_missed() {
    let gateway = start_default().await;
    let token = token_for("ada", &["lobby"], 3600);
    let mut ada = TcpClient::connect(gateway.addrs.tcp).await;
    ada.login(&token).await;
    ada.join("lobby").await;
    let mut bob = TcpClient::connect(gateway.addrs.tcp).await;
    bob.login(&token_for("bob", &["lobby"], 3600)).await;
    bob.join("lobby").await;
    bob.send(json!({"type": "send", "room": "lobby", "body": "one"}))
        .await;
    bob.expect("ack").await;
    let last_seen = ada.expect("message").await["seq"].as_i64().unwrap();
    // Ada drops off; Bob goes on.
    ada.set_zero_linger();
    drop(ada);
    for body in ["two", "three", "four"] {
        bob.send(json!({"type": "send", "room": "lobby", "body": body}))
            .await;
        bob.expect("ack").await;
    }
    let mut ada = TcpClient::connect(gateway.addrs.tcp).await;
    ada.login(&token).await;
    ada.send(json!({"type": "join", "room": "lobby", "since": last_seen}))
        .await;
    assert_eq!(ada.expect("joined").await["seq"], 4);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(
            ada.expect("message").await["body"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(bodies, ["two", "three", "four"]);
    gateway.stop().await;
}

#[tokio::test]
async fn websocket_and_tcp_clients_share_a_room() {
    let gateway = start_default().await;
    let mut web = WsClient::connect(gateway.addrs.ws, "/ws").await;
    web.send(json!({"type": "login", "token": token_for("wendy", &["lobby"], 3600)}))
        .await;
    assert_eq!(web.expect("welcome").await["user"], "wendy");
    web.send(json!({"type": "join", "room": "lobby"})).await;
    web.expect("joined").await;
    let mut tcp = TcpClient::connect(gateway.addrs.tcp).await;
    tcp.login(&token_for("tom", &["lobby"], 3600)).await;
    tcp.join("lobby").await;

    tcp.send(json!({"type": "send", "room": "lobby", "body": "from tcp"}))
        .await;
    assert_eq!(web.expect("message").await["body"], "from tcp");
    assert_eq!(
        tcp.expect("message").await["body"],
        "from tcp",
        "its own message"
    );
    // A fragmented text message, with a ping between the fragments.
    let text = json!({"type": "send", "room": "lobby", "body": "from the web", "client_id": "w1"})
        .to_string();
    let (first, second) = text.as_bytes().split_at(10);
    web.send_frame(0x1, first, false).await;
    web.send_frame(0x9, b"are you there", true).await;
    assert_eq!(
        web.recv_frame().await.unwrap(),
        (0xA, b"are you there".to_vec())
    );
    web.send_frame(0x0, second, true).await;
    assert_eq!(web.expect("ack").await["client_id"], "w1");
    assert_eq!(tcp.expect("message").await["body"], "from the web");
    // Recovery over WebSocket: history.
    web.send(json!({"type": "history", "room": "lobby"})).await;
    assert_eq!(
        web.expect("history").await["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The close handshake: the gateway answers a close frame with one.
    web.send_frame(0x8, &1000u16.to_be_bytes(), true).await;
    let (opcode, _) = web.recv_frame().await.unwrap();
    assert_eq!(opcode, 0x8);
    gateway.stop().await;
}

#[tokio::test]
async fn websocket_violations_close_with_a_code_and_the_page_is_served() {
    let gateway = start_default().await;
    // Unmasked client frame: protocol error 1002.
    let mut web = WsClient::connect(gateway.addrs.ws, "/ws").await;
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(gateway.addrs.ws)
        .await
        .unwrap();
    drop(raw.write_all(b"").await);
    web.send_frame(0x1, b"{}", true).await; // masked: fine (a bad_request reply)
    assert_eq!(web.recv().await.unwrap()["code"], "bad_request");
    // Oversized control frame (ping of 200 bytes) is a protocol violation.
    web.send_frame(0x9, &[0u8; 200], true).await;
    let (opcode, payload) = web.recv_frame().await.unwrap();
    assert_eq!(opcode, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    // GET / serves the chat page; other paths are 404.
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut page = Vec::new();
    use tokio::io::AsyncReadExt;
    raw.read_to_end(&mut page).await.unwrap();
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("new WebSocket("));
    let mut raw = tokio::net::TcpStream::connect(gateway.addrs.ws)
        .await
        .unwrap();
    raw.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).await.unwrap();
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 404"));
    gateway.stop().await;
}

#[tokio::test]
async fn replies_keep_request_order_even_for_bad_frames() {
    let gateway = start_default().await;
    let mut client = TcpClient::connect(gateway.addrs.tcp).await;
    client.login(&token_for("ada", &["lobby"], 3600)).await;
    for _ in 0..20 {
        client
            .send(json!({"type": "history", "room": "lobby"}))
            .await;
    }
    client.send_raw(&[0, 0, 0, 1, b'x']).await;
    for i in 0..20 {
        assert_eq!(client.recv().await.unwrap()["type"], "history", "reply {i}");
    }
    assert_eq!(client.recv().await.unwrap()["code"], "bad_request");
    gateway.stop().await;
}

#[tokio::test]
async fn a_websocket_send_followed_by_close_is_stored_before_the_close() {
    let gateway = start_default().await;
    let mut web = WsClient::connect(gateway.addrs.ws, "/ws").await;
    web.send(json!({"type": "login", "token": token_for("wendy", &["lobby"], 3600)}))
        .await;
    web.send(json!({"type": "join", "room": "lobby"})).await;
    web.send(json!({"type": "send", "room": "lobby", "body": "last words"}))
        .await;
    web.send_frame(0x8, &1001u16.to_be_bytes(), true).await;
    // Every reply, then the close (echoing the peer's code).
    assert_eq!(web.expect("welcome").await["user"], "wendy");
    assert_eq!(web.expect("ack").await["seq"], 1);
    loop {
        let (opcode, payload) = web.recv_frame().await.expect("a close frame");
        if opcode == 0x8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
            break;
        }
    }
    let mut reader = TcpClient::connect(gateway.addrs.tcp).await;
    reader.login(&token_for("ada", &["lobby"], 3600)).await;
    reader
        .send(json!({"type": "history", "room": "lobby"}))
        .await;
    assert_eq!(
        reader.expect("history").await["messages"][0]["body"],
        "last words"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_tcp_client_that_half_closes_after_sending_gets_every_answer() {
    let gateway = start_default().await;
    let mut client = TcpClient::connect(gateway.addrs.tcp).await;
    client
        .send(json!({"type": "login", "token": token_for("nc", &["lobby"], 3600)}))
        .await;
    client.send(json!({"type": "join", "room": "lobby"})).await;
    for i in 0..20 {
        client
            .send(json!({"type": "send", "room": "lobby", "body": format!("line {i}")}))
            .await;
    }
    client.send(json!({"type": "ping"})).await;
    // Like `nc -N`: everything is sent, the sending side is shut; the answers still come.
    client.shutdown_write().await;
    assert_eq!(client.expect("welcome").await["user"], "nc");
    for seq in 1..=20 {
        assert_eq!(client.expect("ack").await["seq"], seq);
    }
    client.expect("pong").await;
    // Then the gateway closes.
    loop {
        match client.recv().await {
            None => break,
            Some(message) => assert!(
                message["type"] == "message" || message["type"] == "joined",
                "{message}"
            ),
        }
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_members_session_memory_is_counted_against_its_connection() {
    let gateway = start_default().await;
    let mut web = WsClient::connect(gateway.addrs.ws, "/ws").await;
    web.send(json!({"type": "login", "token": token_for("mia", &["lobby"], 3600)}))
        .await;
    web.expect("welcome").await;
    web.send(json!({"type": "join", "room": "lobby"})).await;
    web.expect("joined").await;
    // The session's state lives in the tasks that run the connection (its connection
    // task and its executor drainer): each live connection is charged for them.
    let connections = tethernet::stats::connections(10_000);
    assert!(!connections.is_empty());
    for info in &connections {
        let tasks = info
            .bytes
            .iter()
            .find(|(kind, _)| *kind == tethernet::MemoryKind::Tasks)
            .map(|(_, bytes)| *bytes)
            .unwrap();
        assert!(tasks >= 1024, "task memory is counted: {info:?}");
        assert!(info.total_bytes >= tasks);
    }
    gateway.stop().await;
}
