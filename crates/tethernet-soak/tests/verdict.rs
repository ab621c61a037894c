//! The soak's verdict fails on an echo server that keeps every Nth frame and passes on a
//! clean one; the report and chart are written.

mod common;

use common::{config, echo_server, KEPT};
use tethernet_soak::{run, summary, Protocol, Scenario};

#[global_allocator]
static ALLOCATOR: tethernet_admin::Jemalloc = tethernet_admin::Jemalloc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_fails_on_a_leaking_server_and_passes_on_a_clean_one() {
    let leaky = echo_server(20).await;
    let report = run(config(
        leaky.target,
        leaky.admin,
        Protocol::Echo,
        Scenario::Churn,
        2,
    ))
    .await
    .unwrap();
    println!("{}", summary(&report));
    assert!(
        !report.passed,
        "a server keeping every 20th frame must fail"
    );
    let read_buffer = report
        .checks
        .iter()
        .find(|c| c.name == "bytes.read_buffer")
        .unwrap();
    assert!(
        !read_buffer.ok,
        "the leaked frames pin read buffers: {read_buffer:?}"
    );
    drop(leaky.stop);
    leaky.task.await.unwrap();
    KEPT.lock().unwrap().clear();

    let clean = echo_server(0).await;
    let dir = std::env::temp_dir().join(format!("tethernet-soak-test-{}", std::process::id()));
    let mut settings = config(
        clean.target,
        clean.admin,
        Protocol::Echo,
        Scenario::Churn,
        2,
    );
    settings.report = Some(dir.clone());
    let report = run(settings).await.unwrap();
    println!("{}", summary(&report));
    assert!(report.passed, "a clean server passes: {}", summary(&report));
    assert!(report.operations > 0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], true);
    let svg = std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("settle"));
    let _ = std::fs::remove_dir_all(dir);
    drop(clean.stop);
    clean.task.await.unwrap();
}
