//! The crate's error type.
//!
//! One public [`Error`] for everything the framework reports. Codec errors from any
//! `tokio_util` codec are carried as a boxed source, so user codecs plug in unchanged.

use std::io;

/// Everything that can go wrong in Tethernet.
///
/// The message of every variant says what went wrong and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),

    /// The codec rejected inbound bytes or an outbound message (frame too long, malformed
    /// input). The connection is closed after the pipeline has been told.
    #[error("codec error: {0}")]
    Codec(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),

    /// The connection's outbound queue is full; the message was not queued (see
    /// [`Channel::try_write`](crate::Channel::try_write)).
    #[error("the connection's outbound queue is full; the peer is not reading fast enough")]
    Full,

    /// The connection is closed; the message was not written.
    #[error("the connection is closed")]
    Closed,

    /// A cap was reached: the operation would have held more memory than the limit
    /// allows, and was refused (the message was dropped and counted).
    #[error("{what} of {limit} bytes reached; the peer is not keeping up")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value, in bytes.
        limit: usize,
    },

    /// A handler failed. The connection is closed after the pipeline has been told.
    #[error("handler `{handler}` failed: {source}")]
    Handler {
        /// The handler's type name.
        handler: &'static str,
        /// What the handler returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A handler panicked. The connection is closed as after an error; other connections
    /// are not affected.
    #[error("handler `{handler}` panicked: {message}")]
    Panic {
        /// The handler's type name.
        handler: &'static str,
        /// The panic message, when it was a string.
        message: String,
    },

    /// The peer started a frame and did not finish it within the frame timeout (a
    /// slowloris peer, or one far too slow); the connection is closed.
    #[error("a frame was not completed within {0:?} of its first byte; closing the connection (raise ServerBuilder::frame_timeout if peers are legitimately this slow)")]
    FrameTimeout(std::time::Duration),

    /// Binding or configuring a server or client failed.
    #[error("{0}")]
    Config(String),

    /// An error raised by application code, for handlers that want to fail with a message.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// Wraps any error raised by application code.
    pub fn other(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Error::Other(error.into())
    }

    /// True when the error says the connection is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed)
    }

    /// True when a memory cap was reached and the operation refused.
    pub fn is_limit(&self) -> bool {
        matches!(self, Error::Limit { .. })
    }

    /// True when a queue was full and the message was not queued.
    pub fn is_full(&self) -> bool {
        matches!(self, Error::Full)
    }

    /// True when the error came from the codec (malformed or oversized input).
    pub fn is_codec(&self) -> bool {
        matches!(self, Error::Codec(_))
    }

    /// The codec error, if this is one, downcast to its concrete type.
    pub fn codec_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Codec(source) => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
