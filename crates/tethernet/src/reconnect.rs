//! Client connections that come back: reconnect with exponential backoff and jitter.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::channel::Channel;
use crate::client::Client;
use crate::pipeline::{Pipeline, PipelineCodec, Stage};
use crate::size::MessageSize;

/// How long to wait between connection attempts: `initial`, then multiplied by
/// `multiplier` after each failure up to `max`, each wait randomised by ±`jitter` (a
/// fraction) so that many clients do not reconnect in lockstep after an outage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Growth factor per failed attempt.
    pub multiplier: f64,
    /// Random spread of each wait, as a fraction of it (0.0 to 1.0).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 30 s, ±20 %.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait before attempt number `failures + 1` (no jitter).
    fn base(&self, failures: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(failures.min(64) as i32);
        self.initial.mul_f64(factor).min(self.max)
    }

    /// The wait before the next attempt after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        let base = self.base(failures);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
        base.mul_f64(spread).min(self.max)
    }
}

/// A client connection kept up by reconnecting (see [`Client::connect_with_retry`]).
///
/// Owns the task that connects and reconnects: dropping this stops it and closes the
/// current connection.
pub struct Reconnecting<W> {
    current: watch::Receiver<Option<Channel<W>>>,
    attempts: Arc<AtomicU64>,
    supervisor: JoinHandle<()>,
}

impl<W> Reconnecting<W> {
    /// The current connection, if connected now.
    pub fn channel(&self) -> Option<Channel<W>> {
        self.current.borrow().clone()
    }

    /// Waits until connected, and returns the connection.
    pub async fn connected(&mut self) -> Channel<W> {
        loop {
            if let Some(channel) = self.current.borrow_and_update().clone() {
                if !channel.is_closing() {
                    return channel;
                }
            }
            if self.current.changed().await.is_err() {
                // The supervisor ended; that only happens when this value is dropped.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Connection attempts made so far (successful or not).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }
}

impl<W> Drop for Reconnecting<W> {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl Client {
    /// Connects to `addr` and keeps reconnecting whenever the connection fails or ends,
    /// waiting between attempts as `backoff` says (the failure count resets once a
    /// connection has been made). `pipeline` makes the pipeline of each new connection.
    pub fn connect_with_retry<F, C, S, W>(
        &self,
        addr: SocketAddr,
        pipeline: F,
        backoff: Backoff,
    ) -> Reconnecting<W>
    where
        F: Fn() -> Pipeline<C, S, W> + Send + Sync + 'static,
        C: PipelineCodec<W>,
        S: Stage<C::Item, W>,
        W: MessageSize + Send + Sync + 'static,
    {
        let (publish, current) = watch::channel(None);
        let attempts = Arc::new(AtomicU64::new(0));
        let client = self.clone();
        let counter = attempts.clone();
        let supervisor = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                counter.fetch_add(1, Ordering::Relaxed);
                match client.connect(addr, pipeline()).await {
                    Ok(connection) => {
                        failures = 0;
                        publish.send_replace(Some(connection.channel().clone()));
                        tracing::debug!(%addr, "connected");
                        connection.closed().await;
                        publish.send_replace(None);
                        tracing::debug!(%addr, "connection ended; reconnecting");
                    }
                    Err(error) => {
                        tracing::debug!(%addr, %error, "connection attempt failed");
                        failures = failures.saturating_add(1);
                    }
                }
                tokio::time::sleep(backoff.delay(failures)).await;
            }
        });
        Reconnecting {
            current,
            attempts,
            supervisor,
        }
    }
}
