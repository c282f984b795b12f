//! Scheduled events: a sorted set per topic (`<prefix>:delayed:{<topic>}`,
//! score = due time in ms), and the script that moves what is due into the
//! topic's stream. Both keys carry the topic's hash tag: one slot.

use bytes::Bytes;
use fred::prelude::{ClientLike as _, Value};

use super::{cmd, cmd_offset, Connection};
use crate::error::{Error, ErrorKind, Result};
use crate::local::persist::Due;

/// Moves what is due (by the server's clock) from the sorted set `KEYS[1]` into
/// the stream `KEYS[2]`, oldest due first, at most `ARGV[1]` of them, with
/// `MAXLEN ~ ARGV[2]` unless it is empty. Each member is a MessagePack array of
/// the entry's field names and values; the script adds field `due` (its score).
/// Every job is appended and removed in one
/// script, so it is moved once, whoever runs the script and whenever a client
/// dies. A member that is not such an array, or that `XADD` refuses, is removed
/// and counted, never retried forever. Returns `{moved, refused, next due ms or
/// -1}`.
const MOVE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local moved, refused = 0, 0
for i = 1, #due, 2 do
    local member = due[i]
    local ok, fields = pcall(cmsgpack.unpack, member)
    local added = nil
    if ok and type(fields) == 'table' and #fields > 0 and #fields % 2 == 0 then
        table.insert(fields, 'due')
        table.insert(fields, due[i + 1])
        if ARGV[2] == '' then
            added = redis.pcall('XADD', KEYS[2], '*', unpack(fields))
        else
            added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
        end
    end
    if type(added) == 'string' then
        moved = moved + 1
    else
        refused = refused + 1
    end
    redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then
    return {moved, refused, math.floor(tonumber(nxt[2]))}
end
return {moved, refused, -1}
";

/// `ZADD KEYS[1] (server time in ms + ARGV[1]) ARGV[2]`.
const SCHEDULE_AFTER_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
";

fn clamp(ms: u64) -> i64 {
    // Scores are doubles: beyond 2^53 ms (285 000 years) they lose precision.
    i64::try_from(ms.min(1 << 53)).unwrap_or(i64::MAX)
}

/// What one run of the move script did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Moved {
    /// Jobs appended to the stream.
    pub(crate) moved: u64,
    /// Members that were not entries, or that `XADD` refused: removed.
    pub(crate) refused: u64,
    /// When the next job is due (ms since the epoch), if any is left.
    pub(crate) next_due_ms: Option<u64>,
}

impl Connection {
    /// Schedules one job: `ZADD key due member`, the due time given (ms since
    /// the epoch) or, for [`Due::After`], the server's time plus the delay (no
    /// clock skew between client and server). The member holds the event id:
    /// sent again after a lost reply, it updates the one job's time rather than
    /// adding a second job (unless the first was moved meanwhile).
    pub(crate) async fn schedule(&self, key: &str, due: Due, member: Bytes) -> Result<()> {
        let _: Value = match due {
            Due::At(ms) => self
                .client
                .custom(
                    cmd("ZADD"),
                    vec![key.into(), Value::from(clamp(ms)), Value::Bytes(member)],
                )
                .await
                .map_err(|error| self.fail(error, "ZADD"))?,
            Due::After(ms) => self
                .client
                .custom(
                    cmd_offset("EVAL", 2),
                    vec![
                        Value::from_static_str(SCHEDULE_AFTER_SCRIPT),
                        Value::from(1_i64),
                        key.into(),
                        Value::from(clamp(ms)),
                        Value::Bytes(member),
                    ],
                )
                .await
                .map_err(|error| self.fail(error, "EVAL (schedule)"))?,
        };
        Ok(())
    }

    /// Runs the move script once for `delayed` into `stream`.
    pub(crate) async fn move_due(
        &self,
        delayed: &str,
        stream: &str,
        max: usize,
        max_len: Option<u64>,
    ) -> Result<Moved> {
        let args: Vec<Value> = vec![
            Value::from_static_str(MOVE_SCRIPT),
            Value::from(2_i64),
            delayed.into(),
            stream.into(),
            Value::from(i64::try_from(max).unwrap_or(i64::MAX)),
            max_len.map_or_else(String::new, |n| n.to_string()).into(),
        ];
        let value: Value = self
            .client
            .custom(cmd_offset("EVAL", 2), args)
            .await
            .map_err(|error| self.fail(error, "EVAL (move due jobs)"))?;
        let numbers: Option<Vec<i64>> = match &value {
            Value::Array(parts) => parts.iter().map(Value::as_i64).collect(),
            _ => None,
        };
        match numbers.as_deref() {
            Some(&[moved, refused, next]) => Ok(Moved {
                moved: moved.max(0) as u64,
                refused: refused.max(0) as u64,
                next_due_ms: u64::try_from(next).ok(),
            }),
            _ => Err(Error::new(
                ErrorKind::Redis,
                self.context(&format!("the move script answered {value:?}")),
            )),
        }
    }
}
