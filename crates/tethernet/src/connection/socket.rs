//! What the connection task needs of a transport.

use std::io;
use std::task::{Context as TaskContext, Poll};

use tokio::net::TcpStream;

/// The socket as the connection task uses it, shared by the read loop and the write
/// side. TCP implements it directly, at no cost; TLS wraps a rustls session
/// (`crate::tls`). Reads go through a separate [`AsyncRead`](tokio::io::AsyncRead) half.
pub(crate) trait Socket: Sync {
    /// Ready when a read may make progress (it may still find nothing).
    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>>;
    /// Writes without waiting; `WouldBlock` when the socket is full.
    fn try_write(&self, buffer: &[u8]) -> io::Result<usize>;
    /// Ready when the socket can take more bytes.
    fn poll_write_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>>;
    /// Whether the transport holds written bytes that are not on the socket yet (TLS
    /// records waiting for room).
    fn has_pending_writes(&self) -> bool {
        false
    }
    /// Pushes those bytes out without waiting; `Ok(false)` when the socket is full.
    fn try_flush(&self) -> io::Result<bool> {
        Ok(true)
    }
    /// Last words before the socket closes (a TLS close_notify), best effort.
    fn shutdown(&self) {}
}

impl Socket for TcpStream {
    fn poll_read_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn try_write(&self, buffer: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buffer)
    }

    fn poll_write_ready(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }
}
