//! [`BusBuilder`]: options, then `build()` wires the parts into a [`Bus`].

use crate::clock::Clock;
#[cfg(feature = "redis")]
use crate::config::RedisConfig;
use crate::config::TopicOptions;
use crate::error::Result;
use crate::event::InstanceId;
#[cfg(feature = "redis")]
use crate::live::Live;
use crate::local::registry::BusShared;
use std::sync::Arc;

#[cfg(all(feature = "metrics", feature = "redis", feature = "cache"))]
use super::cache_tracking;
use super::Bus;

/// How often a live bus samples its metrics.
#[cfg(all(feature = "metrics", feature = "redis"))]
const METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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
    #[cfg(feature = "redis")]
    redis: Option<RedisConfig>,
    #[cfg(feature = "metrics")]
    metrics_label: Option<String>,
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

    /// Adds the label `bus="<name>"` to every metric this bus records (feature
    /// `metrics`), so that several buses in one process (a market-data bus and
    /// an order bus, or a live bus beside a backtest) give separate series.
    /// Without it the metrics carry no `bus` label. The cache metrics are
    /// process-wide (summed per namespace) and never carry it.
    ///
    /// ```
    /// let orders = tickbus::Bus::builder().metrics_label("orders").build()?;
    /// orders.record_metrics(); // tickbus_published_total{bus="orders",topic="…"}
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "metrics")]
    pub fn metrics_label(mut self, name: impl Into<String>) -> Self {
        self.metrics_label = Some(name.into());
        self
    }

    /// Live mode: persist durable topics to this Redis and receive other
    /// instances' events from it. The [`LiveBusBuilder`] it returns builds a
    /// [`LiveBus`](crate::LiveBus); `build` then connects, and fails if it cannot.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tickbus::{Bus, LiveBus, RedisConfig};
    ///
    /// let bus: LiveBus = Bus::builder()
    ///     .metrics_label("orders")
    ///     .redis(RedisConfig::from_url("redis://127.0.0.1:6379")?)
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(self, config: RedisConfig) -> LiveBusBuilder {
        LiveBusBuilder {
            common: self,
            config,
        }
    }

    /// Live mode if `TICKBUS_REDIS_URL` or `REDIS_URL` is set (see
    /// [`RedisConfig::from_env`]), embedded otherwise: the choice is made at run
    /// time, so `build` returns a [`Bus`] either way, and
    /// [`Bus::live`] gives its live handle when there is one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) when the variable holds a malformed URL.
    #[cfg(feature = "redis")]
    pub fn redis_from_env(mut self) -> Result<Self> {
        self.redis = RedisConfig::from_env()?;
        Ok(self)
    }

    /// Builds the bus. In live mode, connects to Redis first (blocking the calling
    /// thread for at most about twice [`RedisConfig::connect_timeout`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) when an option
    /// is out of range. Live mode, failing fast: `Unavailable` when Redis cannot be
    /// reached, `Auth` for refused credentials, `Unsupported` for a server older
    /// than 6.2. The message names the server (password redacted).
    pub fn build(self) -> Result<Bus> {
        #[cfg(feature = "redis")]
        let redis = self.redis.clone();
        self.build_with(
            #[cfg(feature = "redis")]
            redis,
        )
    }

    fn build_with(self, #[cfg(feature = "redis")] redis: Option<RedisConfig>) -> Result<Bus> {
        let options = self.topic_options;
        options.validate()?;
        let instance = self.instance_id.unwrap_or_else(InstanceId::random);
        let clock = self.clock.unwrap_or_else(Clock::system);
        #[cfg(feature = "redis")]
        let live = match redis {
            Some(config) => Some(Arc::new(Live::start(config, instance)?)),
            None => None,
        };
        let shared = BusShared::new(instance, clock, options);
        #[cfg(feature = "metrics")]
        if let Some(label) = self.metrics_label {
            #[cfg(feature = "redis")]
            if let Some(live) = &live {
                live.set_metrics_label(label.clone());
            }
            let _ = shared.metrics_label.set(label);
        }
        let bus = Bus {
            shared: Arc::new(shared),
            #[cfg(feature = "redis")]
            live,
            #[cfg(feature = "redis")]
            groups: Arc::default(),
            #[cfg(feature = "cache")]
            cache_layer: Arc::default(),
        };
        #[cfg(all(feature = "metrics", feature = "redis"))]
        if let Some(live) = &bus.live {
            // Weak: the sampler must not keep the bus alive.
            let shared = Arc::downgrade(&bus.shared);
            let weak_live = Arc::downgrade(live);
            let groups = Arc::downgrade(&bus.groups);
            #[cfg(feature = "cache")]
            let cache_layer = Arc::downgrade(&bus.cache_layer);
            live.every(METRICS_EVERY, move || {
                let (Some(shared), Some(live), Some(groups)) =
                    (shared.upgrade(), weak_live.upgrade(), groups.upgrade())
                else {
                    return false;
                };
                crate::metrics::record(
                    &shared,
                    Some((&live, groups.running())),
                    #[cfg(feature = "cache")]
                    cache_layer
                        .upgrade()
                        .and_then(|layer| cache_tracking(&layer)),
                );
                true
            });
        }
        Ok(bus)
    }
}

/// A [`BusBuilder`] with Redis configured ([`BusBuilder::redis`]): `build` connects
/// and returns a [`LiveBus`](crate::LiveBus).
#[cfg(feature = "redis")]
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct LiveBusBuilder {
    common: BusBuilder,
    config: RedisConfig,
}

#[cfg(feature = "redis")]
impl LiveBusBuilder {
    /// As [`BusBuilder::instance_id`].
    pub fn instance_id(mut self, id: InstanceId) -> Self {
        self.common = self.common.instance_id(id);
        self
    }

    /// As [`BusBuilder::clock`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.common = self.common.clock(clock);
        self
    }

    /// As [`BusBuilder::topic_options`].
    pub fn topic_options(mut self, options: TopicOptions) -> Self {
        self.common = self.common.topic_options(options);
        self
    }

    /// As [`BusBuilder::metrics_label`].
    #[cfg(feature = "metrics")]
    pub fn metrics_label(mut self, name: impl Into<String>) -> Self {
        self.common = self.common.metrics_label(name);
        self
    }

    /// Connects to Redis and builds the bus (blocking the calling thread for at
    /// most about twice [`RedisConfig::connect_timeout`]; from async code,
    /// [`build_async`](LiveBusBuilder::build_async)).
    ///
    /// # Errors
    ///
    /// As [`BusBuilder::build`], failing fast: `Unavailable` when Redis cannot be
    /// reached, `Auth` for refused credentials, `Unsupported` for a server older
    /// than 6.2. The message names the server (password redacted).
    pub fn build(self) -> Result<crate::LiveBus> {
        let bus = self.common.build_with(Some(self.config))?;
        bus.live().ok_or_else(|| {
            crate::error::Error::new(
                crate::error::ErrorKind::Closed,
                "the bus shut down while it was being built",
            )
        })
    }

    /// As [`build`](LiveBusBuilder::build), without blocking the caller's
    /// executor: the connection is made on a thread of its own.
    ///
    /// # Errors
    ///
    /// As [`build`](LiveBusBuilder::build).
    pub async fn build_async(self) -> Result<crate::LiveBus> {
        crate::io::off_thread(move || self.build()).await
    }
}
