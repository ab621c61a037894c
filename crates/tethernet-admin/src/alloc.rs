//! Allocator and process memory figures.

use axum::http::StatusCode;

/// jemalloc's figures (see `jemalloc(3)`, "stats.*").
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AllocatorStats {
    /// The allocator's name.
    pub name: &'static str,
    /// Bytes allocated by the application.
    pub allocated: u64,
    /// Bytes in active pages (allocated plus fragmentation within pages).
    pub active: u64,
    /// Bytes in physically resident pages mapped by the allocator.
    pub resident: u64,
    /// Bytes in virtual memory mappings kept for later reuse (not resident).
    pub retained: u64,
}

/// jemalloc's figures, or `None` when jemalloc is not the process's global allocator
/// (figures from an unused jemalloc would be meaningless) or the feature is off.
pub fn allocator_stats() -> Option<AllocatorStats> {
    imp::stats()
}

#[cfg(feature = "jemalloc")]
mod imp {
    use std::sync::OnceLock;

    use tikv_jemalloc_ctl::{epoch, stats};

    use super::AllocatorStats;

    fn read() -> Option<AllocatorStats> {
        epoch::advance().ok()?;
        Some(AllocatorStats {
            name: "jemalloc",
            allocated: stats::allocated::read().ok()? as u64,
            active: stats::active::read().ok()? as u64,
            resident: stats::resident::read().ok()? as u64,
            retained: stats::retained::read().ok()? as u64,
        })
    }

    /// Whether jemalloc serves this process's allocations: an allocation of 4 MiB must
    /// show in its figures.
    fn is_global() -> bool {
        static GLOBAL: OnceLock<bool> = OnceLock::new();
        *GLOBAL.get_or_init(|| {
            const PROBE: usize = 4 << 20;
            let Some(before) = read() else { return false };
            let probe = std::hint::black_box(vec![1u8; PROBE]);
            let after = read();
            drop(probe);
            after.is_some_and(|after| after.allocated >= before.allocated + PROBE as u64 / 2)
        })
    }

    pub(super) fn stats() -> Option<AllocatorStats> {
        if is_global() {
            read()
        } else {
            None
        }
    }

    pub(super) fn purge_in_background() -> bool {
        is_global() && tikv_jemalloc_ctl::background_thread::write(true).is_ok()
    }
}

#[cfg(not(feature = "jemalloc"))]
mod imp {
    pub(super) fn stats() -> Option<super::AllocatorStats> {
        None
    }

    pub(super) fn purge_in_background() -> bool {
        false
    }
}

/// Starts jemalloc's background threads, which return freed pages to the OS on their
/// own schedule (`dirty_decay_ms`, 10 s by default). Without them jemalloc purges only
/// when an arena is busy allocating, so the pages of I/O threads that go quiet after a
/// burst of connections stay resident for good: 10,000 connections opened and closed on
/// the echo example left 52.0 MiB resident against a 10.5 MiB baseline without them,
/// 23.7 MiB with them (`tethernet-soak --scenario idle --clients 10000`, BENCHMARKS.md).
///
/// Returns whether they run; `false` when jemalloc is not the global allocator.
/// [`Admin::bind`](crate::Admin::bind) calls it.
pub fn purge_in_background() -> bool {
    imp::purge_in_background()
}

/// The process's resident memory (`VmRSS` in `/proc/self/status`), where available.
pub fn process_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

const HOW_TO_PROFILE: &str =
    "heap profiling is not enabled: build with `--features tethernet-admin/profiling` \
(jemalloc as the global allocator) and start the process with \
_RJEM_MALLOC_CONF=prof:true,prof_active:true,lg_prof_sample:19";

/// A heap profile in pprof format (gzipped protobuf), or why there is none.
pub(crate) async fn heap_profile() -> Result<Vec<u8>, (StatusCode, String)> {
    #[cfg(feature = "profiling")]
    {
        let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
            return Err((StatusCode::NOT_IMPLEMENTED, HOW_TO_PROFILE.to_owned()));
        };
        let mut ctl = ctl.lock().await;
        if !ctl.activated() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, HOW_TO_PROFILE.to_owned()));
        }
        ctl.dump_pprof().map_err(|error| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("heap profile failed: {error}"),
            )
        })
    }
    #[cfg(not(feature = "profiling"))]
    {
        Err((StatusCode::NOT_IMPLEMENTED, HOW_TO_PROFILE.to_owned()))
    }
}
