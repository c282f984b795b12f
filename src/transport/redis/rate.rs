//! The shared rate limiter's one command: GCRA in a server-side script, on the
//! server's clock (`TIME`), atomic and in one round trip.

use fred::prelude::{ClientLike, Value};

use super::{cmd_offset, Connection};
use crate::error::{Error, ErrorKind, Result};

/// GCRA over `KEYS[1]` (the theoretical arrival time, TAT, in microseconds of
/// the server's clock). `ARGV[1]`: the emission interval `T` in whole
/// microseconds; `ARGV[2]`: the tolerance `tau = burst * T`; `ARGV[3]`: the
/// permits asked for, `n`.
///
/// `tat = max(stored or now, now)`, `new_tat = tat + n*T`. Admitted iff
/// `new_tat - now <= tau + T`: the key is set to `new_tat` (expiring once it
/// is in the past, when it no longer matters) and `{1, now}` returned.
/// Otherwise nothing is written and `{0, now, retry_after}` returned, with
/// `retry_after = new_tat - (tau + T) - now` microseconds. Every number is an
/// integer below 2^53, exact in Lua's doubles.
pub(crate) const GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
    tat = math.max(tonumber(stored) or now, now)
end
local new_tat = tat + n * interval
local allow_at = new_tat - tolerance - interval
if allow_at <= now then
    local ttl = math.ceil((new_tat - now) / 1000) + 1
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl))
    return {1, now}
end
return {0, now, allow_at - now}
";

/// What the script decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GcraReply {
    /// Admitted at `now_us` (microseconds since the epoch, server clock).
    Admitted { now_us: u64 },
    /// Refused at `now_us`; the same request is admitted `retry_after_us` later.
    Limited { now_us: u64, retry_after_us: u64 },
}

impl Connection {
    /// Runs [`GCRA_SCRIPT`] on `key` for `n` permits.
    pub(crate) async fn gcra(
        &self,
        key: &str,
        interval_us: u64,
        tolerance_us: u64,
        n: u64,
    ) -> Result<GcraReply> {
        let args: Vec<Value> = vec![
            Value::from_static_str(GCRA_SCRIPT),
            Value::from(1_i64),
            key.into(),
            interval_us.to_string().into(),
            tolerance_us.to_string().into(),
            n.to_string().into(),
        ];
        let value: Value = self
            .client
            .custom(cmd_offset("EVAL", 2), args)
            .await
            .map_err(|error| self.fail(error, "EVAL (rate limit)"))?;
        let numbers: Vec<u64> = match &value {
            Value::Array(items) => items.iter().filter_map(Value::as_u64).collect(),
            _ => Vec::new(),
        };
        match numbers.as_slice() {
            [1, now_us] => Ok(GcraReply::Admitted { now_us: *now_us }),
            [0, now_us, retry_after_us] => Ok(GcraReply::Limited {
                now_us: *now_us,
                retry_after_us: *retry_after_us,
            }),
            _ => Err(Error::new(
                ErrorKind::Redis,
                self.context(&format!("EVAL (rate limit) answered {value:?}")),
            )),
        }
    }
}
