//! Every Redis key tickbus writes or scans, in one place (the layout is
//! documented in `docs/redis-layout.md`). A topic's keys carry the topic as a
//! Cluster hash tag (`{<topic>}`), so a topic's stream, cursor and dead
//! letters live in one slot; a group's seen-keys carry the group.

use std::fmt::Display;

/// `<prefix>:stream:{<topic>}`: the topic's stream.
pub(crate) fn stream(prefix: &str, topic: impl Display) -> String {
    format!("{prefix}:stream:{{{topic}}}")
}

/// `<prefix>:dlq:{<topic>}`: the topic's dead letters.
pub(crate) fn dlq(prefix: &str, topic: impl Display) -> String {
    format!("{prefix}:dlq:{{{topic}}}")
}

/// `<prefix>:cursor:{<topic>}`: where an instance resumes reading the topic.
pub(crate) fn cursor(prefix: &str, topic: impl Display) -> String {
    format!("{prefix}:cursor:{{{topic}}}")
}

/// `<prefix>:delayed:{<topic>}`: the topic's scheduled events, a sorted set by
/// due time (ms), each member the entry to append when it is due.
pub(crate) fn delayed(prefix: &str, topic: impl Display) -> String {
    format!("{prefix}:delayed:{{{topic}}}")
}

/// `<prefix>:seen:{<group>}:<event id>`: `Consumer::seen_before`'s marker.
pub(crate) fn seen(prefix: &str, group: &str, event: impl Display) -> String {
    format!("{prefix}:seen:{{{group}}}:{event}")
}

/// `<prefix>:state:<component>:<data type>`: a latest-state key.
#[cfg_attr(not(feature = "cache"), allow(dead_code))] // the cache's keys
pub(crate) fn state(prefix: &str, name: &str) -> String {
    format!("{prefix}:state:{name}")
}

/// `<prefix>:cache:`: the start of every cache key (`<namespace>:<key>` follows).
pub(crate) fn cache_prefix(prefix: &str) -> String {
    format!("{prefix}:cache:")
}

/// `<prefix>:lock:cache:`: the start of every cache load lock.
#[cfg_attr(not(feature = "cache"), allow(dead_code))] // the cache's keys
pub(crate) fn cache_lock_prefix(prefix: &str) -> String {
    format!("{prefix}:lock:cache:")
}

/// `<prefix>:rate:{<name>}`: a shared rate limiter's state (its theoretical
/// arrival time, in microseconds of the server's clock).
pub(crate) fn rate(prefix: &str, name: &str) -> String {
    format!("{prefix}:rate:{{{name}}}")
}

/// `<key>:fsync-probe`: the write of no consequence before a `WAITAOF` barrier
/// (beside `key`, so in its slot).
pub(crate) fn fsync_probe(key: &str) -> String {
    format!("{key}:fsync-probe")
}

/// A `SCAN MATCH` pattern for every key of `kind` (`stream`, `dlq`, `cache`)
/// under `prefix`, the prefix's glob characters escaped: a prefix never
/// matches another application's keys.
pub(crate) fn scan_pattern(prefix: &str, kind: &str) -> String {
    format!("{}:{kind}:*", escape_glob(prefix))
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
pub(crate) fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shape() {
        let p = "tickbus";
        assert_eq!(stream(p, "orders:new"), "tickbus:stream:{orders:new}");
        assert_eq!(dlq(p, "orders:new"), "tickbus:dlq:{orders:new}");
        assert_eq!(cursor(p, "orders:new"), "tickbus:cursor:{orders:new}");
        assert_eq!(seen(p, "router", "e1"), "tickbus:seen:{router}:e1");
        assert_eq!(state(p, "risk:current"), "tickbus:state:risk:current");
        assert_eq!(cache_prefix(p), "tickbus:cache:");
        assert_eq!(cache_lock_prefix(p), "tickbus:lock:cache:");
        assert_eq!(rate(p, "binance.orders"), "tickbus:rate:{binance.orders}");
        assert_eq!(
            fsync_probe("tickbus:stream:{a:b}"),
            "tickbus:stream:{a:b}:fsync-probe"
        );
        assert_eq!(scan_pattern(p, "stream"), "tickbus:stream:*");
        assert_eq!(scan_pattern("desk[7]*", "dlq"), r"desk\[7\]\*:dlq:*");
    }
}
