//! The stream entry: the one parser and the one encoder of the fields tickbus
//! writes to a Redis stream (`docs/redis-layout.md`, "Stream entries").
//!
//! Every reader of entries goes through [`parse`]: the live reader, consumer
//! groups and their dead letters, replay (and through it recordings and the
//! `tickbus` tool), and the writer when it looks for its own entries after a
//! lost reply. Every writer of an event entry goes through [`encode`] (or
//! [`EncodedEntry::new`] when there are no headers). So an entry means the same
//! thing, and a bad one is refused with the same words, wherever it is read.
//!
//! ## The fields
//!
//! | field  | value                                                        |
//! |--------|--------------------------------------------------------------|
//! | `id`   | the event id, a UUID as text (tickbus writes it hyphenated)  |
//! | `src`  | the publishing instance, a UUID as text                      |
//! | `ts`   | publish time, ns since the Unix epoch, decimal ASCII digits  |
//! | `data` | the payload: MessagePack bytes, decoded later by the reader  |
//! | `h`    | headers: a MessagePack map of string to string; absent when there are none |
//!
//! Fields are looked up by name, in any order; other fields are ignored (a dead
//! letter adds its own). One of these five appearing twice is a defect, not a
//! silent choice of one of them.
//!
//! ## Borrowing
//!
//! [`parse`] reads a [`Fields`] view of the entry as the transport holds it (a
//! slice of `(name, value)` pairs, or a page of `XRANGE` still in fred's
//! frames) and returns an [`Entry`] whose payload is a reference to the
//! transport's own `Bytes`: nothing is copied, and a caller that keeps the
//! payload clones the `Bytes` (a reference count), not the bytes. Only headers,
//! when there are some, allocate.
//!
//! ## Limits
//!
//! [`EntryLimits`] bound the number of fields, the payload's size, and the
//! headers' count and size. Each bound is checked on lengths alone, before
//! anything is built: a field list of 10 000 fields, a 2 MiB payload or an `h`
//! that claims 4 billion headers is refused having allocated nothing.

use std::fmt;

use bytes::Bytes;

use crate::codec::CodecLimits;
use crate::error::{Error, ErrorKind};
use crate::event::{EventId, InstanceId};

/// Field `id`: the event id.
pub(crate) const ID: &str = "id";
/// Field `src`: the publishing instance.
pub(crate) const SRC: &str = "src";
/// Field `ts`: publish time, ns since the Unix epoch.
pub(crate) const TS: &str = "ts";
/// Field `data`: the MessagePack payload.
pub(crate) const DATA: &str = "data";
/// Field `h`: the headers.
pub(crate) const HEADERS: &str = "h";

/// The fields of an event entry, in the order tickbus writes them. A dead
/// letter and a re-drive carry these over, and only these.
pub(crate) const EVENT_FIELDS: [&str; 5] = [ID, SRC, TS, DATA, HEADERS];

/// Field `due`, on an entry that was scheduled (`DurableTopic::publish_at`):
/// when it was due, ms since the Unix epoch, decimal. Not one of the event's
/// fields: the reader delivers such an entry even to the instance that
/// published it (its subscribers did not see it at publish time).
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // only a live bus schedules
pub(crate) const DUE: &str = "due";

/// Whether `name` is one of the [`EVENT_FIELDS`]: what a dead letter copies
/// of the entry as it was, bytes and all, whether it parses or not.
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // dead letters
pub(crate) fn is_event_field(name: &[u8]) -> bool {
    EVENT_FIELDS.iter().any(|field| field.as_bytes() == name)
}

/// The headers of an event: (name, value), in order, repeated names kept.
pub(crate) type HeaderPairs = Vec<(String, String)>;

/// Bounds on what [`parse`] accepts and [`encode`] writes. Plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryLimits {
    /// The largest payload (`data`), in bytes: the codec's
    /// [`max_encoded_size`](CodecLimits::max_encoded_size).
    pub(crate) max_payload: usize,
    /// The most fields an entry may have, whatever their names. Default 64
    /// (an event has at most 5, a dead letter 13).
    pub(crate) max_fields: usize,
    /// The most headers. Default 64.
    pub(crate) max_headers: usize,
    /// The largest `h` field, in bytes. Default 64 KiB.
    pub(crate) max_headers_size: usize,
}

impl EntryLimits {
    /// The default of [`max_fields`](EntryLimits::max_fields).
    pub(crate) const DEFAULT_MAX_FIELDS: usize = 64;
    /// The default of [`max_headers`](EntryLimits::max_headers).
    pub(crate) const DEFAULT_MAX_HEADERS: usize = 64;
    /// The default of [`max_headers_size`](EntryLimits::max_headers_size).
    pub(crate) const DEFAULT_MAX_HEADERS_SIZE: usize = 64 * 1024;

    /// The limits of entries whose payloads are held to `codec`.
    pub(crate) fn new(codec: &CodecLimits) -> Self {
        EntryLimits {
            max_payload: codec.max_encoded_size,
            max_fields: Self::DEFAULT_MAX_FIELDS,
            max_headers: Self::DEFAULT_MAX_HEADERS,
            max_headers_size: Self::DEFAULT_MAX_HEADERS_SIZE,
        }
    }
}

impl Default for EntryLimits {
    fn default() -> Self {
        EntryLimits::new(&CodecLimits::default())
    }
}

/// The field list of one entry as the transport delivers it, borrowed: its
/// `(name, value)` pairs in the order Redis returned them.
pub(crate) trait Fields<'a>: Copy {
    /// How many pairs there are (checked against the limit before any is read).
    fn count(self) -> usize;
    /// The pairs, in order.
    fn pairs(self) -> impl Iterator<Item = (&'a [u8], &'a Bytes)>;
}

/// A field list held as pairs (`XREAD`, `XREADGROUP`, `XRANGE` replies
/// converted by the transport, the fuzz target).
impl<'a> Fields<'a> for &'a [(Bytes, Bytes)] {
    fn count(self) -> usize {
        self.len()
    }

    fn pairs(self) -> impl Iterator<Item = (&'a [u8], &'a Bytes)> {
        self.iter().map(|(name, value)| (name.as_ref(), value))
    }
}

/// One event entry, parsed. The payload is the transport's own buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    /// Field `id`.
    pub(crate) event_id: EventId,
    /// Field `src`.
    pub(crate) source: InstanceId,
    /// Field `ts`.
    pub(crate) timestamp_ns: u64,
    /// Field `data`, not decoded: the caller decodes it into its type.
    pub(crate) payload: &'a Bytes,
    /// Field `h` (empty when absent).
    pub(crate) headers: HeaderPairs,
}

/// Why a field list is not an event entry, or is one over the limits: one
/// variant, and one wording, per defect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryError {
    /// No fields at all: Redis returns an entry deleted or trimmed while it
    /// was still referenced (pending in a group) that way.
    NoFields,
    /// More fields than [`EntryLimits::max_fields`].
    TooManyFields { count: usize, limit: usize },
    /// One of `id`, `src`, `ts`, `data` is not there.
    Missing(&'static str),
    /// One of the event fields appears more than once.
    Repeated(&'static str),
    /// `id` or `src` is not a UUID.
    NotAUuid(&'static str),
    /// `ts` is not a decimal integer that fits 64 bits.
    BadTimestamp,
    /// `data` is larger than [`EntryLimits::max_payload`].
    PayloadTooLarge { size: usize, limit: usize },
    /// `h` is larger than [`EntryLimits::max_headers_size`].
    HeadersTooLarge { size: usize, limit: usize },
    /// `h` holds more headers than [`EntryLimits::max_headers`].
    TooManyHeaders { count: u64, limit: usize },
    /// `h` is not a MessagePack map of strings to strings.
    BadHeaders(HeaderDefect),
}

/// What is wrong inside an `h` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderDefect {
    /// It does not start with a map marker.
    NotAMap,
    /// The name or value of header `index` (from 0) is not a string.
    NotAString { index: usize, part: &'static str },
    /// The name or value of header `index` is a string that is not UTF-8.
    NotUtf8 { index: usize, part: &'static str },
    /// The map claims more than the field holds.
    Truncated,
    /// Bytes after the map.
    Trailing(usize),
}

impl EntryError {
    /// The kind of the [`Error`] this becomes: over a limit, or not an entry.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            EntryError::TooManyFields { .. }
            | EntryError::PayloadTooLarge { .. }
            | EntryError::HeadersTooLarge { .. }
            | EntryError::TooManyHeaders { .. } => ErrorKind::PayloadTooLarge,
            _ => ErrorKind::Malformed,
        }
    }

    /// As an [`Error`] whose message starts with `context` (which entry).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // replay
    pub(crate) fn at(&self, context: impl fmt::Display) -> Error {
        Error::new(self.kind(), format!("{context}: {self}"))
    }
}

impl From<EntryError> for Error {
    fn from(error: EntryError) -> Error {
        Error::new(error.kind(), error.to_string())
    }
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::NoFields => f.write_str(
                "not a tickbus entry: it has no fields (deleted or trimmed while referenced)",
            ),
            EntryError::TooManyFields { count, limit } => write!(
                f,
                "entry over the limits: {count} fields, the limit is {limit}"
            ),
            EntryError::Missing(name) => {
                write!(f, "not a tickbus entry: field `{name}` is missing")
            }
            EntryError::Repeated(name) => {
                write!(
                    f,
                    "not a tickbus entry: field `{name}` appears more than once"
                )
            }
            EntryError::NotAUuid(name) => {
                write!(f, "not a tickbus entry: field `{name}` is not a UUID")
            }
            EntryError::BadTimestamp => f.write_str(
                "not a tickbus entry: field `ts` is not a decimal integer \
                 (nanoseconds since the Unix epoch)",
            ),
            EntryError::PayloadTooLarge { size, limit } => write!(
                f,
                "entry over the limits: field `data` is {size} bytes, the limit is {limit} bytes"
            ),
            EntryError::HeadersTooLarge { size, limit } => write!(
                f,
                "entry over the limits: field `h` is {size} bytes, the limit is {limit} bytes"
            ),
            EntryError::TooManyHeaders { count, limit } => write!(
                f,
                "entry over the limits: field `h` holds {count} headers, the limit is {limit}"
            ),
            EntryError::BadHeaders(defect) => write!(
                f,
                "not a tickbus entry: field `h` is not a MessagePack map of strings: {defect}"
            ),
        }
    }
}

impl fmt::Display for HeaderDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderDefect::NotAMap => f.write_str("it is not a map"),
            HeaderDefect::NotAString { index, part } => {
                write!(f, "the {part} of header {index} is not a string")
            }
            HeaderDefect::NotUtf8 { index, part } => {
                write!(f, "the {part} of header {index} is not UTF-8")
            }
            HeaderDefect::Truncated => f.write_str("the map runs past the end of the field"),
            HeaderDefect::Trailing(n) => write!(f, "{n} bytes follow the map"),
        }
    }
}

impl std::error::Error for EntryError {}

// ---------------------------------------------------------------------------
// Parsing.

/// Parses one entry's field list.
///
/// In this order: the field count, then one pass that finds the five event
/// fields (a repeated one is an error), then `id`, `src`, `ts`, the payload's
/// size, and the headers (their size, their count, then their strings). The
/// payload is not decoded.
pub(crate) fn parse<'a>(
    fields: impl Fields<'a>,
    limits: &EntryLimits,
) -> Result<Entry<'a>, EntryError> {
    let count = fields.count();
    if count == 0 {
        return Err(EntryError::NoFields);
    }
    if count > limits.max_fields {
        return Err(EntryError::TooManyFields {
            count,
            limit: limits.max_fields,
        });
    }
    let mut found: [Option<&'a Bytes>; 5] = [None; 5];
    for (name, value) in fields.pairs() {
        let Some(at) = EVENT_FIELDS
            .iter()
            .position(|field| field.as_bytes() == name)
        else {
            continue; // not ours: ignored
        };
        if found[at].replace(value).is_some() {
            return Err(EntryError::Repeated(EVENT_FIELDS[at]));
        }
    }
    let [id, src, ts, data, headers] = found;
    let id = id.ok_or(EntryError::Missing(ID))?;
    let src = src.ok_or(EntryError::Missing(SRC))?;
    let ts = ts.ok_or(EntryError::Missing(TS))?;
    let payload = data.ok_or(EntryError::Missing(DATA))?;
    let event_id = parse_uuid(id).ok_or(EntryError::NotAUuid(ID))?;
    let source = parse_uuid(src).ok_or(EntryError::NotAUuid(SRC))?;
    let timestamp_ns = parse_decimal(ts).ok_or(EntryError::BadTimestamp)?;
    if payload.len() > limits.max_payload {
        return Err(EntryError::PayloadTooLarge {
            size: payload.len(),
            limit: limits.max_payload,
        });
    }
    let headers = match headers {
        Some(h) => parse_headers(h, limits)?,
        None => Vec::new(),
    };
    Ok(Entry {
        event_id: EventId::from_uuid(event_id),
        source: InstanceId::from_uuid(source),
        timestamp_ns,
        payload,
        headers,
    })
}

/// A UUID in any of the text forms the `uuid` crate reads (tickbus writes the
/// hyphenated one). Never allocates; long input is refused by its length.
pub(crate) fn parse_uuid(text: &[u8]) -> Option<uuid::Uuid> {
    uuid::Uuid::try_parse_ascii(text).ok()
}

/// ASCII digits only (no sign, no spaces), at least one, fitting a `u64`.
fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0_u64, |acc, &byte| {
        let digit = byte.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// The headers of an `h` field: its size, then the map's claimed length, are
/// checked before the list is allocated.
fn parse_headers(field: &[u8], limits: &EntryLimits) -> Result<HeaderPairs, EntryError> {
    if field.len() > limits.max_headers_size {
        return Err(EntryError::HeadersTooLarge {
            size: field.len(),
            limit: limits.max_headers_size,
        });
    }
    let bad = EntryError::BadHeaders;
    let mut rest = field;
    let count = rmp::decode::read_map_len(&mut rest).map_err(|error| match error {
        rmp::decode::ValueReadError::InvalidDataRead(_) => bad(HeaderDefect::Truncated),
        _ => bad(HeaderDefect::NotAMap),
    })?;
    if count as usize > limits.max_headers {
        return Err(EntryError::TooManyHeaders {
            count: u64::from(count),
            limit: limits.max_headers,
        });
    }
    // Each header takes at least two bytes (two empty fixstrs).
    if count as usize > rest.len() / 2 {
        return Err(bad(HeaderDefect::Truncated));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for index in 0..count as usize {
        let name = read_str(&mut rest, index, "name")?;
        let value = read_str(&mut rest, index, "value")?;
        headers.push((name.to_owned(), value.to_owned()));
    }
    if !rest.is_empty() {
        return Err(bad(HeaderDefect::Trailing(rest.len())));
    }
    Ok(headers)
}

fn read_str<'a>(
    rest: &mut &'a [u8],
    index: usize,
    part: &'static str,
) -> Result<&'a str, EntryError> {
    use rmp::decode::DecodeStringError as E;
    match rmp::decode::read_str_from_slice(*rest) {
        Ok((text, tail)) => {
            *rest = tail;
            Ok(text)
        }
        Err(E::InvalidUtf8(..)) => Err(EntryError::BadHeaders(HeaderDefect::NotUtf8 {
            index,
            part,
        })),
        Err(E::TypeMismatch(_)) => Err(EntryError::BadHeaders(HeaderDefect::NotAString {
            index,
            part,
        })),
        Err(E::BufferSizeTooSmall(_) | E::InvalidMarkerRead(_) | E::InvalidDataRead(_)) => {
            Err(EntryError::BadHeaders(HeaderDefect::Truncated))
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding.

/// A UUID as the hyphenated lower-case text of the `id` and `src` fields.
pub(crate) fn uuid_text(uuid: &uuid::Uuid) -> [u8; 36] {
    let mut text = [0_u8; 36];
    uuid.hyphenated().encode_lower(&mut text);
    text
}

/// The `src` field of an instance: made once per bus and shared by its
/// entries (no copy per event).
pub(crate) fn source_field(instance: InstanceId) -> Bytes {
    Bytes::copy_from_slice(&uuid_text(instance.as_uuid()))
}

/// The fields of one event entry, encoded, as an `XADD` writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EncodedEntry {
    /// Field `id`, hyphenated UUID text.
    pub(crate) id: [u8; 36],
    /// Field `src` ([`source_field`]).
    pub(crate) src: Bytes,
    /// Field `ts`, written in decimal.
    pub(crate) ts: u64,
    /// Field `data`.
    pub(crate) data: Bytes,
    /// Field `h`, a MessagePack map; `None` (no field) when there are no headers.
    pub(crate) headers: Option<Bytes>,
}

impl EncodedEntry {
    /// An entry without headers, whose payload has passed [`check_payload`].
    pub(crate) fn new(event_id: EventId, src: Bytes, timestamp_ns: u64, data: Bytes) -> Self {
        EncodedEntry {
            id: uuid_text(event_id.as_uuid()),
            src,
            ts: timestamp_ns,
            data,
            headers: None,
        }
    }

    /// The `(name, value)` pairs, in wire order, `h` only when there are headers.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'static str, Bytes)> {
        let [id, src, ts, data, h] = self.values();
        EVENT_FIELDS
            .into_iter()
            .zip([id, src, ts, data, h])
            .filter(|(name, value)| *name != HEADERS || !value.is_empty())
    }

    /// The values of `id`, `src`, `ts`, `data` and `h`, in that order; `h` is
    /// empty when there are no headers (an encoded map never is).
    pub(crate) fn values(&self) -> [Bytes; 5] {
        [
            Bytes::copy_from_slice(&self.id),
            self.src.clone(),
            Bytes::from(self.ts.to_string()),
            self.data.clone(),
            self.headers.clone().unwrap_or_default(),
        ]
    }
}

/// A scheduled entry as the move script reads it: a MessagePack array of the
/// entry's field names and values, all as `str` holding the raw bytes (Redis's
/// Lua `cmsgpack` of Redis 7.0 refuses `bin`, and does not check `str` for
/// UTF-8); the script adds [`DUE`].
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // only a live bus schedules
pub(crate) fn encode_scheduled(entry: &EncodedEntry) -> Bytes {
    let fields: Vec<(&'static str, Bytes)> = entry.fields().collect();
    let size = fields
        .iter()
        .map(|(name, value)| name.len() + value.len() + 10)
        .sum::<usize>()
        + 5;
    let mut out = Vec::with_capacity(size);
    // Writing into a Vec cannot fail, and the lengths fit in u32 (the entry
    // limits hold the payload and headers far below 4 GiB).
    let _ = rmp::encode::write_array_len(&mut out, (fields.len() * 2) as u32);
    for (name, value) in &fields {
        let _ = rmp::encode::write_str(&mut out, name);
        let _ = rmp::encode::write_str_len(&mut out, value.len() as u32);
        out.extend_from_slice(value);
    }
    Bytes::from(out)
}

/// Refuses a payload larger than the limit, before it is queued.
fn check_payload(data: &[u8], limits: &EntryLimits) -> Result<(), EntryError> {
    if data.len() > limits.max_payload {
        return Err(EntryError::PayloadTooLarge {
            size: data.len(),
            limit: limits.max_payload,
        });
    }
    Ok(())
}

/// Encodes an event entry: the payload's size and the headers' count and size
/// are checked first, then `h` is written into one buffer of its exact size.
pub(crate) fn encode(
    event_id: EventId,
    src: Bytes,
    timestamp_ns: u64,
    data: Bytes,
    headers: &[(String, String)],
    limits: &EntryLimits,
) -> Result<EncodedEntry, EntryError> {
    check_payload(&data, limits)?;
    let mut entry = EncodedEntry::new(event_id, src, timestamp_ns, data);
    entry.headers = encode_headers(headers, limits)?;
    Ok(entry)
}

/// The `h` field of `headers`, `None` when there are none.
pub(crate) fn encode_headers(
    headers: &[(String, String)],
    limits: &EntryLimits,
) -> Result<Option<Bytes>, EntryError> {
    if headers.is_empty() {
        return Ok(None);
    }
    if headers.len() > limits.max_headers {
        return Err(EntryError::TooManyHeaders {
            count: headers.len() as u64,
            limit: limits.max_headers,
        });
    }
    let size = headers
        .iter()
        .fold(map_marker_len(headers.len()), |size, (name, value)| {
            size.saturating_add(str_len(name))
                .saturating_add(str_len(value))
        });
    if size > limits.max_headers_size {
        return Err(EntryError::HeadersTooLarge {
            size,
            limit: limits.max_headers_size,
        });
    }
    let mut out = Vec::with_capacity(size);
    // Writing into a Vec cannot fail; lengths over u32 were refused above (the
    // size limit is far below 4 GiB in any sane configuration, and saturates).
    let _ = rmp::encode::write_map_len(&mut out, headers.len() as u32);
    for (name, value) in headers {
        let _ = rmp::encode::write_str(&mut out, name);
        let _ = rmp::encode::write_str(&mut out, value);
    }
    Ok(Some(Bytes::from(out)))
}

/// Bytes of a map marker with its length.
fn map_marker_len(n: usize) -> usize {
    match n {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    }
}

/// Bytes of `text` as a MessagePack string, marker included.
fn str_len(text: &str) -> usize {
    let marker = match text.len() {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    };
    marker + text.len()
}

// ---------------------------------------------------------------------------
// Headers in other formats.

/// Headers as a map of names to values, in order and repeats kept, through
/// serde (`#[serde(with = "wire::headers_as_map")]`): the recordings' form of
/// `h`, in MessagePack and in JSON. Reading refuses more than
/// [`EntryLimits::DEFAULT_MAX_HEADERS`], as the parser does.
pub(crate) mod headers_as_map {
    use std::fmt;

    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use super::{EntryLimits, HeaderPairs};

    pub(crate) fn serialize<S: Serializer>(
        headers: &HeaderPairs,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(headers.iter().map(|(name, value)| (name, value)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<HeaderPairs, D::Error> {
        struct HeadersVisitor;

        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = HeaderPairs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to values, both strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderPairs, A::Error> {
                let limit = EntryLimits::DEFAULT_MAX_HEADERS;
                let mut headers = Vec::with_capacity(map.size_hint().unwrap_or(0).min(limit));
                while let Some(header) = map.next_entry::<String, String>()? {
                    if headers.len() == limit {
                        return Err(de::Error::custom(format_args!("more than {limit} headers")));
                    }
                    headers.push(header);
                }
                Ok(headers)
            }
        }

        deserializer.deserialize_map(HeadersVisitor)
    }
}

// ---------------------------------------------------------------------------
// Fuzzing entry point.

/// Entry point for the cargo-fuzz target `entry` in `fuzz/`; not part of the API.
#[doc(hidden)]
pub(crate) mod fuzz {
    use bytes::Bytes;

    use super::{EntryLimits, EVENT_FIELDS};

    /// Turns `data` into the field list of one entry, as the reader sees it,
    /// and parses it with the default limits. When it parses: the payload is
    /// a slice of the input, and the entry encodes and parses back the same.
    ///
    /// The input is a sequence of fields, each `name_len (1 byte)`, the name,
    /// `value_len (2 bytes, little-endian)`, the value; a `name_len` with its
    /// high bit set names one of the event fields (`id`, `src`, `ts`, `data`,
    /// `h`, by its low bits modulo 5) without name bytes. A last field cut
    /// short is taken as far as it goes.
    ///
    /// # Panics
    ///
    /// When that round trip fails: that is the bug the fuzzer looks for,
    /// besides panics inside the parser.
    pub fn parse_entry(data: &[u8]) {
        let fields = fields_of(data);
        let limits = EntryLimits::default();
        let Ok(entry) = super::parse(&fields[..], &limits) else {
            return;
        };
        assert!(
            fields
                .iter()
                .any(|(_, value)| std::ptr::eq(value, entry.payload)),
            "the payload is the input's own buffer"
        );
        let encoded = super::encode(
            entry.event_id,
            super::source_field(entry.source),
            entry.timestamp_ns,
            entry.payload.clone(),
            &entry.headers,
            &limits,
        )
        .expect("a parsed entry encodes within the limits it was parsed with");
        let again: Vec<(Bytes, Bytes)> = encoded
            .fields()
            .map(|(name, value)| (Bytes::from_static(name.as_bytes()), value))
            .collect();
        let back = super::parse(&again[..], &limits).expect("an encoded entry parses");
        assert_eq!(back, entry, "entry round trip");
    }

    /// The field list `data` describes (see [`parse_entry`]).
    pub(super) fn fields_of(data: &[u8]) -> Vec<(Bytes, Bytes)> {
        let mut fields = Vec::new();
        let mut rest = data;
        while let Some((&name_len, tail)) = rest.split_first() {
            rest = tail;
            let name = if name_len & 0x80 != 0 {
                Bytes::from_static(EVENT_FIELDS[usize::from(name_len & 0x7f) % 5].as_bytes())
            } else {
                let (name, tail) = rest.split_at(usize::from(name_len).min(rest.len()));
                rest = tail;
                Bytes::copy_from_slice(name)
            };
            let len = match rest {
                [lo, hi, tail @ ..] => {
                    rest = tail;
                    usize::from(u16::from_le_bytes([*lo, *hi]))
                }
                _ => {
                    rest = &[];
                    0
                }
            };
            let (value, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            fields.push((name, Bytes::copy_from_slice(value)));
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = "0190b2a4-1111-7000-8000-000000000001";
    const SOURCE: &str = "0190b2a4-2222-4000-8000-0000000000ff";

    fn pair(name: &str, value: &[u8]) -> (Bytes, Bytes) {
        (
            Bytes::copy_from_slice(name.as_bytes()),
            Bytes::copy_from_slice(value),
        )
    }

    /// A valid entry's fields: `{"k": "v"}` as headers, `42` as payload.
    fn valid() -> Vec<(Bytes, Bytes)> {
        vec![
            pair("id", EVENT.as_bytes()),
            pair("src", SOURCE.as_bytes()),
            pair("ts", b"1700000000123456789"),
            pair("data", &[0x2a]),
            pair("h", &[0x81, 0xa1, b'k', 0xa1, b'v']),
        ]
    }

    fn with(name: &str, value: &[u8]) -> Vec<(Bytes, Bytes)> {
        let mut fields = valid();
        match fields
            .iter_mut()
            .find(|(field, _)| field == name.as_bytes())
        {
            Some(field) => field.1 = Bytes::copy_from_slice(value),
            None => fields.push(pair(name, value)),
        }
        fields
    }

    fn without(name: &str) -> Vec<(Bytes, Bytes)> {
        let mut fields = valid();
        fields.retain(|(field, _)| field != name.as_bytes());
        fields
    }

    fn parse_err(fields: &[(Bytes, Bytes)]) -> EntryError {
        parse(fields, &EntryLimits::default()).unwrap_err()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderPairs {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn a_valid_entry_parses_and_borrows_its_payload() {
        let fields = valid();
        let entry = parse(&fields[..], &EntryLimits::default()).unwrap();
        assert_eq!(entry.event_id.to_string(), EVENT);
        assert_eq!(entry.source.to_string(), SOURCE);
        assert_eq!(entry.timestamp_ns, 1_700_000_000_123_456_789);
        assert_eq!(entry.headers, headers(&[("k", "v")]));
        // The payload is the input's own `Bytes` (a slice of its buffer), not a copy.
        assert!(std::ptr::eq(entry.payload, &fields[3].1));
        assert_eq!(entry.payload.as_ptr(), fields[3].1.as_ptr());
        // Without `h`: no headers, and nothing allocated for them.
        let fields = without("h");
        let entry = parse(&fields[..], &EntryLimits::default()).unwrap();
        assert!(entry.headers.is_empty() && entry.headers.capacity() == 0);
    }

    #[test]
    fn fields_are_found_by_name_in_any_order_and_others_are_ignored() {
        let mut fields = valid();
        fields.reverse();
        // A dead letter's own fields ride along.
        fields.insert(2, pair("reason", b"decode"));
        fields.push(pair("stream_id", b"1-0"));
        let entry = parse(&fields[..], &EntryLimits::default()).unwrap();
        assert_eq!(entry.payload.as_ref(), [0x2a]);
        // The other UUID text forms the `uuid` crate reads are accepted.
        let simple = EVENT.replace('-', "");
        let upper = SOURCE.to_uppercase();
        let fields = with("id", simple.as_bytes());
        let fields = {
            let mut fields = fields;
            fields[1].1 = Bytes::from(upper);
            fields
        };
        let entry = parse(&fields[..], &EntryLimits::default()).unwrap();
        assert_eq!(entry.event_id.to_string(), EVENT);
        assert_eq!(entry.source.to_string(), SOURCE);
    }

    #[test]
    fn every_defect_has_its_error() {
        let limits = EntryLimits::default();
        assert_eq!(parse(&[][..], &limits), Err(EntryError::NoFields));
        for name in [ID, SRC, TS, DATA] {
            assert_eq!(
                parse_err(&without(name)),
                EntryError::Missing(name),
                "{name}"
            );
        }
        for name in EVENT_FIELDS {
            let mut fields = valid();
            let again = fields
                .iter()
                .find(|(field, _)| field == name.as_bytes())
                .unwrap()
                .clone();
            fields.push(again);
            assert_eq!(parse_err(&fields), EntryError::Repeated(name), "{name}");
        }
        for bad in [&b"not-a-uuid"[..], b"", &[0xff; 36], &[b'a'; 4096]] {
            assert_eq!(parse_err(&with("id", bad)), EntryError::NotAUuid(ID));
            assert_eq!(parse_err(&with("src", bad)), EntryError::NotAUuid(SRC));
        }
        for bad in [
            &b"x"[..],
            b"",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1.5",
            b"18446744073709551616", // u64::MAX + 1
            &[b'9'; 400],
        ] {
            assert_eq!(
                parse_err(&with("ts", bad)),
                EntryError::BadTimestamp,
                "{bad:?}"
            );
        }
        let fields = with("ts", b"18446744073709551615");
        let entry = parse(&fields[..], &limits).unwrap();
        assert_eq!(entry.timestamp_ns, u64::MAX);
        let bad_h = |h: &[u8]| parse_err(&with("h", h));
        assert_eq!(bad_h(&[]), EntryError::BadHeaders(HeaderDefect::NotAMap));
        assert_eq!(
            bad_h(&[0x91, 0xa1, b'k']),
            EntryError::BadHeaders(HeaderDefect::NotAMap)
        );
        assert_eq!(
            bad_h(&[0x81, 0x01, 0xa1, b'v']),
            EntryError::BadHeaders(HeaderDefect::NotAString {
                index: 0,
                part: "name"
            })
        );
        assert_eq!(
            bad_h(&[0x82, 0xa1, b'k', 0xa1, b'v', 0xa1, b'k', 0xc0]),
            EntryError::BadHeaders(HeaderDefect::NotAString {
                index: 1,
                part: "value"
            })
        );
        assert_eq!(
            bad_h(&[0x81, 0xa1, b'k', 0xa2, 0xff, 0xfe]),
            EntryError::BadHeaders(HeaderDefect::NotUtf8 {
                index: 0,
                part: "value"
            })
        );
        assert_eq!(
            bad_h(&[0x81, 0xa1, b'k', 0xa5, b'v']),
            EntryError::BadHeaders(HeaderDefect::Truncated)
        );
        assert_eq!(
            bad_h(&[0xde, 0x00]),
            EntryError::BadHeaders(HeaderDefect::Truncated)
        );
        assert_eq!(
            bad_h(&[0x82, 0xa1, b'k', 0xa1, b'v']),
            EntryError::BadHeaders(HeaderDefect::Truncated)
        );
        assert_eq!(
            bad_h(&[0x81, 0xa1, b'k', 0xa1, b'v', 0xc0, 0xc0]),
            EntryError::BadHeaders(HeaderDefect::Trailing(2))
        );
        // An empty map is no headers.
        assert!(parse(&with("h", &[0x80])[..], &limits)
            .unwrap()
            .headers
            .is_empty());
    }

    #[test]
    fn limits_are_checked_on_lengths_first() {
        let small = EntryLimits {
            max_payload: 4,
            max_fields: 6,
            max_headers: 2,
            max_headers_size: 16,
        };
        assert!(parse(&with("data", &[0x90; 4])[..], &small).is_ok());
        assert_eq!(
            parse(&with("data", &[0x90; 5])[..], &small),
            Err(EntryError::PayloadTooLarge { size: 5, limit: 4 })
        );
        // Too many fields is refused before any is looked at, even a bad one.
        let mut fields = with("id", b"bad");
        fields.extend([pair("a", b""), pair("b", b"")]);
        assert_eq!(
            parse(&fields[..], &small),
            Err(EntryError::TooManyFields { count: 7, limit: 6 })
        );
        // `h`: its size first, whatever it holds.
        assert_eq!(
            parse(&with("h", &[0xc1; 17])[..], &small),
            Err(EntryError::HeadersTooLarge {
                size: 17,
                limit: 16
            })
        );
        // Then the count the map claims, before the list is allocated: a map32
        // of 4 Gi headers in 5 bytes.
        assert_eq!(
            parse(
                &with("h", &[0xdf, 0xff, 0xff, 0xff, 0xff])[..],
                &EntryLimits::default()
            ),
            Err(EntryError::TooManyHeaders {
                count: u64::from(u32::MAX),
                limit: 64
            })
        );
        let three = [0x83, 0xa0, 0xa0, 0xa0, 0xa0, 0xa0, 0xa0];
        assert_eq!(
            parse(&with("h", &three)[..], &small),
            Err(EntryError::TooManyHeaders { count: 3, limit: 2 })
        );
        // A claim within the count limit but beyond the bytes there.
        let claims = [0x8f, 0xa0, 0xa0];
        assert_eq!(
            parse(&with("h", &claims)[..], &EntryLimits::default()),
            Err(EntryError::BadHeaders(HeaderDefect::Truncated))
        );
    }

    #[test]
    fn each_defect_has_its_own_wording_and_kind() {
        let defects = [
            EntryError::NoFields,
            EntryError::TooManyFields { count: 9, limit: 8 },
            EntryError::Missing(ID),
            EntryError::Repeated(ID),
            EntryError::NotAUuid(ID),
            EntryError::BadTimestamp,
            EntryError::PayloadTooLarge { size: 9, limit: 8 },
            EntryError::HeadersTooLarge { size: 9, limit: 8 },
            EntryError::TooManyHeaders { count: 9, limit: 8 },
            EntryError::BadHeaders(HeaderDefect::NotAMap),
        ];
        let words: std::collections::HashSet<String> =
            defects.iter().map(ToString::to_string).collect();
        assert_eq!(words.len(), defects.len(), "{words:#?}");
        assert_eq!(
            EntryError::Missing(DATA).to_string(),
            "not a tickbus entry: field `data` is missing"
        );
        for defect in &defects {
            let error = Error::from(defect.clone());
            assert_eq!(error.message(), defect.to_string());
            let expected = if defect.to_string().starts_with("entry over the limits") {
                ErrorKind::PayloadTooLarge
            } else {
                assert!(defect.to_string().starts_with("not a tickbus entry: "));
                ErrorKind::Malformed
            };
            assert_eq!(error.kind(), expected, "{defect}");
        }
        let at = EntryError::BadTimestamp.at("topic a:b, entry 1-0");
        assert!(at
            .message()
            .starts_with("topic a:b, entry 1-0: not a tickbus entry: field `ts`"));
    }

    #[test]
    fn an_encoded_entry_parses_back_the_same() {
        let limits = EntryLimits::default();
        let event_id = EventId::from_uuid(uuid::Uuid::parse_str(EVENT).unwrap());
        let source = InstanceId::from_uuid(uuid::Uuid::parse_str(SOURCE).unwrap());
        for headers in [
            headers(&[]),
            headers(&[("trace", "abc")]),
            // Order and repeated names kept; long and non-ASCII strings.
            headers(&[("b", "1"), ("a", "2"), ("b", "3"), ("ü", &"x".repeat(300))]),
        ] {
            let data = Bytes::from_static(&[0x92, 0x01, 0x02]);
            let encoded = encode(
                event_id,
                source_field(source),
                7,
                data.clone(),
                &headers,
                &limits,
            )
            .unwrap();
            let fields: Vec<(Bytes, Bytes)> = encoded
                .fields()
                .map(|(name, value)| (Bytes::from_static(name.as_bytes()), value))
                .collect();
            assert_eq!(fields.len(), if headers.is_empty() { 4 } else { 5 });
            let entry = parse(&fields[..], &limits).unwrap();
            assert_eq!(
                (entry.event_id, entry.source, entry.timestamp_ns),
                (event_id, source, 7)
            );
            assert_eq!(entry.payload, &data);
            assert_eq!(entry.headers, headers);
        }
    }

    #[test]
    fn the_encoded_fields_are_the_documented_layout() {
        let event_id = EventId::from_uuid(uuid::Uuid::parse_str(EVENT).unwrap());
        let source = InstanceId::from_uuid(uuid::Uuid::parse_str(SOURCE).unwrap());
        let encoded = encode(
            event_id,
            source_field(source),
            1_700_000_000_123_456_789,
            Bytes::from_static(&[0x2a]),
            &headers(&[("trace", "abc")]),
            &EntryLimits::default(),
        )
        .unwrap();
        let fields: Vec<(&str, Vec<u8>)> = encoded
            .fields()
            .map(|(name, value)| (name, value.to_vec()))
            .collect();
        assert_eq!(
            fields,
            [
                ("id", EVENT.as_bytes().to_vec()),
                ("src", SOURCE.as_bytes().to_vec()),
                ("ts", b"1700000000123456789".to_vec()),
                ("data", vec![0x2a]),
                // {"trace": "abc"}, as msgpack-python's packb writes it.
                (
                    "h",
                    vec![0x81, 0xa5, b't', b'r', b'a', b'c', b'e', 0xa3, b'a', b'b', b'c']
                ),
            ]
        );
        // The script's positional values: `h` empty when there are none.
        let plain = EncodedEntry::new(event_id, source_field(source), 1, Bytes::new());
        assert!(plain.values()[4].is_empty());
        assert_eq!(plain.fields().count(), 4);
    }

    #[test]
    fn the_encoder_refuses_what_the_parser_would() {
        let limits = EntryLimits {
            max_payload: 2,
            max_headers: 2,
            max_headers_size: 12,
            ..EntryLimits::default()
        };
        let id = EventId::from_uuid(uuid::Uuid::from_u128(1));
        let src = source_field(InstanceId::from_uuid(uuid::Uuid::from_u128(2)));
        let enc = |data: &'static [u8], headers: &[(&str, &str)]| {
            encode(
                id,
                src.clone(),
                0,
                Bytes::from_static(data),
                &self::headers(headers),
                &limits,
            )
            .map(|_| ())
        };
        assert_eq!(enc(b"ab", &[]), Ok(()));
        assert_eq!(
            enc(b"abc", &[]),
            Err(EntryError::PayloadTooLarge { size: 3, limit: 2 })
        );
        assert_eq!(
            enc(b"", &[("a", ""), ("b", ""), ("c", "")]),
            Err(EntryError::TooManyHeaders { count: 3, limit: 2 })
        );
        // 1 (map) + 2 + 9 = 12 bytes: at the limit; one more byte is over it.
        assert_eq!(enc(b"", &[("a", "12345678")]), Ok(()));
        assert_eq!(
            enc(b"", &[("a", "123456789")]),
            Err(EntryError::HeadersTooLarge {
                size: 13,
                limit: 12
            })
        );
        // The size computed up front is the size written.
        for (name, value) in [
            ("", ""),
            ("k", &"v".repeat(31)),
            ("k", &"v".repeat(32)),
            ("k", &"v".repeat(70_000)),
        ] {
            let headers = self::headers(&[(name, value)]);
            let bytes = encode_headers(
                &headers,
                &EntryLimits {
                    max_headers_size: usize::MAX,
                    ..limits
                },
            )
            .unwrap()
            .unwrap();
            let expected = map_marker_len(1) + str_len(name) + str_len(value);
            assert_eq!(bytes.len(), expected);
        }
    }

    #[test]
    fn the_fuzz_entry_point_survives_its_seeds_and_their_truncations() {
        let dir = format!("{}/fuzz/seeds/entry", env!("CARGO_MANIFEST_DIR"));
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|entry| entry.unwrap().path())
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 3, "{seeds:?}");
        let mut parsed = 0;
        for path in &seeds {
            let bytes = std::fs::read(path).unwrap();
            let fields = fuzz::fields_of(&bytes);
            // The seeds start from entries that parse (or name their defect).
            let name = path.file_name().unwrap().to_string_lossy();
            let result = parse(&fields[..], &EntryLimits::default());
            if name.starts_with("valid") {
                assert!(result.is_ok(), "{name}: {result:?}");
                parsed += 1;
            } else {
                assert!(result.is_err(), "{name}");
            }
            for cut in 0..=bytes.len() {
                fuzz::parse_entry(&bytes[..cut]);
            }
        }
        assert!(parsed >= 2);
    }
}
