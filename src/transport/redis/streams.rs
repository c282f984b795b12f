//! Stream commands: appends (`XADD` pipelines and the append script, `WAITAOF`),
//! reads (`XREAD`, `XRANGE` pages parsed in place), trims and deletes.

use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::ClientInterface as _;
use fred::prelude::{ClientLike, Error as FredError, Value};
use fred::types::{ClusterHash, CustomCommand, Resp3Frame};

use super::{RawEntry, WireEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::event::StreamId;
use crate::wire::Fields;

use super::{cmd, cmd_offset, parse_stream_id, reply_kind, value_bytes, Connection};

/// Most entries appended by one `EVAL` of [`APPEND_SCRIPT`]: a script holds the
/// server for its whole run (about 3 µs per entry on the development VM, so
/// about 200 µs for a full chunk); 64 gives the same throughput as 128.
pub(crate) const SCRIPT_CHUNK: usize = 64;

/// Appends entries to one stream (`KEYS[1]`), exactly as the same `XADD`s sent
/// one by one would: `ARGV[1]` is the `MAXLEN ~` bound (empty for none), then
/// five arguments per entry, the values of `id`, `src`, `ts`, `data` and `h`
/// ([`EncodedEntry::values`](crate::wire::EncodedEntry::values): `h` empty when
/// the entry has no headers, and then not written). Stops at the first error.
/// Returns `{ids written, error or nil}`.
pub(crate) const APPEND_SCRIPT: &str = r"
local ids = {}
local cap = ARGV[1]
for i = 2, #ARGV, 5 do
  local r
  local h = ARGV[i + 4]
  if cap == '' and h == '' then
    r = redis.pcall('XADD', KEYS[1], '*', 'id', ARGV[i], 'src', ARGV[i + 1], 'ts', ARGV[i + 2], 'data', ARGV[i + 3])
  elseif cap == '' then
    r = redis.pcall('XADD', KEYS[1], '*', 'id', ARGV[i], 'src', ARGV[i + 1], 'ts', ARGV[i + 2], 'data', ARGV[i + 3], 'h', h)
  elseif h == '' then
    r = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'id', ARGV[i], 'src', ARGV[i + 1], 'ts', ARGV[i + 2], 'data', ARGV[i + 3])
  else
    r = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'id', ARGV[i], 'src', ARGV[i + 1], 'ts', ARGV[i + 2], 'data', ARGV[i + 3], 'h', h)
  end
  if type(r) == 'table' and r.err then
    return {ids, r.err}
  end
  ids[#ids + 1] = r
end
return {ids, false}
";

/// The arguments of one `XADD` of `entry`.
pub(super) fn xadd_args(entry: &WireEntry) -> Vec<Value> {
    let mut args: Vec<Value> = Vec::with_capacity(14);
    args.push(Value::from(&*entry.key));
    if let Some(max_len) = entry.max_len {
        args.push(Value::from_static_str("MAXLEN"));
        args.push(Value::from_static_str("~"));
        args.push(Value::from(max_len.to_string()));
    }
    args.push(Value::from_static_str("*"));
    for (name, value) in entry.event.fields() {
        args.push(Value::from_static_str(name));
        args.push(Value::Bytes(value));
    }
    args
}

/// An error an `XADD` returned inside the append script, classified as
/// [`map_error`] classifies a command's error reply.
pub(super) fn script_error(text: &str, context: &str) -> Error {
    let kind = reply_kind(text).unwrap_or(ErrorKind::Unavailable);
    Error::new(kind, format!("{context}: {text}"))
}

impl Connection {
    /// Appends `entries` (in order per stream) in one pipeline, then
    /// `WAITAOF 1 0 <timeout>` if `waitaof` is set. One result per entry (the new
    /// stream id), then the `WAITAOF` result if asked: the number of local AOF
    /// fsyncs confirmed (0 or 1).
    ///
    /// With `scripted`, the entries of each stream go in `EVAL`s of up to
    /// [`SCRIPT_CHUNK`] `XADD`s each ([`APPEND_SCRIPT`]); otherwise one `XADD`
    /// command per entry. Same entries, same order, same stream ids: the script
    /// saves the per-command cost of the client and the server (about half of
    /// the writer's time, measured), not any of Redis's guarantees.
    pub(crate) async fn append(
        &self,
        entries: &[&WireEntry],
        waitaof: Option<Duration>,
        scripted: bool,
    ) -> (Vec<Result<StreamId>>, Option<Result<u64>>) {
        let pipeline = self.client.pipeline();
        // Per command sent: the indices of the entries it carries.
        let mut commands: Vec<Vec<usize>> = Vec::new();
        if scripted {
            let mut by_key: Vec<(&str, Vec<usize>)> = Vec::new();
            for (index, entry) in entries.iter().enumerate() {
                match by_key.iter_mut().find(|(key, _)| *key == &*entry.key) {
                    Some((_, indices)) => indices.push(index),
                    None => by_key.push((&entry.key, vec![index])),
                }
            }
            for (key, indices) in by_key {
                for chunk in indices.chunks(SCRIPT_CHUNK) {
                    if chunk.len() == 1 {
                        // A lone entry (light load): a plain XADD is quicker.
                        let args = xadd_args(entries[chunk[0]]);
                        let _: std::result::Result<(), FredError> =
                            pipeline.custom(cmd("XADD"), args).await;
                        commands.push(chunk.to_vec());
                        continue;
                    }
                    let max_len = entries[chunk[0]]
                        .max_len
                        .map_or_else(String::new, |n| n.to_string());
                    let mut args: Vec<Value> = Vec::with_capacity(4 + 5 * chunk.len());
                    args.push(Value::from_static_str(APPEND_SCRIPT));
                    args.push(Value::from(1_i64));
                    args.push(Value::from(key));
                    args.push(Value::from(max_len));
                    for &index in chunk {
                        args.extend(entries[index].event.values().map(Value::Bytes));
                    }
                    let _: std::result::Result<(), FredError> =
                        pipeline.custom(cmd_offset("EVAL", 2), args).await;
                    commands.push(chunk.to_vec());
                }
            }
        } else {
            for (index, entry) in entries.iter().enumerate() {
                let args = xadd_args(entry);
                let _: std::result::Result<(), FredError> =
                    pipeline.custom(cmd("XADD"), args).await;
                commands.push(vec![index]);
            }
        }
        if let Some(timeout) = waitaof {
            let args = vec![
                Value::from(1_i64),
                Value::from(0_i64),
                Value::from(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
            ];
            let _: std::result::Result<(), FredError> = pipeline.custom(cmd("WAITAOF"), args).await;
        }
        let mut results = pipeline.try_all::<Value>().await.into_iter();
        let mut appended: Vec<Result<StreamId>> = entries
            .iter()
            .map(|_| Err(Error::new(ErrorKind::Unavailable, "not sent")))
            .collect();
        for indices in &commands {
            let reply = results.next();
            if scripted && indices.len() > 1 {
                self.settle_script_reply(reply, indices, &mut appended);
            } else {
                appended[indices[0]] = match reply {
                    Some(Ok(value)) => parse_stream_id(&value).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Redis,
                            format!("XADD answered {value:?}, not a stream id"),
                        )
                    }),
                    Some(Err(error)) => Err(self.fail(error, "XADD")),
                    None => Err(Error::new(ErrorKind::Redis, "XADD: no reply")),
                };
            }
        }
        let fsynced = waitaof.map(|_| match results.next() {
            Some(Ok(Value::Array(counts))) => counts
                .first()
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::new(ErrorKind::Redis, "WAITAOF: unexpected reply")),
            Some(Ok(other)) => Err(Error::new(
                ErrorKind::Redis,
                format!("WAITAOF answered {other:?}"),
            )),
            Some(Err(error)) => Err(self.fail(error, "WAITAOF")),
            None => Err(Error::new(ErrorKind::Redis, "WAITAOF: no reply")),
        });
        (appended, fsynced)
    }

    /// Spreads the reply of one [`APPEND_SCRIPT`] `EVAL` over its entries: the
    /// ids of those written, then the error (if any) for the one that failed and
    /// those after it, which the script did not attempt.
    fn settle_script_reply(
        &self,
        reply: Option<std::result::Result<Value, FredError>>,
        indices: &[usize],
        appended: &mut [Result<StreamId>],
    ) {
        let (ids, error) = match reply {
            Some(Ok(Value::Array(parts))) => {
                let mut parts = parts.into_iter();
                let ids = match parts.next() {
                    Some(Value::Array(ids)) => ids,
                    _ => Vec::new(),
                };
                let error = parts.next().and_then(|error| {
                    let text = error.as_bytes()?;
                    let text = String::from_utf8_lossy(text).into_owned();
                    Some(script_error(&text, &self.context("XADD (script)")))
                });
                (ids, error)
            }
            Some(Ok(other)) => (
                Vec::new(),
                Some(Error::new(
                    ErrorKind::Redis,
                    format!("the append script answered {other:?}"),
                )),
            ),
            Some(Err(error)) => (Vec::new(), Some(self.fail(error, "EVAL"))),
            None => (
                Vec::new(),
                Some(Error::new(ErrorKind::Unavailable, "EVAL: no reply")),
            ),
        };
        let mut ids = ids.iter();
        for &index in indices {
            appended[index] = match ids.next() {
                Some(id) => parse_stream_id(id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Redis,
                        format!("the append script answered {id:?}, not a stream id"),
                    )
                }),
                None => Err(error.clone().unwrap_or_else(|| {
                    Error::new(ErrorKind::Redis, "the append script stopped early")
                })),
            };
        }
    }

    /// A write of no consequence on this connection, then `WAITAOF`: proves that
    /// everything in the AOF up to now is fsynced (the AOF is one sequential log),
    /// including entries written on a connection that has since been lost.
    pub(crate) async fn fsync_barrier(&self, probe_key: &str, timeout: Duration) -> Result<u64> {
        let pipeline = self.client.pipeline();
        let _: std::result::Result<(), FredError> = pipeline
            .custom(cmd("SET"), vec![probe_key, "1", "PX", "60000"])
            .await;
        let waitaof_timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let _: std::result::Result<(), FredError> = pipeline
            .custom(
                cmd("WAITAOF"),
                vec![
                    Value::from(1_i64),
                    Value::from(0_i64),
                    Value::from(waitaof_timeout),
                ],
            )
            .await;
        let mut results = pipeline.try_all::<Value>().await.into_iter();
        if let Some(Err(error)) = results.next() {
            return Err(self.fail(error, "SET (fsync probe)"));
        }
        match results.next() {
            Some(Ok(Value::Array(counts))) => counts
                .first()
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::new(ErrorKind::Redis, "WAITAOF: unexpected reply")),
            Some(Err(error)) => Err(self.fail(error, "WAITAOF")),
            _ => Err(Error::new(ErrorKind::Redis, "WAITAOF: unexpected reply")),
        }
    }

    /// `XTRIM key MINID ~ <min_id>`.
    pub(crate) async fn trim_min_id(&self, key: &str, min_id: StreamId) -> Result<()> {
        let _: Value = self
            .client
            .custom(
                cmd("XTRIM"),
                vec![
                    key.to_string(),
                    "MINID".into(),
                    "~".into(),
                    min_id.to_string(),
                ],
            )
            .await
            .map_err(|error| self.fail(error, "XTRIM"))?;
        Ok(())
    }

    /// The newest `count` entries, newest first (`XREVRANGE key + - COUNT count`).
    pub(crate) async fn newest(&self, key: &str, count: usize) -> Result<Vec<RawEntry>> {
        let value: Value = self
            .client
            .custom(
                cmd("XREVRANGE"),
                vec![
                    key.to_string(),
                    "+".into(),
                    "-".into(),
                    "COUNT".into(),
                    count.to_string(),
                ],
            )
            .await
            .map_err(|error| self.fail(error, "XREVRANGE"))?;
        parse_entries(value)
    }

    /// `XREAD [BLOCK ms] COUNT n STREAMS key… id…`: entries after each id, per key.
    /// An empty result means the block timed out (or was interrupted).
    pub(crate) async fn read(
        &self,
        streams: &[(&str, StreamId)],
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<(String, Vec<RawEntry>)>> {
        let ids: Vec<String> = streams.iter().map(|(_, id)| id.to_string()).collect();
        let keys = streams
            .iter()
            .map(|(key, _)| *key)
            .zip(ids.iter().map(String::as_str));
        let args = read_args(
            Vec::with_capacity(5 + streams.len() * 2),
            keys,
            count,
            block,
        );
        let command = CustomCommand::new_static(
            "XREAD",
            ClusterHash::Offset(usize::from(block.is_some()) * 2 + 3),
            block.is_some(),
        );
        let reply = match block {
            Some(block) => self.blocking(block).custom(command, args).await,
            None => self.client.custom(command, args).await,
        };
        let value: Value = reply.map_err(|error| self.fail(error, "XREAD"))?;
        parse_read_reply(value)
    }

    /// Interrupts this connection's blocked `XREAD` (as if its block timed out).
    pub(crate) async fn unblock(&self) {
        let _ = self
            .client
            .unblock_self(Some(fred::types::ClientUnblockFlag::Timeout))
            .await;
    }

    /// `XLEN key`: entries in a stream (0 when the key does not exist).
    pub(crate) async fn stream_len(&self, key: &str) -> Result<u64> {
        let value: Value = self
            .client
            .custom(cmd("XLEN"), vec![key])
            .await
            .map_err(|error| self.fail(error, "XLEN"))?;
        Ok(value.as_u64().unwrap_or(0))
    }
}

/// The tail of an `XREAD` or `XREADGROUP` after `args`: `[BLOCK ms] COUNT n
/// STREAMS key… id…`.
pub(super) fn read_args<'a>(
    mut args: Vec<Value>,
    streams: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    count: usize,
    block: Option<Duration>,
) -> Vec<Value> {
    if let Some(block) = block {
        args.push(Value::from_static_str("BLOCK"));
        args.push(Value::from(
            i64::try_from(block.as_millis()).unwrap_or(i64::MAX),
        ));
    }
    args.push(Value::from_static_str("COUNT"));
    args.push(Value::from(count.to_string()));
    args.push(Value::from_static_str("STREAMS"));
    args.extend(streams.clone().map(|(key, _)| Value::from(key)));
    args.extend(streams.map(|(_, id)| Value::from(id)));
    args
}

/// Appends `ids` as `<ms>-<seq>` arguments, all formatted into one buffer (one
/// allocation, not one per id).
pub(super) fn push_ids(args: &mut Vec<Value>, ids: &[StreamId]) {
    use std::fmt::Write as _;
    let mut text = bytes::BytesMut::with_capacity(ids.len() * 24);
    let mut ends = Vec::with_capacity(ids.len());
    for id in ids {
        // `BytesMut` grows as needed: writing cannot fail.
        let _ = write!(text, "{id}");
        ends.push(text.len());
    }
    let text = text.freeze();
    let mut start = 0;
    for end in ends {
        args.push(Value::Bytes(text.slice(start..end)));
        start = end;
    }
}

/// `[[id, [field, value, …] | nil], …]` (`XRANGE`, `XREVRANGE`, one stream of `XREAD`).
pub(super) fn parse_entries(value: Value) -> Result<Vec<RawEntry>> {
    let malformed =
        |what: &str| Error::new(ErrorKind::Redis, format!("unexpected stream reply: {what}"));
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(entries) => entries
            .into_iter()
            .map(|entry| {
                let mut parts = match entry {
                    Value::Array(parts) => parts.into_iter(),
                    _ => return Err(malformed("an entry is not an array")),
                };
                let id = parts
                    .next()
                    .as_ref()
                    .and_then(parse_stream_id)
                    .ok_or_else(|| malformed("an entry without an id"))?;
                let fields = match parts.next() {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(flat)) => {
                        let mut fields = Vec::with_capacity(flat.len() / 2);
                        let mut flat = flat.into_iter();
                        while let (Some(field), Some(value)) = (flat.next(), flat.next()) {
                            fields.push((value_bytes(field), value_bytes(value)));
                        }
                        Some(fields)
                    }
                    Some(Value::Map(map)) => Some(
                        map.inner()
                            .into_iter()
                            .map(|(field, value)| {
                                (Bytes::copy_from_slice(field.as_bytes()), value_bytes(value))
                            })
                            .collect(),
                    ),
                    Some(_) => return Err(malformed("entry fields are not an array")),
                };
                Ok(RawEntry { id, fields })
            })
            .collect(),
        _ => Err(malformed("not an array")),
    }
}

/// One page of `XRANGE` as fred parsed it (RESP3 frames): the entries are
/// walked where they lie, by the thread that consumes them.
#[derive(Debug)]
pub(crate) struct RangePage {
    entries: Vec<Resp3Frame>,
}

/// One entry of a [`RangePage`]: `[id, [field, value, …] | nil]`, still a frame.
#[derive(Debug)]
pub(crate) struct PageEntry {
    frame: Resp3Frame,
}

impl RangePage {
    pub(super) fn new(frame: Resp3Frame) -> Result<RangePage> {
        match frame {
            Resp3Frame::Array { data, .. } => Ok(RangePage { entries: data }),
            Resp3Frame::Null => Ok(RangePage {
                entries: Vec::new(),
            }),
            Resp3Frame::SimpleError { data, .. } => Err(reply_error(data.as_bytes())),
            Resp3Frame::BlobError { data, .. } => Err(reply_error(&data)),
            _ => Err(Error::new(
                ErrorKind::Redis,
                "unexpected stream reply: not an array",
            )),
        }
    }

    /// Entries in the page.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The id of the page's last entry (where the next page starts after).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Redis`] if that entry has no readable id.
    pub(crate) fn last_id(&self) -> Result<Option<StreamId>> {
        self.entries
            .last()
            .map(|frame| frame_entry_id(frame).ok_or_else(|| bad_entry("an entry without an id")))
            .transpose()
    }

    /// The entries, in stream order.
    pub(crate) fn into_entries(self) -> PageEntries {
        PageEntries(self.entries.into_iter())
    }
}

/// The entries of a [`RangePage`], in stream order.
#[derive(Debug, Default)]
pub(crate) struct PageEntries(std::vec::IntoIter<Resp3Frame>);

impl Iterator for PageEntries {
    type Item = PageEntry;

    fn next(&mut self) -> Option<PageEntry> {
        self.0.next().map(|frame| PageEntry { frame })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl PageEntry {
    /// The entry's stream id (`None` if the reply holds no readable one).
    pub(crate) fn id(&self) -> Option<StreamId> {
        frame_entry_id(&self.frame)
    }

    /// The entry's field frames: `[name, value, …]` or a RESP3 map; `None`
    /// if the entry has no fields (deleted while referenced).
    fn field_frames(&self) -> Option<&Resp3Frame> {
        let Resp3Frame::Array { data, .. } = &self.frame else {
            return None;
        };
        data.get(1)
    }
}

/// The fields of a page's entry where they lie, for [`crate::wire::parse`].
/// A pair whose name or value is not a string frame (Redis never sends one)
/// is left out.
impl<'a> Fields<'a> for &'a PageEntry {
    fn count(self) -> usize {
        match self.field_frames() {
            Some(Resp3Frame::Array { data: flat, .. }) => flat.len() / 2,
            Some(Resp3Frame::Map { data: map, .. }) => map.len(),
            _ => 0,
        }
    }

    fn pairs(self) -> impl Iterator<Item = (&'a [u8], &'a Bytes)> {
        let (flat, map) = match self.field_frames() {
            Some(Resp3Frame::Array { data: flat, .. }) => (Some(flat), None),
            Some(Resp3Frame::Map { data: map, .. }) => (None, Some(map)),
            _ => (None, None),
        };
        let flat = flat
            .into_iter()
            .flat_map(|flat| flat.chunks_exact(2).map(|pair| (&pair[0], &pair[1])));
        let map = map.into_iter().flat_map(|map| map.iter());
        flat.chain(map)
            .filter_map(|(name, value)| Some((frame_bytes(name)?.as_ref(), frame_bytes(value)?)))
    }
}

/// The bytes of a string frame.
pub(super) fn frame_bytes(frame: &Resp3Frame) -> Option<&Bytes> {
    match frame {
        Resp3Frame::BlobString { data, .. }
        | Resp3Frame::SimpleString { data, .. }
        | Resp3Frame::VerbatimString { data, .. } => Some(data),
        _ => None,
    }
}

pub(super) fn frame_entry_id(frame: &Resp3Frame) -> Option<StreamId> {
    let Resp3Frame::Array { data, .. } = frame else {
        return None;
    };
    let text = std::str::from_utf8(frame_bytes(data.first()?)?).ok()?;
    text.parse().ok()
}

pub(super) fn bad_entry(what: &str) -> Error {
    Error::new(ErrorKind::Redis, format!("unexpected stream reply: {what}"))
}

/// A server's error reply found in a raw frame, classified as [`map_error`]
/// does (an unknown one is retried).
pub(super) fn reply_error(text: &[u8]) -> Error {
    let text = String::from_utf8_lossy(text);
    Error::new(
        reply_kind(&text).unwrap_or(ErrorKind::Unavailable),
        text.into_owned(),
    )
}

/// `[[key, entries], …]`, nil on timeout.
pub(super) fn parse_read_reply(value: Value) -> Result<Vec<(String, Vec<RawEntry>)>> {
    let malformed =
        |what: &str| Error::new(ErrorKind::Redis, format!("unexpected XREAD reply: {what}"));
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    let key = pair
                        .next()
                        .and_then(|key| {
                            key.as_bytes()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        })
                        .ok_or_else(|| malformed("a stream without a key"))?;
                    let entries = parse_entries(pair.next().unwrap_or(Value::Null))?;
                    Ok((key, entries))
                }
                _ => Err(malformed("a stream is not [key, entries]")),
            })
            .collect(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(key, entries)| {
                Ok((
                    String::from_utf8_lossy(key.as_bytes()).into_owned(),
                    parse_entries(entries)?,
                ))
            })
            .collect(),
        _ => Err(malformed("not an array")),
    }
}

impl Connection {
    /// `XADD key * field value …`: the new entry's id.
    pub(crate) async fn append_fields(
        &self,
        key: &str,
        fields: &[(Bytes, Bytes)],
    ) -> Result<StreamId> {
        let mut args: Vec<Value> = Vec::with_capacity(2 + fields.len() * 2);
        args.push(Value::from(key));
        args.push(Value::from_static_str("*"));
        for (field, value) in fields {
            args.push(Value::Bytes(field.clone()));
            args.push(Value::Bytes(value.clone()));
        }
        let value: Value = self
            .client
            .custom(cmd("XADD"), args)
            .await
            .map_err(|error| self.fail(error, "XADD"))?;
        parse_stream_id(&value).ok_or_else(|| Error::new(ErrorKind::Redis, "unexpected XADD reply"))
    }

    /// `XRANGE key start end COUNT n`.
    pub(crate) async fn range(
        &self,
        key: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<RawEntry>> {
        let value: Value = self
            .client
            .custom(
                cmd("XRANGE"),
                vec![key, start, end, "COUNT", &count.to_string()],
            )
            .await
            .map_err(|error| self.fail(error, "XRANGE"))?;
        parse_entries(value)
    }

    /// `XRANGE key start end COUNT n`, as fred parsed the reply: no conversion
    /// and no copy on this thread. The consumer walks the page
    /// ([`RangePage::into_entries`]) on its own thread.
    pub(crate) async fn range_page(
        &self,
        key: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<RangePage> {
        let frame = self
            .client
            .custom_raw(
                cmd("XRANGE"),
                vec![key, start, end, "COUNT", &count.to_string()],
            )
            .await
            .map_err(|error| self.fail(error, "XRANGE"))?;
        RangePage::new(frame).map_err(|error| {
            let message = format!("{}: {}", self.context("XRANGE"), error.message());
            Error::new(error.kind(), message)
        })
    }

    /// `XDEL key id…`: how many existed.
    pub(crate) async fn delete_entries(&self, key: &str, ids: &[StreamId]) -> Result<u64> {
        let mut args: Vec<Value> = Vec::with_capacity(1 + ids.len());
        args.push(Value::from(key));
        push_ids(&mut args, ids);
        let value: Value = self
            .client
            .custom(cmd("XDEL"), args)
            .await
            .map_err(|error| self.fail(error, "XDEL"))?;
        Ok(value.as_u64().unwrap_or(0))
    }
}
