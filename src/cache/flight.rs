//! One flight per key: a lookup that memory did not answer goes to Redis,
//! the cross-instance load lock and the loader once per key in this process.
//!
//! Hand-written (a map of `OnceCell`s) rather than moka's loader coalescing:
//! the memory layer is moka's sync cache and must not keep every outcome (a
//! fill superseded in Redis, `None` without a negative TTL), and a separate
//! `moka::future::Cache` used only to coalesce measured a coalesced miss at
//! twice the cost (32.1 against 15.8 µs per key, `benches/cache.rs`, `miss`)
//! and panics after 200 cancelled leaders in a row.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::fill::Read;
use super::layer::sleep;
use super::stats::bump;
use super::Cache;
use crate::error::{Error, ErrorKind, Result};

pub(super) type Outcome<V> = std::result::Result<Option<V>, Error>;
pub(super) type Flight<V> = Arc<tokio::sync::OnceCell<Outcome<V>>>;

impl<V> Cache<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    pub(super) async fn lookup<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        optional: bool,
    ) -> Result<Option<V>>
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
        // Leaves the flight however this lookup ends, cancelled included.
        let leave = Leave {
            flights: &self.inner.flights,
            key,
            flight,
        };
        leave
            .flight
            .get_or_init(|| self.miss(key, loader, optional))
            .await
            .clone()
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
}

/// The outcome of waiting on another instance's load.
enum Waited<V> {
    Found(Option<V>),
    Locked(String),
    Load,
    RedisDown,
}

/// A lookup's hold on its key's flight. Dropped when the lookup ends, or is
/// cancelled: it removes the flight's entry once the flight has an outcome
/// (later lookups start afresh), or when this was the last lookup holding it
/// (a lookup cancelled while it led the flight, with nobody waiting, must not
/// leave the entry behind). A flight whose leader was cancelled while others
/// wait keeps its entry: one of them loads (`OnceCell` runs the next caller's
/// init), and newcomers join it rather than load a second time.
struct Leave<'a, V> {
    flights: &'a std::sync::Mutex<std::collections::HashMap<String, Flight<V>>>,
    key: &'a str,
    flight: Flight<V>,
}

impl<V> Drop for Leave<'_, V> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        // Under the map's lock no lookup can take a new hold: the count is the
        // map's and the current lookups'.
        let ours = flights
            .get(self.key)
            .is_some_and(|flight| Arc::ptr_eq(flight, &self.flight));
        if ours && (self.flight.initialized() || Arc::strong_count(&self.flight) == 2) {
            flights.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::cache::CacheConfig;

    /// A lookup cancelled while it leads a flight nobody else waits on takes
    /// the flight's entry with it (it stayed behind before `Leave`).
    #[test]
    fn a_cancelled_lone_lookup_leaves_no_flight_behind() {
        let bus = crate::Bus::builder().build().unwrap();
        let cache = bus
            .cache::<String>("flight", CacheConfig::with_ttl(Duration::from_secs(60)))
            .unwrap();
        let flights = || cache.inner.flights.lock().unwrap().len();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut lookup = Box::pin(cache.get_or_load("k", |_| async {
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(String::new())
            }));
            assert!(futures::poll!(&mut lookup).is_pending());
            assert_eq!(flights(), 1);
            drop(lookup);
            assert_eq!(flights(), 0);
        });
    }
}
