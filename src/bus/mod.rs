//! [`Bus`] and [`BusBuilder`]: the only place that wires the parts together.

mod builder;
#[cfg(feature = "redis")]
mod live;

pub use builder::BusBuilder;
#[cfg(feature = "redis")]
pub use builder::LiveBusBuilder;
#[cfg(feature = "redis")]
pub use live::LiveBus;

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{SubscribeOptions, TopicOptions};
use crate::error::Result;
use crate::event::{InstanceId, TopicName};
#[cfg(feature = "redis")]
use crate::health::{DeadLetterCount, HealthReport, HealthThresholds, Snapshot};
#[cfg(feature = "redis")]
use crate::live::{ConnectionState, Live};
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

    /// As [`shutdown`](Bus::shutdown), without blocking the caller's executor:
    /// resolves once the outbox is written (or
    /// [`RedisConfig::shutdown_timeout`](crate::RedisConfig::shutdown_timeout)
    /// has passed) and the I/O threads have ended.
    ///
    /// Dropping the last handle shuts the bus down too, but inside an async
    /// runtime the drop does not wait (a destructor must not block an executor
    /// thread): the writer drains the outbox on its own thread, and nothing
    /// keeps the process alive for it. Async code awaits `close` before it
    /// exits.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> tickbus::Result<()> {
    /// let bus = tickbus::Bus::builder().build()?;
    /// bus.close().await;
    /// assert!(bus.is_shut_down());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let bus = self.clone();
        let closing = crate::io::off_thread(move || {
            bus.shutdown();
            Ok(())
        });
        async move {
            let _ = closing.await;
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
    /// use tickbus::Bus;
    /// use tickbus::cache::CacheConfig;
    ///
    /// let bus = Bus::builder().build()?;
    /// let tickers = bus.cache::<f64>("ticker", CacheConfig::ticker())?;
    /// assert_eq!(tickers.namespace(), "ticker");
    /// # Ok::<(), tickbus::Error>(())
    /// ```
    #[cfg(feature = "cache")]
    pub fn cache<V>(
        &self,
        namespace: &str,
        config: crate::cache::CacheConfig,
    ) -> Result<crate::cache::Cache<V>>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        crate::cache::validate_namespace(namespace)?;
        config.validate()?;
        let layer = self.cache_layer()?;
        crate::cache::Cache::new(
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
    /// use tickbus::Bus;
    /// use tickbus::cache::StatePolicy;
    ///
    /// let bus = Bus::builder().build()?;
    /// let state = bus.state(StatePolicy::seeds())?;
    /// assert!(state.policy().ttl_for("config:strategy").is_none());
    /// # Ok::<(), tickbus::Error>(())
    /// ```
    #[cfg(feature = "cache")]
    pub fn state(&self, policy: crate::cache::StatePolicy) -> Result<crate::cache::StateStore> {
        let layer = self.cache_layer()?;
        let prefix = self.live.as_ref().map_or_else(
            || "tickbus".to_string(),
            |live| live.config().key_prefix.clone(),
        );
        Ok(crate::cache::StateStore::new(
            layer,
            policy,
            self.clock().clone(),
            self.instance_id(),
            &prefix,
        ))
    }

    /// The state of the connection to Redis: [`ConnectionState::Embedded`] without Redis,
    /// else connected, degraded (with the outbox depth, the last error and since
    /// when) or closed. Cheap: serve it as a health check, or serve
    /// [`health_report`](Bus::health_report) for the outbox, the groups and
    /// the dead letters too.
    #[cfg(feature = "redis")]
    pub fn health(&self) -> ConnectionState {
        match &self.live {
            None if self.is_shut_down() => ConnectionState::Closed,
            None => ConnectionState::Embedded,
            Some(live) => live.health(),
        }
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

    /// The live handle of this bus ([`LiveBus`]: durable topics, groups, replay),
    /// or `None` on an embedded bus. For code that was handed a `Bus` built
    /// from the environment ([`BusBuilder::redis_from_env`]); a bus built with
    /// [`BusBuilder::redis`] is a `LiveBus` already.
    ///
    /// # Examples
    ///
    /// ```
    /// let bus = tickbus::Bus::builder().build()?;
    /// assert!(bus.live().is_none()); // embedded
    /// # Ok::<(), tickbus::Error>(())
    /// ```
    #[cfg(feature = "redis")]
    pub fn live(&self) -> Option<LiveBus> {
        LiveBus::of(self)
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
