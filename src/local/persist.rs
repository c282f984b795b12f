//! What a durable topic adds to publishing, as the local bus sees it: the
//! [`Persist`] trait the live layer implements (so that the bus knows nothing
//! of Redis), and its vocabulary.

use super::error::PublishError;
use super::topic::TopicShared;
use crate::event::{EventId, Headers};
use crate::receipt::Receipt;

/// What a durable topic does on publish besides the ring. Implemented outside the
/// bus (by the Redis bridge), so that the bus knows nothing of Redis.
pub(crate) trait Persist<T>: Send + Sync {
    /// Publishes `value` to the ring (with `TopicShared::publish_stored` or
    /// `try_publish_stored`) and hands it to the outbox, in one order for both.
    /// Never delivers locally an event it will not persist.
    fn publish(
        &self,
        topic: &TopicShared<T>,
        value: T,
        headers: Headers,
        mode: PersistMode,
    ) -> Result<(u64, Option<Receipt>), PublishError<T>>;

    /// Schedules `value` (with `headers`) to reach the stream, and from there
    /// every reader, when `due` by the server's clock. Local subscribers get it
    /// then, through the stream, not now. The receipt resolves to its event id
    /// once Redis holds it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only a live bus persists
    fn schedule(
        &self,
        topic: &TopicShared<T>,
        value: T,
        headers: Headers,
        due: Due,
    ) -> Result<Receipt<EventId>, PublishError<T>>;

    /// Called once a new subscriber's cursor exists. The first call starts the
    /// delivery of other instances' events, so that what was read from the start
    /// position reaches a subscriber rather than an empty ring.
    fn subscribed(&self) {}
}

/// When a scheduled event is due.
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // only a live bus persists
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// At this time, ms since the Unix epoch.
    At(u64),
    /// This many ms after the server's time when it receives the event.
    After(u64),
}

/// How a durable publish behaves when it cannot go on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PersistMode {
    /// `publish`: wait for ring room and (by policy) outbox room; no receipt.
    Publish,
    /// `publish_durable`: as `Publish`, and return a receipt.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only a live bus persists
    Receipt,
    /// `try_publish`: never wait.
    Try,
}
