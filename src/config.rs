//! Plain-data configuration with documented defaults. Nothing here performs I/O.

/// What happens when a subscriber falls a whole ring behind its publishers.
///
/// Chosen per subscription: a risk monitor that must see every fill uses
/// `Backpressure`; a dashboard that only wants the latest state uses `Lag`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SlowPolicy {
    /// The ring overwrites the oldest events; the subscriber's next receive reports
    /// [`Lagged(n_missed)`](crate::RecvError::Lagged) and it carries on from the
    /// oldest event still held. Publishers never wait for it. The default.
    #[default]
    Lag,
    /// Publishers wait (`publish`) or get their event back (`try_publish`) rather
    /// than overwrite an event this subscriber has not read. Nothing is missed; a
    /// stalled subscriber stalls the topic, so drop it when it is done.
    Backpressure,
}

/// Options of one subscription.
///
/// # Examples
///
/// ```
/// use tickbus::{SlowPolicy, SubscribeOptions};
///
/// let must_see_everything = SubscribeOptions { policy: SlowPolicy::Backpressure };
/// assert_eq!(SubscribeOptions::default().policy, SlowPolicy::Lag);
/// # let _ = must_see_everything;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// What happens when this subscriber falls behind. Default [`SlowPolicy::Lag`].
    pub policy: SlowPolicy,
}

/// Options of one topic, fixed when the topic is first created on a bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicOptions {
    /// Ring capacity in events; rounded up to a power of two. Default 4 096.
    /// Memory is `capacity × (size_of::<T>() + 24)` bytes, allocated at creation.
    pub capacity: usize,
    /// Most backpressure subscribers the topic accepts at once. Default 32.
    pub max_backpressure_subscribers: usize,
}

impl TopicOptions {
    /// The largest ring accepted, in events (2^24).
    pub const MAX_CAPACITY: usize = 1 << 24;
}

impl Default for TopicOptions {
    fn default() -> Self {
        TopicOptions {
            capacity: 4096,
            max_backpressure_subscribers: 32,
        }
    }
}
