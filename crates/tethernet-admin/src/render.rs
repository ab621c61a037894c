//! What the endpoints serve, rendered from the framework's live figures.

use std::fmt::Write;

use serde_json::{json, Value};
use tethernet::{blocking, global, leak, stats, MemoryKind};

use crate::alloc::{allocator_stats, process_resident_bytes};
use crate::MetricsHook;

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Prometheus text exposition (format 0.0.4).
pub(crate) fn metrics(hooks: &[MetricsHook]) -> String {
    let g = global();
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "tethernet_connections_active",
        "gauge",
        "Open connections.",
        g.connections.get(),
    );
    metric(
        &mut out,
        "tethernet_connections_accepted_total",
        "counter",
        "Connections accepted by servers.",
        g.accepted.get(),
    );
    metric(
        &mut out,
        "tethernet_connections_refused_total",
        "counter",
        "Connections refused at the connection limit.",
        g.refused.get(),
    );
    metric(
        &mut out,
        "tethernet_connections_refused_per_address_total",
        "counter",
        "Connections refused at the per-address connection limit.",
        g.refused_per_address.get(),
    );
    metric(
        &mut out,
        "tethernet_frame_timeouts_total",
        "counter",
        "Connections closed because a frame was not completed within the frame timeout.",
        g.frame_timeouts.get(),
    );
    metric(
        &mut out,
        "tethernet_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        g.tls_handshake_failures.get(),
    );
    metric(
        &mut out,
        "tethernet_accept_errors_total",
        "counter",
        "Failed accept calls.",
        g.accept_errors.get(),
    );
    let _ = writeln!(
        out,
        "# HELP tethernet_connection_bytes Bytes the framework holds for connections, by kind (retained capacity).\n# TYPE tethernet_connection_bytes gauge"
    );
    for kind in MemoryKind::ALL {
        let _ = writeln!(
            out,
            "tethernet_connection_bytes{{kind=\"{}\"}} {}",
            kind.name(),
            g.bytes(kind).get()
        );
    }
    metric(
        &mut out,
        "tethernet_owned_tasks_active",
        "gauge",
        "Live tasks owned by connections.",
        g.owned_tasks.get(),
    );
    metric(
        &mut out,
        "tethernet_tethered_resources_active",
        "gauge",
        "Live values tethered to or tracked for connections.",
        g.tethered_resources.get(),
    );
    metric(
        &mut out,
        "tethernet_unowned_tasks_started_total",
        "counter",
        "Tasks handlers started themselves (plain tokio::spawn) on event loops, owned by nobody.",
        g.unowned_tasks_started.get(),
    );
    metric(
        &mut out,
        "tethernet_budget_refusals_total",
        "counter",
        "Writes refused because their connection was at its memory budget.",
        g.budget_refusals.get(),
    );
    let loops = tethernet::tasks::event_loops();
    let _ = writeln!(
        out,
        "# HELP tethernet_loop_tasks Tasks alive on each event loop: owned (by the framework and connections) or unowned.
# TYPE tethernet_loop_tasks gauge"
    );
    for event_loop in &loops {
        let _ = writeln!(
            out,
            "tethernet_loop_tasks{{loop=\"{}\",owner=\"framework\"}} {}\ntethernet_loop_tasks{{loop=\"{}\",owner=\"unowned\"}} {}",
            event_loop.name,
            event_loop.framework_tasks,
            event_loop.name,
            event_loop.unowned_tasks
        );
    }
    metric(
        &mut out,
        "tethernet_unowned_tasks",
        "gauge",
        "Tasks alive on event loops that nobody owns (all loops).",
        loops.iter().map(|l| l.unowned_tasks).sum::<usize>(),
    );
    metric(
        &mut out,
        "tethernet_leaks_total",
        "counter",
        "Leak reports: things alive a grace period after their connection closed.",
        g.leaks.get(),
    );
    metric(
        &mut out,
        "tethernet_blocked_io_total",
        "counter",
        "Times a handler kept an event loop busy past the blocking threshold.",
        g.blocked_io.get(),
    );
    metric(
        &mut out,
        "tethernet_dropped_messages_total",
        "counter",
        "Messages dropped by an overflow policy.",
        g.dropped_messages.get(),
    );
    metric(
        &mut out,
        "tethernet_slow_consumer_closes_total",
        "counter",
        "Connections closed as slow consumers.",
        g.slow_consumer_closes.get(),
    );
    metric(
        &mut out,
        "tethernet_leak_watch_connections",
        "gauge",
        "Closed connections with something still alive, within their grace period.",
        leak::watched(),
    );
    if let Some(allocator) = allocator_stats() {
        metric(
            &mut out,
            "tethernet_allocator_allocated_bytes",
            "gauge",
            "Bytes allocated by the application (jemalloc stats.allocated).",
            allocator.allocated,
        );
        metric(
            &mut out,
            "tethernet_allocator_active_bytes",
            "gauge",
            "Bytes in active allocator pages (jemalloc stats.active).",
            allocator.active,
        );
        metric(
            &mut out,
            "tethernet_allocator_resident_bytes",
            "gauge",
            "Bytes in resident allocator pages (jemalloc stats.resident).",
            allocator.resident,
        );
        metric(
            &mut out,
            "tethernet_allocator_retained_bytes",
            "gauge",
            "Bytes of mappings retained for reuse (jemalloc stats.retained).",
            allocator.retained,
        );
    }
    if let Some(rss) = process_resident_bytes() {
        metric(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
    }
    for hook in hooks {
        hook(&mut out);
    }
    out
}

fn kinds(bytes: impl Fn(MemoryKind) -> usize) -> Value {
    let mut map = serde_json::Map::new();
    let mut total = 0;
    for kind in MemoryKind::ALL {
        let n = bytes(kind);
        total += n;
        map.insert(kind.name().to_owned(), json!(n));
    }
    map.insert("total".to_owned(), json!(total));
    Value::Object(map)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn memory() -> Value {
    let g = global();
    json!({
        "time_ms": now_ms(),
        "connections": {
            "active": g.connections.get(),
            "accepted_total": g.accepted.get(),
            "refused_total": g.refused.get(),
        },
        "bytes": kinds(|kind| g.bytes(kind).get()),
        "owned_tasks": g.owned_tasks.get(),
        "tethered_resources": g.tethered_resources.get(),
        "unowned_tasks": tethernet::tasks::unowned_total(),
        "unowned_tasks_started_total": g.unowned_tasks_started.get(),
        "event_loops": tethernet::tasks::event_loops().iter().map(|l| json!({
            "name": l.name,
            "alive_tasks": l.alive_tasks,
            "framework_tasks": l.framework_tasks,
            "unowned_tasks": l.unowned_tasks,
            "unowned_started": l.unowned_started,
        })).collect::<Vec<_>>(),
        "unowned_spawns": tethernet::tasks::unowned_spawns(20).iter().map(|s| json!({
            "channel": s.channel.as_u64(),
            "handler": s.handler,
            "event_loop": s.event_loop,
            "count": s.count,
            "since_first_ms": s.since_first.as_millis() as u64,
        })).collect::<Vec<_>>(),
        "leaks_total": g.leaks.get(),
        "blocked_io_total": g.blocked_io.get(),
        "dropped_messages_total": g.dropped_messages.get(),
        "slow_consumer_closes_total": g.slow_consumer_closes.get(),
        "leak_detection": leak::level().name(),
        "allocator": allocator_stats(),
        "process": { "resident_bytes": process_resident_bytes() },
    })
}

pub(crate) fn connections(top: usize) -> Value {
    let listed = stats::connections(top);
    let rows: Vec<Value> = listed
        .iter()
        .map(|info| {
            let bytes = info.bytes;
            let mut breakdown = kinds(|kind| {
                bytes
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(0, |(_, n)| *n)
            });
            if let Value::Object(map) = &mut breakdown {
                map.remove("total");
            }
            json!({
                "id": info.id.as_u64(),
                "peer": info.peer.to_string(),
                "local": info.local.to_string(),
                "age_ms": info.age.as_millis() as u64,
                "total_bytes": info.total_bytes,
                "bytes": breakdown,
                "owned_tasks": info.owned_tasks,
                "tethered_resources": info.tethered_resources,
                "unowned_tasks_started": info.unowned_tasks_started,
                "handles": info.handles,
                "messages_read": info.messages_read,
                "messages_written": info.messages_written,
            })
        })
        .collect();
    json!({
        "total_connections": global().connections.get(),
        "connections": rows,
    })
}

pub(crate) fn leaks() -> Value {
    let reports: Vec<Value> = leak::reports()
        .iter()
        .map(|report| {
            json!({
                "channel": report.channel.as_u64(),
                "peer": report.peer.to_string(),
                "kind": report.kind.name(),
                "type": report.type_name,
                "bytes": report.bytes,
                "retained": report.retained,
                "count": report.count,
                "created_at": report.created_at.map(|site| site.to_string()),
                "handler": report.handler,
                "age_ms": report.age.as_millis() as u64,
                "closed_for_ms": report.closed_for.as_millis() as u64,
                "reported_ms_ago": report.reported_at.elapsed().as_millis() as u64,
            })
        })
        .collect();
    json!({
        "leaks_total": global().leaks.get(),
        "level": leak::level().name(),
        "grace_ms": leak::grace().as_millis() as u64,
        "watched_connections": leak::watched(),
        "reports": reports,
    })
}

pub(crate) fn blocked() -> Value {
    let reports: Vec<Value> = blocking::reports()
        .iter()
        .map(|report| {
            json!({
                "handler": report.handler,
                "channel": report.channel.as_u64(),
                "thread": report.thread,
                "blocked_ms": report.blocked.as_millis() as u64,
                "age_ms": report.at.elapsed().as_millis() as u64,
            })
        })
        .collect();
    json!({
        "blocked_io_total": global().blocked_io.get(),
        "threshold_ms": blocking::threshold().as_millis() as u64,
        "reports": reports,
    })
}
