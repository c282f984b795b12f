//! Latest-state keys: the latest value of `component:data_type`, with a TTL
//! chosen by a policy table, and `publish_with_state`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Layer;
use crate::clock::Clock;
use crate::codec::{self, CodecLimits};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{EventId, Headers, InstanceId, StreamId, TopicName};
use crate::event::{Extra, Remote};
use crate::local::topic::Stored;
use crate::local::Topic;
use crate::transport::{stream_key, WireEntry};
use crate::wire::{self, EncodedEntry};

/// TTLs of state keys by key pattern: the first rule whose pattern matches
/// `component:data_type` wins, else the default. Patterns are globs where `*`
/// matches any run of characters.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tickbus::cache::StatePolicy;
///
/// let policy = StatePolicy::seeds();
/// assert_eq!(policy.ttl_for("risk:current"), Some(Duration::from_secs(3600)));
/// assert_eq!(policy.ttl_for("events:history"), Some(Duration::from_secs(86_400)));
/// assert_eq!(policy.ttl_for("config:strategy"), None); // no expiry
///
/// let custom = StatePolicy::new(Some(Duration::from_secs(60)))
///     .rule("book:*", Some(Duration::from_secs(2)));
/// assert_eq!(custom.ttl_for("book:btc_usdt"), Some(Duration::from_secs(2)));
/// assert_eq!(custom.ttl_for("fills:last"), Some(Duration::from_secs(60)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatePolicy {
    rules: Vec<(String, Option<Duration>)>,
    default: Option<Duration>,
}

impl StatePolicy {
    /// A policy with only a default TTL (`None`: no expiry).
    pub fn new(default: Option<Duration>) -> Self {
        StatePolicy {
            rules: Vec::new(),
            default,
        }
    }

    /// Adds a rule after the existing ones.
    #[must_use]
    pub fn rule(mut self, pattern: &str, ttl: Option<Duration>) -> Self {
        self.rules.push((pattern.to_string(), ttl));
        self
    }

    /// The seed standard: configuration never expires (`config:*`), history 24 h
    /// (`*:history`, `*_series`), snapshots and current values 1 h (`*:snapshot`,
    /// `*:current`), anything else 1 h.
    pub fn seeds() -> Self {
        let hour = Some(Duration::from_secs(3600));
        let day = Some(Duration::from_secs(86_400));
        StatePolicy::new(hour)
            .rule("config:*", None)
            .rule("*:history", day)
            .rule("*_series", day)
            .rule("*:snapshot", hour)
            .rule("*:current", hour)
    }

    /// The TTL of `key` (`component:data_type`); `None`: no expiry.
    pub fn ttl_for(&self, key: &str) -> Option<Duration> {
        self.rules
            .iter()
            .find(|(pattern, _)| glob(pattern.as_bytes(), key.as_bytes()))
            .map_or(self.default, |(_, ttl)| *ttl)
    }
}

impl Default for StatePolicy {
    fn default() -> Self {
        Self::seeds()
    }
}

/// `*`-only glob match.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// What [`StateStore::publish_with_state`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishedWithState {
    /// The event's id.
    pub event_id: EventId,
    /// The event's stream entry (live mode); `None` on an embedded bus.
    pub stream_id: Option<StreamId>,
}

enum Backend {
    /// An embedded bus (a backtest): keys in this process, TTLs on the bus clock.
    Memory(Mutex<HashMap<String, (Bytes, Option<u64>)>>),
    Redis(Arc<Layer>),
}

/// The latest-state keys of a bus: `<prefix>:state:<component>:<data_type>`
/// in Redis (MessagePack, TTL from the [`StatePolicy`]); on an embedded bus, a
/// map in this process with the same TTLs on the bus clock, so that components
/// run unchanged in a backtest.
///
/// Made by [`Bus::state`](crate::Bus::state).
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use serde::{Deserialize, Serialize};
/// use tickbus::Bus;
/// use tickbus::cache::StatePolicy;
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct Risk { var_99: f64 }
///
/// let bus = Bus::builder().build()?;
/// let state = bus.state(StatePolicy::seeds())?;
/// let risk = bus.topic::<Risk>("risk:calculated")?;
/// let mut seen = risk.subscribe();
///
/// // The event and the state key, together.
/// state.publish_with_state(&risk, Risk { var_99: 1.5 }, "risk", "current", &Risk { var_99: 1.5 }).await?;
/// assert_eq!(seen.try_recv().unwrap().value.var_99, 1.5);
/// assert_eq!(state.get::<Risk>("risk", "current").await?, Some(Risk { var_99: 1.5 }));
/// # Ok::<(), tickbus::Error>(()) }).unwrap();
/// ```
pub struct StateStore {
    backend: Backend,
    policy: StatePolicy,
    clock: Clock,
    instance: InstanceId,
    key_prefix: String,
    limits: CodecLimits,
    salt: u32,
    seq: AtomicU64,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("redis", &matches!(self.backend, Backend::Redis(_)))
            .field("policy", &self.policy)
            .finish()
    }
}

impl StateStore {
    pub(crate) fn new(
        layer: Option<Arc<Layer>>,
        policy: StatePolicy,
        clock: Clock,
        instance: InstanceId,
        key_prefix: &str,
    ) -> Self {
        StateStore {
            backend: match layer {
                Some(layer) => Backend::Redis(layer),
                None => Backend::Memory(Mutex::new(HashMap::new())),
            },
            policy,
            clock,
            instance,
            key_prefix: key_prefix.to_string(),
            limits: CodecLimits::default(),
            salt: fastrand::u32(..),
            seq: AtomicU64::new(0),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &StatePolicy {
        &self.policy
    }

    /// `component:data_type`, validated with the topic naming rules.
    fn name(component: &str, data_type: &str) -> Result<String> {
        let name = format!("{component}:{data_type}");
        TopicName::new(&name).map_err(|error| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("invalid state key {name:?}: {}", error.message()),
            )
        })?;
        Ok(name)
    }

    fn redis_key(&self, name: &str) -> String {
        crate::transport::keys::state(&self.key_prefix, name)
    }

    fn expiry(&self, ttl: Option<Duration>) -> Option<u64> {
        ttl.map(|ttl| {
            self.clock
                .now_ns()
                .saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
        })
    }

    /// Sets the latest value of `component:data_type` (TTL by the policy).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad name; encode errors; Redis errors.
    pub async fn set<S: Serialize>(
        &self,
        component: &str,
        data_type: &str,
        value: &S,
    ) -> Result<()> {
        let name = Self::name(component, data_type)?;
        let bytes = Bytes::from(codec::encode_payload(value, &self.limits)?);
        let ttl = self.policy.ttl_for(&name);
        match &self.backend {
            Backend::Memory(map) => {
                let expires = self.expiry(ttl);
                map.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name, (bytes, expires));
                Ok(())
            }
            Backend::Redis(layer) => {
                let key = self.redis_key(&name);
                layer
                    .run(move |c| async move { c.set(&key, bytes, ttl).await })
                    .await
            }
        }
    }

    /// The latest value of `component:data_type`, if set and not expired.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad name; decode errors; Redis errors.
    pub async fn get<S: DeserializeOwned>(
        &self,
        component: &str,
        data_type: &str,
    ) -> Result<Option<S>> {
        let name = Self::name(component, data_type)?;
        let bytes = match &self.backend {
            Backend::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                match map.get(&name) {
                    Some((_, Some(expires))) if self.clock.now_ns() >= *expires => {
                        map.remove(&name);
                        None
                    }
                    Some((bytes, _)) => Some(bytes.clone()),
                    None => None,
                }
            }
            Backend::Redis(layer) => {
                let key = self.redis_key(&name);
                layer.run(move |c| async move { c.get(&key).await }).await?
            }
        };
        bytes
            .map(|bytes| codec::decode_payload(&bytes, &self.limits))
            .transpose()
    }

    /// Publishes `value` to `topic` and sets `component:data_type` to `state`,
    /// atomically: in live mode one `MULTI`/`EXEC` holds the stream entry's
    /// `XADD` and the key's `SET`, so no reader ever sees the event without the
    /// state or the state without the event. Local subscribers receive the event
    /// once both are in Redis.
    ///
    /// Unlike [`Topic::publish`], this waits for Redis (one round trip) and does
    /// not go through the outbox: its entry may land between entries the outbox
    /// is writing for the same topic.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a bad name, or in live mode a topic that
    /// is not durable; encode errors; Redis errors (then neither was written, or
    /// with [`ErrorKind::Timeout`], unknown); [`ErrorKind::Closed`] when the topic
    /// is closed.
    pub async fn publish_with_state<T, S>(
        &self,
        topic: &Topic<T>,
        value: T,
        component: &str,
        data_type: &str,
        state: &S,
    ) -> Result<PublishedWithState>
    where
        T: Serialize + Clone + Send + Sync + 'static,
        S: Serialize,
    {
        let name = Self::name(component, data_type)?;
        let state_bytes = Bytes::from(codec::encode_payload(state, &self.limits)?);
        let ttl = self.policy.ttl_for(&name);
        let layer = match &self.backend {
            Backend::Memory(map) => {
                let closed = || Error::new(ErrorKind::Closed, "the topic is closed");
                let shared = &topic.shared;
                // The state first: a subscriber that reads it on the event sees it.
                let expires = self.expiry(ttl);
                map.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name, (state_bytes, expires));
                let stored = shared.stored(value);
                let timestamp_ns = stored.timestamp_ns;
                let seq = shared
                    .publish_stored(stored)
                    .map_err(|(error, _)| match error {
                        crate::local::ring::ClaimError::Exclusive => shared.exclusive_error(),
                        _ => closed(),
                    })?;
                return Ok(PublishedWithState {
                    event_id: EventId::derive(timestamp_ns, shared.salt, seq),
                    stream_id: None,
                });
            }
            Backend::Redis(layer) => layer,
        };
        if !topic.is_durable() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "publish_with_state needs a durable topic; {} is local only",
                    topic.name()
                ),
            ));
        }
        let data = Bytes::from(codec::encode_payload(&value, &self.limits)?);
        let timestamp_ns = self.clock.now_ns();
        let event_id = EventId::derive(
            timestamp_ns,
            self.salt,
            self.seq.fetch_add(1, Ordering::Relaxed),
        );
        let entry = WireEntry {
            key: stream_key(&self.key_prefix, topic.name()).into(),
            // The codec held the payload to `self.limits`.
            event: EncodedEntry::new(
                event_id,
                wire::source_field(self.instance),
                timestamp_ns,
                data,
            ),
            max_len: None,
        };
        let key = self.redis_key(&name);
        let stream_id = layer
            .run(move |c| async move { c.append_with_state(&entry, &key, state_bytes, ttl).await })
            .await?;
        let stored = Stored {
            value,
            timestamp_ns,
            extra: Extra::remote(
                Remote {
                    id: event_id,
                    source: self.instance,
                    stream_id,
                },
                Headers::new(),
            )
            .into(),
        };
        topic.shared.publish_stored(stored).map_err(|_| {
            Error::new(
                ErrorKind::Closed,
                "the topic is closed (the event is in Redis)",
            )
        })?;
        Ok(PublishedWithState {
            event_id,
            stream_id: Some(stream_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match() {
        assert!(glob(b"config:*", b"config:strategy"));
        assert!(glob(b"*:current", b"risk:current"));
        assert!(!glob(b"*:current", b"risk:currently"));
        assert!(glob(b"*_series", b"pnl:hourly_series"));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
    }

    #[test]
    fn seed_policy() {
        let policy = StatePolicy::seeds();
        let hour = Some(Duration::from_secs(3600));
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(policy.ttl_for("position:snapshot"), hour);
        assert_eq!(policy.ttl_for("pnl:current"), hour);
        assert_eq!(policy.ttl_for("pnl:hourly_series"), day);
        assert_eq!(policy.ttl_for("events:history"), day);
        assert_eq!(policy.ttl_for("config:initial_state"), None);
        assert_eq!(policy.ttl_for("other:thing"), hour);
    }
}
