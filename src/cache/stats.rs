//! The counters of a cache namespace ([`CacheStats`]) and the process-wide
//! list of caches the metrics sampler reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, Weak};

use super::Memory;

/// Counters of one cache namespace in this process, from [`Cache::stats`](super::Cache::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups answered by memory.
    pub memory_hits: u64,
    /// Lookups answered by Redis (then kept in memory).
    pub redis_hits: u64,
    /// Lookups answered by a remembered "nothing" (negative caching).
    pub negative_hits: u64,
    /// Lookups that neither layer answered.
    pub misses: u64,
    /// Loader calls made by this process.
    pub loads: u64,
    /// Loader calls that failed or timed out.
    pub load_errors: u64,
    /// Of `load_errors`, the timeouts.
    pub load_timeouts: u64,
    /// Total time spent in loader calls, ns (with `loads`: the mean).
    pub load_ns_total: u64,
    /// The longest loader call, ns.
    pub load_ns_max: u64,
    /// Lookups that waited for another instance's load (the lock was taken).
    pub lock_waits: u64,
    /// Of `lock_waits`, those that gave up waiting and loaded themselves.
    pub lock_wait_timeouts: u64,
    /// Stale values served because the loader failed (stale-if-error).
    pub stale_served: u64,
    /// Redis commands that failed (the lookup went on without Redis).
    pub redis_errors: u64,
    /// Memory entries dropped because another instance changed their key.
    pub invalidations: u64,
    /// Times the whole memory layer was dropped (connection lost or back,
    /// invalidations lost, a flush).
    pub flushes: u64,
    /// Loaded values not stored because the key changed in Redis while they
    /// loaded (another instance set or invalidated it): the caller got the
    /// loaded value, neither layer keeps it.
    pub fills_superseded: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) memory_hits: AtomicU64,
    pub(super) redis_hits: AtomicU64,
    pub(super) negative_hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) loads: AtomicU64,
    pub(super) load_errors: AtomicU64,
    pub(super) load_timeouts: AtomicU64,
    pub(super) load_ns_total: AtomicU64,
    pub(super) load_ns_max: AtomicU64,
    pub(super) lock_waits: AtomicU64,
    pub(super) lock_wait_timeouts: AtomicU64,
    pub(super) stale_served: AtomicU64,
    pub(super) redis_errors: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) fills_superseded: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the metrics sampler reads of every cache in the process.
pub(super) trait StatsSource: Send + Sync {
    fn namespace(&self) -> &str;
    fn stats(&self) -> CacheStats;
}

impl<V: Send + Sync> StatsSource for Memory<V> {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn stats(&self) -> CacheStats {
        Memory::stats(self)
    }
}

/// Every cache of the process, for the metrics sampler.
pub(super) static CACHES: Mutex<Vec<Weak<dyn StatsSource>>> = Mutex::new(Vec::new());

/// The counters of every live cache of the process, summed per namespace.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn stats_by_namespace() -> Vec<(String, CacheStats)> {
    let mut caches = CACHES.lock().unwrap_or_else(PoisonError::into_inner);
    caches.retain(|cache| cache.strong_count() > 0);
    let mut sums: std::collections::BTreeMap<String, CacheStats> = Default::default();
    for cache in caches.iter().filter_map(Weak::upgrade) {
        let stats = cache.stats();
        let sum = sums.entry(cache.namespace().to_string()).or_default();
        sum.memory_hits += stats.memory_hits;
        sum.redis_hits += stats.redis_hits;
        sum.negative_hits += stats.negative_hits;
        sum.misses += stats.misses;
        sum.loads += stats.loads;
        sum.load_errors += stats.load_errors;
        sum.load_timeouts += stats.load_timeouts;
        sum.load_ns_total += stats.load_ns_total;
        sum.load_ns_max = sum.load_ns_max.max(stats.load_ns_max);
        sum.lock_waits += stats.lock_waits;
        sum.lock_wait_timeouts += stats.lock_wait_timeouts;
        sum.stale_served += stats.stale_served;
        sum.redis_errors += stats.redis_errors;
        sum.invalidations += stats.invalidations;
        sum.flushes += stats.flushes;
        sum.fills_superseded += stats.fills_superseded;
    }
    sums.into_iter().collect()
}

impl<V> Memory<V> {
    pub(super) fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CacheStats {
            memory_hits: get(&c.memory_hits),
            redis_hits: get(&c.redis_hits),
            negative_hits: get(&c.negative_hits),
            misses: get(&c.misses),
            loads: get(&c.loads),
            load_errors: get(&c.load_errors),
            load_timeouts: get(&c.load_timeouts),
            load_ns_total: get(&c.load_ns_total),
            load_ns_max: get(&c.load_ns_max),
            lock_waits: get(&c.lock_waits),
            lock_wait_timeouts: get(&c.lock_wait_timeouts),
            stale_served: get(&c.stale_served),
            redis_errors: get(&c.redis_errors),
            invalidations: get(&c.invalidations),
            flushes: get(&c.flushes),
            fills_superseded: get(&c.fills_superseded),
        }
    }
}
