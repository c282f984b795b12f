//! What [`Consumer::info`](super::Consumer::info) reports of a group in Redis.

use std::time::Duration;

use crate::event::{StreamId, TopicName};

/// One stream of a group, as Redis reports it ([`Consumer::info`](super::Consumer::info)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStreamInfo {
    /// The topic.
    pub topic: Option<TopicName>,
    /// Entries in the stream now.
    pub length: u64,
    /// Entries delivered to the group and not acknowledged yet (all members).
    pub pending: u64,
    /// Entries not yet delivered to the group. `None` when Redis cannot tell
    /// (after deletions in the middle of the stream).
    pub lag: Option<u64>,
    /// The last entry delivered to the group.
    pub last_delivered: StreamId,
    /// The members, with what each holds.
    pub consumers: Vec<ConsumerInfo>,
}

/// One member of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Entries it holds unacknowledged.
    pub pending: u64,
    /// Time since it last read or claimed.
    pub idle: Duration,
}

/// A group's state in Redis, per stream ([`Consumer::info`](super::Consumer::info)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name.
    pub group: String,
    /// One entry per stream the group reads.
    pub streams: Vec<GroupStreamInfo>,
}

impl GroupInfo {
    /// Pending entries over all streams.
    pub fn pending(&self) -> u64 {
        self.streams.iter().map(|s| s.pending).sum()
    }

    /// Undelivered entries over all streams (`None` if Redis cannot tell for one).
    pub fn lag(&self) -> Option<u64> {
        self.streams.iter().map(|s| s.lag).sum()
    }
}
