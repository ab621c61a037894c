//! The warm-up phase: a load before the baseline, drained and settled, so that what a
//! first load keeps for good is part of the baseline. (Its own process: the figures are
//! process-wide.)

mod common;

use std::time::Duration;

use common::{config, echo_server};
use tethernet_soak::{run, summary, Protocol, Scenario};

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_load_runs_and_settles_before_the_baseline() {
    let server = echo_server(0).await;
    let mut settings = config(
        server.target,
        server.admin,
        Protocol::Echo,
        Scenario::Mixed,
        1,
    );
    settings.warmup = Duration::from_secs(2);
    let report = run(settings).await.unwrap();
    assert!(report.passed, "{}", summary(&report));
    let load_started = report
        .phases
        .iter()
        .find(|(name, _)| name == "load")
        .map(|(_, at)| *at)
        .expect("a load phase");
    // The warm-up load (2 s) and the decay wait (12 s) come before the load phase, and
    // the server was busy then: the samples show connections during the warm-up.
    assert!(load_started >= 14_000, "load started at {load_started} ms");
    let busy_before_load = report
        .samples
        .iter()
        .filter(|sample| sample.t_ms < load_started)
        .any(|sample| sample.live.get("connections").copied().unwrap_or(0) > 0);
    assert!(busy_before_load, "the warm-up put load on the server");
    drop(server.stop);
    server.task.await.unwrap();
}
