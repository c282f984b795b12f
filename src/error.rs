//! Errors of the I/O-facing layers: one [`Error`] with a [`ErrorKind`] and the
//! `source()` chain kept.
//!
//! The hot path (publish and receive on the local bus) has its own small errors that
//! hand the event back or report a lag as a value: see [`crate::PublishError`],
//! [`crate::TryPublishError`], [`crate::RecvError`] and [`crate::TryRecvError`].

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// What went wrong, in a form a caller can match on.
///
/// New kinds are added as tickbus grows (Redis, consumer groups, the cache), so the
/// enum is `#[non_exhaustive]`: match the kinds you handle and keep a `_` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A topic name broke one of the naming rules (see [`crate::TopicName`]).
    InvalidTopic,
    /// A subscription pattern broke one of the pattern rules (see [`crate::Pattern`]).
    InvalidPattern,
    /// A topic was asked for with a payload type other than the one it was created with.
    TopicTypeMismatch,
    /// A configuration value is out of range.
    InvalidConfig,
    /// The bus has shut down.
    Closed,
    /// Encoded bytes are larger than the configured maximum; nothing was decoded or sent.
    PayloadTooLarge,
    /// Bytes are not valid MessagePack, are truncated, nest too deeply, or are followed
    /// by trailing bytes.
    Malformed,
    /// Well-formed MessagePack of the wrong shape: a missing field, a field of the
    /// wrong type, an unknown field in the envelope.
    WrongShape,
    /// An envelope written by a newer tickbus wire version than this one understands.
    UnsupportedVersion,
    /// A value could not be encoded (for example a map with non-string keys where
    /// the format needs strings).
    Encode,
    /// Redis cannot be reached, or the connection was lost (live mode).
    Unavailable,
    /// Redis refused the credentials, or the ACL user lacks a permission.
    Auth,
    /// The Redis server lacks what was asked for (too old a version; `WAITAOF` before
    /// 7.2 or without AOF).
    Unsupported,
    /// The outbox of events waiting for Redis is full and the topic's policy is to
    /// refuse rather than wait.
    Backpressure,
    /// Redis answered a command with an error (a key of the wrong type, out of memory).
    Redis,
    /// A command did not complete in time; whether it took effect is unknown.
    Timeout,
    /// A consumer group (or its stream) vanished while a consumer read from it,
    /// and the consumer is configured to stop rather than create it again.
    GroupMissing,
    /// A replay range starts before the oldest entry its stream still holds:
    /// what came before was trimmed or deleted.
    Trimmed,
    /// A cache loader failed (its error is in the message).
    Loader,
    /// Something asked for by name does not exist in Redis: a topic's stream, a
    /// consumer group, a dead letter (the admin queries, `Admin`).
    NotFound,
    /// A topic created for an exclusive publisher
    /// ([`TopicOptions::exclusive_publisher`](crate::TopicOptions::exclusive_publisher))
    /// was published to through another handle, or its publisher is already taken;
    /// or a shared topic was asked for one.
    ExclusivePublisher,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidTopic => "invalid topic",
            ErrorKind::InvalidPattern => "invalid pattern",
            ErrorKind::TopicTypeMismatch => "topic type mismatch",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::Closed => "bus closed",
            ErrorKind::PayloadTooLarge => "payload too large",
            ErrorKind::Malformed => "malformed MessagePack",
            ErrorKind::WrongShape => "wrong shape",
            ErrorKind::UnsupportedVersion => "unsupported wire version",
            ErrorKind::Encode => "encode failed",
            ErrorKind::Unavailable => "redis unavailable",
            ErrorKind::Auth => "redis authentication failed",
            ErrorKind::Unsupported => "unsupported by the redis server",
            ErrorKind::Backpressure => "outbox full",
            ErrorKind::Redis => "redis error",
            ErrorKind::Timeout => "timed out",
            ErrorKind::ExclusivePublisher => "exclusive publisher",
            ErrorKind::GroupMissing => "consumer group missing",
            ErrorKind::Trimmed => "range trimmed",
            ErrorKind::Loader => "cache loader failed",
            ErrorKind::NotFound => "not found",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of tickbus' fallible operations outside the publish/receive hot path.
///
/// It carries a [`ErrorKind`] to match on, a message saying what exactly was wrong,
/// and, when a lower layer failed, that error as [`source()`](StdError::source).
///
/// # Examples
///
/// ```
/// use tickbus::{ErrorKind, TopicName};
///
/// let err = TopicName::new("Position:Updated").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidTopic);
/// assert!(err.to_string().contains("lowercase"));
/// ```
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Arc<str>,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// Creates an error of `kind` with a message that says what was wrong.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: Arc::from(message.into()),
            source: None,
        }
    }

    /// Attaches the lower-level error that caused this one.
    pub(crate) fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Shorthand for `Result<T, tickbus::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
