//! Metrics through the [`metrics`] facade (feature `metrics`): what tickbus
//! counts anyway, sampled; never a call per event on the publish path.
//!
//! * Per topic, bus-wide and per consumer-group figures are **sampled** from the
//!   atomics tickbus keeps anyway (the ring's tail, [`RedisStats`](crate::RedisStats),
//!   [`GroupStats`](crate::group::GroupStats)) by [`record`]: once a second on a live bus's
//!   writer thread, or when the application calls
//!   [`Bus::record_metrics`](crate::Bus::record_metrics). Counters are set with
//!   `absolute` (they only grow), gauges with `set`.
//! * Two histograms are recorded as they happen, once per write pipeline on the
//!   writer thread: the batch size and the publish → durable latency of the
//!   batch's oldest entry.
//!
//! Every name, unit and label is listed in `docs/operations.md`. The names are
//! looked up at each sample (not cached handles), so a recorder installed after
//! the bus was built still receives everything.

use metrics::Label;

use crate::local::registry::BusShared;

/// Metric names: one place, so that `docs/operations.md` and the code agree.
pub(crate) mod names {
    /// Events published on this bus, per topic (`topic`).
    pub(crate) const PUBLISHED: &str = "tickbus_published_total";
    /// Events of other instances delivered into a local topic (`topic`).
    pub(crate) const RECEIVED: &str = "tickbus_received_total";
    /// Events overwritten before a lagging subscriber read them (`topic`).
    pub(crate) const LAGGED: &str = "tickbus_lagged_total";
    /// This instance's own entries skipped by the reader.
    pub(crate) const SELF_FILTERED: &str = "tickbus_self_filtered_total";
    /// Remote entries dropped as duplicates.
    pub(crate) const DUPLICATES: &str = "tickbus_duplicates_total";
    /// Stream entries that are not tickbus entries.
    pub(crate) const SKIPPED: &str = "tickbus_skipped_total";
    /// Remote payloads that did not decode into the topic's type.
    pub(crate) const UNDECODABLE: &str = "tickbus_undecodable_total";
    /// Durable events Redis confirmed.
    pub(crate) const WRITTEN: &str = "tickbus_written_total";
    /// Durable events Redis refused for good.
    pub(crate) const WRITE_FAILURES: &str = "tickbus_write_failures_total";
    /// Write pipelines sent.
    pub(crate) const WRITE_BATCHES: &str = "tickbus_write_batches_total";
    /// Durable events waiting for Redis.
    pub(crate) const OUTBOX_DEPTH: &str = "tickbus_outbox_depth";
    /// The outbox's capacity.
    pub(crate) const OUTBOX_CAPACITY: &str = "tickbus_outbox_capacity";
    /// Failed Redis reads and writes of the bus's I/O threads.
    pub(crate) const REDIS_ERRORS: &str = "tickbus_redis_errors_total";
    /// Connections re-established after a loss.
    pub(crate) const RECONNECTS: &str = "tickbus_reconnects_total";
    /// 1 when Redis answers, 0 when degraded or closed.
    pub(crate) const CONNECTED: &str = "tickbus_connected";
    /// Group deliveries handed to the application (`group`, `consumer`, `topic`).
    pub(crate) const GROUP_DELIVERED: &str = "tickbus_group_delivered_total";
    /// Group acks Redis confirmed.
    pub(crate) const GROUP_ACKED: &str = "tickbus_group_acked_total";
    /// Group nacks.
    pub(crate) const GROUP_NACKED: &str = "tickbus_group_nacked_total";
    /// Group deliveries of an event delivered before.
    pub(crate) const GROUP_REDELIVERED: &str = "tickbus_group_redelivered_total";
    /// Events a consumer moved to the dead-letter stream.
    pub(crate) const GROUP_DEAD_LETTERED: &str = "tickbus_group_dead_lettered_total";
    /// Deliveries a consumer holds, not yet acked.
    pub(crate) const GROUP_IN_FLIGHT: &str = "tickbus_group_in_flight";
    /// Entries delivered to the group and not acked, all members (`group`, `topic`).
    pub(crate) const GROUP_PENDING: &str = "tickbus_group_pending";
    /// Entries not yet delivered to the group (`group`, `topic`).
    pub(crate) const GROUP_LAG: &str = "tickbus_group_lag";
    /// Cache hits per layer (`namespace`, `layer`: `memory`, `redis`, `negative`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_HITS: &str = "tickbus_cache_hits_total";
    /// Cache lookups no layer answered (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_MISSES: &str = "tickbus_cache_misses_total";
    /// Loader calls (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_LOADS: &str = "tickbus_cache_loads_total";
    /// Loader calls that failed or timed out (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_LOAD_ERRORS: &str = "tickbus_cache_load_errors_total";
    /// Time spent in loader calls (`namespace`, seconds; with the loads, the mean).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_LOAD_SECONDS: &str = "tickbus_cache_load_seconds_total";
    /// The longest loader call so far (`namespace`, seconds).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_LOAD_MAX: &str = "tickbus_cache_load_seconds_max";
    /// Lookups that waited for another instance's load (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_LOCK_WAITS: &str = "tickbus_cache_lock_waits_total";
    /// Stale values served because the loader failed (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_STALE: &str = "tickbus_cache_stale_served_total";
    /// Redis commands of the cache that failed (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_REDIS_ERRORS: &str = "tickbus_cache_redis_errors_total";
    /// Memory entries dropped because their key changed (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_INVALIDATIONS: &str = "tickbus_cache_invalidations_total";
    /// Whole memory layers dropped (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_FLUSHES: &str = "tickbus_cache_flushes_total";
    /// Loaded values not stored: their key changed while they loaded (`namespace`).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_FILLS_SUPERSEDED: &str = "tickbus_cache_fills_superseded_total";
    /// Gauge: 1 while the caches' invalidations are confirmed on their
    /// connection, 0 while not (memory is not served then).
    #[cfg(feature = "cache")]
    pub(crate) const CACHE_TRACKING: &str = "tickbus_cache_tracking";
}

/// Describes every metric to the installed recorder (units and help texts, which
/// the Prometheus exporter prints as `# HELP`). Called at each sample: cheap,
/// and a recorder installed late still gets the descriptions.
fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    use names::*;
    describe_counter!(
        PUBLISHED,
        Unit::Count,
        "Events published on this bus, per topic."
    );
    describe_counter!(
        RECEIVED,
        Unit::Count,
        "Events of other instances delivered into a local topic."
    );
    describe_counter!(
        LAGGED,
        Unit::Count,
        "Events overwritten before a lagging subscriber read them, summed over subscribers."
    );
    describe_counter!(
        SELF_FILTERED,
        Unit::Count,
        "This instance's own stream entries skipped by the reader."
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Remote entries dropped as duplicates of an event id."
    );
    describe_counter!(
        SKIPPED,
        Unit::Count,
        "Stream entries that are not tickbus events."
    );
    describe_counter!(
        UNDECODABLE,
        Unit::Count,
        "Remote payloads that did not decode into the topic's type."
    );
    describe_counter!(WRITTEN, Unit::Count, "Durable events Redis confirmed.");
    describe_counter!(
        WRITE_FAILURES,
        Unit::Count,
        "Durable events Redis refused for good."
    );
    describe_counter!(
        WRITE_BATCHES,
        Unit::Count,
        "XADD pipelines sent by the writer."
    );
    describe_gauge!(
        OUTBOX_DEPTH,
        Unit::Count,
        "Durable events waiting for Redis."
    );
    describe_gauge!(OUTBOX_CAPACITY, Unit::Count, "Capacity of the outbox.");
    describe_counter!(
        REDIS_ERRORS,
        Unit::Count,
        "Failed Redis reads and writes (each retried)."
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Redis connections re-established after a loss."
    );
    describe_gauge!(
        CONNECTED,
        "1 when Redis answers, 0 when degraded or shut down."
    );
    // Recorded by the writer itself, per pipeline.
    #[cfg(feature = "redis")]
    metrics::describe_histogram!(
        crate::live::WRITE_BATCH_SIZE,
        Unit::Count,
        "Entries per XADD pipeline."
    );
    #[cfg(feature = "redis")]
    metrics::describe_histogram!(
        crate::live::DURABLE_LATENCY,
        Unit::Seconds,
        "Publish to Redis confirmation, the oldest entry of each pipeline."
    );
    describe_counter!(
        GROUP_DELIVERED,
        Unit::Count,
        "Deliveries handed to the application."
    );
    describe_counter!(GROUP_ACKED, Unit::Count, "Acks Redis confirmed.");
    describe_counter!(
        GROUP_NACKED,
        Unit::Count,
        "Nacks (later redeliveries or dead letters)."
    );
    describe_counter!(
        GROUP_REDELIVERED,
        Unit::Count,
        "Deliveries of an event delivered before."
    );
    describe_counter!(
        GROUP_DEAD_LETTERED,
        Unit::Count,
        "Events moved to the dead-letter stream."
    );
    describe_gauge!(
        GROUP_IN_FLIGHT,
        Unit::Count,
        "Deliveries held by a consumer, not yet acked."
    );
    describe_gauge!(
        GROUP_PENDING,
        Unit::Count,
        "Entries delivered to the group and not acked (all members)."
    );
    describe_gauge!(
        GROUP_LAG,
        Unit::Count,
        "Entries not yet delivered to the group."
    );
}

/// The labels of one series: `bus` first when the bus has a metrics label,
/// then `rest`.
fn labels(bus: Option<&str>, rest: &[(&'static str, &str)]) -> Vec<Label> {
    bus.map(|bus| Label::new("bus", bus.to_string()))
        .into_iter()
        .chain(
            rest.iter()
                .map(|(key, value)| Label::new(*key, (*value).to_string())),
        )
        .collect()
}

/// Samples every figure of `bus` into the installed recorder.
pub(crate) fn record(
    bus: &BusShared,
    #[cfg(feature = "redis")] live: Option<(
        &crate::live::Live,
        Vec<std::sync::Arc<crate::group::GroupCore>>,
    )>,
    #[cfg(feature = "cache")] cache_tracking: Option<bool>,
) {
    use metrics::counter;
    use names::*;
    describe();
    let label = bus.metrics_label.get().map(String::as_str);
    for (topic, (published, received, lagged)) in bus.topic_counts() {
        let topic = labels(label, &[("topic", topic.as_str())]);
        counter!(PUBLISHED, topic.clone()).absolute(published);
        counter!(LAGGED, topic.clone()).absolute(lagged);
        if received > 0 {
            counter!(RECEIVED, topic).absolute(received);
        }
    }
    #[cfg(feature = "cache")]
    record_caches();
    #[cfg(feature = "redis")]
    if let Some((live, groups)) = live {
        use metrics::gauge;
        let stats = live.stats();
        let bus_wide = labels(label, &[]);
        counter!(SELF_FILTERED, bus_wide.clone()).absolute(stats.self_filtered);
        counter!(DUPLICATES, bus_wide.clone()).absolute(stats.duplicates);
        counter!(SKIPPED, bus_wide.clone()).absolute(stats.skipped);
        counter!(UNDECODABLE, bus_wide.clone()).absolute(stats.undecodable);
        counter!(WRITTEN, bus_wide.clone()).absolute(stats.written);
        counter!(WRITE_FAILURES, bus_wide.clone()).absolute(stats.write_failures);
        counter!(WRITE_BATCHES, bus_wide.clone()).absolute(stats.write_batches);
        counter!(REDIS_ERRORS, bus_wide.clone()).absolute(stats.redis_errors);
        counter!(RECONNECTS, bus_wide.clone()).absolute(stats.reconnects);
        gauge!(OUTBOX_DEPTH, bus_wide.clone()).set(stats.outbox_depth as f64);
        gauge!(OUTBOX_CAPACITY, bus_wide.clone()).set(live.config().outbox_capacity as f64);
        let connected = matches!(live.health(), crate::ConnectionState::Connected);
        gauge!(CONNECTED, bus_wide.clone()).set(if connected { 1.0 } else { 0.0 });
        #[cfg(feature = "cache")]
        if let Some(tracking) = cache_tracking {
            gauge!(CACHE_TRACKING, bus_wide).set(if tracking { 1.0 } else { 0.0 });
        }
        for group in groups {
            let stats = group.stats();
            let subject = group.subject.to_string();
            let labels = labels(
                label,
                &[
                    ("group", &group.group),
                    ("consumer", &group.consumer),
                    ("topic", &subject),
                ],
            );
            counter!(GROUP_DELIVERED, labels.clone()).absolute(stats.delivered);
            counter!(GROUP_ACKED, labels.clone()).absolute(stats.acked);
            counter!(GROUP_NACKED, labels.clone()).absolute(stats.nacked);
            counter!(GROUP_REDELIVERED, labels.clone()).absolute(stats.redelivered);
            counter!(GROUP_DEAD_LETTERED, labels.clone()).absolute(stats.dead_lettered);
            gauge!(GROUP_IN_FLIGHT, labels).set(stats.in_flight as f64);
            if let Some(observed) = group.observed() {
                let labels = self::labels(label, &[("group", &group.group), ("topic", &subject)]);
                gauge!(GROUP_PENDING, labels.clone()).set(observed.pending as f64);
                if let Some(lag) = observed.lag {
                    gauge!(GROUP_LAG, labels).set(lag as f64);
                }
            }
        }
    }
}

/// The caches of this process, summed per namespace (two handles or two buses
/// caching one namespace give one series).
#[cfg(feature = "cache")]
fn record_caches() {
    use metrics::{counter, gauge};
    use names::*;
    for (namespace, stats) in crate::cache::stats_by_namespace() {
        let ns = || ("namespace", namespace.clone());
        for (layer, hits) in [
            ("memory", stats.memory_hits),
            ("redis", stats.redis_hits),
            ("negative", stats.negative_hits),
        ] {
            counter!(CACHE_HITS, &[ns(), ("layer", layer.to_string())]).absolute(hits);
        }
        counter!(CACHE_MISSES, &[ns()]).absolute(stats.misses);
        counter!(CACHE_LOADS, &[ns()]).absolute(stats.loads);
        counter!(CACHE_LOAD_ERRORS, &[ns()]).absolute(stats.load_errors);
        gauge!(CACHE_LOAD_SECONDS, &[ns()]).set(stats.load_ns_total as f64 / 1e9);
        gauge!(CACHE_LOAD_MAX, &[ns()]).set(stats.load_ns_max as f64 / 1e9);
        counter!(CACHE_LOCK_WAITS, &[ns()]).absolute(stats.lock_waits);
        counter!(CACHE_STALE, &[ns()]).absolute(stats.stale_served);
        counter!(CACHE_REDIS_ERRORS, &[ns()]).absolute(stats.redis_errors);
        counter!(CACHE_INVALIDATIONS, &[ns()]).absolute(stats.invalidations);
        counter!(CACHE_FLUSHES, &[ns()]).absolute(stats.flushes);
        counter!(CACHE_FILLS_SUPERSEDED, &[ns()]).absolute(stats.fills_superseded);
    }
}
