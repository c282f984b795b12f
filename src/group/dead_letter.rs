//! The dead-letter stream of a topic, `<prefix>:dlq:{<topic>}`: listing and
//! re-driving.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::GroupStream;
use crate::codec::{self, CodecLimits};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{EventId, InstanceId, StreamId, TopicName};
use crate::transport::redis::Connection;
use crate::transport::RawEntry;
use crate::wire::{self, EntryLimits};

/// An event moved to its topic's dead-letter stream, with why
/// ([`LiveBus::dead_letters`](crate::LiveBus::dead_letters)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its entry in the dead-letter stream (what [`Redrive::Entry`] names).
    pub id: StreamId,
    /// The topic it belongs to.
    pub topic: TopicName,
    /// Its entry in the topic's stream when it died.
    pub stream_id: Option<StreamId>,
    /// The event id (`None` if the entry was not a tickbus entry at all).
    pub event_id: Option<EventId>,
    /// The instance that published it (`None` if the entry was not a tickbus
    /// entry).
    pub source: Option<InstanceId>,
    /// Its publish time, ns since the Unix epoch (`None` if the entry was not
    /// a tickbus entry).
    pub timestamp_ns: Option<u64>,
    /// Its headers, in order (empty when it had none, or was not a tickbus
    /// entry).
    pub headers: Vec<(String, String)>,
    /// `decode` (the payload does not decode), `max_deliveries` (failed too
    /// often), or `term` (the handler gave up on it).
    pub reason: String,
    /// The last error: the decode error, or the handler's reason.
    pub error: String,
    /// Deliveries before it died.
    pub deliveries: u32,
    /// The group and member that dead-lettered it.
    pub group: String,
    /// The member that dead-lettered it.
    pub consumer: String,
    /// When.
    pub dead_at: SystemTime,
    /// The MessagePack payload (field `data`), if it had one: as it was, also
    /// when the rest of the entry was not a tickbus entry.
    pub data: Option<Vec<u8>>,
    /// Why the event's part of the dead letter is not a tickbus entry (the
    /// wire parser's words), when it is not: then `event_id`, `source` and
    /// `timestamp_ns` are `None`.
    pub entry_error: Option<String>,
}

impl DeadLetter {
    /// Decodes the payload as `T`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Malformed`] when there is no payload; the codec's errors.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        let data = self
            .data
            .as_deref()
            .ok_or_else(|| Error::new(ErrorKind::Malformed, "the dead letter has no payload"))?;
        codec::decode_payload(data, &CodecLimits::default())
    }

    fn from_entry(topic: &TopicName, entry: &RawEntry) -> DeadLetter {
        let text = |name: &[u8]| {
            entry
                .field(name)
                .map(|value| String::from_utf8_lossy(value).into_owned())
                .unwrap_or_default()
        };
        // The event's fields as they were, parsed as every entry is; the rest
        // are the dead letter's own.
        let (event, entry_error) = match wire::parse(entry.fields(), &EntryLimits::default()) {
            Ok(event) => (Some(event), None),
            Err(error) => (None, Some(error.to_string())),
        };
        let data = match &event {
            Some(event) => Some(event.payload.to_vec()),
            None => entry.field(wire::DATA.as_bytes()).map(|data| data.to_vec()),
        };
        DeadLetter {
            id: entry.id,
            topic: topic.clone(),
            stream_id: text(b"stream_id").parse().ok(),
            event_id: event.as_ref().map(|event| event.event_id),
            source: event.as_ref().map(|event| event.source),
            timestamp_ns: event.as_ref().map(|event| event.timestamp_ns),
            headers: event.map(|event| event.headers).unwrap_or_default(),
            entry_error,
            reason: text(b"reason"),
            error: text(b"error"),
            deliveries: text(b"deliveries").parse().unwrap_or(0),
            group: text(b"group"),
            consumer: text(b"consumer"),
            dead_at: UNIX_EPOCH + Duration::from_millis(text(b"dead_at").parse().unwrap_or(0)),
            data,
        }
    }
}

/// Which dead letters to re-drive ([`LiveBus::redrive`](crate::LiveBus::redrive)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redrive {
    /// Every dead letter of the topic.
    All,
    /// The one with this id in the dead-letter stream ([`DeadLetter::id`]).
    Entry(StreamId),
}

/// The oldest `count` dead letters of `topic`.
pub(crate) async fn list(
    connection: Connection,
    prefix: String,
    topic: TopicName,
    count: usize,
) -> Result<Vec<DeadLetter>> {
    let stream = GroupStream::new(&prefix, topic.clone());
    let entries = connection.range(&stream.dlq_key, "-", "+", count).await?;
    Ok(entries
        .iter()
        .map(|entry| DeadLetter::from_entry(&topic, entry))
        .collect())
}

/// Appends dead letters back to their topic (same event id and payload, a new
/// stream id), then deletes them from the dead-letter stream: a crash in between
/// re-drives twice, never loses. Every group on the topic receives them again.
pub(crate) async fn redrive(
    connection: Connection,
    prefix: String,
    topic: TopicName,
    which: Redrive,
) -> Result<usize> {
    let stream = GroupStream::new(&prefix, topic);
    let mut done = 0;
    let mut from = "-".to_string();
    loop {
        let entries = match which {
            Redrive::All => connection.range(&stream.dlq_key, &from, "+", 256).await?,
            Redrive::Entry(id) => {
                let id = id.to_string();
                connection.range(&stream.dlq_key, &id, &id, 1).await?
            }
        };
        if entries.is_empty() {
            return Ok(done);
        }
        for entry in &entries {
            let fields: Vec<(Bytes, Bytes)> = entry
                .fields
                .iter()
                .flatten()
                .filter(|(name, _)| wire::is_event_field(name))
                .cloned()
                .collect();
            if !fields.is_empty() {
                connection.append_fields(&stream.key, &fields).await?;
            }
            connection
                .delete_entries(&stream.dlq_key, &[entry.id])
                .await?;
            done += 1;
        }
        match (which, entries.last()) {
            (Redrive::All, Some(last)) => from = format!("({}", last.id),
            _ => return Ok(done),
        }
    }
}
