//! The fan-in: `XREAD BLOCK` over every followed stream, entries turned into
//! events of the local topics (self-filtered, deduplicated, decoded).

use crate::codec::{self, CodecLimits};
use crate::error::{Error, ErrorKind};
use crate::event::StreamId;
use crate::event::{Extra, Remote};
use crate::event::{Headers, StartAt};
use crate::io::{lock, Backoff};
use crate::local::topic::{Stored, TopicShared};
use crate::local::UndecodableEvent;
use crate::transport::redis::Connection;
use crate::transport::RawEntry;
use crate::wire::{self, EntryLimits};
use serde::de::DeserializeOwned;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{watch_connection, Core, Counters};

/// What became of one remote payload.
pub(super) enum Delivered {
    /// Decoded and published to the ring.
    Event,
    /// Well-formed MessagePack of another shape: reported to subscribers.
    Undecodable,
    /// Not one MessagePack value within the limits: the entry is skipped.
    NotMessagePack(Error),
}

/// Delivers decoded remote events into one typed local topic.
pub(super) trait RemoteSink: Send {
    /// Decodes `data` (one pass: the codec checks the bytes as it decodes),
    /// counts it (`received` or `undecodable`) and publishes or reports it.
    /// `Err` when the topic is gone or closed.
    fn deliver(
        &self,
        data: &[u8],
        timestamp_ns: u64,
        remote: Remote,
        headers: Headers,
        counters: &Counters,
    ) -> std::result::Result<Delivered, ()>;
    /// The codec limits for this topic's fields.
    fn limits(&self) -> &CodecLimits;
}

pub(super) struct TypedSink<T> {
    pub(super) topic: std::sync::Weak<TopicShared<T>>,
    pub(super) limits: CodecLimits,
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> RemoteSink for TypedSink<T> {
    fn deliver(
        &self,
        data: &[u8],
        timestamp_ns: u64,
        remote: Remote,
        headers: Headers,
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
                    extra: Extra::remote(remote, headers).into(),
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
pub(super) struct ReadTarget {
    pub(super) key: String,
    pub(super) cursor_key: String,
    pub(super) last: StreamId,
    pub(super) sink: Box<dyn RemoteSink>,
    pub(super) seen: HashSet<u128>,
    pub(super) seen_order: VecDeque<u128>,
}

impl ReadTarget {
    /// Remembers `id`; `false` if it was already there (a duplicate).
    pub(super) fn first_sighting(&mut self, id: u128, window: usize) -> bool {
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
pub(super) fn skip(counters: &Counters, key: &str, id: StreamId, why: &str) {
    Counters::add(&counters.skipped, 1);
    tracing::warn!(stream = key, entry = %id, why, "tickbus: skipped a stream entry that is not a tickbus event");
}

/// Handles one entry read from `target`'s stream.
pub(super) fn handle_entry(
    core: &Core,
    target: &mut ReadTarget,
    entry: &RawEntry,
) -> std::result::Result<(), ()> {
    let counters = &core.counters;
    let limits = EntryLimits::new(target.sink.limits());
    let parsed = match wire::parse(entry.fields(), &limits) {
        Ok(parsed) => parsed,
        Err(error) => {
            skip(counters, &target.key, entry.id, &error.to_string());
            return Ok(());
        }
    };
    // A scheduled event was not delivered at publish time: its own instance
    // receives it from the stream too.
    if parsed.source == core.instance && entry.field(wire::DUE.as_bytes()).is_none() {
        Counters::add(&counters.self_filtered, 1);
        return Ok(());
    }
    if !target.first_sighting(
        parsed.event_id.as_uuid().as_u128(),
        core.config.dedup_window,
    ) {
        Counters::add(&counters.duplicates, 1);
        return Ok(());
    }
    let remote = Remote {
        id: parsed.event_id,
        source: parsed.source,
        stream_id: entry.id,
    };
    match target.sink.deliver(
        parsed.payload,
        parsed.timestamp_ns,
        remote,
        Headers::from(parsed.headers),
        counters,
    )? {
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
pub(super) async fn reader_loop(core: Arc<Core>, connection: Connection) {
    tokio::spawn(watch_connection(
        Arc::clone(&core),
        connection.clone(),
        true,
    ));
    let config = &core.config;
    let mut targets: Vec<ReadTarget> = Vec::new();
    let mut backoff = Backoff::new(config);
    let resume = config.remote_start == StartAt::Resume;
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
                backoff.sleep_unless(core.stopping.notified()).await;
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
pub(super) async fn drop_broken_targets(
    core: &Core,
    connection: &Connection,
    targets: &mut Vec<ReadTarget>,
) {
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
