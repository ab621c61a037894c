//! Every scenario against the echo protocol finishes within its time bound and passes.

mod common;

use std::time::{Duration, Instant};

use common::{config, echo_server};
use tethernet_soak::{run, summary, Protocol, Scenario};

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_echo_scenario_finishes_in_time_and_passes() {
    let server = echo_server(0).await;
    for scenario in [
        Scenario::Churn,
        Scenario::Storm,
        Scenario::Slow,
        Scenario::Bad,
        Scenario::Mixed,
        Scenario::Idle,
    ] {
        let started = Instant::now();
        let mut settings = config(server.target, server.admin, Protocol::Echo, scenario, 1);
        // Connections come from 127.0.0.1 to 127.0.0.4 (source addresses for many
        // connections).
        settings.source_addresses = 4;
        let report = run(settings).await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(30), "{scenario:?} took {took:?}");
        assert!(report.passed, "{}", summary(&report));
        if scenario == Scenario::Idle {
            assert!(report.idle_bytes_per_connection.is_some());
        }
        assert_eq!(
            report.client_errors,
            0,
            "{scenario:?}: {}",
            summary(&report)
        );
    }
    drop(server.stop);
    server.task.await.unwrap();
}
