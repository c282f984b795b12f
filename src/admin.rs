//! Read-only views of what tickbus keeps in Redis, for operators and tools (the
//! `tickbus` command-line tool is built on it): streams with their bounds,
//! length and memory, consumer groups with their members, pending entries and
//! lag, dead-letter streams, and cache keys per namespace.
//!
//! An [`Admin`] has one connection on its own I/O thread (as a replay does);
//! its methods block the calling thread until Redis answers. It never writes.
//!
//! # Examples
//!
//! ```no_run
//! use tickbus::admin::Admin;
//! use tickbus::RedisConfig;
//!
//! let admin = Admin::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?)?;
//! for topic in admin.topics(None)? {
//!     let stats = admin.stream_stats(topic.as_str())?;
//!     println!("{} {} entries, {:?} bytes", stats.topic, stats.length, stats.memory_bytes);
//!     for group in &stats.groups {
//!         println!("  {} pending {} lag {:?}", group.name, group.pending, group.lag);
//!     }
//! }
//! # Ok::<(), tickbus::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Pattern, StreamId, TopicName};
use crate::group::ConsumerInfo;
use crate::io::spawn_io_thread;
use crate::transport::keys;
use crate::transport::redis::{info_stream_id, info_text, info_u64, Connection, InfoRow};

/// A topic's stream in Redis ([`Admin::stream_stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// The topic.
    pub topic: TopicName,
    /// Its stream key, `<prefix>:stream:{<topic>}`.
    pub key: String,
    /// Entries held now.
    pub length: u64,
    /// The oldest entry held (`None` when empty).
    pub first_id: Option<StreamId>,
    /// The newest entry held (`None` when empty).
    pub last_id: Option<StreamId>,
    /// Bytes the stream takes in Redis (`MEMORY USAGE`, an estimate for large
    /// streams); `None` if the server did not say.
    pub memory_bytes: Option<u64>,
    /// Its consumer groups.
    pub groups: Vec<GroupSummary>,
}

/// One consumer group of one stream, as Redis reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupSummary {
    /// The group's name.
    pub name: String,
    /// Its members, each with what it holds and how long it has been idle.
    pub consumers: Vec<ConsumerInfo>,
    /// Entries delivered to the group and not acknowledged yet.
    pub pending: u64,
    /// Entries not delivered to the group yet; `None` when Redis cannot tell
    /// (servers before 7.0, or after deletions in the middle of the stream).
    pub lag: Option<u64>,
    /// The last entry delivered to the group.
    pub last_delivered: StreamId,
}

/// The pending entries of a group on one stream ([`Admin::pending`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingSummary {
    /// The topic.
    pub topic: TopicName,
    /// The group.
    pub group: String,
    /// Entries delivered and not acknowledged.
    pub count: u64,
    /// The lowest pending stream id.
    pub first_id: Option<StreamId>,
    /// The highest pending stream id.
    pub last_id: Option<StreamId>,
    /// Pending entries per member (members holding none are not listed).
    pub consumers: Vec<(String, u64)>,
    /// The oldest pending entries (by stream id), at most the number asked for.
    pub oldest: Vec<PendingEntry>,
}

/// One pending entry of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingEntry {
    /// Its stream id.
    pub id: StreamId,
    /// The member holding it.
    pub consumer: String,
    /// Time since it was last delivered.
    pub idle: Duration,
    /// How many times it was delivered.
    pub deliveries: u32,
}

/// Keys of one cache namespace (`<prefix>:cache:<namespace>:<key>`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheNamespace {
    /// The namespace.
    pub namespace: String,
    /// How many keys it has in Redis.
    pub keys: u64,
}

/// A read-only connection for looking at tickbus's keys in Redis: see the
/// [module documentation](self). Dropping it closes the connection and stops
/// its thread.
///
/// Its methods block the calling thread (from async code, call them in
/// `spawn_blocking`).
///
/// # Examples
///
/// Which member holds the oldest unacknowledged entries of a group:
///
/// ```no_run
/// use tickbus::{ErrorKind, RedisConfig};
/// use tickbus::admin::Admin;
///
/// let config = RedisConfig::from_env()?.expect("set REDIS_URL");
/// let admin = Admin::connect(config)?;
/// match admin.pending("labelers", "job:label", 5) {
///     Ok(pending) => {
///         for entry in &pending.oldest {
///             println!("{} held by {} for {:?}, {} deliveries",
///                 entry.id, entry.consumer, entry.idle, entry.deliveries);
///         }
///     }
///     Err(error) if error.kind() == ErrorKind::NotFound => println!("no such group"),
///     Err(error) => return Err(error.into()),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Admin {
    connection: Connection,
    runtime: tokio::runtime::Handle,
    prefix: String,
    version: (u32, u32, u32),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("connection", &self.connection)
            .field("prefix", &self.prefix)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Connects (failing fast) and checks the server, as a live bus does.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for a bad configuration; `Unavailable` when Redis cannot
    /// be reached; `Auth` when it refuses the credentials; `Unsupported` for a
    /// server older than 6.2.
    pub fn connect(config: RedisConfig) -> Result<Admin> {
        config.validate()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let io = spawn_io_thread("tickbus-admin", &config, "admin", move |_| async move {
            let _ = stopped.await;
        })?;
        Ok(Admin {
            connection: io.connection,
            runtime: io.runtime,
            prefix: config.key_prefix.clone(),
            version: io.version,
            stop: Some(stop),
            thread: Some(io.thread),
        })
    }

    /// As [`connect`](Admin::connect), without blocking the caller's executor
    /// (the connection is made on a thread of its own).
    ///
    /// # Errors
    ///
    /// As [`connect`](Admin::connect).
    pub async fn connect_async(config: RedisConfig) -> Result<Admin> {
        crate::io::off_thread(move || Admin::connect(config)).await
    }

    /// The Redis server's version.
    pub fn server_version(&self) -> (u32, u32, u32) {
        self.version
    }

    /// The stream key of `topic` (`<prefix>:stream:{<topic>}`).
    fn stream_key(&self, topic: &TopicName) -> String {
        crate::transport::stream_key(&self.prefix, topic)
    }

    /// Runs `job` on the I/O thread and waits for its result.
    fn run<R, F, Fut>(&self, job: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<R>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let future = job(self.connection.clone());
        self.runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Closed,
                "the admin connection's I/O thread has stopped",
            ))
        })
    }

    /// The topics that have a stream, sorted; with `filter`, only those it
    /// matches (a topic name, or a pattern with `*` / `>`).
    ///
    /// # Errors
    ///
    /// `InvalidTopic` / `InvalidPattern` for a bad filter; the Redis errors.
    pub fn topics(&self, filter: Option<&str>) -> Result<Vec<TopicName>> {
        let filter = filter.map(Filter::parse).transpose()?;
        let pattern = keys::scan_pattern(&self.prefix, "stream");
        let keys = self.run(move |c| async move { c.scan_streams(&pattern).await })?;
        Ok(self.topics_of(&keys, "stream", filter.as_ref()))
    }

    /// The topics that have a dead-letter stream, sorted; with `filter`, only
    /// those it matches.
    ///
    /// # Errors
    ///
    /// `InvalidTopic` / `InvalidPattern` for a bad filter; the Redis errors.
    pub fn dead_letter_topics(&self, filter: Option<&str>) -> Result<Vec<TopicName>> {
        let filter = filter.map(Filter::parse).transpose()?;
        let pattern = keys::scan_pattern(&self.prefix, "dlq");
        let keys = self.run(move |c| async move { c.scan_streams(&pattern).await })?;
        Ok(self.topics_of(&keys, "dlq", filter.as_ref()))
    }

    fn topics_of(&self, keys: &[String], kind: &str, filter: Option<&Filter>) -> Vec<TopicName> {
        let mut topics: Vec<TopicName> = keys
            .iter()
            .filter_map(|key| {
                key.strip_prefix(self.prefix.as_str())?
                    .strip_prefix(':')?
                    .strip_prefix(kind)?
                    .strip_prefix(":{")?
                    .strip_suffix('}')
            })
            .filter_map(|name| TopicName::new(name).ok())
            .filter(|topic| filter.is_none_or(|filter| filter.matches(topic)))
            .collect();
        topics.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        topics.dedup();
        topics
    }

    /// The stream of `topic`: length, bounds, memory, and its groups.
    ///
    /// # Errors
    ///
    /// `InvalidTopic`; [`ErrorKind::NotFound`] when the topic has no stream;
    /// the Redis errors.
    pub fn stream_stats(&self, topic: &str) -> Result<StreamStats> {
        let topic = TopicName::new(topic)?;
        let key = self.stream_key(&topic);
        let name = topic.clone();
        let (info, memory, groups) = self.run(move |c| async move {
            let info = stream_info(&c, &key, &name).await?;
            let memory = c.memory_usage(&key).await?;
            let groups = groups_of(&c, &key).await?;
            Ok((info, memory, groups))
        })?;
        Ok(StreamStats {
            key: self.stream_key(&topic),
            topic,
            length: info_u64(&info, "length").unwrap_or(0),
            first_id: info_stream_id(&info, "first-entry"),
            last_id: info_stream_id(&info, "last-entry"),
            memory_bytes: memory,
            groups,
        })
    }

    /// The consumer groups of `topic`'s stream, with their members.
    ///
    /// # Errors
    ///
    /// `InvalidTopic`; [`ErrorKind::NotFound`] when the topic has no stream;
    /// the Redis errors.
    pub fn groups(&self, topic: &str) -> Result<Vec<GroupSummary>> {
        let topic = TopicName::new(topic)?;
        let key = self.stream_key(&topic);
        self.run(move |c| async move {
            stream_info(&c, &key, &topic).await?;
            groups_of(&c, &key).await
        })
    }

    /// The pending entries of `group` on `topic`: the count and bounds, per
    /// member, and the `oldest` first entries with their idle times and
    /// delivery counts.
    ///
    /// # Errors
    ///
    /// `InvalidTopic`; [`ErrorKind::NotFound`] when the topic has no stream or
    /// the stream has no such group; the Redis errors.
    pub fn pending(&self, group: &str, topic: &str, oldest: usize) -> Result<PendingSummary> {
        let topic = TopicName::new(topic)?;
        let key = self.stream_key(&topic);
        let name = topic.clone();
        let group_name = group.to_string();
        let (counts, entries) = self.run(move |c| async move {
            stream_info(&c, &key, &name).await?;
            let missing = |error: Error| {
                if error.message().contains("NOGROUP") {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("topic {name} has no consumer group {group_name:?}"),
                    )
                } else {
                    error
                }
            };
            let counts = c
                .pending_summary(&key, &group_name)
                .await
                .map_err(missing)?;
            let entries = if oldest > 0 && counts.count > 0 {
                c.pending(&key, &group_name, ("-", "+"), oldest, None)
                    .await
                    .map_err(missing)?
            } else {
                Vec::new()
            };
            Ok((counts, entries))
        })?;
        Ok(PendingSummary {
            topic,
            group: group.to_string(),
            count: counts.count,
            first_id: counts.first,
            last_id: counts.last,
            consumers: counts.consumers,
            oldest: entries
                .into_iter()
                .map(|entry| PendingEntry {
                    id: entry.id,
                    consumer: entry.consumer,
                    idle: entry.idle,
                    deliveries: entry.deliveries,
                })
                .collect(),
        })
    }

    /// Keys per cache namespace (`<prefix>:cache:<namespace>:<key>`, counted
    /// with `SCAN`), sorted by namespace.
    ///
    /// # Errors
    ///
    /// The Redis errors.
    pub fn cache_namespaces(&self) -> Result<Vec<CacheNamespace>> {
        let pattern = keys::scan_pattern(&self.prefix, "cache");
        let keys = self.run(move |c| async move { c.scan_keys(&pattern, None).await })?;
        let start = keys::cache_prefix(&self.prefix);
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for key in &keys {
            if let Some((namespace, _)) = key
                .strip_prefix(start.as_str())
                .and_then(|rest| rest.split_once(':'))
            {
                *counts.entry(namespace.to_string()).or_default() += 1;
            }
        }
        Ok(counts
            .into_iter()
            .map(|(namespace, keys)| CacheNamespace { namespace, keys })
            .collect())
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A topic filter: one name, or a pattern.
enum Filter {
    Topic(TopicName),
    Pattern(Pattern),
}

impl Filter {
    fn parse(text: &str) -> Result<Filter> {
        if text.contains(['*', '>']) {
            Pattern::new(text).map(Filter::Pattern)
        } else {
            TopicName::new(text).map(Filter::Topic)
        }
    }

    fn matches(&self, topic: &TopicName) -> bool {
        match self {
            Filter::Topic(name) => name == topic,
            Filter::Pattern(pattern) => pattern.matches(topic),
        }
    }
}

/// `XINFO STREAM key`; `NotFound` when the key does not exist, `Redis` when it
/// is not a stream.
async fn stream_info(connection: &Connection, key: &str, topic: &TopicName) -> Result<InfoRow> {
    match connection.info("STREAM", key, None).await {
        Ok(rows) => Ok(rows.into_iter().next().unwrap_or_default()),
        Err(error) if error.message().contains("no such key") => Err(Error::new(
            ErrorKind::NotFound,
            format!("topic {topic} has no stream (no key {key})"),
        )),
        Err(error) => Err(error),
    }
}

/// `XINFO GROUPS key`, then `XINFO CONSUMERS key group` for each group.
async fn groups_of(connection: &Connection, key: &str) -> Result<Vec<GroupSummary>> {
    let rows = connection.info("GROUPS", key, None).await?;
    let mut groups = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(name) = info_text(&row, "name") else {
            continue;
        };
        let consumers = connection
            .info("CONSUMERS", key, Some(&name))
            .await?
            .iter()
            .map(|member| ConsumerInfo {
                name: info_text(member, "name").unwrap_or_default(),
                pending: info_u64(member, "pending").unwrap_or(0),
                idle: Duration::from_millis(info_u64(member, "idle").unwrap_or(0)),
            })
            .collect();
        groups.push(GroupSummary {
            consumers,
            pending: info_u64(&row, "pending").unwrap_or(0),
            lag: info_u64(&row, "lag"),
            last_delivered: info_stream_id(&row, "last-delivered-id").unwrap_or_default(),
            name,
        });
    }
    Ok(groups)
}
