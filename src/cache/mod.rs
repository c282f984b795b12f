//! The tiered cache (memory → Redis → loader) and the latest-state keys.
//!
//! A [`Cache<V>`] is one namespace: its values live in memory (moka) in front of
//! Redis keys `<prefix>:cache:<namespace>:<key>` (MessagePack, with the
//! namespace's TTL), in front of a loader, the slow or rate-limited API being
//! cached. See `docs/cache.md` for the layers, coherence and the state keys.

mod layer;
mod state;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock::Clock;
use crate::codec::{self, CodecLimits};
use crate::error::{Error, ErrorKind, Result};

pub(crate) use layer::Layer;
use layer::{sleep, Invalidate};
pub use state::{PublishedWithState, StatePolicy, StateStore};

/// The Redis bytes of a cached "no value" (negative caching): `0xc1`, the one
/// byte MessagePack never uses, so no real value can be mistaken for it.
const NEGATIVE: &[u8] = &[0xc1];

/// The first bytes of an invalidation's tombstone (then 16 random bytes): what
/// [`Cache::invalidate`] writes in place of deleting the key, so that a fill
/// that began before it finds the key changed (see [`Cache::fill_redis`]).
/// `0xc1` is the byte MessagePack never uses, as in [`NEGATIVE`].
const TOMBSTONE: &[u8] = &[0xc1, 0x00];

/// How much longer than the slowest fill (`lock_wait` + `loader_timeout`) a
/// tombstone lives: the round trips around the load, on a slow machine.
const TOMBSTONE_SLACK: Duration = Duration::from_secs(10);

/// Stripes of the per-key change counters (see `Cache::fill`).
const STRIPES: usize = 64;

/// The configuration of one cache namespace.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickbus::CacheConfig;
///
/// let config = CacheConfig {
///     memory_capacity: 50_000,
///     ..CacheConfig::with_ttl(Duration::from_secs(600))
/// };
/// assert_eq!(config.redis_ttl, Some(Duration::from_secs(600)));
/// assert!(config.validate().is_ok());
/// // The seeds' namespaces, ready made:
/// assert_eq!(CacheConfig::llm().redis_ttl, Some(Duration::from_secs(3600)));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    /// Most entries kept in memory (moka's TinyLFU picks what to evict).
    /// Default 10 000.
    pub memory_capacity: u64,
    /// How long an entry lives in memory. Default 60 s. Memory never keeps an
    /// entry longer than Redis does (`redis_ttl`).
    pub memory_ttl: Duration,
    /// How long a value lives in Redis; `None`: until invalidated. Default 1 h.
    pub redis_ttl: Option<Duration>,
    /// How long "the loader found nothing" is remembered (both layers), for
    /// [`Cache::get_or_load_optional`]; `None` (default): not remembered.
    pub negative_ttl: Option<Duration>,
    /// The loader's time limit; past it the lookup fails with
    /// [`ErrorKind::Timeout`] (or serves a stale value). Default 30 s.
    pub loader_timeout: Duration,
    /// How long other instances wait for the instance that holds a key's load
    /// lock before they call the loader themselves. Default 5 s. Zero disables the
    /// cross-instance lock.
    pub lock_wait: Duration,
    /// With `Some(d)`, a value is kept aside for `d` after it was loaded or read,
    /// and served when the loader fails or times out (stale-if-error). Entries
    /// invalidated explicitly are never served stale. Default `None`.
    pub stale_if_error: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_capacity: 10_000,
            memory_ttl: Duration::from_secs(60),
            redis_ttl: Some(Duration::from_secs(3600)),
            negative_ttl: None,
            loader_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(5),
            stale_if_error: None,
        }
    }
}

impl CacheConfig {
    /// Defaults with `ttl` for Redis and at most `ttl` in memory.
    pub fn with_ttl(ttl: Duration) -> Self {
        let defaults = CacheConfig::default();
        CacheConfig {
            memory_ttl: defaults.memory_ttl.min(ttl),
            redis_ttl: Some(ttl),
            ..defaults
        }
    }

    /// LLM responses: 1 h.
    pub fn llm() -> Self {
        Self::with_ttl(Duration::from_secs(3600))
    }

    /// Embeddings: 24 h.
    pub fn embedding() -> Self {
        Self::with_ttl(Duration::from_secs(24 * 3600))
    }

    /// Article categorisations: 30 min.
    pub fn categorization() -> Self {
        Self::with_ttl(Duration::from_secs(1800))
    }

    /// Event labels: 30 min.
    pub fn event_label() -> Self {
        Self::with_ttl(Duration::from_secs(1800))
    }

    /// Clusters: 10 min.
    pub fn cluster() -> Self {
        Self::with_ttl(Duration::from_secs(600))
    }

    /// Tickers: 2 s (the loader is a quote API; waiting for another instance's
    /// load is capped at 500 ms).
    pub fn ticker() -> Self {
        CacheConfig {
            lock_wait: Duration::from_millis(500),
            loader_timeout: Duration::from_secs(2),
            ..Self::with_ttl(Duration::from_secs(2))
        }
    }

    /// Order books: 2 s, as tickers.
    pub fn orderbook() -> Self {
        Self::ticker()
    }

    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a zero capacity, a zero TTL or loader
    /// timeout, or a memory TTL above the Redis TTL.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::new(ErrorKind::InvalidConfig, what.to_string()));
        if self.memory_capacity == 0 {
            return bad("cache memory_capacity must be at least 1");
        }
        if self.memory_ttl.is_zero() || self.redis_ttl.is_some_and(|ttl| ttl.is_zero()) {
            return bad("cache TTLs must be above zero");
        }
        if self.redis_ttl.is_some_and(|ttl| self.memory_ttl > ttl) {
            return bad("cache memory_ttl must not exceed redis_ttl");
        }
        if self.negative_ttl.is_some_and(|ttl| ttl.is_zero()) {
            return bad("cache negative_ttl must be above zero");
        }
        if self.loader_timeout.is_zero() {
            return bad("cache loader_timeout must be above zero");
        }
        if self.stale_if_error.is_some_and(|ttl| ttl.is_zero()) {
            return bad("cache stale_if_error must be above zero");
        }
        Ok(())
    }
}

/// Checks a namespace name: 1 to 64 characters of `a-z`, `0-9`, `_`, `-`, `.`
/// (no `:`, which ends the namespace in the Redis key).
pub(crate) fn validate_namespace(namespace: &str) -> Result<()> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 64
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "invalid cache namespace {namespace:?}: 1 to 64 characters of a-z, 0-9, '_', '-', '.'"
            ),
        ))
    }
}

/// Counters of one cache namespace in this process, from [`Cache::stats`].
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
struct Counters {
    memory_hits: AtomicU64,
    redis_hits: AtomicU64,
    negative_hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    load_timeouts: AtomicU64,
    load_ns_total: AtomicU64,
    load_ns_max: AtomicU64,
    lock_waits: AtomicU64,
    lock_wait_timeouts: AtomicU64,
    stale_served: AtomicU64,
    redis_errors: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    fills_superseded: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A memory entry: a value, or a remembered "nothing", its TTL, and when it
/// expires on the bus clock. moka expires values after `memory_ttl` in real time;
/// the bus time is checked for remembered "nothing"s (their TTL is shorter) and
/// with a manual clock (tests, backtests), so that a value hit on the system
/// clock costs no clock read. (moka's per-entry expiry cost 20% more per hit.)
#[derive(Clone)]
struct Slot<V> {
    value: Option<V>,
    expires_ns: u64,
}

type Outcome<V> = std::result::Result<Option<V>, Error>;
type Flight<V> = Arc<tokio::sync::OnceCell<Outcome<V>>>;

/// The shared state of one namespace in this process.
struct Memory<V> {
    namespace: String,
    /// `<prefix>:cache:<namespace>:` (empty on an embedded bus).
    key_prefix: String,
    lock_prefix: String,
    config: CacheConfig,
    clock: Clock,
    memory: moka::sync::Cache<String, Slot<V>>,
    stale: Option<moka::sync::Cache<String, Slot<V>>>,
    layer: Option<Arc<Layer>>,
    flights: Mutex<HashMap<String, Flight<V>>>,
    stripes: [AtomicU64; STRIPES],
    hasher: std::collections::hash_map::RandomState,
    counters: Counters,
    limits: CodecLimits,
    /// Lock tokens: this instance's id and a counter.
    token_base: String,
    tokens: AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> Invalidate for Memory<V> {
    fn invalidate_key(&self, key: &str) {
        // Bump first: a fill that read before this change and inserts after it
        // sees the bump and removes its entry (see `fill`).
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
        if self.memory.contains_key(key) {
            bump(&self.counters.invalidations);
        }
        self.memory.invalidate(key);
        if let Some(stale) = &self.stale {
            stale.invalidate(key);
        }
    }

    fn flush(&self) {
        bump(&self.counters.flushes);
        self.memory.invalidate_all();
    }
}

/// What the metrics sampler reads of every cache in the process.
trait StatsSource: Send + Sync {
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
static CACHES: Mutex<Vec<Weak<dyn StatsSource>>> = Mutex::new(Vec::new());

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
    }
    sums.into_iter().collect()
}

impl<V> Memory<V> {
    fn stats(&self) -> CacheStats {
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

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.stripes[(self.hasher.hash_one(key) as usize) % STRIPES]
    }
}

/// One cache namespace: memory (moka) in front of Redis keys in front of a
/// loader. Cheap to clone (clones share everything).
///
/// Made by [`Bus::cache`](crate::Bus::cache). On a live bus the Redis layer is
/// shared by every instance, and an instance that changes a key makes the
/// others drop their memory copies (server-assisted client-side caching, see
/// `docs/cache.md`). On an embedded bus (a backtest) it is memory and loader
/// only.
///
/// # Examples
///
/// ```
/// # fn main() -> tickbus::Result<()> {
/// # futures_lite_block_on(async {
/// use std::time::Duration;
/// use tickbus::{Bus, CacheConfig};
///
/// let bus = Bus::builder().build()?; // embedded: memory and loader
/// let labels = bus.cache::<String>("event_label", CacheConfig::event_label())?;
/// let label = labels
///     .get_or_load("evt-42", |key| async move {
///         // The slow API (an LLM, say).
///         Ok::<_, std::io::Error>(format!("label of {key}"))
///     })
///     .await?;
/// assert_eq!(label, "label of evt-42");
/// // Now a memory hit: the loader is not called.
/// assert_eq!(labels.get("evt-42").await?.as_deref(), Some("label of evt-42"));
/// assert_eq!(labels.stats().loads, 1);
/// # Ok(()) })
/// # }
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub struct Cache<V> {
    inner: Arc<Memory<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.namespace)
            .field("redis", &self.inner.layer.is_some())
            .field("memory_entries", &self.inner.memory.entry_count())
            .finish()
    }
}

impl<V> Cache<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        namespace: &str,
        config: CacheConfig,
        clock: Clock,
        layer: Option<Arc<Layer>>,
        instance: &str,
    ) -> Result<Self> {
        validate_namespace(namespace)?;
        config.validate()?;
        let memory = moka::sync::Cache::builder()
            .max_capacity(config.memory_capacity)
            .time_to_live(config.memory_ttl)
            .build();
        let stale = config.stale_if_error.map(|ttl| {
            moka::sync::Cache::builder()
                .max_capacity(config.memory_capacity)
                .time_to_live(ttl)
                .build()
        });
        let (key_prefix, lock_prefix) = match &layer {
            Some(layer) => (
                format!("{}{namespace}:", layer.hub.prefix),
                format!("{}{namespace}:", layer.lock_prefix),
            ),
            None => (String::new(), String::new()),
        };
        let inner = Arc::new(Memory {
            namespace: namespace.to_string(),
            key_prefix,
            lock_prefix,
            config,
            clock,
            memory,
            stale,
            layer,
            flights: Mutex::new(HashMap::new()),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            hasher: Default::default(),
            counters: Counters::default(),
            limits: CodecLimits::default(),
            token_base: instance.to_string(),
            tokens: AtomicU64::new(0),
        });
        {
            let weak: Weak<dyn StatsSource> = Arc::downgrade(&inner) as Weak<dyn StatsSource>;
            let mut caches = CACHES.lock().unwrap_or_else(PoisonError::into_inner);
            caches.retain(|cache| cache.strong_count() > 0);
            caches.push(weak);
        }
        if let Some(layer) = &inner.layer {
            let weak: Weak<dyn Invalidate> = Arc::downgrade(&inner) as Weak<dyn Invalidate>;
            layer.hub.register(namespace, weak);
        }
        Ok(Cache { inner })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The Redis key of `key`: `<prefix>:cache:<namespace>:<key>` (empty on an
    /// embedded bus).
    pub fn redis_key(&self, key: &str) -> String {
        if self.inner.key_prefix.is_empty() {
            String::new()
        } else {
            format!("{}{key}", self.inner.key_prefix)
        }
    }

    /// The counters of this namespace in this process.
    pub fn stats(&self) -> CacheStats {
        self.inner.stats()
    }

    /// Counts a hit of memory (`in_memory`) or Redis, or of a remembered "nothing".
    #[inline]
    fn count_hit(&self, found: &Option<V>, in_memory: bool) {
        let counters = &self.inner.counters;
        bump(match (found, in_memory) {
            (None, _) => &counters.negative_hits,
            (Some(_), true) => &counters.memory_hits,
            (Some(_), false) => &counters.redis_hits,
        });
    }

    /// The value of `key` in memory, without asking Redis (no I/O, no counters).
    /// `None` also while memory does not serve (on a live bus whose cache
    /// connection is back but its invalidations not yet confirmed).
    pub fn peek(&self, key: &str) -> Option<V> {
        self.memory_get(key).flatten()
    }

    /// The memory entry of `key` if it is there and not expired:
    /// `Some(None)` is a remembered "nothing".
    #[inline]
    fn memory_get(&self, key: &str) -> Option<Option<V>> {
        if let Some(layer) = &self.inner.layer {
            if !layer.hub.serving() {
                return None;
            }
        }
        let slot = self.inner.memory.get(key)?;
        if (slot.value.is_none() || self.inner.clock.is_manual())
            && self.inner.clock.now_ns() >= slot.expires_ns
        {
            self.inner.memory.invalidate(key);
            return None;
        }
        Some(slot.value)
    }

    /// The value of `key`: from memory, else from Redis (kept in memory then);
    /// `None` when neither has it. Never calls a loader.
    ///
    /// # Errors
    ///
    /// None from Redis: a Redis failure counts in `redis_errors` and answers
    /// `None`. [`ErrorKind::Malformed`] or [`ErrorKind::WrongShape`] when the Redis
    /// value does not decode as `V`.
    pub async fn get(&self, key: &str) -> Result<Option<V>> {
        if let Some(found) = self.memory_get(key) {
            self.count_hit(&found, true);
            return Ok(found);
        }
        match self.redis_get(key).await {
            Ok(Read {
                found: Some(found), ..
            }) => {
                self.count_hit(&found, false);
                Ok(found)
            }
            Ok(Read { found: None, .. }) => {
                bump(&self.inner.counters.misses);
                Ok(None)
            }
            Err(error) if error.kind().is_redis_side() => {
                bump(&self.inner.counters.misses);
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// The value of `key` from memory, else Redis, else `loader(key)`, whose
    /// value is then kept in both. Concurrent lookups of one key in this process
    /// share one loader call; across instances, the first takes a short Redis
    /// lock and the others wait for its value (up to
    /// [`CacheConfig::lock_wait`]), then load anyway.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Loader`] when the loader fails, [`ErrorKind::Timeout`] when it
    /// overruns [`CacheConfig::loader_timeout`] (unless a stale value is served);
    /// decode errors of a Redis value. Redis being down is not an error: the
    /// loader is called.
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, loader: F) -> Result<V>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: std::fmt::Display,
    {
        let load = |key: String| {
            let fut = loader(key);
            async move { fut.await.map(Some) }
        };
        match self.lookup(key, load, false).await? {
            Some(value) => Ok(value),
            // A remembered "nothing" from `get_or_load_optional` (the two are not
            // meant to share a namespace).
            None => Err(Error::new(
                ErrorKind::Loader,
                format!(
                    "cache {}: key {key:?} is remembered as having no value",
                    self.inner.namespace
                ),
            )),
        }
    }

    /// As [`get_or_load`](Self::get_or_load) for a loader that may find nothing:
    /// `Ok(None)` is remembered for [`CacheConfig::negative_ttl`] (if set).
    ///
    /// # Errors
    ///
    /// As [`get_or_load`](Self::get_or_load).
    pub async fn get_or_load_optional<F, Fut, E>(&self, key: &str, loader: F) -> Result<Option<V>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::fmt::Display,
    {
        self.lookup(key, loader, true).await
    }

    async fn lookup<F, Fut, E>(&self, key: &str, loader: F, optional: bool) -> Result<Option<V>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::fmt::Display,
    {
        if let Some(found) = self.memory_get(key) {
            if found.is_some() || optional {
                self.count_hit(&found, true);
                return Ok(found);
            }
        }
        // One flight per key in this process.
        let flight: Flight<V> = {
            let mut flights = self
                .inner
                .flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(flights.entry(key.to_string()).or_default())
        };
        let outcome = flight
            .get_or_init(|| self.miss(key, loader, optional))
            .await
            .clone();
        {
            let mut flights = self
                .inner
                .flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(key);
            }
        }
        outcome
    }

    /// The lookup of a key memory did not have: Redis, the lock, the loader.
    async fn miss<F, Fut, E>(&self, key: &str, loader: F, optional: bool) -> Outcome<V>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::fmt::Display,
    {
        let counters = &self.inner.counters;
        let mut redis_up = self.inner.layer.is_some();
        let mut lock = None;
        // The key's bytes in Redis when the load began: the fill is written
        // only over the same (see `fill_redis`).
        let mut seen = None;
        if redis_up {
            match self.redis_get(key).await {
                Ok(Read {
                    found: Some(found), ..
                }) if found.is_some() || optional => {
                    self.count_hit(&found, false);
                    return Ok(found);
                }
                Ok(read) => seen = read.seen,
                Err(error) if error.kind().is_redis_side() => redis_up = false,
                Err(error) => return Err(error),
            }
        }
        bump(&counters.misses);
        if redis_up && !self.inner.config.lock_wait.is_zero() {
            match self.wait_or_lock(key, optional, &mut seen).await {
                Waited::Found(found) => return Ok(found),
                Waited::Locked(token) => lock = Some(token),
                Waited::Load => {}
                Waited::RedisDown => redis_up = false,
            }
        }
        let ticket = self.ticket(key);
        let loaded = self.load(key, loader).await;
        let result = match loaded {
            Ok(value) => {
                let ttl = match &value {
                    Some(_) => Some(self.inner.config.redis_ttl),
                    None => self.inner.config.negative_ttl.map(Some),
                };
                if let Some(redis_ttl) = ttl {
                    let stored = if redis_up {
                        match self.fill_redis(key, value.as_ref(), redis_ttl, seen).await {
                            Ok(stored) => stored,
                            Err(error) => {
                                tracing::debug!(%error, "cache set after load failed");
                                true
                            }
                        }
                    } else {
                        true
                    };
                    if stored {
                        self.fill(key, value.clone(), ticket, false);
                    } else {
                        bump(&counters.fills_superseded);
                    }
                }
                Ok(value)
            }
            Err(error) => match self.stale_value(key) {
                Some(stale) => {
                    bump(&counters.stale_served);
                    tracing::warn!(namespace = %self.inner.namespace, %error, "loader failed: serving a stale value");
                    Ok(Some(stale))
                }
                None => Err(error),
            },
        };
        if let (Some(token), Some(layer)) = (lock, &self.inner.layer) {
            let lock_key = format!("{}{key}", self.inner.lock_prefix);
            let unlock = layer.run(move |c| async move { c.unlock(&lock_key, &token).await });
            if unlock.await.is_err() {
                bump(&counters.redis_errors);
            }
        }
        result
    }

    /// Takes the key's load lock, or waits for the holder's value.
    async fn wait_or_lock(&self, key: &str, optional: bool, seen: &mut Option<Bytes>) -> Waited<V> {
        let Some(layer) = self.inner.layer.clone() else {
            return Waited::Load;
        };
        let counters = &self.inner.counters;
        let lock_key = format!("{}{key}", self.inner.lock_prefix);
        let lock_ttl = self.inner.config.loader_timeout + Duration::from_secs(1);
        let deadline = Instant::now() + self.inner.config.lock_wait;
        let mut waited = false;
        let mut poll = Duration::from_millis(5);
        loop {
            let token = format!(
                "{}-{}",
                self.inner.token_base,
                self.inner.tokens.fetch_add(1, Ordering::Relaxed)
            );
            let (lock_key2, token2) = (lock_key.clone(), token.clone());
            match layer
                .run(move |c| async move { c.lock(&lock_key2, &token2, lock_ttl).await })
                .await
            {
                Ok(true) => {
                    // The previous holder may have stored the value and released
                    // the lock between our miss and our lock: look once more.
                    if let Ok(read) = self.redis_get(key).await {
                        match read.found {
                            Some(found) if found.is_some() || optional => {
                                self.count_hit(&found, false);
                                let lock_key = lock_key.clone();
                                let _ = layer
                                    .run(move |c| async move { c.unlock(&lock_key, &token).await })
                                    .await;
                                return Waited::Found(found);
                            }
                            _ => *seen = read.seen,
                        }
                    }
                    return Waited::Locked(token);
                }
                Ok(false) => {}
                Err(_) => {
                    bump(&counters.redis_errors);
                    return Waited::RedisDown;
                }
            }
            if !waited {
                waited = true;
                bump(&counters.lock_waits);
            }
            let now = Instant::now();
            if now >= deadline {
                bump(&counters.lock_wait_timeouts);
                return Waited::Load;
            }
            sleep(poll.min(deadline - now)).await;
            poll = (poll * 2).min(Duration::from_millis(50));
            match self.redis_get(key).await {
                Ok(Read {
                    found: Some(found), ..
                }) if found.is_some() || optional => {
                    self.count_hit(&found, false);
                    return Waited::Found(found);
                }
                Ok(read) => *seen = read.seen,
                Err(error) if error.kind().is_redis_side() => return Waited::RedisDown,
                Err(_) => return Waited::Load,
            }
        }
    }

    /// Calls the loader with the timeout, and counts.
    async fn load<F, Fut, E>(&self, key: &str, loader: F) -> Outcome<V>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::fmt::Display,
    {
        let counters = &self.inner.counters;
        bump(&counters.loads);
        let started = Instant::now();
        let limit = self.inner.config.loader_timeout;
        let outcome = tokio::select! {
            biased;
            loaded = loader(key.to_string()) => Some(loaded),
            () = sleep(limit) => None,
        };
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.load_ns_total.fetch_add(ns, Ordering::Relaxed);
        counters.load_ns_max.fetch_max(ns, Ordering::Relaxed);
        match outcome {
            Some(Ok(value)) => Ok(value),
            Some(Err(error)) => {
                bump(&counters.load_errors);
                Err(Error::new(
                    ErrorKind::Loader,
                    format!(
                        "cache {}: the loader of {key:?} failed: {error}",
                        self.inner.namespace
                    ),
                ))
            }
            None => {
                bump(&counters.load_errors);
                bump(&counters.load_timeouts);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "cache {}: the loader of {key:?} took more than {limit:?}",
                        self.inner.namespace
                    ),
                ))
            }
        }
    }

    fn stale_value(&self, key: &str) -> Option<V> {
        let stale = self.inner.stale.as_ref()?;
        stale.get(key).and_then(|slot| slot.value)
    }

    /// What this process knows about `key`'s changes now: compared after a fill.
    fn ticket(&self, key: &str) -> (u64, u64) {
        let epoch = self
            .inner
            .layer
            .as_ref()
            .map_or(0, |layer| layer.hub.epoch.load(Ordering::SeqCst));
        (self.inner.stripe(key).load(Ordering::SeqCst), epoch)
    }

    /// Puts a value read from Redis or loaded into memory, unless the key may
    /// have changed since the read began.
    ///
    /// The invalidation of a change can be handled before or after the value read
    /// earlier is inserted (they travel on different tasks). So: insert, then
    /// compare the ticket taken before the read with the counters now. An
    /// invalidation handled before the insert raised a counter and the entry is
    /// removed here; one handled after removes the entry itself.
    fn fill(&self, key: &str, value: Option<V>, ticket: (u64, u64), from_redis: bool) {
        let config = &self.inner.config;
        let ttl = match &value {
            Some(_) => config.memory_ttl,
            None => config
                .negative_ttl
                .unwrap_or(config.memory_ttl)
                .min(config.memory_ttl),
        };
        let expires_ns = self
            .inner
            .clock
            .now_ns()
            .saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        let slot = Slot { value, expires_ns };
        if let (Some(stale), Some(_)) = (&self.inner.stale, &slot.value) {
            stale.insert(key.to_string(), slot.clone());
        }
        self.inner.memory.insert(key.to_string(), slot);
        let trusted = match &self.inner.layer {
            None => true,
            // A value read from Redis is only as good as the tracking of its key;
            // a loaded or set one is good until a change is reported (a flush
            // when the connection comes back included).
            Some(layer) => (!from_redis || layer.hub.tracking()) && self.ticket(key) == ticket,
        };
        if !trusted {
            self.inner.memory.invalidate(key);
        }
    }

    /// Reads `key` from Redis (see [`Read`]). Fills memory on a hit.
    async fn redis_get(&self, key: &str) -> Result<Read<V>> {
        let Some(layer) = &self.inner.layer else {
            return Ok(Read::default());
        };
        let ticket = self.ticket(key);
        let redis_key = self.redis_key(key);
        let got = layer
            .run(move |c| async move { c.get(&redis_key).await })
            .await;
        let bytes = match got {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(Read::default()),
            Err(error) => {
                bump(&self.inner.counters.redis_errors);
                return Err(error);
            }
        };
        if bytes.starts_with(TOMBSTONE) {
            return Ok(Read {
                found: None,
                seen: Some(bytes),
            });
        }
        let value = if bytes.as_ref() == NEGATIVE {
            None
        } else {
            Some(
                codec::decode_payload::<V>(&bytes, &self.inner.limits).map_err(|error| {
                    Error::new(
                        error.kind(),
                        format!(
                            "cache {}: the Redis value of {key:?} does not decode: {}",
                            self.inner.namespace,
                            error.message()
                        ),
                    )
                })?,
            )
        };
        self.fill(key, value.clone(), ticket, true);
        Ok(Read {
            found: Some(value),
            seen: Some(bytes),
        })
    }

    /// Writes a loaded value (or a remembered "nothing") to Redis, unless the
    /// key changed since the load began: `seen` is what the key held then (no
    /// key, a remembered "nothing", an invalidation's tombstone). One script
    /// compares and sets, so a value another instance [`set`](Self::set) while
    /// this one loaded is never overwritten with the older one, and a key it
    /// [`invalidate`](Self::invalidate)d is never brought back. `Ok(false)`:
    /// superseded, not written.
    async fn fill_redis(
        &self,
        key: &str,
        value: Option<&V>,
        ttl: Option<Duration>,
        seen: Option<Bytes>,
    ) -> Result<bool> {
        let Some(layer) = &self.inner.layer else {
            return Ok(true);
        };
        let bytes = self.redis_bytes(value)?;
        let redis_key = self.redis_key(key);
        let result = layer
            .run(move |c| async move { c.set_if_unchanged(&redis_key, seen, bytes, ttl).await })
            .await;
        match result {
            Ok(true) => {
                layer
                    .hub
                    .changed_locally(&self.inner.namespace, key, self.identity());
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(error) => {
                bump(&self.inner.counters.redis_errors);
                Err(error)
            }
        }
    }

    fn redis_bytes(&self, value: Option<&V>) -> Result<Bytes> {
        Ok(match value {
            Some(value) => Bytes::from(codec::encode_payload(value, &self.inner.limits)?),
            None => Bytes::from_static(NEGATIVE),
        })
    }

    /// How long an invalidation's tombstone stays: longer than any fill that
    /// began before it can take (its lock wait, its load, and slack).
    fn tombstone_ttl(&self) -> Duration {
        let config = &self.inner.config;
        config.lock_wait + config.loader_timeout + TOMBSTONE_SLACK
    }

    async fn redis_set(&self, key: &str, value: Option<&V>, ttl: Option<Duration>) -> Result<()> {
        let Some(layer) = &self.inner.layer else {
            return Ok(());
        };
        let bytes = self.redis_bytes(value)?;
        let redis_key = self.redis_key(key);
        let result = layer
            .run(move |c| async move { c.set(&redis_key, bytes, ttl).await })
            .await;
        if result.is_err() {
            bump(&self.inner.counters.redis_errors);
        } else {
            layer
                .hub
                .changed_locally(&self.inner.namespace, key, self.identity());
        }
        result
    }

    fn identity(&self) -> *const () {
        Arc::as_ptr(&self.inner).cast()
    }

    /// Sets `key` to `value` in Redis (with the namespace's TTL) and memory; other
    /// instances drop their memory copies.
    ///
    /// # Errors
    ///
    /// Encode errors; Redis errors (memory is set anyway, and Redis's copy is
    /// whatever it was).
    pub async fn set(&self, key: &str, value: V) -> Result<()> {
        let ticket = self.ticket(key);
        let result = self
            .redis_set(key, Some(&value), self.inner.config.redis_ttl)
            .await;
        if let Err(error) = &result {
            if !error.kind().is_redis_side() {
                return result;
            }
        }
        self.fill(key, Some(value), ticket, false);
        result
    }

    /// Removes `key` from memory and Redis; other instances drop their memory
    /// copies (and stale copies: an invalidated value is never served stale).
    ///
    /// # Errors
    ///
    /// Redis errors (memory is cleared anyway).
    pub async fn invalidate(&self, key: &str) -> Result<()> {
        self.inner.invalidate_key(key);
        let Some(layer) = &self.inner.layer else {
            return Ok(());
        };
        // A tombstone, not a delete: a fill that began before this call finds
        // the key changed and is not written (a deleted key would look as
        // missing as when the fill began), and the key's change reaches every
        // instance's tracking even when it held no value.
        let mut tombstone = Vec::with_capacity(TOMBSTONE.len() + 16);
        tombstone.extend_from_slice(TOMBSTONE);
        tombstone.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        let (redis_key, ttl) = (self.redis_key(key), self.tombstone_ttl());
        let result = layer
            .run(move |c| async move { c.set(&redis_key, Bytes::from(tombstone), Some(ttl)).await })
            .await;
        // Also after Redis answered: a fill racing with this call is dropped.
        self.inner.invalidate_key(key);
        layer
            .hub
            .changed_locally(&self.inner.namespace, key, self.identity());
        match result {
            Ok(_) => Ok(()),
            Err(error) => {
                bump(&self.inner.counters.redis_errors);
                Err(error)
            }
        }
    }

    /// Removes every key of the namespace from memory and Redis (`SCAN` and
    /// `UNLINK`); other instances drop their memory copies. Returns how many Redis
    /// keys were removed.
    ///
    /// # Errors
    ///
    /// Redis errors (memory is cleared anyway).
    pub async fn invalidate_namespace(&self) -> Result<u64> {
        let flush = |memory: &Memory<V>| {
            for stripe in &memory.stripes {
                stripe.fetch_add(1, Ordering::SeqCst);
            }
            memory.flush();
            if let Some(stale) = &memory.stale {
                stale.invalidate_all();
            }
        };
        flush(&self.inner);
        let Some(layer) = &self.inner.layer else {
            return Ok(0);
        };
        let pattern = format!(
            "{}*",
            crate::transport::keys::escape_glob(&self.inner.key_prefix)
        );
        let result = layer
            .run(move |c| async move {
                let keys = c.scan_keys(&pattern, None).await?;
                let mut removed = 0;
                for chunk in keys.chunks(1000) {
                    removed += c.unlink(chunk).await?;
                }
                Ok(removed)
            })
            .await;
        flush(&self.inner);
        layer
            .hub
            .flushed_locally(&self.inner.namespace, self.identity());
        if result.is_err() {
            bump(&self.inner.counters.redis_errors);
        }
        result
    }
}

/// What a Redis read of a key found.
struct Read<V> {
    /// A value, or a remembered "nothing" (`Some(None)`); `None`: no key, or an
    /// invalidation's tombstone.
    found: Option<Option<V>>,
    /// The key's bytes as read, for a fill that follows (see `fill_redis`).
    seen: Option<Bytes>,
}

impl<V> Default for Read<V> {
    fn default() -> Self {
        Read {
            found: None,
            seen: None,
        }
    }
}

/// The outcome of waiting on another instance's load.
enum Waited<V> {
    Found(Option<V>),
    Locked(String),
    Load,
    RedisDown,
}

impl ErrorKind {
    /// Failures of Redis itself (down, slow, refusing), as opposed to bad data.
    pub(crate) fn is_redis_side(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::Redis
                | ErrorKind::Auth
                | ErrorKind::Closed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_validated() {
        assert!(validate_namespace("llm").is_ok());
        assert!(validate_namespace("event_label.v2").is_ok());
        for bad in ["", "Upper", "a:b", "a b", &"x".repeat(65)] {
            assert_eq!(
                validate_namespace(bad).unwrap_err().kind(),
                ErrorKind::InvalidConfig,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn configs_are_validated() {
        assert!(CacheConfig::default().validate().is_ok());
        for preset in [
            CacheConfig::llm(),
            CacheConfig::embedding(),
            CacheConfig::categorization(),
            CacheConfig::event_label(),
            CacheConfig::cluster(),
            CacheConfig::ticker(),
            CacheConfig::orderbook(),
        ] {
            preset.validate().unwrap();
        }
        let bad = CacheConfig {
            memory_ttl: Duration::from_secs(10),
            ..CacheConfig::with_ttl(Duration::from_secs(2))
        };
        assert_eq!(bad.validate().unwrap_err().kind(), ErrorKind::InvalidConfig);
        let bad = CacheConfig {
            memory_capacity: 0,
            ..CacheConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(
            crate::transport::keys::escape_glob("tickbus:cache:a*b?:"),
            "tickbus:cache:a\\*b\\?:"
        );
    }
}
