//! [`GroupConfig`] and its parts.

use std::time::Duration;
#[cfg(test)]
use std::time::UNIX_EPOCH;

use crate::error::{Error, ErrorKind, Result};
use crate::event::StartAt;

/// The id given to `XGROUP CREATE` for a group that starts at `start`: the
/// group's "last delivered" id. A group that exists keeps its own position
/// (shared by every member, past and present), so `Resume` creates as `New`.
pub(crate) fn create_id(start: StartAt) -> String {
    start
        .after_id()
        .map_or_else(|| "$".to_string(), |id| id.to_string())
}

/// The delay before a nacked delivery comes back, when [`nack`](crate::group::Delivery::nack)
/// gives none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryBackoff {
    /// `first`, doubled per delivery, at most `max`.
    Exponential {
        /// The delay after the first delivery.
        first: Duration,
        /// The longest delay.
        max: Duration,
    },
    /// The delay after delivery 1, 2, …; the last one repeats.
    List(Vec<Duration>),
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff::Exponential {
            first: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl RetryBackoff {
    /// The delay after the `deliveries`-th delivery (1-based) failed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tickbus::group::RetryBackoff;
    ///
    /// let ms = Duration::from_millis;
    /// let exp = RetryBackoff::Exponential { first: ms(100), max: ms(350) };
    /// assert_eq!([1, 2, 3, 9].map(|n| exp.delay(n)), [ms(100), ms(200), ms(350), ms(350)]);
    /// let list = RetryBackoff::List(vec![ms(10), ms(500)]);
    /// assert_eq!([1, 2, 7].map(|n| list.delay(n)), [ms(10), ms(500), ms(500)]);
    /// ```
    pub fn delay(&self, deliveries: u32) -> Duration {
        let step = deliveries.saturating_sub(1);
        match self {
            RetryBackoff::Exponential { first, max } => first
                .checked_mul(1_u32.checked_shl(step.min(31)).unwrap_or(u32::MAX))
                .unwrap_or(*max)
                .min(*max),
            RetryBackoff::List(delays) => delays
                .get(step as usize)
                .or(delays.last())
                .copied()
                .unwrap_or_default(),
        }
    }
}

/// What a consumer does when its group or stream has vanished (a `DEL`, a
/// `FLUSHALL`, Redis restarted without persistence).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnMissingGroup {
    /// Create the group again (from the beginning of whatever the stream holds
    /// now), log a warning and count it in [`GroupStats::recreated`](crate::group::GroupStats).
    #[default]
    Recreate,
    /// Yield one [`ErrorKind::GroupMissing`] error and end the stream of deliveries.
    Stop,
}

/// The settings of one group member ([`LiveBus::group`](crate::LiveBus::group)).
/// Defaults suit order-flow work; tune the timing for long jobs.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickbus::StartAt;
/// use tickbus::group::GroupConfig;
///
/// let config = GroupConfig {
///     start: StartAt::Beginning,
///     consumer: Some("risk-worker-1".into()),
///     ack_wait: Duration::from_secs(5),
///     max_in_flight: 64,
///     ..Default::default()
/// };
/// config.validate()?;
/// # Ok::<(), tickbus::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Where a group that does not exist yet starts. Default [`StartAt::New`].
    pub start: StartAt,
    /// This member's name. Default: `TICKBUS_CONSUMER` if set, else
    /// `<host>-<program>`: stable across restarts, so a restarted process first
    /// re-reads the deliveries it held when it stopped. Give each process on one
    /// host its own name (a replica index) when several run the same program.
    pub consumer: Option<String>,
    /// Most entries read per `XREADGROUP`. Default 128.
    pub batch: usize,
    /// Server-side `BLOCK` of a read with nothing to deliver. Default 1 s; kept
    /// below the connection's command timeout.
    pub block: Duration,
    /// How long a delivery may stay unacknowledged before another member may
    /// claim it and deliver it again. Default 30 s. Extend it for one delivery
    /// with [`Delivery::in_progress`](crate::group::Delivery::in_progress).
    pub ack_wait: Duration,
    /// Deliveries of one event before it is dead-lettered. Default 5.
    pub max_deliveries: u32,
    /// The delay of a [`nack`](crate::group::Delivery::nack) without one. Default
    /// exponential from 100 ms to 10 s.
    pub backoff: RetryBackoff,
    /// Most deliveries this member holds unacknowledged; it stops reading at the
    /// limit. Default 256.
    pub max_in_flight: usize,
    /// What to do when the group or its stream vanished. Default
    /// [`OnMissingGroup::Recreate`].
    pub on_missing: OnMissingGroup,
    /// Remove other members that have been idle this long with nothing pending.
    /// `None` keeps them. Default 1 h.
    pub remove_idle_consumers: Option<Duration>,
    /// For a group over a pattern: how often to look for new matching streams.
    /// Default 1 s.
    pub discover_interval: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            start: StartAt::New,
            consumer: None,
            batch: 128,
            block: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            backoff: RetryBackoff::default(),
            max_in_flight: 256,
            on_missing: OnMissingGroup::Recreate,
            remove_idle_consumers: Some(Duration::from_secs(3600)),
            discover_interval: Duration::from_secs(1),
        }
    }
}

impl GroupConfig {
    /// Checks the values: non-zero sizes and times, a valid consumer name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] naming the value.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &str| Err(Error::new(ErrorKind::InvalidConfig, what.to_string()));
        if self.batch == 0 || self.batch > 100_000 {
            return invalid("GroupConfig::batch must be 1..=100000");
        }
        if self.max_in_flight == 0 {
            return invalid("GroupConfig::max_in_flight must be at least 1");
        }
        if self.max_deliveries == 0 {
            return invalid("GroupConfig::max_deliveries must be at least 1");
        }
        if self.ack_wait < Duration::from_millis(10) {
            return invalid("GroupConfig::ack_wait must be at least 10 ms");
        }
        if self.block.is_zero() || self.discover_interval.is_zero() {
            return invalid("GroupConfig::block and discover_interval must be more than zero");
        }
        if let RetryBackoff::List(delays) = &self.backoff {
            if delays.is_empty() {
                return invalid("GroupConfig::backoff list is empty");
            }
        }
        if let Some(name) = &self.consumer {
            validate_name(name, "consumer")?;
        }
        Ok(())
    }

    /// The consumer name: configured, `TICKBUS_CONSUMER`, or `<host>-<program>`.
    pub(crate) fn consumer_name(&self) -> String {
        if let Some(name) = &self.consumer {
            return name.clone();
        }
        if let Ok(name) = std::env::var("TICKBUS_CONSUMER") {
            if validate_name(&name, "consumer").is_ok() {
                return name;
            }
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_else(|| "localhost".into());
        let program = std::env::current_exe()
            .ok()
            .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tickbus".into());
        let name: String = format!("{}-{}", host.trim(), program)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(128)
            .collect();
        name
    }
}

/// Group and consumer names: 1 to 128 bytes of `[A-Za-z0-9_.:-]`.
pub(crate) fn validate_name(name: &str, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("invalid {what} name {name:?}: use 1 to 128 characters of [A-Za-z0-9_.:-]"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ids() {
        assert_eq!(create_id(StartAt::Beginning), "0-0");
        assert_eq!(create_id(StartAt::New), "$");
        assert_eq!(create_id(StartAt::Resume), "$");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(
            create_id(StartAt::Time(t)),
            format!("1700000000122-{}", u64::MAX)
        );
        let id = crate::event::StreamId::new(1_700_000_000_123, 0);
        assert_eq!(create_id(StartAt::After(id)), "1700000000123-0");
        assert_eq!(
            create_id(StartAt::At(id)),
            format!("1700000000122-{}", u64::MAX)
        );
        let id = crate::event::StreamId::new(1_700_000_000_123, 5);
        assert_eq!(create_id(StartAt::At(id)), "1700000000123-4");
    }

    #[test]
    fn names() {
        assert!(validate_name("risk-workers.v2", "group").is_ok());
        for bad in ["", "a b", "a{b}", "x*", &"a".repeat(129)] {
            assert_eq!(
                validate_name(bad, "group").unwrap_err().kind(),
                ErrorKind::InvalidConfig
            );
        }
    }

    #[test]
    fn config_bounds() {
        assert!(GroupConfig::default().validate().is_ok());
        let bad = [
            GroupConfig {
                batch: 0,
                ..Default::default()
            },
            GroupConfig {
                max_in_flight: 0,
                ..Default::default()
            },
            GroupConfig {
                max_deliveries: 0,
                ..Default::default()
            },
            GroupConfig {
                ack_wait: Duration::ZERO,
                ..Default::default()
            },
            GroupConfig {
                backoff: RetryBackoff::List(vec![]),
                ..Default::default()
            },
            GroupConfig {
                consumer: Some("a b".into()),
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        let name = GroupConfig::default().consumer_name();
        assert!(validate_name(&name, "consumer").is_ok(), "{name}");
    }
}
