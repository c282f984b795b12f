//! The configuration of a cache namespace ([`CacheConfig`] and its presets)
//! and the check of a namespace's name.

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// The configuration of one cache namespace.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickbus::cache::CacheConfig;
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
    /// [`Cache::get_or_load_optional`](super::Cache::get_or_load_optional); `None` (default): not remembered.
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
