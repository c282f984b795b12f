//! The upkeep loop (stream discovery for patterns, idle-member removal,
//! unread-trim checks) and the group's `XINFO`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{discover, io_error, lock, pause};
use crate::error::Result;
use crate::event::StreamId;
use crate::group::{ConsumerInfo, Counters, GroupCore, GroupInfo, GroupStreamInfo, Subject};
use crate::transport::redis::{info_stream_id, info_text, info_u64, Connection};

/// Periodic work on the control connection: discover streams (patterns), remove
/// idle members, look for unread trims.
pub(super) async fn upkeep_loop(core: Arc<GroupCore>, connection: Connection) {
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
/// Counts entries trimmed before the group read them: when the group's last
/// delivered id is older than the stream's first entry, the entries removed from
/// the stream beyond those the group read were never read.
pub(super) async fn check_unread_trim(core: &GroupCore, connection: &Connection) {
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
pub(super) async fn group_info(core: &GroupCore, connection: &Connection) -> Result<GroupInfo> {
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
