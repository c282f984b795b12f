//! tickbus (crate docs being written)
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod builder;
mod bus;
mod clock;
pub mod codec;
mod config;
mod error;
mod event;
mod sync;

pub use builder::{Bus, BusBuilder};
pub use bus::{
    AnyEvent, AnyEventRef, BusySpin, Event, EventRef, PatternSubscriber, PublishError, RecvError,
    SpinThenYield, SpinYieldPark, Subscriber, Topic, TryPublishError, TryRecvError, WaitStep,
    WaitStrategy,
};
pub use clock::Clock;
pub use config::{SlowPolicy, SubscribeOptions, TopicOptions};
pub use error::{Error, ErrorKind, Result};
pub use event::{EventId, InstanceId, Meta, Pattern, TopicName};
