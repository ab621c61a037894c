//! The crate's error type.
//!
//! One public [`Error`] for everything the framework reports: opaque, with an
//! [`ErrorKind`] to branch on ([`Error::kind`], or the `is_*` predicates such as
//! [`Error::is_limit`]), a message that says what went wrong and what to do, and the
//! underlying error as its [`source`](std::error::Error::source). Codec errors from any
//! `tokio_util` codec are carried as a boxed source, so user codecs plug in unchanged.
//!
//! An `Error` is two words: the common kinds without detail (closed, full) are inline, the
//! rest boxed, so a `Result<()>` held in every connection's futures stays small.

use std::fmt;
use std::io;
use std::time::Duration;

/// A boxed error from a codec or from application code.
type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A socket operation failed.
    Io,
    /// The codec rejected inbound bytes or an outbound message (frame too long, malformed
    /// input). The connection is closed after the pipeline has been told.
    Codec,
    /// A queue was full; the message was not queued (see
    /// [`Channel::try_write`](crate::Channel::try_write)).
    Full,
    /// The connection is closed; the message was not written.
    Closed,
    /// A memory cap was reached: the operation would have held more than the limit allows,
    /// and was refused (the message was dropped and counted).
    Limit,
    /// A handler failed. The connection is closed after the pipeline has been told.
    Handler,
    /// A handler panicked. The connection is closed as after an error; other connections
    /// are not affected.
    Panic,
    /// The peer started a frame and did not finish it within the frame timeout.
    FrameTimeout,
    /// Binding or configuring a server or client failed, or a per-connection cap that is
    /// not about memory (owned tasks) was reached.
    Config,
    /// An error raised by application code ([`Error::other`]).
    Other,
}

/// Everything that can go wrong in Tethernet. See the [module documentation](self).
pub struct Error(Inner);

enum Inner {
    /// A kind with nothing more to say (closed, full): no allocation.
    Simple(ErrorKind),
    Detailed(Box<Detail>),
}

#[derive(Debug, thiserror::Error)]
enum Detail {
    #[error("socket error: {0}")]
    Io(#[source] io::Error),
    #[error("codec error: {0}")]
    Codec(#[source] Source),
    #[error("{what} of {limit} bytes reached; the peer is not keeping up")]
    Limit { what: &'static str, limit: usize },
    #[error("handler `{handler}` failed: {source}")]
    Handler {
        handler: &'static str,
        #[source]
        source: Source,
    },
    #[error("handler `{handler}` panicked: {message}")]
    Panic {
        handler: &'static str,
        message: String,
    },
    #[error("a frame was not completed within {0:?} of its first byte; closing the connection (raise ServerBuilder::frame_timeout if peers are legitimately this slow)")]
    FrameTimeout(Duration),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Other(#[source] Source),
}

impl Error {
    /// Wraps any error raised by application code (kind [`ErrorKind::Other`]; a handler
    /// returning it is reported as [`ErrorKind::Handler`], naming the handler).
    pub fn other(error: impl Into<Source>) -> Self {
        Error::detailed(Detail::Other(error.into()))
    }

    /// The connection is closed (kind [`ErrorKind::Closed`]).
    pub fn closed() -> Self {
        Error(Inner::Simple(ErrorKind::Closed))
    }

    fn detailed(detail: Detail) -> Self {
        Error(Inner::Detailed(Box::new(detail)))
    }

    pub(crate) fn full() -> Self {
        Error(Inner::Simple(ErrorKind::Full))
    }

    pub(crate) fn codec(error: impl Into<Source>) -> Self {
        Error::detailed(Detail::Codec(error.into()))
    }

    pub(crate) fn limit(what: &'static str, limit: usize) -> Self {
        Error::detailed(Detail::Limit { what, limit })
    }

    pub(crate) fn panic(handler: &'static str, message: String) -> Self {
        Error::detailed(Detail::Panic { handler, message })
    }

    pub(crate) fn frame_timeout(timeout: Duration) -> Self {
        Error::detailed(Detail::FrameTimeout(timeout))
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::detailed(Detail::Config(message.into()))
    }

    /// Names the handler that returned an application error ([`Error::other`]); other
    /// kinds are returned unchanged.
    pub(crate) fn with_handler(self, handler: &'static str) -> Self {
        match self.0 {
            Inner::Detailed(detail) => match *detail {
                Detail::Other(source) => Error::detailed(Detail::Handler { handler, source }),
                detail => Error(Inner::Detailed(Box::new(detail))),
            },
            simple => Error(simple),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match &self.0 {
            Inner::Simple(kind) => *kind,
            Inner::Detailed(detail) => match **detail {
                Detail::Io(_) => ErrorKind::Io,
                Detail::Codec(_) => ErrorKind::Codec,
                Detail::Limit { .. } => ErrorKind::Limit,
                Detail::Handler { .. } => ErrorKind::Handler,
                Detail::Panic { .. } => ErrorKind::Panic,
                Detail::FrameTimeout(_) => ErrorKind::FrameTimeout,
                Detail::Config(_) => ErrorKind::Config,
                Detail::Other(_) => ErrorKind::Other,
            },
        }
    }

    /// True when the error says the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.kind() == ErrorKind::Closed
    }

    /// True when a memory cap was reached and the operation refused.
    pub fn is_limit(&self) -> bool {
        self.kind() == ErrorKind::Limit
    }

    /// True when a queue was full and the message was not queued.
    pub fn is_full(&self) -> bool {
        self.kind() == ErrorKind::Full
    }

    /// True when the error came from the codec (malformed or oversized input).
    pub fn is_codec(&self) -> bool {
        self.kind() == ErrorKind::Codec
    }

    /// True when a socket operation failed.
    pub fn is_io(&self) -> bool {
        self.kind() == ErrorKind::Io
    }

    /// True when a handler panicked.
    pub fn is_panic(&self) -> bool {
        self.kind() == ErrorKind::Panic
    }

    /// True when a partial frame was held past the frame timeout.
    pub fn is_frame_timeout(&self) -> bool {
        self.kind() == ErrorKind::FrameTimeout
    }

    /// Which cap was reached and its value in bytes, for [`ErrorKind::Limit`].
    pub fn limit_reached(&self) -> Option<(&'static str, usize)> {
        match self.detail()? {
            Detail::Limit { what, limit } => Some((what, *limit)),
            _ => None,
        }
    }

    /// The handler that failed or panicked, for [`ErrorKind::Handler`] and
    /// [`ErrorKind::Panic`].
    pub fn handler(&self) -> Option<&'static str> {
        match self.detail()? {
            Detail::Handler { handler, .. } | Detail::Panic { handler, .. } => Some(handler),
            _ => None,
        }
    }

    /// The socket error, for [`ErrorKind::Io`].
    pub fn io_error(&self) -> Option<&io::Error> {
        match self.detail()? {
            Detail::Io(error) => Some(error),
            _ => None,
        }
    }

    /// The codec error, if this is one, downcast to its concrete type.
    pub fn codec_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self.detail()? {
            Detail::Codec(source) => source.downcast_ref::<E>(),
            _ => None,
        }
    }

    fn detail(&self) -> Option<&Detail> {
        match &self.0 {
            Inner::Simple(_) => None,
            Inner::Detailed(detail) => Some(detail),
        }
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::detailed(Detail::Io(error))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Simple(ErrorKind::Closed) => f.write_str("the connection is closed"),
            Inner::Simple(ErrorKind::Full) => f.write_str(
                "the connection's outbound queue is full; the peer is not reading fast enough",
            ),
            Inner::Simple(kind) => write!(f, "{kind:?}"),
            Inner::Detailed(detail) => fmt::Display::fmt(detail, f),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Simple(kind) => f.debug_tuple("Error").field(kind).finish(),
            Inner::Detailed(detail) => f.debug_tuple("Error").field(detail).finish(),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.detail()?.source()
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_two_words_and_says_its_kind() {
        assert_eq!(std::mem::size_of::<Error>(), 16);
        assert_eq!(std::mem::size_of::<Result<()>>(), 16);
        assert!(Error::closed().is_closed());
        assert!(Error::full().is_full());
        let limit = Error::limit("the connection's memory budget", 1024);
        assert!(limit.is_limit());
        assert_eq!(
            limit.limit_reached(),
            Some(("the connection's memory budget", 1024))
        );
        assert_eq!(
            limit.to_string(),
            "the connection's memory budget of 1024 bytes reached; the peer is not keeping up"
        );
        let io = Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(io.kind(), ErrorKind::Io);
        assert!(std::error::Error::source(&io).is_some());
        let handler = Error::other("no such room").with_handler("Rooms");
        assert_eq!(handler.kind(), ErrorKind::Handler);
        assert_eq!(handler.handler(), Some("Rooms"));
        assert_eq!(handler.to_string(), "handler `Rooms` failed: no such room");
        assert_eq!(
            Error::closed().with_handler("Rooms").kind(),
            ErrorKind::Closed
        );
    }
}
