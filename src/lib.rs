//! tickbus (crate docs being written)
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod error;
mod event;
pub mod codec;

pub use error::{Error, ErrorKind, Result};
pub use event::{EventId, InstanceId, Meta, Pattern, TopicName};
