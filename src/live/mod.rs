//! The live layer: the bridge between the local bus and Redis: the outbox (local → Redis) and the
//! fan-in (Redis → local, self-filtered). The only module that knows both.
//!
//! ## Outbox
//!
//! A durable publish encodes the payload, takes a place in the bounded outbox,
//! then, under the topic's order lock, publishes to the ring and queues the entry:
//! the stream receives a topic's events in the order local subscribers saw them.
//! The writer (its own thread and connection) drains the queue into pipelines of
//! `XADD`s. An entry leaves the outbox only when Redis confirmed it, or refused it
//! for good (the receipt then says why, and the error is logged and counted).
//!
//! When a write fails without an answer (connection lost, timeout), its outcome is
//! unknown: the entry may be in the stream. fred is told never to re-send
//! (`max_command_attempts = 1`); the writer backs off (exponential, with jitter)
//! until Redis answers again, then looks for the unconfirmed event ids at the end
//! of their streams and re-sends only the ones that are not there. Each event is
//! written once, in order. If that look-up misses an entry (a stream very busy
//! with other writers), the duplicate is recognised by event id on the reading
//! side.
//!
//! ## Fan-in
//!
//! The reader (its own thread and connection, `XREAD BLOCK` on every durable topic
//! read from) turns entries into events of the local topic: it skips its own
//! instance's entries, drops duplicates (a window of event ids per topic), decodes
//! the payload into the topic's type (an entry that does not decode reaches
//! subscribers as `Undecodable`) and skips, counts and logs entries that are not
//! tickbus entries at all.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify as AsyncNotify;

use crate::codec::CodecLimits;
use crate::config::{Durability, DurableOptions, RedisConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::event::StartAt;
use crate::event::{InstanceId, StreamId, TopicName};
use crate::io::{join_io_thread, lock, spawn_io_thread, Join};
use crate::local::topic::{Persist, TopicShared};
use crate::sync::Places;
use crate::transport::keys;
use crate::transport::redis::{Connection, ConnectionEvent, WAITAOF_VERSION};

mod delayed;
mod outbox;
mod persist;
mod reader;
mod state;
mod writer;

use delayed::Scheduler;
use outbox::Outbox;
use persist::DurablePersist;
use reader::{reader_loop, ReadTarget, TypedSink};
pub use state::ConnectionState;
use writer::writer_loop;

/// Metric: entries per write pipeline (histogram), recorded by the writer.
#[cfg(feature = "metrics")]
pub(crate) const WRITE_BATCH_SIZE: &str = "tickbus_write_batch_size";
/// Metric: publish → confirmed by Redis, the oldest entry of each pipeline
/// (histogram, seconds), recorded by the writer.
#[cfg(feature = "metrics")]
pub(crate) const DURABLE_LATENCY: &str = "tickbus_durable_latency_seconds";

/// How long `WAITAOF` may wait for the fsync.
const WAITAOF_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries looked at past the unconfirmed ones when checking a stream after a
/// failed write.
const RECONCILE_SLACK: usize = 1_000;

/// Counters of the live bus, readable with [`LiveBus::redis_stats`](crate::LiveBus::redis_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Durable events waiting for Redis (queued or written without confirmation).
    pub outbox_depth: usize,
    /// Entries Redis confirmed.
    pub written: u64,
    /// Pipelines sent by the writer.
    pub write_batches: u64,
    /// Entries Redis refused for good (their receipts carry the error).
    pub write_failures: u64,
    /// Entries whose outcome was unknown and that were found in their stream (not
    /// re-sent) after Redis came back.
    pub recovered: u64,
    /// Entries re-sent after a failed write.
    pub resent: u64,
    /// Events of other instances delivered to local topics.
    pub received: u64,
    /// This instance's own entries skipped by the reader.
    pub self_filtered: u64,
    /// Entries dropped as duplicates of an event id already delivered.
    pub duplicates: u64,
    /// Entries that are not tickbus entries (missing or malformed fields, payload
    /// not MessagePack): skipped and logged.
    pub skipped: u64,
    /// Entries whose payload did not decode into the topic's type: delivered to
    /// subscribers as [`RecvError::Undecodable`](crate::RecvError::Undecodable).
    pub undecodable: u64,
    /// Failed writes and reads (each retried after a back-off).
    pub redis_errors: u64,
    /// Connections (writer or reader) re-established after a loss.
    pub reconnects: u64,
    /// Events this instance scheduled ([`DurableTopic::publish_at`](crate::DurableTopic::publish_at)).
    pub scheduled: u64,
    /// Scheduled events (anyone's) this instance's movers appended to their
    /// streams when they were due.
    pub delayed_moved: u64,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    write_batches: AtomicU64,
    write_failures: AtomicU64,
    recovered: AtomicU64,
    resent: AtomicU64,
    received: AtomicU64,
    self_filtered: AtomicU64,
    duplicates: AtomicU64,
    skipped: AtomicU64,
    undecodable: AtomicU64,
    redis_errors: AtomicU64,
    reconnects: AtomicU64,
    scheduled: AtomicU64,
    delayed_moved: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Errors of one I/O task, for the [`ConnectionState`].
#[derive(Default)]
struct Trouble {
    writer: Option<(String, SystemTime)>,
    reader: Option<(String, SystemTime)>,
}

/// What the writer and reader share with the bus.
struct Core {
    config: RedisConfig,
    instance: InstanceId,
    /// This instance's id as the `src` field, shared by every entry.
    src: Bytes,
    outbox: Outbox,
    counters: Counters,
    trouble: Mutex<Trouble>,
    closed: AtomicBool,
    /// Topics the reader should add.
    new_targets: Mutex<Vec<ReadTarget>>,
    wake_reader: AsyncNotify,
    /// Notified once, at shutdown: cuts the reader's back-off short.
    stopping: AsyncNotify,
    /// Notified once, at shutdown: starts the writer's last `shutdown_timeout`.
    writer_stop: AsyncNotify,
    /// Topics with `Retention::max_age`: key and age, for the writer's trims.
    trims: Mutex<Vec<(Arc<str>, Duration)>>,
    /// The reader's connection and runtime, to interrupt its blocked read when a
    /// topic is added.
    reader: OnceLock<(Connection, tokio::runtime::Handle)>,
    /// The `bus` label of the writer's histograms (set once, at build).
    #[cfg(feature = "metrics")]
    metrics_label: OnceLock<String>,
}

impl Core {
    /// Hands `target` to the reader and interrupts its blocked `XREAD`, so that
    /// the next one includes the new stream.
    fn follow(&self, target: ReadTarget) {
        lock(&self.new_targets).push(target);
        self.wake_reader.notify_one();
        if let Some((reader, runtime)) = self.reader.get() {
            let reader = reader.clone();
            runtime.spawn(async move { reader.unblock().await });
        }
    }
}

/// Holds a durable topic's read target until its first subscriber exists.
#[derive(Default)]
struct FollowGate {
    target: Option<ReadTarget>,
    subscribed: bool,
}

impl Core {
    fn set_trouble(&self, reader: bool, error: &Error) {
        Counters::add(&self.counters.redis_errors, 1);
        let mut trouble = lock(&self.trouble);
        let slot = if reader {
            &mut trouble.reader
        } else {
            &mut trouble.writer
        };
        let since = match slot {
            Some((_, since)) => *since,
            None => {
                tracing::warn!(
                    task = if reader { "reader" } else { "writer" },
                    error = %error,
                    "tickbus: Redis unavailable; local delivery goes on, durable events wait in the outbox"
                );
                SystemTime::now()
            }
        };
        *slot = Some((error.to_string(), since));
    }

    fn clear_trouble(&self, reader: bool) {
        let mut trouble = lock(&self.trouble);
        let slot = if reader {
            &mut trouble.reader
        } else {
            &mut trouble.writer
        };
        if let Some((_, since)) = slot.take() {
            tracing::info!(
                task = if reader { "reader" } else { "writer" },
                after = ?since.elapsed().unwrap_or_default(),
                "tickbus: Redis is back"
            );
        }
    }
}

/// The live part of a bus: its two I/O threads and what they share.
pub(crate) struct Live {
    core: Arc<Core>,
    writer: Connection,
    writer_runtime: tokio::runtime::Handle,
    reader: Connection,
    reader_runtime: tokio::runtime::Handle,
    version: (u32, u32, u32),
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("redis", &self.core.config.redacted_url())
            .field("version", &self.version)
            .field("outbox_depth", &self.core.outbox.depth())
            .finish()
    }
}

impl Live {
    /// Connects (writer and reader), checks the server, starts the I/O threads.
    pub(crate) fn start(config: RedisConfig, instance: InstanceId) -> Result<Live> {
        config.validate()?;
        let core = Arc::new(Core {
            src: crate::wire::source_field(instance),
            outbox: Outbox {
                queue: Mutex::new(VecDeque::new()),
                places: Places::new(config.outbox_capacity),
                policy: config.outbox_full,
                wake_writer: AsyncNotify::new(),
            },
            config,
            instance,
            counters: Counters::default(),
            trouble: Mutex::new(Trouble::default()),
            closed: AtomicBool::new(false),
            new_targets: Mutex::new(Vec::new()),
            wake_reader: AsyncNotify::new(),
            stopping: AsyncNotify::new(),
            writer_stop: AsyncNotify::new(),
            trims: Mutex::new(Vec::new()),
            reader: OnceLock::new(),
            #[cfg(feature = "metrics")]
            metrics_label: OnceLock::new(),
        });
        let writer_core = Arc::clone(&core);
        let writer = spawn_io_thread(
            "tickbus-writer",
            &core.config,
            "writer",
            move |connection| writer_loop(writer_core, connection),
        )?;
        let reader_core = Arc::clone(&core);
        let reader_started = spawn_io_thread(
            "tickbus-reader",
            &core.config,
            "reader",
            move |connection| reader_loop(reader_core, connection),
        );
        let reader = match reader_started {
            Ok(started) => started,
            Err(error) => {
                core.closed.store(true, Ordering::Release);
                core.outbox.close();
                let _ = writer.thread.join();
                return Err(error);
            }
        };
        let _ = core
            .reader
            .set((reader.connection.clone(), reader.runtime.clone()));
        let version = writer.version;
        tracing::debug!(redis = %core.config.redacted_url(), ?version, "tickbus: live mode");
        Ok(Live {
            core,
            writer: writer.connection,
            writer_runtime: writer.runtime,
            reader: reader.connection,
            reader_runtime: reader.runtime,
            version,
            threads: Mutex::new(vec![writer.thread, reader.thread]),
        })
    }

    /// Runs `future` on the writer's runtime and waits for it from this thread.
    fn run_on_writer<R: Send + 'static>(
        &self,
        future: impl std::future::Future<Output = Result<R>> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::channel();
        self.writer_runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv_timeout(self.core.config.command_timeout * 2)
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    "no answer from the tickbus writer thread",
                ))
            })
    }

    fn stream_key(&self, topic: &TopicName) -> String {
        crate::transport::stream_key(&self.core.config.key_prefix, topic)
    }

    fn cursor_key(&self, topic: &TopicName) -> String {
        keys::cursor(&self.core.config.key_prefix, topic)
    }

    /// Checks the stream key and finds where the reader starts; returns the
    /// `Persist` of a new durable topic.
    pub(crate) fn prepare_topic<T>(
        &self,
        topic: &TopicName,
        options: &DurableOptions,
    ) -> Result<(Box<dyn Persist<T>>, DurableSetup)>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if self.core.closed.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "the bus has been shut down"));
        }
        let key = self.stream_key(topic);
        let fsync = options.durability == Durability::AofFsynced;
        if fsync && (self.version.0, self.version.1) < WAITAOF_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "topic {topic}: Durability::AofFsynced needs WAITAOF (Redis {}.{} or newer); \
                     this server is {}.{}.{}",
                    WAITAOF_VERSION.0,
                    WAITAOF_VERSION.1,
                    self.version.0,
                    self.version.1,
                    self.version.2
                ),
            ));
        }
        let writer = self.writer.clone();
        let check_key = key.clone();
        let cursor_key = self.cursor_key(topic);
        let instance = self.core.instance.to_string();
        let start_at = self.core.config.remote_start;
        let topic_name = topic.clone();
        let start = self.run_on_writer(async move {
            let kind = writer.key_type(&check_key).await?;
            if kind != "stream" && kind != "none" {
                return Err(Error::new(
                    ErrorKind::Redis,
                    format!(
                        "topic {topic_name}: key {check_key} holds a {kind}, not a stream; \
                         tickbus will not touch it (rename or delete it, or change the key prefix)"
                    ),
                ));
            }
            if fsync {
                let probe = keys::fsync_probe(&check_key);
                match writer.fsync_barrier(&probe, WAITAOF_TIMEOUT).await {
                    Ok(n) if n >= 1 => {}
                    Ok(_) => {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!("topic {topic_name}: WAITAOF did not confirm an fsync"),
                        ))
                    }
                    Err(error) => {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "topic {topic_name}: Durability::AofFsynced is unavailable \
                                 (is appendonly off?): {error}"
                            ),
                        ))
                    }
                }
            }
            if let Some(after) = start_at.after_id() {
                return Ok(after);
            }
            if start_at == StartAt::Resume {
                if let Some(saved) = writer.hget(&cursor_key, &instance).await? {
                    if let Ok(id) = std::str::from_utf8(&saved).unwrap_or_default().parse() {
                        return Ok(id);
                    }
                }
            }
            let newest = writer.newest(&check_key, 1).await?;
            Ok(newest.first().map_or(StreamId::ZERO, |entry| entry.id))
        })?;
        let key: Arc<str> = Arc::from(key);
        if let Some(age) = options.retention.max_age {
            lock(&self.core.trims).push((Arc::clone(&key), age));
        }
        let scheduler = Arc::new(Scheduler {
            core: Arc::clone(&self.core),
            writer: self.writer.clone(),
            runtime: self.writer_runtime.clone(),
            delayed_key: Arc::from(keys::delayed(&self.core.config.key_prefix, topic)),
            stream_key: Arc::clone(&key),
            max_len: options.retention.max_len,
            poll: options.delayed_poll.unwrap_or(delayed::DEFAULT_POLL),
            started: AtomicBool::new(false),
            wake: AsyncNotify::new(),
        });
        if options.delayed_poll.is_some() {
            scheduler.start();
        }
        let gate = Arc::new(Mutex::new(FollowGate::default()));
        let persist = Box::new(DurablePersist::<T> {
            scheduler,
            gate: Arc::clone(&gate),
            core: Arc::clone(&self.core),
            key: Arc::clone(&key),
            max_len: options.retention.max_len,
            fsync,
            limits: CodecLimits::default(),
            order: Mutex::new(()),
            _payload: PhantomData,
        });
        Ok((
            persist,
            DurableSetup {
                key,
                start,
                receive: options.receive_remote,
                gate,
            },
        ))
    }

    /// Starts delivering other instances' events of a new durable topic.
    pub(crate) fn read_topic<T>(&self, topic: &Arc<TopicShared<T>>, setup: DurableSetup)
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if !setup.receive {
            return;
        }
        let target = ReadTarget {
            key: setup.key.to_string(),
            cursor_key: self.cursor_key(&topic.name),
            last: setup.start,
            sink: Box::new(TypedSink {
                topic: Arc::downgrade(topic),
                limits: CodecLimits::default(),
            }),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
        };
        // Reading starts with the first subscriber (it may exist already: a
        // pattern subscription that matched the new topic).
        let mut gate = lock(&setup.gate);
        if gate.subscribed {
            drop(gate);
            self.core.follow(target);
        } else {
            gate.target = Some(target);
        }
    }

    pub(crate) fn health(&self) -> ConnectionState {
        if self.core.closed.load(Ordering::Acquire) {
            return ConnectionState::Closed;
        }
        let trouble = lock(&self.core.trouble);
        let (last_error, since) = match (&trouble.writer, &trouble.reader) {
            (None, None) => return ConnectionState::Connected,
            (Some(one), None) | (None, Some(one)) => one.clone(),
            (Some(writer), Some(reader)) => (
                writer.0.clone(),
                if writer.1 < reader.1 {
                    writer.1
                } else {
                    reader.1
                },
            ),
        };
        ConnectionState::Degraded {
            outbox_depth: self.core.outbox.depth(),
            last_error,
            since,
        }
    }

    /// The `bus` label of the writer's histograms.
    #[cfg(feature = "metrics")]
    pub(crate) fn set_metrics_label(&self, label: String) {
        let _ = self.core.metrics_label.set(label);
    }

    pub(crate) fn stats(&self) -> RedisStats {
        let c = &self.core.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RedisStats {
            outbox_depth: self.core.outbox.depth(),
            written: get(&c.written),
            write_batches: get(&c.write_batches),
            write_failures: get(&c.write_failures),
            recovered: get(&c.recovered),
            resent: get(&c.resent),
            received: get(&c.received),
            self_filtered: get(&c.self_filtered),
            duplicates: get(&c.duplicates),
            skipped: get(&c.skipped),
            undecodable: get(&c.undecodable),
            redis_errors: get(&c.redis_errors),
            reconnects: get(&c.reconnects),
            scheduled: get(&c.scheduled),
            delayed_moved: get(&c.delayed_moved),
        }
    }

    /// `XLEN` of each topic's dead-letter stream on the writer's connection, each
    /// `None` if it failed or the whole took more than `command_timeout`. Not
    /// asked (all `None`) while Redis is away.
    pub(crate) fn dead_letter_counts(
        &self,
        topics: Vec<TopicName>,
    ) -> tokio::sync::oneshot::Receiver<Vec<Option<u64>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let degraded = !matches!(self.health(), ConnectionState::Connected);
        if topics.is_empty() || degraded {
            let _ = tx.send(vec![None; topics.len()]);
            return rx;
        }
        let writer = self.writer.clone();
        let prefix = self.core.config.key_prefix.clone();
        let timeout = self.core.config.command_timeout;
        self.writer_runtime.spawn(async move {
            let mut counts = vec![None; topics.len()];
            let _ = tokio::time::timeout(timeout, async {
                for (topic, count) in topics.iter().zip(counts.iter_mut()) {
                    let key = keys::dlq(&prefix, topic);
                    *count = writer.stream_len(&key).await.ok();
                }
            })
            .await;
            let _ = tx.send(counts);
        });
        rx
    }

    /// The outbox's capacity.
    pub(crate) fn outbox_capacity(&self) -> usize {
        self.core.outbox.places.capacity()
    }

    /// Runs `tick` on the writer's runtime every `every` until it returns
    /// `false` or the bus shuts down.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn every(&self, every: Duration, mut tick: impl FnMut() -> bool + Send + 'static) {
        let core = Arc::clone(&self.core);
        self.writer_runtime.spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Ends with the runtime when the writer stops (at shutdown), or here.
            loop {
                interval.tick().await;
                if core.closed.load(Ordering::Acquire) || !tick() {
                    break;
                }
            }
        });
    }

    pub(crate) fn server_version(&self) -> (u32, u32, u32) {
        self.version
    }

    /// The Redis configuration of this bus.
    pub(crate) fn config(&self) -> &RedisConfig {
        &self.core.config
    }

    /// Runs `job` with the writer's connection on the writer's runtime; the
    /// returned future (runtime-agnostic) resolves to its result.
    pub(crate) fn on_writer<R, F, Fut>(
        &self,
        job: F,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<R>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let writer = self.writer.clone();
        self.writer_runtime.spawn(async move {
            let _ = tx.send(job(writer).await);
        });
        async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Closed, "the bus has shut down")))
        }
    }

    /// The writer's connection and the runtime of its I/O thread, for what
    /// runs short commands of its own on them (the rate limiters).
    pub(crate) fn writer_io(&self) -> (Connection, tokio::runtime::Handle) {
        (self.writer.clone(), self.writer_runtime.clone())
    }

    /// Deletes the stream (and the reader positions) of `topic` in Redis.
    pub(crate) fn purge_stream(&self, topic: &TopicName) -> Result<bool> {
        let writer = self.writer.clone();
        let stream = self.stream_key(topic);
        let cursor = self.cursor_key(topic);
        let dead_letters = keys::dlq(&self.core.config.key_prefix, topic);
        self.run_on_writer(async move { writer.delete(&[&stream, &cursor, &dead_letters]).await })
            .map(|deleted| deleted > 0)
    }

    /// Stops taking durable events, lets the writer drain the outbox (up to
    /// `shutdown_timeout`), stops the reader, joins both threads. Idempotent.
    pub(crate) fn shutdown(&self) {
        self.stop(Join::Wait);
    }

    /// As [`shutdown`](Live::shutdown); with `Join::Detach` it does not wait
    /// for the threads (they drain and end by themselves).
    fn stop(&self, join: Join) {
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        if threads.is_empty() {
            return;
        }
        self.core.outbox.close();
        self.core.closed.store(true, Ordering::Release);
        self.core.wake_reader.notify_one();
        // `notify_one` keeps a permit if the reader is not sleeping yet.
        self.core.stopping.notify_one();
        self.core.writer_stop.notify_one();
        let reader = self.reader.clone();
        self.reader_runtime
            .spawn(async move { reader.unblock().await });
        for thread in threads {
            join_io_thread(thread, join);
        }
    }
}

impl Drop for Live {
    /// The last handle of a live bus is gone: stop as `shutdown` does, but
    /// inside an async runtime without waiting (a destructor must not block an
    /// executor thread). The writer still drains the outbox on its own thread;
    /// async code that must know it has (before the process exits) awaits
    /// `Bus::close` instead of dropping.
    fn drop(&mut self) {
        let join = Join::unless_in_runtime();
        if join == Join::Detach {
            let waiting = self.core.outbox.depth();
            if waiting > 0 {
                tracing::warn!(
                    waiting,
                    "a live bus was dropped inside an async runtime with events in its outbox: \
                     its writer goes on writing them, but nothing waits for it; \
                     await Bus::close() before the process exits"
                );
            }
        }
        self.stop(join);
    }
}

/// What `prepare_topic` found, for `read_topic`.
pub(crate) struct DurableSetup {
    key: Arc<str>,
    start: StreamId,
    receive: bool,
    gate: Arc<Mutex<FollowGate>>,
}

/// Keeps the [`ConnectionState`] current with the connection's state, whether or not a command
/// is under way to notice it.
async fn watch_connection(core: Arc<Core>, connection: Connection, reader: bool) {
    let mut events = connection.events();
    while let Some(event) = events.next().await {
        match event {
            ConnectionEvent::Lost(error) => core.set_trouble(reader, &error),
            ConnectionEvent::Reconnected => {
                Counters::add(&core.counters.reconnects, 1);
                core.clear_trouble(reader);
            }
        }
    }
}
