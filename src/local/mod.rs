//! The in-process bus. It knows nothing of Redis, tokio or serde.
//!
//! Code map, in dependency order:
//!
//! * `ring/`: the lock-free broadcast ring and subscriber cursors (`mod.rs`), and
//!   its single-publisher mode (`exclusive.rs`); the only files with `unsafe` and
//!   raw atomics, with their loom models.
//! * `wait.rs`: wait strategies for synchronous receivers.
//! * `error.rs`: the hot path's errors (`PublishError<T>`, `RecvError`, ...).
//! * `topic.rs`: `Topic<T>` (publish) and the shared state of one topic (ring plus
//!   wake-ups, salt for event ids, clock).
//! * `publisher.rs`: `Publisher<T>`, the exclusive publisher of a single-publisher
//!   topic (`ring/exclusive.rs`).
//! * `subscriber.rs`: `Subscriber<T>`: try, blocking, async and `Stream` receives.
//! * `pattern.rs`: pattern subscriptions over type-erased topics.
//! * `registry.rs`: the bus's table of topics and patterns (a mutex, touched when
//!   topics or pattern subscriptions are created, never per event).

#[cfg(feature = "redis")]
pub(crate) mod durable;
pub(crate) mod error;
pub(crate) mod pattern;
pub(crate) mod persist;
pub(crate) mod publisher;
pub(crate) mod registry;
pub(crate) mod ring;
pub(crate) mod subscriber;
pub(crate) mod topic;
pub(crate) mod wait;

#[cfg(feature = "redis")]
pub use durable::DurableTopic;
pub use error::{PublishError, RecvError, TryPublishError, TryRecvError, UndecodableEvent};
pub use pattern::{AnyEvent, AnyEventRef, PatternSubscriber};
pub use publisher::Publisher;
pub use subscriber::{Event, EventRef, Subscriber};
pub use topic::Topic;
pub use wait::{BusySpin, SpinThenYield, SpinYieldPark, WaitStep, WaitStrategy};
