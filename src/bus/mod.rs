//! [`Bus`] and [`BusBuilder`]: the only place that wires the parts together.

mod builder;

pub use builder::BusBuilder;

use std::sync::Arc;

use crate::clock::Clock;
#[cfg(feature = "redis")]
use crate::config::DurableOptions;
use crate::config::{SubscribeOptions, TopicOptions};
use crate::error::Result;
#[cfg(feature = "redis")]
use crate::error::{Error, ErrorKind};
use crate::event::{InstanceId, TopicName};
#[cfg(feature = "redis")]
use crate::group::{Consumer, DeadLetter, GroupConfig, Redrive};
#[cfg(feature = "redis")]
use crate::health::{DeadLetterCount, HealthReport, HealthThresholds, Snapshot};
#[cfg(feature = "redis")]
use crate::live::{Health, Live, RedisStats};
use crate::local::registry::BusShared;
use crate::local::{PatternSubscriber, Topic};

#[cfg(feature = "redis")]
fn finish_report(
    snapshot: Snapshot,
    counts: Vec<Option<u64>>,
    thresholds: &HealthThresholds,
) -> HealthReport {
    let dead_letters = snapshot
        .topics
        .iter()
        .enumerate()
        .map(|(at, topic)| DeadLetterCount {
            topic: topic.to_string(),
            count: counts.get(at).copied().flatten(),
        })
        .collect();
    snapshot.report(dead_letters, thresholds)
}

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
    /// Live mode: the Redis side (outbox writer, cross-instance reader).
    #[cfg(feature = "redis")]
    live: Option<Arc<Live>>,
    /// Live mode: the consumer groups joined through this bus.
    #[cfg(feature = "redis")]
    groups: Arc<crate::group::GroupRegistry>,
    /// Live mode: the caches' connection, started by the first `cache` or `state`.
    #[cfg(feature = "cache")]
    cache_layer: Arc<std::sync::Mutex<Option<Arc<crate::cache::Layer>>>>,
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
    ///
    /// In live mode it then waits (up to [`RedisConfig::shutdown_timeout`](crate::RedisConfig::shutdown_timeout)) for the
    /// outbox to be written, and stops the I/O threads.
    pub fn shutdown(&self) {
        self.shared.shutdown();
        #[cfg(feature = "redis")]
        if let Some(live) = &self.live {
            live.shutdown();
        }
        #[cfg(feature = "cache")]
        if let Some(layer) = self
            .cache_layer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            layer.shutdown();
        }
    }

    /// The caches' Redis connection (live mode), started on first use.
    #[cfg(feature = "cache")]
    fn cache_layer(&self) -> Result<Option<Arc<crate::cache::Layer>>> {
        let Some(live) = &self.live else {
            return Ok(None);
        };
        if self.is_shut_down() {
            return Err(crate::Error::new(
                crate::ErrorKind::Closed,
                "the bus has shut down",
            ));
        }
        let mut slot = self
            .cache_layer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(layer) = &*slot {
            return Ok(Some(Arc::clone(layer)));
        }
        let layer = Arc::new(crate::cache::Layer::start(live.config())?);
        *slot = Some(Arc::clone(&layer));
        Ok(Some(layer))
    }

    /// The cache namespace `namespace` holding `V`: memory (moka) in front of
    /// Redis keys `<prefix>:cache:<namespace>:<key>` in front of a loader. On an
    /// embedded bus, memory and loader only. Each call makes a new cache handle
    /// with its own memory layer; they and other instances' caches of the
    /// namespace keep each other's memory coherent. Make one per namespace and
    /// clone it.
    ///
    /// The first cache or state store of a live bus opens its connection (RESP3,
    /// `CLIENT TRACKING`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) for a bad
    /// namespace or config; connection errors as for [`BusBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{Bus, CacheConfig};
    ///
    /// let bus = Bus::builder().build()?;
    /// let tickers = bus.cache::<f64>("ticker", CacheConfig::ticker())?;
    /// assert_eq!(tickers.namespace(), "ticker");
    /// # Ok::<(), tickbus::Error>(())
    /// ```
    #[cfg(feature = "cache")]
    pub fn cache<V>(&self, namespace: &str, config: crate::CacheConfig) -> Result<crate::Cache<V>>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        crate::cache::validate_namespace(namespace)?;
        config.validate()?;
        let layer = self.cache_layer()?;
        crate::Cache::new(
            namespace,
            config,
            self.clock().clone(),
            layer,
            &self.instance_id().to_string(),
        )
    }

    /// The latest-state keys of this bus, with `policy` choosing each key's TTL:
    /// Redis keys `<prefix>:state:<component>:<data_type>` in live mode, a map in
    /// this process on an embedded bus (backtests).
    ///
    /// # Errors
    ///
    /// Connection errors as for [`BusBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{Bus, StatePolicy};
    ///
    /// let bus = Bus::builder().build()?;
    /// let state = bus.state(StatePolicy::seeds())?;
    /// assert!(state.policy().ttl_for("config:strategy").is_none());
    /// # Ok::<(), tickbus::Error>(())
    /// ```
    #[cfg(feature = "cache")]
    pub fn state(&self, policy: crate::StatePolicy) -> Result<crate::StateStore> {
        let layer = self.cache_layer()?;
        let prefix = self.live.as_ref().map_or_else(
            || "tickbus".to_string(),
            |live| live.config().key_prefix.clone(),
        );
        Ok(crate::StateStore::new(
            layer,
            policy,
            self.clock().clone(),
            self.instance_id(),
            &prefix,
        ))
    }

    /// The durable topic `name` carrying `T` (live mode): every event published to
    /// it is also appended to the Redis stream `<prefix>:stream:{<name>}`, and
    /// (unless [`DurableOptions::receive_remote`] is off) what other instances
    /// append there is delivered to this bus's subscribers, after the local events
    /// published before it arrived. Asking again returns the same topic.
    ///
    /// Creating it checks the stream key (one round trip): do it at start-up.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] on an embedded bus, or when `name` already
    /// exists as a local-only topic; [`ErrorKind::Redis`] when the key holds
    /// another type; [`ErrorKind::Unsupported`] for
    /// [`Durability::AofFsynced`](crate::Durability::AofFsynced) on a server without
    /// `WAITAOF` or without AOF; the errors of [`topic`](Bus::topic).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, DurableOptions, RedisConfig, Retention};
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let options = DurableOptions {
    ///     retention: Retention { max_len: Some(100_000), ..Default::default() },
    ///     ..Default::default()
    /// };
    /// let fills = bus.durable_topic::<(u64, f64)>("execution:fill", options)?;
    /// let mut risk = fills.subscribe(); // also receives other instances' fills
    /// fills.publish((42, 2.5))?;
    /// assert_eq!(risk.try_recv()?.value, (42, 2.5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "redis")]
    pub fn durable_topic<T>(&self, name: &str, options: DurableOptions) -> Result<Topic<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let Some(live) = &self.live else {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "durable topic {name} on an embedded bus: configure Redis with                      BusBuilder::redis to persist topics"
                ),
            ));
        };
        let name = TopicName::new(name)?;
        if let Some(existing) = self.existing_durable::<T>(&name)? {
            return Ok(existing);
        }
        let (persist, setup) = live.prepare_topic::<T>(&name, &options)?;
        let local = options.local.unwrap_or(self.shared.topic_options);
        let (topic, created) = self.shared.durable_topic(name, &local, persist)?;
        if created {
            live.read_topic(&topic.shared, setup);
        }
        Ok(topic)
    }

    #[cfg(feature = "redis")]
    fn existing_durable<T: Clone + Send + Sync + 'static>(
        &self,
        name: &TopicName,
    ) -> Result<Option<Topic<T>>> {
        if !self.shared.topic_names().contains(name) {
            return Ok(None);
        }
        let topic = self
            .shared
            .topic::<T>(name.as_str(), &self.shared.topic_options)?;
        if topic.is_durable() {
            Ok(Some(topic))
        } else {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "topic {name} already exists on this bus as a local-only topic; \
                     declare it durable before its first use"
                ),
            ))
        }
    }

    /// The state of the connection to Redis: [`Health::Embedded`] without Redis,
    /// else connected, degraded (with the outbox depth, the last error and since
    /// when) or closed. Cheap: serve it as a health check, or serve
    /// [`health_report`](Bus::health_report) for the outbox, the groups and
    /// the dead letters too.
    #[cfg(feature = "redis")]
    pub fn health(&self) -> Health {
        match &self.live {
            None if self.is_shut_down() => Health::Closed,
            None => Health::Embedded,
            Some(live) => live.health(),
        }
    }

    /// Counters of the Redis side (all zero on an embedded bus).
    #[cfg(feature = "redis")]
    pub fn redis_stats(&self) -> RedisStats {
        self.live
            .as_ref()
            .map(|live| live.stats())
            .unwrap_or_default()
    }

    /// Deletes the Redis stream of the durable topic `name` (its whole history,
    /// for every instance, and its consumer groups), its dead letters and the
    /// saved reader positions. For tests, examples and
    /// operators; the topic itself stays usable on this bus. Returns whether
    /// anything existed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] on an embedded bus; `InvalidTopic` for a bad
    /// name; the Redis errors (`Unavailable`, `Timeout`, ...).
    #[cfg(feature = "redis")]
    pub fn purge_stream(&self, name: &str) -> Result<bool> {
        let name = TopicName::new(name)?;
        match &self.live {
            Some(live) => live.purge_stream(&name),
            None => Err(Error::new(
                ErrorKind::InvalidConfig,
                "purge_stream on an embedded bus: there is no stream",
            )),
        }
    }

    /// Joins consumer group `group` on `topics` (a topic name, or a pattern with
    /// `*` / `>` to read every matching topic's stream) as one member, creating
    /// the group if needed (at [`GroupConfig::start`]). Each event goes to one
    /// member of the group, at least once; see [`Consumer`] and [`Delivery`](crate::Delivery).
    ///
    /// The members need not be durable topics on this bus: a group reads the
    /// streams in Redis, whoever wrote them. Unlike a durable topic's
    /// subscribers, a group also receives the events its own instance published.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] on an embedded bus, for a bad group or
    /// consumer name or configuration; `InvalidTopic`/`InvalidPattern`;
    /// [`ErrorKind::Redis`] when the topic's key holds something else than a
    /// stream; the connection errors (`Unavailable`, `Auth`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tickbus::{Bus, DurableOptions, GroupConfig, GroupStart, RedisConfig};
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let jobs = bus.durable_topic::<String>("job:label", DurableOptions::default())?;
    /// let config = GroupConfig { start: GroupStart::Beginning, ..Default::default() };
    /// let mut workers = bus.group::<String>("labelers", "job:label", config)?;
    /// jobs.publish("article 42".to_string())?;
    /// let delivery = workers.recv_blocking().expect("open")?;
    /// assert_eq!(*delivery, "article 42");
    /// delivery.ack();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "redis")]
    pub fn group<T>(&self, group: &str, topics: &str, config: GroupConfig) -> Result<Consumer<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let live = self.live_or("a consumer group")?;
        let consumer = Consumer::start(
            live.config().clone(),
            group,
            crate::group::Subject::parse(topics)?,
            config,
        )?;
        self.groups.add(consumer.core());
        Ok(consumer)
    }

    /// A health report to serve as the service's health check, judged against
    /// the default [`HealthThresholds`]: the Redis connection, the outbox depth
    /// and capacity, each running consumer group joined through this bus (its
    /// pending and lag, as Redis reported them at most about a second ago) and
    /// the dead letters of the topics those groups read.
    ///
    /// The dead-letter counts are the only part that asks Redis now (`XLEN`,
    /// on the writer's connection): the report is complete within
    /// [`RedisConfig::command_timeout`](crate::RedisConfig::command_timeout) whatever Redis does (counts it could not
    /// get are `None`; while Redis is away it is not asked). Runtime-agnostic:
    /// await it from any executor; [`health_report_blocking`](Bus::health_report_blocking)
    /// from a thread.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, RedisConfig};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let report = bus.health_report().await;
    /// let status = if report.is_healthy() { 200 } else { 503 };
    /// let body = serde_json::to_string(&report)?; // serve `body` with `status`
    /// # let _ = (status, body);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn health_report(
        &self,
    ) -> impl std::future::Future<Output = HealthReport> + Send + 'static {
        self.health_report_with(HealthThresholds::default())
    }

    /// As [`health_report`](Bus::health_report), with other thresholds.
    #[cfg(feature = "redis")]
    pub fn health_report_with(
        &self,
        thresholds: HealthThresholds,
    ) -> impl std::future::Future<Output = HealthReport> + Send + 'static {
        let (snapshot, counts) = self.health_parts();
        async move {
            let counts = match counts {
                Some(counts) => counts.await.unwrap_or_default(),
                None => Vec::new(),
            };
            finish_report(snapshot, counts, &thresholds)
        }
    }

    /// As [`health_report_with`](Bus::health_report_with), blocking this
    /// thread (at most about [`RedisConfig::command_timeout`](crate::RedisConfig::command_timeout)). Called from
    /// async code it still works (the Redis part runs on the bus's own I/O
    /// thread), but it blocks the caller's executor thread meanwhile: prefer
    /// [`health_report_with`](Bus::health_report_with) there.
    #[cfg(feature = "redis")]
    pub fn health_report_blocking(&self, thresholds: HealthThresholds) -> HealthReport {
        let (snapshot, counts) = self.health_parts();
        let counts = match counts {
            // tokio refuses `blocking_recv` on a runtime thread (it panics):
            // wait on a helper thread there.
            Some(counts) if tokio::runtime::Handle::try_current().is_ok() => {
                std::thread::scope(|scope| {
                    scope
                        .spawn(|| counts.blocking_recv().unwrap_or_default())
                        .join()
                        .unwrap_or_default()
                })
            }
            Some(counts) => counts.blocking_recv().unwrap_or_default(),
            None => Vec::new(),
        };
        finish_report(snapshot, counts, &thresholds)
    }

    #[cfg(feature = "redis")]
    fn health_parts(
        &self,
    ) -> (
        Snapshot,
        Option<tokio::sync::oneshot::Receiver<Vec<Option<u64>>>>,
    ) {
        match &self.live {
            None => (Snapshot::embedded(self.health()), None),
            Some(live) => {
                #[allow(unused_mut)] // without `cache`
                let mut snapshot = Snapshot::live(live, &self.groups.running());
                #[cfg(feature = "cache")]
                {
                    snapshot.cache_tracking = cache_tracking(&self.cache_layer);
                }
                let counts = live.dead_letter_counts(snapshot.topics.clone());
                (snapshot, Some(counts))
            }
        }
    }

    /// Samples every metric of this bus into the installed `metrics` recorder
    /// (feature `metrics`; names in `docs/operations.md`). A live bus does it
    /// by itself once a second on its writer thread; call it on an embedded
    /// bus (from a timer of yours), or before a scrape that must be exact.
    /// Costs a look at each topic's counters (the registry lock, once), no I/O.
    ///
    /// # Examples
    ///
    /// ```
    /// let bus = tickbus::Bus::builder().build()?;
    /// let ticks = bus.topic::<u64>("md:tick")?;
    /// ticks.publish(1)?;
    /// bus.record_metrics(); // tickbus_published_total{topic="md:tick"} 1
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        crate::metrics::record(
            &self.shared,
            #[cfg(feature = "redis")]
            self.live
                .as_deref()
                .map(|live| (live, self.groups.running())),
            #[cfg(feature = "cache")]
            cache_tracking(&self.cache_layer),
        );
    }

    /// The oldest `count` dead letters of `topic` (its dead-letter stream
    /// `<prefix>:dlq:{<topic>}`), oldest first.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` on an embedded bus, `InvalidTopic`, the Redis errors.
    #[cfg(feature = "redis")]
    pub fn dead_letters(
        &self,
        topic: &str,
        count: usize,
    ) -> impl std::future::Future<Output = Result<Vec<DeadLetter>>> + Send + 'static {
        let job = self.live_or("dead letters").and_then(|live| {
            let topic = TopicName::new(topic)?;
            let prefix = live.config().key_prefix.clone();
            Ok(live.on_writer(move |connection| {
                crate::group::list_dead_letters(connection, prefix, topic, count)
            }))
        });
        async move { job?.await }
    }

    /// Puts dead letters of `topic` back into the topic's stream (same event id
    /// and payload, a new stream id) and removes them from the dead-letter
    /// stream. Every group reading the topic receives them again. Returns how
    /// many were re-driven.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` on an embedded bus, `InvalidTopic`, the Redis errors.
    #[cfg(feature = "redis")]
    pub fn redrive(
        &self,
        topic: &str,
        which: Redrive,
    ) -> impl std::future::Future<Output = Result<usize>> + Send + 'static {
        let job = self.live_or("re-drive").and_then(|live| {
            let topic = TopicName::new(topic)?;
            let prefix = live.config().key_prefix.clone();
            Ok(live.on_writer(move |connection| {
                crate::group::redrive_dead_letters(connection, prefix, topic, which)
            }))
        });
        async move { job?.await }
    }

    /// Reads a range of one or more topics' streams back from Redis, merged in
    /// stream-id order (ties, across streams, by topic name): the same range
    /// always yields the same sequence. Each item of `topics` is a topic name or
    /// a pattern (`*`, `>`), matched against the streams present now. Events
    /// come with their MessagePack payload; decode each with
    /// [`ReplayedEvent::decode`](crate::ReplayedEvent::decode) into its topic's type.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` on an embedded bus; `InvalidTopic`/`InvalidPattern`;
    /// [`ErrorKind::Trimmed`] when the range starts before what a stream holds
    /// (with [`OnTrimmed::Error`](crate::OnTrimmed)); the Redis errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, Position, RedisConfig, ReplayOptions};
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let mut replay = bus.replay(&["md:tick", "execution:*"], ReplayOptions::default())?;
    /// while let Some(event) = replay.recv_blocking() {
    ///     let event = event?;
    ///     if event.topic.as_str() == "md:tick" {
    ///         let px: f64 = event.decode()?;
    ///         println!("{} {px}", event.stream_id);
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "redis")]
    pub fn replay(&self, topics: &[&str], options: crate::ReplayOptions) -> Result<crate::Replay> {
        let live = self.live_or("replay")?;
        crate::Replay::start(
            live.config().clone(),
            topics.iter().map(|t| t.to_string()).collect(),
            options,
        )
    }

    #[cfg(feature = "redis")]
    fn live_or(&self, what: &str) -> Result<&Live> {
        self.live.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{what} on an embedded bus: configure Redis with BusBuilder::redis"),
            )
        })
    }

    /// The Redis server's version (`None` on an embedded bus).
    #[cfg(feature = "redis")]
    pub fn redis_version(&self) -> Option<(u32, u32, u32)> {
        self.live.as_ref().map(|live| live.server_version())
    }

    /// Whether [`shutdown`](Bus::shutdown) has run.
    pub fn is_shut_down(&self) -> bool {
        self.shared.is_shut_down()
    }
}

/// Whether the bus's cache invalidations are confirmed on its connection
/// (`None` before the first cache of the bus).
#[cfg(feature = "cache")]
fn cache_tracking(layer: &std::sync::Mutex<Option<Arc<crate::cache::Layer>>>) -> Option<bool> {
    layer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .map(|layer| layer.hub.tracking())
}
