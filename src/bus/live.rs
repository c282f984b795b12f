//! [`LiveBus`]: a bus with Redis behind it, and what only such a bus can do.

use std::ops::Deref;
use std::sync::Arc;

use super::Bus;
use crate::config::DurableOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::event::TopicName;
use crate::group::{Consumer, DeadLetter, GroupConfig, Redrive};
use crate::live::{Live, RedisStats};
use crate::local::DurableTopic;

/// A [`Bus`] with Redis behind it: made by
/// [`BusBuilder::redis`](crate::BusBuilder::redis)`(..).build()`, or got back from
/// a `Bus` with [`Bus::live`]. It derefs to the [`Bus`] it is, so everything a bus
/// does (local topics, caches, health) works on it, and `&LiveBus` passes where
/// a `&Bus` is wanted: components written against `&Bus` run unchanged in a
/// backtest and live.
///
/// What needs Redis is here and only here: durable topics, consumer groups,
/// replay, dead letters. On an embedded bus those calls do not compile.
///
/// # Examples
///
/// ```no_run
/// use tickbus::{Bus, DurableOptions, LiveBus, RedisConfig};
///
/// fn strategy(bus: &Bus) -> Result<(), Box<dyn std::error::Error>> {
///     let signals = bus.topic::<f64>("strategy:signal")?; // local either way
///     signals.publish(0.5)?;
///     Ok(())
/// }
///
/// let bus: LiveBus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
/// let fills = bus.durable_topic::<(u64, f64)>("execution:fill", DurableOptions::default())?;
/// strategy(&bus)?; // a LiveBus is a Bus
/// fills.publish((1, 2.5))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// An embedded bus has no durable topics, groups or replay: asking for one does
/// not compile.
///
/// ```compile_fail
/// let bus = tickbus::Bus::builder().build().unwrap();
/// let fills = bus.durable_topic::<u64>("execution:fill", tickbus::DurableOptions::default());
/// ```
#[derive(Clone, Debug)]
pub struct LiveBus {
    bus: Bus,
    live: Arc<Live>,
}

impl Deref for LiveBus {
    type Target = Bus;

    fn deref(&self) -> &Bus {
        &self.bus
    }
}

impl AsRef<Bus> for LiveBus {
    fn as_ref(&self) -> &Bus {
        &self.bus
    }
}

impl From<LiveBus> for Bus {
    fn from(live: LiveBus) -> Bus {
        live.bus
    }
}

impl LiveBus {
    /// The live handle of `bus`, if it has Redis behind it.
    pub(crate) fn of(bus: &Bus) -> Option<LiveBus> {
        bus.live.as_ref().map(|live| LiveBus {
            bus: bus.clone(),
            live: Arc::clone(live),
        })
    }

    /// The [`Bus`] this is (a clone of the handle).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The durable topic `name` carrying `T` ): every event published to
    /// it is also appended to the Redis stream `<prefix>:stream:{<name>}`, and
    /// (unless [`DurableOptions::receive_remote`] is off) what other instances
    /// append there is delivered to this bus's subscribers, after the local events
    /// published before it arrived. Asking again returns the same topic.
    ///
    /// Creating it checks the stream key (one round trip): do it at start-up.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] when `name` already exists as a local-only
    /// topic; [`ErrorKind::Redis`] when the key holds
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
    pub fn durable_topic<T>(&self, name: &str, options: DurableOptions) -> Result<DurableTopic<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let name = TopicName::new(name)?;
        if let Some(existing) = self.existing_durable::<T>(&name)? {
            return Ok(existing);
        }
        let shared = &self.bus.shared;
        let (persist, setup) = self.live.prepare_topic::<T>(&name, &options)?;
        let local = options.local.unwrap_or(shared.topic_options);
        let (topic, created) = shared.durable_topic(name, &local, persist)?;
        if created {
            self.live.read_topic(&topic.shared, setup);
        }
        Ok(DurableTopic::new(topic))
    }

    /// As [`durable_topic`](LiveBus::durable_topic), without blocking the
    /// caller's executor (its round trip runs on a thread of its own). For
    /// topics declared by async code after start-up.
    ///
    /// # Errors
    ///
    /// As [`durable_topic`](LiveBus::durable_topic).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, DurableOptions, RedisConfig};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build_async().await?;
    /// let fills = bus.durable_topic_async::<(u64, f64)>("execution:fill", DurableOptions::default()).await?;
    /// fills.publish_durable((42, 2.5))?.await?;
    /// # Ok(()) }
    /// ```
    pub fn durable_topic_async<T>(
        &self,
        name: &str,
        options: DurableOptions,
    ) -> impl std::future::Future<Output = Result<DurableTopic<T>>> + Send + 'static
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let (bus, name) = (self.clone(), name.to_string());
        crate::io::off_thread(move || bus.durable_topic(&name, options))
    }

    fn existing_durable<T: Clone + Send + Sync + 'static>(
        &self,
        name: &TopicName,
    ) -> Result<Option<DurableTopic<T>>> {
        let shared = &self.bus.shared;
        if !shared.topic_names().contains(name) {
            return Ok(None);
        }
        let topic = shared.topic::<T>(name.as_str(), &shared.topic_options)?;
        if topic.is_durable() {
            Ok(Some(DurableTopic::new(topic)))
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

    /// Counters of the Redis side.
    pub fn redis_stats(&self) -> RedisStats {
        self.live.stats()
    }

    /// Deletes the Redis stream of the durable topic `name` (its whole history,
    /// for every instance, and its consumer groups), its dead letters and the
    /// saved reader positions. For tests, examples and
    /// operators; the topic itself stays usable on this bus. Returns whether
    /// anything existed.
    ///
    /// # Errors
    ///
    /// `InvalidTopic` for a bad name; the Redis errors (`Unavailable`, `Timeout`, ...).
    pub fn purge_stream(&self, name: &str) -> Result<bool> {
        let name = TopicName::new(name)?;
        self.live.purge_stream(&name)
    }

    /// Joins consumer group `group` on `topics` (a topic name, or a pattern with
    /// `*` / `>` to read every matching topic's stream) as one member, creating
    /// the group if needed (at [`GroupConfig::start`]). Each event goes to one
    /// member of the group, at least once; see [`Consumer`] and [`Delivery`](crate::group::Delivery).
    ///
    /// The members need not be durable topics on this bus: a group reads the
    /// streams in Redis, whoever wrote them. Unlike a durable topic's
    /// subscribers, a group also receives the events its own instance published.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad group or consumer name or
    /// configuration; `InvalidTopic`/`InvalidPattern`;
    /// [`ErrorKind::Redis`] when the topic's key holds something else than a
    /// stream; the connection errors (`Unavailable`, `Auth`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tickbus::{Bus, DurableOptions, RedisConfig, StartAt};
    /// use tickbus::group::GroupConfig;
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let jobs = bus.durable_topic::<String>("job:label", DurableOptions::default())?;
    /// let config = GroupConfig { start: StartAt::Beginning, ..Default::default() };
    /// let mut workers = bus.group::<String>("labelers", "job:label", config)?;
    /// jobs.publish("article 42".to_string())?;
    /// let delivery = workers.recv_blocking().expect("open")?;
    /// assert_eq!(*delivery, "article 42");
    /// delivery.ack();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn group<T>(&self, group: &str, topics: &str, config: GroupConfig) -> Result<Consumer<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let consumer = Consumer::start(
            self.live.config().clone(),
            group,
            crate::group::Subject::parse(topics)?,
            config,
        )?;
        self.bus.groups.add(consumer.core());
        Ok(consumer)
    }

    /// As [`group`](LiveBus::group), without blocking the caller's executor
    /// (the group's creation and the member's first read run on a thread of
    /// their own).
    ///
    /// # Errors
    ///
    /// As [`group`](LiveBus::group).
    pub fn group_async<T>(
        &self,
        group: &str,
        topics: &str,
        config: GroupConfig,
    ) -> impl std::future::Future<Output = Result<Consumer<T>>> + Send + 'static
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let (bus, group, topics) = (self.clone(), group.to_string(), topics.to_string());
        crate::io::off_thread(move || bus.group(&group, &topics, config))
    }

    /// The oldest `count` dead letters of `topic` (its dead-letter stream
    /// `<prefix>:dlq:{<topic>}`), oldest first.
    ///
    /// # Errors
    ///
    /// `InvalidTopic`, the Redis errors.
    pub fn dead_letters(
        &self,
        topic: &str,
        count: usize,
    ) -> impl std::future::Future<Output = Result<Vec<DeadLetter>>> + Send + 'static {
        let live = &self.live;
        let job = TopicName::new(topic).map(|topic| {
            let prefix = live.config().key_prefix.clone();
            live.on_writer(move |connection| {
                crate::group::list_dead_letters(connection, prefix, topic, count)
            })
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
    /// `InvalidTopic`, the Redis errors.
    pub fn redrive(
        &self,
        topic: &str,
        which: Redrive,
    ) -> impl std::future::Future<Output = Result<usize>> + Send + 'static {
        let live = &self.live;
        let job = TopicName::new(topic).map(|topic| {
            let prefix = live.config().key_prefix.clone();
            live.on_writer(move |connection| {
                crate::group::redrive_dead_letters(connection, prefix, topic, which)
            })
        });
        async move { job?.await }
    }

    /// Reads a range of one or more topics' streams back from Redis, merged in
    /// stream-id order (ties, across streams, by topic name): the same range
    /// always yields the same sequence. Each item of `topics` is a topic name or
    /// a pattern (`*`, `>`), matched against the streams present now. Events
    /// come with their MessagePack payload; decode each with
    /// [`ReplayedEvent::decode`](crate::recording::ReplayedEvent::decode) into its topic's type.
    ///
    /// # Errors
    ///
    /// `InvalidTopic`/`InvalidPattern`;
    /// [`ErrorKind::Trimmed`] when the range starts before what a stream holds
    /// (with [`OnTrimmed::Error`](crate::replay::OnTrimmed)); the Redis errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, RedisConfig};
    /// use tickbus::replay::ReplayOptions;
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
    pub fn replay(
        &self,
        topics: &[&str],
        options: crate::replay::ReplayOptions,
    ) -> Result<crate::replay::Replay> {
        crate::replay::Replay::start(
            self.live.config().clone(),
            topics.iter().map(|t| t.to_string()).collect(),
            options,
        )
    }

    /// As [`replay`](LiveBus::replay), without blocking the caller's executor
    /// (the replay's connection and its plan run on a thread of their own).
    ///
    /// # Errors
    ///
    /// As [`replay`](LiveBus::replay).
    pub fn replay_async(
        &self,
        topics: &[&str],
        options: crate::replay::ReplayOptions,
    ) -> impl std::future::Future<Output = Result<crate::replay::Replay>> + Send + 'static {
        let bus = self.clone();
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        crate::io::off_thread(move || {
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            bus.replay(&topics, options)
        })
    }

    /// The rate limiter `name`, shared through Redis by every instance that
    /// asks for it (with the same quota: each call's quota is what its
    /// limiter enforces on the shared state). Fails closed when Redis is away;
    /// see [`rate_limiter_with`](LiveBus::rate_limiter_with) for a local
    /// fallback. No round trip: the first acquire makes the first.
    ///
    /// Its state is the key `<prefix>:rate:{<name>}`; its commands run on
    /// the bus's writer connection.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad name (1 to 64 characters of
    /// `a-z`, `0-9`, `_`, `-`, `.`, `:`) or quota (a limit of 0).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, RedisConfig};
    /// use tickbus::rate::Quota;
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let orders = bus.rate_limiter("binance.orders", Quota::per_second(10).with_burst(5))?;
    /// orders.acquire_blocking(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rate_limiter(
        &self,
        name: &str,
        quota: crate::rate::Quota,
    ) -> Result<crate::rate::RateLimiter> {
        self.rate_limiter_with(name, quota, crate::rate::RateLimiterOptions::default())
    }

    /// As [`rate_limiter`](LiveBus::rate_limiter), with options (what to do
    /// when Redis is away).
    ///
    /// # Errors
    ///
    /// As [`rate_limiter`](LiveBus::rate_limiter); also for a bad fallback quota.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, RedisConfig};
    /// use tickbus::rate::{OnRedisDown, Quota, RateLimiterOptions};
    ///
    /// let bus = Bus::builder().redis(RedisConfig::from_url("redis://127.0.0.1:6379")?).build()?;
    /// let options = RateLimiterOptions {
    ///     on_redis_down: OnRedisDown::Local(Quota::per_minute(30)),
    ///     ..Default::default()
    /// };
    /// let llm = bus.rate_limiter_with("openrouter", Quota::per_minute(60), options)?;
    /// llm.acquire_blocking(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rate_limiter_with(
        &self,
        name: &str,
        quota: crate::rate::Quota,
        options: crate::rate::RateLimiterOptions,
    ) -> Result<crate::rate::RateLimiter> {
        crate::rate::RateLimiter::new(
            &self.live.config().key_prefix,
            name,
            quota,
            options,
            self.live.writer_io(),
        )
    }

    /// The Redis server's version, as it said when the bus connected.
    pub fn redis_version(&self) -> (u32, u32, u32) {
        self.live.server_version()
    }
}
