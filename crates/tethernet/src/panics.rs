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

use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
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
pub(crate) async fn named<F: Future>(
    name: &'static str,
    id: u32,
    mut future: std::pin::Pin<&mut F>,
) -> F::Output {
    poll_fn(|cx| {
        let (before, before_id) = entering(name, id);
        let poll = future.as_mut().poll(cx);
        entering(before, before_id);
        poll
    })
    .await
}

/// Runs `future`, the work of `channel`; a panic while polling it becomes
/// [`Error::Panic`] naming the handler that was running. Each poll is watched for
/// blocking ([`crate::blocking`]).
pub(crate) async fn guarded<F: Future<Output = Result<()>>>(
    channel: ChannelId,
    future: F,
) -> Result<()> {
    let mut future = pin!(future);
    poll_fn(|cx| {
        // Also names the framework as what runs, until a handler is polled.
        let _busy = crate::blocking::busy(channel);
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(a panic with a non-string payload)".to_owned());
                Poll::Ready(Err(Error::Panic {
                    handler: crate::blocking::running(),
                    message,
                }))
            }
        }
    })
    .await
}
