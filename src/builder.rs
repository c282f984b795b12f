//! [`Bus`] and [`BusBuilder`]: the only place that wires the parts together.

use std::sync::Arc;

use crate::bus::registry::BusShared;
use crate::bus::{PatternSubscriber, Topic};
use crate::clock::Clock;
use crate::config::{SubscribeOptions, TopicOptions};
use crate::error::Result;
use crate::event::{InstanceId, TopicName};

/// The event bus: a set of typed topics in one process, with an instance id.
///
/// `Bus` is a handle: clones share the same topics. With nothing configured it is
/// **embedded**: everything stays in-process, nothing touches the network, and the
/// same component code runs in a backtest and live.
///
/// # Shutdown
///
/// [`shutdown`](Bus::shutdown), or dropping the last clone, closes every topic:
/// publishing returns an error from then on, and every subscriber first receives
/// what was already published, then [`RecvError::Closed`](crate::RecvError::Closed).
///
/// # Examples
///
/// ```
/// use tickbus::Bus;
///
/// let bus = Bus::builder().build()?;
/// let cycle = bus.topic::<u64>("trading:cycle:start")?;
/// let mut sub = cycle.subscribe();
/// cycle.publish(1)?;
/// assert_eq!(sub.try_recv()?.value, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Bus {
    shared: Arc<BusShared>,
}

impl Bus {
    /// Starts configuring a bus. `Bus::builder().build()` is an embedded bus with
    /// default options.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// This bus's instance id.
    pub fn instance_id(&self) -> InstanceId {
        self.shared.instance
    }

    /// "Now" by the bus clock, in nanoseconds since the Unix epoch. Components that
    /// ask the bus for the time behave the same live and in a backtest (where the
    /// clock follows the replayed events).
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// The bus clock.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// The topic `name` carrying `T`, created (with the bus's default
    /// [`TopicOptions`]) if it does not exist yet.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidTopic`](crate::ErrorKind::InvalidTopic) for a bad name,
    /// [`ErrorKind::TopicTypeMismatch`](crate::ErrorKind::TopicTypeMismatch) when the
    /// topic exists with another payload type, and
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) after shutdown.
    pub fn topic<T: Clone + Send + Sync + 'static>(&self, name: &str) -> Result<Topic<T>> {
        self.shared.topic(name, &self.shared.topic_options)
    }

    /// As [`topic`](Bus::topic), with options for a topic created by this call (an
    /// existing topic keeps its own).
    ///
    /// # Errors
    ///
    /// As [`topic`](Bus::topic), and
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) for a capacity
    /// of 0 or above [`TopicOptions::MAX_CAPACITY`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{Bus, TopicOptions};
    ///
    /// let bus = Bus::builder().build()?;
    /// let book = bus.topic_with::<[u64; 8]>("orderbook:eth", TopicOptions { capacity: 100, ..Default::default() })?;
    /// assert_eq!(book.capacity(), 128); // rounded up to a power of two
    /// # Ok::<(), tickbus::Error>(())
    /// ```
    pub fn topic_with<T: Clone + Send + Sync + 'static>(
        &self,
        name: &str,
        options: TopicOptions,
    ) -> Result<Topic<T>> {
        self.shared.topic(name, &options)
    }

    /// Subscribes to every topic matching `pattern`, now and in future, in
    /// [`Lag`](crate::SlowPolicy::Lag) mode. See [`PatternSubscriber`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidPattern`](crate::ErrorKind::InvalidPattern) for a bad
    /// pattern, [`ErrorKind::Closed`](crate::ErrorKind::Closed) after shutdown.
    pub fn subscribe_pattern(&self, pattern: &str) -> Result<PatternSubscriber> {
        self.shared
            .subscribe_pattern(pattern, SubscribeOptions::default())
    }

    /// As [`subscribe_pattern`](Bus::subscribe_pattern), with options applied to every
    /// matching topic.
    ///
    /// # Errors
    ///
    /// As [`subscribe_pattern`](Bus::subscribe_pattern), and
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) when a matching
    /// topic has no room for another backpressure subscriber.
    pub fn subscribe_pattern_with(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<PatternSubscriber> {
        self.shared.subscribe_pattern(pattern, options)
    }

    /// The names of all topics created on this bus, sorted.
    pub fn topic_names(&self) -> Vec<TopicName> {
        self.shared.topic_names()
    }

    /// Closes every topic. See [Shutdown](Bus#shutdown). Idempotent.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// Whether [`shutdown`](Bus::shutdown) has run.
    pub fn is_shut_down(&self) -> bool {
        self.shared.is_shut_down()
    }
}

/// Configures a [`Bus`]. Nothing is required: the defaults give an embedded bus.
///
/// # Examples
///
/// ```
/// use tickbus::{Bus, Clock, InstanceId, TopicOptions};
///
/// // A reproducible backtest bus: fixed instance id (so event ids repeat) and a
/// // manual clock.
/// let bus = Bus::builder()
///     .instance_id(InstanceId::from_uuid(uuid::Uuid::from_u128(7)))
///     .clock(Clock::manual(0))
///     .topic_options(TopicOptions { capacity: 65_536, ..Default::default() })
///     .build()?;
/// # Ok::<(), tickbus::Error>(())
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct BusBuilder {
    instance_id: Option<InstanceId>,
    clock: Option<Clock>,
    topic_options: TopicOptions,
}

impl BusBuilder {
    /// Fixes the instance id (default: a random UUIDv4).
    pub fn instance_id(mut self, id: InstanceId) -> Self {
        self.instance_id = Some(id);
        self
    }

    /// Sets the clock (default: [`Clock::system`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Default options of topics created with [`Bus::topic`].
    pub fn topic_options(mut self, options: TopicOptions) -> Self {
        self.topic_options = options;
        self
    }

    /// Builds the bus.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) when the topic
    /// options are out of range.
    pub fn build(self) -> Result<Bus> {
        let options = self.topic_options;
        options.validate()?;
        let instance = self.instance_id.unwrap_or_else(InstanceId::random);
        let clock = self.clock.unwrap_or_else(Clock::system);
        Ok(Bus {
            shared: Arc::new(BusShared::new(instance, clock, options)),
        })
    }
}
