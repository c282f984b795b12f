//! # tickbus
//!
//! An event bus for latency-sensitive trading engines: an embedded, lock-free
//! in-process bus first, persisted to Redis Streams second (durable topics and
//! cross-instance delivery), with consumer groups for guaranteed delivery,
//! replay of history, backtests over recordings, and a tiered cache.
//!
//! Components talk through typed **topics** named `component:event_type`
//! (`position:updated`, `risk:calculated`). Publishing moves the value into a
//! per-topic ring once; subscribers read it there (borrowed) or clone it out. No
//! serialization, no allocation and no lock on the way. The same component code
//! runs in a backtest (embedded, deterministic) and live.
//!
//! ## Quick start
//!
//! ```
//! use tickbus::{Bus, SlowPolicy, SubscribeOptions};
//!
//! #[derive(Clone, Debug)]
//! struct Position { symbol: &'static str, qty: f64, mark: f64 }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::builder().build()?; // embedded: no Redis needed
//! let positions = bus.topic::<Position>("position:updated")?;
//!
//! // A risk monitor must see every update: it holds publishers back rather than
//! // miss one. A dashboard may skip: it is told how many it missed.
//! let mut risk = positions.subscribe_with(SubscribeOptions::with_policy(SlowPolicy::Backpressure))?;
//! let mut dashboard = positions.subscribe();
//!
//! positions.publish(Position { symbol: "ETH-PERP", qty: -5.12, mark: 3_120.5 })?;
//!
//! let event = risk.try_recv()?;
//! assert_eq!(event.value.symbol, "ETH-PERP");
//! println!("{} at {} ns from {}", event.meta.id(), event.meta.timestamp_ns(), event.meta.source());
//! assert_eq!(dashboard.try_recv_ref()?.qty, -5.12); // read in place, no clone
//! # Ok(())
//! # }
//! ```
//!
//! ## Ordering
//!
//! Every event of a topic gets the next sequence number of that topic
//! ([`Meta::seq`]), and every subscriber receives the topic's events in that
//! order, whichever threads published them. Between topics there is no order
//! (a [`PatternSubscriber`] takes from each matching topic in turn).
//!
//! ## Lagging
//!
//! A topic is a ring of fixed capacity ([`TopicOptions::capacity`]). A subscriber
//! in [`SlowPolicy::Lag`] mode (the default) that falls a whole ring behind finds
//! its oldest events overwritten: its next receive returns
//! [`RecvError::Lagged(n)`](RecvError::Lagged) with the exact number missed, and it
//! carries on from the oldest event still held. Memory never grows.
//!
//! ```
//! use tickbus::{Bus, TopicOptions, TryRecvError};
//!
//! let bus = Bus::builder().build()?;
//! let ticks = bus.topic_with::<u64>("md:tick", TopicOptions { capacity: 4, ..Default::default() })?;
//! let mut slow = ticks.subscribe();
//! for n in 0..6 {
//!     ticks.publish(n)?;
//! }
//! assert_eq!(slow.try_recv(), Err(TryRecvError::Lagged(2)));
//! assert_eq!(slow.try_recv()?.value, 2); // the oldest still held
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Backpressure
//!
//! A subscriber in [`SlowPolicy::Backpressure`] mode is never overwritten:
//! [`Topic::publish`] waits for it, and [`Topic::try_publish`] hands the event
//! back in [`TryPublishError::Full`].
//!
//! ```
//! use tickbus::{Bus, SlowPolicy, SubscribeOptions, TopicOptions, TryPublishError};
//!
//! let bus = Bus::builder().build()?;
//! let orders = bus.topic_with::<u32>("order:new", TopicOptions { capacity: 2, ..Default::default() })?;
//! let mut router = orders.subscribe_with(SubscribeOptions::with_policy(SlowPolicy::Backpressure))?;
//! orders.try_publish(1)?;
//! orders.try_publish(2)?;
//! assert!(matches!(orders.try_publish(3), Err(TryPublishError::Full(3))));
//! assert_eq!(router.try_recv()?.value, 1);
//! orders.try_publish(3)?; // room again
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Shutdown
//!
//! [`Bus::shutdown`] (or dropping the last `Bus` handle) closes every topic,
//! [`Topic::close`] one topic. Publishing then fails and hands the event back;
//! subscribers receive everything published before, then [`RecvError::Closed`].
//!
//! ## Live mode (feature `redis`, on by default)
//!
//! [`BusBuilder::redis`] builds a [`LiveBus`]: a [`Bus`] (it derefs to one, so
//! components written against `&Bus` run unchanged) with what only Redis makes
//! possible, and only there: durable topics, consumer groups, replay, dead
//! letters (on an embedded bus those calls do not compile).
//! [`LiveBus::durable_topic`] gives a [`DurableTopic`]: a topic whose events are
//! also appended to the Redis stream `tickbus:stream:{<topic>}`, and whose
//! subscribers also receive what other instances append there (never their own
//! events back), in stream order. Publishing stays in-process fast: local
//! subscribers get the event at once; a writer thread pipelines the `XADD`s;
//! [`DurableTopic::publish_durable`] returns a [`Receipt`] that resolves to the stream
//! id. While Redis is away, events wait in a bounded outbox and are written in
//! order, once each, when it returns ([`Bus::health`] says how things stand).
//!
//! ```no_run
//! use tickbus::{Bus, DurableOptions, RedisConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RedisConfig::from_env()?.unwrap_or(RedisConfig::from_url("redis://127.0.0.1:6379")?);
//! let bus = Bus::builder().redis(config).build()?; // fails fast if Redis is not there
//! let signals = bus.durable_topic::<(String, f64)>("strategy:signal", DurableOptions::default())?;
//! let mut executor = signals.subscribe(); // local and remote signals, one order
//! let stream_id = signals.publish_durable(("ETH-PERP".into(), 0.8))?.wait()?;
//! # let _ = (executor.try_recv(), stream_id);
//! # Ok(())
//! # }
//! ```
//!
//! ## Where to start reading
//!
//! The crate root holds the bus itself; what builds on it has a module of its own.
//!
//! * [`Bus`]: the handle; [`Bus::topic`] gives a typed [`Topic`].
//! * [`Topic::publish`], [`Topic::try_publish`], [`Topic::subscribe`],
//!   [`Topic::subscribe_with`] and [`SlowPolicy`] (lag or backpressure);
//!   [`Topic::publisher`] for a single-publisher topic.
//! * [`Subscriber`]: `try_recv`, `try_recv_ref`, `recv_batch`,
//!   `recv_blocking_with` a [`WaitStrategy`], `recv().await`, and
//!   [`Stream`](futures_core::Stream). [`Meta`] is what an event carries
//!   besides its payload (id, sequence, source, time, [`Headers`]).
//! * [`Bus::subscribe_pattern`]: `trading:>` and `*:updated`, type-erased.
//! * Live mode: [`BusBuilder::redis`] with a [`RedisConfig`] gives a [`LiveBus`];
//!   [`LiveBus::durable_topic`] with [`DurableOptions`], [`Receipt`],
//!   [`ConnectionState`], [`RedisStats`]. Where reading starts: [`StartAt`].
//!   TLS (`rediss://`): [`TlsOptions`].
//!
//! The modules:
//!
//! * [`group`] (feature `redis`): consumer groups, each event to one member,
//!   at least once, with retries and dead letters.
//! * [`replay`] (feature `redis`): a range of streams read back in one
//!   deterministic order.
//! * [`recording`]: export a replay to a file and import it again, with no Redis.
//! * [`backtest`]: drive components from a recording, synchronously, on a
//!   virtual clock.
//! * [`cache`] (feature `cache`): memory, then Redis keys, then a loader; and
//!   latest-state keys written with their event.
//! * [`health`] (feature `redis`): the health report a service serves.
//! * [`admin`] (feature `redis`): read-only queries, as the `tickbus` tool makes them.
//! * [`codec`]: the MessagePack wire format, with limits for untrusted bytes.
//!
//! The guarantees (ordering, lag, bounds, shutdown, durability) are written
//! down in `docs/guarantees.md`; the design in `docs/architecture.md`; the keys
//! and fields in Redis in `docs/redis-layout.md`; measured speed in
//! `docs/benchmarks.md`; running it (Redis settings, metrics, runbooks) in
//! `docs/operations.md`.
//!
//! ## Cargo features
//!
#![doc = document_features::document_features!()]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "redis")]
pub mod admin;
pub mod backtest;
mod bus;
#[cfg(feature = "cache")]
pub mod cache;
mod clock;
pub mod codec;
mod config;
mod error;
mod event;
#[cfg(feature = "redis")]
pub mod group;
#[cfg(feature = "redis")]
pub mod health;
#[cfg(feature = "redis")]
mod io;
mod json;
#[cfg(feature = "redis")]
mod live;
mod local;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "redis")]
pub mod rate;
mod receipt;
pub mod recording;
#[cfg(feature = "redis")]
pub mod replay;
mod sync;
#[cfg(feature = "test-util")]
pub mod test_util;
#[cfg(feature = "redis")]
mod transport;
mod wire;

pub use bus::{Bus, BusBuilder};
#[cfg(feature = "redis")]
pub use bus::{LiveBus, LiveBusBuilder};
pub use clock::Clock;
pub use config::{SlowPolicy, SubscribeOptions, TopicOptions};
pub use error::{Error, ErrorKind, Result};
#[cfg(feature = "redis")]
pub use event::StartAt;
pub use event::{EventId, Headers, InstanceId, Meta, Pattern, StreamId, TopicName};
pub use json::payload_json;
#[cfg(feature = "redis")]
pub use local::DurableTopic;
pub use local::{
    AnyEvent, AnyEventRef, BusySpin, Event, EventRef, PatternSubscriber, PublishError, Publisher,
    RecvError, SpinThenYield, SpinYieldPark, Subscriber, Topic, TryPublishError, TryRecvError,
    UndecodableEvent, WaitStep, WaitStrategy,
};
pub use receipt::Receipt;

#[cfg(feature = "redis")]
pub use config::{Durability, DurableOptions, OutboxFull, RedisConfig, Retention, TlsOptions};
#[cfg(feature = "redis")]
pub use live::{ConnectionState, RedisStats};

/// Entry points for the fuzz targets in `fuzz/` (not part of the API).
#[doc(hidden)]
pub mod fuzz {
    pub use crate::codec::fuzz::decode_payload_value;
    pub use crate::wire::fuzz::parse_entry;
}

/// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The guides of `docs/`, as pages of these docs (their examples run as
/// doctests). The benchmark results and their log are in the package's
/// `docs/benchmarks.md` and `docs/benchmarks-log.md`.
pub mod guide {
    #[doc = include_str!("../docs/guarantees.md")]
    pub mod guarantees {}
    #[doc = include_str!("../docs/architecture.md")]
    pub mod architecture {}
    #[doc = include_str!("../docs/redis-layout.md")]
    pub mod redis_layout {}
    #[cfg(feature = "redis")]
    #[doc = include_str!("../docs/replay.md")]
    pub mod replay {}
    #[cfg(feature = "cache")]
    #[doc = include_str!("../docs/cache.md")]
    pub mod cache {}
    #[cfg(feature = "redis")]
    #[doc = include_str!("../docs/rate-limits.md")]
    pub mod rate_limits {}
    #[doc = include_str!("../docs/operations.md")]
    pub mod operations {}
    #[doc = include_str!("../docs/cli.md")]
    pub mod cli {}
    #[doc = include_str!("../docs/fuzzing.md")]
    pub mod fuzzing {}
}
