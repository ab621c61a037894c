//! Every scenario against the gateway protocol finishes within its time bound and passes.

mod common;

use std::time::{Duration, Instant};

use common::config;
use tethernet_soak::{run, summary, Protocol, Scenario};
use tokio::sync::oneshot;

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_scenario_finishes_in_time_and_passes() {
    let dir = std::env::temp_dir().join(format!("tethernet-soak-gw-{}", std::process::id()));
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
    for scenario in [
        Scenario::Churn,
        Scenario::Storm,
        Scenario::Slow,
        Scenario::Bad,
        Scenario::Mixed,
    ] {
        let started = Instant::now();
        let report = run(config(
            addrs.tcp,
            addrs.admin.unwrap(),
            Protocol::Gateway,
            scenario,
            1,
        ))
        .await
        .unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(40), "{scenario:?} took {took:?}");
        assert!(report.passed, "{}", summary(&report));
        assert!(report
            .checks
            .iter()
            .any(|c| c.name == "gateway_rooms_active"));
    }
    drop(stop);
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
