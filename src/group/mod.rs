//! Consumer groups: each event of a topic (or of every topic matching a pattern)
//! goes to one member of a group, at least once.
//!
//! A [`Consumer`] is one member. It is a `Stream` of [`Delivery`]s; each delivery
//! ends with [`ack`](Delivery::ack), [`nack`](Delivery::nack) (deliver again after a
//! delay) or [`term`](Delivery::term) (dead-letter now). A consumer's own I/O
//! thread reads with `XREADGROUP`, batches acks into multi-id `XACK`s, claims what
//! dead members left pending (`XAUTOCLAIM`), dead-letters what fails too often or
//! does not decode, and removes idle members. See `docs/guarantees.md` for what is
//! promised and `docs/redis-layout.md` for the keys.
//!
//! Self-filtering does not apply in a group: a member receives the events its own
//! instance published (otherwise nobody would).

mod config;
mod dead_letter;
mod worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

pub(crate) use config::validate_name;
pub use config::{GroupConfig, GroupStart, OnMissingGroup, RetryBackoff};
pub(crate) use dead_letter::{list as list_dead_letters, redrive as redrive_dead_letters};
pub use dead_letter::{DeadLetter, Redrive};

use crate::codec::{self, CodecLimits};
use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{EventId, InstanceId, Pattern, StreamId, TopicName};
use crate::sync::InFlight;
use crate::transport::keys;
use crate::wire::{self, EntryLimits};

/// What a group reads: one topic, or every topic matching a pattern.
#[derive(Clone, Debug)]
pub(crate) enum Subject {
    Topic(TopicName),
    Pattern(Pattern),
}

impl Subject {
    /// A topic name, or a pattern when `text` has wildcards.
    pub(crate) fn parse(text: &str) -> Result<Subject> {
        if text.contains(['*', '>']) {
            Pattern::new(text).map(Subject::Pattern)
        } else {
            TopicName::new(text).map(Subject::Topic)
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Topic(topic) => topic.fmt(f),
            Subject::Pattern(pattern) => pattern.fmt(f),
        }
    }
}

/// What the upkeep loop last read of the group in Redis (`XINFO GROUPS`, once a
/// second), summed over the group's streams: for metrics and the health report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupObserved {
    /// Entries delivered to the group and not acked (every member).
    pub(crate) pending: u64,
    /// Entries not yet delivered to the group (`None` when Redis cannot tell).
    pub(crate) lag: Option<u64>,
}

/// One stream a group reads, with its keys.
#[derive(Debug)]
pub(crate) struct GroupStream {
    pub(crate) topic: TopicName,
    pub(crate) key: Arc<str>,
    pub(crate) dlq_key: Arc<str>,
}

impl GroupStream {
    /// This stream's identity within one consumer (the address of its key: a
    /// consumer keeps one `GroupStream` per stream for its whole life).
    pub(crate) fn tag(&self) -> usize {
        self.key.as_ptr() as usize
    }

    pub(crate) fn new(prefix: &str, topic: TopicName) -> Self {
        GroupStream {
            key: crate::transport::stream_key(prefix, &topic).into(),
            dlq_key: keys::dlq(prefix, &topic).into(),
            topic,
        }
    }
}

/// Counters of one consumer, since it started ([`Consumer::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStats {
    /// Deliveries handed to the application (first deliveries and redeliveries).
    pub delivered: u64,
    /// Of those, deliveries of an event delivered before (delivery count > 1).
    pub redelivered: u64,
    /// Acks Redis confirmed.
    pub acked: u64,
    /// Nacks (each one a later redelivery, or a dead letter at the limit).
    pub nacked: u64,
    /// Events this consumer moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Pending entries that no longer existed (trimmed or deleted): cleared from
    /// the group, never handed to the application.
    pub trimmed_pending: u64,
    /// Entries trimmed before this group read them, as far as Redis lets it be
    /// counted (see `docs/guarantees.md`).
    pub trimmed_unread: u64,
    /// Entries claimed from other members after their ack wait.
    pub reclaimed: u64,
    /// Times the group (or its stream) had vanished and was created again.
    pub recreated: u64,
    /// Deliveries dropped without an ack, nack or term (left pending).
    pub dropped: u64,
    /// Idle members removed from the group.
    pub consumers_removed: u64,
    /// Redis errors seen by this consumer's I/O (each one retried).
    pub errors: u64,
    /// Deliveries held now (handed out or queued, not yet acked).
    pub in_flight: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) trimmed_pending: AtomicU64,
    pub(crate) trimmed_unread: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) recreated: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) consumers_removed: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the consumer's I/O thread is asked to do.
pub(crate) enum Command {
    Ack {
        stream: Arc<GroupStream>,
        id: StreamId,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Nack {
        stream: Arc<GroupStream>,
        id: StreamId,
        deliveries: u32,
        delay: Duration,
    },
    /// Reset the idle time (`in_progress`); with `received`, also take the
    /// entry off the queued set once done (it reached the application late).
    Progress {
        stream: Arc<GroupStream>,
        id: StreamId,
        received: bool,
    },
    DeadLetter(DeadLetterOrder),
    Info(oneshot::Sender<Result<GroupInfo>>),
    SeenBefore {
        event: EventId,
        ttl: Duration,
        done: oneshot::Sender<Result<bool>>,
    },
}

/// An event to move to the dead-letter stream.
pub(crate) struct DeadLetterOrder {
    pub(crate) stream: Arc<GroupStream>,
    pub(crate) id: StreamId,
    pub(crate) fields: Vec<(Bytes, Bytes)>,
    pub(crate) deliveries: u32,
    pub(crate) reason: String,
    pub(crate) error: String,
}

/// An entry read for the application, before decoding.
pub(crate) struct ReadEntry {
    pub(crate) stream: Arc<GroupStream>,
    pub(crate) id: StreamId,
    pub(crate) fields: Vec<(Bytes, Bytes)>,
    pub(crate) deliveries: u32,
}

/// What the I/O thread hands to the consumer: the entries of one read (one
/// channel operation and at most one wake-up per read, not per entry).
pub(crate) enum Incoming {
    Entries {
        entries: Vec<ReadEntry>,
        read_at: std::time::Instant,
    },
    Failed(Error),
}

/// Received entries taken off [`GroupCore::queued`] in one go, every this many
/// (and whenever the consumer's local queue runs dry).
const RECEIVED_BATCH: usize = 64;

/// What a consumer's handle and its I/O thread share.
/// The consumer groups joined through one bus (weak: a dropped consumer
/// leaves), for metrics and the health report.
#[derive(Debug, Default)]
pub(crate) struct GroupRegistry(Mutex<Vec<std::sync::Weak<GroupCore>>>);

impl GroupRegistry {
    /// Remembers a consumer group joined through this bus.
    pub(crate) fn add(&self, core: &Arc<GroupCore>) {
        let mut groups = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.retain(|group| group.strong_count() > 0);
        groups.push(Arc::downgrade(core));
    }

    /// The consumer groups joined through this bus that still run.
    pub(crate) fn running(&self) -> Vec<Arc<GroupCore>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|group| !group.is_stopping())
            .collect()
    }
}

pub(crate) struct GroupCore {
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) config: GroupConfig,
    pub(crate) redis: RedisConfig,
    pub(crate) subject: Subject,
    pub(crate) counters: Counters,
    /// In-flight places (`sync::InFlight`, with its loom models), both kinds in
    /// one word so that one load sees a consistent pair: deliveries held (handed
    /// out or queued, not yet acked), and places taken for a read or claim under
    /// way (not deliveries yet, so not in [`GroupStats::in_flight`]).
    pub(crate) in_flight: InFlight,
    /// Wakes the reader when acks make room.
    pub(crate) room: tokio::sync::Notify,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// Plain acks waiting for the control loop's next `XACK` (stream, entry):
    /// an ack is a push here, and wakes the loop only when the buffer was empty.
    pub(crate) acks: Mutex<Vec<(Arc<GroupStream>, StreamId)>>,
    /// Wakes the control loop when [`acks`](GroupCore::acks) stops being empty.
    pub(crate) acks_ready: tokio::sync::Notify,
    /// `true` once the consumer is stopping (a `watch`, so no task misses it).
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    pub(crate) streams: Mutex<Vec<Arc<GroupStream>>>,
    /// Nacked entries this member keeps until their redelivery (stream key,
    /// entry): if trimmed meanwhile, the redelivery counts them, not a claim.
    pub(crate) nacked: Mutex<HashSet<(Arc<str>, StreamId)>>,
    /// Entries read for this member's application and still queued (not yet
    /// received by it): a claim of its own idle entries refreshes these
    /// instead of delivering them a second time to the same process. Once
    /// received, a delivery follows the ack wait like any other.
    /// Keyed by [`GroupStream::tag`] (no string hashing per delivery).
    pub(crate) queued: Mutex<HashSet<(usize, StreamId)>>,
    pub(crate) limits: CodecLimits,
    /// The group's pending and lag as last read (see [`GroupObserved`]).
    pub(crate) observed: Mutex<Option<GroupObserved>>,
    /// Per stream key, the entries trimmed unread already counted (the checks
    /// run on the upkeep loop and on the reader: see `check_unread_trim`).
    pub(crate) unread_seen: Mutex<HashMap<Arc<str>, u64>>,
}

impl GroupCore {
    /// Takes up to `want` in-flight places; returns how many it got.
    pub(crate) fn reserve(&self, want: usize) -> usize {
        self.in_flight.reserve(want)
    }

    /// Ends a read that [`reserve`](GroupCore::reserve)d `reserved` places:
    /// `used` of them now hold deliveries, the rest are given back.
    pub(crate) fn settle(&self, reserved: usize, used: usize) {
        if self.in_flight.settle(reserved, used) {
            self.room.notify_one();
        }
    }

    /// Gives back the places of `n` deliveries.
    pub(crate) fn release(&self, n: usize) {
        if self.in_flight.release(n) {
            self.room.notify_one();
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the consumer is stopping (at once if it already is).
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        }
    }

    pub(crate) fn streams(&self) -> Vec<Arc<GroupStream>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Queues a plain ack for the next `XACK`.
    pub(crate) fn push_ack(&self, stream: Arc<GroupStream>, id: StreamId) {
        let mut acks = self
            .acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = acks.is_empty();
        acks.push((stream, id));
        drop(acks);
        if first {
            // Keeps a permit if the loop is not waiting yet: no lost wake-up.
            self.acks_ready.notify_one();
        }
    }

    /// Counters since this consumer started.
    pub(crate) fn stats(&self) -> GroupStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GroupStats {
            delivered: get(&c.delivered),
            redelivered: get(&c.redelivered),
            acked: get(&c.acked),
            nacked: get(&c.nacked),
            dead_lettered: get(&c.dead_lettered),
            trimmed_pending: get(&c.trimmed_pending),
            trimmed_unread: get(&c.trimmed_unread),
            reclaimed: get(&c.reclaimed),
            recreated: get(&c.recreated),
            dropped: get(&c.dropped),
            consumers_removed: get(&c.consumers_removed),
            errors: get(&c.errors),
            // Places taken by a read under way hold no delivery yet.
            in_flight: self.in_flight.held(),
        }
    }

    /// The group's pending and lag as last read from Redis (`None` before the
    /// first read, about a second after the start).
    pub(crate) fn observed(&self) -> Option<GroupObserved> {
        *self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The topics of the streams this consumer reads now.
    pub(crate) fn topics(&self) -> Vec<TopicName> {
        self.streams()
            .iter()
            .map(|stream| stream.topic.clone())
            .collect()
    }
}

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
    core: Arc<GroupCore>,
    stream: Arc<GroupStream>,
    info: DeliveryInfo,
    fields: Vec<(Bytes, Bytes)>,
    done: bool,
    /// `tickbus.delivery` (DEBUG): from the hand-over to the ack, nack or term.
    span: tracing::Span,
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
    /// delivered again: handlers must tolerate duplicates (see [`Consumer::seen_before`]).
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
    /// [`ErrorKind::Closed`] when the consumer shut down first (the event stays
    /// pending and is delivered again); [`ErrorKind::Redis`] when the group is gone.
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
    /// group's [`RetryBackoff`] for this delivery count when `None`. At the
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

    fn dead_letter(&mut self, reason: &str, error: String) {
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
/// use tickbus::{Bus, GroupConfig, RedisConfig};
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
pub struct Delivery<T> {
    value: T,
    acker: Acker,
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
    /// # fn handle(delivery: tickbus::Delivery<String>) {
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

/// One stream of a group, as Redis reports it ([`Consumer::info`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStreamInfo {
    /// The topic.
    pub topic: Option<TopicName>,
    /// Entries in the stream now.
    pub length: u64,
    /// Entries delivered to the group and not acknowledged yet (all members).
    pub pending: u64,
    /// Entries not yet delivered to the group. `None` when Redis cannot tell
    /// (after deletions in the middle of the stream).
    pub lag: Option<u64>,
    /// The last entry delivered to the group.
    pub last_delivered: StreamId,
    /// The members, with what each holds.
    pub consumers: Vec<ConsumerInfo>,
}

/// One member of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Entries it holds unacknowledged.
    pub pending: u64,
    /// Time since it last read or claimed.
    pub idle: Duration,
}

/// A group's state in Redis, per stream ([`Consumer::info`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name.
    pub group: String,
    /// One entry per stream the group reads.
    pub streams: Vec<GroupStreamInfo>,
}

impl GroupInfo {
    /// Pending entries over all streams.
    pub fn pending(&self) -> u64 {
        self.streams.iter().map(|s| s.pending).sum()
    }

    /// Undelivered entries over all streams (`None` if Redis cannot tell for one).
    pub fn lag(&self) -> Option<u64> {
        self.streams.iter().map(|s| s.lag).sum()
    }
}

/// One member of a consumer group: a `Stream` of [`Delivery`]s (also
/// [`recv`](Consumer::recv) and [`recv_blocking`](Consumer::recv_blocking)).
/// Created by [`Bus::group`](crate::Bus::group).
///
/// It holds at most `max_in_flight` deliveries (handed out and not yet acked);
/// at the limit it stops reading until acks make room. Dropping it (or
/// [`shutdown`](Consumer::shutdown)) sends the acks already given (bounded by
/// `RedisConfig::shutdown_timeout`) and stops its I/O thread; deliveries still
/// held stay pending and are delivered again after the ack wait.
pub struct Consumer<T> {
    core: Arc<GroupCore>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// The entries of the last read not yet received, and when it was read.
    queue: VecDeque<ReadEntry>,
    read_at: std::time::Instant,
    /// Received entries still in [`GroupCore::queued`] (taken off in batches).
    received: Vec<(usize, StreamId)>,
    worker: Option<worker::Worker>,
    ended: bool,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.core.group)
            .field("consumer", &self.core.consumer)
            .field("subject", &self.core.subject)
            .finish_non_exhaustive()
    }
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the consumer has shut down")
}

impl<T: DeserializeOwned + Send + 'static> Consumer<T> {
    pub(crate) fn start(
        redis: RedisConfig,
        group: &str,
        subject: Subject,
        config: GroupConfig,
    ) -> Result<Self> {
        validate_name(group, "group")?;
        config.validate()?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let core = Arc::new(GroupCore {
            group: group.to_string(),
            consumer: config.consumer_name(),
            limits: CodecLimits::default(),
            in_flight: InFlight::new(config.max_in_flight),
            config,
            redis,
            subject,
            counters: Counters::default(),
            room: tokio::sync::Notify::new(),
            commands,
            acks: Mutex::new(Vec::new()),
            acks_ready: tokio::sync::Notify::new(),
            stop: tokio::sync::watch::channel(false).0,
            streams: Mutex::new(Vec::new()),
            nacked: Mutex::new(HashSet::new()),
            queued: Mutex::new(HashSet::new()),
            observed: Mutex::new(None),
            unread_seen: Mutex::new(HashMap::new()),
        });
        let worker = worker::Worker::start(Arc::clone(&core), command_rx, incoming_tx)?;
        Ok(Consumer {
            core,
            incoming,
            queue: VecDeque::new(),
            read_at: std::time::Instant::now(),
            received: Vec::with_capacity(RECEIVED_BATCH),
            worker: Some(worker),
            ended: false,
            _type: PhantomData,
        })
    }

    /// The next delivery; `None` once the consumer has stopped. Cancel safe.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::GroupMissing`] (once, then `None`) when the group vanished and
    /// the configuration says [`OnMissingGroup::Stop`].
    pub async fn recv(&mut self) -> Option<Result<Delivery<T>>> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    /// As [`recv`](Consumer::recv), blocking this thread. Do not call it from
    /// async code.
    pub fn recv_blocking(&mut self) -> Option<Result<Delivery<T>>> {
        loop {
            if let Some(entry) = self.queue.pop_front() {
                match self.accept(entry) {
                    Some(delivery) => return Some(delivery),
                    None => continue,
                }
            }
            self.forget_received();
            let incoming = if self.ended {
                None
            } else {
                self.incoming.blocking_recv()
            };
            if let Some(end) = self.take(incoming) {
                return end;
            }
        }
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery<T>>>> {
        loop {
            if let Some(entry) = self.queue.pop_front() {
                match self.accept(entry) {
                    Some(delivery) => return Poll::Ready(Some(delivery)),
                    None => continue,
                }
            }
            self.forget_received();
            if self.ended {
                return Poll::Ready(None);
            }
            let incoming = match self.incoming.poll_recv(cx) {
                Poll::Ready(incoming) => incoming,
                Poll::Pending => return Poll::Pending,
            };
            if let Some(end) = self.take(incoming) {
                return Poll::Ready(end);
            }
        }
    }

    /// Takes what the I/O thread sent: a read's entries join the local queue
    /// (`None` returned); an error or the end is returned.
    fn take(&mut self, incoming: Option<Incoming>) -> Option<Option<Result<Delivery<T>>>> {
        match incoming {
            None => {
                self.ended = true;
                Some(None)
            }
            Some(Incoming::Failed(error)) => {
                if error.kind() == ErrorKind::GroupMissing {
                    self.ended = true;
                }
                Some(Some(Err(error)))
            }
            Some(Incoming::Entries { entries, read_at }) => {
                self.queue.extend(entries);
                self.read_at = read_at;
                None
            }
        }
    }

    /// Turns a queued entry into a delivery: `None` when it was dead-lettered
    /// instead (too many deliveries, undecodable).
    fn accept(&mut self, entry: ReadEntry) -> Option<Result<Delivery<T>>> {
        self.received(&entry.stream, entry.id);
        self.decode(entry.stream, entry.id, entry.fields, entry.deliveries)
    }

    /// The application has an entry now: its ack wait starts. An entry that
    /// waited in the queue for more than a quarter of the ack wait gets its
    /// idle time reset first (and stays off the claims until then), so that the
    /// handler has at least three quarters of the ack wait.
    fn received(&mut self, stream: &Arc<GroupStream>, id: StreamId) {
        if self.read_at.elapsed() > self.core.config.ack_wait / 4 {
            let sent = self.core.send(Command::Progress {
                stream: Arc::clone(stream),
                id,
                received: true,
            });
            if sent {
                return;
            }
        }
        self.received.push((stream.tag(), id));
        if self.received.len() >= RECEIVED_BATCH {
            self.forget_received();
        }
    }

    /// Takes the received entries off the queued set, under one lock. Until
    /// then a claim of this member's idle entries refreshes them rather than
    /// delivering them again: at most [`RECEIVED_BATCH`] received entries, for
    /// as long as the application takes to ask for that many more.
    fn forget_received(&mut self) {
        if self.received.is_empty() {
            return;
        }
        let mut queued = self
            .core
            .queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for held in self.received.drain(..) {
            queued.remove(&held);
        }
    }

    fn decode(
        &self,
        stream: Arc<GroupStream>,
        id: StreamId,
        fields: Vec<(Bytes, Bytes)>,
        deliveries: u32,
    ) -> Option<Result<Delivery<T>>> {
        let max = self.core.config.max_deliveries;
        let limits = &self.core.limits;
        // The entry, then its payload: either failing dead-letters it (an
        // entry that parses keeps its ids in the log and the dead letter).
        let ((event_id, source, timestamp_ns, headers), decoded) =
            match wire::parse(&fields[..], &EntryLimits::new(limits)) {
                Ok(entry) => (
                    (
                        entry.event_id,
                        entry.source,
                        entry.timestamp_ns,
                        entry.headers,
                    ),
                    codec::decode_payload::<T>(entry.payload, limits),
                ),
                Err(error) => (
                    (
                        EventId::from_uuid(uuid::Uuid::nil()),
                        InstanceId::from_uuid(uuid::Uuid::nil()),
                        0,
                        Vec::new(),
                    ),
                    Err(Error::from(error)),
                ),
            };
        let mut acker = Acker {
            core: Arc::clone(&self.core),
            info: DeliveryInfo {
                event_id,
                topic: stream.topic.clone(),
                stream_id: id,
                source,
                timestamp_ns,
                deliveries,
                headers,
            },
            stream,
            fields: Vec::new(),
            done: true,
            span: tracing::Span::none(),
        };
        let outcome = match decoded {
            _ if deliveries > max => Err((
                "max_deliveries",
                format!("delivered {deliveries} times (max {max}) without an ack"),
            )),
            Err(error) => Err(("decode", error.to_string())),
            Ok(value) => Ok(value),
        };
        match outcome {
            Ok(value) => {
                Counters::add(&self.core.counters.delivered, 1);
                if deliveries > 1 {
                    Counters::add(&self.core.counters.redelivered, 1);
                }
                acker.fields = fields;
                acker.done = false;
                acker.span = tracing::debug_span!(
                    target: "tickbus::group",
                    "tickbus.delivery",
                    group = %self.core.group,
                    consumer = %self.core.consumer,
                    topic = %acker.info.topic,
                    event_id = %acker.info.event_id,
                    stream_id = %id,
                    deliveries,
                );
                Some(Ok(Delivery { value, acker }))
            }
            Err((reason, error)) => {
                tracing::warn!(
                    group = %self.core.group,
                    topic = %acker.info.topic,
                    entry = %id,
                    reason,
                    %error,
                    "tickbus: dead-lettering an event"
                );
                acker.fields = fields;
                acker.dead_letter(reason, error);
                None
            }
        }
    }

    /// Counters since this consumer started.
    pub fn stats(&self) -> GroupStats {
        self.core.stats()
    }

    /// The state this consumer shares with its I/O thread (the bus keeps a weak
    /// reference, for metrics and the health report).
    pub(crate) fn core(&self) -> &Arc<GroupCore> {
        &self.core
    }

    /// The group's state in Redis: pending and lag per stream, the members.
    ///
    /// # Errors
    ///
    /// The Redis errors (`Unavailable`, `Timeout`), `Closed` after shutdown.
    pub fn info(&self) -> impl Future<Output = Result<GroupInfo>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.core.send(Command::Info(tx));
        async move {
            if !sent {
                return Err(closed());
            }
            rx.await.unwrap_or_else(|_| Err(closed()))
        }
    }

    /// Effectively-once helper: `false` the first time the group asks about
    /// `event` within `ttl`, `true` afterwards (`SET <prefix>:seen:{<group>}:<id> NX
    /// PX ttl`, shared by every member of the group). Ask before the effect;
    /// the window is `ttl`, so choose one longer than the ack wait times
    /// `max_deliveries`. A handler that crashes between asking and its effect
    /// loses that effect on redelivery: use it where the effect and the ack can be
    /// made atomic or idempotent, or use [`SeenWindow`] for an in-process window.
    ///
    /// # Errors
    ///
    /// The Redis errors, `Closed` after shutdown.
    pub fn seen_before(
        &self,
        event: EventId,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let sent = self.core.send(Command::SeenBefore { event, ttl, done });
        async move {
            if !sent {
                return Err(closed());
            }
            rx.await.unwrap_or_else(|_| Err(closed()))
        }
    }

    /// This member's name in the group.
    pub fn name(&self) -> &str {
        &self.core.consumer
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.core.group
    }

    /// Sends the acks already given (bounded by `RedisConfig::shutdown_timeout`),
    /// stops the I/O thread and waits for it. Deliveries still held stay pending.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop(&self.core);
        }
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop(&self.core);
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> futures_core::Stream for Consumer<T> {
    type Item = Result<Delivery<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_delivery(cx)
    }
}

impl<T> Unpin for Consumer<T> {}

/// An in-process window of recently handled event ids, for effectively-once
/// handling within one process: remembers the last `capacity` ids.
///
/// # Examples
///
/// ```
/// use tickbus::{EventId, SeenWindow};
///
/// let mut seen = SeenWindow::new(2);
/// let [a, b, c] = [1u128, 2, 3].map(|n| EventId::from_uuid(uuid::Uuid::from_u128(n)));
/// assert!(!seen.seen_before(a));
/// assert!(seen.seen_before(a));
/// assert!(!seen.seen_before(b));
/// assert!(!seen.seen_before(c)); // `a` falls out of the window
/// assert!(!seen.seen_before(a));
/// ```
#[derive(Debug, Clone)]
pub struct SeenWindow {
    set: std::collections::HashSet<u128>,
    order: std::collections::VecDeque<u128>,
    capacity: usize,
}

impl SeenWindow {
    /// A window of the last `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        SeenWindow {
            set: std::collections::HashSet::with_capacity(capacity.max(1)),
            order: std::collections::VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// `true` if `id` is in the window; otherwise adds it and returns `false`.
    pub fn seen_before(&mut self, id: EventId) -> bool {
        let id = id.as_uuid().as_u128();
        if !self.set.insert(id) {
            return true;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        false
    }
}
