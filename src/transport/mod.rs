//! The durable log: Redis Streams through fred. Moves bytes and stream ids, never
//! user types; `redis.rs` is the only file that imports fred or names a Redis
//! command.

pub(crate) mod keys;
pub(crate) mod redis;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::codec::{self, CodecLimits};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{EventId, InstanceId, StreamId};

pub(crate) use keys::stream as stream_key;

/// A UUID as the hyphenated lower-case text of the `id` and `src` fields.
pub(crate) fn uuid_text(uuid: &uuid::Uuid) -> [u8; 36] {
    let mut text = [0_u8; 36];
    uuid.hyphenated().encode_lower(&mut text);
    text
}

/// One entry to append: the tickbus wire layout (`docs/redis-layout.md`).
#[derive(Clone, Debug)]
pub(crate) struct WireEntry {
    /// The stream key, `<prefix>:stream:{<topic>}`.
    pub(crate) key: std::sync::Arc<str>,
    /// Field `id`: the event id, hyphenated UUID text.
    pub(crate) id: [u8; 36],
    /// Field `src`: the publishing instance, hyphenated UUID text (one buffer per
    /// bus, shared by its entries: no copy per event).
    pub(crate) src: Bytes,
    /// Field `ts`: publish time, ns since the Unix epoch.
    pub(crate) ts: u64,
    /// Field `data`: the MessagePack payload.
    pub(crate) data: Bytes,
    /// `MAXLEN ~ n` on the `XADD`.
    pub(crate) max_len: Option<u64>,
}

/// One entry read back: its id and its fields (`None` for an entry deleted or
/// trimmed while referenced, which Redis returns with nil fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawEntry {
    pub(crate) id: StreamId,
    pub(crate) fields: Option<Vec<(Bytes, Bytes)>>,
}

impl RawEntry {
    /// The value of `name`, if the entry has that field (the first one, if repeated).
    pub(crate) fn field(&self, name: &[u8]) -> Option<&Bytes> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(field, _)| field.as_ref() == name)
            .map(|(_, value)| value)
    }
}

/// The fields of a tickbus entry (`docs/redis-layout.md`): event id, source,
/// timestamp, and the payload decoded as `T`.
///
/// # Errors
///
/// `Malformed` for a field missing or unreadable; the codec's errors for the
/// payload.
pub(crate) fn decode_entry<T: DeserializeOwned>(
    fields: &[(Bytes, Bytes)],
    limits: &CodecLimits,
) -> Result<(EventId, InstanceId, u64, T)> {
    let field = |name: &[u8]| {
        fields
            .iter()
            .find(|(field, _)| field.as_ref() == name)
            .map(|(_, value)| value)
    };
    let malformed =
        |what: &str| Error::new(ErrorKind::Malformed, format!("not a tickbus entry: {what}"));
    let uuid = |name: &[u8]| {
        field(name)
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|text| uuid::Uuid::try_parse(text).ok())
    };
    let event_id = uuid(b"id").ok_or_else(|| malformed("field `id` is missing or not a UUID"))?;
    let source = uuid(b"src").ok_or_else(|| malformed("field `src` is missing or not a UUID"))?;
    let timestamp = field(b"ts")
        .and_then(|ts| std::str::from_utf8(ts).ok())
        .and_then(|ts| ts.parse::<u64>().ok())
        .ok_or_else(|| malformed("field `ts` is missing or not a decimal integer"))?;
    let data = field(b"data").ok_or_else(|| malformed("field `data` is missing"))?;
    let value = codec::decode_payload::<T>(data, limits)?;
    Ok((
        EventId::from_uuid(event_id),
        InstanceId::from_uuid(source),
        timestamp,
        value,
    ))
}
