//! The hot path's small errors: they hand the event back, or report lag as a value.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::error::Error;
use crate::event::{InstanceId, StreamId};

/// `publish` did not publish; the event is handed back.
///
/// A local-only topic fails only when it is closed. A durable topic (live mode) can
/// also refuse an event it cannot persist, before any subscriber sees it.
#[derive(Clone)]
pub enum PublishError<T> {
    /// The topic is closed or the bus shut down.
    Closed(T),
    /// Durable topic: the outbox of events waiting for Redis is full and the
    /// configured policy is [`OutboxFull::Error`](crate::OutboxFull::Error). Shed load
    /// or retry later; [`Bus::health`](crate::Bus::health) says why Redis is behind.
    Backpressure(T),
    /// Durable topic: the value cannot be encoded (an unsupported shape, or larger
    /// than [`CodecLimits::max_encoded_size`](crate::codec::CodecLimits)).
    Rejected(T, Error),
}

impl<T> PublishError<T> {
    /// The event that was not published.
    pub fn into_inner(self) -> T {
        match self {
            PublishError::Closed(value)
            | PublishError::Backpressure(value)
            | PublishError::Rejected(value, _) => value,
        }
    }
}

/// `try_publish` did not publish; the event is handed back.
#[derive(Clone)]
pub enum TryPublishError<T> {
    /// A [`Backpressure`](crate::SlowPolicy::Backpressure) subscriber has not yet read
    /// the event this one would overwrite, or (durable topic) the outbox of events
    /// waiting for Redis is full. Retry later, or shed load.
    Full(T),
    /// The bus is shut down.
    Closed(T),
    /// Durable topic: the value cannot be encoded. See [`PublishError::Rejected`].
    Rejected(T, Error),
}

impl<T> TryPublishError<T> {
    /// The event that was not published.
    pub fn into_inner(self) -> T {
        match self {
            TryPublishError::Full(value)
            | TryPublishError::Closed(value)
            | TryPublishError::Rejected(value, _) => value,
        }
    }
}

/// Why a waiting receive returned no event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecvError {
    /// The subscriber fell behind and this many events were overwritten before it
    /// read them. It stays subscribed; the next receive returns the oldest event
    /// still held.
    Lagged(u64),
    /// The bus was shut down and every event published before that has been received.
    Closed,
    /// An event from another instance whose payload does not decode into this
    /// topic's type. It takes the event's place in the order; the subscriber stays
    /// subscribed and the next receive returns the next event.
    Undecodable(UndecodableEvent),
}

/// Why `try_recv` returned no event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TryRecvError {
    /// Nothing new yet.
    Empty,
    /// See [`RecvError::Lagged`].
    Lagged(u64),
    /// See [`RecvError::Closed`].
    Closed,
    /// See [`RecvError::Undecodable`].
    Undecodable(UndecodableEvent),
}

/// A stream entry of a durable topic that did not decode into the topic's payload
/// type: which entry, who wrote it, and the decode error. Also counted in
/// [`RedisStats::undecodable`](crate::RedisStats) and logged.
#[derive(Clone, Debug)]
pub struct UndecodableEvent {
    pub(crate) stream_id: StreamId,
    pub(crate) source: InstanceId,
    pub(crate) error: Arc<Error>,
}

impl UndecodableEvent {
    /// The id of the stream entry.
    pub fn stream_id(&self) -> StreamId {
        self.stream_id
    }

    /// The instance that wrote it (its `src` field).
    pub fn source(&self) -> InstanceId {
        self.source
    }

    /// Why it did not decode.
    pub fn error(&self) -> &Error {
        &self.error
    }
}

/// Two reports are equal when they are about the same stream entry.
impl PartialEq for UndecodableEvent {
    fn eq(&self, other: &Self) -> bool {
        self.stream_id == other.stream_id && self.source == other.source
    }
}

impl Eq for UndecodableEvent {}

impl std::hash::Hash for UndecodableEvent {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.stream_id.hash(state);
    }
}

impl fmt::Display for UndecodableEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream entry {} from {} does not decode: {}",
            self.stream_id, self.source, self.error
        )
    }
}

impl<T> fmt::Debug for PublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Closed(_) => f.write_str("Closed(..)"),
            PublishError::Backpressure(_) => f.write_str("Backpressure(..)"),
            PublishError::Rejected(_, error) => write!(f, "Rejected(.., {error:?})"),
        }
    }
}

impl<T> fmt::Display for PublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Closed(_) => f.write_str("publish on a closed topic"),
            PublishError::Backpressure(_) => {
                f.write_str("outbox full: Redis has not taken the events already waiting")
            }
            PublishError::Rejected(_, error) => write!(f, "event rejected: {error}"),
        }
    }
}

impl<T> StdError for PublishError<T> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            PublishError::Rejected(_, error) => Some(error),
            _ => None,
        }
    }
}

impl<T> fmt::Debug for TryPublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryPublishError::Full(_) => f.write_str("Full(..)"),
            TryPublishError::Closed(_) => f.write_str("Closed(..)"),
            TryPublishError::Rejected(_, error) => write!(f, "Rejected(.., {error:?})"),
        }
    }
}

impl<T> fmt::Display for TryPublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryPublishError::Full(_) => {
                f.write_str("topic full: a backpressure subscriber has not read the oldest event")
            }
            TryPublishError::Closed(_) => f.write_str("publish on a closed bus"),
            TryPublishError::Rejected(_, error) => write!(f, "event rejected: {error}"),
        }
    }
}

impl<T> StdError for TryPublishError<T> {}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged(n) => write!(f, "subscriber lagged: {n} events missed"),
            RecvError::Closed => f.write_str("bus closed"),
            RecvError::Undecodable(event) => event.fmt(f),
        }
    }
}

impl StdError for RecvError {}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no event yet"),
            TryRecvError::Lagged(n) => write!(f, "subscriber lagged: {n} events missed"),
            TryRecvError::Closed => f.write_str("bus closed"),
            TryRecvError::Undecodable(event) => event.fmt(f),
        }
    }
}

impl StdError for TryRecvError {}

/// Equal when the variant and the value are (and, for `Rejected`, the error kind).
impl<T: PartialEq> PartialEq for PublishError<T> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PublishError::Closed(a), PublishError::Closed(b))
            | (PublishError::Backpressure(a), PublishError::Backpressure(b)) => a == b,
            (PublishError::Rejected(a, e), PublishError::Rejected(b, f)) => {
                a == b && e.kind() == f.kind()
            }
            _ => false,
        }
    }
}

impl<T: Eq> Eq for PublishError<T> {}

/// Equal when the variant and the value are (and, for `Rejected`, the error kind).
impl<T: PartialEq> PartialEq for TryPublishError<T> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TryPublishError::Full(a), TryPublishError::Full(b))
            | (TryPublishError::Closed(a), TryPublishError::Closed(b)) => a == b,
            (TryPublishError::Rejected(a, e), TryPublishError::Rejected(b, f)) => {
                a == b && e.kind() == f.kind()
            }
            _ => false,
        }
    }
}

impl<T: Eq> Eq for TryPublishError<T> {}
