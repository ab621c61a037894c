//! Turning a handler panic into an error of its own connection.
//!
//! A panic in a handler must close only that connection, through the normal close path
//! (error hooks, `inactive`, owned tasks and tethered values released), and be reported
//! with the handler's name. Catching it around every handler call costs ~100 instructions
//! a frame (measured with callgrind on the echo benchmark), so it is caught once around
//! the connection's read loop (and around each executor call) instead, and each poll of a
//! handler call records the handler's name in a thread-local (shared with blocking
//! detection, [`crate::blocking`]). Connection tasks never move between threads while
//! being polled, so the name read after a panic is the right one.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::Poll;

use crate::channel::ChannelId;
use crate::error::{Error, Result};

use crate::blocking::entering;

/// Runs a handler call, naming the handler on every poll (a handler that blocks or
/// panics after an `await` is still named), and what ran before once each poll returns
/// (framework work after a handler is not blamed on it). Not restored on a panic: the
/// name is what the panic report reads.
///
/// Takes the handler's future pinned where it was made (`pin!` at the call site): moving
/// a handler future into a wrapper costs a `memcpy` per call (measured with callgrind).
/// A struct rather than an `async fn` for the same reason: it is small.
pub(crate) fn named<'a, F: Future>(
    name: &'static str,
    id: u32,
    future: Pin<&'a mut F>,
) -> Named<'a, F> {
    Named { name, id, future }
}

/// See [`named`].
pub(crate) struct Named<'a, F> {
    name: &'static str,
    id: u32,
    future: Pin<&'a mut F>,
}

impl<F: Future> Future for Named<'_, F> {
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let (before, before_id) = entering(self.name, self.id);
        let poll = self.future.as_mut().poll(cx);
        entering(before, before_id);
        poll
    }
}

pin_project_lite::pin_project! {
    /// Runs `future`, the work of `channel`; a panic while polling it becomes
    /// an error of kind [`ErrorKind::Panic`](crate::ErrorKind::Panic) naming the handler that was running. Each poll is watched for
    /// blocking ([`crate::blocking`]). A struct, not an `async fn`: an `async` wrapper
    /// would hold the wrapped future twice (moved in, then pinned).
    pub(crate) struct Guarded<F> {
        channel: ChannelId,
        #[pin]
        future: F,
    }
}

/// See [`Guarded`].
pub(crate) fn guarded<T, F: Future<Output = Result<T>>>(
    channel: ChannelId,
    future: F,
) -> Guarded<F> {
    Guarded { channel, future }
}

impl<T, F: Future<Output = Result<T>>> Future for Guarded<F> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Result<T>> {
        let this = self.project();
        // Also names the framework as what runs, until a handler is polled.
        let _busy = crate::blocking::busy(*this.channel);
        // Tasks a handler starts itself are seen as a rise in the loop's task count over
        // the poll, and attributed to the (last) handler that ran in it. Checked once per
        // connection poll, not per handler call: it costs two reads of the loop's count.
        let tasks = crate::tasks::before();
        let mut future = this.future;
        let poll = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
        crate::tasks::after(tasks, crate::blocking::last_handler());
        match poll {
            Ok(poll) => poll,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(a panic with a non-string payload)".to_owned());
                Poll::Ready(Err(Error::panic(crate::blocking::running(), message)))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Runs a task owned by a connection (started with
    /// [`Channel::spawn`](crate::Channel::spawn)), naming it by its spawn site on every
    /// poll, as handlers are named: an owned task that blocks its event loop is reported
    /// by the watchdog with that site, and tasks it starts itself are attributed to it
    /// ([`crate::tasks`]).
    pub(crate) struct Watched<F> {
        channel: ChannelId,
        name: &'static str,
        id: u32,
        #[pin]
        future: F,
    }
}

/// See [`Watched`].
pub(crate) fn watched<F: Future<Output = ()>>(
    channel: ChannelId,
    (name, id): (&'static str, u32),
    future: F,
) -> Watched<F> {
    Watched {
        channel,
        name,
        id,
        future,
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        let _busy = crate::blocking::busy(*this.channel);
        let (before, before_id) = entering(this.name, *this.id);
        let tasks = crate::tasks::before();
        let poll = this.future.poll(cx);
        crate::tasks::after(tasks, this.name);
        entering(before, before_id);
        poll
    }
}
