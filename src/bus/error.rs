//! The hot path's small errors: they hand the event back, or report lag as a value.

use std::error::Error as StdError;
use std::fmt;

/// `publish` failed because the bus is shut down; the event is handed back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublishError<T>(pub T);

/// `try_publish` did not publish; the event is handed back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TryPublishError<T> {
    /// A [`Backpressure`](crate::SlowPolicy::Backpressure) subscriber has not yet read
    /// the event this one would overwrite. Retry later, or shed load.
    Full(T),
    /// The bus is shut down.
    Closed(T),
}

impl<T> TryPublishError<T> {
    /// The event that was not published.
    pub fn into_inner(self) -> T {
        match self {
            TryPublishError::Full(value) | TryPublishError::Closed(value) => value,
        }
    }
}

/// Why a waiting receive returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecvError {
    /// The subscriber fell behind and this many events were overwritten before it
    /// read them. It stays subscribed; the next receive returns the oldest event
    /// still held.
    Lagged(u64),
    /// The bus was shut down and every event published before that has been received.
    Closed,
}

/// Why `try_recv` returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TryRecvError {
    /// Nothing new yet.
    Empty,
    /// See [`RecvError::Lagged`].
    Lagged(u64),
    /// See [`RecvError::Closed`].
    Closed,
}

impl<T> fmt::Debug for PublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublishError(..)")
    }
}

impl<T> fmt::Display for PublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("publish on a closed bus")
    }
}

impl<T> StdError for PublishError<T> {}

impl<T> fmt::Debug for TryPublishError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryPublishError::Full(_) => f.write_str("Full(..)"),
            TryPublishError::Closed(_) => f.write_str("Closed(..)"),
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
        }
    }
}

impl<T> StdError for TryPublishError<T> {}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged(n) => write!(f, "subscriber lagged: {n} events missed"),
            RecvError::Closed => f.write_str("bus closed"),
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
        }
    }
}

impl StdError for TryRecvError {}
