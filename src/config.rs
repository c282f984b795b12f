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
/// let must_see_everything = SubscribeOptions::with_policy(SlowPolicy::Backpressure);
/// let park_at_once = SubscribeOptions { async_spin_polls: 0, ..Default::default() };
/// assert_eq!(SubscribeOptions::default().policy, SlowPolicy::Lag);
/// # let _ = (must_see_everything, park_at_once);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// What happens when this subscriber falls behind. Default [`SlowPolicy::Lag`].
    pub policy: SlowPolicy,
    /// How many times an async receive (`recv().await`, the `Stream`) looks again,
    /// pausing the core between looks, before it registers its waker and returns
    /// `Pending`. Default 200 (a few microseconds).
    ///
    /// Waking a parked task costs the kernel a thread wake-up (~25-30 µs on the
    /// development VM); an event that arrives within the spin is received in
    /// hundreds of nanoseconds instead. The price is that the executor thread is
    /// busy for the spin after each event. Set 0 to park at once, as
    /// `tokio::sync::broadcast` does.
    pub async_spin_polls: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            policy: SlowPolicy::Lag,
            async_spin_polls: 200,
        }
    }
}

impl SubscribeOptions {
    /// Options with this slow policy and the other defaults.
    pub const fn with_policy(policy: SlowPolicy) -> Self {
        SubscribeOptions {
            policy,
            async_spin_polls: 200,
        }
    }
}

/// Options of one topic, fixed when the topic is first created on a bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicOptions {
    /// Ring capacity in events; rounded up to a power of two. Default 4 096.
    /// Memory is `capacity × (size_of::<T>() + 24)` bytes rounded up to a multiple
    /// of 64 per slot (slots are cache-line aligned), allocated at creation.
    pub capacity: usize,
    /// Most backpressure subscribers the topic accepts at once. Default 32, at most
    /// [`TopicOptions::MAX_BACKPRESSURE_SUBSCRIBERS`].
    pub max_backpressure_subscribers: usize,
}

impl TopicOptions {
    /// The largest ring accepted, in events (2^24).
    pub const MAX_CAPACITY: usize = 1 << 24;
    /// The most backpressure subscribers a topic may allow (each is a cache-padded
    /// gate that a blocked publisher scans).
    pub const MAX_BACKPRESSURE_SUBSCRIBERS: usize = 1024;

    /// Checks the options are in range.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) naming the
    /// field and its range.
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::TopicOptions;
    ///
    /// assert!(TopicOptions::default().validate().is_ok());
    /// let err = TopicOptions { capacity: 0, ..Default::default() }.validate().unwrap_err();
    /// assert!(err.to_string().contains("capacity 0"));
    /// ```
    pub fn validate(&self) -> crate::Result<()> {
        let invalid =
            |message: String| Err(crate::Error::new(crate::ErrorKind::InvalidConfig, message));
        if self.capacity == 0 || self.capacity > Self::MAX_CAPACITY {
            return invalid(format!(
                "TopicOptions::capacity {} is outside 1..={}",
                self.capacity,
                Self::MAX_CAPACITY
            ));
        }
        if self.max_backpressure_subscribers > Self::MAX_BACKPRESSURE_SUBSCRIBERS {
            return invalid(format!(
                "TopicOptions::max_backpressure_subscribers {} is above {}",
                self.max_backpressure_subscribers,
                Self::MAX_BACKPRESSURE_SUBSCRIBERS
            ));
        }
        Ok(())
    }
}

impl Default for TopicOptions {
    fn default() -> Self {
        TopicOptions {
            capacity: 4096,
            max_backpressure_subscribers: 32,
        }
    }
}
