//! A group of threads, each running its own single-threaded tokio runtime.
//!
//! This is the runtime model of Tethernet, as in Netty's `EventLoopGroup`: every connection
//! is pinned to one loop for its whole life, and each loop serves its connections in turn.
//! On this project's 2-core machines tokio's work-stealing scheduler was seen serving 1,000+
//! busy connections per worker unfairly; one current-thread runtime per core was fair (see
//! `BENCHMARKS.md` and `cargo run --release -p tethernet-bench -- fairness`). Business
//! executors use the same group type.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A group of single-threaded runtimes ("event loops"); cheap to clone.
///
/// The threads stop, and are joined, when the last clone is dropped.
#[derive(Clone)]
pub struct EventLoopGroup {
    inner: Arc<GroupInner>,
}

struct EventLoop {
    handle: Handle,
    /// Its task figures (`None` for [`EventLoopGroup::current`], a runtime not ours).
    stats: Option<Arc<crate::tasks::LoopStats>>,
    /// Dropping this sender tells the loop's thread to stop.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

struct GroupInner {
    name: String,
    loops: Vec<EventLoop>,
    /// Round-robin cursor for [`EventLoopGroup::next`].
    next: AtomicUsize,
    /// Watches the loops for handlers that block them ([`crate::blocking`]); stopped
    /// after the loops (fields drop after `Drop::drop` has joined the loops).
    _watchdog: Option<crate::blocking::Watchdog>,
}

impl EventLoopGroup {
    /// Starts `threads` event loops named `{name}-{index}`.
    pub fn new(name: &str, threads: usize) -> io::Result<EventLoopGroup> {
        Self::with_blocking_threads(name, threads, None)
    }

    /// Starts the loops; `blocking_threads` caps each runtime's blocking pool.
    pub(crate) fn with_blocking_threads(
        name: &str,
        threads: usize,
        blocking_threads: Option<usize>,
    ) -> io::Result<EventLoopGroup> {
        if threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("event loop group `{name}` needs at least one thread"),
            ));
        }
        let slots: Vec<_> = (0..threads)
            .map(|index| crate::blocking::Slot::new(format!("{name}-{index}")))
            .collect();
        // Started first: if a loop fails to start, dropping it stops and joins it.
        let watchdog = crate::blocking::Watchdog::start(name, slots.clone())?;
        let mut loops = Vec::with_capacity(threads);
        for (index, slot) in slots.into_iter().enumerate() {
            let thread_name = format!("{name}-{index}");
            let mut builder = Builder::new_current_thread();
            builder.enable_all().thread_name(thread_name.clone());
            if let Some(blocking) = blocking_threads {
                builder.max_blocking_threads(blocking.max(1));
            }
            let runtime = builder.build()?;
            let handle = runtime.handle().clone();
            let stats = crate::tasks::LoopStats::new(thread_name.clone(), &handle);
            let loop_stats = stats.clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = thread::Builder::new().name(thread_name).spawn(move || {
                crate::blocking::install(slot);
                crate::tasks::install(loop_stats);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Dropping the runtime here cancels whatever is still spawned on it and
                // waits for its blocking threads.
                drop(runtime);
            })?;
            loops.push(EventLoop {
                handle,
                stats: Some(stats),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(EventLoopGroup {
            inner: Arc::new(GroupInner {
                name: name.to_owned(),
                loops,
                next: AtomicUsize::new(0),
                _watchdog: Some(watchdog),
            }),
        })
    }

    /// A group of one loop: the tokio runtime this is called from, with no thread of its
    /// own. For embedding in an application that manages its runtime, and for tests (with
    /// tokio's paused time, idle timeouts fire at exact virtual times).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn current() -> EventLoopGroup {
        EventLoopGroup {
            inner: Arc::new(GroupInner {
                name: "current".to_owned(),
                loops: vec![EventLoop {
                    handle: Handle::current(),
                    stats: None,
                    stop: None,
                    thread: None,
                }],
                next: AtomicUsize::new(0),
                _watchdog: None,
            }),
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How many loops the group runs.
    pub fn len(&self) -> usize {
        self.inner.loops.len()
    }

    /// Always false: a group has at least one loop.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The next loop, round-robin.
    pub fn next(&self) -> &Handle {
        self.next_loop().0
    }

    /// The next loop, round-robin, with its task figures.
    pub(crate) fn next_loop(&self) -> (&Handle, Option<Arc<crate::tasks::LoopStats>>) {
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.loops.len();
        let event_loop = &self.inner.loops[index];
        (&event_loop.handle, event_loop.stats.clone())
    }
}

impl Drop for GroupInner {
    fn drop(&mut self) {
        let current = thread::current().id();
        for event_loop in &mut self.loops {
            drop(event_loop.stop.take());
        }
        for event_loop in &mut self.loops {
            if let Some(thread) = event_loop.thread.take() {
                // A loop cannot join itself (the group's last clone was dropped on one of
                // its own threads); it stops on its own once its stop signal is seen.
                if thread.thread().id() != current {
                    let _ = thread.join();
                }
            }
        }
    }
}
