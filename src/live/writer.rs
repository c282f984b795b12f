//! The writer: drains the outbox into `XADD` pipelines, settles unknown
//! outcomes, confirms fsyncs, trims by age.

use crate::error::{Error, ErrorKind, Result};
use crate::event::StreamId;
use crate::io::{lock, now_ms, Backoff};
use crate::transport::keys;
use crate::transport::redis::Connection;
use crate::transport::WireEntry;
use crate::wire;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outbox::Pending;
use super::{watch_connection, Core, Counters, RECONCILE_SLACK, WAITAOF_TIMEOUT};

/// The writer: drains the outbox into `XADD` pipelines. See the module doc.
pub(super) async fn writer_loop(core: Arc<Core>, connection: Connection) {
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
                if outbox.is_closed() {
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
        if outbox.is_closed() {
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
pub(super) const TRIM_EVERY: Duration = Duration::from_secs(1);

/// `XTRIM MINID ~` of every stream with a `max_age`, never past the oldest entry
/// one of its consumer groups still needs (unread, or pending).
pub(super) async fn trim_streams(core: &Core, connection: &Connection) {
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
pub(super) async fn write_once(
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
        let probe = keys::fsync_probe(&core.config.key_prefix);
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
                    event_id = %String::from_utf8_lossy(&pending.entry.event.id),
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
    record_write(
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
pub(super) async fn reconcile(
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
            // Another writer's entries, or not tickbus entries at all: not ours.
            if let Ok(parsed) = wire::parse(entry.fields(), &wire::EntryLimits::default()) {
                if parsed.source == core.instance {
                    found.insert(wire::uuid_text(parsed.event_id.as_uuid()), entry.id);
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
        match found.get(&pending.entry.event.id) {
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

/// The writer's per-pipeline figures: the batch size, and the publish → durable
/// latency of the oldest entry confirmed.
#[cfg(feature = "metrics")]
fn record_write(bus: Option<&str>, batch_size: usize, oldest: Option<Duration>) {
    let labels: Vec<metrics::Label> = bus
        .map(|bus| metrics::Label::new("bus", bus.to_string()))
        .into_iter()
        .collect();
    metrics::histogram!(super::WRITE_BATCH_SIZE, labels.clone()).record(batch_size as f64);
    if let Some(latency) = oldest {
        metrics::histogram!(super::DURABLE_LATENCY, labels).record(latency.as_secs_f64());
    }
}
