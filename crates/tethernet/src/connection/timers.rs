//! Idle detection (Netty's `IdleStateHandler`, as a connection setting) and the
//! partial-frame timeout (a slowloris defence). One timer each per connection at most,
//! made only when the setting is on.

use std::future::Future;
use std::pin::Pin;
use std::task::Context as TaskContext;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::pipeline::IdleState;

/// The frame timeout of one connection: armed while a partial frame is held, re-armed
/// whenever a frame completes. Its sleep is made the first time a partial frame is held
/// and kept, so connections that never hold one pay nothing but the `Option`.
pub(super) struct FrameTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl FrameTimer {
    pub(super) fn new(timeout: Duration) -> FrameTimer {
        FrameTimer {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// After a decoding pass: `partial` when bytes of an unfinished frame are held,
    /// `progressed` when frames completed in the pass.
    pub(super) fn update(&mut self, partial: bool, progressed: bool) {
        if !partial {
            self.armed = false;
            return;
        }
        if self.armed && !progressed {
            return;
        }
        let deadline = Instant::now() + self.timeout;
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.armed = true;
    }

    /// While `paused` (the socket is not being read), the clock does not run out; it
    /// restarts on the next pass.
    pub(super) fn pause(&mut self, paused: bool) {
        if paused {
            self.armed = false;
        }
    }

    pub(super) fn poll_expired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        self.armed
            && self
                .sleep
                .as_mut()
                .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

/// Idle detection timeouts (Netty's `IdleStateHandler`), as a connection setting: one
/// timer per connection, whatever is configured. `None` turns a state off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// Fire [`IdleState::ReaderIdle`] after this long without reading anything.
    pub reader: Option<Duration>,
    /// Fire [`IdleState::WriterIdle`] after this long without writing anything.
    pub writer: Option<Duration>,
    /// Fire [`IdleState::AllIdle`] after this long without reading or writing.
    pub all: Option<Duration>,
}

/// The idle timer of one connection: when each side last saw activity (or last fired),
/// and one sleep re-armed to the earliest deadline. Activity only moves the marks; a
/// timer that wakes early finds nothing due and re-arms, so there is at most one
/// spurious wake-up per period.
pub(super) struct IdleTimer {
    timeouts: IdleTimeouts,
    reader_mark: Instant,
    writer_mark: Instant,
    all_mark: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    pub(super) fn new(timeouts: IdleTimeouts) -> IdleTimer {
        let now = Instant::now();
        let mut timer = IdleTimer {
            timeouts,
            reader_mark: now,
            writer_mark: now,
            all_mark: now,
            sleep: Box::pin(tokio::time::sleep_until(now)),
        };
        let next = timer.next_deadline();
        timer.sleep.as_mut().reset(next);
        timer
    }

    pub(super) fn read(&mut self, now: Instant) {
        self.reader_mark = now;
        self.all_mark = now;
    }

    pub(super) fn wrote(&mut self, now: Instant) {
        self.writer_mark = now;
        self.all_mark = now;
    }

    fn deadlines(&self) -> [(IdleState, Option<Instant>); 3] {
        [
            (
                IdleState::ReaderIdle,
                self.timeouts.reader.map(|t| self.reader_mark + t),
            ),
            (
                IdleState::WriterIdle,
                self.timeouts.writer.map(|t| self.writer_mark + t),
            ),
            (
                IdleState::AllIdle,
                self.timeouts.all.map(|t| self.all_mark + t),
            ),
        ]
    }

    fn next_deadline(&self) -> Instant {
        self.deadlines()
            .iter()
            .filter_map(|(_, deadline)| *deadline)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 3600))
    }

    /// Ready when the earliest deadline has passed: some state may be due.
    pub(super) fn poll_check(&mut self, cx: &mut TaskContext<'_>) -> bool {
        self.sleep.as_mut().poll(cx).is_ready()
    }

    /// The states due at `now`, in order; each fired state starts a new period.
    pub(super) fn due(&mut self, now: Instant) -> [Option<IdleState>; 3] {
        let mut fired = [None; 3];
        for (slot, (state, deadline)) in self.deadlines().into_iter().enumerate() {
            if deadline.is_some_and(|deadline| deadline <= now) {
                fired[slot] = Some(state);
                match state {
                    IdleState::ReaderIdle => self.reader_mark = now,
                    IdleState::WriterIdle => self.writer_mark = now,
                    IdleState::AllIdle => self.all_mark = now,
                }
            }
        }
        let next = self.next_deadline();
        self.sleep.as_mut().reset(next);
        fired
    }
}
