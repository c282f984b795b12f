//! A consumer's I/O thread: one current-thread runtime, two connections.
//!
//! * The **reader** connection runs `XREADGROUP` alone (a blocked connection holds
//!   everything queued behind it). It first re-reads this member's own pending
//!   entries (`0`), then new ones (`>`), never more than the free in-flight places.
//! * The **control** connection carries the rest: batched `XACK`s, nacks
//!   (`XCLAIM`), dead letters (`XADD` to the dead-letter stream, then `XACK`),
//!   `XAUTOCLAIM` of what dead members left, stream discovery for patterns, idle
//!   member removal and `XINFO`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{
    Command, ConsumerInfo, Counters, DeadLetterOrder, GroupCore, GroupInfo, GroupStream,
    GroupStreamInfo, Incoming, ReadEntry, Subject,
};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{StreamId, TopicName};
use crate::io::spawn_io_thread;
use crate::transport::keys;
use crate::transport::redis::{info_stream_id, info_text, info_u64, Connection};
use crate::transport::RawEntry;
use crate::wire;

/// Most ids in one `XACK`.
const ACK_CHUNK: usize = 1024;

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
                worker.stop(&core);
                Err(error)
            }
            Err(_) => {
                worker.stop(&core);
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "the consumer's I/O thread stopped during start-up",
                ))
            }
        }
    }

    /// Stops reading, lets the acks already given go out (bounded by
    /// `shutdown_timeout`), joins the thread.
    pub(crate) fn stop(self, core: &GroupCore) {
        core.stop.send_replace(true);
        let reader = self.reader.clone();
        self.runtime.spawn(async move { reader.unblock().await });
        if self.thread.thread().id() != std::thread::current().id() {
            let _ = self.thread.join();
        }
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
            let start = core.config.start.create_id();
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
            core.config.start.create_id()
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

/// `XREADGROUP`: own pending entries first, then new ones; at most the free
/// in-flight places.
async fn reader_loop(
    core: Arc<GroupCore>,
    connection: Connection,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let mut backoff = Backoff::new(&core);
    // Streams whose own pending entries are still being re-read, with the cursor.
    let mut history: HashMap<Arc<str>, StreamId> = HashMap::new();
    let mut known: HashSet<Arc<str>> = HashSet::new();
    // Per stream, the newest entry this member has been handed by a read: a
    // read whose reply was lost delivered only entries after it.
    let mut newest_read: HashMap<Arc<str>, StreamId> = HashMap::new();
    let mut rotate = 0_usize;
    // Claims run here, between reads, so that only this loop takes places for
    // reading: a claim never starves behind a read blocked with all of them.
    let claim_every = claim_interval(&core);
    let mut next_claim = Instant::now();
    // A member that waited for room (its application is behind) looks for
    // entries trimmed unread before it reads again: once it reads past a trim,
    // Redis counts the trimmed entries as read and nothing can tell them apart.
    let mut stalled = false;
    let mut trim_checked = Instant::now()
        .checked_sub(STALL_TRIM_CHECK)
        .unwrap_or_else(Instant::now);
    while !core.is_stopping() {
        let streams = core.streams();
        for stream in &streams {
            if known.insert(Arc::clone(&stream.key)) {
                history.insert(Arc::clone(&stream.key), StreamId::ZERO);
            }
        }
        // Not while own pending entries are re-read: the claim would take those
        // idle past the ack wait too, and both would hand them over.
        if history.is_empty() && Instant::now() >= next_claim {
            reclaim(&core, &connection, &incoming).await;
            next_claim = Instant::now() + claim_every;
        }
        if streams.is_empty() {
            if !pause(&core, core.config.discover_interval).await {
                break;
            }
            continue;
        }
        let room = core.reserve(core.config.batch);
        if room == 0 {
            stalled = true;
            // `release` calls `notify_one`, which keeps a permit when nobody
            // waits yet: no lost wake-up.
            tokio::select! {
                () = core.room.notified() => {}
                () = core.stopped() => break,
            }
            continue;
        }
        // At most every `STALL_TRIM_CHECK`: a busy member stalls all the time.
        if std::mem::take(&mut stalled) && trim_checked.elapsed() >= STALL_TRIM_CHECK {
            check_unread_trim(&core, &connection).await;
            trim_checked = Instant::now();
        }
        let draining: Vec<Arc<GroupStream>> = streams
            .iter()
            .filter(|stream| history.contains_key(&stream.key))
            .cloned()
            .collect();
        let (mut targets, block) = if draining.is_empty() {
            let until_claim = next_claim
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            (streams, Some(core.config.block.min(until_claim)))
        } else {
            (draining, None)
        };
        // Never more streams than free places, so that COUNT (per stream) keeps
        // the total within them; take turns across reads.
        let n = targets.len().min(room);
        let turn = rotate % targets.len();
        targets.rotate_left(turn);
        targets.truncate(n);
        rotate = rotate.wrapping_add(1);
        let count = (room / n).max(1);
        let ids: Vec<(&str, String)> = targets
            .iter()
            .map(|stream| {
                let id = match history.get(&stream.key) {
                    Some(cursor) if block.is_none() => cursor.to_string(),
                    _ => ">".to_string(),
                };
                (&*stream.key, id)
            })
            .collect();
        let reply = connection
            .read_group(&core.group, &core.consumer, &ids, count, block)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                core.settle(room, 0);
                if core.is_stopping() {
                    break;
                }
                if is_missing_group(&error) {
                    if !group_missing(&core, &connection, &incoming, &error, &mut history).await {
                        break;
                    }
                } else {
                    io_error(&core, "XREADGROUP", &error);
                    if block.is_some() && error.kind() != ErrorKind::Redis {
                        // The read may have run and its reply been lost with the
                        // connection: its entries are in this member's pending
                        // list, handed to no one. Re-read them from there first
                        // (`XREADGROUP … <newest read>`) rather than leaving them
                        // to the claim loop after a whole ack wait.
                        for stream in &targets {
                            let after = newest_read
                                .get(&stream.key)
                                .copied()
                                .unwrap_or(StreamId::ZERO);
                            history.insert(Arc::clone(&stream.key), after);
                        }
                    }
                    if !backoff.wait(&core).await {
                        break;
                    }
                }
                continue;
            }
        };
        backoff.reset();
        let reply: Vec<(&Arc<GroupStream>, Vec<RawEntry>)> = reply
            .into_iter()
            .filter_map(|(key, entries)| {
                let stream = targets.iter().find(|stream| *stream.key == *key)?;
                Some((stream, entries))
            })
            .collect();
        // The entries read hold their places from now on, before any is handed
        // over (and perhaps dropped or acked at once).
        let used = reply
            .iter()
            .map(|(_, entries)| entries.len())
            .sum::<usize>();
        core.settle(room, used);
        let mut answered: HashSet<&str> = HashSet::new();
        let mut handed = Vec::with_capacity(used);
        for (stream, entries) in reply {
            answered.insert(&stream.key);
            if let Some(last) = entries.last() {
                let newest = newest_read
                    .entry(Arc::clone(&stream.key))
                    .or_insert(last.id);
                *newest = (*newest).max(last.id);
            }
            let deliveries = if block.is_none() {
                // Re-read pending entries: ask Redis how often each was delivered.
                match entries.last() {
                    None => {
                        history.remove(&stream.key);
                        HashMap::new()
                    }
                    Some(last) => {
                        history.insert(Arc::clone(&stream.key), last.id);
                        delivery_counts(&core, &connection, stream, &entries).await
                    }
                }
            } else {
                HashMap::new()
            };
            handed.extend(entries.into_iter().map(|entry| {
                let count = deliveries.get(&entry.id).copied().unwrap_or(1);
                (stream, entry, count)
            }));
        }
        let failed = !hand_over(&core, &incoming, handed);
        if block.is_none() {
            for stream in &targets {
                if !answered.contains(&*stream.key) {
                    history.remove(&stream.key);
                }
            }
        }
        if failed {
            break; // the consumer handle is gone
        }
    }
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

/// The group or a stream vanished: stop, or create it again (no busy loop: one
/// back-off step either way). `false` to stop reading.
async fn group_missing(
    core: &GroupCore,
    connection: &Connection,
    incoming: &mpsc::UnboundedSender<Incoming>,
    error: &Error,
    history: &mut HashMap<Arc<str>, StreamId>,
) -> bool {
    Counters::add(&core.counters.errors, 1);
    if core.config.on_missing == super::OnMissingGroup::Stop {
        tracing::error!(group = %core.group, %error, "tickbus: the consumer group vanished; stopping as configured");
        let _ = incoming.send(Incoming::Failed(Error::new(
            ErrorKind::GroupMissing,
            format!(
                "consumer group {} vanished (stream deleted or Redis restarted empty): {}",
                core.group,
                error.message()
            ),
        )));
        return false;
    }
    let mkstream = matches!(core.subject, Subject::Topic(_));
    let mut streams = core.streams();
    let mut gone = Vec::new();
    for stream in &streams {
        match connection
            .group_create(&stream.key, &core.group, "0", mkstream)
            .await
        {
            Ok(true) => {
                Counters::add(&core.counters.recreated, 1);
                history.insert(Arc::clone(&stream.key), StreamId::ZERO);
                tracing::warn!(group = %core.group, topic = %stream.topic, "tickbus: the consumer group had vanished; created it again from the stream's beginning");
            }
            Ok(false) => {}
            Err(error) if error.kind() == ErrorKind::Redis && !mkstream => {
                gone.push(Arc::clone(&stream.key)); // the stream itself is gone
            }
            Err(error) => io_error(core, "XGROUP CREATE", &error),
        }
    }
    if !gone.is_empty() {
        streams.retain(|stream| !gone.contains(&stream.key));
        set_streams(core, streams);
    }
    pause(
        core,
        core.redis.reconnect_min.max(Duration::from_millis(10)),
    )
    .await
}

struct PendingAck {
    stream: Arc<GroupStream>,
    id: StreamId,
    done: Option<oneshot::Sender<Result<()>>>,
}

/// Takes the commands of deliveries: batches acks into multi-id `XACK`s (retried
/// until Redis confirms them), runs the rest as their own tasks.
async fn control_loop(
    core: Arc<GroupCore>,
    connection: Connection,
    mut commands: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let mut acks: Vec<PendingAck> = Vec::new();
    let mut buffered: Vec<(Arc<GroupStream>, StreamId)> = Vec::new();
    let mut backoff = Backoff::new(&core);
    let mut deadline: Option<Instant> = None;
    loop {
        take_buffered(&core, &mut buffered, &mut acks);
        if acks.is_empty() {
            if core.is_stopping() {
                match commands.try_recv() {
                    Ok(command) => take(&core, &connection, &incoming, command, &mut acks),
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    command = commands.recv() => match command {
                        Some(command) => take(&core, &connection, &incoming, command, &mut acks),
                        None => break,
                    },
                    () = core.acks_ready.notified() => continue,
                    () = core.stopped() => continue,
                }
            }
        }
        while acks.len() < 16 * ACK_CHUNK {
            match commands.try_recv() {
                Ok(command) => take(&core, &connection, &incoming, command, &mut acks),
                Err(_) => break,
            }
        }
        if acks.is_empty() {
            continue;
        }
        match flush_acks(&core, &connection, &mut acks).await {
            Ok(()) => backoff.reset(),
            Err(error) => {
                io_error(&core, "XACK", &error);
                if core.is_stopping() {
                    let end = *deadline
                        .get_or_insert_with(|| Instant::now() + core.redis.shutdown_timeout);
                    if Instant::now() >= end {
                        tracing::error!(group = %core.group, unsent = acks.len(), "tickbus: shutting down with acks Redis did not confirm; those events will be delivered again");
                        for ack in acks.drain(..) {
                            if let Some(done) = ack.done {
                                let _ = done.send(Err(error.clone()));
                            }
                        }
                        break;
                    }
                    tokio::time::sleep(core.redis.reconnect_min).await;
                } else {
                    backoff.wait(&core).await;
                }
            }
        }
    }
}

/// Moves the acks given through [`GroupCore::push_ack`] into the batch (the two
/// buffers are swapped: no allocation once they have grown).
fn take_buffered(
    core: &GroupCore,
    spare: &mut Vec<(Arc<GroupStream>, StreamId)>,
    acks: &mut Vec<PendingAck>,
) {
    std::mem::swap(&mut *lock(&core.acks), spare);
    acks.extend(spare.drain(..).map(|(stream, id)| PendingAck {
        stream,
        id,
        done: None,
    }));
}

/// One command: an ack joins the batch, the rest run as tasks.
fn take(
    core: &Arc<GroupCore>,
    connection: &Connection,
    incoming: &mpsc::UnboundedSender<Incoming>,
    command: Command,
    acks: &mut Vec<PendingAck>,
) {
    match command {
        Command::Ack { stream, id, done } => acks.push(PendingAck { stream, id, done }),
        Command::Nack {
            stream,
            id,
            deliveries,
            delay,
        } => {
            Counters::add(&core.counters.nacked, 1);
            tokio::spawn(redeliver(
                Arc::clone(core),
                connection.clone(),
                incoming.clone(),
                stream,
                id,
                deliveries,
                delay,
            ));
        }
        Command::Progress {
            stream,
            id,
            received,
        } => {
            let core = Arc::clone(core);
            let connection = connection.clone();
            tokio::spawn(async move {
                if let Err(error) = connection
                    .claim(&stream.key, &core.group, &core.consumer, &[id], true)
                    .await
                {
                    io_error(&core, "XCLAIM (in progress)", &error);
                }
                if received {
                    lock(&core.queued).remove(&(stream.tag(), id));
                }
            });
        }
        Command::DeadLetter(order) => {
            tokio::spawn(dead_letter(Arc::clone(core), connection.clone(), order));
        }
        Command::Info(done) => {
            let core = Arc::clone(core);
            let connection = connection.clone();
            tokio::spawn(async move {
                let _ = done.send(group_info(&core, &connection).await);
            });
        }
        Command::SeenBefore { event, ttl, done } => {
            let key = keys::seen(
                &core.redis.key_prefix,
                &core.group,
                event.as_uuid().hyphenated(),
            );
            let connection = connection.clone();
            tokio::spawn(async move {
                let _ = done.send(connection.set_nx(&key, ttl).await.map(|set| !set));
            });
        }
    }
}

/// Sends the batched acks, per stream, in chunks. Confirmed ones (and ones whose
/// group is gone) leave `acks` and free their places; on a connection error the
/// rest stay for the retry.
async fn flush_acks(
    core: &GroupCore,
    connection: &Connection,
    acks: &mut Vec<PendingAck>,
) -> Result<()> {
    let mut by_stream: BTreeMap<Arc<str>, Vec<PendingAck>> = BTreeMap::new();
    match acks.first() {
        // Most often all of one stream: no grouping.
        Some(first)
            if acks
                .iter()
                .all(|ack| Arc::ptr_eq(&ack.stream, &first.stream)) =>
        {
            let key = Arc::clone(&first.stream.key);
            by_stream.insert(key, std::mem::take(acks));
        }
        _ => {
            for ack in acks.drain(..) {
                by_stream
                    .entry(Arc::clone(&ack.stream.key))
                    .or_default()
                    .push(ack);
            }
        }
    }
    let mut failure = None;
    for (key, mut batch) in by_stream {
        while !batch.is_empty() {
            if failure.is_some() {
                acks.append(&mut batch);
                break;
            }
            let n = batch.len().min(ACK_CHUNK);
            let ids: Vec<StreamId> = batch[..n].iter().map(|ack| ack.id).collect();
            match connection.ack(&key, &core.group, &ids).await {
                Ok(_) => {
                    Counters::add(&core.counters.acked, n as u64);
                    core.release(n);
                    for ack in batch.drain(..n) {
                        if let Some(done) = ack.done {
                            let _ = done.send(Ok(()));
                        }
                    }
                }
                Err(error) if error.kind() == ErrorKind::Redis => {
                    // The group is gone: nothing is pending any more.
                    tracing::warn!(group = %core.group, %error, "tickbus: acks refused (group gone?)");
                    core.release(n);
                    for ack in batch.drain(..n) {
                        if let Some(done) = ack.done {
                            let _ = done.send(Err(error.clone()));
                        }
                    }
                }
                Err(error) => failure = Some(error),
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// A nacked delivery: kept claimed (idle time reset every half ack wait, so no
/// other member takes it while this one lives), then claimed again (which counts
/// a delivery) and handed over.
async fn redeliver(
    core: Arc<GroupCore>,
    connection: Connection,
    incoming: mpsc::UnboundedSender<Incoming>,
    stream: Arc<GroupStream>,
    id: StreamId,
    deliveries: u32,
    delay: Duration,
) {
    let refresh = (core.config.ack_wait / 2).max(Duration::from_millis(5));
    let deadline = Instant::now() + delay;
    // Until the final XCLAIM below has answered, a claim that finds the entry
    // trimmed leaves the count to this task (which sees it gone either way).
    let waiting = (Arc::clone(&stream.key), id);
    lock(&core.nacked).insert(waiting.clone());
    let done = || {
        lock(&core.nacked).remove(&waiting);
    };
    loop {
        let _ = connection
            .claim(&stream.key, &core.group, &core.consumer, &[id], true)
            .await;
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if !pause(&core, (deadline - now).min(refresh)).await {
            done();
            core.release(1); // left pending: claimed after the ack wait
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let claimed = connection
        .claim(&stream.key, &core.group, &core.consumer, &[id], false)
        .await;
    done();
    match claimed {
        Ok(entries) => match entries.into_iter().find(|entry| entry.id == id) {
            Some(entry) => {
                let _ = hand_over(&core, &incoming, [(&stream, entry, deliveries + 1)]);
            }
            None => {
                Counters::add(&core.counters.trimmed_pending, 1);
                core.release(1);
            }
        },
        Err(error) => {
            io_error(&core, "XCLAIM (nack)", &error);
            core.release(1); // still pending: claimed after the ack wait
        }
    }
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

/// Writes the dead letter, then acks the entry (a crash in between leaves a
/// duplicate dead letter, never a lost event). Retries until both are done or the
/// consumer stops (then the entry stays pending).
async fn dead_letter(core: Arc<GroupCore>, connection: Connection, order: DeadLetterOrder) {
    let DeadLetterOrder {
        stream,
        id,
        fields,
        deliveries,
        reason,
        error,
    } = order;
    let mut letter: Vec<(Bytes, Bytes)> = fields
        .into_iter()
        .filter(|(name, _)| wire::is_event_field(name))
        .collect();
    let meta: [(&'static str, String); 8] = [
        ("reason", reason.clone()),
        ("deliveries", deliveries.to_string()),
        ("group", core.group.clone()),
        ("consumer", core.consumer.clone()),
        ("error", error),
        ("stream_id", id.to_string()),
        ("topic", stream.topic.to_string()),
        ("dead_at", now_ms().to_string()),
    ];
    letter.extend(
        meta.into_iter()
            .map(|(name, value)| (Bytes::from_static(name.as_bytes()), Bytes::from(value))),
    );
    let mut backoff = Backoff::new(&core);
    let mut written = false;
    loop {
        if !written {
            match connection.append_fields(&stream.dlq_key, &letter).await {
                Ok(_) => written = true,
                Err(error) if error.kind() == ErrorKind::Redis => {
                    Counters::add(&core.counters.errors, 1);
                    tracing::error!(group = %core.group, topic = %stream.topic, entry = %id, %error, "tickbus: cannot write the dead letter; the event stays pending");
                    core.release(1);
                    return;
                }
                Err(error) => io_error(&core, "XADD (dead letter)", &error),
            }
        }
        if written {
            match connection.ack(&stream.key, &core.group, &[id]).await {
                Ok(_) => {
                    Counters::add(&core.counters.dead_lettered, 1);
                    core.release(1);
                    tracing::warn!(group = %core.group, topic = %stream.topic, entry = %id, reason, deliveries, "tickbus: dead-lettered an event");
                    return;
                }
                Err(error) if error.kind() == ErrorKind::Redis => {
                    Counters::add(&core.counters.dead_lettered, 1);
                    core.release(1);
                    return;
                }
                Err(error) => io_error(&core, "XACK (dead letter)", &error),
            }
        }
        if !backoff.wait(&core).await {
            core.release(1);
            return;
        }
    }
}

/// How often a member looks for entries idle past the ack wait: every half ack
/// wait, at least every 10 s.
fn claim_interval(core: &GroupCore) -> Duration {
    (core.config.ack_wait / 2).clamp(Duration::from_millis(5), Duration::from_secs(10))
}

/// Periodic work on the control connection: discover streams (patterns), remove
/// idle members, look for unread trims.
async fn upkeep_loop(core: Arc<GroupCore>, connection: Connection) {
    let idle_every = core
        .config
        .remove_idle_consumers
        .map(|idle| (idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(60)));
    let trim_every = Duration::from_secs(1);
    let start = Instant::now();
    let mut next_discover = start + core.config.discover_interval;
    let mut next_idle = start + idle_every.unwrap_or_default();
    let mut next_trim = start; // pending and lag known from the start
    loop {
        let mut due = next_trim;
        if matches!(core.subject, Subject::Pattern(_)) {
            due = due.min(next_discover);
        }
        if idle_every.is_some() {
            due = due.min(next_idle);
        }
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() && !pause(&core, wait).await {
            return;
        }
        let now = Instant::now();
        if matches!(core.subject, Subject::Pattern(_)) && now >= next_discover {
            if let Err(error) = discover(&core, &connection, false).await {
                io_error(&core, "stream discovery", &error);
            }
            next_discover = now + core.config.discover_interval;
        }
        if let (Some(every), Some(idle)) = (idle_every, core.config.remove_idle_consumers) {
            if now >= next_idle {
                remove_idle(&core, &connection, idle).await;
                next_idle = Instant::now() + every;
            }
        }
        if now >= next_trim {
            check_unread_trim(&core, &connection).await;
            next_trim = Instant::now() + trim_every;
        }
    }
}

/// `XAUTOCLAIM` loop per stream, until the cursor is `0-0` or the in-flight
/// places run out. Keeps the delivery counts (read back with `XPENDING`).
async fn reclaim(
    core: &GroupCore,
    connection: &Connection,
    incoming: &mpsc::UnboundedSender<Incoming>,
) {
    for stream in core.streams() {
        let mut cursor = StreamId::ZERO;
        loop {
            if core.is_stopping() {
                return;
            }
            let room = core.reserve(core.config.batch);
            if room == 0 {
                return;
            }
            // Taken before the claim is sent (see `redeliver`).
            let nacked: HashSet<StreamId> = lock(&core.nacked)
                .iter()
                .filter(|(key, _)| *key == stream.key)
                .map(|(_, id)| *id)
                .collect();
            // Likewise the queued entries: one the application receives while
            // the claim is on its way leaves the set meanwhile, yet the claim
            // may have taken it.
            let queued_before: HashSet<StreamId> = lock(&core.queued)
                .iter()
                .filter(|(tag, _)| *tag == stream.tag())
                .map(|(_, id)| *id)
                .collect();
            let claim = connection
                .autoclaim(
                    &stream.key,
                    &core.group,
                    &core.consumer,
                    core.config.ack_wait,
                    cursor,
                    room,
                )
                .await;
            let claim = match claim {
                Ok(claim) => claim,
                Err(error) => {
                    core.settle(room, 0);
                    if !is_missing_group(&error) {
                        io_error(core, "XAUTOCLAIM", &error);
                    }
                    break;
                }
            };
            let deleted = claim
                .deleted
                .iter()
                .filter(|id| !nacked.contains(id))
                .count();
            if deleted > 0 {
                Counters::add(&core.counters.trimmed_pending, deleted as u64);
                tracing::warn!(group = %core.group, topic = %stream.topic, count = deleted, "tickbus: pending entries were trimmed or deleted; cleared");
            }
            // Entries still queued for this member's application (read ahead,
            // not received yet), or waiting for a nack's redelivery, went idle:
            // the claim has refreshed them; delivering them again here would
            // only duplicate them within this process.
            let entries: Vec<RawEntry> = {
                let held = lock(&core.queued);
                claim
                    .entries
                    .into_iter()
                    .filter(|entry| {
                        !held.contains(&(stream.tag(), entry.id))
                            && !queued_before.contains(&entry.id)
                            && !nacked.contains(&entry.id)
                    })
                    .collect()
            };
            let used = entries.len().min(room);
            core.settle(room, used);
            if used > 0 {
                Counters::add(&core.counters.reclaimed, used as u64);
                let counts = delivery_counts(core, connection, &stream, &entries).await;
                let handed = entries.into_iter().take(used).map(|entry| {
                    let deliveries = counts.get(&entry.id).copied().unwrap_or(2);
                    (&stream, entry, deliveries)
                });
                if !hand_over(core, incoming, handed) {
                    return;
                }
            }
            cursor = claim.cursor;
            if cursor == StreamId::ZERO {
                break;
            }
        }
    }
}

/// Removes other members idle for `idle` with nothing pending (atomically: a
/// member that holds entries is never removed).
async fn remove_idle(core: &GroupCore, connection: &Connection, idle: Duration) {
    for stream in core.streams() {
        let rows = match connection
            .info("CONSUMERS", &stream.key, Some(&core.group))
            .await
        {
            Ok(rows) => rows,
            Err(_) => continue,
        };
        for row in rows {
            let Some(name) = info_text(&row, "name") else {
                continue;
            };
            let pending = info_u64(&row, "pending").unwrap_or(1);
            let idle_ms = info_u64(&row, "inactive")
                .or_else(|| info_u64(&row, "idle"))
                .unwrap_or(0);
            if name == core.consumer || pending > 0 || Duration::from_millis(idle_ms) < idle {
                continue;
            }
            match connection
                .delete_idle_consumer(&stream.key, &core.group, &name)
                .await
            {
                Ok(true) => {
                    Counters::add(&core.counters.consumers_removed, 1);
                    tracing::info!(group = %core.group, topic = %stream.topic, consumer = name, "tickbus: removed an idle group member");
                }
                Ok(false) => {}
                Err(error) => io_error(core, "removing an idle member", &error),
            }
        }
    }
}

/// How often at most a member that waited for room checks for unread trims
/// before it reads again (two `XINFO` round trips per stream).
const STALL_TRIM_CHECK: Duration = Duration::from_millis(10);

/// Counts entries trimmed before the group read them: when the group's last
/// delivered id is older than the stream's first entry, the entries removed from
/// the stream beyond those the group read were never read.
async fn check_unread_trim(core: &GroupCore, connection: &Connection) {
    // The group's pending and lag, summed over its streams, as a by-product.
    let mut observed = super::GroupObserved {
        pending: 0,
        lag: Some(0),
    };
    let mut complete = true;
    for stream in core.streams() {
        let Ok(info) = connection.info("STREAM", &stream.key, None).await else {
            complete = false;
            continue;
        };
        let Some(info) = info.first() else { continue };
        let Ok(groups) = connection.info("GROUPS", &stream.key, None).await else {
            complete = false;
            continue;
        };
        let Some(group) = groups
            .iter()
            .find(|row| info_text(row, "name").as_deref() == Some(&core.group))
        else {
            continue;
        };
        observed.pending += info_u64(group, "pending").unwrap_or(0);
        observed.lag = match (observed.lag, info_u64(group, "lag")) {
            (Some(total), Some(lag)) => Some(total + lag),
            _ => None,
        };
        let first = info_stream_id(info, "recorded-first-entry-id")
            .or_else(|| info_stream_id(info, "first-entry"));
        let (Some(first), Some(last_delivered)) =
            (first, info_stream_id(group, "last-delivered-id"))
        else {
            continue;
        };
        if last_delivered >= first || info_u64(info, "length") == Some(0) {
            continue;
        }
        // A group created at `0` that read nothing yet has no `entries-read`.
        let read =
            info_u64(group, "entries-read").or((last_delivered == StreamId::ZERO).then_some(0));
        let (Some(added), Some(length), Some(read)) = (
            info_u64(info, "entries-added"),
            info_u64(info, "length"),
            read,
        ) else {
            continue;
        };
        let lost = added.saturating_sub(length).saturating_sub(read);
        let newly = {
            let mut seen = lock(&core.unread_seen);
            let before = seen.entry(Arc::clone(&stream.key)).or_default();
            let newly = lost.saturating_sub(*before);
            *before = (*before).max(lost);
            newly
        };
        if newly > 0 {
            Counters::add(&core.counters.trimmed_unread, newly);
            tracing::error!(group = %core.group, topic = %stream.topic, lost, "tickbus: retention trimmed entries this group had not read");
        }
    }
    if complete {
        *lock(&core.observed) = Some(observed);
    }
}

/// `XINFO` of the group on each of its streams.
async fn group_info(core: &GroupCore, connection: &Connection) -> Result<GroupInfo> {
    let mut info = GroupInfo {
        group: core.group.clone(),
        streams: Vec::new(),
    };
    for stream in core.streams() {
        let length = connection
            .info("STREAM", &stream.key, None)
            .await?
            .first()
            .and_then(|row| info_u64(row, "length"))
            .unwrap_or(0);
        let groups = connection.info("GROUPS", &stream.key, None).await?;
        let Some(row) = groups
            .iter()
            .find(|row| info_text(row, "name").as_deref() == Some(&core.group))
        else {
            continue;
        };
        let consumers = connection
            .info("CONSUMERS", &stream.key, Some(&core.group))
            .await?
            .iter()
            .map(|row| ConsumerInfo {
                name: info_text(row, "name").unwrap_or_default(),
                pending: info_u64(row, "pending").unwrap_or(0),
                idle: Duration::from_millis(info_u64(row, "idle").unwrap_or(0)),
            })
            .collect();
        info.streams.push(GroupStreamInfo {
            topic: Some(stream.topic.clone()),
            length,
            pending: info_u64(row, "pending").unwrap_or(0),
            lag: info_u64(row, "lag"),
            last_delivered: info_stream_id(row, "last-delivered-id").unwrap_or_default(),
            consumers,
        });
    }
    Ok(info)
}
