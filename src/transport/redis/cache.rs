//! Cache commands: `CLIENT TRACKING` and its invalidations, values with
//! compare-and-set fills, load locks, and the state store's atomic append.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::{ClientLike, Value};

use super::WireEntry;
use crate::error::{Error, ErrorKind, Result};
use crate::event::StreamId;

use super::streams::xadd_args;
use super::{cmd, cmd_offset, parse_stream_id, ttl_millis, value_bytes, Connection};

/// What the server said changed under the tracked prefix.
#[derive(Debug)]
#[cfg_attr(not(feature = "cache"), allow(dead_code))] // the cache uses these
pub(crate) enum Invalidation {
    /// These keys changed (set, deleted, expired, evicted).
    Keys(Vec<Bytes>),
    /// Anything may have changed: the server flushed (`FLUSHALL`, `FLUSHDB`),
    /// or invalidations were lost (the channel lagged).
    All,
}

/// The invalidation pushes of one RESP3 connection, lag included.
#[cfg_attr(not(feature = "cache"), allow(dead_code))] // the cache uses these
pub(crate) struct Invalidations {
    rx: tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
}

#[cfg_attr(not(feature = "cache"), allow(dead_code))] // the cache uses these
impl Invalidations {
    /// The next invalidation; `None` once the client is closed.
    pub(crate) async fn next(&mut self) -> Option<Invalidation> {
        use tokio::sync::broadcast::error::RecvError;
        match self.rx.recv().await {
            Ok(invalidation) if invalidation.keys.is_empty() => Some(Invalidation::All),
            Ok(invalidation) => Some(Invalidation::Keys(
                invalidation
                    .keys
                    .into_iter()
                    .map(|key| key.into_bytes())
                    .collect(),
            )),
            Err(RecvError::Lagged(_)) => Some(Invalidation::All),
            Err(RecvError::Closed) => None,
        }
    }
}

/// Releases a lock only if it still holds our token (`KEYS[1]`, `ARGV[1]`).
#[cfg_attr(not(feature = "cache"), allow(dead_code))] // the cache uses these
pub(crate) const RELEASE_LOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Sets `KEYS[1]` to `ARGV[3]` (with `PX ARGV[4]` unless empty) only if it
/// holds what the caller saw: no key when `ARGV[1]` is `0`, else exactly
/// `ARGV[2]`. Returns 1 when set, 0 when the key changed meanwhile.
#[cfg_attr(not(feature = "cache"), allow(dead_code))] // the cache uses these
pub(crate) const FILL_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
    if current then return 0 end
elseif current ~= ARGV[2] then
    return 0
end
if ARGV[4] == '' then
    redis.call('SET', KEYS[1], ARGV[3])
else
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
";

#[cfg_attr(not(feature = "cache"), allow(dead_code))] // the cache uses these
impl Connection {
    /// Subscribes to the invalidation pushes of this (RESP3) connection.
    pub(crate) fn invalidations(&self) -> Invalidations {
        use fred::interfaces::TrackingInterface as _;
        Invalidations {
            rx: self.client.invalidation_rx(),
        }
    }

    /// Makes sure the server tracks `prefix` for this connection (`CLIENT
    /// TRACKING on BCAST PREFIX prefix NOLOOP`: it then pushes the name of
    /// every key under `prefix` that another connection changes), and returns
    /// the id of the connection it is confirmed on.
    ///
    /// Idempotent: `CLIENT TRACKINGINFO` says whether tracking is already on
    /// (a `CLIENT TRACKING` queued during a reconnect may have run on this very
    /// connection; sending it again is refused with "overlaps with an existing
    /// prefix"), and a refusal is checked the same way. `CLIENT ID` before and
    /// after proves that every step ran on one connection: a reconnect in
    /// between fails the call (`Unavailable`), to be tried again.
    pub(crate) async fn ensure_tracking(&self, prefix: &str) -> Result<u64> {
        use fred::interfaces::TrackingInterface as _;
        let id = self.client_id().await?;
        if !self.tracks(prefix).await? {
            if let Err(error) = self
                .client
                .start_tracking(prefix, true, false, false, true)
                .await
            {
                let error = self.fail(error, "CLIENT TRACKING");
                if !self.tracks(prefix).await? {
                    return Err(error);
                }
            }
        }
        let confirmed = self.tracks(prefix).await?;
        if !confirmed || self.client_id().await? != id {
            return Err(Error::new(
                ErrorKind::Unavailable,
                self.context("CLIENT TRACKING: the connection changed while it was enabled"),
            ));
        }
        Ok(id)
    }

    /// Whether fred has a working connection right now.
    pub(crate) fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// `CLIENT ID`.
    async fn client_id(&self) -> Result<u64> {
        let value: Value = self
            .client
            .custom(cmd("CLIENT"), vec!["ID"])
            .await
            .map_err(|error| self.fail(error, "CLIENT ID"))?;
        value.as_u64().ok_or_else(|| {
            Error::new(
                ErrorKind::Redis,
                self.context(&format!("CLIENT ID answered {value:?}")),
            )
        })
    }

    /// `CLIENT TRACKINGINFO`: whether this connection has broadcast tracking
    /// on, covering `prefix`.
    async fn tracks(&self, prefix: &str) -> Result<bool> {
        let value: Value = self
            .client
            .custom(cmd("CLIENT"), vec!["TRACKINGINFO"])
            .await
            .map_err(|error| self.fail(error, "CLIENT TRACKINGINFO"))?;
        let text = |value: &Value| value.as_bytes().map(|b| b.to_vec()).unwrap_or_default();
        let field = |name: &[u8]| -> Vec<Vec<u8>> {
            let pairs: Vec<(Vec<u8>, Value)> = match &value {
                Value::Map(map) => map
                    .iter()
                    .map(|(key, value)| (key.as_bytes().to_vec(), value.clone()))
                    .collect(),
                Value::Array(items) => items
                    .chunks(2)
                    .filter(|pair| pair.len() == 2)
                    .map(|pair| (text(&pair[0]), pair[1].clone()))
                    .collect(),
                _ => Vec::new(),
            };
            pairs
                .into_iter()
                .find(|(key, _)| key.as_slice() == name)
                .map(|(_, value)| match value {
                    Value::Array(items) => items.iter().map(text).collect(),
                    other => vec![text(&other)],
                })
                .unwrap_or_default()
        };
        let flags = field(b"flags");
        let prefixes = field(b"prefixes");
        Ok(flags.iter().any(|flag| flag == b"on")
            && flags.iter().any(|flag| flag == b"bcast")
            && prefixes.iter().any(|known| known == prefix.as_bytes()))
    }

    /// `GET key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let value: Value = self
            .client
            .custom(cmd("GET"), vec![key])
            .await
            .map_err(|error| self.fail(error, "GET"))?;
        Ok(match value {
            Value::Null => None,
            other => Some(value_bytes(other)),
        })
    }

    /// `SET key value [PX ttl]` (`None`: no expiry).
    pub(crate) async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let mut args: Vec<Value> = vec![key.into(), Value::Bytes(value)];
        if let Some(ttl) = ttl {
            args.push("PX".into());
            args.push(ttl_millis(ttl).into());
        }
        let _: Value = self
            .client
            .custom(cmd("SET"), args)
            .await
            .map_err(|error| self.fail(error, "SET"))?;
        Ok(())
    }

    /// Sets `key` to `value` only if it still holds `expected` (`None`: no
    /// key), atomically ([`FILL_SCRIPT`]): `false` when it changed meanwhile.
    pub(crate) async fn set_if_unchanged(
        &self,
        key: &str,
        expected: Option<Bytes>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let args: Vec<Value> = vec![
            Value::from_static_str(FILL_SCRIPT),
            Value::from(1_i64),
            key.into(),
            Value::from_static_str(if expected.is_some() { "1" } else { "0" }),
            Value::Bytes(expected.unwrap_or_default()),
            Value::Bytes(value),
            ttl.map_or_else(String::new, ttl_millis).into(),
        ];
        let value: Value = self
            .client
            .custom(cmd_offset("EVAL", 2), args)
            .await
            .map_err(|error| self.fail(error, "EVAL (fill)"))?;
        Ok(value.as_u64() == Some(1))
    }

    /// `SET key token NX PX ttl`: `true` when the key was set (this call took
    /// the lock).
    pub(crate) async fn lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let ttl = ttl_millis(ttl);
        let value: Value = self
            .client
            .custom(cmd("SET"), vec![key, token, "NX", "PX", &ttl])
            .await
            .map_err(|error| self.fail(error, "SET NX"))?;
        Ok(!matches!(value, Value::Null))
    }

    /// Releases `key` if it still holds `token`: `true` when it did.
    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<bool> {
        let value: Value = self
            .client
            .custom(cmd("EVAL"), vec![RELEASE_LOCK_SCRIPT, "1", key, token])
            .await
            .map_err(|error| self.fail(error, "EVAL (unlock)"))?;
        Ok(value.as_u64() == Some(1))
    }

    /// `UNLINK key…`: how many keys existed.
    pub(crate) async fn unlink(&self, keys: &[String]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let value: Value = self
            .client
            .custom(cmd("UNLINK"), keys.to_vec())
            .await
            .map_err(|error| self.fail(error, "UNLINK"))?;
        Ok(value.as_u64().unwrap_or(0))
    }

    /// `MULTI; XADD entry; SET key value [PX ttl]; EXEC`: the event and the
    /// state are written together or not at all. Returns the entry's id.
    pub(crate) async fn append_with_state(
        &self,
        entry: &WireEntry,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<StreamId> {
        use fred::interfaces::TransactionInterface as _;
        let transaction = self.client.multi();
        let _: Value = transaction
            .custom(cmd("XADD"), xadd_args(entry))
            .await
            .map_err(|error| self.fail(error, "MULTI XADD"))?;
        let mut args: Vec<Value> = vec![key.into(), Value::Bytes(value)];
        if let Some(ttl) = ttl {
            args.push("PX".into());
            args.push(ttl_millis(ttl).into());
        }
        let _: Value = transaction
            .custom(cmd("SET"), args)
            .await
            .map_err(|error| self.fail(error, "MULTI SET"))?;
        let replies: Vec<Value> = transaction
            .exec(true)
            .await
            .map_err(|error| self.fail(error, "EXEC"))?;
        replies
            .first()
            .and_then(parse_stream_id)
            .ok_or_else(|| Error::new(ErrorKind::Redis, "EXEC: no stream id for the XADD"))
    }
}
