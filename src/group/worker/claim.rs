//! Claims: `XAUTOCLAIM` of the entries idle past the ack wait.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{delivery_counts, hand_over, io_error, is_missing_group, lock};
use crate::event::StreamId;
use crate::group::{Counters, GroupCore, Incoming};
use crate::transport::redis::Connection;
use crate::transport::RawEntry;

/// How often a member looks for entries idle past the ack wait: every half ack
/// wait, at least every 10 s.
pub(super) fn claim_interval(core: &GroupCore) -> Duration {
    (core.config.ack_wait / 2).clamp(Duration::from_millis(5), Duration::from_secs(10))
}

/// `XAUTOCLAIM` loop per stream, until the cursor is `0-0` or the in-flight
/// places run out. Keeps the delivery counts (read back with `XPENDING`).
pub(super) async fn reclaim(
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
