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
mod consumer;
mod dead_letter;
mod delivery;
mod info;
mod worker;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub(crate) use config::validate_name;
pub use config::{GroupConfig, OnMissingGroup, RetryBackoff};
pub use consumer::{Consumer, SeenWindow};
pub(crate) use dead_letter::{list as list_dead_letters, redrive as redrive_dead_letters};
pub use dead_letter::{DeadLetter, Redrive};
pub use delivery::{Acker, Delivery, DeliveryInfo};
pub use info::{ConsumerInfo, GroupInfo, GroupStreamInfo};

use crate::codec::CodecLimits;
use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{EventId, Pattern, StreamId, TopicName};
use crate::sync::InFlight;
use crate::transport::keys;

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
    // A Mutex, not dashmap (measured, issue 14): one insert and one remove per
    // nack, and a claim's snapshot of the set must be one consistent read.
    pub(crate) nacked: Mutex<HashSet<(Arc<str>, StreamId)>>,
    /// Entries read for this member's application and still queued (not yet
    /// received by it): a claim of its own idle entries refreshes these
    /// instead of delivering them a second time to the same process. Once
    /// received, a delivery follows the ack wait like any other.
    /// Keyed by [`GroupStream::tag`] (no string hashing per delivery).
    // A Mutex, not dashmap (measured, issue 14: set work under 1% of the
    // groups bench's samples, no contended lock): it is taken once per read and
    // per 64 receives for a whole batch, which dashmap would lock per entry.
    pub(crate) queued: Mutex<HashSet<(usize, StreamId)>>,
    pub(crate) limits: CodecLimits,
    /// The group's pending and lag as last read (see [`GroupObserved`]).
    pub(crate) observed: Mutex<Option<GroupObserved>>,
    /// Per stream key, the entries trimmed unread already counted (the checks
    /// run on the upkeep loop and on the reader: see `check_unread_trim`).
    // A Mutex, not dashmap (issue 14): once per stream per upkeep, uncontended.
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

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the consumer has shut down")
}
