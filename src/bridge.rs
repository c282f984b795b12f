//! The bridge between the local bus and Redis: the outbox (local → Redis) and the
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use event_listener::{Event as Notify, Listener as _};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify as AsyncNotify;

use crate::bus::topic::{Persist, PersistMode, Remote, Stored, TopicShared};
use crate::bus::{PublishError, UndecodableEvent};
use crate::codec::{self, CodecLimits};
use crate::config::{Durability, DurableOptions, OutboxFull, RedisConfig, RemoteStart};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{EventId, InstanceId, StreamId, TopicName};
use crate::group::GroupCore;
use crate::receipt::{Receipt, ReceiptSender};
use crate::transport::redis::{Connection, ConnectionEvent, WAITAOF_VERSION};
use crate::transport::{uuid_text, RawEntry, WireEntry};

/// How long `WAITAOF` may wait for the fsync.
const WAITAOF_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries looked at past the unconfirmed ones when checking a stream after a
/// failed write.
const RECONCILE_SLACK: usize = 1_000;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Counters of the live bus, readable with [`Bus::redis_stats`](crate::Bus::redis_stats).
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
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The state of the connection to Redis, as [`Bus::health`](crate::Bus::health)
/// reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// No Redis configured: everything is in-process.
    Embedded,
    /// Redis answers; the outbox is being written as it fills.
    Connected,
    /// Redis does not answer (or refuses) since `since`. Local delivery goes on;
    /// durable events wait in the outbox.
    Degraded {
        /// Durable events waiting for Redis.
        outbox_depth: usize,
        /// The last error, as text (no password in it).
        last_error: String,
        /// When the trouble started.
        since: SystemTime,
    },
    /// The bus is shut down.
    Closed,
}

/// Errors of one I/O task, for `Health`.
#[derive(Default)]
struct Trouble {
    writer: Option<(String, SystemTime)>,
    reader: Option<(String, SystemTime)>,
}

/// One queued durable event.
struct Pending {
    entry: WireEntry,
    fsync: bool,
    receipt: Option<ReceiptSender>,
    /// Sent at least once without a clear answer.
    unknown: bool,
    /// When it was published, for the publish → durable latency.
    #[cfg(feature = "metrics")]
    queued_at: quanta::Instant,
}

/// Durable events waiting for Redis: bounded by `depth` (places taken from
/// `reserve` until Redis confirms), queued in publish order.
struct Outbox {
    queue: Mutex<VecDeque<Pending>>,
    depth: AtomicUsize,
    capacity: usize,
    policy: OutboxFull,
    closed: AtomicBool,
    /// Publishers waiting for room.
    space: Notify,
    space_waiters: AtomicUsize,
    /// Wakes the writer.
    wake_writer: AsyncNotify,
}

enum Refused {
    Full,
    Closed,
}

impl Outbox {
    /// Takes a place, waiting for one if `wait`.
    fn reserve(&self, wait: bool) -> std::result::Result<(), Refused> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Refused::Closed);
            }
            let depth = self.depth.load(Ordering::Relaxed);
            if depth < self.capacity {
                if self
                    .depth
                    .compare_exchange_weak(depth, depth + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if !wait {
                return Err(Refused::Full);
            }
            // Listen, count ourselves as waiting, fence, look again: pairs with
            // `release`, which fences between lowering the depth and reading the count.
            let listener = self.space.listen();
            self.space_waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let full = self.depth.load(Ordering::Relaxed) >= self.capacity
                && !self.closed.load(Ordering::Acquire);
            if full {
                listener.wait();
            }
            self.space_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Gives back `n` places.
    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.depth.fetch_sub(n, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        if self.space_waiters.load(Ordering::Relaxed) > 0 {
            self.space.notify(usize::MAX);
        }
    }

    fn push(&self, pending: Pending) {
        lock(&self.queue).push_back(pending);
        self.wake_writer.notify_one();
    }

    fn take(&self, max: usize, into: &mut VecDeque<Pending>) {
        let mut queue = lock(&self.queue);
        let n = queue.len().min(max);
        into.extend(queue.drain(..n));
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.space.notify(usize::MAX);
        self.wake_writer.notify_one();
    }
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

/// Exponential back-off with jitter, from `reconnect_min` to `reconnect_max`.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &RedisConfig) -> Self {
        Backoff {
            next: config.reconnect_min,
            min: config.reconnect_min,
            max: config.reconnect_max,
        }
    }

    async fn sleep(&mut self) {
        let jitter = self.next.mul_f64(fastrand::f64() * 0.2);
        tokio::time::sleep(self.next + jitter).await;
        self.next = (self.next * 2).min(self.max);
    }

    /// As `sleep`, cut short when `stop` is notified (shutdown).
    async fn sleep_unless(&mut self, stop: &AsyncNotify) {
        tokio::select! {
            () = self.sleep() => {}
            () = stop.notified() => {}
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
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
    /// The consumer groups joined through this bus (weak: a dropped consumer
    /// leaves), for metrics and the health report.
    groups: Mutex<Vec<std::sync::Weak<GroupCore>>>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("redis", &self.core.config.redacted_url())
            .field("version", &self.version)
            .field(
                "outbox_depth",
                &self.core.outbox.depth.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// A started I/O thread: its connection, its runtime, what the server said.
pub(crate) struct IoThread {
    pub(crate) connection: Connection,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) version: (u32, u32, u32),
    pub(crate) thread: JoinHandle<()>,
}

/// Starts an I/O thread with its own single-threaded runtime and connection,
/// and runs `body` on it once connected.
pub(crate) fn spawn_io_thread<F, Fut>(
    name: &str,
    config: &RedisConfig,
    role: &'static str,
    body: F,
) -> Result<IoThread>
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    spawn_io_thread_with(name, config, role, false, body)
}

/// As [`spawn_io_thread`], with a RESP3 connection when `resp3`.
pub(crate) fn spawn_io_thread_with<F, Fut>(
    name: &str,
    config: &RedisConfig,
    role: &'static str,
    resp3: bool,
    body: F,
) -> Result<IoThread>
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (ready_tx, ready_rx) = mpsc::channel();
    let config = config.clone();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("cannot start the tickbus I/O runtime: {error}"),
                    )));
                    return;
                }
            };
            runtime.block_on(async move {
                match Connection::open_with(&config, role, resp3).await {
                    Ok((connection, version)) => {
                        let handle = tokio::runtime::Handle::current();
                        if ready_tx
                            .send(Ok((connection.clone(), handle, version)))
                            .is_ok()
                        {
                            body(connection.clone()).await;
                        }
                        connection.close().await;
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            });
        })
        .map_err(|error| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot start the tickbus I/O thread: {error}"),
            )
        })?;
    match ready_rx.recv() {
        Ok(Ok((connection, runtime, version))) => Ok(IoThread {
            connection,
            runtime,
            version,
            thread,
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::new(
                ErrorKind::Unavailable,
                "the tickbus I/O thread stopped during start-up",
            ))
        }
    }
}

impl Live {
    /// Connects (writer and reader), checks the server, starts the I/O threads.
    pub(crate) fn start(config: RedisConfig, instance: InstanceId) -> Result<Live> {
        config.validate()?;
        let core = Arc::new(Core {
            src: Bytes::copy_from_slice(&uuid_text(instance.as_uuid())),
            outbox: Outbox {
                queue: Mutex::new(VecDeque::new()),
                depth: AtomicUsize::new(0),
                capacity: config.outbox_capacity,
                policy: config.outbox_full,
                closed: AtomicBool::new(false),
                space: Notify::new(),
                space_waiters: AtomicUsize::new(0),
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
            groups: Mutex::new(Vec::new()),
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
        format!("{}:cursor:{{{topic}}}", self.core.config.key_prefix)
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
        let resume = self.core.config.remote_start == RemoteStart::Resume;
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
                let probe = format!("{check_key}:fsync-probe");
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
            if resume {
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
        let gate = Arc::new(Mutex::new(FollowGate::default()));
        let persist = Box::new(DurablePersist::<T> {
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

    pub(crate) fn health(&self) -> Health {
        if self.core.closed.load(Ordering::Acquire) {
            return Health::Closed;
        }
        let trouble = lock(&self.core.trouble);
        let (last_error, since) = match (&trouble.writer, &trouble.reader) {
            (None, None) => return Health::Connected,
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
        Health::Degraded {
            outbox_depth: self.core.outbox.depth.load(Ordering::Relaxed),
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
            outbox_depth: self.core.outbox.depth.load(Ordering::Relaxed),
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
        }
    }

    /// Remembers a consumer group joined through this bus.
    pub(crate) fn add_group(&self, core: &Arc<GroupCore>) {
        let mut groups = lock(&self.groups);
        groups.retain(|group| group.strong_count() > 0);
        groups.push(Arc::downgrade(core));
    }

    /// The consumer groups joined through this bus that still run.
    pub(crate) fn groups(&self) -> Vec<Arc<GroupCore>> {
        lock(&self.groups)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|group| !group.is_stopping())
            .collect()
    }

    /// `XLEN` of each topic's dead-letter stream on the writer's connection, each
    /// `None` if it failed or the whole took more than `command_timeout`. Not
    /// asked (all `None`) while Redis is away.
    pub(crate) fn dead_letter_counts(
        &self,
        topics: Vec<TopicName>,
    ) -> tokio::sync::oneshot::Receiver<Vec<Option<u64>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let degraded = !matches!(self.health(), Health::Connected);
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
                    let key = crate::group::dlq_key(&prefix, topic);
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
        self.core.outbox.capacity
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

    /// Deletes the stream (and the reader positions) of `topic` in Redis.
    pub(crate) fn purge_stream(&self, topic: &TopicName) -> Result<bool> {
        let writer = self.writer.clone();
        let stream = self.stream_key(topic);
        let cursor = self.cursor_key(topic);
        let dead_letters = crate::group::dlq_key(&self.core.config.key_prefix, topic);
        self.run_on_writer(async move { writer.delete(&[&stream, &cursor, &dead_letters]).await })
            .map(|deleted| deleted > 0)
    }

    /// Stops taking durable events, lets the writer drain the outbox (up to
    /// `shutdown_timeout`), stops the reader, joins both threads. Idempotent.
    pub(crate) fn shutdown(&self) {
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
            if thread.thread().id() == std::thread::current().id() {
                continue; // Dropped on an I/O thread: it ends by itself.
            }
            let _ = thread.join();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What `prepare_topic` found, for `read_topic`.
pub(crate) struct DurableSetup {
    key: Arc<str>,
    start: StreamId,
    receive: bool,
    gate: Arc<Mutex<FollowGate>>,
}

/// The publish side of a durable topic.
struct DurablePersist<T> {
    /// The read target, until the first subscriber.
    gate: Arc<Mutex<FollowGate>>,
    core: Arc<Core>,
    key: Arc<str>,
    max_len: Option<u64>,
    fsync: bool,
    limits: CodecLimits,
    /// One order for the ring and the outbox.
    order: Mutex<()>,
    _payload: PhantomData<fn(T)>,
}

impl<T: Serialize + Clone + Send + Sync + 'static> Persist<T> for DurablePersist<T> {
    fn publish(
        &self,
        topic: &TopicShared<T>,
        value: T,
        mode: PersistMode,
    ) -> std::result::Result<(u64, Option<Receipt>), PublishError<T>> {
        let span = tracing::trace_span!(
            target: "tickbus::publish",
            "tickbus.publish",
            topic = %topic.name,
            durable = true,
            seq = tracing::field::Empty,
            event_id = tracing::field::Empty,
        );
        let _entered = span.enter();
        // Encode first: an event that cannot be persisted is refused before any
        // subscriber sees it.
        let data = match codec::encode_payload(&value, &self.limits) {
            Ok(data) => data,
            Err(error) => return Err(PublishError::Rejected(value, error)),
        };
        let outbox = &self.core.outbox;
        let wait = mode != PersistMode::Try && outbox.policy == OutboxFull::Wait;
        match outbox.reserve(wait) {
            Ok(()) => {}
            Err(Refused::Full) => return Err(PublishError::Backpressure(value)),
            Err(Refused::Closed) => return Err(PublishError::Closed(value)),
        }
        let order = lock(&self.order);
        let stored = topic.stored(value);
        let timestamp_ns = stored.timestamp_ns;
        let published = match mode {
            PersistMode::Try => {
                topic
                    .try_publish_stored(stored)
                    .map_err(|(error, stored)| match error {
                        crate::bus::ring::ClaimError::Full => {
                            PublishError::Backpressure(stored.into_value())
                        }
                        crate::bus::ring::ClaimError::Closed => {
                            PublishError::Closed(stored.into_value())
                        }
                    })
            }
            _ => topic
                .publish_stored(stored)
                .map_err(|stored| PublishError::Closed(stored.into_value())),
        };
        let seq = match published {
            Ok(seq) => seq,
            Err(error) => {
                drop(order);
                outbox.release(1);
                return Err(error);
            }
        };
        let id = EventId::derive(timestamp_ns, topic.salt, seq);
        if !span.is_disabled() {
            span.record("seq", seq);
            span.record("event_id", tracing::field::display(id));
        }
        let (receipt, sender) = match mode {
            PersistMode::Receipt => {
                let (receipt, sender) = Receipt::pair();
                (Some(receipt), Some(sender))
            }
            _ => (None, None),
        };
        outbox.push(Pending {
            entry: WireEntry {
                key: Arc::clone(&self.key),
                id: uuid_text(id.as_uuid()),
                src: self.core.src.clone(),
                ts: timestamp_ns,
                data: Bytes::from(data),
                max_len: self.max_len,
            },
            fsync: self.fsync,
            receipt: sender,
            unknown: false,
            #[cfg(feature = "metrics")]
            queued_at: quanta::Instant::now(),
        });
        drop(order);
        Ok((seq, receipt))
    }

    fn subscribed(&self) {
        let mut gate = lock(&self.gate);
        gate.subscribed = true;
        if let Some(target) = gate.target.take() {
            drop(gate);
            self.core.follow(target);
        }
    }
}

/// Keeps `Health` current with the connection's state, whether or not a command
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

/// The writer: drains the outbox into `XADD` pipelines. See the module doc.
async fn writer_loop(core: Arc<Core>, connection: Connection) {
    tokio::spawn(watch_connection(
        Arc::clone(&core),
        connection.clone(),
        false,
    ));
    let outbox = &core.outbox;
    let config = &core.config;
    let mut batch: VecDeque<Pending> = VecDeque::new();
    // Written, waiting for an fsync confirmation (after a lost connection).
    let mut unfsynced: Vec<(Pending, StreamId)> = Vec::new();
    let mut backoff = Backoff::new(config);
    let mut last_trim = Instant::now();
    let mut deadline: Option<Instant> = None;
    loop {
        if batch.is_empty() && unfsynced.is_empty() {
            let notified = outbox.wake_writer.notified();
            outbox.take(config.write_batch, &mut batch);
            if batch.is_empty() {
                if outbox.closed.load(Ordering::Acquire) {
                    break;
                }
                if lock(&core.trims).is_empty() {
                    notified.await;
                } else {
                    // Idle streams are trimmed by age too.
                    let due = TRIM_EVERY.saturating_sub(last_trim.elapsed());
                    if tokio::time::timeout(due, notified).await.is_err() {
                        last_trim = Instant::now();
                        trim_streams(&core, &connection).await;
                    }
                }
                continue;
            }
        }
        if outbox.closed.load(Ordering::Acquire) {
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + config.shutdown_timeout);
            if Instant::now() >= deadline {
                let left = batch.len() + unfsynced.len() + lock(&outbox.queue).len();
                tracing::error!(
                    left,
                    "tickbus: shutdown timeout with durable events still unconfirmed; \
                     their receipts resolve with a Closed error"
                );
                break;
            }
        }
        // One write (and its back-off on failure), cut short when a shutdown's
        // time runs out: shutdown takes `shutdown_timeout`, not that plus a
        // command timeout and a back-off.
        let step = async {
            match write_once(&core, &connection, &mut batch, &mut unfsynced).await {
                Ok(()) => {
                    backoff.reset();
                    core.clear_trouble(false);
                    true
                }
                Err(error) => {
                    core.set_trouble(false, &error);
                    backoff.sleep().await;
                    false
                }
            }
        };
        let out_of_time = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => {
                    core.writer_stop.notified().await;
                    tokio::time::sleep(config.shutdown_timeout).await;
                }
            }
        };
        let written = tokio::select! {
            written = step => Some(written),
            () = out_of_time => None,
        };
        match written {
            Some(true) => {}
            Some(false) => continue,
            None => {
                let left = batch.len() + unfsynced.len() + lock(&outbox.queue).len();
                tracing::error!(
                    left,
                    "tickbus: shutdown timeout with durable events still unconfirmed; \
                     their receipts resolve with a Closed error (they may or may not \
                     be in the stream)"
                );
                break;
            }
        }
        if last_trim.elapsed() >= TRIM_EVERY {
            last_trim = Instant::now();
            trim_streams(&core, &connection).await;
        }
    }
    // Whatever is left resolves its receipt with `Closed` when dropped.
    let left = batch.len() + unfsynced.len();
    drop(batch);
    drop(unfsynced);
    lock(&outbox.queue).clear();
    outbox.release(left);
}

/// How often the writer trims streams by age (`Retention::max_age`).
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// `XTRIM MINID ~` of every stream with a `max_age`, never past the oldest entry
/// one of its consumer groups still needs (unread, or pending).
async fn trim_streams(core: &Core, connection: &Connection) {
    let trims: Vec<_> = lock(&core.trims).clone();
    for (key, age) in trims {
        let mut min = StreamId::new(now_ms().saturating_sub(age.as_millis() as u64), 0);
        // Never past what a consumer group has not read or acked yet.
        match connection.groups_position(&key).await {
            Ok(Some(position)) if position < min => {
                tracing::debug!(%key, %position, "tickbus: retention held back by a consumer group");
                min = position;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%key, %error, "tickbus: cannot read the stream's groups; not trimming");
                continue;
            }
        }
        if let Err(error) = connection.trim_min_id(&key, min).await {
            tracing::warn!(%key, %error, "tickbus: XTRIM MINID failed");
        }
    }
}

/// One step of the writer: settle unknown outcomes, write `batch`, confirm fsyncs.
/// An `Err` means Redis is away: retry after a back-off.
async fn write_once(
    core: &Core,
    connection: &Connection,
    batch: &mut VecDeque<Pending>,
    unfsynced: &mut Vec<(Pending, StreamId)>,
) -> Result<()> {
    let outbox = &core.outbox;
    let counters = &core.counters;
    if batch.iter().any(|pending| pending.unknown) {
        reconcile(core, connection, batch, unfsynced).await?;
    }
    if !unfsynced.is_empty() {
        let probe = format!("{}:fsync-probe", core.config.key_prefix);
        match connection.fsync_barrier(&probe, WAITAOF_TIMEOUT).await? {
            0 => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "WAITAOF: the AOF fsync was not confirmed in time",
                ))
            }
            _ => {
                let n = unfsynced.len();
                for (pending, id) in unfsynced.drain(..) {
                    if let Some(receipt) = pending.receipt {
                        receipt.send(Ok(id));
                    }
                }
                Counters::add(&counters.written, n as u64);
                outbox.release(n);
            }
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    let entries: Vec<&WireEntry> = batch.iter().map(|pending| &pending.entry).collect();
    let waitaof = batch
        .iter()
        .any(|pending| pending.fsync)
        .then_some(WAITAOF_TIMEOUT);
    Counters::add(&counters.write_batches, 1);
    let batch_size = entries.len();
    #[cfg(feature = "metrics")]
    let oldest = batch.front().map(|pending| pending.queued_at);
    let span = tracing::debug_span!("tickbus.write_batch", batch_size, fsync = waitaof.is_some());
    let (results, fsynced) = tracing::Instrument::instrument(
        connection.append(&entries, waitaof, core.config.append_script),
        span,
    )
    .await;
    drop(entries);
    let fsync_ok = matches!(fsynced, Some(Ok(n)) if n >= 1);
    let mut released = 0;
    let mut written = 0;
    let mut first_unknown: Option<Error> = None;
    let mut kept: VecDeque<Pending> = VecDeque::new();
    for (mut pending, result) in batch.drain(..).zip(results) {
        if first_unknown.is_some() {
            pending.unknown = true;
            kept.push_back(pending);
            continue;
        }
        match result {
            Ok(id) if pending.fsync && !fsync_ok => unfsynced.push((pending, id)),
            Ok(id) => {
                if let Some(receipt) = pending.receipt.take() {
                    receipt.send(Ok(id));
                }
                written += 1;
                released += 1;
            }
            Err(error) if error.kind() == ErrorKind::Redis => {
                // Refused for good (a key of another type, ...): say so, never
                // retry forever.
                tracing::error!(
                    key = %pending.entry.key,
                    event_id = %String::from_utf8_lossy(&pending.entry.id),
                    %error,
                    "tickbus: Redis refused a durable event"
                );
                Counters::add(&counters.write_failures, 1);
                if let Some(receipt) = pending.receipt.take() {
                    receipt.send(Err(error));
                }
                released += 1;
            }
            Err(error) => {
                pending.unknown = true;
                kept.push_back(pending);
                first_unknown = Some(error);
            }
        }
    }
    Counters::add(&counters.written, written);
    #[cfg(feature = "metrics")]
    crate::metrics::record_write(
        core.metrics_label.get().map(String::as_str),
        batch_size,
        oldest.filter(|_| written > 0).map(|at| at.elapsed()),
    );
    #[cfg(not(feature = "metrics"))]
    let _ = batch_size;
    outbox.release(released);
    *batch = kept;
    match (first_unknown, fsynced) {
        (Some(error), _) => Err(error),
        (None, Some(Err(error))) if !unfsynced.is_empty() => Err(error),
        _ => Ok(()),
    }
}

/// After writes with unknown outcomes: finds which of them are in their streams
/// (settled, not re-sent) and leaves the others in `batch` to be sent again.
async fn reconcile(
    core: &Core,
    connection: &Connection,
    batch: &mut VecDeque<Pending>,
    unfsynced: &mut Vec<(Pending, StreamId)>,
) -> Result<()> {
    let mut per_key: HashMap<Arc<str>, usize> = HashMap::new();
    for pending in batch.iter().filter(|pending| pending.unknown) {
        *per_key.entry(Arc::clone(&pending.entry.key)).or_default() += 1;
    }
    let mut found: HashMap<[u8; 36], StreamId> = HashMap::new();
    for (key, unknown) in per_key {
        for entry in connection.newest(&key, unknown + RECONCILE_SLACK).await? {
            if let Some(id) = entry.field(b"id") {
                if let Ok(id) = <[u8; 36]>::try_from(id.as_ref()) {
                    if entry.field(b"src").map(|src| src.as_ref()) == Some(core.src.as_ref()) {
                        found.insert(id, entry.id);
                    }
                }
            }
        }
    }
    let mut recovered = 0;
    let mut resent = 0;
    let mut kept = VecDeque::with_capacity(batch.len());
    for mut pending in batch.drain(..) {
        if !pending.unknown {
            kept.push_back(pending);
            continue;
        }
        match found.get(&pending.entry.id) {
            Some(&id) => {
                recovered += 1;
                if pending.fsync {
                    unfsynced.push((pending, id));
                } else {
                    if let Some(receipt) = pending.receipt.take() {
                        receipt.send(Ok(id));
                    }
                    core.outbox.release(1);
                    Counters::add(&core.counters.written, 1);
                }
            }
            None => {
                resent += 1;
                pending.unknown = false;
                kept.push_back(pending);
            }
        }
    }
    *batch = kept;
    Counters::add(&core.counters.recovered, recovered);
    Counters::add(&core.counters.resent, resent);
    if recovered + resent > 0 {
        tracing::info!(
            recovered,
            resent,
            "tickbus: settled durable events whose write outcome was unknown"
        );
    }
    Ok(())
}

/// What became of one remote payload.
enum Delivered {
    /// Decoded and published to the ring.
    Event,
    /// Well-formed MessagePack of another shape: reported to subscribers.
    Undecodable,
    /// Not one MessagePack value within the limits: the entry is skipped.
    NotMessagePack(Error),
}

/// Delivers decoded remote events into one typed local topic.
trait RemoteSink: Send {
    /// Decodes `data` (one pass: the codec checks the bytes as it decodes),
    /// counts it (`received` or `undecodable`) and publishes or reports it.
    /// `Err` when the topic is gone or closed.
    fn deliver(
        &self,
        data: &[u8],
        timestamp_ns: u64,
        remote: Remote,
        counters: &Counters,
    ) -> std::result::Result<Delivered, ()>;
    /// The codec limits for this topic's fields.
    fn limits(&self) -> &CodecLimits;
}

struct TypedSink<T> {
    topic: std::sync::Weak<TopicShared<T>>,
    limits: CodecLimits,
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> RemoteSink for TypedSink<T> {
    fn deliver(
        &self,
        data: &[u8],
        timestamp_ns: u64,
        remote: Remote,
        counters: &Counters,
    ) -> std::result::Result<Delivered, ()> {
        let topic = self.topic.upgrade().ok_or(())?;
        if topic.ring.tail().1 {
            return Err(()); // closed on this bus
        }
        // Counted before delivery, so that a subscriber that has the event sees it
        // counted.
        match codec::decode_payload::<T>(data, &self.limits) {
            Ok(value) => {
                Counters::add(&counters.received, 1);
                // Counted before the ring has it (see `TopicShared::counts`).
                topic.counts.remote.fetch_add(1, Ordering::Relaxed);
                let stored = Stored {
                    value,
                    timestamp_ns,
                    remote: Some(Box::new(remote)),
                };
                topic
                    .publish_stored(stored)
                    .map(|_| Delivered::Event)
                    .map_err(|_| {
                        topic.counts.remote.fetch_sub(1, Ordering::Relaxed);
                    })
            }
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::Malformed | ErrorKind::PayloadTooLarge
                ) =>
            {
                Ok(Delivered::NotMessagePack(error))
            }
            Err(error) => {
                Counters::add(&counters.undecodable, 1);
                topic.report_undecodable(UndecodableEvent {
                    stream_id: remote.stream_id,
                    source: remote.source,
                    error: Arc::new(error),
                });
                Ok(Delivered::Undecodable)
            }
        }
    }

    fn limits(&self) -> &CodecLimits {
        &self.limits
    }
}

/// One stream the reader follows.
struct ReadTarget {
    key: String,
    cursor_key: String,
    last: StreamId,
    sink: Box<dyn RemoteSink>,
    seen: HashSet<u128>,
    seen_order: VecDeque<u128>,
}

impl ReadTarget {
    /// Remembers `id`; `false` if it was already there (a duplicate).
    fn first_sighting(&mut self, id: u128, window: usize) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.seen_order.push_back(id);
        while self.seen_order.len() > window {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// Why an entry is not a tickbus entry.
fn skip(counters: &Counters, key: &str, id: StreamId, why: &str) {
    Counters::add(&counters.skipped, 1);
    tracing::warn!(stream = key, entry = %id, why, "tickbus: skipped a stream entry that is not a tickbus event");
}

fn parse_uuid(bytes: Option<&Bytes>) -> Option<uuid::Uuid> {
    let text = std::str::from_utf8(bytes?).ok()?;
    uuid::Uuid::try_parse(text).ok()
}

/// Handles one entry read from `target`'s stream.
fn handle_entry(
    core: &Core,
    target: &mut ReadTarget,
    entry: &RawEntry,
) -> std::result::Result<(), ()> {
    let counters = &core.counters;
    if entry.fields.is_none() {
        skip(
            counters,
            &target.key,
            entry.id,
            "the entry has no fields (deleted)",
        );
        return Ok(());
    }
    let Some(source) = parse_uuid(entry.field(b"src")) else {
        skip(
            counters,
            &target.key,
            entry.id,
            "field `src` is missing or not a UUID",
        );
        return Ok(());
    };
    if source == *core.instance.as_uuid() {
        Counters::add(&counters.self_filtered, 1);
        return Ok(());
    }
    let Some(event_id) = parse_uuid(entry.field(b"id")) else {
        skip(
            counters,
            &target.key,
            entry.id,
            "field `id` is missing or not a UUID",
        );
        return Ok(());
    };
    let Some(timestamp_ns) = entry
        .field(b"ts")
        .and_then(|ts| std::str::from_utf8(ts).ok())
        .and_then(|ts| ts.parse::<u64>().ok())
    else {
        skip(
            counters,
            &target.key,
            entry.id,
            "field `ts` is missing or not a decimal integer",
        );
        return Ok(());
    };
    let Some(data) = entry.field(b"data") else {
        skip(counters, &target.key, entry.id, "field `data` is missing");
        return Ok(());
    };
    if let Some(headers) = entry.field(b"h") {
        if let Err(error) =
            codec::decode_payload::<Vec<(String, String)>>(headers, target.sink.limits()).or_else(
                |_| {
                    codec::decode_payload::<std::collections::BTreeMap<String, String>>(
                        headers,
                        target.sink.limits(),
                    )
                    .map(|map| map.into_iter().collect())
                },
            )
        {
            skip(
                counters,
                &target.key,
                entry.id,
                &format!("field `h` is not a MessagePack map of strings: {error}"),
            );
            return Ok(());
        }
    }
    if !target.first_sighting(event_id.as_u128(), core.config.dedup_window) {
        Counters::add(&counters.duplicates, 1);
        return Ok(());
    }
    let remote = Remote {
        id: EventId::from_uuid(event_id),
        source: InstanceId::from_uuid(source),
        stream_id: entry.id,
    };
    match target.sink.deliver(data, timestamp_ns, remote, counters)? {
        Delivered::Event => {}
        Delivered::Undecodable => {
            tracing::warn!(
                stream = %target.key,
                entry = %entry.id,
                "tickbus: a remote event does not decode into its topic's type; \
                 subscribers receive RecvError::Undecodable in its place"
            );
        }
        Delivered::NotMessagePack(error) => skip(
            counters,
            &target.key,
            entry.id,
            &format!("field `data` is not a MessagePack value: {error}"),
        ),
    }
    Ok(())
}

/// The fan-in: `XREAD BLOCK` over every followed stream, on its own connection.
async fn reader_loop(core: Arc<Core>, connection: Connection) {
    tokio::spawn(watch_connection(
        Arc::clone(&core),
        connection.clone(),
        true,
    ));
    let config = &core.config;
    let mut targets: Vec<ReadTarget> = Vec::new();
    let mut backoff = Backoff::new(config);
    let resume = config.remote_start == RemoteStart::Resume;
    let instance = core.instance.to_string();
    loop {
        if core.closed.load(Ordering::Acquire) {
            break;
        }
        let notified = core.wake_reader.notified();
        targets.append(&mut lock(&core.new_targets));
        if targets.is_empty() {
            notified.await;
            continue;
        }
        drop(notified);
        let streams: Vec<(&str, StreamId)> = targets
            .iter()
            .map(|target| (target.key.as_str(), target.last))
            .collect();
        let read = connection
            .read(&streams, config.read_count, Some(config.read_block))
            .await;
        drop(streams);
        let batches = match read {
            Ok(batches) => {
                backoff.reset();
                core.clear_trouble(true);
                batches
            }
            Err(error) => {
                core.set_trouble(true, &error);
                if error.kind() == ErrorKind::Redis {
                    drop_broken_targets(&core, &connection, &mut targets).await;
                }
                backoff.sleep_unless(&core.stopping).await;
                continue;
            }
        };
        for (key, entries) in batches {
            let Some(at) = targets.iter().position(|target| target.key == key) else {
                continue;
            };
            let target = &mut targets[at];
            let mut gone = false;
            for entry in &entries {
                target.last = entry.id;
                if handle_entry(&core, target, entry).is_err() {
                    gone = true;
                    break;
                }
            }
            if resume && !gone {
                if let Err(error) = connection
                    .hset(&target.cursor_key, &instance, &target.last.to_string())
                    .await
                {
                    tracing::warn!(%error, "tickbus: could not save the reader's position");
                }
            }
            if gone {
                // The topic was closed on this bus: stop following it.
                targets.remove(at);
            }
        }
    }
}

/// After a command error from `XREAD`: stops following keys that are no longer
/// streams (one bad key must not stop the others, nor spin).
async fn drop_broken_targets(core: &Core, connection: &Connection, targets: &mut Vec<ReadTarget>) {
    let mut index = 0;
    while index < targets.len() {
        match connection.key_type(&targets[index].key).await {
            Ok(kind) if kind != "stream" && kind != "none" => {
                let target = targets.remove(index);
                Counters::add(&core.counters.redis_errors, 1);
                tracing::error!(
                    key = %target.key,
                    kind,
                    "tickbus: a durable topic's key holds another type now; \
                     no longer reading other instances' events of it"
                );
            }
            _ => index += 1,
        }
    }
}
