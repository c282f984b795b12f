//! Consumer-group commands (`XGROUP`, `XREADGROUP`, `XACK`, `XAUTOCLAIM`,
//! `XPENDING`, `XCLAIM`, `XINFO`), scans, and the typed rows they answer.

use std::time::Duration;

use fred::prelude::{ClientLike, Error as FredError, Value};
use fred::types::{ClusterHash, CustomCommand};

use super::RawEntry;
use crate::error::{Error, ErrorKind, Result};
use crate::event::StreamId;

use super::streams::{parse_entries, parse_read_reply, push_ids, read_args};
use super::{cmd, cmd_offset, parse_stream_id, Connection};

/// One entry of a group's pending entries list (`XPENDING` extended form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingEntry {
    pub(crate) id: StreamId,
    pub(crate) consumer: String,
    pub(crate) idle: Duration,
    pub(crate) deliveries: u32,
}

/// The summary form of `XPENDING key group`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PendingCounts {
    pub(crate) count: u64,
    pub(crate) first: Option<StreamId>,
    pub(crate) last: Option<StreamId>,
    pub(crate) consumers: Vec<(String, u64)>,
}

/// What `XAUTOCLAIM` returned: the next cursor (`0-0` once the scan is complete),
/// the entries claimed, and the ids that were pending but no longer exist (Redis
/// removed them from the PEL).
#[derive(Debug)]
pub(crate) struct AutoClaim {
    pub(crate) cursor: StreamId,
    pub(crate) entries: Vec<RawEntry>,
    pub(crate) deleted: Vec<StreamId>,
}

/// A reply of `XINFO GROUPS` or `XINFO CONSUMERS` or `XINFO STREAM`: field names
/// to values, as sent.
pub(crate) type InfoRow = Vec<(String, Value)>;

/// Deletes a consumer only if it holds no pending entries, atomically (a consumer
/// deleted with pending entries strands them: nobody could claim them).
/// `KEYS[1]` stream, `ARGV[1]` group, `ARGV[2]` consumer. Returns 1 when deleted,
/// 0 when it still has entries.
pub(crate) const DELETE_IDLE_CONSUMER_SCRIPT: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";

impl Connection {
    /// `XGROUP CREATE key group start [MKSTREAM]`: `false` when the group already
    /// existed (`BUSYGROUP`).
    pub(crate) async fn group_create(
        &self,
        key: &str,
        group: &str,
        start: &str,
        mkstream: bool,
    ) -> Result<bool> {
        let mut args = vec!["CREATE", key, group, start];
        if mkstream {
            args.push("MKSTREAM");
        }
        let reply: std::result::Result<Value, FredError> =
            self.client.custom(cmd_offset("XGROUP", 1), args).await;
        match reply {
            Ok(_) => Ok(true),
            Err(error) if error.details().starts_with("BUSYGROUP") => Ok(false),
            Err(error) => Err(self.fail(error, "XGROUP CREATE")),
        }
    }

    /// `XREADGROUP GROUP g c [BLOCK ms] COUNT n STREAMS key… id…` (`>` for new
    /// entries, an id to re-read this consumer's own pending entries after it).
    pub(crate) async fn read_group(
        &self,
        group: &str,
        consumer: &str,
        streams: &[(&str, String)],
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<(String, Vec<RawEntry>)>> {
        let mut args: Vec<Value> = Vec::with_capacity(8 + streams.len() * 2);
        args.push(Value::from_static_str("GROUP"));
        args.push(Value::from(group));
        args.push(Value::from(consumer));
        let keys = streams.iter().map(|(key, id)| (*key, id.as_str()));
        let args = read_args(args, keys, count, block);
        let command = CustomCommand::new_static(
            "XREADGROUP",
            ClusterHash::Offset(usize::from(block.is_some()) * 2 + 6),
            block.is_some(),
        );
        let reply = match block {
            Some(block) => self.blocking(block).custom(command, args).await,
            None => self.client.custom(command, args).await,
        };
        let value: Value = reply.map_err(|error| self.fail(error, "XREADGROUP"))?;
        parse_read_reply(value)
    }

    /// `XACK key group id…`: how many were pending.
    pub(crate) async fn ack(&self, key: &str, group: &str, ids: &[StreamId]) -> Result<u64> {
        let mut args: Vec<Value> = Vec::with_capacity(2 + ids.len());
        args.push(Value::from(key));
        args.push(Value::from(group));
        push_ids(&mut args, ids);
        let value: Value = self
            .client
            .custom(cmd("XACK"), args)
            .await
            .map_err(|error| self.fail(error, "XACK"))?;
        Ok(value.as_u64().unwrap_or(0))
    }

    /// `XAUTOCLAIM key group consumer min-idle cursor COUNT n`.
    pub(crate) async fn autoclaim(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        cursor: StreamId,
        count: usize,
    ) -> Result<AutoClaim> {
        let args: Vec<Value> = vec![
            Value::from(key),
            Value::from(group),
            Value::from(consumer),
            Value::from(i64::try_from(min_idle.as_millis()).unwrap_or(i64::MAX)),
            Value::from(cursor.to_string()),
            Value::from_static_str("COUNT"),
            Value::from(count.to_string()),
        ];
        let value: Value = self
            .client
            .custom(cmd("XAUTOCLAIM"), args)
            .await
            .map_err(|error| self.fail(error, "XAUTOCLAIM"))?;
        let malformed = || Error::new(ErrorKind::Redis, "unexpected XAUTOCLAIM reply");
        let Value::Array(parts) = value else {
            return Err(malformed());
        };
        let mut parts = parts.into_iter();
        let cursor = parts
            .next()
            .as_ref()
            .and_then(parse_stream_id)
            .ok_or_else(malformed)?;
        let entries = parse_entries(parts.next().unwrap_or(Value::Null))?;
        // The third element (Redis ≥ 7.0): ids removed from the PEL because their
        // entries are gone.
        let deleted = match parts.next() {
            Some(Value::Array(ids)) => ids.iter().filter_map(parse_stream_id).collect(),
            _ => Vec::new(),
        };
        Ok(AutoClaim {
            cursor,
            entries,
            deleted,
        })
    }

    /// `XPENDING key group [IDLE ms] first last count [consumer]`.
    pub(crate) async fn pending(
        &self,
        key: &str,
        group: &str,
        range: (&str, &str),
        count: usize,
        consumer: Option<&str>,
    ) -> Result<Vec<PendingEntry>> {
        let mut args: Vec<Value> = vec![
            Value::from(key),
            Value::from(group),
            Value::from(range.0),
            Value::from(range.1),
            Value::from(count.to_string()),
        ];
        if let Some(consumer) = consumer {
            args.push(Value::from(consumer));
        }
        let value: Value = self
            .client
            .custom(cmd("XPENDING"), args)
            .await
            .map_err(|error| self.fail(error, "XPENDING"))?;
        let malformed = || Error::new(ErrorKind::Redis, "unexpected XPENDING reply");
        match value {
            Value::Null => Ok(Vec::new()),
            Value::Array(rows) => rows
                .into_iter()
                .map(|row| {
                    let Value::Array(row) = row else {
                        return Err(malformed());
                    };
                    if row.len() < 4 {
                        return Err(malformed());
                    }
                    Ok(PendingEntry {
                        id: parse_stream_id(&row[0]).ok_or_else(malformed)?,
                        consumer: row[1]
                            .as_bytes()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default(),
                        idle: Duration::from_millis(row[2].as_u64().unwrap_or(0)),
                        deliveries: u32::try_from(row[3].as_u64().unwrap_or(1)).unwrap_or(u32::MAX),
                    })
                })
                .collect(),
            _ => Err(malformed()),
        }
    }

    /// `XCLAIM key group consumer 0 id… [JUSTID]`: takes the entries for
    /// `consumer` and resets their idle time. Without `JUSTID` it counts a
    /// delivery and returns the entries; with it, it only resets the idle time.
    pub(crate) async fn claim(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
        ids: &[StreamId],
        just_id: bool,
    ) -> Result<Vec<RawEntry>> {
        let mut args: Vec<Value> = Vec::with_capacity(5 + ids.len());
        args.push(Value::from(key));
        args.push(Value::from(group));
        args.push(Value::from(consumer));
        args.push(Value::from_static_str("0"));
        push_ids(&mut args, ids);
        if just_id {
            args.push(Value::from_static_str("JUSTID"));
        }
        let value: Value = self
            .client
            .custom(cmd("XCLAIM"), args)
            .await
            .map_err(|error| self.fail(error, "XCLAIM"))?;
        if just_id {
            return Ok(Vec::new());
        }
        parse_entries(value)
    }

    /// `XINFO GROUPS key`, `XINFO CONSUMERS key group` or `XINFO STREAM key`
    /// (`what` picks), one row per group or consumer (one row for a stream).
    pub(crate) async fn info(
        &self,
        what: &'static str,
        key: &str,
        group: Option<&str>,
    ) -> Result<Vec<InfoRow>> {
        let mut args = vec![what, key];
        if let Some(group) = group {
            args.push(group);
        }
        let value: Value = self
            .client
            .custom(cmd_offset("XINFO", 1), args)
            .await
            .map_err(|error| self.fail(error, "XINFO"))?;
        let row = |value: Value| -> InfoRow {
            match value {
                Value::Array(flat) => {
                    let mut row = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        row.push((
                            String::from_utf8_lossy(name.as_bytes().unwrap_or_default())
                                .into_owned(),
                            value,
                        ));
                    }
                    row
                }
                Value::Map(map) => map
                    .inner()
                    .into_iter()
                    .map(|(name, value)| {
                        (String::from_utf8_lossy(name.as_bytes()).into_owned(), value)
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        Ok(match value {
            Value::Array(rows) if what == "STREAM" => vec![row(Value::Array(rows))],
            Value::Map(_) => vec![row(value)],
            Value::Array(rows) => rows.into_iter().map(row).collect(),
            _ => Vec::new(),
        })
    }

    /// Deletes `consumer` from the group if it has nothing pending
    /// ([`DELETE_IDLE_CONSUMER_SCRIPT`]); `true` when deleted.
    pub(crate) async fn delete_idle_consumer(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
    ) -> Result<bool> {
        let value: Value = self
            .client
            .custom(
                cmd_offset("EVAL", 2),
                vec![DELETE_IDLE_CONSUMER_SCRIPT, "1", key, group, consumer],
            )
            .await
            .map_err(|error| self.fail(error, "EVAL (delete idle consumer)"))?;
        Ok(value.as_u64() == Some(1))
    }

    /// Every stream key matching the glob `pattern` (`SCAN … MATCH … TYPE stream`).
    pub(crate) async fn scan_streams(&self, pattern: &str) -> Result<Vec<String>> {
        self.scan_keys(pattern, Some("stream")).await
    }

    /// Every key matching the glob `pattern`, of type `key_type` if given
    /// (`SCAN 0 MATCH pattern COUNT 1000 [TYPE t]`, looped to cursor 0), sorted,
    /// without repeats.
    pub(crate) async fn scan_keys(
        &self,
        pattern: &str,
        key_type: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let mut args = vec![cursor.as_str(), "MATCH", pattern, "COUNT", "1000"];
            if let Some(key_type) = key_type {
                args.push("TYPE");
                args.push(key_type);
            }
            let value: Value = self
                .client
                .custom(
                    CustomCommand::new_static("SCAN", ClusterHash::Random, false),
                    args,
                )
                .await
                .map_err(|error| self.fail(error, "SCAN"))?;
            let Value::Array(parts) = value else {
                return Err(Error::new(ErrorKind::Redis, "unexpected SCAN reply"));
            };
            let mut parts = parts.into_iter();
            cursor = parts
                .next()
                .and_then(|c| {
                    c.as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                })
                .unwrap_or_else(|| "0".into());
            if let Some(Value::Array(found)) = parts.next() {
                keys.extend(found.iter().filter_map(|k| {
                    k.as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                }));
            }
            if cursor == "0" {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// `MEMORY USAGE key`: bytes the key and its value take (`None` when the
    /// key does not exist).
    pub(crate) async fn memory_usage(&self, key: &str) -> Result<Option<u64>> {
        let value: Value = self
            .client
            .custom(cmd_offset("MEMORY", 1), vec!["USAGE", key])
            .await
            .map_err(|error| self.fail(error, "MEMORY USAGE"))?;
        Ok(value.as_u64())
    }

    /// `XPENDING key group` (summary form): the count, the lowest and highest
    /// pending ids, and per consumer its count.
    pub(crate) async fn pending_summary(&self, key: &str, group: &str) -> Result<PendingCounts> {
        let value: Value = self
            .client
            .custom(cmd("XPENDING"), vec![key, group])
            .await
            .map_err(|error| self.fail(error, "XPENDING"))?;
        let malformed = || Error::new(ErrorKind::Redis, "unexpected XPENDING summary reply");
        let Value::Array(parts) = value else {
            return Err(malformed());
        };
        let mut parts = parts.into_iter();
        let count = parts
            .next()
            .and_then(|v| v.as_u64())
            .ok_or_else(malformed)?;
        let first = parts.next().as_ref().and_then(parse_stream_id);
        let last = parts.next().as_ref().and_then(parse_stream_id);
        let consumers = match parts.next() {
            Some(Value::Array(rows)) => rows
                .into_iter()
                .filter_map(|row| match row {
                    Value::Array(pair) if pair.len() == 2 => Some((
                        String::from_utf8_lossy(pair[0].as_bytes().unwrap_or_default())
                            .into_owned(),
                        pair[1].as_u64().unwrap_or(0),
                    )),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(PendingCounts {
            count,
            first,
            last,
            consumers,
        })
    }

    /// The oldest entry some consumer group of `key` still needs: over all
    /// groups, the oldest pending entry, or the entry after the last delivered
    /// one. `None` when the stream has no groups. (`XINFO GROUPS`, then
    /// `XPENDING key group - + 1` for groups with pending entries.)
    pub(crate) async fn groups_position(&self, key: &str) -> Result<Option<StreamId>> {
        let groups = match self.info("GROUPS", key, None).await {
            Ok(groups) => groups,
            Err(error) if error.message().contains("no such key") => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut slowest: Option<StreamId> = None;
        for group in &groups {
            let Some(name) = info_text(group, "name") else {
                continue;
            };
            let last = info_stream_id(group, "last-delivered-id").unwrap_or_default();
            let mut position = StreamId::new(last.ms, last.seq.saturating_add(1));
            if info_u64(group, "pending").unwrap_or(0) > 0 {
                if let Some(oldest) = self.pending(key, &name, ("-", "+"), 1, None).await?.first() {
                    position = position.min(oldest.id);
                }
            }
            slowest = Some(slowest.map_or(position, |s| s.min(position)));
        }
        Ok(slowest)
    }

    /// `SET key 1 NX PX ttl`: `true` when the key was set (it did not exist).
    pub(crate) async fn set_nx(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.lock(key, "1", ttl).await
    }
}

/// The value of `name` in an `XINFO` row.
pub(crate) fn info_field<'a>(row: &'a InfoRow, name: &str) -> Option<&'a Value> {
    row.iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value)
}

/// An `XINFO` value as an integer (`None` for nil, as `lag` may be).
pub(crate) fn info_u64(row: &InfoRow, name: &str) -> Option<u64> {
    info_field(row, name).and_then(Value::as_u64)
}

/// An `XINFO` value as text.
pub(crate) fn info_text(row: &InfoRow, name: &str) -> Option<String> {
    info_field(row, name)
        .and_then(Value::as_bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// An `XINFO` value as a stream id: an id, or an entry `[id, fields]` (as
/// `first-entry`).
pub(crate) fn info_stream_id(row: &InfoRow, name: &str) -> Option<StreamId> {
    match info_field(row, name)? {
        Value::Array(entry) => entry.first().and_then(parse_stream_id),
        value => parse_stream_id(value),
    }
}
