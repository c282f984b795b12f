//! Redis Streams through fred: the only file that imports fred or names a command.
//!
//! Two connections per live bus, each a fred `Client` (one TCP connection, commands
//! pipelined on it):
//!
//! * the **writer**: `XADD` pipelines, `WAITAOF` (which must run on the connection
//!   that wrote), trims, key checks;
//! * the **reader**: the cross-instance `XREAD BLOCK` loop, alone on its connection
//!   (a blocked connection holds every command queued behind it).
//!
//! Both are built with `max_command_attempts = 1`: fred must never re-send an
//! `XADD` by itself after a reconnect (the reply may have been lost after the entry
//! was written). The outbox decides instead, after checking the stream (see
//! `live/writer.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::{
    ClientLike, Config, Error as FredError, ErrorKind as FredErrorKind, ReconnectPolicy, Value,
};
use fred::types::{Builder, ClusterHash, CustomCommand};

use super::{RawEntry, WireEntry};
use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::StreamId;

mod cache;
mod delayed;
mod groups;
mod rate;
mod streams;
mod tls;

#[cfg(feature = "cache")]
pub(crate) use cache::Invalidation;
pub(crate) use groups::{info_stream_id, info_text, info_u64, InfoRow};
pub(crate) use rate::GcraReply;
pub(crate) use streams::{PageEntries, PageEntry, RangePage};

/// The oldest server with everything tickbus uses (`XAUTOCLAIM` arrived in 6.2).
pub(crate) const MIN_VERSION: (u32, u32) = (6, 2);

/// The first server with `WAITAOF`.
pub(crate) const WAITAOF_VERSION: (u32, u32) = (7, 2);

/// One fred client (one connection) and what tickbus knows of its server.
#[derive(Clone)]
pub(crate) struct Connection {
    client: fred::prelude::Client,
    role: &'static str,
    redacted_url: String,
    /// When tickbus last dropped this connection for not answering, and
    /// whether that replacement is still under way (see [`Connection::fail`]);
    /// shared by every clone.
    abandoned: Arc<Abandoned>,
    /// The connection's command timeout (`RedisConfig::command_timeout`).
    command_timeout: Duration,
}

/// The state of [`Connection::abandon`].
#[derive(Default)]
struct Abandoned {
    at: Mutex<Option<Instant>>,
    replacing: AtomicBool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("url", &self.redacted_url)
            .finish()
    }
}

/// Turns a fred error into a tickbus error, keeping it as the source.
///
/// Only a server's error reply that retrying cannot fix is [`ErrorKind::Redis`]
/// (`WRONGTYPE`, `ERR …`): the outbox gives such an entry up (its receipt says
/// why). Everything else (connection lost, no route, `LOADING`, `OOM`,
/// `READONLY` during a failover, ...) is `Unavailable` or `Timeout`: retried.
pub(crate) fn map_error(error: FredError, context: &str) -> Error {
    let details = readable_io_error(error.details());
    let kind = reply_kind(&details).unwrap_or(match error.kind() {
        FredErrorKind::Auth => ErrorKind::Auth,
        FredErrorKind::Timeout => ErrorKind::Timeout,
        _ => ErrorKind::Unavailable,
    });
    Error::new(kind, format!("{context}: {details}")).with_source(error)
}

/// fred shows an I/O error in its `Debug` form (`Os { code: 111, kind:
/// ConnectionRefused, message: "Connection refused" }`): keep the message.
fn readable_io_error(details: &str) -> String {
    if details.starts_with("Os {") {
        if let Some(message) = details
            .split_once("message: \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(message, _)| message)
        {
            return message.to_string();
        }
    }
    details.to_string()
}

/// The kind of a server error reply, by its code (`WRONGTYPE …`, `NOAUTH …`);
/// `None` for anything else (retried as `Unavailable`).
fn reply_kind(text: &str) -> Option<ErrorKind> {
    match text.split_whitespace().next().unwrap_or_default() {
        "NOAUTH" | "WRONGPASS" | "NOPERM" => Some(ErrorKind::Auth),
        "WRONGTYPE" | "ERR" | "EXECABORT" | "NOGROUP" => Some(ErrorKind::Redis),
        _ => None,
    }
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

/// A command whose key is the argument at `offset` (for Redis Cluster routing).
fn cmd_offset(name: &'static str, offset: usize) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Offset(offset), false)
}

impl Connection {
    /// Connects, fails fast, and checks the server (version, credentials).
    /// Returns the connection and the server version.
    pub(crate) async fn open(
        config: &RedisConfig,
        role: &'static str,
    ) -> Result<(Connection, (u32, u32, u32))> {
        Self::open_with(config, role, false).await
    }

    /// As [`open`](Self::open), speaking RESP3 when `resp3` (server-assisted
    /// client-side caching delivers its invalidations as RESP3 pushes).
    pub(crate) async fn open_with(
        config: &RedisConfig,
        role: &'static str,
        resp3: bool,
    ) -> Result<(Connection, (u32, u32, u32))> {
        let redacted_url = config.redacted_url();
        let mut fred_config = Config::from_url(config.url()).map_err(|error| {
            // fred's message may quote the URL: do not pass it on.
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot parse Redis URL {redacted_url}: {:?}", error.kind()),
            )
        })?;
        fred_config.fail_fast = true;
        // `rediss://`: our rustls configuration (CA, client certificate, a
        // verifier that says why it refused) instead of fred's default, and
        // the name to verify. `redis://` never gets TLS options (`validate`).
        let mut tls_name = None;
        let tls = if config.uses_tls() {
            let tls = tls::Tls::new(&config.tls)?;
            fred_config.tls = Some(tls.fred.clone());
            let fred::types::config::ServerConfig::Centralized { server } = &mut fred_config.server
            else {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("{redacted_url}: TLS is supported for a single server only"),
                ));
            };
            if let Some(name) = &config.tls.server_name {
                server.tls_server_name = Some(name.as_str().into());
            }
            tls_name = Some(
                server
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| server.host.clone())
                    .to_string(),
            );
            Some(tls)
        } else {
            None
        };
        let failed = |error: FredError| {
            let explained = tls.as_ref().and_then(|tls| {
                tls.explain(
                    &error,
                    &redacted_url,
                    tls_name.as_deref().unwrap_or_default(),
                )
            });
            explained.unwrap_or_else(|| {
                map_error(error, &format!("cannot connect to Redis at {redacted_url}"))
            })
        };
        if resp3 {
            fred_config.version = fred::types::RespVersion::RESP3;
        }
        let mut builder = Builder::from_config(fred_config);
        builder.with_connection_config(|connection| {
            connection.connection_timeout = config.connect_timeout;
            // The set-up commands of a connection (`HELLO`, `AUTH`, `CLIENT
            // ID`): one opened into a dead network gives up within the command
            // timeout, and the next attempt follows the back-off.
            connection.internal_command_timeout =
                config.connect_timeout.min(config.command_timeout);
            // Never let fred re-send a command after a reconnect: see the module doc.
            connection.max_command_attempts = 1;
        });
        builder.with_performance_config(|performance| {
            performance.default_command_timeout = config.command_timeout;
        });
        let min = millis(config.reconnect_min);
        let max = millis(config.reconnect_max).max(min);
        let mut policy = ReconnectPolicy::new_exponential(0, min, max, 2);
        policy.set_jitter((min / 5).max(1));
        builder.set_policy(policy);
        let client = builder
            .build()
            .map_err(|error| map_error(error, &format!("redis {redacted_url}")))?;
        let connect = tokio::time::timeout(config.connect_timeout * 2, client.init()).await;
        match connect {
            Ok(Ok(_task)) => {}
            Ok(Err(error)) => {
                let _ = client.quit().await;
                return Err(failed(error));
            }
            Err(_) => {
                let _ = client.quit().await;
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "cannot connect to Redis at {redacted_url}: no answer within {:?}",
                        config.connect_timeout * 2
                    ),
                ));
            }
        }
        let connection = Connection {
            client,
            role,
            redacted_url,
            abandoned: Arc::default(),
            command_timeout: config.command_timeout,
        };
        let version = match connection.server_version().await {
            Ok(version) => version,
            Err(error) => {
                connection.close().await;
                return Err(error);
            }
        };
        if (version.0, version.1) < MIN_VERSION {
            connection.close().await;
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "Redis at {} is {}.{}.{}; tickbus needs {}.{} or newer",
                    connection.redacted_url,
                    version.0,
                    version.1,
                    version.2,
                    MIN_VERSION.0,
                    MIN_VERSION.1
                ),
            ));
        }
        Ok((connection, version))
    }

    fn context(&self, what: &str) -> String {
        format!("{what} on {} ({})", self.redacted_url, self.role)
    }

    /// Maps the error of command `what` on this connection, and drops the
    /// connection when the command got no reply in time.
    ///
    /// Replies are matched to commands strictly in order on a connection. A
    /// command that timed out stays at the head of that queue: if its reply
    /// never comes (a half-open socket, a proxy or middlebox that lost its
    /// state), every later command waits behind it for good, and a timeout
    /// repairs nothing. So a timeout ends the connection: fred reconnects by its
    /// policy (back-off from `reconnect_min` to `reconnect_max`), and whoever
    /// owned the timed-out commands settles them as after any lost connection
    /// (the writer looks its unknown outcomes up; readers read again).
    ///
    /// A blocking read is given its block on top of the command timeout (see
    /// [`blocking`](Self::blocking)), so a quiet stream is never taken for a
    /// dead connection.
    fn fail(&self, error: FredError, what: &str) -> Error {
        if *error.kind() == FredErrorKind::Timeout {
            self.abandon(what);
        }
        map_error(error, &self.context(what))
    }

    /// Drops the connection and lets fred open a new one, once per dead
    /// connection: the commands pipelined behind the first one to time out time
    /// out together, those sent before the last replacement say nothing of the
    /// new connection, and while fred is still opening one (a connection set-up
    /// into a dead network times out by itself) there is nothing to drop.
    fn abandon(&self, what: &str) {
        let now = Instant::now();
        {
            let mut at = self
                .abandoned
                .at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A command sent on the new connection times out no earlier than
            // one command timeout after it was opened.
            if matches!(*at, Some(at) if now < at + self.command_timeout)
                || self.abandoned.replacing.swap(true, Ordering::AcqRel)
            {
                return;
            }
            *at = Some(now);
        }
        tracing::warn!(
            role = self.role,
            url = %self.redacted_url,
            command = what,
            "tickbus: no reply within the command timeout; dropping the connection and reconnecting"
        );
        let client = self.client.clone();
        let abandoned = Arc::clone(&self.abandoned);
        tokio::spawn(async move {
            // Resolves once fred has a working connection again (or is closed).
            let _ = client.force_reconnection().await;
            abandoned.replacing.store(false, Ordering::Release);
        });
    }

    /// A client for one blocking read of `block`: its timeout is the block
    /// plus the command timeout, so that only a read whose reply is overdue by
    /// a whole command timeout counts as a dead connection.
    fn blocking(&self, block: Duration) -> fred::clients::WithOptions<fred::prelude::Client> {
        self.client.with_options(&fred::types::config::Options {
            timeout: Some(block + self.command_timeout),
            ..Default::default()
        })
    }

    /// `INFO server`: the `redis_version` line (Valkey reports its Redis
    /// compatibility level there too).
    async fn server_version(&self) -> Result<(u32, u32, u32)> {
        let info: String = self
            .client
            .custom(cmd("INFO"), vec!["server"])
            .await
            .map_err(|error| self.fail(error, "INFO server"))?;
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .map(str::trim)
            .unwrap_or_default()
            .to_string();
        let mut parts = version.split('.').map(|part| part.parse::<u32>());
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor)), patch) => {
                Ok((major, minor, patch.and_then(|p| p.ok()).unwrap_or(0)))
            }
            _ => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "cannot read the server version from INFO on {} (got {version:?})",
                    self.redacted_url
                ),
            )),
        }
    }

    /// Closes the connection (waits for commands in flight).
    pub(crate) async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.quit()).await;
    }

    /// `TYPE key`: `"none"`, `"stream"`, `"string"`, ...
    pub(crate) async fn key_type(&self, key: &str) -> Result<String> {
        let value: Value = self
            .client
            .custom(cmd("TYPE"), vec![key])
            .await
            .map_err(|error| self.fail(error, "TYPE"))?;
        Ok(value
            .as_str()
            .map(|text| text.into_owned())
            .unwrap_or_default())
    }

    /// `DEL key…`: how many keys existed.
    pub(crate) async fn delete(&self, keys: &[&str]) -> Result<u64> {
        let value: Value = self
            .client
            .custom(cmd("DEL"), keys.to_vec())
            .await
            .map_err(|error| self.fail(error, "DEL"))?;
        Ok(value.as_u64().unwrap_or(0))
    }

    /// `HGET key field`.
    pub(crate) async fn hget(&self, key: &str, field: &str) -> Result<Option<Bytes>> {
        let value: Value = self
            .client
            .custom(cmd("HGET"), vec![key, field])
            .await
            .map_err(|error| self.fail(error, "HGET"))?;
        Ok(value.as_bytes().map(Bytes::copy_from_slice))
    }

    /// `HSET key field value`.
    pub(crate) async fn hset(&self, key: &str, field: &str, value: &str) -> Result<()> {
        let _: Value = self
            .client
            .custom(cmd("HSET"), vec![key, field, value])
            .await
            .map_err(|error| self.fail(error, "HSET"))?;
        Ok(())
    }
}

/// A change of a connection's state, from fred's event channels.
#[derive(Debug)]
pub(crate) enum ConnectionEvent {
    /// The connection failed (it is being re-established).
    Lost(Error),
    /// The connection is up again.
    Reconnected,
}

/// fred's error and reconnect channels of one connection, read with their lag
/// handled: fred's own listener loops end silently when a broadcast channel
/// lags (capacity 32); these carry on, and report the state as it is now.
pub(crate) struct ConnectionEvents {
    connection: Connection,
    errors: tokio::sync::broadcast::Receiver<(FredError, Option<fred::prelude::Server>)>,
    reconnects: tokio::sync::broadcast::Receiver<fred::prelude::Server>,
}

impl ConnectionEvents {
    /// The next event; `None` once the client is closed.
    pub(crate) async fn next(&mut self) -> Option<ConnectionEvent> {
        use tokio::sync::broadcast::error::RecvError;
        let now = |connection: &Connection| {
            if connection.client.is_connected() {
                ConnectionEvent::Reconnected
            } else {
                ConnectionEvent::Lost(Error::new(
                    ErrorKind::Unavailable,
                    connection.context("connection lost"),
                ))
            }
        };
        tokio::select! {
            error = self.errors.recv() => match error {
                Ok((error, _)) => Some(ConnectionEvent::Lost(map_error(error, &self.connection.context("connection")))),
                Err(RecvError::Lagged(_)) => Some(now(&self.connection)),
                Err(RecvError::Closed) => None,
            },
            reconnect = self.reconnects.recv() => match reconnect {
                Ok(_) => Some(ConnectionEvent::Reconnected),
                Err(RecvError::Lagged(_)) => Some(now(&self.connection)),
                Err(RecvError::Closed) => None,
            },
        }
    }
}

impl Connection {
    /// Subscribes to this connection's state changes.
    pub(crate) fn events(&self) -> ConnectionEvents {
        use fred::interfaces::EventInterface as _;
        ConnectionEvents {
            connection: self.clone(),
            errors: self.client.error_rx(),
            reconnects: self.client.reconnect_rx(),
        }
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn parse_stream_id(value: &Value) -> Option<StreamId> {
    let text = std::str::from_utf8(value.as_bytes()?).ok()?;
    text.parse().ok()
}

fn value_bytes(value: Value) -> Bytes {
    match value {
        Value::Bytes(bytes) => bytes,
        Value::String(text) => text.into_inner(),
        other => Bytes::copy_from_slice(other.as_bytes().unwrap_or_default()),
    }
}

fn ttl_millis(ttl: Duration) -> String {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
        .to_string()
}

#[cfg(test)]
mod tests {
    use fred::types::Resp3Frame;

    use super::streams::push_ids;
    use super::*;

    #[test]
    fn ids_are_formatted_as_redis_writes_them() {
        let ids = [
            StreamId::new(0, 0),
            StreamId::new(1_796_190_824_923, 7),
            StreamId::new(u64::MAX, u64::MAX),
        ];
        let mut args = Vec::new();
        push_ids(&mut args, &ids);
        let texts: Vec<String> = args
            .iter()
            .map(|value| String::from_utf8(value.as_bytes().unwrap().to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = ids.iter().map(StreamId::to_string).collect();
        assert_eq!(texts, expected);
    }

    fn blob(text: &[u8]) -> Resp3Frame {
        Resp3Frame::BlobString {
            data: Bytes::copy_from_slice(text),
            attributes: None,
        }
    }

    fn array(data: Vec<Resp3Frame>) -> Resp3Frame {
        Resp3Frame::Array {
            data,
            attributes: None,
        }
    }

    #[test]
    fn a_range_page_is_walked_in_place() {
        let reply = array(vec![
            array(vec![
                blob(b"5-1"),
                array(vec![
                    blob(b"id"),
                    blob(b"x"),
                    blob(b"data"),
                    blob(b"\x91\x01"),
                ]),
            ]),
            // Deleted while referenced: nil fields.
            array(vec![blob(b"6-0"), Resp3Frame::Null]),
            array(vec![blob(b"not-an-id")]),
            array(vec![blob(b"7-0"), array(vec![blob(b"data"), blob(b"y")])]),
        ]);
        let page = RangePage::new(reply).unwrap();
        assert_eq!(page.len(), 4);
        assert_eq!(page.last_id().unwrap(), Some(StreamId::new(7, 0)));
        let entries: Vec<PageEntry> = page.into_entries().collect();
        let field = |entry: &PageEntry, name: &[u8]| -> Option<Vec<u8>> {
            use crate::wire::Fields as _;
            entry
                .pairs()
                .find(|(field, _)| *field == name)
                .map(|(_, value)| value.to_vec())
        };
        assert_eq!(entries[0].id(), Some(StreamId::new(5, 1)));
        assert_eq!(field(&entries[0], b"data"), Some(b"\x91\x01".to_vec()));
        assert_eq!(field(&entries[0], b"id"), Some(b"x".to_vec()));
        assert_eq!(field(&entries[0], b"src"), None);
        assert_eq!(entries[1].id(), Some(StreamId::new(6, 0)));
        assert_eq!(field(&entries[1], b"data"), None);
        assert_eq!(entries[2].id(), None);
        assert_eq!(field(&entries[3], b"data"), Some(b"y".to_vec()));

        let empty = RangePage::new(Resp3Frame::Null).unwrap();
        assert_eq!((empty.len(), empty.last_id().unwrap()), (0, None));
        let broken = RangePage::new(array(vec![array(vec![blob(b"x")])])).unwrap();
        assert_eq!(broken.last_id().unwrap_err().kind(), ErrorKind::Redis);
    }

    #[test]
    fn a_page_entry_parses_in_place_through_the_wire_parser() {
        use crate::wire::{self, Fields as _};
        let id = "0190b2a4-0000-7000-8000-000000000001";
        let src = "0190b2a4-0000-7000-8000-0000000000ff";
        let reply = array(vec![array(vec![
            blob(b"9-0"),
            array(vec![
                blob(b"id"),
                blob(id.as_bytes()),
                blob(b"src"),
                blob(src.as_bytes()),
                blob(b"ts"),
                blob(b"12"),
                blob(b"data"),
                blob(b"\x2a"),
                blob(b"h"),
                blob(b"\x81\xa1k\xa1v"),
            ]),
        ])]);
        let entry = RangePage::new(reply)
            .unwrap()
            .into_entries()
            .next()
            .unwrap();
        assert_eq!((&entry).count(), 5);
        let parsed = wire::parse(&entry, &wire::EntryLimits::default()).unwrap();
        assert_eq!(parsed.event_id.to_string(), id);
        assert_eq!(parsed.source.to_string(), src);
        assert_eq!(parsed.timestamp_ns, 12);
        assert_eq!(parsed.headers, [("k".to_string(), "v".to_string())]);
        // The payload is the frame's own buffer: nothing was copied.
        let (_, in_frame) = (&entry).pairs().find(|(name, _)| *name == b"data").unwrap();
        assert!(std::ptr::eq(parsed.payload, in_frame));
    }

    #[test]
    fn an_error_reply_in_a_raw_frame_is_classified() {
        let wrongtype = Resp3Frame::SimpleError {
            data: "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
            attributes: None,
        };
        let error = RangePage::new(wrongtype).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Redis);
        assert!(error.message().starts_with("WRONGTYPE"), "{error}");
        let loading = Resp3Frame::BlobError {
            data: Bytes::from_static(b"LOADING Redis is loading the dataset in memory"),
            attributes: None,
        };
        assert_eq!(
            RangePage::new(loading).unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        let number = Resp3Frame::Number {
            data: 1,
            attributes: None,
        };
        assert_eq!(RangePage::new(number).unwrap_err().kind(), ErrorKind::Redis);
    }
}
