//! The durable log: Redis Streams through fred. Moves bytes and stream ids, never
//! user types; `redis/` is the only code that imports fred or names a Redis
//! command. What an entry's fields mean is `crate::wire`'s business: the
//! transport hands them over as it read them.

pub(crate) mod keys;
pub(crate) mod redis;

use bytes::Bytes;

use crate::event::StreamId;
use crate::wire::EncodedEntry;

pub(crate) use keys::stream as stream_key;

/// One entry to append: where, and its fields as the wire encoder wrote them.
#[derive(Clone, Debug)]
pub(crate) struct WireEntry {
    /// The stream key, `<prefix>:stream:{<topic>}`.
    pub(crate) key: std::sync::Arc<str>,
    /// The entry's fields (`id`, `src`, `ts`, `data`, and `h` if any).
    pub(crate) event: EncodedEntry,
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
    /// The value of `name`, if the entry has that field (the first one, if
    /// repeated). For the fields that are not the event's (a dead letter's
    /// reason, say); the event's own go through [`crate::wire::parse`].
    pub(crate) fn field(&self, name: &[u8]) -> Option<&Bytes> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(field, _)| field.as_ref() == name)
            .map(|(_, value)| value)
    }

    /// The field list, for [`crate::wire::parse`] (empty for a deleted entry).
    pub(crate) fn fields(&self) -> &[(Bytes, Bytes)] {
        self.fields.as_deref().unwrap_or_default()
    }
}
