//! A delivery and its ack handle: [`Delivery`], [`Acker`], [`DeliveryInfo`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{closed, Command, Counters, DeadLetterOrder, GroupCore, GroupStream};
use crate::error::Result;
use crate::event::{EventId, InstanceId, StreamId, TopicName};

/// Where one delivery came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The event's id (the same on every delivery of it: dedup by it).
    pub event_id: EventId,
    /// The topic it was published to.
    pub topic: TopicName,
    /// Its entry in the topic's stream.
    pub stream_id: StreamId,
    /// The instance that published it.
    pub source: InstanceId,
    /// Publish time, ns since the Unix epoch.
    pub timestamp_ns: u64,
    /// Deliveries of this event to the group so far, this one included (1 the
    /// first time).
    pub deliveries: u32,
    /// The event's headers (field `h` of its entry), in order, repeated names
    /// kept; empty when it has none.
    pub headers: Vec<(String, String)>,
}

/// The ack half of a [`Delivery`] ([`Delivery::split`]): acknowledges, rejects
/// or dead-letters it. Dropping it without any of these leaves the event pending
/// in the group: it is delivered again (to any member) after the group's ack wait.
#[must_use = "a delivery that is neither acked, nacked nor termed is delivered again after the ack wait"]
pub struct Acker {
    pub(super) core: Arc<GroupCore>,
    pub(super) stream: Arc<GroupStream>,
    pub(super) info: DeliveryInfo,
    pub(super) fields: Vec<(Bytes, Bytes)>,
    pub(super) done: bool,
    /// `tickbus.delivery` (DEBUG): from the hand-over to the ack, nack or term.
    pub(super) span: tracing::Span,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("group", &self.core.group)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Acker {
    /// Where the delivery came from.
    pub fn info(&self) -> &DeliveryInfo {
        &self.info
    }

    /// The `tickbus.delivery` span of this delivery (level DEBUG, target
    /// `tickbus::group`; fields `group`, `consumer`, `topic`, `event_id`,
    /// `stream_id`, `deliveries`). It closes when the delivery is acked, nacked,
    /// termed or dropped; enter it (or `instrument` the handler's future with it)
    /// to put the handler's own logs under it. Disabled when no subscriber wants
    /// DEBUG for `tickbus::group`.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Acknowledges the event: it is handled and never delivered again. Returns at
    /// once; the ack joins the next multi-id `XACK` (a few µs later, or as soon as
    /// Redis is back). If the process dies before that `XACK`, the event is
    /// delivered again: handlers must tolerate duplicates (see [`Consumer::seen_before`](super::Consumer::seen_before)).
    pub fn ack(mut self) {
        self.done = true;
        self.core
            .push_ack(Arc::clone(&self.stream), self.info.stream_id);
    }

    /// As [`ack`](Acker::ack), and resolves once Redis confirmed the `XACK`:
    /// the event is no longer pending in the group (acknowledged by this call, or
    /// already by another member that claimed it after the ack wait).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`](crate::error::ErrorKind::Closed) when the consumer shut down first (the event stays
    /// pending and is delivered again); [`ErrorKind::Redis`](crate::error::ErrorKind::Redis) when the group is gone.
    pub fn ack_confirmed(mut self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.done = true;
        let (tx, rx) = oneshot::channel();
        self.core.send(Command::Ack {
            stream: Arc::clone(&self.stream),
            id: self.info.stream_id,
            done: Some(tx),
        });
        async move { rx.await.unwrap_or_else(|_| Err(closed())) }
    }

    /// Rejects this delivery: the event comes back after `delay`, or after the
    /// group's [`RetryBackoff`](super::RetryBackoff) for this delivery count when `None`. At the
    /// group's `max_deliveries` it is dead-lettered instead (reason
    /// `max_deliveries`). Until it comes back it keeps its in-flight place and
    /// stays claimed by this member (other members take it over only if this one
    /// dies).
    pub fn nack(mut self, delay: Option<Duration>) {
        self.done = true;
        let config = &self.core.config;
        if self.info.deliveries >= config.max_deliveries {
            let error = format!("nacked on delivery {}", self.info.deliveries);
            self.dead_letter("max_deliveries", error);
            return;
        }
        let delay = delay.unwrap_or_else(|| config.backoff.delay(self.info.deliveries));
        self.core.send(Command::Nack {
            stream: Arc::clone(&self.stream),
            id: self.info.stream_id,
            deliveries: self.info.deliveries,
            delay,
        });
    }

    /// Tells the group the event is still being worked on: resets its idle time,
    /// so no other member claims it for another ack wait.
    pub fn in_progress(&self) {
        self.core.send(Command::Progress {
            stream: Arc::clone(&self.stream),
            id: self.info.stream_id,
            received: false,
        });
    }

    /// Dead-letters the event now, with `reason` (it is never retried).
    pub fn term(mut self, reason: &str) {
        self.done = true;
        self.dead_letter("term", reason.to_string());
    }

    pub(super) fn dead_letter(&mut self, reason: &str, error: String) {
        self.core.send(Command::DeadLetter(DeadLetterOrder {
            stream: Arc::clone(&self.stream),
            id: self.info.stream_id,
            fields: std::mem::take(&mut self.fields),
            deliveries: self.info.deliveries,
            reason: reason.to_string(),
            error,
        }));
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if !self.done {
            // Left pending in Redis: delivered again after the ack wait.
            Counters::add(&self.core.counters.dropped, 1);
            self.core.release(1);
        }
    }
}

/// An event delivered to one member of a group: the decoded payload and the
/// handle that acknowledges it. Derefs to the payload.
///
/// # Examples
///
/// ```no_run
/// use tickbus::{Bus, RedisConfig};
/// use tickbus::group::GroupConfig;
///
/// # async fn run() -> tickbus::Result<()> {
/// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
/// let mut fills = bus.group::<(u64, f64)>("booking", "execution:fill", GroupConfig::default())?;
/// while let Some(delivery) = fills.recv().await {
///     let delivery = delivery?;
///     let (order, qty) = *delivery;
///     if qty > 0.0 {
///         println!("book {order}: {qty} (delivery {})", delivery.info().deliveries);
///         delivery.ack();
///     } else {
///         delivery.term("non-positive quantity");
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a delivery that is neither acked, nacked nor termed is delivered again after the ack wait"]
pub struct Delivery<T> {
    pub(super) value: T,
    pub(super) acker: Acker,
}

impl<T> Delivery<T> {
    /// Where the delivery came from: event id, topic, stream id, delivery count.
    pub fn info(&self) -> &DeliveryInfo {
        &self.acker.info
    }

    /// See [`Acker::span`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn handle(delivery: tickbus::group::Delivery<String>) {
    /// let _in_delivery = delivery.span().clone().entered(); // logs below carry the event id
    /// tracing::info!(len = delivery.len(), "labelling");
    /// delivery.ack();
    /// # }
    /// ```
    pub fn span(&self) -> &tracing::Span {
        self.acker.span()
    }

    /// The payload.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Separates the payload from the ack handle (to hand the work to another task).
    pub fn split(self) -> (T, Acker) {
        (self.value, self.acker)
    }

    /// See [`Acker::ack`].
    pub fn ack(self) {
        self.acker.ack();
    }

    /// See [`Acker::ack_confirmed`].
    pub fn ack_confirmed(self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.acker.ack_confirmed()
    }

    /// See [`Acker::nack`].
    pub fn nack(self, delay: Option<Duration>) {
        self.acker.nack(delay);
    }

    /// See [`Acker::in_progress`].
    pub fn in_progress(&self) {
        self.acker.in_progress();
    }

    /// See [`Acker::term`].
    pub fn term(self, reason: &str) {
        self.acker.term(reason);
    }
}

impl<T> std::ops::Deref for Delivery<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}
