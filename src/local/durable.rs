//! [`DurableTopic`]: a topic whose events are also written to a Redis stream.

use std::fmt;
use std::ops::Deref;

use super::error::PublishError;
use super::persist::Due;
use super::topic::Topic;
use crate::event::{EventId, Headers};
use crate::receipt::Receipt;
use std::time::{Duration, SystemTime};

/// A topic persisted to Redis: every event published to it is also appended to
/// its stream, and (unless turned off) what other instances append there reaches
/// its subscribers. Made by [`LiveBus::durable_topic`](crate::LiveBus::durable_topic),
/// so only a live bus can have one.
///
/// It derefs to the [`Topic`] it is: publish, subscribe and hand `&Topic<T>` to
/// components exactly as on an embedded bus (the same code runs in a backtest).
/// What only a durable topic can do, waiting for Redis to hold an event, is
/// [`publish_durable`](DurableTopic::publish_durable), here.
///
/// # Examples
///
/// ```no_run
/// use tickbus::{Bus, DurableOptions, DurableTopic, RedisConfig, Topic};
///
/// fn book(fills: &Topic<(u64, f64)>) -> Result<(), Box<dyn std::error::Error>> {
///     fills.publish((42, 2.5))?; // persisted: `fills` is durable
///     Ok(())
/// }
///
/// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
/// let fills: DurableTopic<(u64, f64)> = bus.durable_topic("execution:fill", DurableOptions::default())?;
/// book(&fills)?;
/// let stream_id = fills.publish_durable((43, 1.0))?.wait()?;
/// println!("the second fill is stored as {stream_id}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A local topic has no stream, so no receipt to wait for: this does not compile.
///
/// ```compile_fail
/// let bus = tickbus::Bus::builder().build().unwrap();
/// let ticks = bus.topic::<u64>("md:tick").unwrap();
/// let receipt = ticks.publish_durable(1);
/// ```
pub struct DurableTopic<T> {
    topic: Topic<T>,
}

impl<T> DurableTopic<T> {
    /// Wraps a topic known to be durable.
    pub(crate) fn new(topic: Topic<T>) -> Self {
        DurableTopic { topic }
    }

    /// The plain topic handle (a clone shares the topic; publishing through it
    /// still writes the stream).
    pub fn topic(&self) -> &Topic<T> {
        &self.topic
    }

    /// Gives the plain topic handle back.
    pub fn into_topic(self) -> Topic<T> {
        self.topic
    }
}

impl<T: Clone + Send + Sync + 'static> DurableTopic<T> {
    /// Publishes `value` as [`publish`](Topic::publish) does, and returns a
    /// [`Receipt`] that resolves to the event's stream id once Redis has the entry
    /// (and, for [`Durability::AofFsynced`](crate::Durability) topics, once the AOF
    /// is fsynced). Local subscribers get the event at once, as with `publish`.
    ///
    /// Await the receipt, [`wait`](Receipt::wait) on it from a thread, or drop it:
    /// the event is written either way. Receipts resolve in publish order.
    ///
    /// # Errors
    ///
    /// As [`publish`](Topic::publish): [`PublishError::Closed`] after shutdown,
    /// [`PublishError::Backpressure`] when the outbox is full and
    /// [`OutboxFull::Error`](crate::OutboxFull) is set, [`PublishError::Rejected`]
    /// for an event that cannot be encoded or is over the size limit.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use tickbus::{Bus, DurableOptions, RedisConfig};
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let fills = bus.durable_topic::<(String, f64)>("execution:fill", DurableOptions::default())?;
    /// let receipt = fills.publish_durable(("ETH-PERP".into(), 2.5))?;
    /// let stream_id = receipt.await?; // Redis has it
    /// println!("fill stored as {stream_id}");
    /// # Ok(()) }
    /// ```
    pub fn publish_durable(&self, value: T) -> Result<Receipt, PublishError<T>> {
        self.topic.publish_with_receipt(value)
    }

    /// Schedules `value` to be appended to the stream at `due` (a delayed job):
    /// then, and not before, it reaches every reader of the stream: consumer
    /// groups, other instances' subscribers, and this bus's own subscribers
    /// (through the stream; they do not get it now). The returned [`Receipt`]
    /// resolves to the event's id once Redis holds the job.
    ///
    /// "Due" is judged by the Redis server's clock, which the job waits for in
    /// a sorted set (`<prefix>:delayed:{<topic>}`). An instance that scheduled
    /// jobs moves them when they are due; so does every instance that opened
    /// the topic with [`DurableOptions::delayed_poll`](crate::DurableOptions::delayed_poll)
    /// set, whatever instance scheduled them. One atomic script moves each job
    /// once, never early, even with several movers and one of them killed
    /// mid-move. A job moved late (every mover away) is moved as soon as one
    /// runs. Its entry carries a field `due` (`docs/redis-layout.md`).
    ///
    /// Unlike [`publish_durable`](DurableTopic::publish_durable), this does
    /// not queue in the outbox: the receipt fails if Redis does not confirm the
    /// job (a lost reply is retried with the same job, which cannot schedule it
    /// twice unless it was already moved: at least once, with the same event id,
    /// so [`Consumer::seen_before`](crate::group::Consumer::seen_before) can tell).
    ///
    /// # Errors
    ///
    /// [`PublishError::Rejected`] for a value that cannot be encoded or is over
    /// the limits; [`PublishError::Closed`] after shutdown. The receipt: the
    /// Redis error when the job could not be scheduled.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::{Duration, SystemTime};
    /// use tickbus::{Bus, DurableOptions, RedisConfig};
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let reports = bus.durable_topic::<String>("job:report", DurableOptions::default())?;
    /// let at_close = SystemTime::now() + Duration::from_secs(3_600);
    /// let event_id = reports.publish_at("daily-pnl".to_string(), at_close)?.await?;
    /// println!("scheduled as {event_id}");
    /// # Ok(()) }
    /// ```
    pub fn publish_at(
        &self,
        value: T,
        due: SystemTime,
    ) -> Result<Receipt<EventId>, PublishError<T>> {
        let due_ms = due
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        self.topic.schedule(value, Headers::new(), Due::At(due_ms))
    }

    /// As [`publish_at`](DurableTopic::publish_at), due `delay` after the Redis
    /// server receives the job (by the server's clock: no skew between this
    /// machine's clock and the server's).
    ///
    /// # Errors
    ///
    /// As [`publish_at`](DurableTopic::publish_at).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use tickbus::{Bus, DurableOptions, RedisConfig};
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let retries = bus.durable_topic::<u64>("order:retry", DurableOptions::default())?;
    /// retries.publish_after(42, Duration::from_millis(250))?.await?;
    /// # Ok(()) }
    /// ```
    pub fn publish_after(
        &self,
        value: T,
        delay: Duration,
    ) -> Result<Receipt<EventId>, PublishError<T>> {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.topic
            .schedule(value, Headers::new(), Due::After(delay_ms))
    }
}

impl<T> Deref for DurableTopic<T> {
    type Target = Topic<T>;

    fn deref(&self) -> &Topic<T> {
        &self.topic
    }
}

impl<T> AsRef<Topic<T>> for DurableTopic<T> {
    fn as_ref(&self) -> &Topic<T> {
        &self.topic
    }
}

impl<T> From<DurableTopic<T>> for Topic<T> {
    fn from(durable: DurableTopic<T>) -> Topic<T> {
        durable.topic
    }
}

impl<T> Clone for DurableTopic<T> {
    fn clone(&self) -> Self {
        DurableTopic {
            topic: self.topic.clone(),
        }
    }
}

impl<T> fmt::Debug for DurableTopic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DurableTopic").field(&self.topic).finish()
    }
}
