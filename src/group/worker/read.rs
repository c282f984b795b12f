//! The reader loop: `XREADGROUP` (own pending entries first, then new ones,
//! never more than the free in-flight places), with the claims between reads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::claim::{claim_interval, reclaim};
use super::upkeep::check_unread_trim;
use super::{delivery_counts, hand_over, io_error, is_missing_group, pause, set_streams, Backoff};
use crate::error::{Error, ErrorKind};
use crate::event::StreamId;
use crate::group::{Counters, GroupCore, GroupStream, Incoming, Subject};
use crate::transport::redis::Connection;
use crate::transport::RawEntry;

/// `XREADGROUP`: own pending entries first, then new ones; at most the free
/// in-flight places.
pub(super) async fn reader_loop(
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

/// How often at most a member that waited for room checks for unread trims
/// before it reads again (two `XINFO` round trips per stream).
const STALL_TRIM_CHECK: Duration = Duration::from_millis(10);
