//! The operator's views and actions: consumer groups, pending entries, dead
//! letters (list and requeue), stream and cache sizes.

use std::io::Write;

use serde_json::{json, Value};
use tickbus::admin::{Admin, GroupSummary};
use tickbus::group::{DeadLetter, Redrive};
use tickbus::{ErrorKind, RedisConfig, StreamId};

use crate::parse::{human_bytes, human_duration};
use tickbus::payload_json;

use crate::{block_on, existing_topics, fail, headers_json, live_bus, output_result};
use crate::{DlqListArgs, DlqRequeueArgs, GroupsArgs, Outcome, PendingArgs, StatsArgs};

fn group_json(group: &GroupSummary) -> Value {
    json!({
        "name": group.name,
        "pending": group.pending,
        "lag": group.lag,
        "last_delivered": group.last_delivered.to_string(),
        "consumers": group.consumers.iter().map(|c| json!({
            "name": c.name,
            "pending": c.pending,
            "idle_ms": u64::try_from(c.idle.as_millis()).unwrap_or(u64::MAX),
        })).collect::<Vec<_>>(),
    })
}

fn lag_text(lag: Option<u64>) -> String {
    lag.map_or_else(|| "?".to_string(), |lag| lag.to_string())
}

pub(crate) fn groups(config: RedisConfig, args: GroupsArgs) -> Outcome {
    let admin = Admin::connect(config.clone())?;
    let topics = match &args.pattern {
        Some(pattern) => {
            existing_topics(&admin, &config.key_prefix, std::slice::from_ref(pattern))?
        }
        None => admin.topics(None)?.iter().map(|t| t.to_string()).collect(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut any = false;
    for topic in &topics {
        let groups = match admin.groups(topic) {
            Ok(groups) => groups,
            Err(error) if error.kind() == ErrorKind::NotFound => continue, // deleted meanwhile
            Err(error) => return Err(error.into()),
        };
        if args.json {
            let line = json!({
                "topic": topic,
                "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
            });
            output_result(writeln!(out, "{line}"))?;
            continue;
        }
        if groups.is_empty() {
            continue;
        }
        any = true;
        output_result(writeln!(out, "{topic}"))?;
        for group in &groups {
            output_result(writeln!(
                out,
                "  group {}  consumers {}  pending {}  lag {}  last-delivered {}",
                group.name,
                group.consumers.len(),
                group.pending,
                lag_text(group.lag),
                group.last_delivered
            ))?;
            for consumer in &group.consumers {
                output_result(writeln!(
                    out,
                    "    consumer {}  pending {}  idle {}",
                    consumer.name,
                    consumer.pending,
                    human_duration(consumer.idle)
                ))?;
            }
        }
    }
    output_result(out.flush())?;
    if !args.json && !any {
        eprintln!("tickbus: no consumer groups");
    }
    Ok(())
}

pub(crate) fn pending(config: RedisConfig, args: PendingArgs) -> Outcome {
    let admin = Admin::connect(config)?;
    let summary = admin.pending(&args.group, &args.topic, args.count)?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if args.json {
        let document = json!({
            "topic": summary.topic.as_str(),
            "group": summary.group,
            "count": summary.count,
            "first_id": summary.first_id.map(|id| id.to_string()),
            "last_id": summary.last_id.map(|id| id.to_string()),
            "consumers": summary.consumers.iter().map(|(name, count)| json!({"name": name, "pending": count})).collect::<Vec<_>>(),
            "oldest": summary.oldest.iter().map(|entry| json!({
                "id": entry.id.to_string(),
                "consumer": entry.consumer,
                "idle_ms": u64::try_from(entry.idle.as_millis()).unwrap_or(u64::MAX),
                "deliveries": entry.deliveries,
            })).collect::<Vec<_>>(),
        });
        output_result(writeln!(out, "{document}"))?;
        return output_result(out.flush());
    }
    let bounds = match (summary.first_id, summary.last_id) {
        (Some(first), Some(last)) => format!(" ({first} .. {last})"),
        _ => String::new(),
    };
    output_result(writeln!(
        out,
        "group {} on {}: {} pending{bounds}",
        summary.group, summary.topic, summary.count
    ))?;
    if !summary.consumers.is_empty() {
        output_result(writeln!(out, "per consumer:"))?;
        for (name, count) in &summary.consumers {
            output_result(writeln!(out, "  {name}  {count}"))?;
        }
    }
    if !summary.oldest.is_empty() {
        output_result(writeln!(out, "oldest:"))?;
        for entry in &summary.oldest {
            output_result(writeln!(
                out,
                "  {}  consumer {}  idle {}  deliveries {}",
                entry.id,
                entry.consumer,
                human_duration(entry.idle),
                entry.deliveries
            ))?;
        }
    }
    output_result(out.flush())
}
fn dead_letter_json(letter: &DeadLetter) -> Value {
    let payload = letter.data.as_deref().map(|data| {
        payload_json(data).unwrap_or_else(|error| json!({"undecodable": error.message()}))
    });
    json!({
        "id": letter.id.to_string(),
        "topic": letter.topic.as_str(),
        "reason": letter.reason,
        "deliveries": letter.deliveries,
        "group": letter.group,
        "consumer": letter.consumer,
        "error": letter.error,
        "stream_id": letter.stream_id.map(|id| id.to_string()),
        "event_id": letter.event_id.map(|id| id.to_string()),
        "source": letter.source.map(|id| id.to_string()),
        "timestamp_ns": letter.timestamp_ns,
        "headers": headers_json(&letter.headers),
        "entry_error": letter.entry_error,
        "dead_at_ms": letter.dead_at.duration_since(std::time::UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0),
        "payload": payload,
    })
}

pub(crate) fn dlq_list(config: RedisConfig, args: DlqListArgs) -> Outcome {
    let admin = Admin::connect(config.clone())?;
    let topics = admin.dead_letter_topics(args.topic.as_deref())?;
    drop(admin);
    if topics.is_empty() {
        eprintln!("tickbus: no dead letters");
        return Ok(());
    }
    let bus = live_bus(config)?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut listed = 0;
    for topic in &topics {
        let letters = block_on(bus.dead_letters(topic.as_str(), args.count))?;
        listed += letters.len();
        for letter in &letters {
            if args.json {
                output_result(writeln!(out, "{}", dead_letter_json(letter)))?;
                continue;
            }
            let payload = letter.data.as_deref().map_or_else(
                || "-".to_string(),
                |data| {
                    payload_json(data).map_or_else(
                        |_| format!("<{} bytes, not MessagePack>", data.len()),
                        |value| value.to_string(),
                    )
                },
            );
            output_result(writeln!(
                out,
                "{} {}  reason {}  deliveries {}  group {}  consumer {}  original {}  error {:?}  payload {payload}",
                letter.id,
                letter.topic,
                letter.reason,
                letter.deliveries,
                letter.group,
                letter.consumer,
                letter.stream_id.map_or_else(|| "-".to_string(), |id| id.to_string()),
                letter.error,
            ))?;
        }
    }
    if listed == 0 {
        eprintln!("tickbus: no dead letters");
    }
    output_result(out.flush())
}

pub(crate) fn dlq_requeue(config: RedisConfig, args: DlqRequeueArgs) -> Outcome {
    let which = match args.id {
        Some(id) => Redrive::Entry(id),
        None => Redrive::All,
    };
    let bus = live_bus(config)?;
    let count = block_on(bus.redrive(&args.topic, which))?;
    bus.shutdown();
    if let (Some(id), 0) = (args.id, count) {
        return Err(fail(format!(
            "{}: no dead letter of topic {} has id {id}",
            ErrorKind::NotFound,
            args.topic
        )));
    }
    println!(
        "requeued {count} dead letter{} of {}",
        if count == 1 { "" } else { "s" },
        args.topic
    );
    Ok(())
}

pub(crate) fn stats(config: RedisConfig, args: StatsArgs) -> Outcome {
    let admin = Admin::connect(config)?;
    let mut streams = Vec::new();
    for topic in admin.topics(None)? {
        match admin.stream_stats(topic.as_str()) {
            Ok(stats) => streams.push(stats),
            Err(error) if error.kind() == ErrorKind::NotFound => {} // deleted meanwhile
            Err(error) => return Err(error.into()),
        }
    }
    let caches = admin.cache_namespaces()?;
    let (major, minor, patch) = admin.server_version();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if args.json {
        let document = json!({
            "redis_version": format!("{major}.{minor}.{patch}"),
            "streams": streams.iter().map(|s| json!({
                "topic": s.topic.as_str(),
                "key": s.key,
                "length": s.length,
                "first_id": s.first_id.map(|id| id.to_string()),
                "last_id": s.last_id.map(|id| id.to_string()),
                "memory_bytes": s.memory_bytes,
                "groups": s.groups.iter().map(group_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "cache": caches.iter().map(|c| json!({"namespace": c.namespace, "keys": c.keys})).collect::<Vec<_>>(),
        });
        output_result(writeln!(out, "{document}"))?;
        return output_result(out.flush());
    }
    output_result(writeln!(out, "redis {major}.{minor}.{patch}"))?;
    output_result(writeln!(out, "streams: {}", streams.len()))?;
    for s in &streams {
        let id = |id: Option<StreamId>| id.map_or_else(|| "-".to_string(), |id| id.to_string());
        output_result(writeln!(
            out,
            "  {}  length {}  first {}  last {}  memory {}",
            s.topic,
            s.length,
            id(s.first_id),
            id(s.last_id),
            s.memory_bytes.map_or_else(|| "?".to_string(), human_bytes)
        ))?;
        for group in &s.groups {
            output_result(writeln!(
                out,
                "    group {}  pending {}  lag {}",
                group.name,
                group.pending,
                lag_text(group.lag)
            ))?;
        }
    }
    output_result(writeln!(out, "cache namespaces: {}", caches.len()))?;
    for cache in &caches {
        output_result(writeln!(
            out,
            "  {}  {} key{}",
            cache.namespace,
            cache.keys,
            if cache.keys == 1 { "" } else { "s" }
        ))?;
    }
    output_result(out.flush())
}
