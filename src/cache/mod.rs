//! The tiered cache (memory → Redis → loader) and the latest-state keys.
//!
//! A [`Cache<V>`] is one namespace: its values live in memory (moka) in front of
//! Redis keys `<prefix>:cache:<namespace>:<key>` (MessagePack, with the
//! namespace's TTL), in front of a loader, the slow or rate-limited API being
//! cached. See `docs/cache.md` for the layers, coherence and the state keys.

mod config;
mod fill;
mod flight;
mod layer;
mod state;
mod stats;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock::Clock;
use crate::codec::CodecLimits;
use crate::error::{Error, ErrorKind, Result};

pub(crate) use config::validate_namespace;
pub use config::CacheConfig;
use fill::Read;
use flight::Flight;
use layer::Invalidate;
pub(crate) use layer::Layer;
pub use state::{PublishedWithState, StatePolicy, StateStore};
#[cfg(feature = "metrics")]
pub(crate) use stats::stats_by_namespace;
pub use stats::CacheStats;
use stats::{bump, Counters, StatsSource, CACHES};

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
impl<V> Memory<V> {
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
/// use tickbus::Bus;
/// use tickbus::cache::CacheConfig;
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
