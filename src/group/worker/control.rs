//! The control loop: acks batched into multi-id `XACK`s, nacks and their
//! redelivery, dead letters, `XINFO` for the application.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::upkeep::group_info;
use super::{hand_over, io_error, lock, now_ms, pause, Backoff};
use crate::error::{ErrorKind, Result};
use crate::event::StreamId;
use crate::group::{Command, Counters, DeadLetterOrder, GroupCore, GroupStream, Incoming};
use crate::transport::keys;
use crate::transport::redis::Connection;
use crate::wire;

/// Most ids in one `XACK`.
const ACK_CHUNK: usize = 1024;

struct PendingAck {
    stream: Arc<GroupStream>,
    id: StreamId,
    done: Option<oneshot::Sender<Result<()>>>,
}

/// Takes the commands of deliveries: batches acks into multi-id `XACK`s (retried
/// until Redis confirms them), runs the rest as their own tasks.
pub(super) async fn control_loop(
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
