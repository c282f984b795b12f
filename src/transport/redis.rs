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
//! `bridge.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::ClientInterface as _;
use fred::prelude::{
    ClientLike, Config, Error as FredError, ErrorKind as FredErrorKind, ReconnectPolicy, Value,
};
use fred::types::{Builder, ClusterHash, CustomCommand, Resp3Frame};

use super::{RawEntry, WireEntry};
use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::StreamId;

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

/// Most entries appended by one `EVAL` of [`APPEND_SCRIPT`]: a script holds the
/// server for its whole run (about 3 µs per entry on the development VM, so
/// about 200 µs for a full chunk); 64 gives the same throughput as 128.
pub(crate) const SCRIPT_CHUNK: usize = 64;

/// Appends entries to one stream (`KEYS[1]`), exactly as the same `XADD`s sent
/// one by one would: `ARGV[1]` is the `MAXLEN ~` bound (empty for none), then
/// four arguments per entry (`id`, `src`, `ts`, `data`). Stops at the first
/// error. Returns `{ids written, error or nil}`.
pub(crate) const APPEND_SCRIPT: &str = r"
local ids = {}
local cap = ARGV[1]
for i = 2, #ARGV, 4 do
  local r
  if cap == '' then
    r = redis.pcall('XADD', KEYS[1], '*', 'id', ARGV[i], 'src', ARGV[i + 1], 'ts', ARGV[i + 2], 'data', ARGV[i + 3])
  else
    r = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'id', ARGV[i], 'src', ARGV[i + 1], 'ts', ARGV[i + 2], 'data', ARGV[i + 3])
  end
  if type(r) == 'table' and r.err then
    return {ids, r.err}
  end
  ids[#ids + 1] = r
end
return {ids, false}
";

/// The arguments of one `XADD` of `entry`.
fn xadd_args(entry: &WireEntry) -> Vec<Value> {
    let mut args: Vec<Value> = Vec::with_capacity(14);
    args.push(Value::from(&*entry.key));
    if let Some(max_len) = entry.max_len {
        args.push(Value::from_static_str("MAXLEN"));
        args.push(Value::from_static_str("~"));
        args.push(Value::from(max_len.to_string()));
    }
    args.push(Value::from_static_str("*"));
    args.push(Value::from_static_str("id"));
    args.push(Value::Bytes(Bytes::copy_from_slice(&entry.id)));
    args.push(Value::from_static_str("src"));
    args.push(Value::Bytes(entry.src.clone()));
    args.push(Value::from_static_str("ts"));
    args.push(Value::from(entry.ts.to_string()));
    args.push(Value::from_static_str("data"));
    args.push(Value::Bytes(entry.data.clone()));
    args
}

/// An error an `XADD` returned inside the append script, classified as
/// [`map_error`] classifies a command's error reply.
fn script_error(text: &str, context: &str) -> Error {
    let kind = reply_kind(text).unwrap_or(ErrorKind::Unavailable);
    Error::new(kind, format!("{context}: {text}"))
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
                return Err(map_error(
                    error,
                    &format!("cannot connect to Redis at {redacted_url}"),
                ));
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

    /// Appends `entries` (in order per stream) in one pipeline, then
    /// `WAITAOF 1 0 <timeout>` if `waitaof` is set. One result per entry (the new
    /// stream id), then the `WAITAOF` result if asked: the number of local AOF
    /// fsyncs confirmed (0 or 1).
    ///
    /// With `scripted`, the entries of each stream go in `EVAL`s of up to
    /// [`SCRIPT_CHUNK`] `XADD`s each ([`APPEND_SCRIPT`]); otherwise one `XADD`
    /// command per entry. Same entries, same order, same stream ids: the script
    /// saves the per-command cost of the client and the server (about half of
    /// the writer's time, measured), not any of Redis's guarantees.
    pub(crate) async fn append(
        &self,
        entries: &[&WireEntry],
        waitaof: Option<Duration>,
        scripted: bool,
    ) -> (Vec<Result<StreamId>>, Option<Result<u64>>) {
        let pipeline = self.client.pipeline();
        // Per command sent: the indices of the entries it carries.
        let mut commands: Vec<Vec<usize>> = Vec::new();
        if scripted {
            let mut by_key: Vec<(&str, Vec<usize>)> = Vec::new();
            for (index, entry) in entries.iter().enumerate() {
                match by_key.iter_mut().find(|(key, _)| *key == &*entry.key) {
                    Some((_, indices)) => indices.push(index),
                    None => by_key.push((&entry.key, vec![index])),
                }
            }
            for (key, indices) in by_key {
                for chunk in indices.chunks(SCRIPT_CHUNK) {
                    if chunk.len() == 1 {
                        // A lone entry (light load): a plain XADD is quicker.
                        let args = xadd_args(entries[chunk[0]]);
                        let _: std::result::Result<(), FredError> =
                            pipeline.custom(cmd("XADD"), args).await;
                        commands.push(chunk.to_vec());
                        continue;
                    }
                    let max_len = entries[chunk[0]]
                        .max_len
                        .map_or_else(String::new, |n| n.to_string());
                    let mut args: Vec<Value> = Vec::with_capacity(4 + 4 * chunk.len());
                    args.push(Value::from_static_str(APPEND_SCRIPT));
                    args.push(Value::from(1_i64));
                    args.push(Value::from(key));
                    args.push(Value::from(max_len));
                    for &index in chunk {
                        let entry = entries[index];
                        args.push(Value::Bytes(Bytes::copy_from_slice(&entry.id)));
                        args.push(Value::Bytes(entry.src.clone()));
                        args.push(Value::from(entry.ts.to_string()));
                        args.push(Value::Bytes(entry.data.clone()));
                    }
                    let _: std::result::Result<(), FredError> =
                        pipeline.custom(cmd_offset("EVAL", 2), args).await;
                    commands.push(chunk.to_vec());
                }
            }
        } else {
            for (index, entry) in entries.iter().enumerate() {
                let args = xadd_args(entry);
                let _: std::result::Result<(), FredError> =
                    pipeline.custom(cmd("XADD"), args).await;
                commands.push(vec![index]);
            }
        }
        if let Some(timeout) = waitaof {
            let args = vec![
                Value::from(1_i64),
                Value::from(0_i64),
                Value::from(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
            ];
            let _: std::result::Result<(), FredError> = pipeline.custom(cmd("WAITAOF"), args).await;
        }
        let mut results = pipeline.try_all::<Value>().await.into_iter();
        let mut appended: Vec<Result<StreamId>> = entries
            .iter()
            .map(|_| Err(Error::new(ErrorKind::Unavailable, "not sent")))
            .collect();
        for indices in &commands {
            let reply = results.next();
            if scripted && indices.len() > 1 {
                self.settle_script_reply(reply, indices, &mut appended);
            } else {
                appended[indices[0]] = match reply {
                    Some(Ok(value)) => parse_stream_id(&value).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Redis,
                            format!("XADD answered {value:?}, not a stream id"),
                        )
                    }),
                    Some(Err(error)) => Err(self.fail(error, "XADD")),
                    None => Err(Error::new(ErrorKind::Redis, "XADD: no reply")),
                };
            }
        }
        let fsynced = waitaof.map(|_| match results.next() {
            Some(Ok(Value::Array(counts))) => counts
                .first()
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::new(ErrorKind::Redis, "WAITAOF: unexpected reply")),
            Some(Ok(other)) => Err(Error::new(
                ErrorKind::Redis,
                format!("WAITAOF answered {other:?}"),
            )),
            Some(Err(error)) => Err(self.fail(error, "WAITAOF")),
            None => Err(Error::new(ErrorKind::Redis, "WAITAOF: no reply")),
        });
        (appended, fsynced)
    }

    /// Spreads the reply of one [`APPEND_SCRIPT`] `EVAL` over its entries: the
    /// ids of those written, then the error (if any) for the one that failed and
    /// those after it, which the script did not attempt.
    fn settle_script_reply(
        &self,
        reply: Option<std::result::Result<Value, FredError>>,
        indices: &[usize],
        appended: &mut [Result<StreamId>],
    ) {
        let (ids, error) = match reply {
            Some(Ok(Value::Array(parts))) => {
                let mut parts = parts.into_iter();
                let ids = match parts.next() {
                    Some(Value::Array(ids)) => ids,
                    _ => Vec::new(),
                };
                let error = parts.next().and_then(|error| {
                    let text = error.as_bytes()?;
                    let text = String::from_utf8_lossy(text).into_owned();
                    Some(script_error(&text, &self.context("XADD (script)")))
                });
                (ids, error)
            }
            Some(Ok(other)) => (
                Vec::new(),
                Some(Error::new(
                    ErrorKind::Redis,
                    format!("the append script answered {other:?}"),
                )),
            ),
            Some(Err(error)) => (Vec::new(), Some(self.fail(error, "EVAL"))),
            None => (
                Vec::new(),
                Some(Error::new(ErrorKind::Unavailable, "EVAL: no reply")),
            ),
        };
        let mut ids = ids.iter();
        for &index in indices {
            appended[index] = match ids.next() {
                Some(id) => parse_stream_id(id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Redis,
                        format!("the append script answered {id:?}, not a stream id"),
                    )
                }),
                None => Err(error.clone().unwrap_or_else(|| {
                    Error::new(ErrorKind::Redis, "the append script stopped early")
                })),
            };
        }
    }

    /// A write of no consequence on this connection, then `WAITAOF`: proves that
    /// everything in the AOF up to now is fsynced (the AOF is one sequential log),
    /// including entries written on a connection that has since been lost.
    pub(crate) async fn fsync_barrier(&self, probe_key: &str, timeout: Duration) -> Result<u64> {
        let pipeline = self.client.pipeline();
        let _: std::result::Result<(), FredError> = pipeline
            .custom(cmd("SET"), vec![probe_key, "1", "PX", "60000"])
            .await;
        let waitaof_timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let _: std::result::Result<(), FredError> = pipeline
            .custom(
                cmd("WAITAOF"),
                vec![
                    Value::from(1_i64),
                    Value::from(0_i64),
                    Value::from(waitaof_timeout),
                ],
            )
            .await;
        let mut results = pipeline.try_all::<Value>().await.into_iter();
        if let Some(Err(error)) = results.next() {
            return Err(self.fail(error, "SET (fsync probe)"));
        }
        match results.next() {
            Some(Ok(Value::Array(counts))) => counts
                .first()
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::new(ErrorKind::Redis, "WAITAOF: unexpected reply")),
            Some(Err(error)) => Err(self.fail(error, "WAITAOF")),
            _ => Err(Error::new(ErrorKind::Redis, "WAITAOF: unexpected reply")),
        }
    }

    /// `XTRIM key MINID ~ <min_id>`.
    pub(crate) async fn trim_min_id(&self, key: &str, min_id: StreamId) -> Result<()> {
        let _: Value = self
            .client
            .custom(
                cmd("XTRIM"),
                vec![
                    key.to_string(),
                    "MINID".into(),
                    "~".into(),
                    min_id.to_string(),
                ],
            )
            .await
            .map_err(|error| self.fail(error, "XTRIM"))?;
        Ok(())
    }

    /// The newest `count` entries, newest first (`XREVRANGE key + - COUNT count`).
    pub(crate) async fn newest(&self, key: &str, count: usize) -> Result<Vec<RawEntry>> {
        let value: Value = self
            .client
            .custom(
                cmd("XREVRANGE"),
                vec![
                    key.to_string(),
                    "+".into(),
                    "-".into(),
                    "COUNT".into(),
                    count.to_string(),
                ],
            )
            .await
            .map_err(|error| self.fail(error, "XREVRANGE"))?;
        parse_entries(value)
    }

    /// `XREAD [BLOCK ms] COUNT n STREAMS key… id…`: entries after each id, per key.
    /// An empty result means the block timed out (or was interrupted).
    pub(crate) async fn read(
        &self,
        streams: &[(&str, StreamId)],
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<(String, Vec<RawEntry>)>> {
        let ids: Vec<String> = streams.iter().map(|(_, id)| id.to_string()).collect();
        let keys = streams
            .iter()
            .map(|(key, _)| *key)
            .zip(ids.iter().map(String::as_str));
        let args = read_args(
            Vec::with_capacity(5 + streams.len() * 2),
            keys,
            count,
            block,
        );
        let command = CustomCommand::new_static(
            "XREAD",
            ClusterHash::Offset(usize::from(block.is_some()) * 2 + 3),
            block.is_some(),
        );
        let reply = match block {
            Some(block) => self.blocking(block).custom(command, args).await,
            None => self.client.custom(command, args).await,
        };
        let value: Value = reply.map_err(|error| self.fail(error, "XREAD"))?;
        parse_read_reply(value)
    }

    /// Interrupts this connection's blocked `XREAD` (as if its block timed out).
    pub(crate) async fn unblock(&self) {
        let _ = self
            .client
            .unblock_self(Some(fred::types::ClientUnblockFlag::Timeout))
            .await;
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

    /// `XLEN key`: entries in a stream (0 when the key does not exist).
    pub(crate) async fn stream_len(&self, key: &str) -> Result<u64> {
        let value: Value = self
            .client
            .custom(cmd("XLEN"), vec![key])
            .await
            .map_err(|error| self.fail(error, "XLEN"))?;
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

/// The tail of an `XREAD` or `XREADGROUP` after `args`: `[BLOCK ms] COUNT n
/// STREAMS key… id…`.
fn read_args<'a>(
    mut args: Vec<Value>,
    streams: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    count: usize,
    block: Option<Duration>,
) -> Vec<Value> {
    if let Some(block) = block {
        args.push(Value::from_static_str("BLOCK"));
        args.push(Value::from(
            i64::try_from(block.as_millis()).unwrap_or(i64::MAX),
        ));
    }
    args.push(Value::from_static_str("COUNT"));
    args.push(Value::from(count.to_string()));
    args.push(Value::from_static_str("STREAMS"));
    args.extend(streams.clone().map(|(key, _)| Value::from(key)));
    args.extend(streams.map(|(_, id)| Value::from(id)));
    args
}

/// Appends `ids` as `<ms>-<seq>` arguments, all formatted into one buffer (one
/// allocation, not one per id).
fn push_ids(args: &mut Vec<Value>, ids: &[StreamId]) {
    use std::fmt::Write as _;
    let mut text = bytes::BytesMut::with_capacity(ids.len() * 24);
    let mut ends = Vec::with_capacity(ids.len());
    for id in ids {
        // `BytesMut` grows as needed: writing cannot fail.
        let _ = write!(text, "{id}");
        ends.push(text.len());
    }
    let text = text.freeze();
    let mut start = 0;
    for end in ends {
        args.push(Value::Bytes(text.slice(start..end)));
        start = end;
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn parse_stream_id(value: &Value) -> Option<StreamId> {
    let text = std::str::from_utf8(value.as_bytes()?).ok()?;
    text.parse().ok()
}

/// `[[id, [field, value, …] | nil], …]` (`XRANGE`, `XREVRANGE`, one stream of `XREAD`).
fn parse_entries(value: Value) -> Result<Vec<RawEntry>> {
    let malformed =
        |what: &str| Error::new(ErrorKind::Redis, format!("unexpected stream reply: {what}"));
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(entries) => entries
            .into_iter()
            .map(|entry| {
                let mut parts = match entry {
                    Value::Array(parts) => parts.into_iter(),
                    _ => return Err(malformed("an entry is not an array")),
                };
                let id = parts
                    .next()
                    .as_ref()
                    .and_then(parse_stream_id)
                    .ok_or_else(|| malformed("an entry without an id"))?;
                let fields = match parts.next() {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(flat)) => {
                        let mut fields = Vec::with_capacity(flat.len() / 2);
                        let mut flat = flat.into_iter();
                        while let (Some(field), Some(value)) = (flat.next(), flat.next()) {
                            fields.push((value_bytes(field), value_bytes(value)));
                        }
                        Some(fields)
                    }
                    Some(Value::Map(map)) => Some(
                        map.inner()
                            .into_iter()
                            .map(|(field, value)| {
                                (Bytes::copy_from_slice(field.as_bytes()), value_bytes(value))
                            })
                            .collect(),
                    ),
                    Some(_) => return Err(malformed("entry fields are not an array")),
                };
                Ok(RawEntry { id, fields })
            })
            .collect(),
        _ => Err(malformed("not an array")),
    }
}

/// One page of `XRANGE` as fred parsed it (RESP3 frames): the entries are
/// walked where they lie, by the thread that consumes them.
#[derive(Debug)]
pub(crate) struct RangePage {
    entries: Vec<Resp3Frame>,
}

/// One entry of a [`RangePage`]: `[id, [field, value, …] | nil]`, still a frame.
#[derive(Debug)]
pub(crate) struct PageEntry {
    frame: Resp3Frame,
}

impl RangePage {
    fn new(frame: Resp3Frame) -> Result<RangePage> {
        match frame {
            Resp3Frame::Array { data, .. } => Ok(RangePage { entries: data }),
            Resp3Frame::Null => Ok(RangePage {
                entries: Vec::new(),
            }),
            Resp3Frame::SimpleError { data, .. } => Err(reply_error(data.as_bytes())),
            Resp3Frame::BlobError { data, .. } => Err(reply_error(&data)),
            _ => Err(Error::new(
                ErrorKind::Redis,
                "unexpected stream reply: not an array",
            )),
        }
    }

    /// Entries in the page.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The id of the page's last entry (where the next page starts after).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Redis`] if that entry has no readable id.
    pub(crate) fn last_id(&self) -> Result<Option<StreamId>> {
        self.entries
            .last()
            .map(|frame| frame_entry_id(frame).ok_or_else(|| bad_entry("an entry without an id")))
            .transpose()
    }

    /// The entries, in stream order.
    pub(crate) fn into_entries(self) -> PageEntries {
        PageEntries(self.entries.into_iter())
    }
}

/// The entries of a [`RangePage`], in stream order.
#[derive(Debug, Default)]
pub(crate) struct PageEntries(std::vec::IntoIter<Resp3Frame>);

impl Iterator for PageEntries {
    type Item = PageEntry;

    fn next(&mut self) -> Option<PageEntry> {
        self.0.next().map(|frame| PageEntry { frame })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl PageEntry {
    /// The entry's stream id (`None` if the reply holds no readable one).
    pub(crate) fn id(&self) -> Option<StreamId> {
        frame_entry_id(&self.frame)
    }

    /// The value of field `name` (the first, if repeated); `None` if missing or
    /// if the entry has no fields (deleted while referenced).
    pub(crate) fn field(&self, name: &[u8]) -> Option<&Bytes> {
        let Resp3Frame::Array { data, .. } = &self.frame else {
            return None;
        };
        match data.get(1)? {
            Resp3Frame::Array { data: flat, .. } => flat
                .chunks_exact(2)
                .find(|pair| frame_bytes(&pair[0]).is_some_and(|field| field == name))
                .and_then(|pair| frame_bytes(&pair[1])),
            Resp3Frame::Map { data: map, .. } => map
                .iter()
                .find(|(field, _)| frame_bytes(field).is_some_and(|field| field == name))
                .and_then(|(_, value)| frame_bytes(value)),
            _ => None,
        }
    }
}

/// The bytes of a string frame.
fn frame_bytes(frame: &Resp3Frame) -> Option<&Bytes> {
    match frame {
        Resp3Frame::BlobString { data, .. }
        | Resp3Frame::SimpleString { data, .. }
        | Resp3Frame::VerbatimString { data, .. } => Some(data),
        _ => None,
    }
}

fn frame_entry_id(frame: &Resp3Frame) -> Option<StreamId> {
    let Resp3Frame::Array { data, .. } = frame else {
        return None;
    };
    let text = std::str::from_utf8(frame_bytes(data.first()?)?).ok()?;
    text.parse().ok()
}

fn bad_entry(what: &str) -> Error {
    Error::new(ErrorKind::Redis, format!("unexpected stream reply: {what}"))
}

/// A server's error reply found in a raw frame, classified as [`map_error`]
/// does (an unknown one is retried).
fn reply_error(text: &[u8]) -> Error {
    let text = String::from_utf8_lossy(text);
    Error::new(
        reply_kind(&text).unwrap_or(ErrorKind::Unavailable),
        text.into_owned(),
    )
}

/// `[[key, entries], …]`, nil on timeout.
fn parse_read_reply(value: Value) -> Result<Vec<(String, Vec<RawEntry>)>> {
    let malformed =
        |what: &str| Error::new(ErrorKind::Redis, format!("unexpected XREAD reply: {what}"));
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    let key = pair
                        .next()
                        .and_then(|key| {
                            key.as_bytes()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        })
                        .ok_or_else(|| malformed("a stream without a key"))?;
                    let entries = parse_entries(pair.next().unwrap_or(Value::Null))?;
                    Ok((key, entries))
                }
                _ => Err(malformed("a stream is not [key, entries]")),
            })
            .collect(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(key, entries)| {
                Ok((
                    String::from_utf8_lossy(key.as_bytes()).into_owned(),
                    parse_entries(entries)?,
                ))
            })
            .collect(),
        _ => Err(malformed("not an array")),
    }
}

fn value_bytes(value: Value) -> Bytes {
    match value {
        Value::Bytes(bytes) => bytes,
        Value::String(text) => text.into_inner(),
        other => Bytes::copy_from_slice(other.as_bytes().unwrap_or_default()),
    }
}

/// One entry of a group's pending entries list (`XPENDING` extended form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingEntry {
    pub(crate) id: StreamId,
    pub(crate) consumer: String,
    pub(crate) idle: Duration,
    pub(crate) deliveries: u32,
}

/// The summary form of `XPENDING key group`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PendingCounts {
    pub(crate) count: u64,
    pub(crate) first: Option<StreamId>,
    pub(crate) last: Option<StreamId>,
    pub(crate) consumers: Vec<(String, u64)>,
}

/// What `XAUTOCLAIM` returned: the next cursor (`0-0` once the scan is complete),
/// the entries claimed, and the ids that were pending but no longer exist (Redis
/// removed them from the PEL).
#[derive(Debug)]
pub(crate) struct AutoClaim {
    pub(crate) cursor: StreamId,
    pub(crate) entries: Vec<RawEntry>,
    pub(crate) deleted: Vec<StreamId>,
}

/// A reply of `XINFO GROUPS` or `XINFO CONSUMERS` or `XINFO STREAM`: field names
/// to values, as sent.
pub(crate) type InfoRow = Vec<(String, Value)>;

/// Deletes a consumer only if it holds no pending entries, atomically (a consumer
/// deleted with pending entries strands them: nobody could claim them).
/// `KEYS[1]` stream, `ARGV[1]` group, `ARGV[2]` consumer. Returns 1 when deleted,
/// 0 when it still has entries.
pub(crate) const DELETE_IDLE_CONSUMER_SCRIPT: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// Consumer-group commands.
impl Connection {
    /// `XGROUP CREATE key group start [MKSTREAM]`: `false` when the group already
    /// existed (`BUSYGROUP`).
    pub(crate) async fn group_create(
        &self,
        key: &str,
        group: &str,
        start: &str,
        mkstream: bool,
    ) -> Result<bool> {
        let mut args = vec!["CREATE", key, group, start];
        if mkstream {
            args.push("MKSTREAM");
        }
        let reply: std::result::Result<Value, FredError> =
            self.client.custom(cmd_offset("XGROUP", 1), args).await;
        match reply {
            Ok(_) => Ok(true),
            Err(error) if error.details().starts_with("BUSYGROUP") => Ok(false),
            Err(error) => Err(self.fail(error, "XGROUP CREATE")),
        }
    }

    /// `XREADGROUP GROUP g c [BLOCK ms] COUNT n STREAMS key… id…` (`>` for new
    /// entries, an id to re-read this consumer's own pending entries after it).
    pub(crate) async fn read_group(
        &self,
        group: &str,
        consumer: &str,
        streams: &[(&str, String)],
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<(String, Vec<RawEntry>)>> {
        let mut args: Vec<Value> = Vec::with_capacity(8 + streams.len() * 2);
        args.push(Value::from_static_str("GROUP"));
        args.push(Value::from(group));
        args.push(Value::from(consumer));
        let keys = streams.iter().map(|(key, id)| (*key, id.as_str()));
        let args = read_args(args, keys, count, block);
        let command = CustomCommand::new_static(
            "XREADGROUP",
            ClusterHash::Offset(usize::from(block.is_some()) * 2 + 6),
            block.is_some(),
        );
        let reply = match block {
            Some(block) => self.blocking(block).custom(command, args).await,
            None => self.client.custom(command, args).await,
        };
        let value: Value = reply.map_err(|error| self.fail(error, "XREADGROUP"))?;
        parse_read_reply(value)
    }

    /// `XACK key group id…`: how many were pending.
    pub(crate) async fn ack(&self, key: &str, group: &str, ids: &[StreamId]) -> Result<u64> {
        let mut args: Vec<Value> = Vec::with_capacity(2 + ids.len());
        args.push(Value::from(key));
        args.push(Value::from(group));
        push_ids(&mut args, ids);
        let value: Value = self
            .client
            .custom(cmd("XACK"), args)
            .await
            .map_err(|error| self.fail(error, "XACK"))?;
        Ok(value.as_u64().unwrap_or(0))
    }

    /// `XAUTOCLAIM key group consumer min-idle cursor COUNT n`.
    pub(crate) async fn autoclaim(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        cursor: StreamId,
        count: usize,
    ) -> Result<AutoClaim> {
        let args: Vec<Value> = vec![
            Value::from(key),
            Value::from(group),
            Value::from(consumer),
            Value::from(i64::try_from(min_idle.as_millis()).unwrap_or(i64::MAX)),
            Value::from(cursor.to_string()),
            Value::from_static_str("COUNT"),
            Value::from(count.to_string()),
        ];
        let value: Value = self
            .client
            .custom(cmd("XAUTOCLAIM"), args)
            .await
            .map_err(|error| self.fail(error, "XAUTOCLAIM"))?;
        let malformed = || Error::new(ErrorKind::Redis, "unexpected XAUTOCLAIM reply");
        let Value::Array(parts) = value else {
            return Err(malformed());
        };
        let mut parts = parts.into_iter();
        let cursor = parts
            .next()
            .as_ref()
            .and_then(parse_stream_id)
            .ok_or_else(malformed)?;
        let entries = parse_entries(parts.next().unwrap_or(Value::Null))?;
        // The third element (Redis ≥ 7.0): ids removed from the PEL because their
        // entries are gone.
        let deleted = match parts.next() {
            Some(Value::Array(ids)) => ids.iter().filter_map(parse_stream_id).collect(),
            _ => Vec::new(),
        };
        Ok(AutoClaim {
            cursor,
            entries,
            deleted,
        })
    }

    /// `XPENDING key group [IDLE ms] first last count [consumer]`.
    pub(crate) async fn pending(
        &self,
        key: &str,
        group: &str,
        range: (&str, &str),
        count: usize,
        consumer: Option<&str>,
    ) -> Result<Vec<PendingEntry>> {
        let mut args: Vec<Value> = vec![
            Value::from(key),
            Value::from(group),
            Value::from(range.0),
            Value::from(range.1),
            Value::from(count.to_string()),
        ];
        if let Some(consumer) = consumer {
            args.push(Value::from(consumer));
        }
        let value: Value = self
            .client
            .custom(cmd("XPENDING"), args)
            .await
            .map_err(|error| self.fail(error, "XPENDING"))?;
        let malformed = || Error::new(ErrorKind::Redis, "unexpected XPENDING reply");
        match value {
            Value::Null => Ok(Vec::new()),
            Value::Array(rows) => rows
                .into_iter()
                .map(|row| {
                    let Value::Array(row) = row else {
                        return Err(malformed());
                    };
                    if row.len() < 4 {
                        return Err(malformed());
                    }
                    Ok(PendingEntry {
                        id: parse_stream_id(&row[0]).ok_or_else(malformed)?,
                        consumer: row[1]
                            .as_bytes()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default(),
                        idle: Duration::from_millis(row[2].as_u64().unwrap_or(0)),
                        deliveries: u32::try_from(row[3].as_u64().unwrap_or(1)).unwrap_or(u32::MAX),
                    })
                })
                .collect(),
            _ => Err(malformed()),
        }
    }

    /// `XCLAIM key group consumer 0 id… [JUSTID]`: takes the entries for
    /// `consumer` and resets their idle time. Without `JUSTID` it counts a
    /// delivery and returns the entries; with it, it only resets the idle time.
    pub(crate) async fn claim(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        ids: &[StreamId],
        just_id: bool,
    ) -> Result<Vec<RawEntry>> {
        let mut args: Vec<Value> = Vec::with_capacity(5 + ids.len());
        args.push(Value::from(key));
        args.push(Value::from(group));
        args.push(Value::from(consumer));
        args.push(Value::from_static_str("0"));
        push_ids(&mut args, ids);
        if just_id {
            args.push(Value::from_static_str("JUSTID"));
        }
        let value: Value = self
            .client
            .custom(cmd("XCLAIM"), args)
            .await
            .map_err(|error| self.fail(error, "XCLAIM"))?;
        if just_id {
            return Ok(Vec::new());
        }
        parse_entries(value)
    }

    /// `XADD key * field value …`: the new entry's id.
    pub(crate) async fn append_fields(
        &self,
        key: &str,
        fields: &[(Bytes, Bytes)],
    ) -> Result<StreamId> {
        let mut args: Vec<Value> = Vec::with_capacity(2 + fields.len() * 2);
        args.push(Value::from(key));
        args.push(Value::from_static_str("*"));
        for (field, value) in fields {
            args.push(Value::Bytes(field.clone()));
            args.push(Value::Bytes(value.clone()));
        }
        let value: Value = self
            .client
            .custom(cmd("XADD"), args)
            .await
            .map_err(|error| self.fail(error, "XADD"))?;
        parse_stream_id(&value).ok_or_else(|| Error::new(ErrorKind::Redis, "unexpected XADD reply"))
    }

    /// `XRANGE key start end COUNT n`.
    pub(crate) async fn range(
        &self,
        key: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<RawEntry>> {
        let value: Value = self
            .client
            .custom(
                cmd("XRANGE"),
                vec![key, start, end, "COUNT", &count.to_string()],
            )
            .await
            .map_err(|error| self.fail(error, "XRANGE"))?;
        parse_entries(value)
    }

    /// `XRANGE key start end COUNT n`, as fred parsed the reply: no conversion
    /// and no copy on this thread. The consumer walks the page
    /// ([`RangePage::into_entries`]) on its own thread.
    pub(crate) async fn range_page(
        &self,
        key: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<RangePage> {
        let frame = self
            .client
            .custom_raw(
                cmd("XRANGE"),
                vec![key, start, end, "COUNT", &count.to_string()],
            )
            .await
            .map_err(|error| self.fail(error, "XRANGE"))?;
        RangePage::new(frame).map_err(|error| {
            let message = format!("{}: {}", self.context("XRANGE"), error.message());
            Error::new(error.kind(), message)
        })
    }

    /// `XDEL key id…`: how many existed.
    pub(crate) async fn delete_entries(&self, key: &str, ids: &[StreamId]) -> Result<u64> {
        let mut args: Vec<Value> = Vec::with_capacity(1 + ids.len());
        args.push(Value::from(key));
        push_ids(&mut args, ids);
        let value: Value = self
            .client
            .custom(cmd("XDEL"), args)
            .await
            .map_err(|error| self.fail(error, "XDEL"))?;
        Ok(value.as_u64().unwrap_or(0))
    }

    /// `XINFO GROUPS key`, `XINFO CONSUMERS key group` or `XINFO STREAM key`
    /// (`what` picks), one row per group or consumer (one row for a stream).
    pub(crate) async fn info(
        &self,
        what: &'static str,
        key: &str,
        group: Option<&str>,
    ) -> Result<Vec<InfoRow>> {
        let mut args = vec![what, key];
        if let Some(group) = group {
            args.push(group);
        }
        let value: Value = self
            .client
            .custom(cmd_offset("XINFO", 1), args)
            .await
            .map_err(|error| self.fail(error, "XINFO"))?;
        let row = |value: Value| -> InfoRow {
            match value {
                Value::Array(flat) => {
                    let mut row = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        row.push((
                            String::from_utf8_lossy(name.as_bytes().unwrap_or_default())
                                .into_owned(),
                            value,
                        ));
                    }
                    row
                }
                Value::Map(map) => map
                    .inner()
                    .into_iter()
                    .map(|(name, value)| {
                        (String::from_utf8_lossy(name.as_bytes()).into_owned(), value)
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        Ok(match value {
            Value::Array(rows) if what == "STREAM" => vec![row(Value::Array(rows))],
            Value::Map(_) => vec![row(value)],
            Value::Array(rows) => rows.into_iter().map(row).collect(),
            _ => Vec::new(),
        })
    }

    /// Deletes `consumer` from the group if it has nothing pending
    /// ([`DELETE_IDLE_CONSUMER_SCRIPT`]); `true` when deleted.
    pub(crate) async fn delete_idle_consumer(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
    ) -> Result<bool> {
        let value: Value = self
            .client
            .custom(
                cmd_offset("EVAL", 2),
                vec![DELETE_IDLE_CONSUMER_SCRIPT, "1", key, group, consumer],
            )
            .await
            .map_err(|error| self.fail(error, "EVAL (delete idle consumer)"))?;
        Ok(value.as_u64() == Some(1))
    }

    /// Every stream key matching the glob `pattern` (`SCAN … MATCH … TYPE stream`).
    pub(crate) async fn scan_streams(&self, pattern: &str) -> Result<Vec<String>> {
        self.scan_keys(pattern, Some("stream")).await
    }

    /// Every key matching the glob `pattern`, of type `key_type` if given
    /// (`SCAN 0 MATCH pattern COUNT 1000 [TYPE t]`, looped to cursor 0), sorted,
    /// without repeats.
    pub(crate) async fn scan_keys(
        &self,
        pattern: &str,
        key_type: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let mut args = vec![cursor.as_str(), "MATCH", pattern, "COUNT", "1000"];
            if let Some(key_type) = key_type {
                args.push("TYPE");
                args.push(key_type);
            }
            let value: Value = self
                .client
                .custom(
                    CustomCommand::new_static("SCAN", ClusterHash::Random, false),
                    args,
                )
                .await
                .map_err(|error| self.fail(error, "SCAN"))?;
            let Value::Array(parts) = value else {
                return Err(Error::new(ErrorKind::Redis, "unexpected SCAN reply"));
            };
            let mut parts = parts.into_iter();
            cursor = parts
                .next()
                .and_then(|c| {
                    c.as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                })
                .unwrap_or_else(|| "0".into());
            if let Some(Value::Array(found)) = parts.next() {
                keys.extend(found.iter().filter_map(|k| {
                    k.as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                }));
            }
            if cursor == "0" {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// `MEMORY USAGE key`: bytes the key and its value take (`None` when the
    /// key does not exist).
    pub(crate) async fn memory_usage(&self, key: &str) -> Result<Option<u64>> {
        let value: Value = self
            .client
            .custom(cmd_offset("MEMORY", 1), vec!["USAGE", key])
            .await
            .map_err(|error| self.fail(error, "MEMORY USAGE"))?;
        Ok(value.as_u64())
    }

    /// `XPENDING key group` (summary form): the count, the lowest and highest
    /// pending ids, and per consumer its count.
    pub(crate) async fn pending_summary(&self, key: &str, group: &str) -> Result<PendingCounts> {
        let value: Value = self
            .client
            .custom(cmd("XPENDING"), vec![key, group])
            .await
            .map_err(|error| self.fail(error, "XPENDING"))?;
        let malformed = || Error::new(ErrorKind::Redis, "unexpected XPENDING summary reply");
        let Value::Array(parts) = value else {
            return Err(malformed());
        };
        let mut parts = parts.into_iter();
        let count = parts
            .next()
            .and_then(|v| v.as_u64())
            .ok_or_else(malformed)?;
        let first = parts.next().as_ref().and_then(parse_stream_id);
        let last = parts.next().as_ref().and_then(parse_stream_id);
        let consumers = match parts.next() {
            Some(Value::Array(rows)) => rows
                .into_iter()
                .filter_map(|row| match row {
                    Value::Array(pair) if pair.len() == 2 => Some((
                        String::from_utf8_lossy(pair[0].as_bytes().unwrap_or_default())
                            .into_owned(),
                        pair[1].as_u64().unwrap_or(0),
                    )),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(PendingCounts {
            count,
            first,
            last,
            consumers,
        })
    }

    /// The oldest entry some consumer group of `key` still needs: over all
    /// groups, the oldest pending entry, or the entry after the last delivered
    /// one. `None` when the stream has no groups. (`XINFO GROUPS`, then
    /// `XPENDING key group - + 1` for groups with pending entries.)
    pub(crate) async fn groups_position(&self, key: &str) -> Result<Option<StreamId>> {
        let groups = match self.info("GROUPS", key, None).await {
            Ok(groups) => groups,
            Err(error) if error.message().contains("no such key") => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut slowest: Option<StreamId> = None;
        for group in &groups {
            let Some(name) = info_text(group, "name") else {
                continue;
            };
            let last = info_stream_id(group, "last-delivered-id").unwrap_or_default();
            let mut position = StreamId::new(last.ms, last.seq.saturating_add(1));
            if info_u64(group, "pending").unwrap_or(0) > 0 {
                if let Some(oldest) = self.pending(key, &name, ("-", "+"), 1, None).await?.first() {
                    position = position.min(oldest.id);
                }
            }
            slowest = Some(slowest.map_or(position, |s| s.min(position)));
        }
        Ok(slowest)
    }

    /// `SET key 1 NX PX ttl`: `true` when the key was set (it did not exist).
    pub(crate) async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.lock(key, "1", ttl).await
    }
}

// ---------------------------------------------------------------------------
// The tiered cache and the state keys (`src/cache/`): one RESP3 connection per
// bus, tracking the cache prefix in broadcast mode.

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

fn ttl_millis(ttl: Duration) -> String {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
        .to_string()
}

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

/// The value of `name` in an `XINFO` row.
pub(crate) fn info_field<'a>(row: &'a InfoRow, name: &str) -> Option<&'a Value> {
    row.iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value)
}

/// An `XINFO` value as an integer (`None` for nil, as `lag` may be).
pub(crate) fn info_u64(row: &InfoRow, name: &str) -> Option<u64> {
    info_field(row, name).and_then(Value::as_u64)
}

/// An `XINFO` value as text.
pub(crate) fn info_text(row: &InfoRow, name: &str) -> Option<String> {
    info_field(row, name)
        .and_then(Value::as_bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// An `XINFO` value as a stream id: an id, or an entry `[id, fields]` (as
/// `first-entry`).
pub(crate) fn info_stream_id(row: &InfoRow, name: &str) -> Option<StreamId> {
    match info_field(row, name)? {
        Value::Array(entry) => entry.first().and_then(parse_stream_id),
        value => parse_stream_id(value),
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(entries[0].id(), Some(StreamId::new(5, 1)));
        assert_eq!(
            entries[0].field(b"data").map(|d| &d[..]),
            Some(&b"\x91\x01"[..])
        );
        assert_eq!(entries[0].field(b"id").map(|d| &d[..]), Some(&b"x"[..]));
        assert_eq!(entries[0].field(b"src"), None);
        assert_eq!(entries[1].id(), Some(StreamId::new(6, 0)));
        assert_eq!(entries[1].field(b"data"), None);
        assert_eq!(entries[2].id(), None);
        assert_eq!(entries[3].field(b"data").map(|d| &d[..]), Some(&b"y"[..]));

        let empty = RangePage::new(Resp3Frame::Null).unwrap();
        assert_eq!((empty.len(), empty.last_id().unwrap()), (0, None));
        let broken = RangePage::new(array(vec![array(vec![blob(b"x")])])).unwrap();
        assert_eq!(broken.last_id().unwrap_err().kind(), ErrorKind::Redis);
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
