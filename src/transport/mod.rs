//! The durable log: Redis Streams through fred. Moves bytes and stream ids, never
//! user types; `redis.rs` is the only file that imports fred or names a Redis
//! command.

pub(crate) mod redis;

use bytes::Bytes;

use crate::event::StreamId;

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
