//! Filling memory and Redis: the change counters a fill is checked
//! against, Redis reads, and the writes that never bring back an older value.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::stats::bump;
use super::{Cache, Slot, NEGATIVE, TOMBSTONE, TOMBSTONE_SLACK};
use crate::codec;
use crate::error::{Error, Result};

impl<V> Cache<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// What this process knows about `key`'s changes now: compared after a fill.
    pub(super) fn ticket(&self, key: &str) -> (u64, u64) {
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
    pub(super) fn fill(&self, key: &str, value: Option<V>, ticket: (u64, u64), from_redis: bool) {
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
    pub(super) async fn redis_get(&self, key: &str) -> Result<Read<V>> {
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
    pub(super) async fn fill_redis(
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
    pub(super) fn tombstone_ttl(&self) -> Duration {
        let config = &self.inner.config;
        config.lock_wait + config.loader_timeout + TOMBSTONE_SLACK
    }

    pub(super) async fn redis_set(
        &self,
        key: &str,
        value: Option<&V>,
        ttl: Option<Duration>,
    ) -> Result<()> {
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
}

/// What a Redis read of a key found.
pub(super) struct Read<V> {
    /// A value, or a remembered "nothing" (`Some(None)`); `None`: no key, or an
    /// invalidation's tombstone.
    pub(super) found: Option<Option<V>>,
    /// The key's bytes as read, for a fill that follows (see `fill_redis`).
    pub(super) seen: Option<Bytes>,
}

impl<V> Default for Read<V> {
    fn default() -> Self {
        Read {
            found: None,
            seen: None,
        }
    }
}
