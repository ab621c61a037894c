//! TLS for servers, on rustls (feature `tls`).
//!
//! [`TlsSettings`] holds a rustls server configuration, the handshake timeout and the cap
//! on handshakes in progress; [`ServerBuilder::tls`](crate::server::ServerBuilder::tls)
//! turns it on. The handshake runs on the connection's event loop before the pipeline
//! sees the connection, so handlers and codecs are the same with or without TLS.
//!
//! Bounds (G3): a handshake that does not finish within its timeout (default 10 s) is
//! dropped, so a peer that connects and sends nothing, or trickles a ClientHello, holds a
//! slot for at most that long; at most `max_concurrent_handshakes` (default 256) run at
//! once per server, and a connection waiting for its turn waits within the same timeout.
//! Failures and timeouts are counted in
//! [`GlobalStats::tls_handshake_failures`](crate::GlobalStats).
//!
//! ```no_run
//! # use tethernet::{Frame, Server, Pipeline, Result, codec::LengthFieldCodec};
//! # use tethernet::tls::TlsSettings;
//! # async fn run() -> Result<()> {
//! let tls = TlsSettings::from_pem_files("cert.pem", "key.pem")?
//!     .handshake_timeout(std::time::Duration::from_secs(5));
//! let server = Server::builder().tls(tls).bind("127.0.0.1:7443").await?;
//! # Ok(()) }
//! ```
//!
//! rustls keeps per-connection session state and record buffers that the byte counters
//! of [`crate::stats`] do not include yet.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
pub use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::connection::Socket;
use crate::error::{Error, Result};
use crate::stats::global;

/// Default time a TLS handshake may take, waiting for its turn included.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default cap on TLS handshakes in progress at once, per server.
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 256;

/// A server's TLS configuration: certificate, key and handshake bounds.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    max_concurrent_handshakes: usize,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configuration holds the private key: never printed.
        f.debug_struct("TlsSettings")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_concurrent_handshakes", &self.max_concurrent_handshakes)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Uses a rustls configuration as it is (client authentication, ALPN, resumption:
    /// whatever it says).
    pub fn new(config: Arc<rustls::ServerConfig>) -> TlsSettings {
        TlsSettings {
            config,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
        }
    }

    /// A certificate chain and its private key in PEM (the chain leaf first; the key as
    /// PKCS#8, PKCS#1 or SEC1), with rustls's safe defaults (TLS 1.2 and 1.3, ring).
    pub fn from_pem(certificate_chain: &[u8], private_key: &[u8]) -> Result<TlsSettings> {
        let chain = CertificateDer::pem_slice_iter(certificate_chain)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|error| {
                Error::config(format!(
                    "cannot read the TLS certificate chain: {error} (expected PEM `CERTIFICATE` blocks)"
                ))
            })?;
        if chain.is_empty() {
            return Err(Error::config(
                "the TLS certificate file holds no certificate (expected PEM `CERTIFICATE` blocks)",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(private_key).map_err(|error| {
            Error::config(format!(
                "cannot read the TLS private key: {error} (expected one PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
            ))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| Error::config(format!("TLS set-up failed: {error}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|error| {
                Error::config(format!(
                    "the TLS certificate and key do not fit together: {error} (is the key the certificate's?)"
                ))
            })?;
        Ok(TlsSettings::new(Arc::new(config)))
    }

    /// Like [`from_pem`](Self::from_pem), reading the two files.
    pub fn from_pem_files(
        certificate_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> Result<TlsSettings> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|error| {
                Error::config(format!(
                    "cannot read the TLS {what} file {}: {error}",
                    path.display()
                ))
            })
        };
        let chain = read(certificate_chain.as_ref(), "certificate")?;
        let key = read(private_key.as_ref(), "private key")?;
        TlsSettings::from_pem(&chain, &key)
    }

    /// How long a handshake may take, waiting for a turn included (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsSettings {
        self.handshake_timeout = timeout;
        self
    }

    /// Handshakes in progress at once, per server (default 256); others wait their
    /// turn within their timeout.
    pub fn max_concurrent_handshakes(mut self, handshakes: usize) -> TlsSettings {
        self.max_concurrent_handshakes = handshakes.clamp(1, Semaphore::MAX_PERMITS);
        self
    }
}

/// A server's TLS acceptor and its handshake bounds.
#[derive(Clone)]
pub(crate) struct Handshakes {
    acceptor: TlsAcceptor,
    timeout: Duration,
    /// One permit per handshake in progress.
    turns: Arc<Semaphore>,
}

/// A TLS stream after its handshake.
pub(crate) type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

impl Handshakes {
    pub(crate) fn new(settings: TlsSettings) -> Handshakes {
        Handshakes {
            acceptor: TlsAcceptor::from(settings.config),
            timeout: settings.handshake_timeout,
            turns: Arc::new(Semaphore::new(settings.max_concurrent_handshakes)),
        }
    }

    /// Runs the server side of the handshake; `None` (counted, logged at debug) when it
    /// fails or takes too long.
    pub(crate) async fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Option<ServerStream> {
        // Held here, not inside the timeout, so that a failure is counted before the
        // socket closes (a peer that sees the close then sees the count).
        let mut handshake = std::pin::pin!(self.acceptor.accept(stream).into_fallible());
        let attempt = async {
            let _turn = self.turns.acquire().await.ok()?;
            Some(handshake.as_mut().await)
        };
        let failure = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Some(Ok(stream))) => return Some(stream),
            Ok(Some(Err((error, _socket)))) => {
                global().tls_handshake_failures.add(1);
                error.to_string()
            }
            Ok(None) => return None,
            Err(_) => {
                global().tls_handshake_failures.add(1);
                format!("it did not finish within {:?}", self.timeout)
            }
        };
        tracing::debug!(%peer, %failure, "TLS handshake failed; connection closed");
        None
    }
}

/// A TLS stream shared by the connection task's read loop and write side. Both run in
/// the one task and never at the same time, so the lock is never contended; it is a
/// `Mutex` rather than a `RefCell` only because the task must be `Send`. Boxed: the
/// session is large and the connection task's size is what every connection pays.
pub(crate) struct TlsSocket {
    stream: Box<Mutex<ServerStream>>,
}

impl TlsSocket {
    pub(crate) fn new(stream: ServerStream) -> TlsSocket {
        TlsSocket {
            stream: Box::new(Mutex::new(stream)),
        }
    }

    pub(crate) fn read_half(&self) -> TlsReadHalf<'_> {
        TlsReadHalf(self)
    }

    fn lock(&self) -> MutexGuard<'_, ServerStream> {
        self.stream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Polls without registering for a wake-up: the connection task registers through
/// `poll_write_ready` when a write would block.
fn without_waker<T>(
    poll: impl FnOnce(&mut TaskContext<'_>) -> Poll<io::Result<T>>,
) -> io::Result<T> {
    match poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Socket for TlsSocket {
    fn poll_read_ready(&self, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        // rustls may hold decrypted bytes the socket no longer signals: always try the
        // read, which registers for the socket's readiness when it finds nothing.
        Poll::Ready(Ok(()))
    }

    fn try_write(&self, buffer: &[u8]) -> io::Result<usize> {
        let mut stream = self.lock();
        without_waker(|cx| Pin::new(&mut *stream).poll_write(cx, buffer))
    }

    fn poll_write_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.lock().get_ref().0.poll_write_ready(cx)
    }

    fn has_pending_writes(&self) -> bool {
        self.lock().get_ref().1.wants_write()
    }

    fn try_flush(&self) -> io::Result<bool> {
        let mut stream = self.lock();
        match without_waker(|cx| Pin::new(&mut *stream).poll_flush(cx)) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn shutdown(&self) {
        let mut stream = self.lock();
        stream.get_mut().1.send_close_notify();
        let _ = without_waker(|cx| Pin::new(&mut *stream).poll_flush(cx));
    }
}

/// The read side of a [`TlsSocket`].
pub(crate) struct TlsReadHalf<'a>(&'a TlsSocket);

impl AsyncRead for TlsReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut stream = self.0.lock();
        Pin::new(&mut *stream).poll_read(cx, buffer)
    }
}
