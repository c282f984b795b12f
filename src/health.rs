//! [`HealthReport`]: what a service serves as its health check
//! ([`Bus::health_report`](crate::Bus::health_report)): the Redis connection, the
//! outbox, the consumer groups joined through the bus and their dead letters,
//! judged against [`HealthThresholds`].

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::group::GroupCore;
use crate::live::{ConnectionState, Live};

/// Limits past which [`HealthReport::is_healthy`] says `false`. Each default is
/// chosen so that a blip does not fail a health check (a failing check often
/// restarts the process, which helps none of these): tune them to what your
/// service tolerates.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickbus::health::HealthThresholds;
///
/// // A service whose groups must keep up, and where any dead letter needs a look.
/// let limits = HealthThresholds {
///     max_group_lag: 1_000,
///     max_dead_letters: Some(0),
///     max_degraded: Duration::from_secs(5),
///     ..Default::default()
/// };
/// # let _ = limits;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthThresholds {
    /// Outbox depth over capacity (0.0 to 1.0) above which the bus is
    /// unhealthy: publishers are about to wait or get `Backpressure`.
    /// Default 0.8.
    pub max_outbox_fill: f64,
    /// How long Redis may be away (writer or reader) before the bus is
    /// unhealthy. Local delivery goes on meanwhile, and the outbox absorbs
    /// durable events. Default 30 s.
    pub max_degraded: Duration,
    /// Most entries a group may have pending (delivered, not acked, all its
    /// members). Default 10 000.
    pub max_group_pending: u64,
    /// Most entries a group may have not yet read (Redis 7's `lag`). Default
    /// 100 000.
    pub max_group_lag: u64,
    /// Most dead letters a topic with a group may hold; `None` (the default):
    /// reported, not judged (a dead letter calls for an operator, not a
    /// restart; alert on `tickbus_group_dead_lettered_total` instead).
    pub max_dead_letters: Option<u64>,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            max_outbox_fill: 0.8,
            max_degraded: Duration::from_secs(30),
            max_group_pending: 10_000,
            max_group_lag: 100_000,
            max_dead_letters: None,
        }
    }
}

/// One consumer (member of a group) joined through this bus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupHealth {
    /// The group.
    pub group: String,
    /// This member's name.
    pub consumer: String,
    /// What the group reads: a topic or a pattern.
    pub topics: String,
    /// Entries delivered to the group and not acked, all members, as Redis
    /// reported it at most about a second ago (`None` before the first look).
    pub pending: Option<u64>,
    /// Entries not yet delivered to the group (`None` before the first look,
    /// or when Redis cannot tell: before 7.0, or after deletions).
    pub lag: Option<u64>,
    /// Deliveries this member holds, not yet acked.
    pub in_flight: u64,
    /// Events this member dead-lettered since it started.
    pub dead_lettered: u64,
}

/// The dead letters of one topic read by a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeadLetterCount {
    /// The topic.
    pub topic: String,
    /// Entries in its dead-letter stream (`XLEN <prefix>:dlq:{<topic>}`);
    /// `None` when Redis did not answer in time (or was not asked: degraded).
    pub count: Option<u64>,
}

/// A health report: serve it (as JSON, with serde) as a service's health check.
/// Built by [`Bus::health_report`](crate::Bus::health_report).
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tickbus::{Bus, ConnectionState};
///
/// let bus = Bus::builder().build()?; // embedded: healthy, nothing to check
/// let report = bus.health_report().await;
/// assert!(report.is_healthy());
/// assert_eq!(report.connection, ConnectionState::Embedded);
/// let json = serde_json::to_string(&report)?;
/// assert!(json.contains(r#""healthy":true"#));
/// # Ok(()) }
/// # futures::executor::block_on(run()).unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// [`is_healthy`](HealthReport::is_healthy), for the serialized form.
    pub healthy: bool,
    /// The connection to Redis.
    pub connection: ConnectionState,
    /// Durable events waiting for Redis.
    pub outbox_depth: usize,
    /// The outbox's capacity (0 on an embedded bus).
    pub outbox_capacity: usize,
    /// Every running consumer joined through this bus.
    pub groups: Vec<GroupHealth>,
    /// Dead letters of each topic those consumers read.
    pub dead_letters: Vec<DeadLetterCount>,
    /// Whether the caches' invalidations are confirmed on their connection
    /// (`CLIENT TRACKING` on the connection of the moment); `None` when the
    /// bus has no cache connection. While `Some(false)` and connected, the
    /// memory layers do not serve (see `docs/cache.md`).
    pub cache_tracking: Option<bool>,
    /// Why the bus is unhealthy, one sentence per threshold crossed (empty when
    /// healthy).
    pub problems: Vec<String>,
}

impl HealthReport {
    /// `true` when no threshold is crossed (`problems` is empty).
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a report is made of, before the dead-letter counts (which need Redis).
pub(crate) struct Snapshot {
    pub(crate) connection: ConnectionState,
    pub(crate) outbox_depth: usize,
    pub(crate) outbox_capacity: usize,
    pub(crate) groups: Vec<GroupHealth>,
    /// Topics of the groups, sorted, each once.
    pub(crate) topics: Vec<crate::TopicName>,
    pub(crate) cache_tracking: Option<bool>,
}

impl Snapshot {
    pub(crate) fn embedded(connection: ConnectionState) -> Snapshot {
        Snapshot {
            connection,
            outbox_depth: 0,
            outbox_capacity: 0,
            groups: Vec::new(),
            topics: Vec::new(),
            cache_tracking: None,
        }
    }

    pub(crate) fn live(live: &Live, running: &[Arc<GroupCore>]) -> Snapshot {
        let mut groups = Vec::new();
        let mut topics = Vec::new();
        for core in running {
            let stats = core.stats();
            let observed = core.observed();
            topics.extend(core.topics());
            groups.push(GroupHealth {
                group: core.group.clone(),
                consumer: core.consumer.clone(),
                topics: core.subject.to_string(),
                pending: observed.map(|observed| observed.pending),
                lag: observed.and_then(|observed| observed.lag),
                in_flight: stats.in_flight,
                dead_lettered: stats.dead_lettered,
            });
        }
        topics.sort();
        topics.dedup();
        let stats = live.stats();
        Snapshot {
            connection: live.health(),
            outbox_depth: stats.outbox_depth,
            outbox_capacity: live.outbox_capacity(),
            groups,
            topics,
            cache_tracking: None,
        }
    }

    /// Judges the snapshot and the dead-letter counts.
    pub(crate) fn report(
        self,
        dead_letters: Vec<DeadLetterCount>,
        limits: &HealthThresholds,
    ) -> HealthReport {
        let mut problems = Vec::new();
        match &self.connection {
            ConnectionState::Closed => problems.push("the bus is shut down".to_string()),
            ConnectionState::Degraded {
                last_error, since, ..
            } => {
                let away = since.elapsed().unwrap_or_default();
                if away > limits.max_degraded {
                    problems.push(format!(
                        "Redis unavailable for {} s (more than {} s): {last_error}",
                        away.as_secs(),
                        limits.max_degraded.as_secs()
                    ));
                }
            }
            _ => {}
        }
        if self.cache_tracking == Some(false)
            && matches!(self.connection, ConnectionState::Connected)
        {
            problems.push(
                "cache invalidations not confirmed on the cache connection: \
                 memory layers do not serve"
                    .to_string(),
            );
        }
        if self.outbox_capacity > 0
            && self.outbox_depth as f64 > limits.max_outbox_fill * self.outbox_capacity as f64
        {
            problems.push(format!(
                "outbox {} of {} full (more than {:.0} %)",
                self.outbox_depth,
                self.outbox_capacity,
                limits.max_outbox_fill * 100.0
            ));
        }
        // Pending and lag are the group's, the same for each of its members here.
        let mut judged = std::collections::HashSet::new();
        for group in &self.groups {
            if !judged.insert((group.group.clone(), group.topics.clone())) {
                continue;
            }
            if let Some(pending) = group.pending.filter(|&n| n > limits.max_group_pending) {
                problems.push(format!(
                    "group {} on {}: {pending} entries pending (more than {})",
                    group.group, group.topics, limits.max_group_pending
                ));
            }
            if let Some(lag) = group.lag.filter(|&n| n > limits.max_group_lag) {
                problems.push(format!(
                    "group {} on {}: {lag} entries not yet read (more than {})",
                    group.group, group.topics, limits.max_group_lag
                ));
            }
        }
        if let Some(max) = limits.max_dead_letters {
            for dead in &dead_letters {
                if let Some(count) = dead.count.filter(|&n| n > max) {
                    problems.push(format!(
                        "topic {}: {count} dead letters (more than {max})",
                        dead.topic
                    ));
                }
            }
        }
        HealthReport {
            healthy: problems.is_empty(),
            connection: self.connection,
            outbox_depth: self.outbox_depth,
            outbox_capacity: self.outbox_capacity,
            groups: self.groups,
            dead_letters,
            cache_tracking: self.cache_tracking,
            problems,
        }
    }
}
