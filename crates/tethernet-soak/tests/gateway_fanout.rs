//! The fan-out scenario against a real gateway on its embedded defaults (SQLite, the
//! in-process bus): every member gets every message exactly once, and the server comes
//! back to baseline. Its own test file: the admin figures are process-wide.

mod common;

use std::time::{Duration, Instant};

use common::config;
use tethernet_soak::{run, summary, FanoutSettings, Protocol, Scenario};
use tokio::sync::oneshot;

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

const MEMBERS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_message_to_every_member_exactly_once() {
    let dir = std::env::temp_dir().join(format!("tethernet-soak-fanout-{}", std::process::id()));
    let settings = tethernet_gateway::config::Settings {
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        ws: Some("127.0.0.1:0".parse().unwrap()),
        admin: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.clone()),
        secret: Some("soak-test-secret-0123456789".into()),
        io_threads: Some(1),
        ..Default::default()
    };
    let gateway = tethernet_gateway::gateway::Gateway::bind(&settings)
        .await
        .unwrap();
    let addrs = gateway.addresses();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));

    // Paced (100 messages/s from 2 senders), then as fast as acks allow (3 senders).
    for (senders, rate) in [(2, 100), (3, 0)] {
        let mut soak = config(
            addrs.tcp,
            addrs.admin.unwrap(),
            Protocol::Gateway,
            Scenario::Fanout,
            3,
        );
        soak.clients = MEMBERS;
        soak.fanout = FanoutSettings {
            senders,
            rate,
            max_messages: 20_000,
        };
        let started = Instant::now();
        let report = run(soak).await.unwrap();
        let took = started.elapsed();
        println!("{}", summary(&report));
        assert!(took < Duration::from_secs(40), "took {took:?}");
        let fanout = report.fanout.as_ref().expect("a fan-out report");
        assert_eq!(fanout.joined, MEMBERS);
        assert!(fanout.sent > 0, "{}", summary(&report));
        if rate > 0 {
            // About 3 s at 100/s (the first message goes at once).
            assert!(
                (150..=400).contains(&fanout.sent),
                "paced at 100/s for 3 s: {}",
                summary(&report)
            );
        }
        assert_eq!(
            fanout.deliveries,
            MEMBERS as u64 * fanout.sent,
            "{}",
            summary(&report)
        );
        assert_eq!(fanout.expected, MEMBERS as u64 * fanout.sent);
        assert_eq!(fanout.missing, 0, "{}", summary(&report));
        assert_eq!(fanout.duplicates, 0, "{}", summary(&report));
        assert_eq!(fanout.members_lost, 0, "{}", summary(&report));
        assert_eq!(fanout.send_failures, 0, "{}", summary(&report));
        assert!(fanout.latency.p50_us > 0 && fanout.latency.p50_us <= fanout.latency.p99_us);
        assert!(fanout.latency.p99_us <= fanout.latency.max_us);
        assert!(fanout.deliveries_per_sec > 0.0);
        assert_eq!(report.client_errors, 0, "{}", summary(&report));
        assert!(report.passed, "{}", summary(&report));
        // The room is gone again: rooms, subscriptions and connections back to baseline.
        for name in [
            "gateway_rooms_active",
            "gateway_bus_subscriptions",
            "connections",
        ] {
            let check = report.checks.iter().find(|c| c.name == name).unwrap();
            assert!(check.ok, "{check:?}");
        }
        assert!(report
            .checks
            .iter()
            .any(|c| c.name == "fanout: missing deliveries" && c.ok));
    }
    drop(stop);
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn fanout_needs_the_gateway_protocol() {
    let soak = config(
        "127.0.0.1:9".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        Protocol::Echo,
        Scenario::Fanout,
        1,
    );
    let error = run(soak).await.unwrap_err();
    assert!(error.to_string().contains("--protocol gateway"), "{error}");
}
