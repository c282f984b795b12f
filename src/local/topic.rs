//! Typed topics: the publishing handle and the shared state of one topic.

use std::collections::VecDeque;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_utils::CachePadded;
use event_listener::Event as Notify;

use super::error::{PublishError, TryPublishError, UndecodableEvent};
use super::publisher::Publisher;
use super::ring::{ClaimError, Ring, SlotValue, Taken};
use super::subscriber::Subscriber;
use super::wait::{SpinYieldPark, WaitStep, WaitStrategy};
use crate::clock::Clock;
use crate::config::{SlowPolicy, SubscribeOptions, TopicOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{topic_salt, Extra, ExtraSlot, Headers, InstanceId, Meta, TopicName};
use crate::receipt::Receipt;
use crate::sync::Handshake;

pub(crate) use super::persist::{Persist, PersistMode};

/// What a slot holds: the value and the metadata that cannot be derived.
///
/// The value is a plain `T`, not an `Option`: an enum tag here cost ~100 ns of
/// one-way latency in the spinning ping-pong of `benches/local_bus.rs`
/// (measured). A remote event that does not decode never takes a slot; it is
/// reported beside the ring (`TopicShared::report_undecodable`).
pub(crate) struct Stored<T> {
    pub(crate) value: T,
    pub(crate) timestamp_ns: u64,
    /// Set only for events that came from another instance (through Redis) or
    /// were published with headers: the common event pays one null pointer.
    pub(crate) extra: ExtraSlot,
}

impl<T> SlotValue for Stored<T> {
    #[inline(always)]
    fn drop_is_trivial(&self) -> bool {
        !std::mem::needs_drop::<T>() && self.extra.is_none()
    }
}

impl<T> Stored<T> {
    /// The value.
    #[inline]
    pub(crate) fn into_value(self) -> T {
        self.value
    }
}

/// Remote events that did not decode, each with the ring position it stands
/// before, for subscribers to report in order (the last `UNDECODABLE_KEPT`).
#[derive(Default)]
pub(crate) struct UndecodableReports {
    /// `(report number from 1, ring position, report)`, oldest first.
    reports: VecDeque<(u64, u64, UndecodableEvent)>,
}

/// Reports kept per topic for subscribers that have not reached them yet.
const UNDECODABLE_KEPT: usize = 1024;

/// The state of one topic, shared by its publishers and subscribers.
pub(crate) struct TopicShared<T> {
    pub(crate) name: TopicName,
    pub(crate) ring: Ring<Stored<T>>,
    /// Notified by a publish whose slot a sleeping subscriber marked, and on close:
    /// wakes parked and async subscribers.
    pub(crate) data_ready: Notify,
    /// Publishers parked waiting for room, woken when a backpressure subscriber
    /// moves on or leaves (only if one is parked).
    space: Handshake,
    pub(crate) salt: u32,
    pub(crate) instance: InstanceId,
    pub(crate) clock: Clock,
    /// Set for a durable topic (live mode).
    pub(crate) persist: Option<Box<dyn Persist<T>>>,
    /// How many undecodable remote events were reported: subscribers compare it
    /// with what they have seen (one read-mostly load per receive).
    pub(crate) undecodable_count: AtomicU64,
    undecodable: Mutex<UndecodableReports>,
    /// Counts for metrics, never touched by a plain publish or receive: on a line
    /// of their own, so that a lagging subscriber's count does not share one with
    /// what every receive reads.
    pub(crate) counts: CachePadded<TopicCounts>,
}

/// Per-topic counts that the publish path does not keep itself (the ring's tail
/// is the number of events published). Read by `Bus::record_metrics`.
#[derive(Default)]
pub(crate) struct TopicCounts {
    /// Events of other instances published into this topic's ring (by the bridge).
    pub(crate) remote: AtomicU64,
    /// Events overwritten before a lagging subscriber read them, summed over the
    /// subscribers (each `Lagged(n)` adds `n`).
    pub(crate) lagged: AtomicU64,
}

impl<T> TopicShared<T> {
    pub(crate) fn new(
        name: TopicName,
        options: &TopicOptions,
        instance: InstanceId,
        clock: Clock,
        persist: Option<Box<dyn Persist<T>>>,
    ) -> Result<Self> {
        options.validate().map_err(|error| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("topic {name}: {}", error.message()),
            )
        })?;
        if options.exclusive_publisher && persist.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "topic {name}: TopicOptions::exclusive_publisher is for local topics \
                     (a durable topic's ring also takes other instances' events)"
                ),
            ));
        }
        let capacity = options.capacity.next_power_of_two();
        let ring = if options.exclusive_publisher {
            Ring::new_exclusive(capacity, options.max_backpressure_subscribers)
        } else {
            Ring::new(capacity, options.max_backpressure_subscribers)
        };
        Ok(TopicShared {
            salt: topic_salt(&instance, &name),
            ring,
            name,
            data_ready: Notify::new(),
            space: Handshake::new(),
            instance,
            clock,
            persist,
            undecodable_count: AtomicU64::new(0),
            undecodable: Mutex::new(UndecodableReports::default()),
            counts: CachePadded::new(TopicCounts::default()),
        })
    }

    /// The `tickbus.publish` TRACE event of a local publish (topic, seq, event
    /// id). Disabled, it costs tracing's level check, inlined: one relaxed load
    /// and a branch (none at all when tracing's `max_level_*` features put TRACE
    /// above the static maximum); the event itself is out of line.
    #[cfg(feature = "tracing")]
    #[inline(always)]
    pub(crate) fn trace_publish(&self, seq: u64, timestamp_ns: u64) {
        use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
        if tracing::Level::TRACE <= STATIC_MAX_LEVEL
            && tracing::Level::TRACE <= LevelFilter::current()
        {
            self.trace_publish_event(seq, timestamp_ns);
        }
    }

    #[cfg(feature = "tracing")]
    #[cold]
    #[inline(never)]
    fn trace_publish_event(&self, seq: u64, timestamp_ns: u64) {
        tracing::trace!(
            target: "tickbus::publish",
            topic = %self.name,
            seq,
            event_id = %crate::event::EventId::derive(timestamp_ns, self.salt, seq),
            "tickbus.publish"
        );
    }

    /// Counts `n` events a subscriber missed (the lag path only).
    #[cold]
    pub(crate) fn count_lagged(&self, n: u64) {
        self.counts.lagged.fetch_add(n, Ordering::Relaxed);
    }

    /// `(published here, received from other instances, missed by lagging
    /// subscribers)`, for metrics.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        // The tail first: the bridge counts a remote event before publishing it,
        // so this order can only under-count `published` for a moment, never
        // over-count it (counters must not go down).
        let total = self.ring.tail().0;
        let remote = self.counts.remote.load(Ordering::Relaxed);
        (
            total.saturating_sub(remote),
            remote,
            self.counts.lagged.load(Ordering::Relaxed),
        )
    }

    /// The metadata of the event at `seq`.
    #[inline]
    pub(crate) fn meta(&self, seq: u64, stored: &Stored<T>) -> Meta {
        Meta {
            seq,
            timestamp_ns: stored.timestamp_ns,
            instance: self.instance,
            salt: self.salt,
            extra: stored.extra.clone(),
        }
    }

    /// Reports a remote event that did not decode: subscribers receive
    /// `Undecodable` where it stood in the stream (before the next event published
    /// to the ring), and sleeping ones are woken to receive it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn report_undecodable(&self, report: UndecodableEvent) {
        let mut reports = self
            .undecodable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let number = self.undecodable_count.load(Ordering::Relaxed) + 1;
        reports
            .reports
            .push_back((number, self.ring.tail().0, report));
        if reports.reports.len() > UNDECODABLE_KEPT {
            reports.reports.pop_front();
        }
        self.undecodable_count.store(number, Ordering::Release);
        drop(reports);
        self.data_ready.notify(usize::MAX);
    }

    /// The first report after `seen` if a subscriber whose next event is `next`
    /// has reached it: `Ok((number, report))`; else `Err(position)` of the first
    /// one ahead (`u64::MAX` if none).
    #[cold]
    #[inline(never)]
    pub(crate) fn next_undecodable(
        &self,
        seen: u64,
        next: u64,
    ) -> std::result::Result<(u64, UndecodableEvent), u64> {
        let reports = self
            .undecodable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match reports.reports.iter().find(|(number, _, _)| *number > seen) {
            Some((number, position, report)) if *position <= next => Ok((*number, report.clone())),
            Some((_, position, _)) => Err(*position),
            None => Err(u64::MAX),
        }
    }

    /// Closes the topic and wakes everyone waiting on it.
    pub(crate) fn close(&self) {
        self.ring.close();
        self.data_ready.notify(usize::MAX);
        self.space.wake_all();
    }

    /// Wakes publishers parked for room, if there are any. Called by backpressure
    /// subscribers after their gate moved (every few reads), never per event.
    #[inline]
    pub(crate) fn wake_publishers(&self) {
        // The handshake's waking side (`sync::Handshake`): the gate was stored
        // before this call; either the parked publisher's look sees it, or this
        // sees the publisher. Subscribers call this every few dozen reads (or
        // each time they run dry), a publisher parks rarely: the barrier here is
        // a compiler fence, the parking publisher's is `membarrier(2)`.
        self.space.wake();
    }

    /// A local event stamped by the bus clock.
    #[inline]
    pub(crate) fn stored(&self, value: T) -> Stored<T> {
        Stored {
            value,
            timestamp_ns: self.clock.now_ns(),
            extra: ExtraSlot::NONE,
        }
    }

    #[inline(always)]
    pub(crate) fn try_publish_stored(
        &self,
        stored: Stored<T>,
    ) -> Result<u64, (ClaimError, Stored<T>)> {
        if self.ring.is_exclusive() {
            return self.try_publish_once(stored);
        }
        match self.ring.try_claim() {
            Ok(seq) => {
                if self.ring.write(seq, stored) {
                    // Someone sleeps on this slot (the ring told us for free).
                    self.data_ready.notify(usize::MAX);
                }
                Ok(seq)
            }
            Err(error) => Err((error, stored)),
        }
    }

    /// `try_publish_stored` on a single-publisher ring: takes the publisher's role
    /// for this one event (waiting while another thread has it for one event), or
    /// fails with `Exclusive` while a `Publisher` handle holds it.
    #[cold]
    #[inline(never)]
    fn try_publish_once(&self, stored: Stored<T>) -> Result<u64, (ClaimError, Stored<T>)> {
        let mut attempt = 0;
        let mut claimer = loop {
            match self.ring.take_claimer(false) {
                Ok(claimer) => break claimer,
                Err(Taken::Held) => return Err((ClaimError::Exclusive, stored)),
                Err(Taken::Once) => crate::sync::backoff(&mut attempt),
            }
        };
        let seq = claimer.next();
        let mut value = Some(stored);
        let result = self.ring.claimable(&mut claimer).and_then(|_| {
            self.ring
                .publish_exclusive(&mut claimer, 1, || value.take())
        });
        self.ring.return_claimer(claimer);
        match (result, value) {
            (Ok((_, wake)), None) => {
                if wake {
                    self.data_ready.notify(usize::MAX);
                }
                Ok(seq)
            }
            (Err(error), Some(stored)) => Err((error, stored)),
            _ => unreachable!("the value is taken exactly when the publish succeeds"),
        }
    }

    /// Publishes, waiting while a backpressure subscriber blocks the ring. Fails
    /// with `Closed`, or `Exclusive` on a single-publisher topic.
    #[inline]
    pub(crate) fn publish_stored(&self, stored: Stored<T>) -> Result<u64, (ClaimError, Stored<T>)> {
        match self.try_publish_stored(stored) {
            Err((ClaimError::Full, back)) => self.publish_when_room(back),
            other => other,
        }
    }

    /// The error of a publish the ring refused, with the value handed back.
    #[cold]
    pub(crate) fn publish_error(&self, error: ClaimError, value: T) -> PublishError<T> {
        match error {
            ClaimError::Full => PublishError::Backpressure(value),
            ClaimError::Closed => PublishError::Closed(value),
            ClaimError::Exclusive => PublishError::Rejected(value, self.exclusive_error()),
        }
    }

    /// A refused `publish_stored` as an `Error`: `Closed` with `closed` as its
    /// message, or `ExclusivePublisher` while a `Publisher` holds the topic.
    #[cold]
    pub(crate) fn refusal(&self, error: ClaimError, closed: &str) -> Error {
        match error {
            ClaimError::Exclusive => self.exclusive_error(),
            _ => Error::new(ErrorKind::Closed, closed.to_string()),
        }
    }

    /// Why a publish through the topic handle is refused on a single-publisher topic.
    #[cold]
    pub(crate) fn exclusive_error(&self) -> Error {
        Error::new(
            ErrorKind::ExclusivePublisher,
            format!(
                "topic {} takes events only from its exclusive publisher (Topic::publisher)",
                self.name
            ),
        )
    }

    /// The slow path of `publish_stored`: a backpressure subscriber holds the ring.
    #[cold]
    #[inline(never)]
    fn publish_when_room(&self, stored: Stored<T>) -> Result<u64, (ClaimError, Stored<T>)> {
        let mut stored = Some(stored);
        self.wait_for_room(|| {
            let Some(value) = stored.take() else {
                unreachable!("the value is put back after every full attempt")
            };
            match self.try_publish_stored(value) {
                Err((ClaimError::Full, back)) => {
                    stored = Some(back);
                    ControlFlow::Continue(())
                }
                other => ControlFlow::Break(other),
            }
        })
    }

    /// Repeats `attempt` until it breaks, waiting between attempts for a
    /// backpressure subscriber to make room.
    ///
    /// Room comes back a gate flush (a few dozen events) at a time: spin and yield
    /// through that (as a disruptor producer spins on a full ring), and park only
    /// when the subscriber has really stalled (~10 ms of yields).
    #[cold]
    pub(crate) fn wait_for_room<R>(&self, mut attempt: impl FnMut() -> ControlFlow<R>) -> R {
        let mut wait = SpinYieldPark::new(1_000, 10_000);
        loop {
            if let ControlFlow::Break(result) = attempt() {
                return result;
            }
            match wait.next_step() {
                WaitStep::Retry => {}
                WaitStep::Spin => std::hint::spin_loop(),
                WaitStep::Yield => std::thread::yield_now(),
                WaitStep::Park => {
                    // Counted as parked, try again; park unless that went
                    // through: see `wake_publishers`.
                    let again = self.space.park_unless(|| match attempt() {
                        ControlFlow::Break(result) => Some(result),
                        ControlFlow::Continue(()) => None,
                    });
                    if let Some(result) = again {
                        return result;
                    }
                }
            }
        }
    }
}

/// A typed handle to publish to and subscribe to one topic. `Clone` is cheap (an
/// `Arc`), and any number of clones may publish at once from any threads.
///
/// Created by [`Bus::topic`](crate::Bus::topic); asking the bus again for the same
/// name and type returns a handle to the same topic.
///
/// # Examples
///
/// ```
/// use tickbus::Bus;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Position { symbol: &'static str, qty: f64 }
///
/// let bus = Bus::builder().build()?;
/// let positions = bus.topic::<Position>("position:updated")?;
/// let mut exposure_monitor = positions.subscribe();
///
/// positions.publish(Position { symbol: "ETH-PERP", qty: -5.12 })?;
///
/// let event = exposure_monitor.try_recv()?;
/// assert_eq!(event.value.qty, -5.12);
/// assert_eq!(event.meta.seq(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Topic<T> {
    pub(crate) shared: Arc<TopicShared<T>>,
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Topic {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.shared.name)
            .field("type", &std::any::type_name::<T>())
            .field("ring", &self.shared.ring)
            .finish()
    }
}

impl<T: Clone + Send + Sync + 'static> Topic<T> {
    /// The topic's name.
    pub fn name(&self) -> &TopicName {
        &self.shared.name
    }

    /// The ring capacity in events.
    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity() as usize
    }

    /// Publishes `value` to every current subscriber and returns its sequence number.
    ///
    /// The value is moved into the ring once; nothing is serialized or allocated.
    /// Subscribers in [`Lag`](SlowPolicy::Lag) mode never slow this down. If a
    /// [`Backpressure`](SlowPolicy::Backpressure) subscriber has not read the event
    /// that would be overwritten, this waits (spinning, yielding, then parked) until
    /// it has.
    ///
    /// # Errors
    ///
    /// [`PublishError`] with the value when the bus is shut down.
    #[inline]
    pub fn publish(&self, value: T) -> Result<u64, PublishError<T>> {
        if self.shared.persist.is_some() {
            return self
                .publish_persisted(value, Headers::new(), PersistMode::Publish)
                .map(|(seq, _)| seq);
        }
        self.publish_local(self.shared.stored(value))
    }

    /// A local topic's publish of a stamped event: waits for room, then traces.
    #[inline(always)]
    fn publish_local(&self, stored: Stored<T>) -> Result<u64, PublishError<T>> {
        #[cfg(feature = "tracing")]
        let timestamp_ns = stored.timestamp_ns;
        let published = self
            .shared
            .publish_stored(stored)
            .map_err(|(error, stored)| self.shared.publish_error(error, stored.into_value()));
        #[cfg(feature = "tracing")]
        if let Ok(seq) = published {
            self.shared.trace_publish(seq, timestamp_ns);
        }
        published
    }

    /// A durable topic's publish, out of the local-only path's way.
    #[cold]
    #[inline(never)]
    fn publish_persisted(
        &self,
        value: T,
        headers: Headers,
        mode: PersistMode,
    ) -> Result<(u64, Option<Receipt>), PublishError<T>> {
        match &self.shared.persist {
            Some(persist) => persist.publish(&self.shared, value, headers, mode),
            None => unreachable!("checked by the caller"),
        }
    }

    /// Publishes `value` as [`publish`](Topic::publish) does, with `headers`:
    /// subscribers find them in [`Meta::headers`], and a durable topic writes
    /// them to the entry's field `h`, where other instances, consumer groups,
    /// replay and recordings read them back. For what travels beside a payload
    /// and is not part of it (a trace or correlation id).
    ///
    /// Headers cost one allocation per event (the pairs are shared by every
    /// subscriber, not copied): keep them off a path that counts nanoseconds.
    ///
    /// # Errors
    ///
    /// As [`publish`](Topic::publish); on a durable topic also
    /// [`PublishError::Rejected`] when the headers are over the entry limits
    /// (64 pairs, 64 KiB), before any subscriber sees the event.
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{Bus, Headers};
    ///
    /// let bus = Bus::builder().build()?;
    /// let signals = bus.topic::<f64>("strategy:signal")?;
    /// let mut executor = signals.subscribe();
    /// signals.publish_with_headers(0.8, Headers::from(vec![("trace".into(), "7f3a".into())]))?;
    /// assert_eq!(executor.try_recv()?.meta.headers().get("trace"), Some("7f3a"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publish_with_headers(&self, value: T, headers: Headers) -> Result<u64, PublishError<T>> {
        if self.shared.persist.is_some() {
            return self
                .publish_persisted(value, headers, PersistMode::Publish)
                .map(|(seq, _)| seq);
        }
        let mut stored = self.shared.stored(value);
        stored.extra = Extra::local(headers).into();
        self.publish_local(stored)
    }

    /// Whether events published here are persisted to Redis (see
    /// [`LiveBus::durable_topic`](crate::LiveBus::durable_topic)): a component
    /// that is handed a plain `Topic` publishes the same way on a durable and on
    /// a local topic, and the durable one also writes the stream.
    pub fn is_durable(&self) -> bool {
        self.shared.persist.is_some()
    }

    /// This topic as a [`DurableTopic`](crate::DurableTopic) if it is durable
    /// (for code that was handed a plain `Topic`).
    #[cfg(feature = "redis")]
    pub fn durable(&self) -> Option<crate::local::DurableTopic<T>> {
        self.is_durable()
            .then(|| crate::local::DurableTopic::new(self.clone()))
    }

    /// The persisted publish with its receipt ([`DurableTopic::publish_durable`](crate::DurableTopic::publish_durable)).
    #[cfg(feature = "redis")]
    pub(crate) fn publish_with_receipt(&self, value: T) -> Result<Receipt, PublishError<T>> {
        self.publish_persisted(value, Headers::new(), PersistMode::Receipt)
            .map(|(_, receipt)| match receipt {
                Some(receipt) => receipt,
                None => unreachable!("PersistMode::Receipt returns a receipt"),
            })
    }

    /// Schedules `value` on a durable topic ([`DurableTopic::publish_at`](crate::DurableTopic::publish_at)).
    #[cfg(feature = "redis")]
    pub(crate) fn schedule(
        &self,
        value: T,
        headers: Headers,
        due: super::persist::Due,
    ) -> Result<Receipt<crate::event::EventId>, PublishError<T>> {
        match &self.shared.persist {
            Some(persist) => persist.schedule(&self.shared, value, headers, due),
            None => unreachable!("only a DurableTopic schedules"),
        }
    }

    /// Publishes `value` unless that would have to wait for a backpressure subscriber.
    ///
    /// # Errors
    ///
    /// [`TryPublishError::Full`] with the value when a backpressure subscriber has not
    /// read the oldest event; [`TryPublishError::Closed`] when the bus is shut down.
    #[inline]
    pub fn try_publish(&self, value: T) -> Result<u64, TryPublishError<T>> {
        if self.shared.persist.is_some() {
            return self
                .publish_persisted(value, Headers::new(), PersistMode::Try)
                .map(|(seq, _)| seq)
                .map_err(|error| match error {
                    PublishError::Closed(value) => TryPublishError::Closed(value),
                    PublishError::Backpressure(value) => TryPublishError::Full(value),
                    PublishError::Rejected(value, error) => TryPublishError::Rejected(value, error),
                });
        }
        let stored = self.shared.stored(value);
        #[cfg(feature = "tracing")]
        let timestamp_ns = stored.timestamp_ns;
        let published =
            self.shared
                .try_publish_stored(stored)
                .map_err(|(error, stored)| match error {
                    ClaimError::Full => TryPublishError::Full(stored.into_value()),
                    ClaimError::Closed => TryPublishError::Closed(stored.into_value()),
                    ClaimError::Exclusive => TryPublishError::Rejected(
                        stored.into_value(),
                        self.shared.exclusive_error(),
                    ),
                });
        #[cfg(feature = "tracing")]
        if let Ok(seq) = published {
            self.shared.trace_publish(seq, timestamp_ns);
        }
        published
    }

    /// Closes this topic: publishing to it fails from now on, and its subscribers
    /// receive what was already published, then [`Closed`](crate::RecvError::Closed).
    /// Other topics are not affected. This is how a pipeline drains stage by stage
    /// (close the source, join its consumers, close the next topic, ...), or how a
    /// replay says it has ended. A closed topic stays closed on this bus.
    ///
    /// Returns `false` if it was already closed.
    ///
    /// # Examples
    ///
    /// ```
    /// # let bus = tickbus::Bus::builder().build()?;
    /// let ticks = bus.topic::<u32>("md:tick")?;
    /// let mut sub = ticks.subscribe();
    /// ticks.publish(1)?;
    /// assert!(ticks.close());
    /// assert!(ticks.publish(2).is_err());
    /// assert_eq!(sub.try_recv()?.value, 1);
    /// assert_eq!(sub.try_recv(), Err(tickbus::TryRecvError::Closed));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) -> bool {
        let first = !self.is_closed();
        self.shared.close();
        first
    }

    /// Whether the topic is closed (by [`close`](Topic::close) or bus shutdown).
    pub fn is_closed(&self) -> bool {
        self.shared.ring.tail().1
    }

    /// Takes the topic's exclusive [`Publisher`]: the fastest way to publish, for
    /// the one thread that feeds the topic (a market-data handler, a strategy's
    /// order flow). The topic must have been created with
    /// [`TopicOptions::exclusive_publisher`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ExclusivePublisher`] when the topic was created with shared
    /// publishers, or its `Publisher` is already taken (drop it to take it again).
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{Bus, ErrorKind, TopicOptions};
    ///
    /// let bus = Bus::builder().build()?;
    /// let options = TopicOptions { exclusive_publisher: true, ..Default::default() };
    /// let book = bus.topic_with::<[f64; 4]>("md:book:eth", options)?;
    /// let mut handler = book.publisher()?;
    /// assert_eq!(book.publisher().unwrap_err().kind(), ErrorKind::ExclusivePublisher);
    /// assert!(book.publish([0.0; 4]).is_err(), "the handle's publish is refused while it lives");
    /// handler.publish([1.0, 2.0, 3.0, 4.0])?;
    /// drop(handler);
    /// book.publish([0.0; 4])?; // the role is free again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publisher(&self) -> Result<Publisher<T>> {
        Publisher::new(Arc::clone(&self.shared))
    }

    /// Subscribes to events published from now on, with the default
    /// [`SubscribeOptions`] ([`Lag`](SlowPolicy::Lag) mode).
    pub fn subscribe(&self) -> Subscriber<T> {
        let cursor = match self.shared.ring.subscribe(false) {
            Ok(cursor) => cursor,
            Err(_) => unreachable!("an ungated subscription needs no gate"),
        };
        Subscriber::new(
            Arc::clone(&self.shared),
            cursor,
            SubscribeOptions::default().async_spin_polls,
        )
    }

    /// Subscribes with the given options.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] when the topic already has its maximum of
    /// backpressure subscribers ([`TopicOptions::max_backpressure_subscribers`]).
    pub fn subscribe_with(&self, options: SubscribeOptions) -> Result<Subscriber<T>> {
        let gated = options.policy == SlowPolicy::Backpressure;
        let cursor = self.shared.ring.subscribe(gated).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "topic {}: all backpressure subscriber places are taken; raise \
                     TopicOptions::max_backpressure_subscribers",
                    self.shared.name
                ),
            )
        })?;
        Ok(Subscriber::new(
            Arc::clone(&self.shared),
            cursor,
            options.async_spin_polls,
        ))
    }
}
