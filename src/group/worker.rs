//! A consumer's I/O thread: one current-thread runtime, two connections.
//!
//! * The **reader** connection runs `XREADGROUP` alone (a blocked connection holds
//!   everything queued behind it). It first re-reads this member's own pending
//!   entries (`0`), then new ones (`>`), never more than the free in-flight places.
//! * The **control** connection carries the rest: batched `XACK`s, nacks
//!   (`XCLAIM`), dead letters (`XADD` to the dead-letter stream, then `XACK`),
//!   `XAUTOCLAIM` of what dead members left, stream discovery for patterns, idle
//!   member removal and `XINFO`.

mod claim;
mod control;
mod read;
mod upkeep;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::{
    Command, Counters, GroupCore, GroupObserved, GroupStream, Incoming, OnMissingGroup, ReadEntry,
    Subject,
};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{StreamId, TopicName};
use crate::io::{join_io_thread, spawn_io_thread, Join};
use crate::transport::keys;
use crate::transport::redis::Connection;
use crate::transport::RawEntry;

use control::control_loop;
use read::reader_loop;
use upkeep::{check_unread_trim, upkeep_loop};

/// A running consumer thread.
pub(crate) struct Worker {
    reader: Connection,
    runtime: tokio::runtime::Handle,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    /// Connects both connections, creates or finds the group's streams, starts.
    pub(crate) fn start(
        core: Arc<GroupCore>,
        commands: mpsc::UnboundedReceiver<Command>,
        incoming: mpsc::UnboundedSender<Incoming>,
    ) -> Result<Worker> {
        let (setup_tx, setup_rx) = std::sync::mpsc::channel();
        let body_core = Arc::clone(&core);
        let started = spawn_io_thread(
            "tickbus-group",
            &core.redis,
            "group reader",
            move |reader| run(body_core, reader, commands, incoming, setup_tx),
        )?;
        let worker = Worker {
            reader: started.connection,
            runtime: started.runtime,
            thread: started.thread,
        };
        match setup_rx.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(error)) => {
                worker.stop(&core, Join::Wait);
                Err(error)
            }
            Err(_) => {
                worker.stop(&core, Join::Wait);
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "the consumer's I/O thread stopped during start-up",
                ))
            }
        }
    }

    /// Stops reading, lets the acks already given go out (bounded by
    /// `shutdown_timeout`), joins the thread.
    pub(crate) fn stop(self, core: &GroupCore, join: Join) {
        core.stop.send_replace(true);
        let reader = self.reader.clone();
        self.runtime.spawn(async move { reader.unblock().await });
        join_io_thread(self.thread, join);
    }
}

async fn run(
    core: Arc<GroupCore>,
    reader: Connection,
    commands: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::UnboundedSender<Incoming>,
    setup: std::sync::mpsc::Sender<Result<()>>,
) {
    let control = match Connection::open(&core.redis, "group control").await {
        Ok((control, _)) => control,
        Err(error) => {
            let _ = setup.send(Err(error));
            return;
        }
    };
    if let Err(error) = prepare(&core, &control).await {
        let _ = setup.send(Err(error));
        control.close().await;
        return;
    }
    // Before the first read: a new group on a stream whose oldest entries were
    // trimmed learns what it missed (later checks cannot tell once it read past).
    check_unread_trim(&core, &control).await;
    let _ = setup.send(Ok(()));
    tracing::debug!(group = %core.group, consumer = %core.consumer, "tickbus: consumer started");
    let control_task = tokio::spawn(control_loop(
        Arc::clone(&core),
        control.clone(),
        commands,
        incoming.clone(),
    ));
    let upkeep = tokio::spawn(upkeep_loop(Arc::clone(&core), control.clone()));
    reader_loop(Arc::clone(&core), reader, incoming).await;
    core.stop.send_replace(true);
    upkeep.abort();
    let _ = upkeep.await;
    let _ = control_task.await;
    control.close().await;
}

fn key_prefix(core: &GroupCore) -> &str {
    &core.redis.key_prefix
}

/// Creates the group on its topic's stream, or finds the pattern's streams.
async fn prepare(core: &GroupCore, control: &Connection) -> Result<()> {
    match &core.subject {
        Subject::Topic(topic) => {
            let stream = GroupStream::new(key_prefix(core), topic.clone());
            let kind = control.key_type(&stream.key).await?;
            if kind != "none" && kind != "stream" {
                return Err(Error::new(
                    ErrorKind::Redis,
                    format!(
                        "cannot read topic {topic} as a group: key {} holds a {kind}, not a stream",
                        stream.key
                    ),
                ));
            }
            let start = super::config::create_id(core.config.start);
            if control
                .group_create(&stream.key, &core.group, &start, true)
                .await?
            {
                tracing::info!(group = %core.group, %topic, start, "tickbus: created consumer group");
            }
            set_streams(core, vec![Arc::new(stream)]);
            Ok(())
        }
        Subject::Pattern(_) => discover(core, control, true).await,
    }
}

fn set_streams(core: &GroupCore, streams: Vec<Arc<GroupStream>>) {
    *core
        .streams
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = streams;
}

/// The topic of a stream key `<prefix>:stream:{<topic>}`.
fn topic_of_key(prefix: &str, key: &str) -> Option<TopicName> {
    let name = key
        .strip_prefix(prefix)?
        .strip_prefix(":stream:{")?
        .strip_suffix('}')?;
    TopicName::new(name).ok()
}

/// Finds the streams matching the group's pattern and creates the group on the
/// new ones: at the configured start the first time, from their beginning later
/// (a topic that appears after the group is read whole).
async fn discover(core: &GroupCore, control: &Connection, first: bool) -> Result<()> {
    let Subject::Pattern(pattern) = &core.subject else {
        return Ok(());
    };
    let prefix = key_prefix(core);
    let keys = control
        .scan_streams(&keys::scan_pattern(prefix, "stream"))
        .await?;
    let mut streams = core.streams();
    let known: HashSet<Arc<str>> = streams.iter().map(|s| Arc::clone(&s.key)).collect();
    let mut added = false;
    for key in keys {
        let Some(topic) = topic_of_key(prefix, &key) else {
            continue;
        };
        if !pattern.matches(&topic) || known.contains(key.as_str()) {
            continue;
        }
        let start = if first {
            super::config::create_id(core.config.start)
        } else {
            "0".to_string()
        };
        match control.group_create(&key, &core.group, &start, false).await {
            Ok(created) => {
                if created {
                    tracing::info!(group = %core.group, %topic, start, "tickbus: created consumer group");
                }
                streams.push(Arc::new(GroupStream::new(prefix, topic)));
                added = true;
            }
            Err(error) if error.kind() == ErrorKind::Redis => {
                tracing::debug!(%error, "tickbus: a stream vanished during discovery");
            }
            Err(error) => return Err(error),
        }
    }
    if added {
        streams.sort_by(|a, b| a.key.cmp(&b.key));
        set_streams(core, streams);
    }
    Ok(())
}

fn is_missing_group(error: &Error) -> bool {
    error.kind() == ErrorKind::Redis && error.message().contains("NOGROUP")
}

/// Sleeps `duration`; `false` if the consumer started stopping meanwhile.
async fn pause(core: &GroupCore, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => !core.is_stopping(),
        () = core.stopped() => false,
    }
}

/// Exponential back-off for I/O errors, from `reconnect_min` to `reconnect_max`.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(core: &GroupCore) -> Self {
        Backoff {
            next: core.redis.reconnect_min,
            min: core.redis.reconnect_min,
            max: core.redis.reconnect_max,
        }
    }

    async fn wait(&mut self, core: &GroupCore) -> bool {
        let delay = self.next + self.next.mul_f64(fastrand::f64() * 0.2);
        self.next = (self.next * 2).min(self.max);
        pause(core, delay).await
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

fn io_error(core: &GroupCore, what: &str, error: &Error) {
    Counters::add(&core.counters.errors, 1);
    tracing::warn!(group = %core.group, consumer = %core.consumer, %error, "tickbus: {what} failed; retrying");
}

/// How many times each of `entries` was delivered (`XPENDING` over their range,
/// this member only).
async fn delivery_counts(
    core: &GroupCore,
    connection: &Connection,
    stream: &GroupStream,
    entries: &[RawEntry],
) -> HashMap<StreamId, u32> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return HashMap::new();
    };
    let range = (first.id.to_string(), last.id.to_string());
    match connection
        .pending(
            &stream.key,
            &core.group,
            (&range.0, &range.1),
            entries.len() + core.config.max_in_flight,
            Some(&core.consumer),
        )
        .await
    {
        Ok(rows) => rows
            .into_iter()
            .map(|row| (row.id, row.deliveries))
            .collect(),
        Err(error) => {
            io_error(core, "XPENDING", &error);
            HashMap::new()
        }
    }
}

/// Hands read entries (each holding an in-flight place, with its delivery
/// count) to the consumer in one message, and clears those that no longer
/// exist. `false` when the consumer handle is gone.
fn hand_over<'a>(
    core: &GroupCore,
    incoming: &mpsc::UnboundedSender<Incoming>,
    entries: impl IntoIterator<Item = (&'a Arc<GroupStream>, RawEntry, u32)>,
) -> bool {
    let entries = entries.into_iter();
    let mut batch = Vec::with_capacity(entries.size_hint().0);
    for (stream, entry, deliveries) in entries {
        match entry.fields {
            None => {
                // Trimmed or deleted while pending: never handed over; the ack
                // clears it and frees its place.
                Counters::add(&core.counters.trimmed_pending, 1);
                tracing::warn!(group = %core.group, topic = %stream.topic, entry = %entry.id, "tickbus: a pending entry was trimmed or deleted; clearing it");
                core.push_ack(Arc::clone(stream), entry.id);
            }
            Some(fields) => batch.push(ReadEntry {
                stream: Arc::clone(stream),
                id: entry.id,
                fields,
                deliveries,
            }),
        }
    }
    if batch.is_empty() {
        return true;
    }
    lock(&core.queued).extend(batch.iter().map(|entry| (entry.stream.tag(), entry.id)));
    let n = batch.len();
    let sent = incoming.send(Incoming::Entries {
        entries: batch,
        read_at: Instant::now(),
    });
    if let Err(mpsc::error::SendError(Incoming::Entries { entries, .. })) = sent {
        let mut queued = lock(&core.queued);
        for entry in &entries {
            queued.remove(&(entry.stream.tag(), entry.id));
        }
        drop(queued);
        core.release(n);
        return false;
    }
    true
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
