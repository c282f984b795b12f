//! The in-process bus (docs being written).

pub(crate) mod error;
pub(crate) mod pattern;
pub(crate) mod registry;
pub(crate) mod ring;
pub(crate) mod subscriber;
pub(crate) mod topic;
pub(crate) mod wait;

pub use error::{PublishError, RecvError, TryPublishError, TryRecvError};
pub use pattern::{AnyEvent, AnyEventRef, PatternSubscriber};
pub use subscriber::{Event, EventRef, Subscriber};
pub use topic::Topic;
pub use wait::{BusySpin, SpinThenYield, SpinYieldPark, WaitStep, WaitStrategy};
