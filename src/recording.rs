//! Recorded events, and their files: a range exported from Redis can be
//! imported again, so that a backtest runs with no Redis at all.
//!
//! Two formats ([`RecordingFormat`]):
//!
//! * **MessagePack**: one map per event, concatenated (`{"v": 1, "topic", "stream_id",
//!   "event_id", "source", "ts", "data"}`, the payload as `bin`, and `"h"`, the
//!   headers as a map of strings, when the event has some). Exact: an import
//!   gives back the same events, payload bytes and headers included.
//! * **JSON lines**, for people: one object per line, the payload decoded from
//!   MessagePack and shown as JSON under `"payload"` (headers, if any, under
//!   `"headers"`, an object). An import encodes it to
//!   MessagePack again: the same values, though not always the same bytes (a
//!   `bin` comes back as an array of numbers, integer widths may change), so
//!   prefer MessagePack for backtests.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecLimits};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{EventId, InstanceId, StreamId, TopicName};
use crate::wire::{self, HeaderPairs};

/// One recorded event: where it was, and its MessagePack payload, decoded with
/// [`decode`](ReplayedEvent::decode) into the topic's type. Yielded by a replay
/// from Redis and by [`import`], consumed by a [`Backtest`](crate::backtest::Backtest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedEvent {
    /// Its topic.
    pub topic: TopicName,
    /// Its entry in the topic's stream.
    pub stream_id: StreamId,
    /// The event id.
    pub event_id: EventId,
    /// The instance that published it.
    pub source: InstanceId,
    /// Publish time, ns since the Unix epoch (the publisher's clock).
    pub timestamp_ns: u64,
    pub(crate) data: Bytes,
    pub(crate) headers: HeaderPairs,
}

impl ReplayedEvent {
    /// A recorded event from its parts (to build recordings by hand, for tests
    /// and synthetic backtests). `payload` is MessagePack: see
    /// [`codec::encode_payload`].
    pub fn new(
        topic: TopicName,
        stream_id: StreamId,
        event_id: EventId,
        source: InstanceId,
        timestamp_ns: u64,
        payload: Vec<u8>,
    ) -> Self {
        ReplayedEvent {
            topic,
            stream_id,
            event_id,
            source,
            timestamp_ns,
            data: Bytes::from(payload),
            headers: Vec::new(),
        }
    }

    /// The same event with these headers (name, value), in order.
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{EventId, InstanceId, StreamId, TopicName};
    /// use tickbus::recording::ReplayedEvent;
    ///
    /// let event = ReplayedEvent::new(
    ///     TopicName::new("execution:fill")?,
    ///     StreamId::new(1, 0),
    ///     EventId::from_uuid(uuid::Uuid::from_u128(7)),
    ///     InstanceId::from_uuid(uuid::Uuid::from_u128(9)),
    ///     42,
    ///     vec![0xc0],
    /// )
    /// .with_headers(vec![("trace".into(), "abc".into())]);
    /// assert_eq!(event.headers(), [("trace".to_string(), "abc".to_string())]);
    /// # Ok::<(), tickbus::Error>(())
    /// ```
    #[must_use]
    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers = headers;
        self
    }

    /// The event's headers (field `h` of its stream entry), in order, repeated
    /// names kept; empty when it has none.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The MessagePack payload.
    pub fn payload(&self) -> &[u8] {
        &self.data
    }

    /// The payload decoded as `T` (with the default codec limits).
    ///
    /// # Errors
    ///
    /// The codec's errors: `Malformed`, `WrongShape`, `PayloadTooLarge`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        codec::decode_payload(&self.data, &CodecLimits::default())
    }
}

/// The file format of a recording.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RecordingFormat {
    /// Concatenated MessagePack maps, exact (the default).
    #[default]
    MessagePack,
    /// One JSON object per line, payloads shown as JSON.
    JsonLines,
}

/// The format version written in every record (`"v"`).
const VERSION: u8 = 1;

/// Largest record read back: the codec's payload limit plus room for the rest.
const MAX_RECORD: usize = CodecLimits::DEFAULT_MAX_ENCODED_SIZE + 4096;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a> {
    v: u8,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    stream_id: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    ts: u64,
    #[serde(with = "serde_bytes", borrow)]
    data: Cow<'a, [u8]>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "wire::headers_as_map"
    )]
    h: HeaderPairs,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    v: u8,
    topic: String,
    stream_id: String,
    event_id: String,
    source: String,
    ts: u64,
    payload: serde_json::Value,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "wire::headers_as_map"
    )]
    headers: HeaderPairs,
}

fn io_error(what: &str, error: std::io::Error) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {error}")).with_source(error)
}

/// Writes `events` to `writer` in `format`; returns how many were written.
/// Stops at the first error item of `events` (a replay's foreign entry, say) and
/// returns it: a recording never silently lacks an event.
///
/// # Errors
///
/// The first error item of `events`; `Unavailable` for an I/O error; for JSON
/// lines, `Malformed` for a payload that is not MessagePack.
///
/// # Examples
///
/// ```
/// use tickbus::{codec, EventId, InstanceId, StreamId, TopicName};
/// use tickbus::recording::{export, import, RecordingFormat, ReplayedEvent};
///
/// let payload = codec::encode_payload(&(42_u64, 2.5_f64), &Default::default())?;
/// let event = ReplayedEvent::new(
///     TopicName::new("execution:fill")?,
///     StreamId::new(1_700_000_000_000, 0),
///     EventId::from_uuid(uuid::Uuid::from_u128(7)),
///     InstanceId::from_uuid(uuid::Uuid::from_u128(9)),
///     1_700_000_000_000_000_000,
///     payload,
/// );
/// for format in [RecordingFormat::MessagePack, RecordingFormat::JsonLines] {
///     let mut file = Vec::new();
///     export(&mut file, format, [Ok(event.clone())])?;
///     let back: Vec<_> = import(&file[..], format).collect::<Result<_, _>>()?;
///     assert_eq!(back[0].decode::<(u64, f64)>()?, (42, 2.5));
/// }
/// # Ok::<(), tickbus::Error>(())
/// ```
pub fn export<W, I>(writer: W, format: RecordingFormat, events: I) -> Result<u64>
where
    W: Write,
    I: IntoIterator<Item = Result<ReplayedEvent>>,
{
    let mut writer = std::io::BufWriter::new(writer);
    let mut written = 0;
    for event in events {
        let event = event?;
        let stream_id = event.stream_id.to_string();
        let event_id = event.event_id.to_string();
        let source = event.source.to_string();
        match format {
            RecordingFormat::MessagePack => {
                let record = Record {
                    v: VERSION,
                    topic: Cow::Borrowed(event.topic.as_str()),
                    stream_id: Cow::Owned(stream_id),
                    event_id: Cow::Owned(event_id),
                    source: Cow::Owned(source),
                    ts: event.timestamp_ns,
                    data: Cow::Borrowed(&event.data),
                    h: event.headers.clone(),
                };
                rmp_serde::encode::write_named(&mut writer, &record).map_err(|error| {
                    Error::new(ErrorKind::Encode, format!("cannot write a record: {error}"))
                })?;
            }
            RecordingFormat::JsonLines => {
                let payload: serde_json::Value =
                    crate::json::payload_json(&event.data).map_err(|error| {
                        Error::new(
                            error.kind(),
                            format!(
                                "topic {}, entry {}: the payload cannot be shown as JSON: {error}",
                                event.topic, event.stream_id
                            ),
                        )
                    })?;
                let record = JsonRecord {
                    v: VERSION,
                    topic: event.topic.to_string(),
                    stream_id,
                    event_id,
                    source,
                    ts: event.timestamp_ns,
                    payload,
                    headers: event.headers.clone(),
                };
                serde_json::to_writer(&mut writer, &record).map_err(|error| {
                    Error::new(ErrorKind::Encode, format!("cannot write a record: {error}"))
                })?;
                writer
                    .write_all(b"\n")
                    .map_err(|error| io_error("cannot write a record", error))?;
            }
        }
        written += 1;
    }
    writer
        .flush()
        .map_err(|error| io_error("cannot write the recording", error))?;
    Ok(written)
}

/// Reads a recording written by [`export`]: an iterator of events, in the
/// file's order. A record that cannot be read yields an error item naming its
/// position; the iterator ends after an I/O error or a record that breaks the
/// framing (nothing after it can be trusted).
pub fn import<R: Read>(reader: R, format: RecordingFormat) -> Import<R> {
    Import {
        reader: BufReader::with_capacity(64 * 1024, reader),
        format,
        buffer: Vec::new(),
        record: 0,
        ended: false,
    }
}

/// The events of a recording file ([`import`]).
pub struct Import<R> {
    reader: BufReader<R>,
    format: RecordingFormat,
    buffer: Vec<u8>,
    record: u64,
    ended: bool,
}

impl<R> std::fmt::Debug for Import<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import")
            .field("format", &self.format)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Iterator for Import<R> {
    type Item = Result<ReplayedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let item = match self.format {
            RecordingFormat::MessagePack => self.next_msgpack(),
            RecordingFormat::JsonLines => self.next_json(),
        };
        match item {
            Some(Ok(event)) => {
                self.record += 1;
                Some(Ok(event))
            }
            Some(Err((error, fatal))) => {
                self.record += 1;
                self.ended = fatal;
                Some(Err(error))
            }
            None => {
                self.ended = true;
                None
            }
        }
    }
}

type Next = Option<std::result::Result<ReplayedEvent, (Error, bool)>>;

impl<R: Read> Import<R> {
    fn bad(&self, what: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Malformed,
            format!("recording, record {}: {what}", self.record),
        )
    }

    fn next_msgpack(&mut self) -> Next {
        let limits = CodecLimits {
            max_encoded_size: MAX_RECORD,
            ..CodecLimits::default()
        };
        loop {
            match codec::value_len(&self.buffer, &limits) {
                Ok(Some(len)) => {
                    let bytes: Vec<u8> = self.buffer.drain(..len).collect();
                    return Some(self.parse_msgpack(&bytes).map_err(|e| (e, false)));
                }
                Ok(None) if self.buffer.len() > MAX_RECORD => {
                    return Some(Err((
                        self.bad(format!("longer than {MAX_RECORD} bytes")),
                        true,
                    )));
                }
                Ok(None) => {}
                Err(error) => return Some(Err((self.bad(error), true))),
            }
            let chunk = match self.reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(error) => {
                    return Some(Err((io_error("cannot read the recording", error), true)))
                }
            };
            if chunk.is_empty() {
                if self.buffer.is_empty() {
                    return None;
                }
                return Some(Err((self.bad("the file ends inside it"), true)));
            }
            let n = chunk.len();
            self.buffer.extend_from_slice(chunk);
            self.reader.consume(n);
        }
    }

    fn parse_msgpack(&self, bytes: &[u8]) -> Result<ReplayedEvent> {
        let limits = CodecLimits {
            max_encoded_size: MAX_RECORD,
            ..CodecLimits::default()
        };
        let record: Record<'_> = codec::decode_borrowed(bytes, &limits).map_err(|e| self.bad(e))?;
        self.event(
            record.v,
            &record.topic,
            &record.stream_id,
            &record.event_id,
            &record.source,
            record.ts,
            record.data.into_owned(),
        )
        .map(|event| event.with_headers(record.h))
    }

    fn next_json(&mut self) -> Next {
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) => break,
                Err(error) => {
                    return Some(Err((io_error("cannot read the recording", error), true)))
                }
            }
        }
        let record: JsonRecord = match serde_json::from_str(&line) {
            Ok(record) => record,
            Err(error) => return Some(Err((self.bad(error), false))),
        };
        let payload = match codec::encode_payload(&record.payload, &CodecLimits::default()) {
            Ok(payload) => payload,
            Err(error) => return Some(Err((self.bad(error), false))),
        };
        Some(
            self.event(
                record.v,
                &record.topic,
                &record.stream_id,
                &record.event_id,
                &record.source,
                record.ts,
                payload,
            )
            .map(|event| event.with_headers(record.headers))
            .map_err(|e| (e, false)),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        version: u8,
        topic: &str,
        stream_id: &str,
        event_id: &str,
        source: &str,
        ts: u64,
        payload: Vec<u8>,
    ) -> Result<ReplayedEvent> {
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!(
                    "recording, record {}: format version {version}, this tickbus reads {VERSION}",
                    self.record
                ),
            ));
        }
        // The same reading of a UUID as a stream entry's `id` and `src`.
        let uuid = |text: &str, what: &str| {
            wire::parse_uuid(text.as_bytes())
                .ok_or_else(|| self.bad(format!("{what} is not a UUID")))
        };
        Ok(ReplayedEvent {
            topic: TopicName::new(topic).map_err(|e| self.bad(e))?,
            stream_id: stream_id.parse().map_err(|e| self.bad(e))?,
            event_id: EventId::from_uuid(uuid(event_id, "event_id")?),
            source: InstanceId::from_uuid(uuid(source, "source")?),
            timestamp_ns: ts,
            data: Bytes::from(payload),
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload holding MessagePack `bin` (a `serde_bytes` field) exports as
    /// JSON lines (as an array of byte values) and imports back decodable.
    #[test]
    fn json_lines_show_bin_payloads() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Frame {
            #[serde(with = "serde_bytes")]
            raw: Vec<u8>,
            n: u32,
        }
        let frame = Frame {
            raw: vec![1, 2, 255],
            n: 7,
        };
        let payload = codec::encode_payload(&frame, &CodecLimits::default()).unwrap();
        let event = ReplayedEvent::new(
            TopicName::new("md:frame").unwrap(),
            StreamId::new(1, 0),
            EventId::from_uuid(uuid::Uuid::from_u128(1)),
            InstanceId::from_uuid(uuid::Uuid::from_u128(2)),
            42,
            payload,
        );
        let mut out = Vec::new();
        export(&mut out, RecordingFormat::JsonLines, [Ok(event)]).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains(r#""raw":[1,2,255]"#), "{text}");
        let back: Vec<ReplayedEvent> = import(&out[..], RecordingFormat::JsonLines)
            .collect::<crate::Result<_>>()
            .unwrap();
        assert_eq!(back[0].decode::<Frame>().unwrap(), frame);
    }
}
